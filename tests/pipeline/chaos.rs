//! Breaking things on purpose: every scenario checks the simulator's ground
//! truth against what the broker holds, and asserts missing = 0 and
//! wrong-routed = 0. Duplicates: the broker's own dedup (JetStream
//! `Nats-Msg-Id`) leaves none; a Kafka topic may hold a re-published window
//! (at most the windows in flight at the fault), consumers dedup by key.

use std::time::Duration;

use cas_bridge::config::{Dur, SinkKind, StartFrom};
use cas_bridge::sim::{SimConfig, ThrottleMode};
use cas_bridge::telemetry::Stats;
use chrono::Utc;
use rand::Rng;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_of_one_of_three_processes_loses_nothing() {
    require_redis();
    require_nats();
    let sim = start_sim(SimConfig {
        events_per_hour: 3600.0,
        latency: Duration::from_millis(100),
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Nats, REDIS_URL, &tag);
    cfg.shards.pairs = eight_pairs();
    cfg.window.max = Dur::secs(60);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(1200));
    prepare_stream(&cfg).await;
    let t0 = Utc::now();
    let spawn = |n: usize| {
        BridgeProcess::spawn(
            &cfg,
            &format!("r{n}"),
            &dir.path().join(format!("r{n}.log")),
        )
    };
    let mut procs: Vec<BridgeProcess> = (0..3).map(spawn).collect();
    for round in 0..3 {
        let wait = rand::rng().random_range(1500..5000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let victim = rand::rng().random_range(0..procs.len());
        println!("round {round}: kill -9 of process {victim} after {wait} ms");
        procs[victim].kill9();
        procs[victim] = spawn(3 + round);
    }
    let obs = observer(&cfg).await;
    let check_to = Utc::now() - chrono::Duration::seconds(3);
    wait_cursor_in(
        &obs,
        &cfg,
        check_to + chrono::Duration::seconds(15),
        Duration::from_secs(150),
    )
    .await;
    for p in &mut procs {
        assert!(p.terminate().success());
    }
    let r = assert_delivered(
        "repeated kill -9",
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(1190),
        check_to,
    )
    .await;
    assert!(r.expected > 5000, "{r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");
    sim.stop().await;
}

/// A Redis outage under two replicas (NATS sink): run until every cursor
/// reached `before` (measured from the start), stop Redis for `outage`,
/// start it again empty on the same port, run until the cursors pass the
/// end of the checked range; then nothing is missing and nothing was
/// published twice in `[start + from, end]`.
async fn redis_outage_loses_nothing(
    what: &str,
    cfg_with: impl FnOnce(&mut cas_bridge::config::Config),
    before: chrono::Duration,
    outage: Duration,
    from: chrono::Duration,
) {
    require_nats();
    let redis = OwnRedis::start();
    let sim = start_sim(SimConfig {
        events_per_hour: 3600.0,
        latency: Duration::from_millis(50),
        ..sim_config()
    })
    .await;
    let tag = tag();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Nats, &redis.url(), &tag);
    cfg.shards.pairs = eight_pairs()[..6].to_vec();
    cfg_with(&mut cfg);
    let t0 = Utc::now();
    let members = vec![member(&cfg, "ra").await, member(&cfg, "rb").await];
    let obs = observer(&cfg).await;
    wait_cursor_in(&obs, &cfg, t0 + before, Duration::from_secs(180)).await;
    let port = redis.stop();
    tokio::time::sleep(outage).await;
    let _redis = OwnRedis::start_on(port);
    // Redis back empty forgot the budget's grants of the last minute, which
    // the API counted: the fleet waits out what is left of it once.
    let check_to = Utc::now() - chrono::Duration::seconds(3);
    wait_cursor_in(
        &obs,
        &cfg,
        check_to + chrono::Duration::seconds(15),
        Duration::from_secs(180),
    )
    .await;
    for m in members {
        m.stop().await;
    }
    let r = assert_delivered(what, &sim, &cfg, t0 + from, check_to).await;
    assert_eq!(r.duplicated, 0, "{what}: {r:?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_run_loses_nothing() {
    redis_outage_loses_nothing(
        "Redis restarted empty",
        |cfg| cfg.window.max = Dur::secs(60),
        -chrono::Duration::minutes(8),
        Duration::from_secs(3),
        -chrono::Duration::seconds(590),
    )
    .await;
}

/// Redis unreachable for longer than the lease TTL (3 s), then back empty
/// (the case that lost events in an earlier version), after a run longer
/// than JetStream's duplicate window (overlap + lag + 60 s = 93 s): nothing
/// is lost, and no shard is read again from the process's start — that
/// re-read would put duplicates older than the duplicate window into the
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_longer_than_the_lease_ttl_and_back_empty_rereads_nothing() {
    redis_outage_loses_nothing(
        "Redis gone past the TTL, back empty",
        |cfg| cfg.window.start_from = cas_bridge::config::StartFrom::Ago(Duration::from_secs(20)),
        chrono::Duration::seconds(110),
        Duration::from_secs(8),
        -chrono::Duration::seconds(15),
    )
    .await;
}

/// The holder of half the shards is frozen (SIGSTOP) while Redis goes
/// away for longer than the lease TTL and comes back empty: the other
/// replica takes the frozen one's shards, with no cursor in Redis for them.
/// It continues from the cursors it last read from Redis, not from its own
/// start minus `window.start_from` — that would re-read the whole run, past
/// JetStream's duplicate window (93 s here). The frozen replica then wakes,
/// finds its leases gone and stops working them. Nothing is missing and
/// nothing was published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_frozen_while_redis_comes_back_empty_costs_no_reread() {
    require_nats();
    let redis = OwnRedis::start();
    let sim = start_sim(SimConfig {
        events_per_hour: 3600.0,
        latency: Duration::from_millis(50),
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Nats, &redis.url(), &tag);
    cfg.shards.pairs = eight_pairs()[..6].to_vec();
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(20));
    prepare_stream(&cfg).await;
    let t0 = Utc::now();
    let procs: Vec<BridgeProcess> = ["fa", "fb"]
        .iter()
        .map(|w| BridgeProcess::spawn(&cfg, w, &dir.path().join(format!("{w}.log"))))
        .collect();
    let obs = observer(&cfg).await;
    wait_cursor_in(
        &obs,
        &cfg,
        t0 + chrono::Duration::seconds(110),
        Duration::from_secs(180),
    )
    .await;
    // Both hold shards by now (the fair share is 3 each).
    let held = obs.status(&cfg.shards.shards().unwrap()).await.unwrap();
    let by_fa = held
        .shards
        .iter()
        .filter(|s| s.owner.as_deref() == Some("fa"))
        .count();
    assert!(by_fa > 0, "the frozen replica holds shards: {held:#?}");
    procs[0].signal("-STOP");
    let port = redis.stop();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _redis = OwnRedis::start_on(port);
    let check_to = Utc::now() - chrono::Duration::seconds(3);
    let obs = observer(&cfg).await;
    wait_cursor_in(
        &obs,
        &cfg,
        check_to + chrono::Duration::seconds(15),
        Duration::from_secs(180),
    )
    .await;
    procs[0].signal("-CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    for mut p in procs {
        assert!(p.terminate().success(), "graceful exit");
    }
    let r = assert_delivered(
        "holder frozen across an empty Redis",
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(15),
        check_to,
    )
    .await;
    assert_eq!(r.duplicated, 0, "{r:?}");
    sim.stop().await;
}

/// The whole fleet is down for 35 s while Redis restarts empty (no
/// persistence): no replica is left that remembers a cursor. The new
/// replicas find none in Redis and continue where each pair's topic ends
/// (the window start of its last record), not at their own start minus
/// `window.start_from` (which lost 1–100+ events here in an earlier
/// version). Returns the delivery report over the whole run.
async fn whole_fleet_down_with_redis_empty(kind: SinkKind) -> Report {
    let redis = OwnRedis::start();
    let sim = start_sim(SimConfig {
        events_per_hour: 3600.0,
        latency: Duration::from_millis(50),
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, kind, &redis.url(), &tag);
    cfg.shards.pairs = eight_pairs()[..6].to_vec();
    // A restart at `start_from` would read back 5 s + the overlap (12 s,
    // over the simulator's 10 s late events): the 35 s down lose 18 s.
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(5));
    cfg.window.overlap = Dur::secs(12);
    cfg.validate().unwrap();
    if kind == SinkKind::Nats {
        // The stream exists before the processes race to create it (Kafka
        // topics are created by the processes themselves).
        prepare_stream(&cfg).await;
    }
    let spawn = |w: &str| BridgeProcess::spawn(&cfg, w, &dir.path().join(format!("{w}.log")));
    let t0 = Utc::now();
    let first: Vec<BridgeProcess> = ["wa", "wb"].iter().map(|w| spawn(w)).collect();
    let obs = observer(&cfg).await;
    wait_cursor_in(
        &obs,
        &cfg,
        t0 + chrono::Duration::seconds(30),
        Duration::from_secs(120),
    )
    .await;
    for mut p in first {
        assert!(p.terminate().success(), "graceful exit");
    }
    let port = redis.stop();
    let _redis = OwnRedis::start_on(port);
    tokio::time::sleep(Duration::from_secs(35)).await;
    let second: Vec<BridgeProcess> = ["wc", "wd"].iter().map(|w| spawn(w)).collect();
    let check_to = Utc::now() - chrono::Duration::seconds(3);
    let obs = observer(&cfg).await;
    wait_cursor_in(
        &obs,
        &cfg,
        check_to + chrono::Duration::seconds(15),
        Duration::from_secs(120),
    )
    .await;
    for mut p in second {
        assert!(p.terminate().success(), "graceful exit");
    }
    let r = assert_delivered(
        "whole fleet down, Redis back empty",
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(15),
        check_to,
    )
    .await;
    sim.stop().await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_fleet_down_while_redis_comes_back_empty_resumes_where_the_stream_ends() {
    require_nats();
    let r = whole_fleet_down_with_redis_empty(SinkKind::Nats).await;
    // The re-read (from one overlap before the last window's start: two
    // overlaps and a window, ~26 s) is republished within JetStream's
    // duplicate window (overlap + lag + 60 s = 75 s).
    assert_eq!(r.duplicated, 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_fleet_down_while_redis_comes_back_empty_resumes_where_the_topic_ends() {
    require_kafka();
    let r = whole_fleet_down_with_redis_empty(SinkKind::Kafka).await;
    // Kafka keeps a re-read: two overlaps and the last window (~26 s) of
    // each of the 6 pairs, at about one event a second.
    assert!(r.duplicated <= 6 * 35, "{r:?}");
}

/// A tansu broker the test owns (killed on drop).
struct OwnTansu {
    port: u16,
    child: std::process::Child,
}

impl OwnTansu {
    fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let bin = std::env::var("HOME")
            .map(|h| format!("{h}/.cargo/bin/tansu"))
            .ok()
            .filter(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| "tansu".into());
        let child = std::process::Command::new(bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu ({e}): cargo install tansu --locked --no-default-features --features dynostore (./scripts/test does)"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    fn signal(&self, sig: &str) {
        std::process::Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }
}

impl Drop for OwnTansu {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_broker_outage_of_30_s_keeps_the_cursor_and_loses_nothing() {
    let tansu = OwnTansu::start();
    let sim = start_sim(SimConfig {
        events_per_hour: 36_000.0,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Kafka);
    cfg.sink.kafka.brokers = format!("127.0.0.1:{}", tansu.port);
    cfg.api.page_limit = Some(500);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(120));
    let t0 = Utc::now();
    let run = Running::start(build_bridge(&cfg, cfg.in_memory_coordination()).await);
    run.wait_cursor(t0 - chrono::Duration::seconds(3), Duration::from_secs(60))
        .await;

    // The broker stops answering (SIGSTOP: a hung broker, its data kept) for 30 s.
    tansu.signal("-STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let frozen = run.bridge.progress();
    let windows = |run: &Running| Stats::get(&run.bridge.stats().windows);
    let windows_frozen = windows(&run);
    tokio::time::sleep(Duration::from_secs(25)).await;
    let later = run.bridge.progress();
    assert_eq!(
        windows(&run),
        windows_frozen,
        "no window was checkpointed while the broker hung"
    );
    for (shard, p) in &frozen {
        assert_eq!(
            p.cursor, later[shard].cursor,
            "{shard}: the cursor moved while the broker was down"
        );
    }
    tansu.signal("-CONT");
    let resumed = Utc::now();
    run.wait_cursor(resumed, Duration::from_secs(120)).await;
    assert!(
        windows(&run) > windows_frozen,
        "windows are checkpointed again after the broker resumed"
    );
    run.stop().await;
    let check_to = resumed - chrono::Duration::seconds(20);
    let r = assert_delivered(
        "Kafka outage",
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(110),
        check_to,
    )
    .await;
    assert!(r.expected > 1000, "{r:?}");
    // Re-published windows are bounded: at most the pages in flight at the stop.
    assert!(r.duplicated <= 4 * 500, "{r:?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_from_a_foreign_client_is_survived_within_the_budget() {
    // The API allows 40 a minute, counted as the live API counts; the
    // bridge's budget is 30; a foreign script on the same token takes the rest and more.
    let sim = start_sim(SimConfig {
        per_minute: 40,
        throttle: ThrottleMode::Fixed,
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Jsonl);
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    cfg.budget.per_minute = 30;
    cfg.api.page_limit = Some(100);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(300));
    let foreign = {
        let url = format!(
            "{}/v1/siem/security_events?service=box&event=dlp",
            sim.base_url()
        );
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            for _ in 0..200 {
                let _ = c
                    .get(&url)
                    .bearer_auth("sim-token")
                    .header("user-agent", "someone-else/1.0")
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let t0 = Utc::now();
    let run = Running::start(build_bridge(&cfg, cfg.in_memory_coordination()).await);
    run.wait_cursor(t0 + chrono::Duration::seconds(20), Duration::from_secs(180))
        .await;
    let limited = run
        .bridge
        .stats()
        .rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    run.stop().await;
    foreign.abort();
    let s = sim.state.stats();
    let bridge_max = s.max_bridge_in_any(Duration::from_secs(60));
    let bridge_429 = s.log.iter().filter(|r| r.bridge && r.status == 429).count();
    println!("429 storm: bridge got {bridge_429} 429s ({limited} seen), at most {bridge_max} bridge requests in any 60 s (budget 30)");
    assert!(
        bridge_429 > 0 && limited > 0,
        "the storm reached the bridge"
    );
    assert!(
        bridge_max <= 30,
        "the bridge exceeded its budget: {bridge_max}"
    );
    let want = expected(&sim, &cfg, t0 - chrono::Duration::seconds(290), t0);
    let r = check(&want, &read_jsonl(&dir.path().join("out.jsonl")), &cfg);
    assert!(r.missing.is_empty(), "{r:?}");
    assert_eq!((r.duplicated, r.wrong_routed), (0, 0), "{r:?}");
    sim.stop().await;
}
