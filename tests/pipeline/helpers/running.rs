//! Bridges in this process: the simulator, configurations, a bridge
//! running in the background, fleet members and observers in Redis.
use std::sync::Arc;
use std::time::Duration;

use cas_bridge::bridge::Bridge;
use cas_bridge::config::{Config, Dur, SinkKind, StartFrom};
use cas_bridge::coord::Coordination;
use cas_bridge::runner::Faults;
use cas_bridge::sim::{self, SimConfig, SimHandle};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::*;

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

/// Eight pairs: four event types of two services.
pub fn eight_pairs() -> Vec<String> {
    ["exchange", "onedrive"]
        .iter()
        .flat_map(|s| {
            ["securityrisk", "virtualanalyzer", "ransomware", "dlp"]
                .iter()
                .map(move |e| format!("{s}:{e}"))
        })
        .collect()
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
/// windows every 1–2 s, lag 3 s and an overlap (30 s) longer than the late
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
    // Every pair polled at least every 2 s, whatever its activity.
    c.schedule.max_interval = Dur::secs(2);
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

/// What [`Running::caught_up`] covered: the range every shard's cursor
/// passed, `[from, to]`, the one a delivery check asks for.
pub struct Covered {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Running {
    /// A bridge on `cfg` in this process (coordination in memory), run
    /// until every cursor is 15 s past `now − 3 s`; still running. The
    /// range covered starts 590 s back (inside [`bridge_config`]'s 10
    /// minutes of history).
    pub async fn caught_up(cfg: &Config) -> (Self, Covered) {
        let t0 = Utc::now();
        let run = Self::start(build_bridge(cfg, cfg.in_memory_coordination()).await);
        let to = t0 - chrono::Duration::seconds(3);
        run.wait_cursor(to + chrono::Duration::seconds(15), Duration::from_secs(120))
            .await;
        let from = t0 - chrono::Duration::seconds(590);
        (run, Covered { from, to })
    }

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
    let (coord, _) = c
        .redis_coordination(&SecretString::from("sim-token"))
        .await
        .expect("redis");
    Running::start(build_bridge(&c, coord).await)
}

/// A Redis coordinator seen from the test (to read cursors and leases).
pub async fn observer(cfg: &Config) -> Arc<cas_bridge::coord::redis::RedisCoord> {
    let mut c = cfg.clone();
    c.coord.worker_id = Some("observer".into());
    c.redis_coordination(&SecretString::from("sim-token"))
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
    for s in cfg.all_shards().unwrap() {
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
            let st = obs.status(&cfg.all_shards().unwrap()).await;
            panic!("cursors did not reach {t} within {timeout:?}: {st:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the sink's stream or topics first, so that several processes
/// starting together do not race to.
pub async fn prepare_stream(cfg: &Config) {
    cas_bridge::sink::build(&cfg.sink, Duration::from_secs(600))
        .await
        .unwrap()
        .prepare(&[])
        .await
        .unwrap();
}

/// Fleet members in this process, each `(config, worker name)`, started
/// together and run until every cursor in the first config's Redis passed
/// the moment they started less 3 s (the history they were given).
pub struct Fleet {
    pub members: Vec<Running>,
    pub observer: Arc<cas_bridge::coord::redis::RedisCoord>,
    /// When they started.
    pub t0: DateTime<Utc>,
}

impl Fleet {
    pub async fn caught_up(members: &[(&Config, &str)]) -> Self {
        let t0 = Utc::now();
        let mut running = Vec::new();
        for (cfg, worker) in members {
            running.push(member(cfg, worker).await);
        }
        let cfg = members[0].0;
        let observer = observer(cfg).await;
        wait_cursor_in(
            &observer,
            cfg,
            t0 - chrono::Duration::seconds(3),
            Duration::from_secs(120),
        )
        .await;
        Self {
            members: running,
            observer,
            t0,
        }
    }

    /// Stops every member.
    pub async fn stop(self) {
        for m in self.members {
            m.stop().await;
        }
    }
}
