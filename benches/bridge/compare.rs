//! The bridge against a plain Python collector (benches/plain_collector.py),
//! in one run: the same simulated history, the same sink, one after the
//! other, each one's own CPU time.
//!
//!   cargo bench --bench bridge -- compare [jsonl|nats|kafka] [hours] [pairs] [rounds]
//!
//! Rounds run one after the other (bridge, then Python, each round); the
//! ratio is that of the medians, the floor is measured once, after the last.
//!
//! Needs Python 3 with requests and orjson (and nats-py or confluent-kafka
//! for those sinks): `pip install requests orjson nats-py confluent-kafka`.

use std::time::Duration;

use cas_bridge::config::{SinkKind, StartFrom};
use cas_bridge::telemetry::Stats;
use chrono::{SecondsFormat, Utc};

use super::{base_config, in_process_bridge, run_until, simulator};

const EVENTS_PER_HOUR: &str = "1800";

/// One round: the bridge, then the plain collector, over the same history.
struct Round {
    /// Events per CPU-second of each.
    bridge: f64,
    plain: f64,
    /// Events the bridge delivered, and the history both read.
    events: u64,
    start: chrono::DateTime<Utc>,
    end: chrono::DateTime<Utc>,
    /// The bridge's settings and its output (for the floor).
    cfg: cas_bridge::config::Config,
    tag: String,
    dir: tempfile::TempDir,
}

pub async fn compare(sink: &str, hours: u64, pairs: usize, rounds: usize) {
    let (_sim, api) = simulator(&[
        "--per-minute",
        "0",
        "--per-day",
        "0",
        "--events-per-hour",
        EVENTS_PER_HOUR,
    ]);
    println!("compare → {sink}: {pairs} pairs × {hours} h at {EVENTS_PER_HOUR} events/h, {rounds} round(s)");
    let mut done: Vec<Round> = Vec::new();
    for i in 0..rounds.max(1) {
        let r = round(&api, sink, hours, pairs, i).await;
        println!(
            "  round {}: bridge {:.0}, plain Python collector {:.0} events per CPU-second: {:.2} ×",
            i + 1,
            r.bridge,
            r.plain,
            r.bridge / r.plain
        );
        done.push(r);
    }
    let median = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = done.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (bridge_rate, plain_rate) = (median(|r| r.bridge), median(|r| r.plain));
    println!(
        "  medians: bridge {bridge_rate:.0}, plain Python collector {plain_rate:.0} events per CPU-second"
    );
    println!("  ratio of the medians: {:.2} ×", bridge_rate / plain_rate);
    let Some(last) = done.pop() else { return };
    // The floor: the bridge's input and output alone (benches/bridge/floor.rs);
    // `CAS_BENCH_NO_FLOOR=1` leaves it out (to profile the bridge alone).
    if std::env::var_os("CAS_BENCH_NO_FLOOR").is_some() {
        return;
    }
    let n = last.events;
    let mut parts =
        vec![super::floor::fetch(&api, &last.cfg.shards.pairs, last.start, last.end, n).await];
    match sink {
        "kafka" => parts.extend(super::floor::kafka(&last.cfg, &last.tag, n).await),
        "nats" => {}
        _ => {
            let lines =
                std::fs::read(last.dir.path().join("bridge.jsonl")).expect("the bridge's file");
            parts.push(super::floor::jsonl(
                &lines,
                &last.dir.path().join("floor.jsonl"),
            ));
        }
    }
    let python_us = 1e6 / plain_rate;
    println!(
        "  floor, CPU µs per event (medians: the plain collector {python_us:.2}, the bridge {:.2}):",
        1e6 / bridge_rate
    );
    for p in &parts {
        println!("    {:<46} {:.2}", p.name, p.us_per_event);
    }
    if parts.len() > 1 {
        let least = parts[0].us_per_event + parts[1].us_per_event;
        println!(
            "  fetch + {}: {least:.2} µs, the best ratio to the plain collector: {:.2} ×",
            parts[1].name,
            python_us / least
        );
    }
}

async fn round(api: &str, sink: &str, hours: u64, pairs: usize, i: usize) -> Round {
    let mut cfg = base_config(api, pairs);
    let history = Duration::from_secs(hours * 3600);
    cfg.window.start_from = StartFrom::Ago(history);
    let tag = format!("cmp{}r{i}", std::process::id());
    cfg.sink.topic_template = format!("{tag}.{{service}}.{{event}}");
    cfg.sink.dead_letter = format!("{tag}.deadletter");
    let dir = tempfile::tempdir().expect("tempdir");
    let bridge_file = dir.path().join("bridge.jsonl");
    let plain_file = dir.path().join("plain.jsonl");
    let plain_sink = match sink {
        "nats" => {
            cfg.sink.kind = SinkKind::Nats;
            cfg.sink.nats.url = "nats://127.0.0.1:4222".into();
            cfg.sink.nats.stream = tag.to_uppercase();
            format!("nats:nats://127.0.0.1:4222:PLAIN{}", tag.to_uppercase())
        }
        "kafka" => {
            cfg.sink.kind = SinkKind::Kafka;
            cfg.sink.kafka.brokers = "127.0.0.1:19092".into();
            "kafka:127.0.0.1:19092".into()
        }
        _ => {
            cfg.sink.jsonl.path = bridge_file.to_string_lossy().into_owned();
            format!("jsonl:{}", plain_file.display())
        }
    };
    // The bridge: from `hours` ago until its cursors pass `end`.
    let end = Utc::now() - chrono::Duration::seconds(10);
    let start = end - chrono::Duration::seconds(history.as_secs() as i64);
    let bridge = in_process_bridge(&cfg).await;
    let (_, cpu, _) = run_until(bridge.clone(), end).await;
    let n =
        Stats::get(&bridge.stats().events_published) + Stats::get(&bridge.stats().dead_lettered);
    drop(bridge);

    // The plain collector: the same pairs over [start, end].
    let plain_topics = format!("plain{tag}");
    if sink == "kafka" {
        create_kafka_topics(&plain_topics, &cfg.shards.pairs).await;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/plain_collector.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--api", api, "--token", "sim-token"])
        .args(["--start", &start.to_rfc3339_opts(SecondsFormat::Secs, true)])
        .args(["--end", &end.to_rfc3339_opts(SecondsFormat::Secs, true)])
        .args(["--pairs", &cfg.shards.pairs.join(",")])
        .args(["--sink", &plain_sink, "--prefix", &plain_topics])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the plain collector failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = line.split_whitespace().collect();
    let (pn, pcpu): (u64, f64) = (f[1].parse().unwrap(), f[3].parse().unwrap());
    assert!(
        pn.abs_diff(n) * 100 <= n,
        "the two read different histories: the bridge {n} events, the plain collector {pn}"
    );
    if sink == "nats" {
        delete_nats_streams(&[tag.to_uppercase(), format!("PLAIN{}", tag.to_uppercase())]).await;
    }
    if sink == "jsonl" {
        // Only the last round's file is read again (the floor).
        let _ = std::fs::remove_file(&plain_file);
    }
    Round {
        bridge: n as f64 / cpu.max(0.001),
        plain: pn as f64 / pcpu.max(0.001),
        events: n,
        start,
        end,
        cfg,
        tag,
        dir,
    }
}

/// tansu creates no topic on its own: the plain collector's topics exist
/// before it runs (the bridge creates its own).
async fn create_kafka_topics(prefix: &str, pairs: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:19092")
        .create()
        .expect("kafka admin");
    let names: Vec<String> = pairs
        .iter()
        .map(|p| format!("{prefix}.{}", p.replace(':', ".")))
        .collect();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)))
        .collect();
    admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create topics");
}

async fn delete_nats_streams(names: &[String]) {
    let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    for name in names {
        let _ = js.delete_stream(name).await;
    }
}
