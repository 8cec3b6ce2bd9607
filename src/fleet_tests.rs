//! The lease keeper's tests: fair share, lost leases, drain, batching, memory per shard.

use super::*;
use crate::coord::memory::MemoryCheckpoints;
use crate::coord::CoordError;
use crate::fakes::{engine, FakeSink, FakeSource};
use crate::telemetry::Stats;
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::Mutex;

/// Leases as a test scripts them.
#[derive(Default)]
struct FakeLeases {
    /// Workers alive, as the heartbeat reports.
    live: Mutex<usize>,
    /// Shards another worker holds.
    taken: Mutex<HashSet<Shard>>,
    /// What renewing a shard answers (default: held).
    renewal: Mutex<HashMap<Shard, Result<Renewal, ()>>>,
    released: Mutex<Vec<Shard>>,
    left: Mutex<bool>,
    next_fence: Mutex<Fence>,
    /// Candidates looked at by acquisitions, renewal calls, and
    /// status reports sent.
    looked: Mutex<usize>,
    renew_calls: Mutex<usize>,
    reports: Mutex<usize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap()
}

#[async_trait]
impl LeaseStore for FakeLeases {
    fn ttl(&self) -> Duration {
        Duration::from_secs(3)
    }
    async fn heartbeat(&self) -> Result<usize, CoordError> {
        Ok(*lock(&self.live))
    }
    async fn acquire_some(
        &self,
        candidates: &[Shard],
        want: usize,
    ) -> Result<Vec<(Shard, Fence)>, CoordError> {
        *lock(&self.looked) += candidates.len();
        let mut taken = lock(&self.taken);
        let mut got = Vec::new();
        for shard in candidates {
            if got.len() == want {
                break;
            }
            if taken.insert(shard.clone()) {
                let mut f = lock(&self.next_fence);
                *f += 1;
                got.push((shard.clone(), *f));
            }
        }
        Ok(got)
    }
    async fn renew_all(&self, leases: &[Renew]) -> Vec<Result<Renewal, CoordError>> {
        *lock(&self.renew_calls) += 1;
        leases
            .iter()
            .map(|r| {
                if r.report.is_some() {
                    *lock(&self.reports) += 1;
                }
                match lock(&self.renewal).get(&r.shard) {
                    None => Ok(Renewal::Held),
                    Some(Ok(r)) => Ok(*r),
                    Some(Err(())) => Err(CoordError::Unavailable("redis down".into())),
                }
            })
            .collect()
    }
    async fn release(&self, shard: &Shard, _: Fence) -> Result<(), CoordError> {
        lock(&self.taken).remove(shard);
        lock(&self.released).push(shard.clone());
        Ok(())
    }
    async fn leave(&self) -> Result<(), CoordError> {
        *lock(&self.left) = true;
        Ok(())
    }
}

fn shards(n: usize) -> Vec<Shard> {
    (0..n).map(|i| Shard::new(format!("s{i}"), "dlp")).collect()
}

fn keeper(leases: Arc<FakeLeases>, n: usize) -> (LeaseKeeper, Arc<Engine>) {
    let e = Arc::new(engine(
        FakeSource::new(Vec::new()),
        Arc::new(FakeSink::default()),
        Arc::new(MemoryCheckpoints::default()),
    ));
    (
        LeaseKeeper::new(leases, e.clone(), &shards(n), Duration::from_secs(5)),
        e,
    )
}

async fn tend(k: &mut LeaseKeeper) {
    k.tend(&CancellationToken::new()).await;
}

#[tokio::test(start_paused = true)]
async fn alone_it_takes_every_shard_and_publishes_them() {
    let leases = Arc::new(FakeLeases::default());
    *lock(&leases.live) = 1;
    let (mut k, e) = keeper(leases, 4);
    let mut rx = e.status.watch_held();
    tend(&mut k).await;
    tend(&mut k).await;
    assert!(rx.has_changed().unwrap());
    let mut held = rx.borrow_and_update().clone();
    held.sort();
    assert_eq!(held, shards(4));
}

#[tokio::test(start_paused = true)]
async fn with_another_worker_it_takes_the_fair_share() {
    let leases = Arc::new(FakeLeases::default());
    *lock(&leases.live) = 2;
    let (mut k, e) = keeper(leases, 5);
    tend(&mut k).await;
    assert_eq!(e.status.held().len(), 3, "⌈5 ÷ 2⌉");
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_its_runner_and_is_not_released() {
    let leases = Arc::new(FakeLeases::default());
    *lock(&leases.live) = 1;
    let (mut k, e) = keeper(leases.clone(), 2);
    tend(&mut k).await;
    let victim = shards(2)[0].clone();
    lock(&leases.renewal).insert(victim.clone(), Ok(Renewal::Lost));
    // Another worker holds it now: it cannot be acquired back.
    tend(&mut k).await;
    assert_eq!(e.status.held(), vec![shards(2)[1].clone()]);
    assert_eq!(Stats::get(&e.telemetry.stats().leases_lost), 1);
    tokio::task::yield_now().await;
    tend(&mut k).await;
    assert!(!lock(&leases.released).contains(&victim));
}

#[tokio::test(start_paused = true)]
async fn renewals_failing_past_the_ttl_drop_the_shard() {
    let leases = Arc::new(FakeLeases::default());
    *lock(&leases.live) = 1;
    let (mut k, e) = keeper(leases.clone(), 1);
    tend(&mut k).await;
    let s = shards(1)[0].clone();
    lock(&leases.renewal).insert(s.clone(), Err(()));
    tend(&mut k).await;
    assert_eq!(
        e.status.held(),
        vec![s.clone()],
        "one failure within the TTL is tolerated"
    );
    tokio::time::advance(Duration::from_secs(3)).await;
    tend(&mut k).await;
    assert!(e.status.held().is_empty());
    assert_eq!(Stats::get(&e.telemetry.stats().leases_lost), 1);
}

#[tokio::test(start_paused = true)]
async fn a_joining_worker_gets_the_surplus_at_a_page_boundary() {
    let leases = Arc::new(FakeLeases::default());
    *lock(&leases.live) = 1;
    let (mut k, e) = keeper(leases.clone(), 4);
    tend(&mut k).await;
    assert_eq!(e.status.held().len(), 4);
    *lock(&leases.live) = 2;
    tend(&mut k).await;
    // Two runners drain; once they end their leases go back.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tend(&mut k).await;
        if lock(&leases.released).len() == 2 {
            break;
        }
    }
    assert_eq!(lock(&leases.released).len(), 2);
    assert_eq!(e.status.held().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_every_lease_and_leaves() {
    let leases = Arc::new(FakeLeases::default());
    *lock(&leases.live) = 1;
    let (mut k, e) = keeper(leases.clone(), 3);
    let cancel = CancellationToken::new();
    cancel.cancel();
    tend(&mut k).await;
    k.run(&cancel).await;
    k.release_all().await;
    assert_eq!(lock(&leases.released).len(), 3);
    assert!(*lock(&leases.left));
    assert!(e.status.held().is_empty());
}

#[tokio::test(start_paused = true)]
async fn renewals_are_one_call_a_round_and_status_is_written_when_it_changes() {
    let leases = Arc::new(FakeLeases::default());
    *lock(&leases.live) = 1;
    let (mut k, e) = keeper(leases.clone(), 40);
    tend(&mut k).await;
    assert_eq!(e.status.held().len(), 40);
    tend(&mut k).await;
    let calls = *lock(&leases.renew_calls);
    assert_eq!(
        *lock(&leases.reports),
        40,
        "each shard's status written once"
    );
    tend(&mut k).await;
    tend(&mut k).await;
    assert_eq!(*lock(&leases.renew_calls), calls + 2, "one call a round");
    assert_eq!(
        *lock(&leases.reports),
        40,
        "nothing changed, nothing written"
    );
    let s = shards(40)[7].clone();
    e.status.set_error(&s, &"boom");
    tend(&mut k).await;
    assert_eq!(*lock(&leases.reports), 41, "the changed one only");
}

#[tokio::test(start_paused = true)]
async fn a_settled_fleet_does_not_search_every_shard_every_round() {
    // 3,001 shards, two workers: the other holds 1,501, this one can
    // only reach 1,500 of its fair 1,501 and keeps wanting one.
    let n = 3001;
    let leases = Arc::new(FakeLeases::default());
    *lock(&leases.live) = 2;
    lock(&leases.taken).extend(shards(n).into_iter().skip(1500));
    let (mut k, e) = keeper(leases.clone(), n);
    tend(&mut k).await;
    assert_eq!(e.status.held().len(), 1500);
    let mut full = 0;
    let rounds = 32;
    for _ in 0..rounds {
        let before = *lock(&leases.looked);
        tend(&mut k).await;
        let looked = *lock(&leases.looked) - before;
        assert!(looked <= n - 1500, "{looked}");
        if looked > SCAN_SLICE {
            full += 1;
        }
    }
    // Full searches at rounds 1, 2, 7 and 16, not 32.
    assert!(full <= 5, "{full} full searches in {rounds} rounds");
    // The other worker dies and its shards come free: the change in
    // the live count makes the next round search everything.
    *lock(&leases.live) = 1;
    lock(&leases.taken).retain(|s| !shards(n).iter().skip(1500).any(|x| x == s));
    tend(&mut k).await;
    assert_eq!(e.status.held().len(), n);
}

#[test]
fn shutdown_grace_is_bounded() {
    let c = ShutdownConfig {
        grace: Dur::secs(7200),
    };
    assert_eq!(c.validate().unwrap_err().field, "shutdown.grace");
    assert!(ShutdownConfig::default().validate().is_ok());
}

mod size {
    use super::*;

    /// A replica holds one runner and one telemetry per held shard: 12,000
    /// of them in a large fleet. What they cost stays small (the runner's
    /// steps are boxed; the metric handles are shared per pair and tenant).
    #[test]
    fn a_held_shard_costs_little_memory() {
        let e = Arc::new(crate::fakes::engine(
            crate::fakes::FakeSource::new(Vec::new()),
            Arc::new(crate::fakes::FakeSink::default()),
            Arc::new(crate::coord::memory::MemoryCheckpoints::default()),
        ));
        let s = Shard::new("exchange", "dlp");
        let tel = e.telemetry.shard(&s);
        let tel_size = std::mem::size_of_val(&tel);
        let f = e.run_shard_with(
            s,
            1,
            tel,
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let runner = std::mem::size_of_val(&f);
        assert!(
            runner <= 2048,
            "the runner's future is {runner} bytes (was 4,024)"
        );
        assert!(
            tel_size <= 128,
            "a shard's telemetry is {tel_size} bytes (was 496)"
        );
    }
}
