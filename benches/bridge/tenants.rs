//! A provider's fleet: many tenants × pairs on one simulator (one token and
//! budget per tenant), several replicas of the binary through one Redis.
//!
//!   cargo bench --bench bridge -- tenants [tenants] [pairs] [replicas] [minutes]
//!
//! Defaults: 200 tenants × 48 pairs (9,600 shards), 3 replicas, 7 minutes
//! (one sweep of a tenant's 48 pairs at 10 requests a minute is 4.8).
//! Prints: when the fleet held every shard and when every shard had a
//! cursor; then, over the last `minutes − 2` minutes (the steady state),
//! Redis's commands per second and CPU, the script calls per second (lease
//! renewals are one per held shard every `lease_ttl / 3`), each replica's
//! CPU and memory; and whether any tenant's budget was exceeded (the
//! simulator's count of requests in any sliding minute, and its 429s).

use std::time::{Duration, Instant};

use cas_bridge::sim::SimStats;

use super::{bridge_bin, cpu_seconds, rss_mib, simulator, Child};

const REDIS: &str = "redis://127.0.0.1:6379";
const PER_MINUTE: u32 = 10;

/// `INFO` fields as numbers.
async fn info(conn: &mut redis::aio::MultiplexedConnection, section: &str) -> Vec<(String, f64)> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            // commandstats: `cmdstat_evalsha:calls=12,usec=…`
            let v = v
                .strip_prefix("calls=")
                .map_or(v, |r| r.split(',').next().unwrap_or(""));
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn field(info: &[(String, f64)], k: &str) -> f64 {
    info.iter().find(|(n, _)| n == k).map_or(0.0, |(_, v)| *v)
}

/// Keys under `pattern`, counted with SCAN.
async fn count(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> usize {
    let mut cursor: u64 = 0;
    let mut n = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await
            .expect("SCAN");
        n += keys.len();
        if next == 0 {
            return n;
        }
        cursor = next;
    }
}

fn config(api: &str, tenants: usize, pairs: usize, prefix: &str) -> String {
    let mut t = format!(
        r#"[api]
base_url = "{api}"
[shards]
pairs = {pairs:?}
[window]
start_from = "10m"
[budget]
per_minute = {PER_MINUTE}
per_day = 1000000
[coord]
redis_url = "{REDIS}"
prefix = "{prefix}"
[sink]
kind = "jsonl"
topic_template = "cas.{{tenant}}.{{service}}.{{event}}"
dead_letter = "cas.{{tenant}}.deadletter"
[sink.jsonl]
path = "/dev/null"
[log]
level = "warn"
[ops]
listen = "127.0.0.1:0"
"#,
        pairs = super::pairs(pairs),
    );
    for i in 0..tenants {
        t.push_str(&format!(
            "[[tenants]]\nname = \"t{i:04}\"\n[tenants.api]\ntoken = \"bench-{i}\"\n"
        ));
    }
    t
}

pub async fn tenants(tenants: usize, pairs: usize, replicas: usize, minutes: u64) {
    let shards = tenants * pairs;
    let (_sim, api) = simulator(&[
        "--tenants",
        &tenants.to_string(),
        "--token",
        "bench",
        "--per-minute",
        &PER_MINUTE.to_string(),
        "--per-day",
        "0",
        "--throttle",
        "sliding",
        "--events-per-hour",
        "12",
    ]);
    let prefix = format!("scale{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, config(&api, tenants, pairs, &prefix)).expect("config");
    let client = redis::Client::open(REDIS).expect("redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379 (./scripts/test starts it)");
    println!("tenants: {tenants} tenants x {pairs} pairs = {shards} shards, {replicas} replicas, budget {PER_MINUTE}/min per tenant");
    let started = Instant::now();
    let mut procs: Vec<Child> = (0..replicas)
        .map(|i| {
            Child(
                std::process::Command::new(bridge_bin())
                    .args(["run", "--config"])
                    .arg(&file)
                    .env_clear()
                    .env("CAS_BRIDGE__COORD__WORKER_ID", format!("r{i}"))
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("cas-bridge run"),
            )
        })
        .collect();
    let (mut all_held, mut all_cursors) = (None, None);
    let deadline = started + Duration::from_secs(minutes * 60);
    let steady_from = started + Duration::from_secs(120.min(minutes * 60 / 2));
    let mut before: Option<Snapshot> = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if all_held.is_none() && count(&mut conn, &format!("{prefix}:lease:*")).await >= shards {
            all_held = Some(started.elapsed());
            println!(
                "  every shard held after      {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        if all_cursors.is_none() && count(&mut conn, &format!("{prefix}:cursor:*")).await >= shards
        {
            all_cursors = Some(started.elapsed());
            println!(
                "  every shard checkpointed at {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        if before.is_none() && Instant::now() >= steady_from {
            let cpu: Vec<f64> = procs
                .iter()
                .map(|p| cpu_seconds(&p.pid().to_string()))
                .collect();
            before = Some(Snapshot {
                at: Instant::now(),
                stats: info(&mut conn, "stats").await,
                cpu: info(&mut conn, "cpu").await,
                scripts: info(&mut conn, "commandstats").await,
                replicas_cpu: cpu,
            });
        }
    }
    let Snapshot {
        at: t0,
        stats: stats0,
        cpu: cpu0,
        scripts: scripts0,
        replicas_cpu: proc0,
    } = before.expect("a steady window");
    let secs = t0.elapsed().as_secs_f64();
    let stats1 = info(&mut conn, "stats").await;
    let cpu1 = info(&mut conn, "cpu").await;
    let cmds =
        field(&stats1, "total_commands_processed") - field(&stats0, "total_commands_processed");
    let rcpu = field(&cpu1, "used_cpu_sys") + field(&cpu1, "used_cpu_user")
        - field(&cpu0, "used_cpu_sys")
        - field(&cpu0, "used_cpu_user");
    let scripts = info(&mut conn, "commandstats").await;
    println!("  steady state over {secs:.0} s:");
    println!("    Redis commands/s          {:.0}", cmds / secs);
    println!(
        "    Redis CPU                 {:.1} % of one core",
        100.0 * rcpu / secs
    );
    println!(
        "    script calls/s            {:.0} (lease renewals among them: {:.0}/s, {shards} held / (15 s / 3); the rest budget, heartbeats, checkpoints)",
        (field(&scripts, "cmdstat_evalsha") - field(&scripts0, "cmdstat_evalsha")) / secs,
        shards as f64 / 5.0
    );
    for (i, p) in procs.iter().enumerate() {
        let pid = p.pid().to_string();
        let (peak, now) = rss_mib(&pid);
        let cpu = cpu_seconds(&pid) - proc0[i];
        println!(
            "    replica r{i}: CPU {:.1} % of one core, RSS {now:.0} MiB (peak {peak:.0})",
            100.0 * cpu / secs
        );
    }
    let checkpointed = count(&mut conn, &format!("{prefix}:cursor:*")).await;
    println!(
        "  checkpointed: {checkpointed} of {shards} shards (one sweep of a tenant's {pairs} pairs at {PER_MINUTE} requests/min takes {:.1} min)",
        pairs as f64 / f64::from(PER_MINUTE)
    );
    for p in &mut procs {
        p.term();
    }
    // Every tenant's budget, as its API counted it.
    let (mut worst, mut throttled, mut requests) = (0usize, 0u64, 0u64);
    for i in 0..tenants {
        let bytes = reqwest::get(format!("{api}/_sim/stats?tenant={i}"))
            .await
            .expect("stats")
            .bytes()
            .await
            .expect("stats body");
        let s: SimStats = serde_json::from_slice(&bytes).expect("stats JSON");
        worst = worst.max(s.max_in_any(Duration::from_secs(60)));
        throttled += s.throttled;
        requests += s.served;
    }
    println!(
        "  budgets: {requests} requests served; the busiest tenant's most in any 60 s: {worst} (budget {PER_MINUTE}); 429s: {throttled}"
    );
    println!(
        "  verdict: {}",
        if worst as u32 <= PER_MINUTE && throttled == 0 {
            "no budget exceeded"
        } else {
            "A BUDGET WAS EXCEEDED"
        }
    );
    let _: () = redis::cmd("EVAL")
        .arg("for _,k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end")
        .arg(0)
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or(());
    if all_held.is_none() {
        println!("  NOT every shard was held within {minutes} min");
    }
}

/// Redis's and the replicas' counters at the start of the steady window.
struct Snapshot {
    at: Instant,
    stats: Vec<(String, f64)>,
    cpu: Vec<(String, f64)>,
    scripts: Vec<(String, f64)>,
    replicas_cpu: Vec<f64>,
}
