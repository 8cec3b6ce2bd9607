//! Many workers through Redis: leases, fencing, the shared budget, kills
//! and a Redis that forgets everything.

use std::collections::HashMap;
use std::time::Duration;

use cas_bridge::config::{Dur, SinkKind, StartFrom};
use cas_bridge::coord::{CheckpointStore, CoordError, LeaseStore, Renewal};
use cas_bridge::shard::Shard;
use cas_bridge::sim::{SimConfig, ThrottleMode};
use chrono::Utc;
use secrecy::SecretString;

use crate::helpers::*;

fn sixteen_pairs() -> Vec<String> {
    let services = ["exchange", "sharepoint", "onedrive", "box"];
    let events = ["securityrisk", "virtualanalyzer", "ransomware", "dlp"];
    services
        .iter()
        .flat_map(|s| events.iter().map(move |e| format!("{s}:{e}")))
        .collect()
}

/// Every shard held by at most one member; returns how many are held.
fn assert_exclusive(members: &[&Running]) -> usize {
    let mut owner: HashMap<Shard, usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        for s in m.bridge.held() {
            if let Some(j) = owner.insert(s.clone(), i) {
                panic!("{s} held by members {j} and {i} at once");
            }
        }
    }
    owner.len()
}

/// The longest a test waits for holdings to settle before it fails: far
/// more than the few TTLs they take, so a loaded machine does not fail it.
const HOLD_WAIT: Duration = Duration::from_secs(120);

/// Samples holdings until `cond` is true (asserting exclusivity all along)
/// and returns how long it took.
async fn until(
    members: &[&Running],
    timeout: Duration,
    cond: impl Fn(&[usize]) -> bool,
) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        assert_exclusive(members);
        let counts: Vec<usize> = members.iter().map(|m| m.bridge.held().len()).collect();
        if cond(&counts) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "not reached within {timeout:?}: holdings {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_split_the_shards_fail_over_and_rebalance() {
    require_redis();
    let sim = start_sim(SimConfig {
        events_per_hour: 60.0,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag);
    cfg.shards.pairs = sixteen_pairs();
    cfg.sink.jsonl.path = dir.path().join("out.jsonl").display().to_string();
    let ttl = cfg.coord.lease_ttl.get();
    let renew = ttl / 3;

    let mut members = Vec::new();
    for i in 0..4 {
        members.push(member(&cfg, &format!("w{i}")).await);
    }
    let all: Vec<&Running> = members.iter().collect();
    let took = until(&all, HOLD_WAIT, |c| c.iter().sum::<usize>() == 16).await;
    println!("all 16 shards held after {took:?}");
    // Each aims at ⌈16 ÷ 4⌉ = 4; while heartbeats arrive, the first may briefly hold more.
    until(&all, ttl * 4, |c| c.iter().all(|n| (3..=5).contains(n))).await;

    // A member dies without releasing anything.
    let dead = members.remove(0);
    dead.task.abort();
    let _ = dead.task.await;
    let rest: Vec<&Running> = members.iter().collect();
    let took = until(&rest, HOLD_WAIT, |c| c.iter().sum::<usize>() == 16).await;
    println!("shards of a killed member held again after {took:?} (TTL {ttl:?} + renew {renew:?})");
    // How fast (one TTL and a renewal) is a figure of the churn bench
    // (BENCHMARKS.md), not a bound asserted here on a loaded machine.

    // A new member joins: holdings converge to within ±1 of fair (4).
    members.push(member(&cfg, "w4").await);
    let all: Vec<&Running> = members.iter().collect();
    let took = until(&all, HOLD_WAIT, |c| {
        c.iter().sum::<usize>() == 16 && c.iter().all(|n| (3..=5).contains(n))
    })
    .await;
    println!("a joining member got its share after {took:?}");
    for m in members {
        m.stop().await;
    }
    // Graceful shutdown released every lease at once.
    let obs = observer(&cfg).await;
    let st = obs.status(&cfg.shards.shards().unwrap()).await.unwrap();
    assert!(st.shards.iter().all(|s| s.owner.is_none()), "{st:#?}");
    sim.stop().await;
}

/// Asks for `shard` until its lease lapsed and `coord` got it; its fence.
async fn until_acquired(coord: &cas_bridge::coord::redis::RedisCoord, shard: &Shard) -> u64 {
    let deadline = tokio::time::Instant::now() + HOLD_WAIT;
    loop {
        if let Some(f) = coord.acquire(shard).await.unwrap() {
            return f;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{shard} never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `shard`'s lease key is gone from Redis (its TTL ran out).
async fn until_lapsed(coord: &cas_bridge::coord::redis::RedisCoord, shard: &Shard) {
    let deadline = tokio::time::Instant::now() + HOLD_WAIT;
    loop {
        let st = coord.status(std::slice::from_ref(shard)).await.unwrap();
        if st.shards.iter().all(|s| s.owner.is_none()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{shard}'s lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_over_cannot_move_the_cursor() {
    require_redis();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag);
    let token = SecretString::from("sim-token");
    let mut a_cfg = cfg.clone();
    a_cfg.coord.worker_id = Some("a".into());
    let mut b_cfg = cfg.clone();
    b_cfg.coord.worker_id = Some("b".into());
    let (_, a) = a_cfg.redis_coordination(&token).await.unwrap();
    let (_, b) = b_cfg.redis_coordination(&token).await.unwrap();
    let shard = Shard::new("exchange", "dlp");
    let fa = a.acquire(&shard).await.unwrap().expect("a gets the shard");
    assert_eq!(b.acquire(&shard).await.unwrap(), None, "held");
    let t1 = Utc::now() - chrono::Duration::minutes(10);
    a.store(&shard, fa, t1).await.unwrap();

    // A stalls past its TTL; B takes over as soon as the lease lapsed.
    let fb = until_acquired(&b, &shard).await;
    assert!(fb > fa, "the fence grows: {fa} → {fb}");
    let t2 = Utc::now() - chrono::Duration::minutes(5);
    b.store(&shard, fb, t2).await.unwrap();

    // A wakes up and tries to checkpoint a window it finished.
    let err = a.store(&shard, fa, Utc::now()).await.unwrap_err();
    assert!(
        matches!(err, CoordError::Fenced { ours, current, .. } if ours == fa && current == fb),
        "{err}"
    );
    assert_eq!(
        a.renew(&shard, fa, Some(Utc::now())).await.unwrap(),
        Renewal::Lost
    );
    let stored = a.load(&shard).await.unwrap().unwrap();
    assert_eq!(
        stored.timestamp_millis(),
        t2.timestamp_millis(),
        "the new holder's cursor stands"
    );

    // A lease that lapsed with no taker is reclaimed by its holder, same fence.
    until_lapsed(&b, &shard).await;
    assert_eq!(b.renew(&shard, fb, None).await.unwrap(), Renewal::Reclaimed);
    b.store(&shard, fb, Utc::now()).await.unwrap();
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_one_budget_without_exceeding_it() {
    require_redis();
    // 60 per minute in any sliding 60 s, counted by the simulator.
    let sim = start_sim(SimConfig {
        per_minute: 60,
        per_day: 0,
        throttle: ThrottleMode::Sliding,
        events_per_hour: 6000.0,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag);
    cfg.shards.pairs = sixteen_pairs();
    cfg.budget.per_minute = 60;
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(3600));
    let mut procs = Vec::new();
    for i in 0..3 {
        cfg.sink.jsonl.path = dir
            .path()
            .join(format!("out{i}.jsonl"))
            .display()
            .to_string();
        procs.push(BridgeProcess::spawn(
            &cfg,
            &format!("p{i}"),
            &dir.path().join(format!("p{i}.log")),
        ));
    }
    // Two full budget minutes and a little more.
    tokio::time::sleep(Duration::from_secs(125)).await;
    for p in &mut procs {
        assert!(p.terminate().success(), "graceful exit");
    }
    let s = sim.state.stats();
    let served: Vec<i64> = s
        .log
        .iter()
        .filter(|r| r.status != 429)
        .map(|r| r.at_ms)
        .collect();
    let first = served[0];
    let in_two_minutes = served.iter().filter(|t| **t < first + 121_000).count();
    let max = s.max_in_any(Duration::from_secs(60));
    println!(
        "served {} (429: {}), max in any 60 s: {max}, in the first 121 s: {in_two_minutes} of 120",
        s.served, s.throttled
    );
    assert_eq!(s.throttled, 0, "no 429");
    assert!(max <= 60, "{max} requests in one sliding minute");
    assert!(
        in_two_minutes as f64 >= 0.95 * 120.0,
        "budget use {in_two_minutes}/120"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_window_loses_nothing() {
    require_redis();
    require_nats();
    // A slow API, so that the kill falls in the middle of the history.
    let sim = start_sim(SimConfig {
        events_per_hour: 3600.0,
        latency: Duration::from_millis(100),
        ..sim_config()
    })
    .await;
    let tag = tag();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Nats, REDIS_URL, &tag);
    cfg.shards.pairs = sixteen_pairs()[..8].to_vec();
    cfg.window.max = Dur::secs(60);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(1200));
    // Create the stream first, so that three processes do not race to.
    prepare_stream(&cfg).await;
    let t0 = Utc::now();
    let mut procs: Vec<BridgeProcess> = (0..3)
        .map(|i| {
            BridgeProcess::spawn(
                &cfg,
                &format!("k{i}"),
                &dir.path().join(format!("k{i}.log")),
            )
        })
        .collect();
    let obs = observer(&cfg).await;
    // Wait until the fleet is mid-history, then kill one member.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let st = obs.status(&cfg.shards.shards().unwrap()).await.unwrap();
        let k0_behind = st
            .shards
            .iter()
            .filter(|s| s.owner.as_deref() == Some("k0"))
            .filter(|s| {
                s.cursor
                    .is_some_and(|c| c < t0 - chrono::Duration::minutes(2))
            })
            .count();
        if k0_behind > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{st:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    procs[0].kill9();
    let check_to = Utc::now() - chrono::Duration::seconds(3);
    wait_cursor_in(
        &obs,
        &cfg,
        check_to + chrono::Duration::seconds(15),
        Duration::from_secs(120),
    )
    .await;
    for p in procs.iter_mut().skip(1) {
        assert!(p.terminate().success());
    }
    let r = assert_delivered(
        "kill -9 mid-window",
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(1190),
        check_to,
    )
    .await;
    assert!(r.expected > 1000, "{r:?}");
    assert_eq!(r.duplicated, 0, "every id once: {r:?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_everything_mid_run_loses_no_event() {
    require_nats();
    let redis = OwnRedis::start();
    let sim = start_sim(SimConfig {
        events_per_hour: 3600.0,
        ..sim_config()
    })
    .await;
    let tag = tag();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Nats, &redis.url(), &tag);
    cfg.shards.pairs = sixteen_pairs()[..6].to_vec();
    cfg.window.max = Dur::secs(60);
    let t0 = Utc::now();
    let a = member(&cfg, "fa").await;
    let b = member(&cfg, "fb").await;
    let obs = observer(&cfg).await;
    // Mid-history: some cursors set, some still far behind.
    wait_cursor_in(
        &obs,
        &cfg,
        t0 - chrono::Duration::minutes(9),
        Duration::from_secs(60),
    )
    .await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let check_to = Utc::now() - chrono::Duration::seconds(3);
    // The flush forgot the budget's grants of the last minute, which the
    // API counted: the fleet waits out their minute once, then catches up.
    wait_cursor_in(
        &obs,
        &cfg,
        check_to + chrono::Duration::seconds(15),
        Duration::from_secs(180),
    )
    .await;
    // The holders wrote their cursors back: none restarted from start_from.
    a.stop().await;
    b.stop().await;
    let r = assert_delivered(
        "FLUSHALL mid-run",
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(590),
        check_to,
    )
    .await;
    assert_eq!(r.duplicated, 0, "duplicates in the stream: {r:?}");
    sim.stop().await;
}

/// The shared budget grants by priority across processes: while one worker
/// has a more urgent request waiting, another's less urgent one is refused
/// even when a permit is free; a waiter that stops asking stops counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_budget_serves_the_most_urgent_waiter_in_the_fleet() {
    use cas_bridge::coord::{Budget, Priority, Take};
    require_redis();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag);
    // One permit a second.
    cfg.budget.per_minute = 60;
    let coord = |worker: &str| {
        let mut c = cfg.clone();
        c.coord.worker_id = Some(worker.into());
        async move {
            c.redis_coordination(&SecretString::from("sim-token"))
                .await
                .expect("redis")
                .1
        }
    };
    let (a, b) = (coord("a").await, coord("b").await);
    let granted = |t: Take| matches!(t, Take::Granted(_));
    let pace = Duration::from_millis(1100);
    assert!(granted(b.try_acquire(Priority::Active).await.unwrap()));
    // b's next request (pages left) must wait for the pace: it waits, and
    // records itself as the fleet's most urgent waiter.
    assert!(!granted(b.try_acquire(Priority::PagesLeft).await.unwrap()));
    tokio::time::sleep(pace).await;
    // A permit is free, but b waits with a more urgent request: a's quiet
    // one is refused.
    assert!(!granted(a.try_acquire(Priority::Quiet).await.unwrap()));
    assert!(granted(b.try_acquire(Priority::PagesLeft).await.unwrap()));
    tokio::time::sleep(pace).await;
    // b's entry went with its permit: a is served.
    assert!(granted(a.try_acquire(Priority::Quiet).await.unwrap()));
    // A waiter that stops asking stops counting after 3 s.
    assert!(!granted(b.try_acquire(Priority::PagesLeft).await.unwrap()));
    tokio::time::sleep(pace).await;
    assert!(!granted(a.try_acquire(Priority::Quiet).await.unwrap()));
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert!(granted(a.try_acquire(Priority::Quiet).await.unwrap()));
    // Equal classes are served as they ask.
    assert!(!granted(b.try_acquire(Priority::Active).await.unwrap()));
    tokio::time::sleep(pace).await;
    assert!(granted(a.try_acquire(Priority::Active).await.unwrap()));
    sim.stop().await;
}

/// A fail-over to a replica that had not received the last grants: the
/// store's grant numbers go back, and the fleet waits out the minute those
/// forgotten requests could still fill at the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_whose_redis_forgot_grants_pauses_every_replica_for_a_minute() {
    use cas_bridge::coord::{Budget, Priority, Take};
    require_redis();
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, REDIS_URL, &tag);
    cfg.budget.per_minute = 6000;
    let token = SecretString::from("sim-token");
    let mut a_cfg = cfg.clone();
    a_cfg.coord.worker_id = Some("a".into());
    let mut b_cfg = cfg.clone();
    b_cfg.coord.worker_id = Some("b".into());
    let (_, a) = a_cfg.redis_coordination(&token).await.unwrap();
    let (_, b) = b_cfg.redis_coordination(&token).await.unwrap();
    for _ in 0..3 {
        let p = Budget::acquire(&*a, Priority::Active).await.unwrap();
        drop(p);
    }
    // The replica promoted had only the first grant.
    let hash = cas_bridge::coord::redis::token_key(&token);
    let seq = format!("{tag}:budget:{hash}:seq");
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let n: i64 = redis::cmd("GET")
        .arg(&seq)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 3);
    let _: () = redis::cmd("SET")
        .arg(&seq)
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The next grant is numbered 2, which worker a saw already.
    let mut granted = 0;
    loop {
        match a.try_acquire(Priority::Active).await.unwrap() {
            Take::Granted(_) => granted += 1,
            // The pace between grants (10 ms).
            Take::Wait(w) if w < Duration::from_secs(1) => tokio::time::sleep(w).await,
            Take::Wait(_) => break,
        }
        assert!(granted < 3, "grants went on after the numbers went back");
    }
    assert_eq!(granted, 0, "the grant numbered 2 was not used");
    // Every replica honours it, not only the one that noticed: the pause
    // is in Redis.
    b.usage().await.paused.expect("the fleet is paused");
    let pause = format!("{tag}:budget:{hash}:pause");
    let left: i64 = redis::cmd("PTTL")
        .arg(&pause)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left > 0, "no pause key: {left}");
    // Once: the store's count is back up to what a saw, so b, whose
    // grants were older, does not pause the fleet again.
    let seq_now: i64 = redis::cmd("GET")
        .arg(&seq)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(seq_now, 3);
    assert!(matches!(
        b.try_acquire(Priority::PagesLeft).await.unwrap(),
        Take::Wait(_)
    ));
    sim.stop().await;
}
