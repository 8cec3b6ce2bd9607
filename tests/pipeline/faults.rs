//! Faults the core pipeline must survive without losing or leaking anything.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cas_bridge::config::SinkKind;
use cas_bridge::sim::SimConfig;
use chrono::Utc;

use crate::helpers::*;

/// A nats-server of the test's own, a simulator with 600 events a minute
/// per pair, and a bridge configuration against both (with its tag).
async fn busy_pipeline_to_own_nats() -> (
    OwnNats,
    cas_bridge::sim::SimHandle,
    String,
    cas_bridge::config::Config,
) {
    let nats = OwnNats::start();
    let sim = start_sim(SimConfig {
        events_per_hour: 36_000.0,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Nats);
    cfg.sink.nats.url = nats.url();
    (nats, sim, tag, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_is_down_keeps_the_cursor_and_delivery_resumes() {
    let (mut nats, sim, _, mut cfg) = busy_pipeline_to_own_nats().await;
    cfg.api.page_limit = Some(500);
    cfg.window.start_from = cas_bridge::config::StartFrom::Ago(Duration::from_secs(120));
    let t0 = Utc::now();
    let run = Running::start(build_bridge(&cfg, cfg.in_memory_coordination()).await);
    run.wait_cursor(t0 - chrono::Duration::seconds(3), Duration::from_secs(60))
        .await;

    let errors_at_stop = run.bridge.stats().sink_errors.load(Ordering::Relaxed);
    nats.stop();
    // The publishes in flight at the stop fail (seen in the counter), then
    // the cursors are watched for 8 s of outage.
    // Twice: the second failure is a retry, after whatever was in flight
    // at the stop settled.
    let mut seen = errors_at_stop;
    for _ in 0..2 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while run.bridge.stats().sink_errors.load(Ordering::Relaxed) == seen {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no publish failed within a minute of the broker's stop"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen = run.bridge.stats().sink_errors.load(Ordering::Relaxed);
    }
    let frozen = run.bridge.progress();
    let errors_before = run.bridge.stats().sink_errors.load(Ordering::Relaxed);
    // At least 8 s of outage, and until a publish was retried and failed
    // again (each attempt waits for its acknowledgements first).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while run.bridge.stats().sink_errors.load(Ordering::Relaxed) == errors_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish was retried and failed again within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = run.bridge.progress();
    for (shard, p) in &frozen {
        assert_eq!(
            p.cursor, later[shard].cursor,
            "{shard}: the cursor moved while the sink was down"
        );
    }
    assert!(
        later
            .values()
            .any(|p| p.last_error.as_deref().is_some_and(|e| e.contains("nats"))),
        "{later:?}"
    );

    nats.restart();
    let resumed = Utc::now();
    run.wait_cursor(resumed, Duration::from_secs(60)).await;
    run.stop().await;
    let check_to = resumed - chrono::Duration::seconds(20);
    let want = expected(&sim, &cfg, t0 - chrono::Duration::seconds(110), check_to);
    let got = read_nats(&nats.url(), &cfg.sink.nats.stream).await;
    let r = check(&want, &got, &cfg);
    assert!(r.expected > 1000, "{r:?}");
    assert!(
        r.missing.is_empty(),
        "missing {} of {}",
        r.missing.len(),
        r.expected
    );
    assert_eq!((r.duplicated, r.wrong_routed), (0, 0), "{r:?}");
    sim.stop().await;
}

/// Accepts connections on a port and counts them.
async fn counting_listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            n2.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, n)
}

/// Runs a bridge against a misbehaving simulator until `settled` holds of
/// it and the simulator (a minute at most, then the test fails), and
/// returns it.
async fn run_against(
    sim_cfg: SimConfig,
    tweak: impl FnOnce(&mut cas_bridge::config::Config),
    settled: impl Fn(&Running, &cas_bridge::sim::SimHandle) -> bool,
) -> (Running, cas_bridge::sim::SimHandle, tempfile::TempDir) {
    let sim = start_sim(sim_cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Jsonl);
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    tweak(&mut cfg);
    let run = Running::start(build_bridge(&cfg, cfg.in_memory_coordination()).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !settled(&run, &sim) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge did not settle within a minute: {:?}",
            run.bridge.progress()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (run, sim, dir)
}

/// Whether every configured shard is parked (with its reason).
fn every_shard_parked(run: &Running) -> bool {
    let p = run.bridge.progress();
    p.values().filter(|p| p.parked.is_some()).count() == run.bridge.shards().len()
}

/// Asserts that no shard's cursor moved and that no error carries the
/// token; returns each shard's last error.
fn unmoved_cursors_and_errors(run: &Running) -> Vec<(String, Option<String>)> {
    let started = run.bridge.min_cursor().unwrap();
    run.bridge
        .progress()
        .into_iter()
        .map(|(shard, p)| {
            assert_eq!(p.cursor, Some(started), "{shard}: cursor moved");
            if let Some(e) = &p.last_error {
                assert!(
                    !e.contains("sim-token"),
                    "the token must not appear in errors"
                );
            }
            (shard.to_string(), p.last_error)
        })
        .collect()
}

fn assert_no_cursor_moved(run: &Running, expect_error: &str) {
    for (shard, e) in unmoved_cursors_and_errors(run) {
        let e = e.unwrap_or_default();
        assert!(
            e.contains(expect_error),
            "{shard}: last error `{e}` should mention `{expect_error}`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_link_to_another_host_is_refused_and_nothing_is_sent_there() {
    let (port, connections) = counting_listener().await;
    let sim_cfg = SimConfig {
        foreign_next_link: Some(format!("127.0.0.1:{port}")),
        ..sim_config()
    };
    // Settled: every shard parked on the foreign link.
    let (run, sim, dir) = run_against(sim_cfg, |_| {}, |run, _| every_shard_parked(run)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the foreign host got a connection"
    );
    assert_no_cursor_moved(&run, "another host");
    // The first page of each shard was published (the events are safe), the window was not checkpointed.
    let got = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(got.len(), 4 * 50, "first pages only");
    run.stop().await;
    assert_eq!(
        sim.state.stats().by_status.get(&200).copied(),
        Some(4),
        "one request per shard, then parked"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_an_error_not_an_out_of_memory() {
    let sim_cfg = SimConfig {
        pad_bytes: 200_000,
        ..sim_config()
    };
    let (run, sim, _dir) = run_against(
        sim_cfg,
        |c| c.api.max_body_bytes = 65_536,
        |run, _| every_shard_parked(run),
    )
    .await;
    assert_no_cursor_moved(&run, "larger than the cap");
    run.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_backs_every_shard_off() {
    let sim_cfg = SimConfig {
        token: "another-token".into(),
        ..sim_config()
    };
    // Settled: a shard saw the 401, and the simulator answered as many
    // 401s as shards show the refusal (none of them still on its way).
    let (run, sim, _dir) = run_against(
        sim_cfg,
        |_| {},
        |run, sim| {
            let shown = run
                .bridge
                .progress()
                .values()
                .filter(|p| p.last_error.is_some())
                .count() as u64;
            shown >= 1 && sim.state.stats().by_status.get(&401).copied() == Some(shown)
        },
    )
    .await;
    // The first 401 pauses every shard. Shards whose request was already on
    // its way get their own 401; a shard that had not asked yet (a loaded
    // machine) waits without asking: at most one request per shard, no storm.
    let mut refused: u64 = 0;
    for (shard, e) in unmoved_cursors_and_errors(&run) {
        if let Some(e) = e {
            assert!(
                e.contains("Authentication token not found"),
                "{shard}: last error `{e}` should be the API's 401"
            );
            refused += 1;
        }
    }
    run.stop().await;
    let s = sim.state.stats();
    assert!(refused >= 1, "no shard saw the 401");
    assert_eq!(
        s.by_status.get(&401).copied(),
        Some(refused),
        "one 401 per shard that asked, then all paused: {:?}",
        s.by_status
    );
    assert_eq!(s.by_status.len(), 1, "only 401s: {:?}", s.by_status);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_truncated_bodies_are_retried_until_everything_arrives() {
    let sim = start_sim(SimConfig {
        fault_500: 0.2,
        malformed: 0.1,
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Jsonl);
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    let (run, range) = Running::caught_up(&cfg).await;
    let errors = run.bridge.stats().api_errors.load(Ordering::Relaxed);
    run.stop().await;
    let want = expected(&sim, &cfg, range.from, range.to);
    let r = check(&want, &read_jsonl(&dir.path().join("out.jsonl")), &cfg);
    assert!(errors > 0);
    let s = sim.state.stats();
    assert!(
        s.by_status.get(&500).copied().unwrap_or(0) > 0,
        "{:?}",
        s.by_status
    );
    assert!(r.missing.is_empty(), "{r:?}");
    assert_eq!((r.duplicated, r.wrong_routed), (0, 0), "{r:?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_shard_and_nothing_is_lost() {
    // The simulator allows fewer requests than the bridge thinks it may send.
    let sim = start_sim(SimConfig {
        per_minute: 30,
        retry_after: true,
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Jsonl);
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    cfg.window.start_from = cas_bridge::config::StartFrom::Ago(Duration::from_secs(300));
    cfg.api.page_limit = Some(100);
    let t0 = Utc::now();
    let run = Running::start(build_bridge(&cfg, cfg.in_memory_coordination()).await);
    // Past the first minute's allowance: at least one 429 and its pause.
    run.wait_cursor(t0 + chrono::Duration::seconds(20), Duration::from_secs(150))
        .await;
    let limited = run.bridge.stats().rate_limited.load(Ordering::Relaxed);
    run.stop().await;
    let s = sim.state.stats();
    assert!(
        s.throttled > 0 && limited > 0,
        "the run was throttled: {:?}",
        s.by_status
    );
    // After a 429 every shard waited: far fewer 429s than shards × retries.
    assert!(s.throttled <= 8, "429 storm: {}", s.throttled);
    let want = expected(
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(290),
        t0 - chrono::Duration::seconds(30),
    );
    let r = check(&want, &read_jsonl(&dir.path().join("out.jsonl")), &cfg);
    assert!(r.missing.is_empty(), "{r:?}");
    sim.stop().await;
}

/// SIGTERM with the broker dead: the pages in flight cannot be
/// acknowledged, and shutdown still ends within `shutdown.grace` plus its
/// bounded tail (flush 3 s, lease release 2 s), exiting cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_dead_exits_within_the_grace() {
    let (mut nats, sim, tag, mut cfg) = busy_pipeline_to_own_nats().await;
    let dir = tempfile::tempdir().unwrap();
    cfg.shutdown.grace = cas_bridge::config::Dur::secs(4);
    prepare_stream(&cfg).await;
    let mut p = BridgeProcess::spawn(&cfg, "dead-broker", &dir.path().join("p.log"));
    // Events are arriving: the bridge is in full flow.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(tag.to_uppercase()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stream.info().await.unwrap().state.messages < 100 {
        assert!(std::time::Instant::now() < deadline, "no events arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.stop();
    let t = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || p.terminate())
        .await
        .unwrap();
    let took = t.elapsed();
    println!("SIGTERM with the broker dead: exited {status} after {took:?} (grace 4 s)");
    assert!(status.success(), "a clean exit");
    // How soon is printed (BENCHMARKS.md), not bounded: the watchdog
    // ends the process at grace + 5 s, and `terminate` fails the test if
    // it does not exit at all.
    sim.stop().await;
}

/// A 200 answer without a `Content-Length` (chunked) of ~3 MB, larger
/// than the 1 MiB reserved for a body of unknown size: the reservation
/// grows with the body, the page parses whole, and the page holds exactly
/// what its body took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_of_unknown_size_is_read_whole_within_its_reservation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let events: Vec<String> = (0..600)
        .map(|i| format!(r#"{{"log_item_id":"id-{i}","pad":"{}"}}"#, "x".repeat(5000)))
        .collect();
    let body = format!(
        r#"{{"security_events":[{}],"next_link":""}}"#,
        events.join(",")
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = body.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = vec![0u8; 8192];
        let _ = s.read(&mut req).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for part in served.as_bytes().chunks(64 * 1024) {
            s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .await
                .unwrap();
            s.write_all(part).await.unwrap();
            s.write_all(b"\r\n").await.unwrap();
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
    });
    let mut cfg = cas_bridge::config::Config::default();
    cfg.api.base_url = Some(format!("http://{addr}"));
    let client =
        cas_bridge::cas::Client::new(&cfg.api, secrecy::SecretString::from("t".to_string()))
            .unwrap();
    let permit = cfg
        .in_memory_coordination()
        .budget
        .acquire(cas_bridge::coord::Priority::Active)
        .await
        .unwrap();
    let url = url::Url::parse(&format!("http://{addr}/v1/siem/security_events")).unwrap();
    let page = client.fetch(permit, &url).await.unwrap();
    assert_eq!(page.len(), 600);
    assert!(body.len() > 3_000_000);
    let held = page.memory.as_ref().expect("a reservation").num_permits();
    // The body whole, and room for the events' tapes read with it: more
    // than the body's KiB (600 events have tapes), and no more than a
    // tenth of the body again (600 events of ~5 KiB each: a tape is a few
    // words a member). Both bounds come from the body, not the page.
    let body_kib = body.len().div_ceil(1024);
    assert!(
        held > body_kib && held <= body_kib + body_kib / 10,
        "{held} KiB held for a body of {body_kib} KiB"
    );
}

/// One process without Redis (cursors in memory), JSON lines to a file:
/// stopped, down for 30 s, started again. The new process has no cursor
/// and continues where the file ends for each pair (an earlier version
/// started again at its own start minus `window.start_from`, skipping
/// the time it was down beyond that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_restarted_without_redis_continues_where_the_file_ends() {
    let sim = start_sim(SimConfig {
        events_per_hour: 3600.0,
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Jsonl);
    let out = dir.path().join("out.jsonl");
    cfg.sink.jsonl.path = out.display().to_string();
    cfg.window.start_from = cas_bridge::config::StartFrom::Ago(Duration::from_secs(5));
    cfg.window.overlap = cas_bridge::config::Dur::secs(12);
    cfg.validate().unwrap();
    let t0 = Utc::now();
    // Until every event of [t0 − 3 s, to] is in the file.
    let delivered_up_to = |to: chrono::DateTime<Utc>, within: Duration| {
        let want = expected(&sim, &cfg, t0 - chrono::Duration::seconds(3), to);
        let out = out.clone();
        let cfg = cfg.clone();
        async move {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if check(&want, &read_jsonl_written(&out), &cfg)
                    .missing
                    .is_empty()
                {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "not delivered up to {to} within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut first = BridgeProcess::spawn(&cfg, "first", &dir.path().join("first.log"));
    delivered_up_to(t0 + chrono::Duration::seconds(15), Duration::from_secs(60)).await;
    assert!(first.terminate().success());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut second = BridgeProcess::spawn(&cfg, "second", &dir.path().join("second.log"));
    let to = Utc::now() + chrono::Duration::seconds(5);
    delivered_up_to(to, Duration::from_secs(60)).await;
    assert!(second.terminate().success());
    let want = expected(&sim, &cfg, t0 - chrono::Duration::seconds(3), to);
    let r = check(&want, &read_jsonl(&out), &cfg);
    println!("restarted without Redis after 30 s down: {r:?}");
    assert!(r.missing.is_empty() && r.wrong_routed == 0, "{r:?}");
    // The re-read starts one overlap before the last window's start: two
    // overlaps (12 s) and that window, ~26 s of 4 pairs at one event a
    // second (measured 59 and 106), nothing more.
    assert!(r.duplicated <= 4 * 35, "{r:?}");
    sim.stop().await;
}
