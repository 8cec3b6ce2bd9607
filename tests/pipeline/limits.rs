//! Records a broker refuses for good: a nats-server with a small
//! `max_payload`, and a Kafka producer whose `message.max.bytes` is below
//! an event's size. The oversized events land on the dead-letter topic
//! with the broker's reason, every other event is delivered once, and the
//! cursors move: one record never stalls its shard.

use std::time::Duration;

use chrono::Utc;

use crate::helpers::*;
use cas_bridge::bridge::Coordination;
use cas_bridge::config::{Config, SinkKind};
use cas_bridge::sim::SimHandle;

/// 3 % of events carry 200 KB of padding: far over a 64 KiB limit.
fn huge_sim() -> cas_bridge::sim::SimConfig {
    cas_bridge::sim::SimConfig {
        huge_fraction: 0.03,
        huge_bytes: 200_000,
        ..sim_config()
    }
}

async fn refused_records_are_dead_lettered(cfg: Config, sim: SimHandle, reason: &str) {
    let t0 = Utc::now();
    let run = Running::start(build_bridge(&cfg, Coordination::in_memory(&cfg)).await);
    let check_to = t0 - chrono::Duration::seconds(3);
    // The cursors pass the end of the range: nothing stalled.
    run.wait_cursor(
        check_to + chrono::Duration::seconds(15),
        Duration::from_secs(120),
    )
    .await;
    run.stop().await;
    let from = t0 - chrono::Duration::seconds(590);
    let huge: usize = cfg
        .shards
        .shards()
        .unwrap()
        .iter()
        .map(|s| sim.state.huge_ids(s, from, check_to).len())
        .sum();
    assert!(huge >= 5, "the range holds oversized events: {huge}");
    let r = assert_delivered("oversized", &sim, &cfg, from, check_to).await;
    assert!(r.expected > 500, "{r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");
    assert!(r.dead_lettered >= huge, "{r:?}");
    // Each oversized event's dead letter names the broker's reason; it is
    // the truncated form (the whole one is as large as the event).
    let got = read_sink(&cfg).await;
    let dead: Vec<_> = got
        .iter()
        .filter(|m| m.topic == cfg.sink.dead_letter)
        .collect();
    assert!(dead.len() >= huge);
    for d in &dead {
        let why = d.doc["reasons"][0]["message"].as_str().unwrap_or_default();
        assert!(why.contains(reason), "{why}");
        assert_eq!(d.doc["truncated"], true, "{}", d.doc);
        assert!(d.doc["size"].as_u64().unwrap() > 200_000);
        assert!(d.doc["window_start"].is_string() && d.doc["service"].is_string());
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_max_payload_dead_letters_oversized_events_and_delivers_the_rest() {
    let nats = OwnNats::start_with_max_payload(64 * 1024);
    let sim = start_sim(huge_sim()).await;
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Nats);
    cfg.sink.nats.url = nats.url();
    refused_records_are_dead_lettered(cfg, sim, "max_payload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_message_max_bytes_dead_letters_oversized_events_and_delivers_the_rest() {
    require_kafka();
    let sim = start_sim(huge_sim()).await;
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Kafka);
    cfg.sink
        .kafka
        .properties
        .insert("message.max.bytes".into(), "65536".into());
    refused_records_are_dead_lettered(cfg, sim, "message.max.bytes").await;
}
