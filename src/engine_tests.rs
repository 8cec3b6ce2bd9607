//! The engine's logic with fakes at its seams, under paused time: retry,
//! park, 429 pause, 401 back-off, fenced checkpoint, sink unavailable vs
//! rejected vs misconfigured, drain and cancel.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::coord::memory::MemoryCheckpoints;
use crate::coord::{CheckpointStore, CoordError, Fence, Progress};
use crate::fakes::{event, page, status, FakeSink, FakeSource};
use crate::sink::RecordKind;
use crate::telemetry::Stats;

const TOPIC: &str = "cas.exchange.dlp";
const DLQ: &str = "cas.deadletter";

struct Harness {
    engine: Arc<Engine>,
    source: Arc<FakeSource>,
    sink: Arc<FakeSink>,
    checkpoints: Arc<dyn CheckpointStore>,
    shard: Shard,
}

fn harness_with(
    script: Vec<Result<Page, ApiError>>,
    sink: FakeSink,
    checkpoints: Arc<dyn CheckpointStore>,
) -> Harness {
    let source = FakeSource::new(script);
    let sink = Arc::new(sink);
    let engine = crate::fakes::engine(source.clone(), sink.clone(), checkpoints.clone());
    Harness {
        engine: Arc::new(engine),
        source,
        sink,
        checkpoints,
        shard: Shard::new("exchange", "dlp"),
    }
}

fn harness(script: Vec<Result<Page, ApiError>>, sink: FakeSink) -> Harness {
    harness_with(script, sink, Arc::new(MemoryCheckpoints::default()))
}

impl Harness {
    fn stats(&self) -> &Stats {
        self.engine.telemetry.stats()
    }

    /// Runs the shard until `done` holds (checked every virtual second, at
    /// most `secs` of them), then cancels it. Returns whether `done` held.
    async fn run_until(&self, secs: u64, done: impl Fn(&Harness) -> bool) -> bool {
        let cancel = CancellationToken::new();
        let e = self.engine.clone();
        let (s, c) = (self.shard.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            e.run_shard(s, 1, c, CancellationToken::new()).await;
        });
        let mut ok = false;
        for _ in 0..secs {
            if done(self) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        cancel.cancel();
        // A panic in the runner fails the test (its join result is kept).
        task.await.expect("the shard runner panicked");
        ok
    }

    /// Runs the shard until `n` windows were checkpointed (within `secs`
    /// virtual seconds), then cancels it.
    async fn run_until_windows(&self, n: u64, secs: u64) {
        assert!(
            self.run_until(secs, |h| Stats::get(&h.stats().windows) >= n)
                .await,
            "{n} window(s) not checkpointed within {secs} s"
        );
    }

    /// Runs the shard with `fence` until it stops by itself (stopped,
    /// fenced): it must within 10 virtual seconds.
    async fn run_alone(&self, fence: Fence, why: &str) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.engine.run_shard(
                self.shard.clone(),
                fence,
                CancellationToken::new(),
                CancellationToken::new(),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{why}"));
    }

    async fn cursor(&self) -> Option<DateTime<Utc>> {
        self.checkpoints.load(&self.shard).await.unwrap()
    }
}

fn events(
    shard: &Shard,
    keys: std::ops::Range<u64>,
    pad: usize,
) -> (Vec<Box<serde_json::value::RawValue>>, Vec<String>) {
    keys.map(|k| event(shard, k, pad)).unzip()
}

fn shard() -> Shard {
    Shard::new("exchange", "dlp")
}

#[tokio::test(start_paused = true)]
async fn every_page_is_published_before_the_cursor_moves() {
    let (p1, mut ids) = events(&shard(), 0..3, 0);
    let (p2, ids2) = events(&shard(), 3..5, 0);
    ids.extend(ids2);
    let h = harness(
        vec![
            Ok(page(p1, Some("/v1/siem/security_events?page=2"))),
            Ok(page(p2, None)),
        ],
        FakeSink::default(),
    );
    h.run_until_windows(1, 30).await;
    assert_eq!(h.sink.ids_on(TOPIC), ids);
    let cursor = h.cursor().await.expect("the cursor moved");
    assert!(cursor > Utc::now() - chrono::Duration::seconds(120));
    let urls = h.source.requested();
    assert_eq!(
        urls[1].as_str(),
        "https://api.test/v1/siem/security_events?page=2"
    );
    assert_eq!(Stats::get(&h.stats().pages), urls.len() as u64);
    assert_eq!(Stats::get(&h.stats().events_published), 5);
    assert_eq!(h.engine.status.shard(&h.shard).cursor, Some(cursor));
}

#[tokio::test(start_paused = true)]
async fn a_server_error_is_retried_and_nothing_is_lost() {
    let (p1, ids) = events(&shard(), 0..4, 0);
    let h = harness(
        vec![
            Err(status(500, None)),
            Err(ApiError::Timeout),
            Ok(page(p1, None)),
        ],
        FakeSink::default(),
    );
    h.run_until_windows(1, 60).await;
    assert_eq!(h.sink.ids_on(TOPIC), ids);
    assert_eq!(Stats::get(&h.stats().api_errors), 2);
    // The same page was asked for three times.
    let urls = h.source.requested();
    assert_eq!(urls[0], urls[1]);
    assert_eq!(urls[1], urls[2]);
}

#[tokio::test(start_paused = true)]
async fn a_page_malformed_again_and_again_parks_the_shard_with_the_reason() {
    let (p1, ids) = events(&shard(), 0..2, 0);
    let mut script: Vec<Result<Page, ApiError>> = (0..MALFORMED_TRIES)
        .map(|_| Err(ApiError::Malformed("invalid UTF-8 at byte 7".into())))
        .collect();
    script.push(Ok(page(p1, None)));
    let h = harness(script, FakeSink::default());
    assert!(
        h.run_until(120, |h| h.engine.status.shard(&h.shard).parked.is_some())
            .await
    );
    let why = h.engine.status.shard(&h.shard).parked.unwrap();
    assert!(
        why.contains("malformed 5 times in a row") && why.contains("UTF-8"),
        "{why}"
    );
    assert_eq!(h.source.requested().len(), MALFORMED_TRIES as usize);
    // The shard tries again after its park and delivers; parked no more.
    h.run_until_windows(1, 60).await;
    assert_eq!(h.sink.ids_on(TOPIC), ids);
    assert_eq!(h.engine.status.shard(&h.shard).parked, None);
}

#[tokio::test(start_paused = true)]
async fn a_page_with_more_events_than_asked_for_is_refused_before_any_work() {
    // Pages of 500 asked for; the API sends 1,001 events, five times.
    let script = (0..MALFORMED_TRIES)
        .map(|_| Ok(page(events(&shard(), 0..1001, 0).0, None)))
        .collect();
    let h = harness(script, FakeSink::default());
    assert!(
        h.run_until(120, |h| h.engine.status.shard(&h.shard).parked.is_some())
            .await
    );
    let why = h.engine.status.shard(&h.shard).parked.unwrap();
    assert!(why.contains("1001 events; 500 were asked for"), "{why}");
    assert!(h.sink.accepted().is_empty(), "nothing of it was published");
}

#[tokio::test(start_paused = true)]
async fn a_bad_request_parks_the_shard_then_it_tries_again() {
    let (p1, ids) = events(&shard(), 0..2, 0);
    let h = harness(
        vec![Err(status(400, None)), Ok(page(p1, None))],
        FakeSink::default(),
    );
    let started = tokio::time::Instant::now();
    // Parked 30..60 s (the park backoff), then the window is read again.
    h.run_until_windows(1, 120).await;
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h.source.requested().len(), 2);
    assert_eq!(Stats::get(&h.stats().api_errors), 1);
    assert_eq!(h.sink.ids_on(TOPIC), ids);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_date_in_year_9999_pauses_no_longer_than_max_pause() {
    let far = Duration::from_secs(8000 * 365 * 86_400);
    let (p1, ids) = events(&shard(), 0..1, 0);
    let h = harness(
        vec![Err(status(429, Some(far))), Ok(page(p1, None))],
        FakeSink::default(),
    );
    let started = tokio::time::Instant::now();
    h.run_until_windows(1, 900).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(300), "paused {took:?}");
    assert!(
        took <= Duration::from_secs(302),
        "paused {took:?}: not capped"
    );
    assert_eq!(Stats::get(&h.stats().rate_limited), 1);
    assert_eq!(h.sink.ids_on(TOPIC), ids);
}

#[tokio::test(start_paused = true)]
async fn a_429_without_retry_after_pauses_a_minute() {
    let h = harness(vec![Err(status(429, None))], FakeSink::default());
    let started = tokio::time::Instant::now();
    assert!(h.run_until(300, |h| h.source.requested().len() >= 2).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(60) && took <= Duration::from_secs(62),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_backs_off_and_never_makes_the_replica_unready() {
    let h = harness(vec![Err(status(401, None))], FakeSink::default());
    assert!(
        h.run_until(5, |h| h.engine.status.shard(&h.shard).last_error.is_some())
            .await
    );
    // The tenant's trouble: shown for the shard, not in readiness.
    assert!(
        h.engine.status.not_ready().is_empty(),
        "{:?}",
        h.engine.status.not_ready()
    );
    assert_eq!(
        h.source.requested().len(),
        1,
        "no second request within the pause"
    );
    let last = h.engine.status.shard(&h.shard).last_error.unwrap();
    assert!(last.contains("401") && !last.contains("Bearer"));
    // After the pause the next request succeeds.
    h.run_until_windows(1, 120).await;
    assert_eq!(h.source.requested().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_file_that_changes_during_the_pause_is_tried_at_once() {
    let (p1, ids) = events(&shard(), 0..2, 0);
    let h = harness(
        vec![Err(status(401, None)), Ok(page(p1, None))],
        FakeSink::default(),
    );
    let started = tokio::time::Instant::now();
    // The file changes 10 s into the minute's pause.
    let change_at = started + Duration::from_secs(10);
    assert!(
        h.run_until(120, |h| {
            if tokio::time::Instant::now() >= change_at && h.source.requested().len() == 1 {
                h.source.rotated.store(1, Ordering::Relaxed);
            }
            Stats::get(&h.stats().windows) >= 1
        })
        .await
    );
    let took = started.elapsed();
    // Asked again within a look at the file of the change, not after the
    // whole pause (time is paused: these are exact).
    assert!(took >= Duration::from_secs(10), "{took:?}");
    assert!(
        took <= Duration::from_secs(10) + crate::runner::TOKEN_LOOK + Duration::from_secs(2),
        "asked again {took:?} after the 401: the pause ran out instead"
    );
    assert_eq!(h.source.requested().len(), 2);
    assert_eq!(h.sink.ids_on(TOPIC), ids);
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_with_a_new_one_in_its_file_asks_again_at_once() {
    let (p1, ids) = events(&shard(), 0..2, 0);
    let h = harness(
        vec![Err(status(401, None)), Ok(page(p1, None))],
        FakeSink::default(),
    );
    h.source
        .rotated
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    h.run_until_windows(1, 30).await;
    assert!(
        started.elapsed() < crate::runner::AUTH_PAUSE,
        "no back-off: {:?}",
        started.elapsed()
    );
    assert_eq!(h.source.requested().len(), 2);
    assert_eq!(h.sink.ids_on(TOPIC), ids);
    assert!(h.engine.status.not_ready().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_foreign_next_link_parks_without_a_request_there() {
    let (p1, ids) = events(&shard(), 0..2, 0);
    let h = harness(
        vec![Ok(page(
            p1,
            Some("https://evil.test/v1/siem/security_events?x=1"),
        ))],
        FakeSink::default(),
    );
    assert!(
        h.run_until(10, |h| h.engine.status.shard(&h.shard).last_error.is_some())
            .await
    );
    assert!(h
        .source
        .requested()
        .iter()
        .all(|u| u.host_str() == Some("api.test")));
    assert!(h.cursor().await.is_none(), "the window is not complete");
    // The first page's events were published (the overlap re-read dedups them).
    assert_eq!(h.sink.ids_on(TOPIC), ids);
}

#[tokio::test(start_paused = true)]
async fn a_next_link_that_comes_back_parks_the_shard_after_one_round() {
    // Every page links to the same page: followed once, then parked.
    let link = "https://api.test/v1/siem/security_events?token=same";
    let script = (0..50)
        .map(|i| Ok(page(events(&shard(), i..i + 1, 0).0, Some(link))))
        .collect();
    let h = harness(script, FakeSink::default());
    assert!(
        h.run_until(20, |h| h.engine.status.shard(&h.shard).last_error.is_some())
            .await
    );
    let why = h.engine.status.shard(&h.shard).last_error.unwrap();
    assert!(why.contains("do not end"), "{why}");
    assert_eq!(
        h.source.requested().len(),
        2,
        "the first page and the link once"
    );
    assert!(h.cursor().await.is_none(), "the window is not complete");
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_sink_keeps_the_cursor_until_it_acknowledges() {
    let (p1, ids) = events(&shard(), 0..3, 0);
    let sink = FakeSink::default();
    sink.unavailable.store(3, Ordering::Relaxed);
    let h = harness(vec![Ok(page(p1, None))], sink);
    h.run_until_windows(1, 120).await;
    assert_eq!(h.sink.ids_on(TOPIC), ids);
    assert_eq!(Stats::get(&h.stats().sink_errors), 3);
    assert!(!h.engine.status.shard(&h.shard).sink_failing);
    assert_eq!(
        h.source.requested().len(),
        1,
        "the page is not fetched again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_record_the_broker_refuses_is_dead_lettered_and_the_window_completes() {
    let (mut evs, mut ids) = events(&shard(), 0..4, 0);
    let (big, big_id) = event(&shard(), 99, 20_000);
    evs.insert(2, big);
    let sink = FakeSink {
        max_size: Some(12_000),
        ..FakeSink::default()
    };
    let h = harness(vec![Ok(page(evs, None))], sink);
    h.run_until_windows(1, 30).await;
    let on_topic = h.sink.ids_on(TOPIC);
    ids.sort();
    let mut sorted = on_topic.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "every other event delivered");
    let dead: Vec<_> = h
        .sink
        .accepted()
        .into_iter()
        .filter(|r| &*r.topic == DLQ)
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, big_id);
    assert_eq!(dead[0].kind, RecordKind::DeadLetter);
    let doc: serde_json::Value = serde_json::from_slice(&dead[0].payload).unwrap();
    assert!(doc["reasons"][0]["message"]
        .as_str()
        .unwrap()
        .starts_with("broker: "));
    assert_eq!(doc["intended_topic"], TOPIC);
    assert_eq!(Stats::get(&h.stats().dead_lettered), 1);
    assert!(h.cursor().await.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_too_large_for_the_broker_goes_truncated() {
    let (big, big_id) = event(&shard(), 7, 20_000);
    let sink = FakeSink {
        max_size: Some(4_000),
        limit_dead_letters: true,
        ..FakeSink::default()
    };
    let h = harness(vec![Ok(page(vec![big], None))], sink);
    h.run_until_windows(1, 30).await;
    let acc = h.sink.accepted();
    assert_eq!(acc.len(), 1);
    assert_eq!(acc[0].kind, RecordKind::Truncated);
    assert_eq!(acc[0].id, big_id);
    let doc: serde_json::Value = serde_json::from_slice(&acc[0].payload).unwrap();
    assert_eq!(doc["service"], "exchange");
    assert!(doc["size"].as_u64().unwrap() > 20_000);
    assert!(doc["window_start"].is_string());
    assert!(doc["reasons"][0]["message"]
        .as_str()
        .unwrap()
        .contains("over 4000"));
}

#[tokio::test(start_paused = true)]
async fn a_misconfigured_sink_stops_the_shard_and_readiness_says_why() {
    let (p1, _) = events(&shard(), 0..2, 0);
    let sink = FakeSink::default();
    sink.misconfigured.store(true, Ordering::Relaxed);
    let h = harness(vec![Ok(page(p1, None))], sink);
    let cancel = CancellationToken::new();
    // The runner returns by itself: stopped, not retrying.
    tokio::time::timeout(
        Duration::from_secs(10),
        h.engine
            .run_shard(h.shard.clone(), 1, cancel, CancellationToken::new()),
    )
    .await
    .expect("the shard stops");
    assert!(h.cursor().await.is_none());
    let why = h.engine.status.not_ready().join("; ");
    assert!(
        why.contains("exchange:dlp stopped") && why.contains("not authorised"),
        "{why}"
    );
    assert_eq!(h.sink.calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn schema_violations_and_duplicates() {
    let (mut evs, ids) = events(&shard(), 0..3, 0);
    // The same event twice in a page, and one that breaks the schema.
    evs.push(evs[0].clone());
    let bad = serde_json::value::RawValue::from_string(
        r#"{"service":"Exchange","event":"dlp","log_item_id":"bad-1","message":"unparsed"}"#.into(),
    )
    .unwrap();
    evs.push(bad);
    let (again, _) = events(&shard(), 1..2, 0);
    let h = harness(
        vec![
            Ok(page(evs, Some("/v1/siem/security_events?p=2"))),
            Ok(page(again, None)),
        ],
        FakeSink::default(),
    );
    h.run_until_windows(1, 30).await;
    assert_eq!(h.sink.ids_on(TOPIC), ids);
    assert_eq!(h.sink.ids_on(DLQ), vec!["bad-1".to_string()]);
    assert_eq!(Stats::get(&h.stats().duplicates_skipped), 2);
    assert_eq!(Stats::get(&h.stats().dead_lettered), 1);
}

/// A store that says another worker took the shard.
struct Fenced;

#[async_trait]
impl CheckpointStore for Fenced {
    async fn load(&self, _: &Shard) -> Result<Option<DateTime<Utc>>, CoordError> {
        Ok(None)
    }
    async fn store(&self, s: &Shard, f: Fence, _: DateTime<Utc>) -> Result<(), CoordError> {
        Err(CoordError::Fenced {
            shard: s.to_string(),
            ours: f,
            current: f + 1,
        })
    }
    async fn load_progress(&self, _: &Shard) -> Result<Option<Progress>, CoordError> {
        Ok(None)
    }
    async fn store_progress(&self, s: &Shard, f: Fence, _: &Progress) -> Result<(), CoordError> {
        self.store(s, f, Utc::now()).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_fence_stops_the_runner_without_moving_a_cursor() {
    let (p1, _) = events(&shard(), 0..2, 0);
    let h = harness_with(
        vec![Ok(page(p1, None))],
        FakeSink::default(),
        Arc::new(Fenced),
    );
    h.run_alone(4, "the runner stops at a stale fence").await;
    assert_eq!(
        h.engine
            .status
            .shard(&h.shard)
            .cursor
            .map(|c| c < Utc::now() - chrono::Duration::minutes(59)),
        Some(true),
        "only the start cursor"
    );
    assert!(h
        .engine
        .status
        .shard(&h.shard)
        .last_error
        .unwrap()
        .contains("stale"));
    assert_eq!(Stats::get(&h.stats().windows), 0);
}

#[tokio::test(start_paused = true)]
async fn cancel_mid_window_moves_no_cursor() {
    let (p1, _) = events(&shard(), 0..2, 0);
    let sink = FakeSink::default();
    sink.unavailable.store(1000, Ordering::Relaxed);
    let h = harness(vec![Ok(page(p1, None))], sink);
    assert!(
        h.run_until(30, |h| h.sink.calls.load(Ordering::Relaxed) >= 2)
            .await
    );
    assert!(h.cursor().await.is_none());
    assert!(h.sink.accepted().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_broker_that_refuses_even_a_truncated_dead_letter_stops_the_shard() {
    let (p1, _) = events(&shard(), 0..1, 0);
    let sink = FakeSink {
        max_size: Some(10),
        limit_dead_letters: true,
        ..FakeSink::default()
    };
    let h = harness(vec![Ok(page(p1, None))], sink);
    h.run_alone(1, "the shard stops rather than looping").await;
    assert!(h.cursor().await.is_none());
    let why = h.engine.status.shard(&h.shard).stopped.unwrap();
    assert!(why.contains("truncated dead letter"), "{why}");
    // Event, whole dead letter, truncated dead letter: three tries, no more.
    assert_eq!(h.sink.calls.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn a_cursor_beyond_the_api_reach_skips_a_counted_gap() {
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpoints::default());
    let old = Utc::now() - chrono::Duration::hours(80);
    checkpoints.store(&shard(), 1, old).await.unwrap();
    let h = harness_with(vec![], FakeSink::default(), checkpoints);
    h.run_until_windows(1, 30).await;
    let gap = Stats::get(&h.stats().gap_seconds);
    // 80 h behind, the reach is 72 h less 15 min: about 8 h 15 min skipped.
    assert!((8 * 3600..=8 * 3600 + 16 * 60).contains(&gap), "{gap}");
    let first = &h.source.requested()[0];
    let start = first
        .query_pairs()
        .find(|(k, _)| k == "start")
        .map(|(_, v)| v.to_string())
        .unwrap();
    let start = DateTime::parse_from_rfc3339(&start)
        .unwrap()
        .with_timezone(&Utc);
    assert!(start > Utc::now() - chrono::Duration::hours(72));
}

#[tokio::test(start_paused = true)]
async fn a_stored_cursor_is_where_the_shard_goes_on() {
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpoints::default());
    let at = Utc::now() - chrono::Duration::minutes(10);
    checkpoints.store(&shard(), 1, at).await.unwrap();
    let h = harness_with(vec![], FakeSink::default(), checkpoints);
    assert!(h.run_until(30, |h| !h.source.requested().is_empty()).await);
    let first = &h.source.requested()[0];
    let start = first
        .query_pairs()
        .find(|(k, _)| k == "start")
        .map(|(_, v)| v.to_string())
        .unwrap();
    // The window re-reads the overlap (2 min) before the stored cursor.
    assert_eq!(
        start,
        crate::cas::format_time(at - chrono::Duration::minutes(2))
    );
}

#[path = "resume_tests.rs"]
mod resume;
