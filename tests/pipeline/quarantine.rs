//! The quarantine stream (`exchange:quarantine`, the API's
//! `quarantine_events`): its 7 days of reach against the security events'
//! 72 hours, its ids (`mail_log_id`), in a backfill, a start clamped to
//! the reach, and `replay`. The kill -9 backfill is in `resume.rs`.

use std::collections::HashMap;
use std::time::Duration;

use cas_bridge::config::{Config, SinkKind, StartFrom};
use cas_bridge::sim::SimConfig;
use cas_bridge::telemetry::Stats;
use chrono::{DateTime, Utc};

use crate::helpers::*;

/// A simulator with few events an hour (a week of them is a quick read).
fn sim_cfg() -> SimConfig {
    SimConfig {
        events_per_hour: 20.0,
        late_fraction: 0.0,
        ..sim_config()
    }
}

/// A simulator and a bridge configuration on it reading `pairs`, events
/// to `file` in the test's directory.
async fn jsonl_bridge(
    pairs: &[&str],
    file: &str,
) -> (
    cas_bridge::sim::SimHandle,
    String,
    tempfile::TempDir,
    Config,
) {
    let sim = start_sim(sim_cfg()).await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Jsonl);
    cfg.shards.pairs = pairs.iter().map(|p| p.to_string()).collect();
    cfg.sink.jsonl.path = dir.path().join(file).display().to_string();
    (sim, tag, dir, cfg)
}

/// `cfg` with the pairs `pairs` only (to ask the simulator's truth per pair).
fn only(cfg: &Config, pairs: &[&str]) -> Config {
    let mut c = cfg.clone();
    c.shards.pairs = pairs.iter().map(|p| p.to_string()).collect();
    c
}

/// The ids expected of each pair over its own range.
fn expected_over(
    sim: &cas_bridge::sim::SimHandle,
    cfg: &Config,
    ranges: &[(&str, DateTime<Utc>, DateTime<Utc>)],
) -> HashMap<String, String> {
    let mut want = HashMap::new();
    for (pair, from, to) in ranges {
        want.extend(expected(sim, &only(cfg, &[pair]), *from, *to));
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_from_six_days_back_delivers_every_quarantine_event_once() {
    let (sim, tag, _dir, mut cfg) = jsonl_bridge(&["exchange:quarantine"], "out.jsonl").await;
    cfg.api.page_limit = None;
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(6 * 86_400));
    cfg.validate().unwrap();
    let t0 = Utc::now();
    let (run, covered) = Running::caught_up(&cfg).await;
    let gap = Stats::get(&run.bridge.stats().gap_seconds);
    run.stop().await;
    let from = t0 - chrono::Duration::days(6) + chrono::Duration::minutes(1);
    let r = assert_delivered("quarantine, 6 days", &sim, &cfg, from, covered.to).await;
    assert_eq!(r.duplicated, 0, "{r:?}");
    // 6 days at 20 an hour.
    assert!(r.expected > 2_500, "{r:?}");
    assert_eq!(gap, 0, "6 days are within the quarantine stream's reach");
    let got = read_sink(&cfg).await;
    let topic = format!("{tag}.exchange.quarantine");
    assert!(got.iter().any(|m| m.topic == topic), "nothing on {topic}");
    // The id is the event's own mail_log_id.
    for m in got.iter().filter(|m| m.topic == topic).take(50) {
        assert_eq!(
            m.doc["data"]["message"]["mail_log_id"].as_str(),
            Some(m.id.as_str()),
            "{}",
            m.doc
        );
    }
    let stats = sim.state.stats();
    assert_eq!(stats.by_status.get(&400), None, "{:?}", stats.by_status);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_eight_days_back_is_clamped_to_each_streams_reach_not_refused() {
    let (sim, _tag, _dir, mut cfg) =
        jsonl_bridge(&["exchange:quarantine", "exchange:dlp"], "out.jsonl").await;
    cfg.api.page_limit = None;
    let t0 = Utc::now();
    cfg.window.start_from = StartFrom::At(t0 - chrono::Duration::days(8));
    cfg.validate().unwrap();
    let (run, covered) = Running::caught_up(&cfg).await;
    let gap = Stats::get(&run.bridge.stats().gap_seconds);
    run.stop().await;
    // The API refused nothing: each pair started at its own reach.
    let stats = sim.state.stats();
    assert_eq!(stats.by_status.get(&400), None, "{:?}", stats.by_status);
    // What was skipped, logged and counted: a day of quarantine events,
    // five days of security events, each and the 15 minutes of margin a
    // window keeps from the edge of the reach.
    let day = 86_400u64;
    assert!(
        (6 * day + 1_800..=6 * day + 1_800 + 120).contains(&gap),
        "{gap} s skipped, expected 6 days (1 + 5) and twice 15 minutes"
    );
    let margin = chrono::Duration::minutes(16);
    let want = expected_over(
        &sim,
        &cfg,
        &[
            (
                "exchange:quarantine",
                t0 - chrono::Duration::days(7) + margin,
                covered.to,
            ),
            (
                "exchange:dlp",
                t0 - chrono::Duration::hours(72) + margin,
                covered.to,
            ),
        ],
    );
    let r = check(&want, &read_sink(&cfg).await, &cfg);
    assert!(r.missing.is_empty(), "{} missing: {r:?}", r.missing.len());
    assert_eq!(r.duplicated, 0, "{r:?}");
    assert_eq!(r.wrong_routed, 0, "{r:?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reaches_five_days_back_for_quarantine_events_not_for_security_events() {
    let (sim, _tag, dir, cfg) =
        jsonl_bridge(&["exchange:quarantine", "exchange:dlp"], "replay.jsonl").await;
    cfg.validate().unwrap();
    let from = Utc::now() - chrono::Duration::days(5);
    let to = from + chrono::Duration::hours(2);
    let (f, t) = (
        cas_bridge::cas::format_time(from),
        cas_bridge::cas::format_time(to),
    );
    let log = dir.path().join("op.log");
    let out = operator(
        &cfg,
        &log,
        &[
            "replay",
            "--pair",
            "exchange:quarantine",
            "--from",
            &f,
            "--to",
            &t,
        ],
    );
    assert!(out.status.success());
    let want = expected(&sim, &only(&cfg, &["exchange:quarantine"]), from, to);
    let got = read_sink(&cfg).await;
    let r = check(&want, &got, &cfg);
    assert!(r.missing.is_empty(), "{r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");
    assert_eq!(got.len(), want.len(), "exactly the range");

    let out = operator(
        &cfg,
        &log,
        &["replay", "--pair", "exchange:dlp", "--from", &f, "--to", &t],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("72 h limit for security events"), "{err}");
    assert_eq!(
        read_sink(&cfg).await.len(),
        got.len(),
        "nothing more published"
    );
    sim.stop().await;
}
