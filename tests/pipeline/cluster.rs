//! A fleet on a Redis Cluster (three masters, three replicas, from
//! `redis-server --cluster-enabled yes` and `redis-cli --cluster create`):
//! every key of a shard under its hash tag, the budget's under the token's,
//! and the master holding the budget killed mid-run, its replica promoted:
//! nothing lost, no duplicate, the budget never exceeded.

use std::time::{Duration, Instant};

use cas_bridge::config::SinkKind;
use chrono::Utc;

use crate::helpers::*;

/// Keys under `prefix` on the master at `port`, of one kind.
fn keys_on(port: u16, pattern: &str) -> Vec<String> {
    redis_cli(port, &["--scan", "--pattern", pattern])
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_redis_cluster_follows_a_master_fail_over_and_loses_nothing() {
    require_nats();
    let mut cluster = OwnCluster::start(3);
    // Low enough that the fleet spends the whole budget: a permit the
    // fail-over forgot would show as a minute over it.
    let per_minute = 30;
    let sim = start_sim(cas_bridge::sim::SimConfig {
        per_minute,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Nats, "redis://cluster", &tag);
    cfg.coord.cluster_nodes = cluster.seeds();
    cfg.budget.per_minute = per_minute;
    cfg.validate().unwrap();
    prepare_stream(&cfg).await;
    let fleet = Fleet::caught_up(&[(&cfg, "cluster-a"), (&cfg, "cluster-b")]).await;
    let (obs, t0) = (fleet.observer.clone(), fleet.t0);

    // Each shard's keys under its own tag, spread over the masters; the
    // budget's under the token's tag, on one master.
    let shards = cfg.all_shards().unwrap();
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let mut cursors = 0;
    let mut holding = 0;
    for m in &masters {
        let keys = keys_on(*m, &format!("{tag}:cursor:*"));
        for k in &keys {
            let shard = k.strip_prefix(&format!("{tag}:cursor:")).unwrap();
            assert!(
                shard.starts_with('{') && shard.ends_with('}'),
                "{k} is not hash-tagged"
            );
        }
        cursors += keys.len();
        holding += usize::from(!keys.is_empty());
    }
    assert_eq!(cursors, shards.len(), "one cursor per shard");
    assert!(holding >= 2, "the shards' keys are spread over the masters");
    let token = cas_bridge::coord::redis::token_key(&"sim-token".to_string().into());
    let budget_key = format!("{tag}:budget:{{{token}}}:sliding:minute");
    let budget_master = masters
        .iter()
        .copied()
        .find(|m| redis_cli(*m, &["EXISTS", &budget_key]).trim() == "1")
        .unwrap_or_else(|| panic!("no master holds {budget_key}"));

    // The master holding the budget (and a third of the shards) dies; its
    // replica takes over.
    let killed = Instant::now();
    let killed_at = Utc::now();
    cluster.kill(budget_master);
    cluster.wait_ok(3, Duration::from_secs(60));
    let promoted = killed.elapsed();
    wait_cursor_in(
        &obs,
        &cfg,
        killed_at + chrono::Duration::seconds(5),
        Duration::from_secs(120),
    )
    .await;
    println!(
        "cluster fail-over: replica promoted {:.1} s after the kill, every shard checkpointed past it {:.1} s after",
        promoted.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    let to = Utc::now() - chrono::Duration::seconds(20);
    wait_cursor_in(
        &obs,
        &cfg,
        to + chrono::Duration::seconds(15),
        Duration::from_secs(90),
    )
    .await;
    fleet.stop().await;
    let r = assert_delivered(
        "redis cluster",
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(590),
        to,
    )
    .await;
    assert!(r.expected > 300, "{r:?}");
    assert_eq!(
        r.duplicated, 0,
        "JetStream drops the re-read window's ids: {r:?}"
    );
    let st = sim.state.stats();
    assert_eq!(st.throttled, 0, "no 429");
    let most = st.max_bridge_in_any(Duration::from_secs(60));
    println!("cluster fail-over: at most {most} requests in any minute (budget {per_minute})");
    assert!(most <= per_minute as usize, "{most} requests in a minute");
    sim.stop().await;
}

/// A fleet on a single Redis moves to a cluster: `migrate-keys` refuses
/// while it runs, then copies cursors, fences, dedup memory and budgets
/// into the tagged layout; the fleet on the cluster goes on where it
/// stopped (no window read again from the start, no duplicate published),
/// and a second run copies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_keys_moves_a_single_redis_fleet_onto_a_cluster() {
    use cas_bridge::coord::Budget;
    require_redis();
    let cluster = OwnCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("operator.log");
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let mut single = fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag);
    single.sink.jsonl.path = dir.path().join("events.jsonl").display().to_string();
    let mut target = single.clone();
    target.coord.redis_url = Some("redis://cluster".to_string().into());
    target.coord.cluster_nodes = cluster.seeds();
    target.validate().unwrap();
    let shards = single.all_shards().unwrap();

    let fleet = Fleet::caught_up(&[(&single, "single-a")]).await;
    let t0 = fleet.t0;
    let out = operator(&target, &log, &["migrate-keys", "--from", REDIS_URL]);
    assert!(!out.status.success(), "copied while the fleet runs");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop every replica"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.stop().await;
    let on_single = observer(&single).await;
    let before = on_single.status(&shards).await.unwrap();
    let used = on_single.usage().await.last_day;
    assert!(used > 0);

    let out = operator(&target, &log, &["migrate-keys", "--from", REDIS_URL]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("copied"), "{text}");
    let on_cluster = observer(&target).await;
    let after = on_cluster.status(&shards).await.unwrap();
    for (b, a) in before.shards.iter().zip(&after.shards) {
        assert_eq!(a.shard, b.shard);
        assert!(b.cursor.is_some(), "{b:?}");
        assert_eq!(a.cursor, b.cursor, "{}", a.shard);
        assert_eq!(a.fence, b.fence, "{}", a.shard);
        assert_eq!(a.owner, None, "leases are not copied");
    }
    assert_eq!(on_cluster.usage().await.last_day, used, "the day's budget");

    // The fleet goes on from the cursors on the cluster.
    let fleet = Fleet::caught_up(&[(&target, "cluster-a")]).await;
    let to = Utc::now() - chrono::Duration::seconds(20);
    wait_cursor_in(
        &fleet.observer,
        &target,
        to + chrono::Duration::seconds(15),
        Duration::from_secs(90),
    )
    .await;
    fleet.stop().await;
    let r = assert_delivered(
        "migrated",
        &sim,
        &target,
        t0 - chrono::Duration::seconds(590),
        to,
    )
    .await;
    assert!(r.expected > 100, "{r:?}");
    assert_eq!(
        r.duplicated, 0,
        "a sink without dedup: the cluster knew the cursors and the delivered ids: {r:?}"
    );

    // Again: everything is there already.
    let out = operator(&target, &log, &["migrate-keys", "--from", REDIS_URL]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("copied 0 keys"), "{text}");
    sim.stop().await;
}
