//! A provider's fleet: many tenants × pairs on one simulator (one token and
//! budget per tenant), several replicas of the binary through one Redis or
//! a Redis Cluster.
//!
//!   cargo bench --bench bridge -- tenants [tenants] [pairs] [replicas] [minutes] [cluster]
//!
//! Defaults: 200 tenants × 49 pairs (9,800 shards), 3 replicas, 7 minutes
//! (one sweep of a tenant's 49 pairs at 10 requests a minute is 4.9).
//! `cluster`: a Redis Cluster of three masters and three replicas started
//! by the bench (ports 3xxxx), instead of the Redis at 127.0.0.1:6379.
//!
//! Prints: when the fleet held every shard and when every shard had a
//! cursor; then, over the steady state (from minute 2, or half the run),
//! Redis's commands per second and CPU (summed over the masters), the
//! script calls per second, each replica's CPU, memory and the samples its
//! `/metrics` serves; then a replica stopped (SIGTERM) and one added, with
//! the seconds until every shard is held again and until the new one holds
//! its share; and whether any tenant's budget was exceeded (the
//! simulator's count of requests in any sliding minute, and its 429s) or
//! any page was read twice.

use std::time::{Duration, Instant};

use cas_bridge::sim::SimStats;

use super::{bridge_bin, cpu_seconds, free_port, rss_mib, simulator, Child};

const REDIS_PORT: u16 = 6379;
const PER_MINUTE: u32 = 10;

type Conn = redis::aio::MultiplexedConnection;

/// `INFO` fields as numbers.
async fn info(conn: &mut Conn, section: &str) -> Vec<(String, f64)> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    let mut out = Vec::new();
    for l in text.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        // commandstats: `cmdstat_evalsha:calls=12,usec=…`
        if let Some(fields) = v.strip_prefix("calls=").map(|_| v) {
            for f in fields.split(',') {
                if let Some((name, n)) = f.split_once('=') {
                    if let Ok(n) = n.trim().parse() {
                        out.push((format!("{k}.{name}"), n));
                    }
                }
            }
            // The calls also under the command's own name.
            if let Some(n) = fields
                .strip_prefix("calls=")
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.parse().ok())
            {
                out.push((k.to_string(), n));
            }
            continue;
        }
        if let Ok(n) = v.trim().parse() {
            out.push((k.to_string(), n));
        }
    }
    out
}

fn field(info: &[(String, f64)], k: &str) -> f64 {
    info.iter().find(|(n, _)| n == k).map_or(0.0, |(_, v)| *v)
}

/// The masters' counters summed.
async fn info_all(conns: &mut [Conn], section: &str) -> Vec<(String, f64)> {
    let mut sum: Vec<(String, f64)> = Vec::new();
    for c in conns.iter_mut() {
        for (k, v) in info(c, section).await {
            match sum.iter_mut().find(|(n, _)| *n == k) {
                Some(e) => e.1 += v,
                None => sum.push((k, v)),
            }
        }
    }
    sum
}

/// Keys matching `pattern` on every master, counted with SCAN.
async fn count(conns: &mut [Conn], pattern: &str) -> usize {
    let mut n = 0;
    for conn in conns.iter_mut() {
        let mut cursor: u64 = 0;
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
                break;
            }
            cursor = next;
        }
    }
    n
}

/// Three masters and three replicas on loopback (dropped: stopped).
struct Cluster {
    nodes: Vec<Child>,
    masters: Vec<u16>,
    all: Vec<u16>,
}

fn start_cluster(dir: &std::path::Path) -> Cluster {
    let ports: Vec<u16> = (0..6)
        .map(|i| 31_100 + std::process::id() as u16 % 500 * 10 + i)
        .collect();
    let nodes: Vec<Child> = ports
        .iter()
        .map(|p| {
            let d = dir.join(format!("node{p}"));
            std::fs::create_dir_all(&d).expect("node dir");
            Child(
                std::process::Command::new("redis-server")
                    .args(["--bind", "127.0.0.1", "--port", &p.to_string()])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .args(["--cluster-replica-validity-factor", "0"])
                    .args(["--save", "", "--appendonly", "no", "--dir"])
                    .arg(&d)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("redis-server"),
            )
        })
        .collect();
    for p in &ports {
        while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let out = std::process::Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "cluster create failed");
    let cli = |p: u16, args: &[&str]| {
        String::from_utf8_lossy(
            &std::process::Command::new("redis-cli")
                .arg("-p")
                .arg(p.to_string())
                .args(args)
                .output()
                .expect("redis-cli")
                .stdout,
        )
        .to_string()
    };
    loop {
        if ports
            .iter()
            .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let masters = ports
        .iter()
        .copied()
        .filter(|p| cli(*p, &["ROLE"]).starts_with("master"))
        .collect();
    Cluster {
        nodes,
        masters,
        all: ports,
    }
}

fn config(
    api: &str,
    tenants: usize,
    pairs: usize,
    prefix: &str,
    cluster: Option<&Cluster>,
) -> String {
    let coord = match cluster {
        None => format!("redis_url = \"redis://127.0.0.1:{REDIS_PORT}\""),
        Some(c) => format!(
            "redis_url = \"redis://cluster\"\ncluster_nodes = {:?}",
            c.all
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
        ),
    };
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
{coord}
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

/// A replica of the binary, its `/metrics` on `port`.
struct Replica {
    child: Child,
    port: u16,
}

fn replica(file: &std::path::Path, name: &str) -> Replica {
    let port = free_port();
    Replica {
        child: Child(
            std::process::Command::new(bridge_bin())
                .args(["run", "--config"])
                .arg(file)
                .env_clear()
                .env("CAS_BRIDGE__COORD__WORKER_ID", name)
                .env("CAS_BRIDGE__OPS__LISTEN", format!("127.0.0.1:{port}"))
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("cas-bridge run"),
        ),
        port,
    }
}

/// Samples (lines that are not comments) on a replica's `/metrics`, and
/// the value of `cas_bridge_leases_held`.
async fn scrape(port: u16) -> (usize, f64) {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return (0, 0.0);
    };
    let text = r.text().await.unwrap_or_default();
    let samples = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let held = text
        .lines()
        .find_map(|l| l.strip_prefix("cas_bridge_leases_held "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    (samples, held)
}

pub async fn tenants(tenants: usize, pairs: usize, replicas: usize, minutes: u64, cluster: bool) {
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
    let cl = cluster.then(|| start_cluster(dir.path()));
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, config(&api, tenants, pairs, &prefix, cl.as_ref())).expect("config");
    let ports: Vec<u16> = cl.as_ref().map_or(vec![REDIS_PORT], |c| c.masters.clone());
    let mut conns: Vec<Conn> = Vec::new();
    for p in &ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{p}")).expect("redis URL");
        conns.push(
            client
                .get_multiplexed_async_connection()
                .await
                .expect("Redis at 127.0.0.1:6379 (./scripts/test starts it)"),
        );
    }
    let on = if cluster {
        "a Redis Cluster (3 masters, 3 replicas)"
    } else {
        "one Redis"
    };
    println!("tenants: {tenants} tenants x {pairs} pairs = {shards} shards, {replicas} replicas, {on}, budget {PER_MINUTE}/min per tenant");
    let lease_pattern = if cluster {
        format!("{prefix}:lease:{{*")
    } else {
        format!("{prefix}:lease:*")
    };
    let cursor_pattern = lease_pattern.replace(":lease:", ":cursor:");
    let started = Instant::now();
    let mut procs: Vec<Replica> = (0..replicas)
        .map(|i| replica(&file, &format!("r{i}")))
        .collect();
    let (mut all_held, mut all_cursors) = (None, None);
    let deadline = started + Duration::from_secs(minutes * 60);
    let steady_from = started + Duration::from_secs(120.min(minutes * 60 / 2));
    let mut before: Option<Snapshot> = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if all_held.is_none() && count(&mut conns, &lease_pattern).await >= shards {
            all_held = Some(started.elapsed());
            println!(
                "  every shard held after      {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        if all_cursors.is_none() && count(&mut conns, &cursor_pattern).await >= shards {
            all_cursors = Some(started.elapsed());
            println!(
                "  every shard checkpointed at {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        if before.is_none() && Instant::now() >= steady_from {
            let cpu: Vec<f64> = procs
                .iter()
                .map(|p| cpu_seconds(&p.child.pid().to_string()))
                .collect();
            before = Some(Snapshot {
                at: Instant::now(),
                stats: info_all(&mut conns, "stats").await,
                cpu: info_all(&mut conns, "cpu").await,
                scripts: info_all(&mut conns, "commandstats").await,
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
    let stats1 = info_all(&mut conns, "stats").await;
    let cpu1 = info_all(&mut conns, "cpu").await;
    let cmds =
        field(&stats1, "total_commands_processed") - field(&stats0, "total_commands_processed");
    let rcpu = field(&cpu1, "used_cpu_sys") + field(&cpu1, "used_cpu_user")
        - field(&cpu0, "used_cpu_sys")
        - field(&cpu0, "used_cpu_user");
    let scripts = info_all(&mut conns, "commandstats").await;
    // The bench's own SCANs (counting keys) are not the fleet's work.
    let stat =
        |i: &[(String, f64)], cmd: &str, what: &str| field(i, &format!("cmdstat_{cmd}.{what}"));
    let scan_s = (stat(&scripts, "scan", "usec") - stat(&scripts0, "scan", "usec")) / 1e6;
    let scan_n = stat(&scripts, "scan", "calls") - stat(&scripts0, "scan", "calls");
    let masters = if cluster {
        " (the masters together)"
    } else {
        ""
    };
    println!("  steady state over {secs:.0} s:");
    println!(
        "    Redis commands/s          {:.0}{masters} (commands inside scripts included)",
        (cmds - scan_n) / secs
    );
    println!(
        "    Redis CPU                 {:.1} % of one core{masters} (the bench's own SCANs, {:.1} %, left out)",
        100.0 * (rcpu - scan_s) / secs,
        100.0 * scan_s / secs
    );
    let mut top: Vec<(String, f64, f64)> = scripts
        .iter()
        .filter_map(|(k, _)| k.strip_suffix(".usec"))
        .filter(|c| *c != "cmdstat_scan")
        .map(|c| {
            let cmd = c.trim_start_matches("cmdstat_").to_string();
            let us = stat(&scripts, &cmd, "usec") - stat(&scripts0, &cmd, "usec");
            let n = stat(&scripts, &cmd, "calls") - stat(&scripts0, &cmd, "calls");
            (cmd, n / secs, us / 1e4 / secs)
        })
        .collect();
    top.sort_by(|a, b| b.2.total_cmp(&a.2));
    let shown: Vec<String> = top
        .iter()
        .take(6)
        .map(|(c, n, pct)| format!("{c} {n:.0}/s {pct:.1} %"))
        .collect();
    println!("    by command (time)         {}", shown.join(", "));
    println!(
        "    script calls/s            {:.0} (renewals are batched: {shards} held leases every 5 s)",
        (field(&scripts, "cmdstat_evalsha") - field(&scripts0, "cmdstat_evalsha")) / secs,
    );
    let mut rss = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let pid = p.child.pid().to_string();
        let (peak, now) = rss_mib(&pid);
        let cpu = cpu_seconds(&pid) - proc0[i];
        let (samples, held) = scrape(p.port).await;
        rss.push((now, held));
        println!(
            "    replica r{i}: holds {held:.0}, CPU {:.1} % of one core, RSS {now:.0} MiB (peak {peak:.0}), /metrics {samples} samples",
            100.0 * cpu / secs
        );
    }
    // Per held shard, from the replicas' spread (RSS = base + k × held).
    if let (Some(lo), Some(hi)) = (
        rss.iter().min_by(|a, b| a.1.total_cmp(&b.1)),
        rss.iter().max_by(|a, b| a.1.total_cmp(&b.1)),
    ) {
        let avg = rss.iter().map(|r| r.0).sum::<f64>() / rss.len() as f64;
        let held = rss.iter().map(|r| r.1).sum::<f64>() / rss.len() as f64;
        println!(
            "    per replica: {avg:.0} MiB for {held:.0} shards held = {:.1} KiB per held shard (all of it, the process's base included){}",
            avg * 1024.0 / held.max(1.0),
            if hi.1 > lo.1 {
                format!(
                    "; between replicas {:.1} KiB per extra shard",
                    (hi.0 - lo.0) * 1024.0 / (hi.1 - lo.1)
                )
            } else {
                String::new()
            }
        );
    }
    let checkpointed = count(&mut conns, &cursor_pattern).await;
    println!(
        "  checkpointed: {checkpointed} of {shards} shards (one sweep of a tenant's {pairs} pairs at {PER_MINUTE} requests/min takes {:.1} min)",
        pairs as f64 / f64::from(PER_MINUTE)
    );
    // A replica leaves (SIGTERM: its leases are released at a page
    // boundary), then one joins.
    if replicas > 1 {
        let mut gone = procs.remove(0);
        let t = Instant::now();
        gone.child.term();
        let mut reheld = None;
        while t.elapsed() < Duration::from_secs(120) {
            if count(&mut conns, &lease_pattern).await >= shards {
                reheld = Some(t.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match reheld {
            Some(d) => println!(
                "  a replica stopped: every shard held again {:.1} s after its SIGTERM",
                d.as_secs_f64()
            ),
            None => println!("  a replica stopped: NOT every shard held again within 120 s"),
        }
        let t = Instant::now();
        let joined = replica(&file, "r-new");
        let share = (shards / replicas) as f64;
        let mut settled = None;
        while t.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if scrape(joined.port).await.1 >= share {
                settled = Some(t.elapsed());
                break;
            }
        }
        match settled {
            Some(d) => println!(
                "  a replica joined: it held its share ({share:.0}) {:.1} s after its start",
                d.as_secs_f64()
            ),
            None => println!("  a replica joined: it did NOT hold its share within 120 s"),
        }
        procs.push(joined);
    }
    for p in &mut procs {
        p.child.term();
    }
    // Every tenant's budget, as its API counted it.
    let (mut worst, mut throttled, mut requests, mut twice) = (0usize, 0u64, 0u64, 0u64);
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
        twice += s.pages_read_again();
    }
    println!(
        "  budgets: {requests} requests served; the busiest tenant's most in any 60 s: {worst} (budget {PER_MINUTE}); 429s: {throttled}; pages read twice: {twice}"
    );
    println!(
        "  verdict: {}",
        if worst as u32 <= PER_MINUTE && throttled == 0 {
            "no budget exceeded"
        } else {
            "A BUDGET WAS EXCEEDED"
        }
    );
    if !cluster {
        let _: () = redis::cmd("EVAL")
            .arg("for _,k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end")
            .arg(0)
            .arg(format!("{prefix}:*"))
            .query_async(&mut conns[0])
            .await
            .unwrap_or(());
    }
    drop(cl.map(|c| c.nodes));
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
