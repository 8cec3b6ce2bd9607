//! The operator's first hour, through the real binary: `verify` before
//! going live (a good setup, then each failure named, the token never
//! printed), pair typos refused before anything is written, one
//! configuration hash on replicas that differ only by worker id and port,
//! the build's identity and every counter from the start, and operator
//! output without escape codes when redirected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cas_bridge::config::{Config, SinkKind};
use secrecy::SecretString;

use crate::helpers::*;
use crate::tenants::{spec, start_tenants};

/// stdout and stderr of an operator's command, as text.
fn texts(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line of `verify`'s output for `check` (and tenant).
fn line<'a>(stdout: &'a str, check: &str, tenant: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == check && f[2] == tenant
        })
        .unwrap_or_else(|| panic!("no {check} line for {tenant} in:\n{stdout}"))
}

/// Writes `cfg` as a file without checking that it loads (it may be one
/// the bridge must refuse).
fn raw_config(cfg: &Config, dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, cfg.redacted_json()).unwrap();
    f
}

/// A `cas-bridge run` started by the test itself, killed on drop.
struct Spawned(std::process::Child);

impl Spawned {
    /// SIGTERM, and the exit awaited (it must be a clean one).
    fn terminate(&mut self) {
        signal(self.0.id(), "-TERM");
        let st = self.0.wait().unwrap();
        assert!(st.success(), "exited {st}");
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A simulator and a fleet configuration through the shared Redis (its
/// own prefix), events to a JSON-lines file in the test's directory.
async fn jsonl_fleet() -> (
    cas_bridge::sim::SimHandle,
    String,
    tempfile::TempDir,
    Config,
) {
    require_redis();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag);
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    (sim, tag, dir, cfg)
}

/// Every key under `prefix` in the shared Redis.
async fn redis_keys(prefix: &str) -> Vec<String> {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_a_good_setup_and_names_each_failure() {
    require_redis();
    require_kafka();
    require_nats();
    let dir = tempfile::tempdir().unwrap();
    let tenants = start_tenants(
        dir.path(),
        vec![
            ("acme", vec!["exchange:dlp", "box:ransomware"], 0),
            ("globex", vec!["gmail:dlp"], 0),
        ],
        71,
    )
    .await;
    let tag = tag();
    let mut cfg = bridge_config(&tenants[0].sim, &tag, SinkKind::Kafka);
    cfg.sink.topic_template = format!("{tag}.{{tenant}}.{{service}}.{{event}}");
    cfg.sink.dead_letter = format!("{tag}.{{tenant}}.deadletter");
    cfg.sink.kafka.create_topics = true;
    cfg.coord.redis_url = Some(SecretString::from(REDIS_URL.to_string()));
    cfg.coord.prefix = tag.clone();
    cfg.tenants = tenants.iter().map(spec).collect();
    cfg.validate().unwrap();
    let log = dir.path().join("verify.log");

    // A good setup: every check passes, one line each.
    let out = operator(&cfg, &log, &["verify"]);
    let (stdout, _) = texts(&out);
    assert!(out.status.success(), "{stdout}");
    for (check, tenant) in [
        ("config", "-"),
        ("redis", "-"),
        ("token", "acme"),
        ("token", "globex"),
        ("sink", "-"),
    ] {
        assert!(
            line(&stdout, check, tenant).starts_with("ok "),
            "{check} {tenant}:\n{stdout}"
        );
    }
    // The topics do not exist yet; the bridge would create them, verify
    // does not.
    assert!(
        line(&stdout, "sink", "-").contains("5 to be created at start"),
        "{stdout}"
    );
    let json = operator(&cfg, &log, &["verify", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let checks = checks.as_array().unwrap();
    assert_eq!(checks.len(), 5, "{checks:?}");
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:?}");
    assert_eq!(checks[2]["tenant"], "acme");

    // One tenant's wrong token: named, the others fine, never printed.
    let wrong = "wrong-token-of-globex-3f9a";
    std::fs::write(&tenants[1].token_file, wrong).unwrap();
    let out = operator(&cfg, &log, &["verify"]);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success());
    let bad = line(&stdout, "token", "globex");
    assert!(bad.starts_with("FAIL") && bad.contains("401"), "{bad}");
    assert!(
        line(&stdout, "token", "acme").starts_with("ok "),
        "{stdout}"
    );
    assert!(
        stderr.contains("verify failed: token of globex"),
        "{stderr}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains(wrong), "the token was printed: {text}");
        assert!(
            !text.contains("token-of-acme"),
            "a token was printed: {text}"
        );
    }
    std::fs::write(&tenants[1].token_file, "token-of-globex\n").unwrap();

    // Redis down.
    let mut no_redis = cfg.clone();
    no_redis.coord.redis_url = Some(SecretString::from(format!(
        "redis://127.0.0.1:{}",
        free_port()
    )));
    let out = operator(&no_redis, &log, &["verify"]);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(line(&stdout, "redis", "-").starts_with("FAIL"), "{stdout}");
    assert!(stderr.contains("verify failed: redis"), "{stderr}");

    // Kafka down.
    let mut no_kafka = cfg.clone();
    no_kafka.sink.kafka.brokers = format!("127.0.0.1:{}", free_port());
    let out = operator(&no_kafka, &log, &["verify"]);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(line(&stdout, "sink", "-").starts_with("FAIL"), "{stdout}");
    assert!(line(&stdout, "redis", "-").starts_with("ok "), "{stdout}");
    assert!(stderr.contains("verify failed: sink"), "{stderr}");
    // One line says it: not the Kafka client's own lines besides.
    assert!(!stderr.contains("librdkafka"), "{stderr}");

    // NATS: a stream the bridge may create is fine; a missing one it may
    // not create is named.
    let mut nats = cfg.clone();
    nats.sink.kind = SinkKind::Nats;
    nats.sink.nats.stream = format!("{}_NEW", tag.to_uppercase());
    let out = operator(&nats, &log, &["verify"]);
    let (stdout, _) = texts(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(
        line(&stdout, "sink", "-").contains("to be created at start"),
        "{stdout}"
    );
    nats.sink.nats.manage_stream = false;
    let out = operator(&nats, &log, &["verify"]);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success());
    let sink = line(&stdout, "sink", "-");
    assert!(sink.starts_with("FAIL"), "{stdout}");
    assert!(
        sink.contains("manage_stream is false") && sink.contains(&nats.sink.nats.stream),
        "{sink}"
    );
    assert!(stderr.contains("verify failed: sink"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_typo_is_refused_by_check_config_run_and_checkpoint_before_anything_is_written() {
    let (_sim, tag, dir, cfg) = jsonl_fleet().await;
    let mut typo = cfg.clone();
    typo.shards.pairs = vec!["exchange:dlp".into(), "gmial:dlp".into()];
    typo.log.format = "json".into();
    let file = raw_config(&typo, dir.path(), "typo.yaml");
    let bin = env!("CARGO_BIN_EXE_cas-bridge");
    let hint = "unknown service `gmial` (did you mean `gmail`?)";

    let out = std::process::Command::new(bin)
        .args(["check-config", "--without-secret", "--config"])
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("shards.pairs") && stderr.contains(hint),
        "{stderr}"
    );

    // `run`: refused, its last word a JSON log line (log.format = json).
    let out = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    let last: serde_json::Value = serde_json::from_str(stderr.trim().lines().last().unwrap())
        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {stderr}"));
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["message"], "cas-bridge cannot run", "{last}");
    assert!(last["error"].as_str().unwrap().contains(hint), "{last}");

    // Operator commands, with a valid file: the pair argument is checked
    // before Redis is touched.
    let log = dir.path().join("op.log");
    for args in [
        &["checkpoint", "set", "--pair", "gmial:dlp", "--to", "1h"][..],
        &["checkpoint", "reset", "--pair", "exchange:dpl"],
        &[
            "replay",
            "--pair",
            "gmial:dlp",
            "--from",
            "2h",
            "--to",
            "1h",
        ],
    ] {
        let out = operator(&cfg, &log, args);
        let (_, stderr) = texts(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains("did you mean"), "{args:?}: {stderr}");
    }
    assert_eq!(
        redis_keys(&tag).await,
        Vec::<String>::new(),
        "something was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_one_file_report_one_hash_their_build_and_every_counter_from_the_start() {
    let (_sim, _tag, dir, cfg) = jsonl_fleet().await;
    // One file for both, as a chart mounts one ConfigMap; each replica's
    // worker id and port from its environment, as the chart sets them.
    let file = write_config(&cfg, "from-the-env", &dir.path().join("shared.log"));
    let ports = [free_port(), free_port()];
    let mut procs: Vec<Spawned> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let log = std::fs::File::create(dir.path().join(format!("r{i}.log"))).unwrap();
            Spawned(
                std::process::Command::new(env!("CARGO_BIN_EXE_cas-bridge"))
                    .args(["run", "--config"])
                    .arg(&file)
                    .env_clear()
                    .env("CAS_BRIDGE__COORD__WORKER_ID", format!("replica-{i}"))
                    .env("CAS_BRIDGE__OPS__LISTEN", format!("127.0.0.1:{port}"))
                    .env("CAS_BRIDGE__LOG__LEVEL", "info")
                    .stdout(std::process::Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let counters: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("| `cas_bridge_") && l.contains("| counter |"))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    assert!(counters.len() > 15, "{counters:?}");
    let mut hashes = Vec::new();
    for port in ports {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let mut text = String::new();
        wait_for(
            "a lease held and /metrics served",
            Duration::from_secs(60),
            async || {
                text = get(&url).await.map(|(_, b)| b).unwrap_or_default();
                text.lines()
                    .any(|l| l.starts_with("cas_bridge_leases_held ") && !l.ends_with(" 0"))
            },
        )
        .await;
        let hash = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("cas_bridge_config_info{hash=\"")
                    .filter(|r| r.ends_with("\"} 1"))
                    .map(|r| r[..12].to_string())
            })
            .unwrap_or_else(|| panic!("no config_info in:\n{text}"));
        hashes.push(hash);
        assert!(
            text.lines()
                .any(|l| l.starts_with("cas_bridge_build_info{version=\"")
                    && l.contains("commit=\"")
                    && l.ends_with("} 1")),
            "no build_info in:\n{text}"
        );
        for c in &counters {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{c}{{")) || l.starts_with(&format!("{c} "))),
                "{c} is not on /metrics from the start:\n{text}"
            );
        }
    }
    assert_eq!(hashes[0], hashes[1], "two replicas of one file");
    for p in &mut procs {
        p.terminate();
    }
    let log = std::fs::read_to_string(dir.path().join("r0.log")).unwrap();
    let start = log
        .lines()
        .find(|l| l.contains("cas-bridge starting"))
        .unwrap_or_else(|| panic!("no start-up line:\n{log}"));
    let start: serde_json::Value = serde_json::from_str(start).unwrap();
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["config"], hashes[0].as_str());
    assert!(
        start["commit"].as_str().is_some_and(|c| !c.is_empty()),
        "{start}"
    );
    // The shard id is written one way: `service:event`, whichever shards
    // this replica held.
    let ids: Vec<&str> = log
        .split("\"shard\":\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .collect();
    assert!(!ids.is_empty(), "no shard named in:\n{log}");
    for id in ids {
        assert!(id.contains(':') && !id.contains('/'), "shard id `{id}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_output_redirected_to_a_file_holds_no_escape_codes() {
    let (_sim, _tag, dir, cfg) = jsonl_fleet().await;
    let log = dir.path().join("op.log");
    // teams:dlp is a known pair, not a configured one: a warning line.
    let out = operator(&cfg, &log, &["checkpoint", "show", "--pair", "teams:dlp"]);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("WARN"), "no log line to check: {stderr}");
    assert!(stdout.contains("teams:dlp"), "{stdout}");
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !text.contains('\u{1b}'),
            "{what} holds escape codes: {text:?}"
        );
    }
}
