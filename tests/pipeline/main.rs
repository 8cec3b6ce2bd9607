//! Simulator → bridge → real sinks (JSON lines, NATS JetStream at
//! 127.0.0.1:4222, Kafka at 127.0.0.1:19092), checked against the
//! simulator's ground truth.

mod chaos;
mod cloudevents;
mod cluster;
mod deploy;
mod faults;
mod first_hour;
mod fleet;
mod freshness;
mod helpers;
mod limits;
mod network;
mod operate;
mod ops;
mod production;
mod quarantine;
mod redis_shapes;
mod resume;
mod tenants;

use std::time::Duration;

use cas_bridge::cas::Dialect;
use cas_bridge::config::SinkKind;
use cas_bridge::runner::Faults;
use chrono::Utc;
use helpers::*;

/// How far past the checked range the cursors must get, so that late
/// events (10 s) of the range were re-read by an overlapping window.
const SETTLE: chrono::Duration = chrono::Duration::seconds(15);

async fn jsonl_run(dialect: Dialect) {
    let sim = start_sim(cas_bridge::sim::SimConfig {
        dialect,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Jsonl);
    cfg.sink.jsonl.path = out.display().to_string();
    let t0 = Utc::now();
    let run = Running::start(build_bridge(&cfg, cfg.in_memory_coordination()).await);
    let check_to = t0 - chrono::Duration::seconds(3);
    run.wait_cursor(check_to + SETTLE, Duration::from_secs(90))
        .await;
    let stats = run.bridge.stats().clone();
    run.stop().await;

    let from = t0 - chrono::Duration::seconds(590);
    let want = expected(&sim, &cfg, from, check_to);
    let late: usize = cfg
        .shards
        .shards()
        .unwrap()
        .iter()
        .map(|s| sim.state.late_ids(s, from, check_to).len())
        .sum();
    assert!(
        late > 10,
        "the range holds late events (10 s late, lag 3 s): {late}"
    );
    let got = read_jsonl(&out);
    let r = check(&want, &got, &cfg);
    assert!(r.expected > 500, "the range holds events: {r:?}");
    assert!(
        r.missing.is_empty(),
        "missing {} of {}: {:?}",
        r.missing.len(),
        r.expected,
        &r.missing[..r.missing.len().min(5)]
    );
    assert_eq!(r.duplicated, 0, "{r:?}");
    assert_eq!(r.wrong_routed, 0, "{r:?}");
    assert_eq!(r.dead_lettered, 0, "{r:?}");
    // The overlap re-read events that were removed as duplicates, not published again.
    assert!(
        stats
            .duplicates_skipped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // The vendor's object arrives whole: the returned service name is kept as data.
    let ex = got.iter().find(|m| m.doc["service"] == "onedrive").unwrap();
    assert_eq!(ex.doc["data"]["service"], "OneDrive");
    if dialect == Dialect::V1 {
        assert_eq!(ex.doc["data"]["event"], "security_risk_scan");
        assert_eq!(ex.doc["data"]["log_item_id"].as_str(), Some(ex.id.as_str()));
    } else {
        assert_eq!(
            ex.id.len(),
            64,
            "legacy events have no log_item_id: the id is a hash"
        );
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_v1_delivers_every_id_once_with_late_and_boundary_events() {
    jsonl_run(Dialect::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_legacy_delivers_every_id_once() {
    jsonl_run(Dialect::Legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_delivers_every_id_once_on_its_subject() {
    require_nats();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let cfg = bridge_config(&sim, &tag, SinkKind::Nats);
    let t0 = Utc::now();
    let run = Running::start(build_bridge(&cfg, cfg.in_memory_coordination()).await);
    let check_to = t0 - chrono::Duration::seconds(3);
    run.wait_cursor(check_to + SETTLE, Duration::from_secs(90))
        .await;
    run.stop().await;
    let want = expected(&sim, &cfg, t0 - chrono::Duration::seconds(590), check_to);
    let got = read_nats(NATS_URL, &cfg.sink.nats.stream).await;
    let r = check(&want, &got, &cfg);
    assert!(r.expected > 500, "{r:?}");
    assert!(r.missing.is_empty(), "missing {}: {r:?}", r.missing.len());
    assert_eq!(
        (r.duplicated, r.wrong_routed, r.dead_lettered),
        (0, 0, 0),
        "{r:?}"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_delivers_every_id_once_on_its_topic() {
    require_kafka();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let cfg = bridge_config(&sim, &tag, SinkKind::Kafka);
    let t0 = Utc::now();
    let run = Running::start(build_bridge(&cfg, cfg.in_memory_coordination()).await);
    let check_to = t0 - chrono::Duration::seconds(3);
    run.wait_cursor(check_to + SETTLE, Duration::from_secs(120))
        .await;
    run.stop().await;
    let want = expected(&sim, &cfg, t0 - chrono::Duration::seconds(590), check_to);
    let got = read_sink(&cfg).await;
    let r = check(&want, &got, &cfg);
    assert!(r.expected > 500, "{r:?}");
    assert!(r.missing.is_empty(), "missing {}: {r:?}", r.missing.len());
    assert_eq!(
        (r.duplicated, r.wrong_routed, r.dead_lettered),
        (0, 0, 0),
        "{r:?}"
    );
    sim.stop().await;
}

fn run_shards(cfg: &cas_bridge::config::Config) -> Vec<cas_bridge::shard::Shard> {
    cfg.shards.shards().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_violations_land_in_the_dead_letter_topic_with_reasons() {
    require_nats();
    let sim = start_sim(cas_bridge::sim::SimConfig {
        bad_fraction: 0.1,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let cfg = bridge_config(&sim, &tag, SinkKind::Nats);
    let t0 = Utc::now();
    let run = Running::start(build_bridge(&cfg, cfg.in_memory_coordination()).await);
    let check_to = t0 - chrono::Duration::seconds(3);
    run.wait_cursor(check_to + SETTLE, Duration::from_secs(90))
        .await;
    run.stop().await;
    let from = t0 - chrono::Duration::seconds(590);
    let want = expected(&sim, &cfg, from, check_to);
    let got = read_nats(NATS_URL, &cfg.sink.nats.stream).await;
    let r = check(&want, &got, &cfg);
    let bad: usize = run_shards(&cfg)
        .iter()
        .map(|s| sim.state.bad_ids(s, from, check_to).len())
        .sum();
    assert!(bad > 20, "the simulator produced bad events: {bad}");
    assert!(r.missing.is_empty(), "{r:?}");
    assert_eq!((r.duplicated, r.wrong_routed), (0, 0), "{r:?}");
    assert!(r.dead_lettered >= bad, "{r:?} vs {bad} bad");
    let dl = got
        .iter()
        .find(|m| m.topic == cfg.sink.dead_letter)
        .unwrap();
    assert!(
        dl.doc["reasons"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("/message"),
        "{}",
        dl.doc
    );
    assert!(
        dl.doc["data"]["message"].is_string()
            || dl.doc["data"]["message"]["detection_time"].is_number()
    );
    assert_eq!(
        dl.doc["intended_topic"].as_str().unwrap(),
        format!(
            "{tag}.{}.{}",
            dl.doc["service"].as_str().unwrap(),
            dl.doc["event"].as_str().unwrap()
        )
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_between_publish_and_checkpoint_loses_nothing() {
    require_nats();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Nats);
    // Small windows so the halt falls in the middle of the history.
    cfg.window.max = cas_bridge::config::Dur::secs(120);
    let coord = cfg.in_memory_coordination();
    let t0 = Utc::now();
    let first = build_bridge_with_faults(
        &cfg,
        coord.clone(),
        Faults {
            halt_before_checkpoint_after_windows: Some(6),
        },
    )
    .await;
    let mut run = Running::start(first);
    tokio::time::timeout(Duration::from_secs(60), &mut run.task)
        .await
        .expect("the fault fired and the bridge stopped")
        .unwrap();
    let published_first = run
        .bridge
        .stats()
        .events_published
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(published_first > 0);
    // A new process: same checkpoints (the store outlives the process), no dedup memory.
    let coord2 = cas_bridge::coord::Coordination {
        dedup: cfg.in_memory_coordination().dedup,
        ..coord
    };
    let run = Running::start(build_bridge(&cfg, coord2).await);
    let check_to = t0 - chrono::Duration::seconds(3);
    run.wait_cursor(check_to + SETTLE, Duration::from_secs(90))
        .await;
    run.stop().await;
    let want = expected(&sim, &cfg, t0 - chrono::Duration::seconds(590), check_to);
    let got = read_nats(NATS_URL, &cfg.sink.nats.stream).await;
    let r = check(&want, &got, &cfg);
    assert!(r.missing.is_empty(), "{r:?}");
    // JetStream removed the re-published window's duplicates by Nats-Msg-Id.
    assert_eq!((r.duplicated, r.wrong_routed), (0, 0), "{r:?}");
    sim.stop().await;
}
