//! The release-shaped binary as an operator sees it: metrics, readiness,
//! logs without secrets, configuration errors that name the field.

use std::time::Duration;

use cas_bridge::config::SinkKind;
use cas_bridge::sim::SimConfig;

use crate::helpers::*;

const METRICS: [&str; 14] = [
    "cas_bridge_api_requests_total",
    "cas_bridge_api_request_duration_seconds",
    "cas_bridge_events_fetched_total",
    "cas_bridge_events_published_total",
    "cas_bridge_events_dead_lettered_total",
    "cas_bridge_duplicates_skipped_total",
    "cas_bridge_budget_permits_total",
    "cas_bridge_budget_wait_seconds",
    "cas_bridge_rate_limited_total",
    "cas_bridge_leases_held",
    "cas_bridge_leases_lost_total",
    "cas_bridge_checkpoint_lag_seconds",
    "cas_bridge_window_gap_seconds_total",
    "cas_bridge_sink_publish_duration_seconds",
];

/// The sum of a counter over its label sets.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `cas_bridge_*` metric names in a text, histogram series named by
/// their bucket series.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("cas_bridge_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .map(|n| format!("{n}_bucket"))
            .unwrap_or_else(|| name.to_string());
        out.insert(name);
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_and_readiness_follows_redis() {
    let redis = OwnRedis::start();
    let sim = start_sim(SimConfig {
        bad_fraction: 0.05,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, &redis.url(), &tag);
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("bridge.log");
    let _bridge = BridgeProcess::spawn_with(&cfg, "ops", &log, &[("OPS__LISTEN", &listen)]);
    let base = format!("http://{listen}");

    wait_for("healthz", Duration::from_secs(30), async || {
        get(&format!("{base}/healthz"))
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await;
    wait_for("readyz", Duration::from_secs(30), async || {
        get(&format!("{base}/readyz"))
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await;
    let mut text = String::new();
    wait_for("events published", Duration::from_secs(60), async || {
        text = get(&format!("{base}/metrics"))
            .await
            .map(|(_, t)| t)
            .unwrap_or_default();
        counter(&text, "cas_bridge_events_published_total") > 100.0
            && counter(&text, "cas_bridge_events_dead_lettered_total") > 0.0
            && text.contains("cas_bridge_checkpoint_lag_seconds{")
    })
    .await;
    for name in METRICS {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    // Every metric the chart's alerts and dashboard query is one this
    // binary exposes.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/cas-bridge");
    for file in [
        "templates/prometheusrule.yaml",
        "dashboards/cas-bridge.json",
    ] {
        let queried = std::fs::read_to_string(root.join(file)).unwrap();
        let names = metric_names(&queried);
        assert!(names.len() >= 8, "{file}: {names:?}");
        for name in names {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "{file} queries {name}, which /metrics does not have:\n{text}"
            );
        }
    }
    assert!(counter(&text, "cas_bridge_api_requests_total") > 0.0);
    assert!(counter(&text, "cas_bridge_budget_permits_total") > 0.0);
    assert!(counter(&text, "cas_bridge_leases_held") == 4.0, "{text}");
    assert!(text.contains(r#"cas_bridge_events_published_total{service="exchange",event="dlp"}"#));
    assert!(
        text.contains("cas_bridge_tenant_shards_held{tenant=\"default\"} 4\n"),
        "{text}"
    );
    assert!(text.contains(r#"reason="schema""#));
    let first = counter(&text, "cas_bridge_events_published_total");
    wait_for(
        "counters keep moving",
        Duration::from_secs(30),
        async || {
            let t = get(&format!("{base}/metrics"))
                .await
                .map(|(_, t)| t)
                .unwrap_or_default();
            counter(&t, "cas_bridge_events_published_total") > first
        },
    )
    .await;

    // Redis goes away: not ready. It comes back: ready again.
    let port = redis.stop();
    wait_for(
        "readyz false without Redis",
        Duration::from_secs(20),
        async || {
            get(&format!("{base}/readyz"))
                .await
                .is_some_and(|(s, body)| s == 503 && body.contains("Redis"))
        },
    )
    .await;
    let _redis = OwnRedis::start_on(port);
    wait_for(
        "readyz true with Redis back",
        Duration::from_secs(30),
        async || {
            get(&format!("{base}/readyz"))
                .await
                .is_some_and(|(s, _)| s == 200)
        },
    )
    .await;
    sim.stop().await;
}

/// A Redis that hangs (it keeps its connections and answers nothing) under
/// one bridge holding all 49 default shards, lease TTL 10 s: readiness goes
/// false and every shard stops before its lease can run out — renewals run
/// side by side, each bounded — and all comes back when Redis wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_stops_all_49_shards_before_their_leases_run_out() {
    let redis = OwnRedis::start();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, &redis.url(), &tag);
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    cfg.shards = cas_bridge::config::ShardsConfig::default();
    cfg.coord.lease_ttl = cas_bridge::config::Dur::secs(10);
    cfg.validate().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("bridge.log");
    let _bridge = BridgeProcess::spawn_with(&cfg, "hung", &log, &[("OPS__LISTEN", &listen)]);
    let base = format!("http://{listen}");
    let held = async || {
        get(&format!("{base}/metrics"))
            .await
            .map(|(_, t)| counter(&t, "cas_bridge_leases_held"))
    };
    wait_for(
        "49 shards held and ready",
        Duration::from_secs(60),
        async || {
            held().await == Some(49.0)
                && get(&format!("{base}/readyz"))
                    .await
                    .is_some_and(|(s, _)| s == 200)
        },
    )
    .await;

    redis.signal("-STOP");
    let hung = tokio::time::Instant::now();
    wait_for(
        "readyz false with Redis hung",
        Duration::from_secs(10),
        async || {
            get(&format!("{base}/readyz"))
                .await
                .is_some_and(|(s, _)| s == 503)
        },
    )
    .await;
    let not_ready = hung.elapsed();
    // Every shard stops (its lease cannot be renewed). How soon — before
    // the 10 s TTL here — is printed, not asserted: a loaded machine would
    // make a bound flaky, and the fence keeps a late one from moving a
    // cursor anyway.
    wait_for(
        "every shard stopped",
        Duration::from_secs(120),
        async || held().await == Some(0.0),
    )
    .await;
    let stopped = hung.elapsed();
    println!("Redis hung: not ready after {not_ready:?}, all 49 shards stopped after {stopped:?} (lease TTL 10 s)");

    redis.signal("-CONT");
    wait_for(
        "49 shards held and ready again",
        Duration::from_secs(60),
        async || {
            held().await == Some(49.0)
                && get(&format!("{base}/readyz"))
                    .await
                    .is_some_and(|(s, _)| s == 200)
        },
    )
    .await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_appears_in_no_log_line_and_no_check_config_output() {
    const TOKEN: &str = "tok-VERY-SECRET-4242";
    // The simulator refuses this token, so the bridge logs 401s at length.
    let sim = start_sim(SimConfig {
        token: "another".into(),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_cas-bridge");
    let env = [
        ("CAS_BRIDGE__API__BASE_URL", sim.base_url()),
        ("CAS_BRIDGE__API__TOKEN", TOKEN.to_string()),
        (
            "CAS_BRIDGE__COORD__REDIS_URL",
            "redis://:pw-SECRET-99@127.0.0.1:1/0".to_string(),
        ),
        ("CAS_BRIDGE__LOG__LEVEL", "trace".to_string()),
        ("CAS_BRIDGE__OPS__LISTEN", "127.0.0.1:0".to_string()),
        (
            "CAS_BRIDGE__SHARDS__PAIRS",
            "exchange:dlp,box:ransomware".to_string(),
        ),
    ];
    let out = std::process::Command::new(bin)
        .arg("check-config")
        .env_clear()
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("[REDACTED]"), "{text}");
    assert!(
        !text.contains(TOKEN) && !text.contains("pw-SECRET"),
        "{text}"
    );

    // A run with in-process coordination (no Redis), logging at trace level.
    let log = dir.path().join("run.log");
    let mut child = std::process::Command::new(bin)
        .arg("run")
        .env_clear()
        .envs(env.iter().filter(|(k, _)| !k.contains("REDIS")).cloned())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("401s", Duration::from_secs(20), async || {
        sim.state.stats().by_status.contains_key(&401)
    })
    .await;
    // The refusal is logged before the process is stopped.
    wait_for("the refusal logged", Duration::from_secs(20), async || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("refused the token")
    })
    .await;
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let st = child.wait().unwrap();
    assert!(st.success(), "graceful exit on SIGTERM: {st}");
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("refused the token"), "{logs}");
    assert!(logs.lines().count() > 5);
    assert!(!logs.contains(TOKEN), "the token is in the logs");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_stops_the_start_naming_the_field_and_sends_nothing() {
    let sim = start_sim(sim_config()).await;
    let bin = env!("CARGO_BIN_EXE_cas-bridge");
    let cases: &[(&str, &str, &str)] = &[
        ("API__REGION", "mars", "api.region"),
        ("API__DIALECT", "v2", "dialect"),
        ("API__PAGE_LIMIT", "501", "api.page_limit"),
        ("API__TIMEOUT", "soon", "timeout"),
        ("API__MAX_BODY_BYTES", "10", "api.max_body_bytes"),
        ("WINDOW__MAX", "4d", "window.max"),
        ("WINDOW__START_FROM", "200h", "window.start_from"),
        ("WINDOW__START_FROM", "yesterday", "start_from"),
        ("WINDOW__OVERLAP", "2d", "window.overlap"),
        ("WINDOW__LAG", "3w", "lag"),
        ("SHARDS__PAIRS", "exchange", "shards.pairs"),
        ("SHARDS__PAIRS", "exchange:dlp,exchange:dlp", "shards.pairs"),
        ("BUDGET__PER_MINUTE", "0", "budget.per_minute"),
        ("BUDGET__MODE", "bursty", "mode"),
        ("SINK__KIND", "kinesis", "kind"),
        (
            "SINK__TOPIC_TEMPLATE",
            "cas.{pair}.{event}",
            "sink.topic_template",
        ),
        ("SINK__DEAD_LETTER", "dead letter", "sink.dead_letter"),
        ("SINK__NATS__STREAM", "has.dot", "sink.nats.stream"),
        ("COORD__REDIS_URL", "http://redis", "coord.redis_url"),
        ("COORD__LEASE_TTL", "1s", "coord.lease_ttl"),
        ("OPS__LISTEN", "nowhere", "ops.listen"),
        ("LOG__FORMAT", "xml", "log.format"),
        ("WINDOW__LAGG", "5m", "lagg"),
        ("SINK__KIND", "kafka", "sink.kafka.brokers"),
        ("SINK__KIND", "nats", "sink.nats.url"),
        ("BUDGET__MAX_PAUSE", "2h", "budget.max_pause"),
        (
            "SHARDS__PAIRS",
            "exchange:dlp,gmial:dlp",
            "did you mean `gmail`?",
        ),
        ("BUDGET__PER_MINUTE", "ten", "budget.per_minute"),
        ("SINK__KIND", "kafak", "did you mean `kafka`?"),
    ];
    // `run` refuses each, and `check-config` fails on each the same way
    // (so it can gate a deploy).
    for command in ["run", "check-config"] {
        for (key, value, field) in cases {
            let mut cmd = std::process::Command::new(bin);
            cmd.arg(command)
                .env_clear()
                .env("CAS_BRIDGE__API__BASE_URL", sim.base_url())
                .env("CAS_BRIDGE__API__TOKEN", "sim-token")
                .env("CAS_BRIDGE__OPS__LISTEN", "127.0.0.1:0")
                .env(format!("CAS_BRIDGE__{key}"), value);
            if *key == "SINK__NATS__STREAM" {
                cmd.env("CAS_BRIDGE__SINK__KIND", "nats")
                    .env("CAS_BRIDGE__SINK__NATS__URL", "nats://127.0.0.1:4222");
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{command}: {key}={value} was accepted"
            );
            assert!(
                err.contains(field),
                "{command}: {key}={value}: the error does not name `{field}`: {err}"
            );
        }
    }
    // A missing token is a configuration error too, for both commands; a
    // file checked without its secret passes.
    for command in ["run", "check-config"] {
        let out = std::process::Command::new(bin)
            .arg(command)
            .env_clear()
            .env("CAS_BRIDGE__API__BASE_URL", sim.base_url())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command} without a token");
        assert!(String::from_utf8_lossy(&out.stderr).contains("api.token"));
    }
    let out = std::process::Command::new(bin)
        .args(["check-config", "--without-secret"])
        .env_clear()
        .env("CAS_BRIDGE__API__BASE_URL", sim.base_url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sim.state.stats().served + sim.state.stats().throttled,
        0,
        "no request reached the API"
    );
    sim.stop().await;
}

/// The chart's alerts in a real Prometheus scraping a running bridge: the
/// sink alert stays silent while the broker acknowledges, and fires once
/// the broker is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_fires_the_sink_alert_when_the_broker_goes() {
    let mut nats = OwnNats::start();
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Nats);
    cfg.sink.nats.url = nats.url();
    let ops = format!("127.0.0.1:{}", free_port());
    let _bridge = BridgeProcess::spawn_with(
        &cfg,
        "prom",
        &dir.path().join("bridge.log"),
        &[("OPS__LISTEN", &ops)],
    );
    let rules = crate::deploy::rule_groups(dir.path());
    let prom_port = free_port();
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: cas-bridge\n    static_configs:\n      - targets: ['{ops}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let mut prom = std::process::Command::new(crate::deploy::tool("prometheus"))
        .arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus starts (./scripts/install-tools installs it)");
    let api = format!("http://127.0.0.1:{prom_port}/api/v1");
    let alerts = async || -> Vec<(String, String)> {
        let Some((200, body)) = get(&format!("{api}/alerts")).await else {
            return Vec::new();
        };
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        doc["data"]["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        (
                            x["labels"]["alertname"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            x["state"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // Prometheus scrapes the bridge and evaluates the rules.
    wait_for(
        "Prometheus has the bridge's series",
        Duration::from_secs(60),
        async || {
            get(&format!(
                "{api}/query?query=cas_bridge_events_published_total"
            ))
            .await
            .is_some_and(|(s, body)| s == 200 && body.contains("\"exchange\""))
        },
    )
    .await;
    wait_for(
        "a few rule evaluations",
        Duration::from_secs(30),
        async || {
            get(&format!("{api}/rules"))
                .await
                .is_some_and(|(s, body)| s == 200 && body.contains("\"health\":\"ok\""))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = alerts().await;
    assert!(
        !before.iter().any(|(n, _)| n == "CasBridgeSinkDown"),
        "silent while the broker acknowledges: {before:?}"
    );
    nats.stop();
    let gone = tokio::time::Instant::now();
    let mut seen = Vec::new();
    wait_for(
        "CasBridgeSinkDown firing",
        Duration::from_secs(180),
        async || {
            seen = alerts().await;
            seen.iter()
                .any(|(n, s)| n == "CasBridgeSinkDown" && s == "firing")
        },
    )
    .await;
    println!(
        "Prometheus: CasBridgeSinkDown firing {:?} after the broker stopped; alerts then: {seen:?}",
        gone.elapsed()
    );
    let _ = prom.kill();
    let _ = prom.wait();
    sim.stop().await;
}
