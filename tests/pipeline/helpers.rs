//! Shared set-up for the pipeline tests: the simulator, a bridge on real
//! sinks, readers for what each sink received, and the delivery check
//! against the simulator's ground truth.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cas_bridge::bridge::{Bridge, Coordination};
use cas_bridge::config::{Config, Dur, SinkKind, StartFrom};
use cas_bridge::runner::Faults;
use cas_bridge::shard::Shard;
use cas_bridge::sim::{self, SimConfig, SimHandle};
use cas_bridge::sink::Topics;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const NATS_URL: &str = "nats://127.0.0.1:4222";

pub fn kafka_brokers() -> String {
    std::env::var("CAS_BRIDGE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// Fails (never skips) when a server the test needs is not there.
pub fn require_server(addr: &str, how: &str) {
    let a = addr.trim_start_matches("nats://");
    if std::net::TcpStream::connect_timeout(&a.parse().expect("addr"), Duration::from_secs(2))
        .is_err()
    {
        panic!("this test needs a server at {addr}, which is not answering. Start it with: {how}");
    }
}

pub fn require_nats() {
    require_server(
        "127.0.0.1:4222",
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server (or ./scripts/test, which starts everything)",
    );
}

pub fn require_kafka() {
    require_server(
        &kafka_brokers(),
        "tansu broker --listener-url tcp://127.0.0.1:19092 --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/ (./scripts/test installs and starts it)",
    );
}

/// A short random tag that keeps tests apart on shared servers.
pub fn tag() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub fn test_pairs() -> Vec<String> {
    vec![
        "exchange:dlp".into(),
        "onedrive:securityrisk".into(),
        "box:virtualanalyzer".into(),
        "gmail:ransomware".into(),
    ]
}

/// A simulator tuned for quick tests: no throttling, 1,200 events per hour
/// per shard, 5 % of them 10 s late.
pub fn sim_config() -> SimConfig {
    SimConfig {
        per_minute: 0,
        per_day: 0,
        events_per_hour: 1200.0,
        late_fraction: 0.05,
        late_by: Duration::from_secs(10),
        ..SimConfig::default()
    }
}

/// A bridge configuration against `sim`: 10 minutes of history, pages of 50,
/// windows every second, lag 3 s and an overlap (30 s) longer than the late
/// events' delay.
pub fn bridge_config(sim: &SimHandle, tag: &str, kind: SinkKind) -> Config {
    let mut c = Config::default();
    c.api.base_url = Some(sim.base_url());
    c.api.dialect = sim.state.dialect();
    c.api.page_limit = Some(50);
    c.api.timeout = Dur::secs(10);
    c.shards.pairs = test_pairs();
    c.window.start_from = StartFrom::Ago(Duration::from_secs(600));
    c.window.lag = Dur::secs(3);
    c.window.overlap = Dur::secs(30);
    c.window.min_interval = Dur::secs(1);
    c.budget.per_minute = 100_000;
    c.budget.per_day = 10_000_000;
    c.sink.kind = kind;
    c.sink.topic_template = format!("{tag}.{{service}}.{{event}}");
    c.sink.dead_letter = format!("{tag}.deadletter");
    c.sink.nats.url = NATS_URL.into();
    c.sink.nats.stream = tag.to_uppercase();
    c.sink.kafka.brokers = kafka_brokers();
    c.shutdown.grace = Dur::secs(10);
    c.validate().expect("test config is valid");
    c
}

pub async fn start_sim(cfg: SimConfig) -> SimHandle {
    sim::start(cfg).await.expect("simulator starts")
}

pub async fn build_bridge(cfg: &Config, coord: Coordination) -> Arc<Bridge> {
    build_bridge_with_faults(cfg, coord, Faults::default()).await
}

pub async fn build_bridge_with_faults(
    cfg: &Config,
    coord: Coordination,
    faults: Faults,
) -> Arc<Bridge> {
    let sink = cas_bridge::sink::build(&cfg.sink, Duration::from_secs(600))
        .await
        .expect("sink");
    Arc::new(
        Bridge::build(cfg, SecretString::from("sim-token"), sink, coord)
            .expect("bridge")
            .with_faults(faults),
    )
}

/// A bridge running in the background.
pub struct Running {
    pub bridge: Arc<Bridge>,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn start(bridge: Arc<Bridge>) -> Self {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(bridge.clone().run(cancel.clone()));
        Self {
            bridge,
            cancel,
            task,
        }
    }

    /// Waits until every shard's cursor reached `t`.
    pub async fn wait_cursor(&self, t: DateTime<Utc>, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.bridge.min_cursor().is_some_and(|c| c >= t) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "cursors did not reach {t} within {timeout:?}: {:?}",
                    self.bridge.progress()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("bridge stops within 30 s")
            .expect("bridge task");
    }
}

/// One message as a consumer received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub id: String,
    pub doc: Value,
}

/// What a delivery check found.
#[derive(Debug, Default)]
pub struct Report {
    pub expected: usize,
    pub delivered: usize,
    pub missing: Vec<String>,
    pub duplicated: usize,
    pub wrong_routed: usize,
    pub dead_lettered: usize,
    pub unexpected: usize,
}

/// The ids the simulator generated in `[from, to]` for each shard, with the
/// topic each must reach.
pub fn expected(
    sim: &SimHandle,
    cfg: &Config,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> HashMap<String, String> {
    let topics = Topics::new(&cfg.sink.topic_template, &cfg.sink.dead_letter).unwrap();
    let mut out = HashMap::new();
    for p in &cfg.shards.pairs {
        let shard: Shard = p.parse().unwrap();
        // Schema violations, and events too large for the broker, go to
        // the dead-letter topic.
        let bad: std::collections::HashSet<String> = sim
            .state
            .bad_ids(&shard, from, to)
            .into_iter()
            .chain(sim.state.huge_ids(&shard, from, to))
            .collect();
        for id in sim.state.truth(&shard, from, to) {
            let topic = if bad.contains(&id) {
                cfg.sink.dead_letter.clone()
            } else {
                topics.topic(&shard)
            };
            out.insert(id, topic);
        }
    }
    out
}

/// Compares what was received with what was expected. Received messages
/// outside the expected range are allowed (the run went on past it) but
/// must still be routed by their request pair.
pub fn check(expected: &HashMap<String, String>, received: &[Received], cfg: &Config) -> Report {
    let topics = Topics::new(&cfg.sink.topic_template, &cfg.sink.dead_letter).unwrap();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    let mut r = Report {
        expected: expected.len(),
        ..Report::default()
    };
    for m in received {
        *count.entry(m.id.as_str()).or_default() += 1;
        let shard = Shard::new(
            m.doc["service"].as_str().unwrap_or_default(),
            m.doc["event"].as_str().unwrap_or_default(),
        );
        if m.topic == cfg.sink.dead_letter {
            r.dead_lettered += 1;
            assert!(
                m.doc["reasons"].as_array().is_some_and(|a| !a.is_empty()),
                "dead letter without reasons: {}",
                m.doc
            );
        } else if m.topic != topics.topic(&shard) {
            r.wrong_routed += 1;
        }
        match expected.get(&m.id) {
            Some(t) if *t != m.topic => r.wrong_routed += 1,
            Some(_) => {}
            None => r.unexpected += 1,
        }
    }
    for id in expected.keys() {
        match count.get(id.as_str()) {
            None => r.missing.push(id.clone()),
            Some(n) => {
                r.delivered += 1;
                r.duplicated += n - 1;
            }
        }
    }
    r
}

/// Reads the run's sink, checks it against the ids the simulator generated
/// in `[from, to]`, prints the counts under `what`, and asserts that none is
/// missing or on the wrong topic. Duplicates are bounded by the caller.
pub async fn assert_delivered(
    what: &str,
    sim: &SimHandle,
    cfg: &Config,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Report {
    let want = expected(sim, cfg, from, to);
    let r = check(&want, &read_sink(cfg).await, cfg);
    println!(
        "{what}: expected {}, delivered {}, duplicates {}, dead-lettered {}",
        r.expected, r.delivered, r.duplicated, r.dead_lettered
    );
    assert!(r.missing.is_empty(), "{what}: missing {}", r.missing.len());
    assert_eq!(r.wrong_routed, 0, "{what}: {r:?}");
    r
}

/// Reads a JSON-lines sink file.
pub fn read_jsonl(path: &std::path::Path) -> Vec<Received> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let doc: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}"));
            Received {
                topic: doc["topic"].as_str().unwrap().to_string(),
                id: doc["id"].as_str().unwrap().to_string(),
                doc,
            }
        })
        .collect()
}

/// Reads every message of a JetStream stream.
pub async fn read_nats(url: &str, stream: &str) -> Vec<Received> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    let client = async_nats::connect(url).await.expect("nats connect");
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let total = s.info().await.unwrap().state.messages as usize;
    let consumer = s
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let before = out.len();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            let doc: Value = serde_json::from_slice(&m.payload).unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.to_string())
                .unwrap_or_else(|| panic!("no Nats-Msg-Id in {:?}", m.headers));
            assert_eq!(
                doc["id"].as_str(),
                Some(id.as_str()),
                "Nats-Msg-Id is the event id"
            );
            out.push(Received {
                topic: m.subject.to_string(),
                id,
                doc,
            });
        }
        assert!(
            out.len() > before,
            "stream {stream} stopped at {} of {total}",
            out.len()
        );
    }
    out
}

/// Reads every message of the given Kafka topics (partition by partition,
/// from the beginning to the high watermark).
pub fn read_kafka(brokers: &str, topics: &[String]) -> Vec<Received> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", tag())
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut out = Vec::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md.topics()[0].partitions().len() as i32;
        for p in 0..partitions {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            if hi <= lo {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(lo))
                .unwrap();
            consumer.assign(&tpl).unwrap();
            let mut next = lo;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while next < hi {
                assert!(
                    std::time::Instant::now() < deadline,
                    "reading {topic}/{p} stalled at {next} of {hi}"
                );
                let Some(res) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let m = res.unwrap();
                next = m.offset() + 1;
                let doc: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let hdr = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "cas-event-id")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).to_string()))
                });
                assert_eq!(
                    hdr.as_deref(),
                    Some(key.as_str()),
                    "cas-event-id header is the key"
                );
                out.push(Received {
                    topic: topic.clone(),
                    id: key,
                    doc,
                });
            }
        }
    }
    out
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server with JetStream that the test owns (stopped on drop).
pub struct OwnNats {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnNats {
    pub fn start() -> Self {
        let mut n = OwnNats {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A server whose `max_payload` is `bytes` (set in a config file: the
    /// command line has no flag for it).
    pub fn start_with_max_payload(bytes: usize) -> Self {
        let mut n = OwnNats {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        let conf = n.dir.path().join("nats.conf");
        std::fs::write(&conf, format!("max_payload: {bytes}\n")).unwrap();
        n.launch(&["-c", conf.to_str().unwrap()]);
        n
    }

    /// Starts the server (again), on the same port and store directory.
    pub fn restart(&mut self) {
        self.launch(&[]);
    }

    fn launch(&mut self, extra: &[&str]) {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "nats-server",
        ]
        .into_iter()
        .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
        .unwrap();
        let child = std::process::Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}); install it with apt-get install nats-server"
                )
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
    }
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn require_redis() {
    require_server(
        "127.0.0.1:6379",
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no (or ./scripts/test)",
    );
}

/// A configuration for one fleet member on `redis_url`, sharing `prefix`.
pub fn fleet_config(
    sim: &SimHandle,
    tag: &str,
    kind: SinkKind,
    redis_url: &str,
    prefix: &str,
) -> Config {
    let mut c = bridge_config(sim, tag, kind);
    c.coord.redis_url = Some(SecretString::from(redis_url.to_string()));
    c.coord.prefix = prefix.into();
    c.coord.lease_ttl = Dur::secs(3);
    c.validate().unwrap();
    c
}

/// A fleet member in this process, named `worker`, coordinated through `cfg`'s Redis.
pub async fn member(cfg: &Config, worker: &str) -> Running {
    let mut c = cfg.clone();
    c.coord.worker_id = Some(worker.into());
    let (coord, _) = Coordination::redis(&c, &SecretString::from("sim-token"))
        .await
        .expect("redis");
    Running::start(build_bridge(&c, coord).await)
}

/// Everything the sink `cfg` names received: the JSON-lines file, the
/// JetStream stream, or every Kafka topic of its shards.
pub async fn read_sink(cfg: &Config) -> Vec<Received> {
    match cfg.sink.kind {
        SinkKind::Jsonl => read_jsonl(std::path::Path::new(&cfg.sink.jsonl.path)),
        SinkKind::Nats => read_nats(&cfg.sink.nats.url, &cfg.sink.nats.stream).await,
        SinkKind::Kafka => {
            let topics = Topics::new(&cfg.sink.topic_template, &cfg.sink.dead_letter)
                .unwrap()
                .all(&cfg.shards.shards().unwrap());
            let brokers = cfg.sink.kafka.brokers.clone();
            tokio::task::spawn_blocking(move || read_kafka(&brokers, &topics))
                .await
                .unwrap()
        }
    }
}

/// A Redis coordinator seen from the test (to read cursors and leases).
pub async fn observer(cfg: &Config) -> Arc<cas_bridge::coord::redis::RedisCoord> {
    let mut c = cfg.clone();
    c.coord.worker_id = Some("observer".into());
    Coordination::redis(&c, &SecretString::from("sim-token"))
        .await
        .expect("redis")
        .1
}

/// The oldest cursor in Redis over `cfg`'s shards.
pub async fn min_cursor_in(
    obs: &cas_bridge::coord::redis::RedisCoord,
    cfg: &Config,
) -> Option<DateTime<Utc>> {
    use cas_bridge::coord::CheckpointStore;
    let mut min: Option<DateTime<Utc>> = None;
    for s in cfg.shards.shards().unwrap() {
        let c = obs.load(&s).await.ok()??;
        min = Some(min.map_or(c, |m| m.min(c)));
    }
    min
}

/// Waits until every shard's cursor in Redis reached `t`.
pub async fn wait_cursor_in(
    obs: &cas_bridge::coord::redis::RedisCoord,
    cfg: &Config,
    t: DateTime<Utc>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while min_cursor_in(obs, cfg).await.is_none_or(|c| c < t) {
        if tokio::time::Instant::now() > deadline {
            let st = obs.status(&cfg.shards.shards().unwrap()).await;
            panic!("cursors did not reach {t} within {timeout:?}: {st:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A bridge process (the real binary), killed on drop.
/// Writes `cfg` as the file a bridge process reads (YAML, in its JSON
/// form), with this worker's id, quiet logs, an ephemeral ops port and the
/// simulator's token in a token file. Returns the file's path.
pub fn write_config(cfg: &Config, worker: &str, log: &std::path::Path) -> std::path::PathBuf {
    let token = log.with_extension("token");
    std::fs::write(&token, "sim-token").unwrap();
    let mut c = cfg.clone();
    c.api.token = None;
    c.api.token_file = Some(token);
    c.coord.worker_id = Some(worker.into());
    c.log.level = "warn".into();
    c.ops.listen = "127.0.0.1:0".into();
    let file = log.with_extension("yaml");
    std::fs::write(&file, c.redacted_json()).unwrap();
    // The file is read back by the bridge's own loader: what it holds is
    // what the test configured.
    let back = Config::load_from(Some(&file), Vec::new()).expect("the written config loads");
    assert_eq!(back.redacted_json(), c.redacted_json());
    file
}

pub struct BridgeProcess {
    pub child: std::process::Child,
}

impl BridgeProcess {
    /// Starts `cas-bridge run` with `cfg` written to a configuration file
    /// beside `log` (the token in a token file): every field reaches the
    /// binary, none is mapped by hand.
    pub fn spawn(cfg: &Config, worker: &str, log: &std::path::Path) -> Self {
        Self::spawn_with(cfg, worker, log, &[])
    }

    /// As [`BridgeProcess::spawn`], with extra `CAS_BRIDGE__*` variables (without the prefix).
    pub fn spawn_with(
        cfg: &Config,
        worker: &str,
        log: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let file = write_config(cfg, worker, log);
        let env: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let logf = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cas-bridge"))
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env_clear()
            .envs(
                env.into_iter()
                    .map(|(k, v)| (format!("CAS_BRIDGE__{k}"), v)),
            )
            .stdout(std::process::Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("the cas-bridge binary starts");
        Self { child }
    }

    /// SIGKILL: no shutdown, no release.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "bridge did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-server the test owns, on its own port (stopped on drop).
pub struct OwnRedis {
    pub port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Stops the server (the port stays reserved for [`OwnRedis::start_on`]).
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    pub fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it with apt-get install redis-server"
                )
            });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
