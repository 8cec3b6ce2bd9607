//! Records a broker refuses for good: a nats-server with a small
//! `max_payload`, and a Kafka producer whose `message.max.bytes` is below
//! an event's size. The oversized events land on the dead-letter topic
//! with the broker's reason, every other event is delivered once, and the
//! cursors move: one record never stalls its shard.

use std::time::Duration;

use chrono::Utc;

use crate::helpers::*;
use cas_bridge::config::{Config, SinkKind, StartFrom};
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
    // The cursors pass the end of the range: nothing stalled.
    let (run, range) = Running::caught_up(&cfg).await;
    run.stop().await;
    let (from, check_to) = (range.from, range.to);
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

/// Peak resident memory of a process (VmHWM), MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .expect("VmHWM in /proc")
        / 1024.0
}

/// A hostile API answers every request with a page of a million items `0`
/// (2 MB) on 8 shards at once: the parser stops at the 1,001st item, each
/// shard is parked after its few tries, readiness goes false, and the
/// process stays small with a few log lines per shard (an earlier version
/// peaked at 1.63 GB and wrote a line per item).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_a_million_items_is_refused_in_little_memory_and_parks_the_shards() {
    let sim = start_sim(cas_bridge::sim::SimConfig {
        flood: 1_000_000,
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Jsonl);
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    cfg.shards.pairs = eight_pairs();
    let listen = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("bridge.log");
    let mut bridge = BridgeProcess::spawn_with(&cfg, "flood", &log, &[("OPS__LISTEN", &listen)]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Every shard parked: the counter, per shard, on /metrics (parked
        // shards are the tenant's trouble and leave the replica ready).
        let parked = get(&format!("http://{listen}/metrics"))
            .await
            .is_some_and(|(_, body)| {
                body.lines()
                    .filter(|l| l.starts_with("cas_bridge_shards_parked_total{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .filter(|n| *n >= 1.0)
                    .count()
                    >= 8
            });
        if parked {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every shard parked within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak = peak_rss_mib(bridge.child.id());
    assert!(bridge.terminate().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().count();
    let asked = sim.state.stats().served;
    println!(
        "a million items a page: {asked} pages answered, peak RSS {peak:.1} MiB, {lines} log lines"
    );
    assert!(asked >= 8, "{asked}");
    assert!(
        text.contains("more than 1000 events in one page"),
        "the reason is logged:\n{text}"
    );
    assert!(lines < 20 * 8, "{lines} log lines:\n{text}");
    assert!(peak < 100.0, "peak RSS {peak:.1} MiB");
    assert!(
        !std::path::Path::new(&cfg.sink.jsonl.path).exists()
            || std::fs::read_to_string(&cfg.sink.jsonl.path)
                .unwrap()
                .is_empty()
    );
    sim.stop().await;
}

/// Valid pages of ~24 MB (400 events of 60 KB) on 8 shards at once, JSON
/// lines: every event arrives, and the bytes of pages in flight are
/// bounded, so the process stays under the chart's 256 MiB memory limit
/// (8 such pages held at once were measured at 585 MB in an earlier
/// version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_pages_of_24_mb_at_once_stay_under_256_mib() {
    let sim = start_sim(cas_bridge::sim::SimConfig {
        events_per_hour: 6000.0,
        huge_fraction: 1.0,
        huge_bytes: 60_000,
        late_fraction: 0.0,
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Jsonl);
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    cfg.shards.pairs = eight_pairs();
    cfg.api.page_limit = Some(500);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(240));
    let t0 = Utc::now();
    let log = dir.path().join("bridge.log");
    let mut bridge = BridgeProcess::spawn(&cfg, "big", &log);
    // Wait for the history to be delivered: every expected id in the file.
    let to = t0 - chrono::Duration::seconds(5);
    let from = t0 - chrono::Duration::seconds(235);
    // JSON lines take events of any size: the "huge" ones go to their
    // pair's topic like the rest.
    let topics =
        cas_bridge::sink::Topics::new(&cfg.sink.topic_template, &cfg.sink.dead_letter).unwrap();
    let want: std::collections::HashMap<String, String> = cfg
        .shards
        .shards()
        .unwrap()
        .iter()
        .flat_map(|s| {
            let topic = topics.topic(s);
            sim.state
                .truth(s, from, to)
                .into_iter()
                .map(move |id| (id, topic.clone()))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let out = std::path::Path::new(&cfg.sink.jsonl.path);
    loop {
        // Lines are counted first (the file is large and still written);
        // the ids are checked once there are enough.
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if text.matches('\n').count() >= want.len()
            && check(&want, &parse_jsonl_written(&text), &cfg)
                .missing
                .is_empty()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the history was not delivered within 240 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let peak = peak_rss_mib(bridge.child.id());
    assert!(bridge.terminate().success());
    let r = check(&want, &read_jsonl(out), &cfg);
    println!(
        "8 shards of ~24 MB pages: {} events delivered, peak RSS {peak:.1} MiB",
        r.delivered
    );
    assert!(r.missing.is_empty(), "{r:?}");
    assert_eq!((r.duplicated, r.wrong_routed), (0, 0), "{r:?}");
    assert!(r.expected > 8 * 350, "{r:?}");
    assert!(peak < 256.0, "peak RSS {peak:.1} MiB");
    sim.stop().await;
}
