//! Per-page progress under fakes: drain at a page boundary, resume after a
//! crash, a refused or foreign stored link, fenced progress writes, windows
//! sized from the density seen.

use super::*;

#[tokio::test(start_paused = true)]
async fn drain_stops_at_a_page_boundary_and_the_next_holder_resumes_there() {
    let (p1, ids1) = events(&shard(), 0..2, 0);
    let (p2, ids2) = events(&shard(), 2..4, 0);
    let h = harness(
        vec![
            Ok(page(p1, Some("/v1/siem/security_events?p=2"))),
            Ok(page(p2, None)),
        ],
        FakeSink::default(),
    );
    let drain = CancellationToken::new();
    drain.cancel();
    // Draining before the first plan: nothing is fetched.
    h.engine
        .run_shard(h.shard.clone(), 1, CancellationToken::new(), drain)
        .await;
    assert!(h.source.requested().is_empty());
    // Draining while a page is in flight: that page is finished and its
    // progress recorded, then the runner stops; the cursor stays.
    let drain = CancellationToken::new();
    let e = h.engine.clone();
    let (s, d) = (h.shard.clone(), drain.clone());
    let task = tokio::spawn(async move { e.run_shard(s, 1, CancellationToken::new(), d).await });
    while h.source.requested().is_empty() {
        tokio::task::yield_now().await;
    }
    drain.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.source.requested().len(), 1);
    assert!(h.cursor().await.is_none());
    assert_eq!(h.sink.ids_on(TOPIC), ids1);
    let p = h
        .checkpoints
        .load_progress(&h.shard)
        .await
        .unwrap()
        .expect("progress recorded");
    assert_eq!(p.pages, 1);
    assert_eq!(p.events, 2);
    assert_eq!(p.next, "/v1/siem/security_events?p=2");
    assert_eq!(h.engine.status.shard(&h.shard).window.map(|w| w.1), Some(1));
    // The next holder continues with the stored link: no page is read twice.
    h.run_until_windows(1, 30).await;
    let urls = h.source.requested();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert_eq!(
        urls[1].as_str(),
        "https://api.test/v1/siem/security_events?p=2"
    );
    assert_eq!(Stats::get(&h.stats().windows_resumed), 1);
    let mut want = ids1;
    want.extend(ids2);
    assert_eq!(h.sink.ids_on(TOPIC), want);
    // The window is done: its progress is gone with the checkpoint.
    assert!(h
        .checkpoints
        .load_progress(&h.shard)
        .await
        .unwrap()
        .is_none());
    let c = h.cursor().await.unwrap();
    assert_eq!(Some(c), h.engine.status.shard(&h.shard).cursor);
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_window_costs_at_most_the_page_in_flight() {
    let (p1, ids1) = events(&shard(), 0..2, 0);
    let (p2, _) = events(&shard(), 2..4, 0);
    let (p3, ids3) = events(&shard(), 4..6, 0);
    let h = harness(
        vec![
            Ok(page(p1, Some("/v1/siem/security_events?p=2"))),
            // Page 2 arrives, but the runner dies before the sink takes it.
            Ok(page(p2.clone(), Some("/v1/siem/security_events?p=3"))),
            // The next holder asks for page 2 again, then page 3.
            Ok(page(p2, Some("/v1/siem/security_events?p=3"))),
            Ok(page(p3, None)),
        ],
        FakeSink::default(),
    );
    // Page 2's publish never returns: the process is killed (hard cancel)
    // with page 2 fetched and not acknowledged.
    h.sink.hang_from_call.store(2, Ordering::Relaxed);
    assert!(
        h.run_until(30, |h| h.sink.calls.load(Ordering::Relaxed) >= 2)
            .await
    );
    h.sink.hang_from_call.store(0, Ordering::Relaxed);
    assert!(h.cursor().await.is_none());
    let p = h
        .checkpoints
        .load_progress(&h.shard)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.pages, 1, "page 1 was recorded");
    h.run_until_windows(1, 60).await;
    let urls: Vec<String> = h.source.requested().iter().map(|u| u.to_string()).collect();
    assert_eq!(
        urls.len(),
        4,
        "one page in flight re-read, none else: {urls:?}"
    );
    assert!(
        urls[2].ends_with("p=2") && urls[3].ends_with("p=3"),
        "{urls:?}"
    );
    let got = h.sink.ids_on(TOPIC);
    for id in ids1.iter().chain(&ids3) {
        assert_eq!(got.iter().filter(|g| *g == id).count(), 1, "{id}");
    }
    assert_eq!(got.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_stored_link_the_api_refuses_reads_the_window_again() {
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpoints::default());
    let now = Utc::now();
    let (start, end) = (
        now - chrono::Duration::minutes(62),
        now - chrono::Duration::minutes(1),
    );
    checkpoints
        .store(&shard(), 1, start + chrono::Duration::minutes(2))
        .await
        .unwrap();
    checkpoints
        .store_progress(
            &shard(),
            1,
            &Progress {
                start,
                end,
                next: "/v1/siem/security_events?page_token=old".into(),
                pages: 3,
                events: 1500,
                at: now - chrono::Duration::hours(1),
            },
        )
        .await
        .unwrap();
    let (p1, ids) = events(&shard(), 0..3, 0);
    let h = harness_with(
        vec![Err(status(400, None)), Ok(page(p1, None))],
        FakeSink::default(),
        checkpoints,
    );
    h.run_until_windows(1, 30).await;
    let urls = h.source.requested();
    assert!(urls[0].as_str().ends_with("page_token=old"));
    // The fallback asks for the same window's first page.
    let q: std::collections::HashMap<String, String> = urls[1].query_pairs().into_owned().collect();
    assert_eq!(q["start"], crate::cas::format_time(start));
    assert_eq!(q["end"], crate::cas::format_time(end));
    assert_eq!(Stats::get(&h.stats().stored_links_refused), 1);
    assert_eq!(h.sink.ids_on(TOPIC), ids);
    assert_eq!(h.cursor().await, Some(end));
}

#[tokio::test(start_paused = true)]
async fn a_stored_link_to_another_host_is_never_followed() {
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpoints::default());
    let now = Utc::now();
    checkpoints
        .store_progress(
            &shard(),
            1,
            &Progress {
                start: now - chrono::Duration::minutes(30),
                end: now - chrono::Duration::minutes(1),
                next: "https://evil.test/v1/siem/security_events?x=1".into(),
                pages: 1,
                events: 500,
                at: now,
            },
        )
        .await
        .unwrap();
    let h = harness_with(vec![], FakeSink::default(), checkpoints);
    h.run_until_windows(1, 30).await;
    assert!(h
        .source
        .requested()
        .iter()
        .all(|u| u.host_str() == Some("api.test")));
    assert_eq!(Stats::get(&h.stats().stored_links_refused), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stale_fence_cannot_record_progress() {
    let (p1, _) = events(&shard(), 0..2, 0);
    let h = harness_with(
        vec![Ok(page(p1, Some("/v1/siem/security_events?p=2")))],
        FakeSink::default(),
        Arc::new(Fenced),
    );
    h.run_alone(4, "the runner stops at a stale fence").await;
    assert_eq!(
        h.source.requested().len(),
        1,
        "no page after the refused progress"
    );
}

#[tokio::test(start_paused = true)]
async fn catch_up_windows_are_sized_from_the_density_seen() {
    // 30 h behind, windows of at most 10 h, pages of 500 events, 1 page a
    // window: the first window (nothing seen yet) is 10 h and holds 1,000
    // events (100 an hour), so the next is sized to 1 × 500 ÷ 100 h = 5 h.
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpoints::default());
    let now = Utc::now();
    checkpoints
        .store(&shard(), 1, now - chrono::Duration::hours(30))
        .await
        .unwrap();
    let (big, _) = events(&shard(), 0..1000, 0);
    let mut h = harness_with(vec![Ok(page(big, None))], FakeSink::default(), checkpoints);
    let e = Arc::get_mut(&mut h.engine).unwrap();
    let lane = e.default_lane_mut().expect("the default tenant's lane");
    lane.settings.page_limit = 500;
    lane.settings.max_pages = 1;
    lane.planner = crate::window::Planner::new(&crate::window::WindowConfig {
        max: crate::field::Dur::secs(10 * 3600),
        ..crate::window::WindowConfig::default()
    });
    h.run_until_windows(2, 60).await;
    let urls = h.source.requested();
    let window = |u: &url::Url| {
        let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
        let t = |k: &str| {
            DateTime::parse_from_rfc3339(&q[k])
                .unwrap()
                .with_timezone(&Utc)
        };
        (t("start"), t("end"))
    };
    let (s1, e1) = window(&urls[0]);
    assert_eq!(e1 - s1, chrono::Duration::hours(10));
    let (s2, e2) = window(&urls[1]);
    assert_eq!(s2, e1 - chrono::Duration::minutes(2));
    assert_eq!(e2 - s2, chrono::Duration::hours(5));
}

#[tokio::test(start_paused = true)]
async fn with_no_cursor_anywhere_a_shard_continues_where_its_topic_ends() {
    let h = harness(vec![Ok(page(Vec::new(), None))], FakeSink::default());
    // Nothing in the store, nothing remembered; the topic's last record
    // came from a window that started 20 minutes ago.
    let text = crate::cas::format_time(Utc::now() - chrono::Duration::minutes(20));
    let last = DateTime::parse_from_rfc3339(&text)
        .unwrap()
        .with_timezone(&Utc);
    *h.sink.position.lock().unwrap() = Some(text);
    h.run_until_windows(1, 60).await;
    let urls = h.source.requested();
    let start = urls[0]
        .query_pairs()
        .find(|(k, _)| k == "start")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    // The first window starts one overlap before that point, not at
    // `window.start_from` (an hour back in the fakes' settings).
    let want = last - h.engine.lanes[DEFAULT_TENANT].planner.overlap();
    assert_eq!(start, crate::cas::format_time(want), "{urls:?}");
    assert_eq!(Stats::get(&h.stats().cursors_recovered), 1);
}
