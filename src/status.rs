//! The status board: what every stage reports about each shard (cursor,
//! last error, whether its publishes fail, whether it was stopped) and about
//! the process (coordination store reachable, token accepted, the shards
//! held now). `/readyz`, `demo`, the tests and the lease keeper read it;
//! none of them reads the engine itself.
//!
//! Readiness is the replica's: its coordination store answers, its sink
//! answered once (the topics or the stream are there) and has not been
//! unreachable for longer than `ops.sink_allowance`. One shard whose sink
//! refuses its pages is shown, but does not make the process unready while
//! other shards publish; every held shard failing does, as does a stopped
//! shard (the sink refuses it as configured). A tenant's trouble — its
//! token refused, its budget paused, its shards parked — never does: it
//! shows in that tenant's series and in `status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::shard::Shard;
use crate::window::Window;

/// What an operator (and `demo`, and tests) can see of a shard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardProgress {
    /// The last checkpointed cursor.
    pub cursor: Option<DateTime<Utc>>,
    /// The last error, cleared by the next delivered window.
    pub last_error: Option<String>,
    /// The last publish of this shard was not acknowledged.
    pub sink_failing: bool,
    /// The shard was stopped for good (misconfigured sink), with why.
    pub stopped: Option<String>,
    /// The window in flight and the pages of it delivered (recorded, so
    /// the next holder can resume after them).
    pub window: Option<(Window, u32)>,
    /// Parked (an error retrying cannot fix), with why; cleared by the
    /// next delivered window.
    pub parked: Option<String>,
    /// The pair's observed events a minute (none until polled).
    pub per_minute: Option<f64>,
    /// How long it waits between polls in steady state.
    pub poll_interval: Option<std::time::Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared by every stage of one process.
pub struct StatusBoard {
    /// Per shard, what the runner reported last.
    shards: Mutex<HashMap<Shard, ShardProgress>>,
    /// The coordination store answered the last heartbeat.
    coord_ok: AtomicBool,
    /// The sink answered once: its topics or stream are there (set when
    /// the bridge prepared it).
    sink_prepared: AtomicBool,
    /// Since when the sink's connection has been down, as last seen.
    sink_down_since: Mutex<Option<std::time::Instant>>,
    /// How long the sink may be down before the replica is unready.
    sink_allowance: Mutex<std::time::Duration>,
    /// The shards this process works now, published by the lease keeper.
    held: watch::Sender<Vec<Shard>>,
    /// Says whether the sink's connection is up (none: always).
    sink_up: Option<SinkProbe>,
}

/// Whether the sink's connection is up: the board knows the answer, not
/// the sink.
pub type SinkProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long the sink may be unreachable before the replica is unready,
/// unless `ops.sink_allowance` says otherwise.
pub const DEFAULT_SINK_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBoard")
            .field("held", &*self.held.borrow())
            .finish_non_exhaustive()
    }
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self::new(None)
    }
}

impl StatusBoard {
    /// A board that asks `sink_up` whether the sink's connection is up
    /// (none: it always is).
    pub fn new(sink_up: Option<SinkProbe>) -> Self {
        Self {
            shards: Mutex::new(HashMap::new()),
            coord_ok: true.into(),
            sink_prepared: sink_up.is_none().into(),
            sink_down_since: Mutex::new(None),
            sink_allowance: Mutex::new(DEFAULT_SINK_ALLOWANCE),
            held: watch::Sender::new(Vec::new()),
            sink_up,
        }
    }

    /// Forgets the shards no longer configured (after a live change).
    pub fn retain(&self, configured: &[Shard]) {
        let keep: std::collections::HashSet<&Shard> = configured.iter().collect();
        lock(&self.shards).retain(|s, _| keep.contains(s));
    }

    /// Forgets a shard this process no longer holds (its state is in
    /// Redis for `status`), unless it was stopped: that stays until a
    /// restart, for `/readyz`.
    pub fn forget(&self, shard: &Shard) {
        let mut shards = lock(&self.shards);
        if shards.get(shard).is_some_and(|p| p.stopped.is_none()) {
            shards.remove(shard);
        }
    }

    /// Changes one shard's entry.
    pub fn update(&self, shard: &Shard, f: impl FnOnce(&mut ShardProgress)) {
        f(lock(&self.shards).entry(shard.clone()).or_default());
    }

    pub fn set_cursor(&self, shard: &Shard, cursor: DateTime<Utc>) {
        self.update(shard, |p| {
            p.cursor = Some(cursor);
            p.last_error = None;
            p.parked = None;
        });
    }

    pub fn set_parked(&self, shard: &Shard, error: &dyn std::fmt::Display) {
        let e = error.to_string();
        self.update(shard, |p| {
            p.last_error = Some(e.clone());
            p.parked = Some(e);
        });
    }

    pub fn set_error(&self, shard: &Shard, error: &dyn std::fmt::Display) {
        let e = error.to_string();
        self.update(shard, |p| p.last_error = Some(e));
    }

    pub fn set_window(&self, shard: &Shard, window: Option<(Window, u32)>) {
        self.update(shard, |p| p.window = window);
    }

    pub fn set_activity(
        &self,
        shard: &Shard,
        per_minute: Option<f64>,
        interval: std::time::Duration,
    ) {
        self.update(shard, |p| {
            p.per_minute = per_minute;
            p.poll_interval = Some(interval);
        });
    }

    pub fn set_sink_failing(&self, shard: &Shard, failing: bool) {
        self.update(shard, |p| p.sink_failing = failing);
    }

    pub fn set_stopped(&self, shard: &Shard, why: String) {
        self.update(shard, |p| {
            p.last_error = Some(why.clone());
            p.stopped = Some(why);
        });
    }

    pub fn set_coord_ok(&self, ok: bool) {
        self.coord_ok.store(ok, Ordering::Relaxed);
    }

    /// The sink answered: its topics or stream are there.
    pub fn set_sink_prepared(&self) {
        self.sink_prepared.store(true, Ordering::Relaxed);
    }

    /// How long the sink may be unreachable before the replica is unready
    /// (`ops.sink_allowance`).
    pub fn set_sink_allowance(&self, d: std::time::Duration) {
        *lock(&self.sink_allowance) = d;
    }

    /// Publishes the shards held now (the lease keeper's one channel).
    pub fn set_held(&self, shards: Vec<Shard>) {
        self.held.send_replace(shards);
    }

    /// The shards held now.
    pub fn held(&self) -> Vec<Shard> {
        self.held.borrow().clone()
    }

    /// Follows the held shards as they change.
    pub fn watch_held(&self) -> watch::Receiver<Vec<Shard>> {
        self.held.subscribe()
    }

    pub fn progress(&self) -> HashMap<Shard, ShardProgress> {
        lock(&self.shards).clone()
    }

    pub fn shard(&self, shard: &Shard) -> ShardProgress {
        lock(&self.shards).get(shard).cloned().unwrap_or_default()
    }

    /// The oldest cursor over `shards` (`None` while any has none).
    pub fn min_cursor(&self, shards: &[Shard]) -> Option<DateTime<Utc>> {
        let p = lock(&self.shards);
        let mut min: Option<DateTime<Utc>> = None;
        for s in shards {
            let c = p.get(s)?.cursor?;
            min = Some(min.map_or(c, |m| m.min(c)));
        }
        min
    }

    /// Why the process is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.coord_ok.load(Ordering::Relaxed) {
            why.push("coordination store (Redis) unreachable".to_string());
        }
        if !self.sink_prepared.load(Ordering::Relaxed) {
            why.push(
                "the sink has not answered yet (its topics or stream are not known to be there)"
                    .to_string(),
            );
        }
        match self.sink_up.as_ref().map(|up| up()) {
            Some(false) => {
                let now = std::time::Instant::now();
                let since = *lock(&self.sink_down_since).get_or_insert(now);
                let allowance = *lock(&self.sink_allowance);
                let down = now.duration_since(since);
                if down >= allowance {
                    why.push(format!(
                        "the sink has been unreachable for {} s (ops.sink_allowance {} s)",
                        down.as_secs(),
                        allowance.as_secs()
                    ));
                }
            }
            _ => *lock(&self.sink_down_since) = None,
        }
        let held = self.held();
        let shards = lock(&self.shards);
        let mut stopped: Vec<String> = shards
            .iter()
            .filter_map(|(s, p)| {
                p.stopped
                    .as_ref()
                    .map(|w| format!("shard {s} stopped: {w}"))
            })
            .collect();
        stopped.sort();
        why.extend(stopped);
        let failing = held
            .iter()
            .filter(|s| shards.get(*s).is_some_and(|p| p.sink_failing))
            .count();
        if !held.is_empty() && failing == held.len() {
            why.push(format!(
                "the sink acknowledges no shard's publishes ({failing} failing)"
            ));
        }
        // Parked shards are a tenant's trouble (shown by `status` and the
        // metrics), never the replica's.
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: &str) -> Shard {
        Shard::new(n, "dlp")
    }

    #[test]
    fn one_failing_shard_does_not_make_the_process_unready() {
        let b = StatusBoard::default();
        b.set_held(vec![s("a"), s("b")]);
        b.set_sink_failing(&s("a"), true);
        assert!(b.not_ready().is_empty());
        b.set_sink_failing(&s("b"), true);
        let why = b.not_ready();
        assert_eq!(why.len(), 1);
        assert!(why[0].contains("2 failing"), "{why:?}");
        b.set_sink_failing(&s("a"), false);
        assert!(b.not_ready().is_empty());
    }

    #[test]
    fn a_stopped_shard_and_coordination_make_it_unready() {
        let b = StatusBoard::default();
        b.set_stopped(&s("a"), "topic not allowed".into());
        b.set_coord_ok(false);
        let why = b.not_ready().join("; ");
        assert!(why.contains("Redis"));
        assert!(why.contains("shard a:dlp stopped: topic not allowed"));
        assert_eq!(
            b.shard(&s("a")).last_error.as_deref(),
            Some("topic not allowed")
        );
    }

    #[test]
    fn parked_shards_never_make_it_unready() {
        let b = StatusBoard::default();
        b.set_held(vec![s("a"), s("b")]);
        b.set_parked(&s("a"), &"the same page was malformed 5 times in a row");
        b.set_parked(&s("b"), &"401");
        assert!(b.not_ready().is_empty(), "{:?}", b.not_ready());
        b.set_cursor(&s("a"), Utc::now());
        assert_eq!(b.shard(&s("a")).parked, None);
    }

    #[test]
    fn unready_until_the_sink_answered_and_while_it_is_down_past_the_allowance() {
        let up = Arc::new(AtomicBool::new(false));
        let probe = up.clone();
        let b = StatusBoard::new(Some(Arc::new(move || probe.load(Ordering::Relaxed))));
        b.set_sink_allowance(std::time::Duration::ZERO);
        let why = b.not_ready().join("; ");
        assert!(why.contains("has not answered yet"), "{why}");
        assert!(why.contains("unreachable"), "{why}");
        b.set_sink_prepared();
        up.store(true, Ordering::Relaxed);
        assert!(b.not_ready().is_empty(), "{:?}", b.not_ready());
        // Down, within a long allowance: still ready; past it: not.
        b.set_sink_allowance(std::time::Duration::from_secs(3600));
        up.store(false, Ordering::Relaxed);
        assert!(b.not_ready().is_empty(), "{:?}", b.not_ready());
        b.set_sink_allowance(std::time::Duration::ZERO);
        assert!(b.not_ready().join("; ").contains("unreachable"));
        up.store(true, Ordering::Relaxed);
        assert!(b.not_ready().is_empty());
    }

    #[test]
    fn min_cursor_waits_for_every_shard() {
        let b = StatusBoard::default();
        let t0 = DateTime::from_timestamp(100, 0).unwrap();
        let t1 = DateTime::from_timestamp(50, 0).unwrap();
        b.set_cursor(&s("a"), t0);
        assert_eq!(b.min_cursor(&[s("a"), s("b")]), None);
        b.set_error(&s("b"), &"boom");
        assert_eq!(b.min_cursor(&[s("a"), s("b")]), None);
        b.set_cursor(&s("b"), t1);
        assert_eq!(b.min_cursor(&[s("a"), s("b")]), Some(t1));
        assert_eq!(
            b.shard(&s("b")).last_error,
            None,
            "a cursor clears the error"
        );
    }

    #[tokio::test]
    async fn held_shards_are_published_on_one_channel() {
        let b = StatusBoard::default();
        let mut rx = b.watch_held();
        b.set_held(vec![s("a")]);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), vec![s("a")]);
        assert_eq!(b.held(), vec![s("a")]);
    }
}
