//! Never paying twice for a page: a backlog of several pages per pair read
//! by replicas that are killed (kill -9) or restarted (SIGTERM, as a rolling
//! update does), and a stored next link the API has expired. Requests are
//! compared with the minimum: Σ over pairs of ⌈events ÷ page size⌉.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cas_bridge::config::{Config, Dur, SinkKind, StartFrom};
use cas_bridge::sim::{SimConfig, SimHandle};
use chrono::Utc;
use rand::Rng;

use crate::helpers::*;

const PAGE: u32 = 100;

/// What is read: the pairs and how far back their backlog starts.
struct Backlog {
    pairs: Vec<String>,
    hours: i64,
}

impl Backlog {
    /// 4 busy pairs, 70 h of backlog at 120 events an hour (~8,400 each,
    /// 84 pages of 100), read in one window each.
    fn security() -> Self {
        Self {
            pairs: test_pairs()[..4].to_vec(),
            hours: 70,
        }
    }

    /// The quarantine stream, 150 h back (past the security events' 72 h:
    /// ~18,000 events in three windows of at most 3 days).
    fn quarantine() -> Self {
        Self {
            pairs: vec!["exchange:quarantine".into()],
            hours: 150,
        }
    }
}

/// The backlog's configuration: no new window for an hour once it is read.
fn backlog(sim: &SimHandle, tag: &str, b: &Backlog) -> Config {
    let mut cfg = fleet_config(sim, tag, SinkKind::Nats, REDIS_URL, tag);
    cfg.shards.pairs = b.pairs.clone();
    cfg.api.page_limit = Some(PAGE);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(b.hours as u64 * 3600));
    cfg.window.min_interval = Dur::secs(3600);
    cfg.schedule.max_interval = Dur::secs(3600);
    cfg.budget.per_minute = 600;
    cfg.validate().unwrap();
    cfg
}

fn backlog_sim() -> SimConfig {
    SimConfig {
        events_per_hour: 120.0,
        late_fraction: 0.0,
        latency: Duration::from_millis(30),
        ..sim_config()
    }
}

/// Requests the API answered 200, the minimum for what was delivered, and
/// the pages answered more than once.
async fn cost(sim: &SimHandle, cfg: &Config) -> (u64, u64, u64) {
    let got = read_sink(cfg).await;
    let mut per_pair: HashMap<String, HashSet<String>> = HashMap::new();
    for m in &got {
        let pair = format!(
            "{}:{}",
            m.doc["service"].as_str().unwrap(),
            m.doc["event"].as_str().unwrap()
        );
        per_pair.entry(pair).or_default().insert(m.id.clone());
    }
    assert_eq!(
        per_pair.len(),
        cfg.shards.pairs.len(),
        "every pair delivered"
    );
    let minimum: u64 = per_pair
        .values()
        .map(|ids| (ids.len() as u64).div_ceil(u64::from(PAGE)))
        .sum();
    let s = sim.state.stats();
    for (page, n) in s.page_reads.iter().filter(|(_, n)| **n > 1) {
        println!("read {n} times: {page}");
    }
    let served = s.by_status.get(&200).copied().unwrap_or(0);
    (served, minimum, s.pages_read_again())
}

/// How replicas are interrupted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Interruption {
    /// SIGKILL of a random replica every 2–5 s.
    Kill,
    /// SIGTERM of each replica in turn every 4 s, as a rolling update.
    Rolling,
}

/// Two replicas read the backlog while being interrupted and replaced;
/// returns what it cost: (interruptions, requests, minimum, pages twice).
async fn interrupted_backlog(how: Interruption, b: Backlog) -> (usize, u64, u64, u64, Report) {
    require_redis();
    require_nats();
    let sim = start_sim(backlog_sim()).await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let cfg = backlog(&sim, &tag, &b);
    prepare_stream(&cfg).await;
    let t0 = Utc::now();
    let spawn = |n: usize| {
        BridgeProcess::spawn(
            &cfg,
            &format!("r{n}"),
            &dir.path().join(format!("r{n}.log")),
        )
    };
    let mut procs: Vec<BridgeProcess> = (0..2).map(spawn).collect();
    let obs = observer(&cfg).await;
    let mut done = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while min_cursor_in(&obs, &cfg)
        .await
        .is_none_or(|c| c < t0 - chrono::Duration::seconds(5))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog was not delivered in time"
        );
        let victim = match how {
            Interruption::Kill => {
                let wait = rand::rng().random_range(2000..5000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let v = rand::rng().random_range(0..procs.len());
                procs[v].kill9();
                v
            }
            Interruption::Rolling => {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let v = done % procs.len();
                assert!(procs[v].terminate().success(), "a clean exit on SIGTERM");
                v
            }
        };
        done += 1;
        procs[victim] = spawn(2 + done);
    }
    // The newest replica may be a few ms old: let it start before SIGTERM.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in &mut procs {
        assert!(p.terminate().success());
    }
    let from = t0 - chrono::Duration::hours(b.hours) + chrono::Duration::minutes(1);
    let what = format!("{how:?} {:?}", b.pairs);
    let r = assert_delivered(&what, &sim, &cfg, from, t0 - chrono::Duration::seconds(10)).await;
    // ~120 events an hour per pair.
    let least = 100 * b.hours as usize * b.pairs.len();
    assert!(r.expected > least, "{r:?}");
    let (served, minimum, again) = cost(&sim, &cfg).await;
    println!(
        "{what}: {done} interruptions, {served} requests for a minimum of {minimum} = {:.3}; pages read again {again}",
        served as f64 / minimum as f64
    );
    assert!(done >= 3, "the run outlived several interruptions: {done}");
    sim.stop().await;
    (done, served, minimum, again, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_every_few_seconds_costs_at_most_the_pages_in_flight() {
    let (_, served, minimum, _, _) =
        interrupted_backlog(Interruption::Kill, Backlog::security()).await;
    assert!(
        served as f64 <= 1.15 * minimum as f64,
        "{served} requests for a minimum of {minimum}"
    );
}

/// The same for the quarantine stream, its backlog reaching past the
/// security events' 72 h: every event once (ids from the simulator's
/// truth), at most the pages in flight paid twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_quarantine_backfill_costs_at_most_the_pages_in_flight() {
    // Every id of the range delivered is asserted inside.
    let (_, served, minimum, _, _) =
        interrupted_backlog(Interruption::Kill, Backlog::quarantine()).await;
    assert!(
        served as f64 <= 1.15 * minimum as f64,
        "{served} requests for a minimum of {minimum}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_reads_no_page_twice() {
    let (_, served, minimum, again, r) =
        interrupted_backlog(Interruption::Rolling, Backlog::security()).await;
    assert_eq!(r.duplicated, 0, "{r:?}");
    assert_eq!(again, 0, "a page was read twice");
    assert!(
        served as f64 <= 1.05 * minimum as f64,
        "{served} requests for a minimum of {minimum}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_stored_link_rereads_the_window_and_loses_nothing() {
    require_nats();
    // Links live 2 s; pages come slowly (budget 60/min = one a second), so
    // a bridge stopped mid-window leaves a link that expires while no one
    // holds the shard.
    let sim = start_sim(SimConfig {
        link_ttl: Some(Duration::from_secs(2)),
        ..backlog_sim()
    })
    .await;
    let tag = tag();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Nats);
    cfg.shards.pairs = test_pairs()[..1].to_vec();
    cfg.api.page_limit = Some(PAGE);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(70 * 3600));
    cfg.window.min_interval = Dur::secs(3600);
    cfg.schedule.max_interval = Dur::secs(3600);
    cfg.budget.per_minute = 60;
    let t0 = Utc::now();
    let coord = cfg.in_memory_coordination();
    let first = Running::start(build_bridge(&cfg, coord.clone()).await);
    let stats = first.bridge.stats().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cas_bridge::telemetry::Stats::get(&stats.pages) < 5 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.stop().await;
    let progress = coord
        .checkpoints
        .load_progress(&cfg.shards.shards().unwrap()[0])
        .await
        .unwrap()
        .expect("the stop recorded the position in the window");
    assert!(progress.pages >= 5, "{progress:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The next run finds the link expired and reads the window again.
    cfg.budget.per_minute = 6000;
    let second = Running::start(build_bridge(&cfg, coord.clone()).await);
    second
        .wait_cursor(t0 - chrono::Duration::seconds(5), Duration::from_secs(90))
        .await;
    let refused = cas_bridge::telemetry::Stats::get(&second.bridge.stats().stored_links_refused);
    second.stop().await;
    assert_eq!(refused, 1);
    assert!(sim.state.stats().links_expired >= 1);
    let from = t0 - chrono::Duration::hours(70) + chrono::Duration::minutes(1);
    let r = assert_delivered(
        "expired link",
        &sim,
        &cfg,
        from,
        t0 - chrono::Duration::seconds(10),
    )
    .await;
    assert_eq!(r.duplicated, 0, "{r:?}");
    sim.stop().await;
}
