//! The operator's commands, through the real binary against real Redis:
//! `replay` re-delivers exactly a range and moves no cursor; `checkpoint
//! set` while two replicas run is honoured and not overwritten.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use cas_bridge::config::SinkKind;
use cas_bridge::coord::{Budget, CheckpointStore};
use cas_bridge::shard::Shard;
use chrono::{DateTime, SubsecRound, Utc};

use crate::helpers::*;

/// Asserts that the command succeeded and its summary has every line.
fn says(out: &std::process::Output, lines: &[String]) {
    assert!(out.status.success(), "the command failed");
    let text = String::from_utf8_lossy(&out.stdout);
    for l in lines {
        assert!(text.contains(l.as_str()), "no `{l}` in:\n{text}");
    }
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_exactly_the_range_and_moves_no_cursor() {
    require_redis();
    let sim = start_sim(cas_bridge::sim::SimConfig {
        bad_fraction: 0.05,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag);
    cfg.sink.jsonl.path = dir.path().join("fleet.jsonl").display().to_string();
    // The fleet delivers the history, then stops: its cursors and dedup
    // memory stay in Redis.
    let fleet = Fleet::caught_up(&[(&cfg, "fleet-a")]).await;
    let (obs, t0) = (fleet.observer.clone(), fleet.t0);
    fleet.stop().await;

    let shard = Shard::new("exchange", "dlp");
    let cursor = obs.load(&shard).await.unwrap();
    let progress = obs.load_progress(&shard).await.unwrap();
    let served = sim.state.stats().served;

    let (from, to) = (
        (t0 - chrono::Duration::seconds(500)).trunc_subsecs(3),
        (t0 - chrono::Duration::seconds(200)).trunc_subsecs(3),
    );
    let mut rcfg = cfg.clone();
    let out = dir.path().join("replay.jsonl");
    rcfg.sink.jsonl.path = out.display().to_string();
    let template = format!("{tag}.replay.{{service}}.{{event}}");
    let res = operator(
        &rcfg,
        &dir.path().join("replay.log"),
        &[
            "replay",
            "--pair",
            "exchange:dlp",
            "--from",
            &rfc(from),
            "--to",
            &rfc(to),
            "--topic",
            &template,
            "--window",
            "2m",
        ],
    );
    assert!(res.status.success(), "replay failed");
    let summary = String::from_utf8_lossy(&res.stdout).to_string();

    // Exactly the simulator's ids of the range: valid ones on the replay
    // topic, bad ones on the dead-letter topic, each once.
    let bad: HashSet<String> = sim.state.bad_ids(&shard, from, to).into_iter().collect();
    let truth = sim.state.truth(&shard, from, to);
    assert!(
        truth.len() > 50 && !bad.is_empty(),
        "{} ids, {} bad",
        truth.len(),
        bad.len()
    );
    let want: BTreeSet<(String, String)> = truth
        .iter()
        .map(|id| {
            let topic = if bad.contains(id) {
                cfg.sink.dead_letter.clone()
            } else {
                format!("{tag}.replay.exchange.dlp")
            };
            (topic, id.clone())
        })
        .collect();
    let got = read_jsonl(&out);
    let got_set: BTreeSet<(String, String)> = got
        .iter()
        .map(|m| (m.topic.clone(), m.id.clone()))
        .collect();
    assert_eq!(got.len(), got_set.len(), "an id was replayed twice");
    assert_eq!(
        got_set, want,
        "the replay delivered other ids than the range's"
    );
    assert!(
        summary.contains(&format!("published      {}", truth.len() - bad.len())),
        "{summary}"
    );

    // No cursor or progress moved; the requests were taken from the
    // fleet's budget in Redis.
    assert_eq!(obs.load(&shard).await.unwrap(), cursor);
    assert_eq!(obs.load_progress(&shard).await.unwrap(), progress);
    let requests = sim.state.stats().served - served;
    assert!(
        requests >= 3,
        "three windows of 2 minutes at least: {requests}"
    );
    assert!(
        obs.usage().await.last_minute >= requests as u32,
        "the replay's {requests} requests are counted in the shared budget"
    );
    sim.stop().await;
}

/// A replay whose first answer is a 429 with a hostile `Retry-After` (a
/// date in year 9999, the largest u64 in seconds): it finishes, having
/// paused at most `budget.max_pause`, and with Redis the token's shared
/// pause it leaves behind is no longer than that either.
async fn replay_survives_a_hostile_retry_after(retry_after: &str, redis: bool) {
    let sim = start_sim(cas_bridge::sim::SimConfig {
        throttle_first: 1,
        throttle_retry_after: Some(retry_after.into()),
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = if redis {
        require_redis();
        fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag)
    } else {
        bridge_config(&sim, &tag, SinkKind::Jsonl)
    };
    cfg.sink.jsonl.path = dir.path().join("replay.jsonl").display().to_string();
    cfg.budget.max_pause = cas_bridge::config::Dur::secs(3);
    let log = dir.path().join("replay.log");
    let res = operator(
        &cfg,
        &log,
        &[
            "replay",
            "--pair",
            "exchange:dlp",
            "--from",
            "10m",
            "--to",
            "8m",
        ],
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        res.status.success(),
        "{retry_after} (redis {redis}): the replay failed:\n{text}\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    let st = sim.state.stats();
    assert_eq!(
        st.by_status.get(&429).copied(),
        Some(1),
        "{:?}",
        st.by_status
    );
    assert!(
        st.by_status.get(&200).copied().unwrap_or(0) >= 1,
        "{:?}",
        st.by_status
    );
    if redis {
        // Whatever pause the replay left on the token's budget in Redis is
        // within the cap (the whole fleet reads it).
        let usage = cas_bridge::coord::Budget::usage(observer(&cfg).await.as_ref()).await;
        assert!(
            usage.paused.unwrap_or_default() <= Duration::from_secs(3),
            "the fleet's budget is paused for {:?}",
            usage.paused
        );
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_caps_a_far_future_retry_after_date() {
    replay_survives_a_hostile_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", false).await;
    replay_survives_a_hostile_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_caps_a_retry_after_of_u64_max_seconds() {
    replay_survives_a_hostile_retry_after("18446744073709551615", false).await;
    replay_survives_a_hostile_retry_after("18446744073709551615", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_a_range_past_the_api_reach_naming_it() {
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Jsonl);
    cfg.sink.jsonl.path = dir.path().join("r.jsonl").display().to_string();
    let res = operator(
        &cfg,
        &dir.path().join("r.log"),
        &[
            "replay",
            "--pair",
            "exchange:dlp",
            "--from",
            "73h",
            "--to",
            "70h",
        ],
    );
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("72 h limit"), "{err}");
    assert_eq!(sim.state.stats().served, 0, "nothing was asked of the API");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_set_while_two_replicas_run_is_honoured_and_not_overwritten() {
    require_redis();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag);
    let mut a = cfg.clone();
    a.sink.jsonl.path = dir.path().join("a.jsonl").display().to_string();
    cfg.sink.jsonl.path = dir.path().join("b.jsonl").display().to_string();
    let fleet = Fleet::caught_up(&[(&a, "replica-a"), (&cfg, "replica-b")]).await;
    let obs = fleet.observer.clone();
    let shard = Shard::new("onedrive", "securityrisk");
    let log = dir.path().join("cp.log");

    // Held by a replica: refused without --force, nothing changed.
    let before = obs.load(&shard).await.unwrap().unwrap();
    let back = (Utc::now() - chrono::Duration::seconds(400)).trunc_subsecs(0);
    let args = [
        "checkpoint",
        "set",
        "--pair",
        "onedrive:securityrisk",
        "--to",
    ];
    let refused = operator(&cfg, &log, &[&args[..], &[rfc(back).as_str()]].concat());
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--force"),
        "the refusal says how to go on"
    );
    assert!(obs.load(&shard).await.unwrap().unwrap() >= before);

    // With --force: the holder is displaced, the cursor is moved back, and
    // the next window the fleet asks for starts at the new cursor less the
    // overlap (30 s): no holder wrote its own cursor over it.
    let moved = operator(
        &cfg,
        &log,
        &[&args[..], &[rfc(back).as_str(), "--force"]].concat(),
    );
    assert!(moved.status.success());
    let text = String::from_utf8_lossy(&moved.stdout).to_string();
    assert!(
        text.contains("before:") && text.contains("after:"),
        "{text}"
    );
    assert!(text.contains(&cas_bridge::cas::format_time(back)), "{text}");
    let restart_key = format!(
        "onedrive:securityrisk:{}:",
        (back - chrono::Duration::seconds(30)).timestamp_millis()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !sim
        .state
        .stats()
        .page_reads
        .keys()
        .any(|k| k.starts_with(&restart_key))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no window from the new cursor within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The fleet goes on from there: the shard's cursor passes now again.
    let again = Utc::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while obs
        .load(&shard)
        .await
        .unwrap()
        .is_none_or(|c| c < again - chrono::Duration::seconds(3))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shard did not catch up again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `show` reads it; `reset` moves it to window.start_from (10 min back).
    let shown = operator(
        &cfg,
        &log,
        &["checkpoint", "show", "--pair", "onedrive:securityrisk"],
    );
    assert!(shown.status.success());
    assert!(String::from_utf8_lossy(&shown.stdout).starts_with("onedrive:securityrisk  cursor "));
    fleet.stop().await;
    let reset_at = Utc::now();
    let reset = operator(
        &cfg,
        &log,
        &["checkpoint", "reset", "--pair", "onedrive:securityrisk"],
    );
    assert!(reset.status.success());
    let c = obs.load(&shard).await.unwrap().unwrap();
    let want = reset_at - chrono::Duration::seconds(600);
    assert!(
        (c - want).num_seconds().abs() <= 5,
        "reset to {c}, want about {want}"
    );
    sim.stop().await;
}

/// The fleet dead-letters the simulator's bad events; the schema is then
/// "fixed" (a detection time may also be a number) and `redrive` runs
/// twice: the dead letters that pass now reach their topics once, with
/// `cas-redriven`; the ones whose message is not an object stay.
async fn redrive_republishes_fixed_records_once(kind: SinkKind) {
    require_redis();
    let sim = start_sim(cas_bridge::sim::SimConfig {
        bad_fraction: 0.2,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config(&sim, &tag, kind, REDIS_URL, &tag);
    Fleet::caught_up(&[(&cfg, "fleet-a")]).await.stop().await;

    // The oracle, from the dead letters themselves: those whose event has a
    // message object fail only on the detection time's type.
    let before = read_sink(&cfg).await;
    let dead: Vec<&Received> = before
        .iter()
        .filter(|m| m.topic == cfg.sink.dead_letter)
        .collect();
    let fixable: BTreeSet<(String, String)> = dead
        .iter()
        .filter(|m| m.doc["data"]["message"].is_object())
        .map(|m| {
            (
                m.doc["intended_topic"].as_str().unwrap().to_string(),
                m.id.clone(),
            )
        })
        .collect();
    let stay = dead
        .iter()
        .filter(|m| !m.doc["data"]["message"].is_object())
        .count();
    assert!(
        fixable.len() > 10 && stay > 10,
        "{} fixable, {stay} stay",
        fixable.len()
    );

    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    let mut message: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("schemas/message.json").unwrap()).unwrap();
    message["properties"]["detection_time"] = serde_json::json!({"type": ["string", "integer"]});
    std::fs::write(schemas.join("message.json"), message.to_string()).unwrap();
    let mut fixed = cfg.clone();
    fixed.schemas.dir = Some(schemas);
    let log = dir.path().join("redrive.log");

    // A dry run reads and counts, and publishes nothing.
    let dry = operator(&fixed, &log, &["redrive", "--dry-run"]);
    let invalid = format!("still invalid         {stay}\n");
    says(
        &dry,
        &[
            format!("dead letters read     {}\n", dead.len()),
            format!("published again       {} (dry run", fixable.len()),
            invalid.clone(),
        ],
    );
    assert_eq!(read_sink(&cfg).await.len(), before.len());
    let first = operator(&fixed, &log, &["redrive"]);
    says(
        &first,
        &[
            format!("published again       {}\n", fixable.len()),
            invalid,
        ],
    );
    let second = operator(&fixed, &log, &["redrive"]);
    says(&second, &["published again       0\n".to_string()]);
    // A normal run logs no error: reaching the end of a partition is how
    // a read ends (librdkafka's "Global error: PartitionEOF" is not shown).
    for out in [&first, &second] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("PartitionEOF"), "{err}");
        assert!(!err.contains("ERROR"), "{err}");
    }

    let after = read_sink(&cfg).await;
    let redriven: Vec<&Received> = after
        .iter()
        .filter(|m| m.headers.contains_key("cas-redriven"))
        .collect();
    let got: BTreeSet<(String, String)> = redriven
        .iter()
        .map(|m| (m.topic.clone(), m.id.clone()))
        .collect();
    assert_eq!(redriven.len(), got.len(), "a record was redriven twice");
    assert_eq!(got, fixable);
    // Nothing else moved: the dead letters stay, the rest is as before.
    assert_eq!(after.len(), before.len() + fixable.len());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_republishes_fixed_records_once_on_jetstream() {
    require_nats();
    redrive_republishes_fixed_records_once(SinkKind::Nats).await;
}

/// The same on Kafka (tansu): read back to each partition's end as the
/// broker's fetch reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_republishes_fixed_records_once_on_kafka() {
    require_kafka();
    redrive_republishes_fixed_records_once(SinkKind::Kafka).await;
}

/// What the bridge reads back from Kafka ends where the partition ends,
/// the whole last batch included: `redrive` reads every record and a
/// restart without Redis takes the last window start of the topic. Both
/// once read to the `ListOffsets` high watermark, which tansu 0.6 answers
/// with the first offset of the last batch plus one: a batch of 300 read
/// back as 1 record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_reads_back_to_the_end_of_the_last_batch() {
    use cas_bridge::sink::{KafkaConfig, KafkaSink, PageMeta, Record, Sink};
    use cas_bridge::window::Window;
    use std::sync::Arc;
    require_kafka();
    let sink = KafkaSink::new(&KafkaConfig {
        brokers: kafka_brokers(),
        ..KafkaConfig::default()
    })
    .unwrap();
    let topic = format!("{}.reads", tag());
    sink.prepare(std::slice::from_ref(&topic)).await.unwrap();
    let shard = Shard::new("exchange", "dlp");
    let window = |m: i64| Window {
        start: DateTime::from_timestamp(1_700_000_000 + m * 60, 0).unwrap(),
        end: DateTime::from_timestamp(1_700_000_060 + m * 60, 0).unwrap(),
    };
    let (early, late) = (
        Arc::new(PageMeta::new(&shard, &window(0))),
        Arc::new(PageMeta::new(&shard, &window(1))),
    );
    // One call, sent as one batch: 150 records of an earlier window, then
    // 150 of a later one.
    let records: Vec<Record> = (0..300)
        .map(|i| {
            let meta = if i < 150 { &early } else { &late };
            Record::event(
                topic.as_str().into(),
                format!("id-{i:03}"),
                meta,
                &format!(r#"{{"n":{i}}}"#),
            )
        })
        .collect();
    sink.publish(&records).await.unwrap();

    let back = sink.read_back(&topic, 1000).await.unwrap();
    let ids: BTreeSet<String> = back
        .iter()
        .map(|b| {
            let doc: serde_json::Value = serde_json::from_slice(b).unwrap();
            doc["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(back.len(), 300, "read back {} of 300", back.len());
    assert_eq!(ids, (0..300).map(|i| format!("id-{i:03}")).collect());
    assert_eq!(
        sink.last_window_start(&topic).await.unwrap().as_deref(),
        Some(late.window_start.as_str()),
        "the last window start of the topic is the later window's"
    );
    // Read through `--max`: refused, naming the flag.
    let err = sink.read_back(&topic, 100).await.unwrap_err().to_string();
    assert!(err.contains("--max"), "{err}");
}
