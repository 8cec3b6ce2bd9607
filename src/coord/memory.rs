//! In-process coordination for the embedded mode (one process).

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::BudgetConfig;
use super::{
    Budget, BudgetUsage, CheckpointStore, CoordError, DedupStore, Fence, LeaseStore, Permit,
    Priority, Progress, Renew, Renewal, Take,
};
use crate::shard::Shard;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of plain
    // data; the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cursors and progress in maps; every fence is current (one process holds
/// every shard).
#[derive(Debug, Default)]
pub struct MemoryCheckpoints {
    /// Cursor per shard.
    cursors: Mutex<HashMap<Shard, DateTime<Utc>>>,
    /// Position inside the window in flight, per shard.
    progress: Mutex<HashMap<Shard, Progress>>,
}

#[async_trait]
impl CheckpointStore for MemoryCheckpoints {
    async fn load(&self, shard: &Shard) -> Result<Option<DateTime<Utc>>, CoordError> {
        Ok(lock(&self.cursors).get(shard).copied())
    }
    async fn store(
        &self,
        shard: &Shard,
        _fence: Fence,
        cursor: DateTime<Utc>,
    ) -> Result<(), CoordError> {
        lock(&self.cursors).insert(shard.clone(), cursor);
        lock(&self.progress).remove(shard);
        Ok(())
    }
    async fn load_progress(&self, shard: &Shard) -> Result<Option<Progress>, CoordError> {
        Ok(lock(&self.progress).get(shard).cloned())
    }
    async fn store_progress(
        &self,
        shard: &Shard,
        _fence: Fence,
        progress: &Progress,
    ) -> Result<(), CoordError> {
        lock(&self.progress).insert(shard.clone(), progress.clone());
        Ok(())
    }
}

/// The only worker: every shard is free for it, with fence 1.
#[derive(Debug, Default)]
pub struct SoleWorker;

#[async_trait]
impl LeaseStore for SoleWorker {
    fn ttl(&self) -> Duration {
        Duration::from_secs(15)
    }
    async fn heartbeat(&self) -> Result<usize, CoordError> {
        Ok(1)
    }
    async fn acquire_some(
        &self,
        candidates: &[Shard],
        want: usize,
    ) -> Result<Vec<(Shard, Fence)>, CoordError> {
        Ok(candidates
            .iter()
            .take(want)
            .map(|s| (s.clone(), 1))
            .collect())
    }
    async fn renew_all(&self, leases: &[Renew]) -> Vec<Result<Renewal, CoordError>> {
        leases.iter().map(|_| Ok(Renewal::Held)).collect()
    }
    async fn release(&self, _: &Shard, _: Fence) -> Result<(), CoordError> {
        Ok(())
    }
    async fn leave(&self) -> Result<(), CoordError> {
        Ok(())
    }
}

/// A sliding-window budget: at most `per_minute` permits in any 60 s and
/// `per_day` in any 24 h. Who asks next is the scheduler's business
/// ([`crate::schedule`]); the budget only counts.
#[derive(Debug)]
pub struct MemoryBudget {
    limits: BudgetConfig,
    /// Grant times within the last day, oldest first, and any pause.
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    grants: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl BudgetState {
    fn in_last(&self, now: Instant, span: Duration) -> usize {
        match now.checked_sub(span) {
            None => self.grants.len(),
            Some(from) => self.grants.iter().rev().take_while(|t| **t > from).count(),
        }
    }
}

impl MemoryBudget {
    pub fn new(limits: BudgetConfig) -> Self {
        Self {
            limits,
            state: Mutex::new(BudgetState::default()),
        }
    }

    /// Takes a permit now, or says how long until one may be free.
    fn try_take(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        if let Some(until) = st.paused_until {
            if until > now {
                return Err(until - now);
            }
            st.paused_until = None;
        }
        while st
            .grants
            .front()
            .is_some_and(|t| now.duration_since(*t) >= DAY)
        {
            st.grants.pop_front();
        }
        let tiny = Duration::from_millis(1);
        if st.grants.len() >= self.limits.per_day as usize {
            let oldest = st.grants[st.grants.len() - self.limits.per_day as usize];
            return Err(DAY.saturating_sub(now.duration_since(oldest)).max(tiny));
        }
        if let Some(last) = st.grants.back() {
            let since = now.duration_since(*last);
            let pace = self.limits.pace();
            if since < pace {
                return Err(pace - since);
            }
        }
        let minute = MINUTE + self.limits.margin.get();
        if st.in_last(now, minute) >= self.limits.per_minute as usize {
            let oldest = st.grants[st.grants.len() - self.limits.per_minute as usize];
            return Err(minute.saturating_sub(now.duration_since(oldest)).max(tiny));
        }
        st.grants.push_back(now);
        Ok(())
    }
}

#[async_trait]
impl Budget for MemoryBudget {
    /// One process: its scheduler's queue already orders the callers.
    async fn try_acquire(&self, _priority: Priority) -> Result<Take, CoordError> {
        Ok(match self.try_take() {
            Ok(()) => Take::Granted(Permit::new(Duration::ZERO)),
            Err(wait) => Take::Wait(wait),
        })
    }

    async fn pause(&self, for_: Duration) {
        // The caller caps the pause (the API error policy); the ceiling
        // keeps the clock arithmetic safe whatever it is handed.
        let for_ = for_.min(crate::cas::policy::PAUSE_CEILING);
        let now = Instant::now();
        let until = now.checked_add(for_).unwrap_or(now);
        let mut st = lock(&self.state);
        st.paused_until = Some(st.paused_until.map_or(until, |u| u.max(until)));
    }

    async fn resume(&self) {
        lock(&self.state).paused_until = None;
    }

    async fn usage(&self) -> BudgetUsage {
        let now = Instant::now();
        let st = lock(&self.state);
        BudgetUsage {
            last_minute: st.in_last(now, MINUTE) as u32,
            last_day: st.in_last(now, DAY) as u32,
            paused: st.paused_until.filter(|u| *u > now).map(|u| u - now),
        }
    }
}

/// Delivered ids as 128-bit hashes of (shard, id) — a collision would skip
/// an event, so the hash is wide enough that none happens (2^-128 a pair) —
/// kept in one set per minute of marking: expiry drops whole sets, and an id
/// costs about 17 bytes.
#[derive(Debug)]
pub struct MemoryDedup {
    horizon: Duration,
    /// Seeds of the two halves of a key, random per process.
    seeds: (u64, u64),
    /// Sets of ids by the minute they were marked in, oldest first.
    buckets: Mutex<VecDeque<(Instant, std::collections::HashSet<u128, PreHashed>)>>,
}

/// The keys are already hashes: use them as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreHashed;

impl std::hash::BuildHasher for PreHashed {
    type Hasher = PreHashedHasher;
    fn build_hasher(&self) -> PreHashedHasher {
        PreHashedHasher(0)
    }
}

#[derive(Debug, Default)]
pub struct PreHashedHasher(u64);

impl Hasher for PreHashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}

const BUCKET: Duration = Duration::from_secs(60);

impl MemoryDedup {
    pub fn new(horizon: Duration) -> Self {
        Self {
            horizon,
            seeds: (rand::random(), rand::random()),
            buckets: Mutex::new(VecDeque::new()),
        }
    }

    /// The hashers of one shard's keys: the shard is hashed once a page,
    /// each id once per half (two independent 64-bit hashes make a key).
    fn hashers(&self, shard: &Shard) -> impl Fn(&str) -> u128 {
        use std::hash::BuildHasher;
        let salt = foldhash::quality::FixedState::with_seed(self.seeds.0).hash_one(shard);
        let a = foldhash::fast::FixedState::with_seed(self.seeds.0 ^ salt);
        let b = foldhash::fast::FixedState::with_seed(self.seeds.1 ^ salt.rotate_left(29));
        move |id| (u128::from(a.hash_one(id)) << 64) | u128::from(b.hash_one(id))
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        lock(&self.buckets).iter().map(|(_, b)| b.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the sets older than the horizon (a set lives one bucket longer,
    /// so an id is kept at least `horizon`).
    fn expire(
        &self,
        buckets: &mut VecDeque<(Instant, std::collections::HashSet<u128, PreHashed>)>,
        now: Instant,
    ) {
        while buckets
            .front()
            .is_some_and(|(started, _)| now.duration_since(*started) >= self.horizon + BUCKET)
        {
            buckets.pop_front();
        }
    }
}

#[async_trait]
impl DedupStore for MemoryDedup {
    async fn seen(&self, shard: &Shard, ids: &[&str]) -> Result<Vec<bool>, CoordError> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        self.expire(&mut buckets, now);
        let key = self.hashers(shard);
        Ok(ids
            .iter()
            .map(|id| {
                let k = key(id);
                buckets.iter().rev().any(|(_, b)| b.contains(&k))
            })
            .collect())
    }

    async fn mark(&self, shard: &Shard, ids: &[&str]) -> Result<(), CoordError> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        self.expire(&mut buckets, now);
        if buckets
            .back()
            .is_none_or(|(started, _)| now.duration_since(*started) >= BUCKET)
        {
            buckets.push_back((now, std::collections::HashSet::with_hasher(PreHashed)));
        }
        let key = self.hashers(shard);
        if let Some((_, b)) = buckets.back_mut() {
            b.extend(ids.iter().map(|id| key(id)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_never_exceeds_per_minute_in_any_sliding_minute() {
        let b = std::sync::Arc::new(MemoryBudget::new(BudgetConfig {
            per_minute: 10,
            per_day: 1000,
            ..BudgetConfig::default()
        }));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..35 {
            let _p = b.acquire(Priority::Active).await.unwrap();
            times.push(Instant::now() - start);
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| **u < *t + MINUTE).count();
            assert!(
                in_window <= 10,
                "{in_window} permits within 60 s from {t:?}"
            );
        }
        // Paced 6 s apart (the minute spread over 10 permits), never closer.
        for w in times.windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_secs(6),
                "{:?} then {:?}",
                w[0],
                w[1]
            );
        }
        // 35 permits at 10/min, minutes of 60.25 s (the default margin):
        // the 31st opens the fourth minute at 180.75 s, four more follow 6 s
        // apart.
        assert_eq!(times[34], Duration::from_millis(204_750));
    }

    #[tokio::test(start_paused = true)]
    async fn per_day_limit_and_pause() {
        let b = MemoryBudget::new(BudgetConfig {
            per_minute: 100,
            per_day: 3,
            ..BudgetConfig::default()
        });
        for _ in 0..3 {
            let _ = b.acquire(Priority::Active).await.unwrap();
        }
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), b.acquire(Priority::Active))
                .await
                .is_err()
        );
        let b = MemoryBudget::new(BudgetConfig {
            per_minute: 100,
            per_day: 100,
            ..BudgetConfig::default()
        });
        b.pause(Duration::from_secs(30)).await;
        let p = b.acquire(Priority::Active).await.unwrap();
        assert!(p.waited() >= Duration::from_secs(30));
        assert_eq!(b.usage().await.last_minute, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dedup_forgets_after_the_horizon() {
        let d = MemoryDedup::new(Duration::from_secs(60));
        let s = Shard::new("s", "e");
        d.mark(&s, &["a", "b"]).await.unwrap();
        assert_eq!(d.seen(&s, &["a", "c"]).await.unwrap(), vec![true, false]);
        assert_eq!(
            d.seen(&Shard::new("s", "x"), &["a"]).await.unwrap(),
            vec![false]
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            d.seen(&s, &["a"]).await.unwrap(),
            vec![true],
            "kept at least the horizon"
        );
        tokio::time::advance(Duration::from_secs(62)).await;
        assert_eq!(d.seen(&s, &["a"]).await.unwrap(), vec![false]);
        assert!(d.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn dedup_keys_tell_many_ids_and_shards_apart() {
        let d = MemoryDedup::new(Duration::from_secs(600));
        let (a, b) = (Shard::new("exchange", "dlp"), Shard::new("exchange", "dl"));
        let marked: Vec<String> = (0..50_000).map(|i| format!("id-{i}")).collect();
        let other: Vec<String> = (50_000..100_000).map(|i| format!("id-{i}")).collect();
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        d.mark(&a, &refs(&marked)).await.unwrap();
        assert_eq!(d.len(), 50_000);
        assert!(d.seen(&a, &refs(&marked)).await.unwrap().iter().all(|s| *s));
        assert!(!d.seen(&a, &refs(&other)).await.unwrap().iter().any(|s| *s));
        assert!(!d.seen(&b, &refs(&marked)).await.unwrap().iter().any(|s| *s));
        // The same ids in a second process (other seeds) are its own.
        let e = MemoryDedup::new(Duration::from_secs(600));
        assert!(!e.seen(&a, &refs(&marked)).await.unwrap().iter().any(|s| *s));
    }
}
