//! End-to-end benchmarks against the physical limit (the API's request
//! budget) and the machine (CPU, memory). Each prints its figures.
//!
//!   cargo bench --bench bridge -- throughput [jsonl|nats|kafka]
//!   cargo bench --bench bridge -- backfill
//!   cargo bench --bench bridge -- sweep
//!   cargo bench --bench bridge -- budget <workers> [minutes] [margin]
//!   cargo bench --bench bridge -- soak [minutes] [shards] [workers]
//!   cargo bench --bench bridge -- interrupt [kill|term] [every_s]
//!   cargo bench --bench bridge -- freshness [replicas] [minutes]
//!   cargo bench --bench bridge -- compare [jsonl|nats|kafka] [hours] [pairs]
//!   cargo bench --bench bridge -- tenants [tenants] [pairs] [replicas] [minutes] [cluster]
//!
//! `CAS_BRIDGE_BIN` runs another build of the binary as the bridge
//! processes (e.g. an older commit's, for a before/after figure).
//! The simulator runs as its own process (`cas-bridge simulate`), so the
//! bridge's CPU time is measured apart from the API's. NATS (4222), Kafka
//! (tansu, 19092) and Redis (6379) are the ones `./scripts/test` starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cas_bridge::bridge::Bridge;
use cas_bridge::config::{Config, Dur, SinkKind, StartFrom};
use cas_bridge::sim::SimStats;
use cas_bridge::telemetry::Stats;
use chrono::Utc;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

#[path = "bridge/compare.rs"]
mod compare;
#[path = "bridge/floor.rs"]
mod floor;
#[path = "bridge/tenants.rs"]
mod tenants;

const BIN: &str = env!("CARGO_BIN_EXE_cas-bridge");

/// The binary the bridge processes run (`CAS_BRIDGE_BIN`, else this build).
fn bridge_bin() -> String {
    std::env::var("CAS_BRIDGE_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// The same allocator as the binary's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Child {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn term(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `cas-bridge simulate` on a free port.
fn simulator(args: &[&str]) -> (Child, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["simulate", "--listen", &listen]);
    if !args.contains(&"--late-fraction") {
        cmd.args(["--late-fraction", "0"]);
    }
    let child = cmd
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("simulator");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "simulator did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Child(child), format!("http://{listen}"))
}

/// Starts `cas-bridge run` with `CAS_BRIDGE__<key>` variables.
fn worker(env: &[(&str, String)]) -> Child {
    let child = std::process::Command::new(bridge_bin())
        .arg("run")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (format!("CAS_BRIDGE__{k}"), v)))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cas-bridge run");
    Child(child)
}

async fn sim_stats(base: &str) -> SimStats {
    let bytes = reqwest::get(format!("{base}/_sim/stats"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// user+system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // fields 14 and 15 of stat are the 12th and 13th after the command name
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak and current resident memory (MiB) of a process, from /proc.
fn rss_mib(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

fn pairs(n: usize) -> Vec<String> {
    let services = cas_bridge::config::DEFAULT_SERVICES;
    let events = cas_bridge::config::DEFAULT_EVENTS;
    let mut all: Vec<String> = services
        .iter()
        .flat_map(|s| events.iter().map(move |e| format!("{s}:{e}")))
        .collect();
    // The 49th is the quarantine stream (the default pairs' last).
    all.push("exchange:quarantine".into());
    let extra = (0..n.saturating_sub(all.len())).map(|i| format!("svc{i}:dlp"));
    all.extend(extra);
    all.truncate(n);
    all
}

fn base_config(api: &str, shards: usize) -> Config {
    let mut c = Config::default();
    c.api.base_url = Some(api.to_string());
    c.api.region = None;
    c.shards.pairs = pairs(shards);
    // Past 48 shards the benches make up services (`svc0:dlp`, …).
    c.shards.allow_unknown_pairs = true;
    c.budget.per_minute = 1_000_000;
    c.budget.per_day = 100_000_000;
    c.window.lag = Dur::secs(5);
    c.window.min_interval = Dur::secs(30);
    // Every pair every 30 s, whatever its activity (the freshness bench
    // sets the activity-aware schedule itself).
    c.schedule.max_interval = Dur::secs(30);
    c.sink.kind = SinkKind::Jsonl;
    c.sink.jsonl.path = "/dev/null".into();
    c.log.level = "warn".into();
    c
}

async fn in_process_bridge(cfg: &Config) -> Arc<Bridge> {
    let sink = cas_bridge::sink::build(&cfg.sink, Duration::from_secs(600))
        .await
        .expect("sink");
    Arc::new(
        Bridge::build(
            cfg,
            SecretString::from("sim-token"),
            sink,
            cfg.in_memory_coordination(),
        )
        .expect("bridge"),
    )
}

/// Runs a bridge until every cursor reached `until`; returns (elapsed, bridge CPU s, peak RSS MiB).
async fn run_until(bridge: Arc<Bridge>, until: chrono::DateTime<Utc>) -> (Duration, f64, f64) {
    let cpu0 = cpu_seconds("self");
    let start = Instant::now();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(bridge.clone().run(cancel.clone()));
    while bridge.min_cursor().is_none_or(|c| c < until) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "no progress: {:?}",
            bridge.progress()
        );
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds("self") - cpu0;
    cancel.cancel();
    let _ = task.await;
    (elapsed, cpu, rss_mib("self").0)
}

async fn throughput(sink: &str) {
    // 48 shards × 2 h × 12,000 events/h = 1.15 M events, no throttling.
    let (sim, api) = simulator(&[
        "--per-minute",
        "0",
        "--per-day",
        "0",
        "--events-per-hour",
        "12000",
    ]);
    let mut cfg = base_config(&api, 48);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(7200));
    let tag = format!("bench{}", std::process::id());
    cfg.sink.topic_template = format!("{tag}.{{service}}.{{event}}");
    cfg.sink.dead_letter = format!("{tag}.deadletter");
    match sink {
        "nats" => {
            cfg.sink.kind = SinkKind::Nats;
            cfg.sink.nats.url = "nats://127.0.0.1:4222".into();
            cfg.sink.nats.stream = tag.to_uppercase();
        }
        "kafka" => {
            cfg.sink.kind = SinkKind::Kafka;
            cfg.sink.kafka.brokers = "127.0.0.1:19092".into();
        }
        _ => {}
    }
    let bridge = in_process_bridge(&cfg).await;
    let sim_cpu0 = cpu_seconds(&sim.pid().to_string());
    let until = Utc::now() - chrono::Duration::seconds(5);
    let (elapsed, cpu, peak) = run_until(bridge.clone(), until).await;
    let sim_cpu = cpu_seconds(&sim.pid().to_string()) - sim_cpu0;
    let n =
        Stats::get(&bridge.stats().events_published) + Stats::get(&bridge.stats().dead_lettered);
    println!(
        "throughput → {sink}: {n} events in {:.1} s = {:.0} events/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  bridge CPU {cpu:.1} s = {:.0} events per CPU-second; simulator CPU {sim_cpu:.1} s",
        n as f64 / cpu.max(0.001)
    );
    println!("  bridge peak RSS (VmHWM) {peak:.1} MiB");
    println!(
        "  requests {}, pages {}",
        Stats::get(&bridge.stats().requests),
        Stats::get(&bridge.stats().pages)
    );
    // Steady state: caught up, polling 48 shards with little to fetch.
    let cancel = CancellationToken::new();
    let task = tokio::spawn(bridge.clone().run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(40)).await;
    println!(
        "  steady-state RSS after 40 s caught up: {:.1} MiB",
        rss_mib("self").1
    );
    cancel.cancel();
    let _ = task.await;
}

async fn backfill() {
    // 72 h of history on 48 pairs: 200 events/h each.
    let (sim, api) = simulator(&[
        "--per-minute",
        "0",
        "--per-day",
        "0",
        "--events-per-hour",
        "200",
    ]);
    let mut cfg = base_config(&api, 48);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(72 * 3600));
    let bridge = in_process_bridge(&cfg).await;
    let until = Utc::now() - chrono::Duration::seconds(5);
    let (elapsed, cpu, peak) = run_until(bridge.clone(), until).await;
    let stats = sim_stats(&api).await;
    let events =
        Stats::get(&bridge.stats().events_published) + Stats::get(&bridge.stats().dead_lettered);
    // The minimum: every pair's events in pages of 500, at least one request per pair.
    let per_pair = events as f64 / 48.0;
    let minimum = 48.0 * (per_pair / 500.0).ceil().max(1.0);
    let used = stats.served as f64;
    println!("backfill 72 h × 48 pairs: {events} events, {used} requests, minimum {minimum} → ratio {:.3}", used / minimum);
    println!(
        "  {:.1} s, bridge CPU {cpu:.1} s, peak RSS (VmHWM) {peak:.1} MiB",
        elapsed.as_secs_f64()
    );
    drop(sim);
}

async fn sweep() {
    // No backlog: 48 shards, rate 60/min. How long does it take to poll all once?
    let rate = 60u32;
    let (sim, api) = simulator(&[
        "--per-minute",
        &rate.to_string(),
        "--throttle",
        "sliding",
        "--events-per-hour",
        "60",
    ]);
    let mut cfg = base_config(&api, 48);
    cfg.budget.per_minute = rate;
    cfg.window.start_from = StartFrom::Now;
    cfg.window.min_interval = Dur::secs(1);
    cfg.schedule.max_interval = Dur::secs(1);
    let bridge = in_process_bridge(&cfg).await;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(bridge.clone().run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(240)).await;
    cancel.cancel();
    let _ = task.await;
    let stats = sim_stats(&api).await;
    // Requests per second after the first minute (start-up excluded), from
    // the first to the last request served in that span; one sweep of 48
    // shards takes 48 ÷ that.
    let t: Vec<i64> = stats
        .log
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.at_ms)
        .filter(|at| *at >= stats.log[0].at_ms + 60_000)
        .collect();
    let (n, span_s) = steady_rate(&t);
    let rate_seen = n as f64 / span_s;
    let per_sweep = 48.0 / rate_seen;
    let ideal = 48.0 / (rate as f64 / 60.0);
    println!(
        "sweep 48 shards at {rate}/min: {n} requests in {span_s:.0} s = {rate_seen:.3}/s → {per_sweep:.1} s per sweep; ideal {ideal:.1} s → ratio {:.3}; 429s {}",
        per_sweep / ideal,
        stats.throttled
    );
    drop(sim);
}

/// Requests served after the first, and the seconds from the first to the
/// last: grants are paced, so their ratio is the steady rate with no
/// partial-period effects.
fn steady_rate(at_ms: &[i64]) -> (usize, f64) {
    let span_ms = at_ms[at_ms.len() - 1] - at_ms[0];
    (at_ms.len() - 1, span_ms as f64 / 1000.0)
}

async fn budget(workers: usize, minutes: u64, margin: &str) {
    let limit = 60u32;
    let (sim, api) = simulator(&[
        "--per-minute",
        &limit.to_string(),
        "--throttle",
        "sliding",
        "--events-per-hour",
        "30000",
    ]);
    let prefix = format!("bench-budget-{}", std::process::id());
    let mut procs = Vec::new();
    for i in 0..workers {
        let env = [
            ("API__BASE_URL", api.clone()),
            ("API__TOKEN", "sim-token".into()),
            ("SHARDS__PAIRS", pairs(48).join(",")),
            ("WINDOW__START_FROM", "6h".into()),
            ("BUDGET__PER_MINUTE", limit.to_string()),
            ("BUDGET__MARGIN", margin.into()),
            ("COORD__REDIS_URL", "redis://127.0.0.1:6379".into()),
            ("COORD__PREFIX", prefix.clone()),
            ("COORD__WORKER_ID", format!("b{i}")),
            ("SINK__KIND", "jsonl".into()),
            ("SINK__JSONL__PATH", "/dev/null".into()),
            ("OPS__LISTEN", "127.0.0.1:0".into()),
            ("LOG__LEVEL", "error".into()),
        ];
        procs.push(worker(&env));
    }
    tokio::time::sleep(Duration::from_secs(minutes * 60)).await;
    let mut rss = Vec::new();
    for p in &mut procs {
        rss.push(rss_mib(&p.pid().to_string()).0);
        p.term();
    }
    let s = sim_stats(&api).await;
    let t: Vec<i64> = s
        .log
        .iter()
        .filter(|r| r.status != 429)
        .map(|r| r.at_ms)
        .collect();
    let (n, span_s) = steady_rate(&t);
    let per_min = n as f64 / span_s * 60.0;
    println!(
        "budget: {workers} worker(s), L = {limit}/min, margin {margin}, {minutes} min: {:.1}/min = {:.1} % of L; max in any 60 s {}; 429s {}; worker peak RSS {:?} MiB",
        per_min,
        100.0 * per_min / limit as f64,
        s.max_in_any(Duration::from_secs(60)),
        s.throttled,
        rss.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>()
    );
    drop(sim);
}

/// A long run: `workers` processes on `shards` shards with the NATS sink,
/// memory sampled every 30 s; at the end every id the simulator generated
/// for the checked range must be in the stream once.
async fn soak(minutes: u64, shards: usize, workers: usize) {
    use futures::StreamExt;
    let (sim, api) = simulator(&[
        "--per-minute",
        "600",
        "--throttle",
        "sliding",
        "--events-per-hour",
        "3000",
        "--late-fraction",
        "0.05",
        "--late-by",
        "90s",
    ]);
    let tag = format!("soak{}", std::process::id());
    let stream = tag.to_uppercase();
    let pairs = pairs(shards);
    let mut procs = Vec::new();
    let start = Utc::now();
    for i in 0..workers {
        let env = [
            ("API__BASE_URL", api.clone()),
            ("API__TOKEN", "sim-token".into()),
            ("SHARDS__PAIRS", pairs.join(",")),
            ("SHARDS__ALLOW_UNKNOWN_PAIRS", "true".into()),
            ("WINDOW__START_FROM", "10m".into()),
            ("WINDOW__MIN_INTERVAL", "15s".into()),
            ("BUDGET__PER_MINUTE", "600".into()),
            ("COORD__REDIS_URL", "redis://127.0.0.1:6379".into()),
            ("COORD__PREFIX", tag.clone()),
            ("COORD__WORKER_ID", format!("s{i}")),
            ("SINK__KIND", "nats".into()),
            ("SINK__NATS__URL", "nats://127.0.0.1:4222".into()),
            ("SINK__NATS__STREAM", stream.clone()),
            (
                "SINK__TOPIC_TEMPLATE",
                format!("{tag}.{{service}}.{{event}}"),
            ),
            ("SINK__DEAD_LETTER", format!("{tag}.deadletter")),
            ("OPS__LISTEN", "127.0.0.1:0".into()),
            ("LOG__LEVEL", "error".into()),
        ];
        procs.push(worker(&env));
        // Staggered starts exercise the rebalancing too.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "soak: {minutes} min, {shards} shards, {workers} workers; RSS MiB per worker every 30 s:"
    );
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(minutes * 60) {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let rss: Vec<String> = procs
            .iter()
            .map(|p| format!("{:.1}", rss_mib(&p.pid().to_string()).1))
            .collect();
        println!("  t={:>5}s  {}", t0.elapsed().as_secs(), rss.join(" "));
    }
    let check_to = Utc::now() - chrono::Duration::minutes(3);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let peaks: Vec<String> = procs
        .iter()
        .map(|p| format!("{:.1}", rss_mib(&p.pid().to_string()).0))
        .collect();
    for p in &mut procs {
        p.term();
    }
    // Ground truth from the simulator, then the stream.
    let mut want = std::collections::HashSet::new();
    for p in &pairs {
        let (svc, ev) = p.split_once(':').unwrap();
        let url = format!(
            "{api}/_sim/truth?service={svc}&event={ev}&start={}&end={}",
            cas_bridge::cas::format_time(start - chrono::Duration::minutes(9)),
            cas_bridge::cas::format_time(check_to)
        );
        let body: serde_json::Value =
            serde_json::from_slice(&reqwest::get(url).await.unwrap().bytes().await.unwrap())
                .unwrap();
        for id in body["ids"].as_array().unwrap() {
            want.insert(id.as_str().unwrap().to_string());
        }
    }
    let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await.unwrap());
    let mut st = js.get_stream(&stream).await.unwrap();
    let total = st.info().await.unwrap().state.messages as usize;
    let consumer = st
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut read = 0;
    while read < total {
        let mut batch = consumer
            .fetch()
            .max_messages(5000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.to_string())
                .unwrap_or_default();
            *seen.entry(id).or_default() += 1;
            read += 1;
        }
    }
    let missing = want.iter().filter(|id| !seen.contains_key(*id)).count();
    let dups: usize = seen.values().map(|n| n - 1).sum();
    println!("soak result: expected {}, missing {missing}, duplicates in stream {dups}, messages {total}; worker peak RSS {peaks:?} MiB", want.len());
    let _ = js.delete_stream(&stream).await;
    drop(sim);
}

/// A 70 h backlog on 4 busy pairs (~8,400 events each, pages of 200), two
/// replicas through Redis at 120 requests a minute; every `every_s` seconds
/// one replica is killed (`kill`: SIGKILL, at random) or restarted
/// (`term`: SIGTERM, in turn, as a rolling update) and replaced. Prints the
/// requests against the minimum (Σ ⌈events ÷ 500⌉) and the time against
/// the ideal (minimum ÷ budget), and the pages the API answered twice. Σ
/// ⌈events ÷ 200⌉ over the pairs is the minimum.
async fn interrupt(how: &str, every_s: u64) {
    use rand::Rng;
    let (sim, api) = simulator(&["--per-minute", "0", "--events-per-hour", "120"]);
    let pairs: Vec<String> = [
        "exchange:dlp",
        "onedrive:securityrisk",
        "box:ransomware",
        "gmail:virtualanalyzer",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    let prefix = format!("bench-interrupt-{}", std::process::id());
    let per_minute = 120u32;
    let env = |i: usize| {
        vec![
            ("API__BASE_URL", api.clone()),
            ("API__TOKEN", "sim-token".to_string()),
            ("SHARDS__PAIRS", pairs.join(",")),
            ("SHARDS__ALLOW_UNKNOWN_PAIRS", "true".into()),
            ("API__PAGE_LIMIT", "200".into()),
            ("WINDOW__START_FROM", "70h".into()),
            ("WINDOW__MIN_INTERVAL", "1h".into()),
            // No shorter than min_interval (the configuration refuses it).
            ("SCHEDULE__MAX_INTERVAL", "1h".into()),
            ("WINDOW__LAG", "5s".into()),
            ("BUDGET__PER_MINUTE", per_minute.to_string()),
            ("COORD__REDIS_URL", "redis://127.0.0.1:6379".into()),
            ("COORD__PREFIX", prefix.clone()),
            ("COORD__LEASE_TTL", "3s".into()),
            ("COORD__WORKER_ID", format!("i{i}")),
            ("SINK__KIND", "jsonl".into()),
            ("SINK__JSONL__PATH", "/dev/null".into()),
            ("OPS__LISTEN", "127.0.0.1:0".into()),
            ("LOG__LEVEL", "error".into()),
        ]
    };
    let mut cfg = Config::default();
    cfg.api.base_url = Some(api.clone());
    cfg.shards.pairs = pairs.clone();
    cfg.coord.redis_url = Some(SecretString::from("redis://127.0.0.1:6379".to_string()));
    cfg.coord.prefix = prefix.clone();
    cfg.coord.worker_id = Some("observer".into());
    let (_, obs) = cfg
        .redis_coordination(&SecretString::from("sim-token"))
        .await
        .expect("Redis on 6379 (./scripts/test starts it)");
    let shards = cfg.shards.shards().unwrap();
    let t0 = Utc::now();
    let started = Instant::now();
    let mut procs: Vec<Child> = (0..2).map(|i| worker(&env(i))).collect();
    let mut next = 2;
    let mut interruptions = 0;
    let mut last = Instant::now();
    loop {
        let st = obs.status(&shards).await.unwrap();
        if st.shards.iter().all(|s| {
            s.cursor
                .is_some_and(|c| c >= t0 - chrono::Duration::seconds(6))
        }) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the backlog took over 30 minutes"
        );
        if last.elapsed() >= Duration::from_secs(every_s) {
            let victim = if how == "kill" {
                rand::rng().random_range(0..procs.len())
            } else {
                interruptions % procs.len()
            };
            if how == "kill" {
                let _ = procs[victim].0.kill();
                let _ = procs[victim].0.wait();
            } else {
                procs[victim].term();
            }
            procs[victim] = worker(&env(next));
            next += 1;
            interruptions += 1;
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in &mut procs {
        p.term();
    }
    let s = sim_stats(&api).await;
    let mut minimum = 0u64;
    let mut events = 0u64;
    let end = cas_bridge::cas::format_time(t0);
    let begin = cas_bridge::cas::format_time(t0 - chrono::Duration::hours(70));
    for p in &pairs {
        let (svc, ev) = p.split_once(':').unwrap();
        let body = reqwest::get(format!(
            "{api}/_sim/truth?service={svc}&event={ev}&start={begin}&end={end}"
        ))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let n = v["ids"].as_array().map_or(0, |a| a.len()) as u64;
        events += n;
        minimum += n.div_ceil(200);
    }
    let served = s.by_status.get(&200).copied().unwrap_or(0);
    let ideal = minimum as f64 * 60.0 / f64::from(per_minute);
    println!(
        "interrupt {how} every {every_s} s: {interruptions} interruptions; {events} events; {served} requests for a minimum of {minimum} = {:.3}; {took:.0} s for an ideal {ideal:.0} s = {:.2}; pages answered twice {}",
        served as f64 / minimum as f64,
        took / ideal,
        s.pages_read_again()
    );
    drop(sim);
}

/// Delivery latency with the live API's budget: the default 48 pairs, 20
/// requests a minute, 4 pairs with 20 events a minute, one that wakes up
/// after 200 s, the rest silent; `window.lag` 20 s; NATS; `replicas`
/// processes (through Redis when more than one). Latency is from the
/// simulator's visibility time of an event to JetStream's storage time of
/// its message, over the busy pairs' events that became visible after the
/// first 4 minutes (every pair visited once) and before the last 90 s.
async fn freshness(replicas: usize, minutes: u64) {
    use futures::StreamExt;
    let busy = [
        "exchange:dlp",
        "sharepoint:ransomware",
        "onedrive:virtualanalyzer",
        "box:securityrisk",
    ];
    let wakes = "gmail:dlp";
    let mut args: Vec<String> = vec![
        "--per-minute".into(),
        "20".into(),
        "--per-day".into(),
        "0".into(),
        "--throttle".into(),
        "sliding".into(),
    ];
    for p in busy {
        args.extend(["--activity".into(), format!("{p}=1200")]);
    }
    args.extend(["--activity".into(), format!("{wakes}=1200@+200s")]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (sim, api) = simulator(&refs);
    let tag = format!("fresh{}", std::process::id());
    let stream = tag.to_uppercase();
    let env = |i: usize| {
        let mut e = vec![
            ("API__BASE_URL", api.clone()),
            ("API__TOKEN", "sim-token".to_string()),
            ("WINDOW__START_FROM", "now".into()),
            ("WINDOW__LAG", "20s".into()),
            ("BUDGET__PER_MINUTE", "20".into()),
            ("SINK__KIND", "nats".into()),
            ("SINK__NATS__URL", "nats://127.0.0.1:4222".into()),
            ("SINK__NATS__STREAM", stream.clone()),
            (
                "SINK__TOPIC_TEMPLATE",
                format!("{tag}.{{service}}.{{event}}"),
            ),
            ("SINK__DEAD_LETTER", format!("{tag}.deadletter")),
            ("COORD__WORKER_ID", format!("w{i}")),
            ("OPS__LISTEN", "127.0.0.1:0".into()),
            ("LOG__LEVEL", "error".into()),
        ];
        if replicas > 1 {
            e.push(("COORD__REDIS_URL", "redis://127.0.0.1:6379".into()));
            e.push(("COORD__PREFIX", tag.clone()));
        }
        e
    };
    let t0 = Utc::now();
    // The first creates the stream; the others find it.
    let mut procs = vec![worker(&env(0))];
    tokio::time::sleep(Duration::from_secs(2)).await;
    procs.extend((1..replicas).map(|i| worker(&env(i))));
    tokio::time::sleep(Duration::from_secs(minutes * 60)).await;
    for p in &mut procs {
        p.term();
    }
    // JetStream's storage time of every message, by event id.
    let client = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("NATS on 4222");
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(&stream).await.expect("the stream");
    let total = s.info().await.unwrap().state.messages as usize;
    let consumer = s
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stored = std::collections::HashMap::new();
    while stored.len() < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let before = stored.len();
        while let Some(Ok(m)) = batch.next().await {
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.to_string())
                .unwrap_or_default();
            let at = m
                .info()
                .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as i64);
            stored.insert(id, at.unwrap_or(0));
        }
        if stored.len() == before {
            break;
        }
    }
    let _ = js.delete_stream(&stream).await;
    let from = t0 + chrono::Duration::seconds(240);
    let to = t0 + chrono::Duration::seconds(minutes as i64 * 60 - 90);
    let truth = |pair: &str| {
        let (svc, ev) = pair.split_once(':').unwrap();
        let url = format!(
            "{api}/_sim/truth?service={svc}&event={ev}&start={}&end={}",
            cas_bridge::cas::format_time(t0 - chrono::Duration::seconds(60)),
            cas_bridge::cas::format_time(to)
        );
        async move {
            let body = reqwest::get(url).await.unwrap().bytes().await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let ids: Vec<String> = serde_json::from_value(v["ids"].clone()).unwrap();
            let vis: Vec<i64> = serde_json::from_value(v["visible_ms"].clone()).unwrap();
            ids.into_iter().zip(vis).collect::<Vec<_>>()
        }
    };
    let mut lat = Vec::new();
    let mut missing = 0;
    for p in busy {
        for (id, vis) in truth(p).await {
            if vis < from.timestamp_millis() {
                continue;
            }
            match stored.get(&id) {
                Some(at) => lat.push((at - vis) as f64 / 1000.0),
                None => missing += 1,
            }
        }
    }
    let woke = truth(wakes)
        .await
        .first()
        .and_then(|(id, vis)| stored.get(id).map(|at| (at - vis) as f64 / 1000.0));
    lat.sort_by(f64::total_cmp);
    let q = |x: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * x).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let st = sim_stats(&api).await;
    println!(
        "freshness, {replicas} process(es), {minutes} min: {} busy-pair events measured, {missing} not delivered; latency median {:.1} s, p90 {:.1} s, max {:.1} s; the waking pair's first event after {woke:?} s; {} requests served, {} × 429, at most {} in any 60 s",
        lat.len(),
        q(0.5),
        q(0.9),
        q(1.0),
        st.served,
        st.throttled,
        st.max_in_any(Duration::from_secs(60)),
    );
    drop(sim);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let what = args.first().map(String::as_str).unwrap_or("help");
    rt.block_on(async {
        match what {
            "throughput" => throughput(args.get(1).map(String::as_str).unwrap_or("jsonl")).await,
            "compare" => {
                let sink = args.get(1).cloned().unwrap_or_else(|| "jsonl".into());
                let h = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(12);
                let p = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(8);
                let r = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(1);
                compare::compare(&sink, h, p, r).await
            }
            "kafka-floor" => {
                // The Kafka part of `compare`'s floor on its own (to profile).
                let n = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(200_000);
                let mut cfg = base_config("http://127.0.0.1:1", 1);
                cfg.sink.kind = SinkKind::Kafka;
                cfg.sink.kafka.brokers = "127.0.0.1:19092".into();
                let tag = format!("kf{}", std::process::id());
                for p in floor::kafka(&cfg, &tag, n).await {
                    println!("{:<46} {:.2} µs", p.name, p.us_per_event);
                }
            }
            "tenants" => {
                let cluster = args.iter().any(|a| a == "cluster");
                let args: Vec<String> = args.iter().filter(|a| *a != "cluster").cloned().collect();
                let t = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(200);
                let p = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(49);
                let r = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(3);
                let m = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(7);
                tenants::tenants(t, p, r, m, cluster).await
            }
            "backfill" => backfill().await,
            "sweep" => sweep().await,
            "soak" => {
                let m = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(30);
                let s = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(64);
                let w = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(8);
                soak(m, s, w).await
            }
            "interrupt" => {
                let how = args.get(1).cloned().unwrap_or_else(|| "kill".into());
                let every = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(20);
                interrupt(&how, every).await
            }
            "budget" => {
                let n = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(3);
                let m = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(3);
                let margin = args.get(3).cloned().unwrap_or_else(|| "250ms".into());
                budget(n, m, &margin).await
            }
            "freshness" => {
                let r = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1);
                let m = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(10);
                freshness(r, m).await
            }
            _ => eprintln!("usage: cargo bench --bench bridge -- throughput [jsonl|nats|kafka] | compare [jsonl|nats|kafka] [hours] [pairs] [rounds] | kafka-floor [events] | backfill | sweep | budget <workers> [minutes] [margin] | soak [minutes] [shards] [workers] | interrupt [kill|term] [every_s] | freshness [replicas] [minutes] | tenants [tenants] [pairs] [replicas] [minutes] [cluster]"),
        }
    });
}
