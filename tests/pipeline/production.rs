//! Day one in production, through the real binary: secrets that come from
//! files and the environment and appear in no output, brokers over TLS
//! with credentials, a stream made by a platform team, a broker that is
//! down from the start, one tenant's refused token.

use std::collections::HashSet;
use std::time::Duration;

use cas_bridge::config::{Dur, SinkKind};
use chrono::Utc;

use crate::helpers::*;
use crate::tenants::{spec, start_tenants};

/// The value of one series (exact label text) on a `/metrics` page.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Asserts that no secret of `secrets` is in `text` (`what` names it).
fn holds_none(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} holds the secret `{s}`");
    }
}

/// Runs the binary on `cfg` (and `extra` variables), which must refuse to
/// start; its log.
fn refused_at_start(
    cfg: &cas_bridge::config::Config,
    log: &std::path::Path,
    extra: &[(&str, &str)],
) -> String {
    let mut b = BridgeProcess::spawn_with(cfg, "refused", log, extra);
    let st = b.child.wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(!st.success(), "it started: {text}");
    text
}

/// SIGTERM, then how long the exit took and how it ended.
fn terminate_timed(b: &mut BridgeProcess) -> (Duration, std::process::ExitStatus) {
    let t = std::time::Instant::now();
    let st = b.terminate();
    (t.elapsed(), st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_refused_token_leaves_the_replica_ready_and_the_others_delivering() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = start_tenants(
        dir.path(),
        vec![
            ("good", vec!["exchange:dlp", "box:ransomware"], 0),
            ("bad", vec!["exchange:dlp"], 0),
        ],
        41,
    )
    .await;
    let (good, bad) = (&tenants[0], &tenants[1]);
    std::fs::write(&bad.token_file, "wrong-token-of-bad\n").unwrap();
    let tag = tag();
    let mut cfg = bridge_config(&good.sim, &tag, SinkKind::Jsonl);
    cfg.sink.topic_template = format!("{tag}.{{tenant}}.{{service}}.{{event}}");
    cfg.sink.dead_letter = format!("{tag}.{{tenant}}.deadletter");
    let out = dir.path().join("out.jsonl");
    cfg.sink.jsonl.path = out.display().to_string();
    cfg.tenants = tenants.iter().map(spec).collect();
    cfg.validate().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("bridge.log");
    let mut b = BridgeProcess::spawn_with(&cfg, "tenants", &log, &[("OPS__LISTEN", &listen)]);
    let base = format!("http://{listen}");

    // The bad tenant's 401s are counted under its name, and its token shows
    // as refused; the replica is ready all along.
    let mut text = String::new();
    wait_for(
        "bad's 401 on /metrics",
        Duration::from_secs(60),
        async || {
            text = get(&format!("{base}/metrics"))
                .await
                .map(|(_, t)| t)
                .unwrap_or_default();
            series(
                &text,
                "cas_bridge_api_requests_total{tenant=\"bad\",status=\"401\"}",
            )
            .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    assert_eq!(
        series(&text, "cas_bridge_token_refused{tenant=\"bad\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "cas_bridge_token_refused{tenant=\"good\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(bad.sim.state.stats().by_status.contains_key(&401));
    let (status, body) = get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(
        status, 200,
        "a tenant's refused token made the replica unready: {body}"
    );

    // The good tenant delivers meanwhile: its events on its topics.
    let want_topic = format!("{tag}.good.exchange.dlp");
    wait_for("good's events", Duration::from_secs(60), async || {
        read_jsonl(&out).iter().any(|m| m.topic == want_topic)
    })
    .await;
    assert!(
        !read_jsonl(&out).iter().any(|m| m.topic.contains(".bad.")),
        "nothing of the refused tenant was delivered"
    );

    // The token file fixed: the tenant asks again at once, not when the
    // minute's pause runs out.
    let fixed = Utc::now();
    std::fs::write(&bad.token_file, "token-of-bad\n").unwrap();
    wait_for("bad's first 200", Duration::from_secs(90), async || {
        bad.sim.state.stats().by_status.contains_key(&200)
    })
    .await;
    let first_ok = bad
        .sim
        .state
        .stats()
        .log
        .iter()
        .find(|r| r.status == 200)
        .map(|r| r.at_ms)
        .unwrap();
    let after_ms = first_ok - fixed.timestamp_millis();
    println!("bad: first 200 {after_ms} ms after its token file was fixed");
    // Asked again because the file changed, not because the pause ran
    // out: the runner says so.
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("the token file holds a new token; asking again with it"),
        "{said}"
    );
    let (status, _) = get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(status, 200);
    let (_, st) = terminate_timed(&mut b);
    assert!(st.success());
    let logs = std::fs::read_to_string(&log).unwrap();
    holds_none(
        "the log",
        &logs,
        &["token-of-bad", "token-of-good", "wrong-token-of-bad"],
    );
    for t in tenants {
        t.sim.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_from_the_start_is_never_ready_logs_little_and_exits_in_time() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag(), SinkKind::Kafka);
    // Nothing listens there.
    cfg.sink.kafka.brokers = format!("127.0.0.1:{}", free_port());
    cfg.shutdown.grace = Dur::secs(2);
    let listen = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("bridge.log");
    let started = std::time::Instant::now();
    let mut b = BridgeProcess::spawn_with(
        &cfg,
        "down",
        &log,
        &[("OPS__LISTEN", &listen), ("LOG__LEVEL", "info")],
    );
    let base = format!("http://{listen}");
    // From the first answer on, for 25 s: never ready.
    let mut first: Option<std::time::Instant> = None;
    let mut answers = 0u32;
    loop {
        if let Some((status, body)) = get(&format!("{base}/readyz")).await {
            first.get_or_insert_with(std::time::Instant::now);
            answers += 1;
            assert_eq!(status, 503, "ready with the broker down: {body}");
            assert!(body.contains("sink"), "{body}");
        }
        if first.is_some_and(|f| f.elapsed() >= Duration::from_secs(25)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the ops server never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answers >= 20, "{answers} answers");
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    println!(
        "broker down from the start: {answers} /readyz answers, all 503; {lines} log lines in {:.0} s",
        minutes * 60.0
    );
    // Before: ~370 lines in 15 s. Now: the bridge's own lines and at most
    // six of librdkafka's a minute.
    assert!(
        (lines as f64) <= 30.0 + 30.0 * minutes,
        "{lines} log lines in {:.0} s:\n{}",
        minutes * 60.0,
        std::fs::read_to_string(&log).unwrap()
    );
    let (took, st) = terminate_timed(&mut b);
    println!("SIGTERM with the broker down since the start: exited after {took:?} (grace 2 s)");
    assert!(st.success(), "{st}");
    // How soon is printed (BENCHMARKS.md: 0.16 s; 45 s before), not
    // bounded here: `terminate` fails the test if it does not exit.
    sim.stop().await;
}

/// A nats-server over TLS (a private CA) that asks for a user and password.
fn tls_nats(certs: &Certs, password: &str) -> OwnNats {
    OwnNats::start_with_conf(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\nauthorization {{\n  user: bridge\n  password: \"{password}\"\n}}\n",
        certs.server_cert.display(),
        certs.server_key.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_with_a_password_from_a_file_or_the_environment_delivers() {
    const PASSWORD: &str = "pw-nats-4d2c91";
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let nats = tls_nats(&certs, PASSWORD);
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let pw_file = dir.path().join("nats-password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Nats);
    cfg.sink.nats.url = nats.url();
    cfg.sink.nats.tls_ca_file = Some(certs.ca.clone());
    cfg.sink.nats.user = Some("bridge".into());
    cfg.sink.nats.password_file = Some(pw_file.clone());
    cfg.validate().unwrap();
    let client = || async {
        async_nats::ConnectOptions::new()
            .add_root_certificates(certs.ca.clone())
            .require_tls(true)
            .user_and_password("bridge".into(), PASSWORD.into())
            .connect(nats.url())
            .await
            .expect("the test's own TLS connection")
    };

    // The password from a file: delivered.
    let t0 = Utc::now();
    let log = dir.path().join("file.log");
    let mut b = BridgeProcess::spawn(&cfg, "nats-tls", &log);
    let (from, to) = (
        t0 - chrono::Duration::seconds(590),
        t0 - chrono::Duration::seconds(60),
    );
    let want = expected(&sim, &cfg, from, to);
    let mut missing = usize::MAX;
    // What the stream holds, once the bridge made it.
    let read = async |stream: &str| {
        let c = client().await;
        let made = async_nats::jetstream::new(c.clone())
            .get_stream(stream)
            .await
            .is_ok();
        if made {
            read_nats_with(c, stream).await
        } else {
            Vec::new()
        }
    };
    wait_for("delivered over TLS", Duration::from_secs(120), async || {
        let got = read(&cfg.sink.nats.stream).await;
        missing = check(&want, &got, &cfg).missing.len();
        missing == 0
    })
    .await;
    assert!(b.terminate().success());
    let mut outputs = std::fs::read_to_string(&log).unwrap();

    // The password from the environment (no file): delivered as well.
    // (The first run's stream goes: the second makes it again.)
    async_nats::jetstream::new(client().await)
        .delete_stream(&cfg.sink.nats.stream)
        .await
        .unwrap();
    let mut env_cfg = cfg.clone();
    env_cfg.sink.nats.password_file = None;
    let env_log = dir.path().join("env.log");
    let mut b = BridgeProcess::spawn_with(
        &env_cfg,
        "nats-tls-env",
        &env_log,
        &[("SINK__NATS__PASSWORD", PASSWORD)],
    );
    wait_for(
        "delivered with the password from the environment",
        Duration::from_secs(120),
        async || {
            let got = read(&env_cfg.sink.nats.stream).await;
            check(&want, &got, &env_cfg).missing.is_empty()
        },
    )
    .await;
    assert!(b.terminate().success());
    outputs.push_str(&std::fs::read_to_string(&env_log).unwrap());

    // Without the CA: refused at the start, naming the setting.
    let mut no_ca = cfg.clone();
    no_ca.sink.nats.tls_ca_file = None;
    let text = refused_at_start(&no_ca, &dir.path().join("no-ca.log"), &[]);
    assert!(text.contains("sink.nats.tls_ca_file"), "{text}");
    outputs.push_str(&text);

    // A wrong password: refused at the start, naming where it comes from
    // and not what it is.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "pw-wrong-77e1\n").unwrap();
    let mut bad_pw = cfg.clone();
    bad_pw.sink.nats.password_file = Some(wrong);
    let text = refused_at_start(&bad_pw, &dir.path().join("bad-pw.log"), &[]);
    assert!(text.contains("sink.nats.user and password"), "{text}");
    outputs.push_str(&text);

    // check-config shows neither password.
    let out = operator(&cfg, &dir.path().join("check.log"), &["check-config"]);
    outputs.push_str(&String::from_utf8_lossy(&out.stdout));
    outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    holds_none("the outputs", &outputs, &[PASSWORD, "pw-wrong-77e1"]);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_by_the_platform_team_is_used_unchanged_or_refused_when_it_does_not_fit() {
    require_nats();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Nats);
    cfg.sink.nats.manage_stream = false;
    // The platform team's stream: its own subjects, limits and window.
    let js = async_nats::jetstream::new(async_nats::connect(NATS_URL).await.unwrap());
    let theirs = async_nats::jetstream::stream::Config {
        name: cfg.sink.nats.stream.clone(),
        subjects: vec![format!("{tag}.>")],
        max_age: Duration::from_secs(3 * 86_400),
        max_bytes: 512 * 1024 * 1024,
        duplicate_window: Duration::from_secs(300),
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    };
    js.create_stream(theirs.clone()).await.unwrap();
    let config_json = async |name: &str| {
        let config = js
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
        serde_json::to_string(&config).unwrap()
    };
    let before = config_json(&theirs.name).await;
    let (run, range) = Running::caught_up(&cfg).await;
    run.stop().await;
    assert_delivered("platform stream", &sim, &cfg, range.from, range.to).await;
    let after = config_json(&theirs.name).await;
    assert_eq!(
        before, after,
        "the bridge changed a stream it does not manage"
    );

    // A stream whose subjects do not cover the bridge's: a clear refusal.
    let mut other = cfg.clone();
    other.sink.nats.stream = format!("{}OTHER", cfg.sink.nats.stream);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: other.sink.nats.stream.clone(),
        subjects: vec![format!("{tag}-elsewhere.>")],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let log = dir.path().join("other.log");
    let mut b = BridgeProcess::spawn(&other, "other", &log);
    wait_for(
        "the refusal in the log",
        Duration::from_secs(60),
        async || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("do not cover")
        },
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sink.nats.manage_stream is false"), "{text}");
    assert!(
        text.contains(&format!("{tag}.")),
        "names the subject: {text}"
    );
    assert!(b.terminate().success());
    js.delete_stream(&theirs.name).await.unwrap();
    js.delete_stream(&other.sink.nats.stream).await.unwrap();
    sim.stop().await;
}

/// tansu behind a TLS front that verifies client certificates: tansu
/// listens in clear on one port and advertises the front's, where socat
/// takes TLS (the client's certificate signed by the test's CA) and
/// forwards in clear.
struct TlsKafka {
    _tansu: Daemon,
    _front: Daemon,
    front: u16,
}

fn tls_kafka(certs: &Certs, dir: &std::path::Path) -> TlsKafka {
    let (inner, front) = (free_port(), free_port());
    let tansu = std::process::Command::new("tansu")
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{inner}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{front}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("tansu.log")).unwrap())
        .spawn()
        .expect("tansu runs (./scripts/test installs it)");
    let tansu = Daemon {
        child: tansu,
        port: inner,
    };
    wait_listening(inner, "tansu");
    let socat = std::process::Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{front},bind=127.0.0.1,reuseaddr,fork,verify=1,cafile={},cert={},key={}",
            certs.ca.display(),
            certs.server_cert.display(),
            certs.server_key.display()
        ))
        .arg(format!("TCP:127.0.0.1:{inner}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("socat runs (./scripts/test installs it)");
    let front_d = Daemon {
        child: socat,
        port: front,
    };
    wait_listening(front, "socat");
    TlsKafka {
        _tansu: tansu,
        _front: front_d,
        front,
    }
}

/// The client key encrypted with `password` (PKCS#8, AES-256).
fn encrypted_key(certs: &Certs, dir: &std::path::Path, password: &str) -> std::path::PathBuf {
    let out = dir.join("client-encrypted.key");
    let st = std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in"])
        .arg(&certs.client_key)
        .arg("-out")
        .arg(&out)
        .arg("-passout")
        .arg(format!("pass:{password}"))
        .status()
        .unwrap();
    assert!(st.success());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_with_a_client_certificate_whose_key_password_is_a_secret() {
    const KEY_PASSWORD: &str = "pw-key-6b0e55";
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let kafka = tls_kafka(&certs, dir.path());
    let key = encrypted_key(&certs, dir.path(), KEY_PASSWORD);
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Kafka);
    cfg.shards.pairs = test_pairs()[..2].to_vec();
    cfg.sink.kafka.brokers = format!("127.0.0.1:{}", kafka.front);
    for (k, v) in [
        ("security.protocol", "ssl".to_string()),
        ("ssl.ca.location", certs.ca.display().to_string()),
        (
            "ssl.certificate.location",
            certs.client_cert.display().to_string(),
        ),
        ("ssl.key.location", key.display().to_string()),
        // tansu's certificate names 127.0.0.1 as an IP: librdkafka checks
        // host names only.
        ("ssl.endpoint.identification.algorithm", "none".to_string()),
    ] {
        cfg.sink.kafka.properties.insert(k.into(), v);
    }
    cfg.validate().unwrap();
    let mut outputs = String::new();

    // The key's password from the environment, nested: delivered.
    let t0 = Utc::now();
    let log = dir.path().join("env.log");
    let mut b = BridgeProcess::spawn_with(
        &cfg,
        "kafka-tls-env",
        &log,
        &[("SINK__KAFKA__PROPERTIES__SSL__KEY__PASSWORD", KEY_PASSWORD)],
    );
    let (from, to) = (
        t0 - chrono::Duration::seconds(590),
        t0 - chrono::Duration::seconds(60),
    );
    let want = expected(&sim, &cfg, from, to);
    let topics = shard_topics(&cfg);
    let reader = {
        let props = cfg.sink.kafka.properties.clone();
        let brokers = cfg.sink.kafka.brokers.clone();
        move || {
            let mut p = props.clone();
            p.insert("ssl.key.password".into(), KEY_PASSWORD.into());
            (brokers.clone(), p)
        }
    };
    wait_for("delivered over TLS", Duration::from_secs(180), async || {
        let (brokers, props) = reader();
        let topics = topics.clone();
        let got = tokio::task::spawn_blocking(move || read_kafka_with(&brokers, &props, &topics))
            .await
            .unwrap();
        check(&want, &got, &cfg).missing.is_empty()
    })
    .await;
    assert!(b.terminate().success());
    outputs.push_str(&std::fs::read_to_string(&log).unwrap());

    // The same from a secret file: delivered again (no failure).
    let pw = dir.path().join("key-password");
    std::fs::write(&pw, format!("{KEY_PASSWORD}\n")).unwrap();
    let mut file_cfg = cfg.clone();
    file_cfg
        .sink
        .kafka
        .secret_files
        .insert("ssl.key.password".into(), pw.display().to_string());
    let log = dir.path().join("file.log");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut b = BridgeProcess::spawn_with(
        &file_cfg,
        "kafka-tls-file",
        &log,
        &[("OPS__LISTEN", &listen)],
    );
    wait_for(
        "ready with the key's password from a file",
        Duration::from_secs(120),
        async || {
            get(&format!("http://{listen}/readyz"))
                .await
                .is_some_and(|(s, _)| s == 200)
        },
    )
    .await;
    assert!(b.terminate().success());
    outputs.push_str(&std::fs::read_to_string(&log).unwrap());

    // A wrong password: refused, naming the setting, never the value.
    let text = refused_at_start(
        &cfg,
        &dir.path().join("wrong.log"),
        &[(
            "SINK__KAFKA__PROPERTIES__SSL__KEY__PASSWORD",
            "pw-wrong-31aa",
        )],
    );
    assert!(text.contains("ssl.key"), "names the setting: {text}");
    outputs.push_str(&text);

    // An unknown property name: refused by check-config, named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cas-bridge"))
        .arg("check-config")
        .env_clear()
        .env("CAS_BRIDGE__API__TOKEN", "sim-token")
        .env("CAS_BRIDGE__SINK__KIND", "kafka")
        .env("CAS_BRIDGE__SINK__KAFKA__BROKERS", &cfg.sink.kafka.brokers)
        .env(
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL_PASSWORD",
            "pw-typo-90c2",
        )
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("sink.kafka.properties.sasl_password"),
        "{text}"
    );
    outputs.push_str(&text);
    holds_none(
        "the outputs",
        &outputs,
        &[KEY_PASSWORD, "pw-wrong-31aa", "pw-typo-90c2"],
    );
    let distinct: HashSet<&str> = outputs.lines().collect();
    println!(
        "kafka over TLS: {} distinct output lines, no secret among them",
        distinct.len()
    );
    sim.stop().await;
}
