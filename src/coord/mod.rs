//! Coordination: checkpoints (cursors), the token's request budget, and the
//! dedup memory. The embedded mode keeps them in process ([`memory`]); a
//! fleet keeps them in Redis.
//!
//! What must stay true here:
//! - a cursor is written only with a fence that is still current; a stale
//!   writer gets [`CoordError::Fenced`] and must stop working the shard;
//! - no request is sent without a [`Permit`], and permits never exceed the
//!   budget's per-minute and per-day limits in any sliding window;
//! - a 429 pauses every caller of the budget, not just the one that saw it.

mod config;
mod lua;
pub mod memory;
pub mod redis;
mod stores;

pub use config::{BudgetConfig, BudgetMode, CoordConfig};
pub use stores::{default_worker_id, Budgets, Coordination};

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::shard::Shard;

/// A fencing token: bumped at every acquisition of a shard's lease. Only the
/// holder of the current fence may move that shard's cursor.
pub type Fence = u64;

/// A coordination failure, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// Our fence is no longer current: another worker holds the shard. Stop
    /// working it; never retry the write.
    #[error("fence {ours} for shard {shard} is stale (current {current})")]
    Fenced {
        shard: String,
        ours: Fence,
        current: Fence,
    },
    /// The store is unreachable: retry later, move no cursor meanwhile.
    #[error("coordination store unavailable: {0}")]
    Unavailable(String),
    /// A call to the store failed (the same as [`CoordError::Unavailable`]
    /// for the caller), with the store client's error as its cause.
    #[error("coordination store unavailable: {what}")]
    Failed {
        what: String,
        #[source]
        cause: crate::field::Cause,
    },
}

/// Granted by a [`Budget`]: the right to send one request. Only a budget
/// can make one, and the page source consumes one per request, so no
/// request can be sent without it.
#[derive(Debug)]
#[must_use]
pub struct Permit {
    /// How long the caller waited for it.
    waited: Duration,
}

impl Permit {
    pub(crate) fn new(waited: Duration) -> Self {
        Self { waited }
    }

    /// The same permit, counted as waited for since `started`.
    pub(crate) fn waited_since(self, started: tokio::time::Instant) -> Self {
        Self {
            waited: started.elapsed(),
        }
    }

    /// How long the caller waited for it.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// How much a request matters when the budget is short: lower goes first,
/// in one process (the scheduler's queue) and across a fleet (the shared
/// budget grants a permit to a caller only when no other process has a
/// more urgent caller waiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// The shard is inside a window: pages are left.
    PagesLeft = 0,
    /// A new window of a shard whose cursor is far behind (catch-up).
    Backlog = 1,
    /// A new window of a pair with events, or of one not seen yet, or of a
    /// quiet pair that waited its longest interval.
    Active = 2,
    /// A new window of a pair that returned nothing lately.
    Quiet = 3,
}

impl Priority {
    /// Every class, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::PagesLeft,
        Priority::Backlog,
        Priority::Active,
        Priority::Quiet,
    ];

    /// 0 (most urgent) to 3.
    pub fn rank(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            Priority::PagesLeft => "pages_left",
            Priority::Backlog => "backlog",
            Priority::Active => "active",
            Priority::Quiet => "quiet",
        }
    }
}

/// What asking the budget gave.
#[derive(Debug)]
pub enum Take {
    /// A permit: send the request now.
    Granted(Permit),
    /// None now; ask again after this long (sooner is allowed).
    Wait(Duration),
}

/// How much of the budget is spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetUsage {
    pub last_minute: u32,
    pub last_day: u32,
    /// What is left of a pause every caller honours (a 429, a refused
    /// token); none when not paused.
    pub paused: Option<Duration>,
}

/// A shard's position inside its window in flight: enough for whoever
/// holds the shard next to continue with the next page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// The window's start, as requested.
    pub start: DateTime<Utc>,
    /// The window's end, as requested.
    pub end: DateTime<Utc>,
    /// The next link exactly as the API returned it (the same-host guard
    /// applies to it when it is followed, as to a fresh one).
    pub next: String,
    /// Pages of the window delivered so far.
    pub pages: u32,
    /// Events of the window fetched so far.
    pub events: u64,
    /// When the API handed out the link.
    pub at: DateTime<Utc>,
}

/// Where cursors and in-window progress are kept. Both are written only
/// with a current fence.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The shard's cursor, if it has one.
    async fn load(&self, shard: &Shard) -> Result<Option<DateTime<Utc>>, CoordError>;
    /// Moves the cursor, if `fence` is still current for the shard, and
    /// forgets the progress of the window that ended there.
    async fn store(
        &self,
        shard: &Shard,
        fence: Fence,
        cursor: DateTime<Utc>,
    ) -> Result<(), CoordError>;
    /// The position inside the window in flight, if one was recorded.
    async fn load_progress(&self, shard: &Shard) -> Result<Option<Progress>, CoordError>;
    /// Records the position inside the window in flight, if `fence` is
    /// still current for the shard.
    async fn store_progress(
        &self,
        shard: &Shard,
        fence: Fence,
        progress: &Progress,
    ) -> Result<(), CoordError>;
    /// Reads the cursors of `shards` into this process's memory of them
    /// (see [`CheckpointStore::remembered`]). A store that cannot forget
    /// keeps no such memory.
    async fn refresh(&self, _shards: &[Shard]) -> Result<(), CoordError> {
        Ok(())
    }
    /// The last cursor of `shard` this process saw in the store — read,
    /// written, or refreshed — whoever held the shard. A fleet's Redis may
    /// keep nothing on disk: when it comes back empty, a replica that takes
    /// a shard continues from here instead of `window.start_from`, so the
    /// span since the last holder's cursor is not skipped.
    fn remembered(&self, _shard: &Shard) -> Option<DateTime<Utc>> {
        None
    }
}

/// The token's request budget, shared by every worker.
#[async_trait]
pub trait Budget: Send + Sync {
    /// A permit now, if the budget has one for a caller of `priority`;
    /// otherwise how long to wait. Never blocks for the budget: the
    /// scheduler ([`crate::schedule`]) asks again for whoever is then at
    /// the head of its queue, so a more urgent request that arrived in the
    /// meantime goes first.
    async fn try_acquire(&self, priority: Priority) -> Result<Take, CoordError>;
    /// Waits for a permit (tests and tools; the engine goes through the
    /// scheduler).
    async fn acquire(&self, priority: Priority) -> Result<Permit, CoordError> {
        let started = tokio::time::Instant::now();
        loop {
            match self.try_acquire(priority).await? {
                Take::Granted(p) => return Ok(p.waited_since(started)),
                Take::Wait(w) => tokio::time::sleep(w).await,
            }
        }
    }
    /// Every caller waits this long before the next permit (429, 401).
    async fn pause(&self, for_: Duration);
    /// Ends a pause early (the tenant's token file now holds a new token:
    /// asking again at once is worth a request).
    async fn resume(&self) {}
    /// What was spent.
    async fn usage(&self) -> BudgetUsage;
}

/// The memory of delivered event ids, for the dedup horizon.
#[async_trait]
pub trait DedupStore: Send + Sync {
    /// For each id, whether it was already delivered.
    async fn seen(&self, shard: &Shard, ids: &[&str]) -> Result<Vec<bool>, CoordError>;
    /// Records ids as delivered (after the sink acknowledged them).
    async fn mark(&self, shard: &Shard, ids: &[&str]) -> Result<(), CoordError>;
}

/// What the holder of a shard reports for `status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardReport {
    /// The last error, if the last window did not go through.
    pub last_error: Option<String>,
    /// The pair's observed events a minute (none until polled).
    pub per_minute: Option<f64>,
    /// How long it waits between polls in steady state.
    pub poll_interval: Option<Duration>,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours; the TTL starts again.
    Held,
    /// The lease had lapsed or the store had lost it (a restart without
    /// persistence) and nobody took the shard since: ours again, with the
    /// same fence, and the cursor written back if the store had none.
    Reclaimed,
    /// Another worker holds it (or held it since): stop working the shard.
    Lost,
}

/// One held lease to renew, and what `status` should show of it.
#[derive(Debug, Clone)]
pub struct Renew {
    pub shard: Shard,
    pub fence: Fence,
    /// The holder's own cursor, written back if the store lost it.
    pub cursor: Option<DateTime<Utc>>,
    /// What `status` shows of the shard; `None` when it has not changed
    /// since the last renewal that wrote it.
    pub report: Option<ShardReport>,
}

/// Shard leases and worker membership.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The lease lifetime.
    fn ttl(&self) -> Duration;
    /// Announces this worker; returns how many workers are alive.
    async fn heartbeat(&self) -> Result<usize, CoordError>;
    /// Takes up to `want` free shards among `candidates`, in their order;
    /// returns each one taken with its new fence.
    async fn acquire_some(
        &self,
        candidates: &[Shard],
        want: usize,
    ) -> Result<Vec<(Shard, Fence)>, CoordError>;
    /// Takes a free shard; returns the new fence, or `None` if it is held.
    async fn acquire(&self, shard: &Shard) -> Result<Option<Fence>, CoordError> {
        let mut got = self.acquire_some(std::slice::from_ref(shard), 1).await?;
        Ok(got.pop().map(|(_, f)| f))
    }
    /// Renews held leases (in as few calls as the store allows) and
    /// records their reports; one answer per lease, in order.
    async fn renew_all(&self, leases: &[Renew]) -> Vec<Result<Renewal, CoordError>>;
    /// Renews one held lease.
    async fn renew(
        &self,
        shard: &Shard,
        fence: Fence,
        cursor: Option<DateTime<Utc>>,
    ) -> Result<Renewal, CoordError> {
        let one = Renew {
            shard: shard.clone(),
            fence,
            cursor,
            report: None,
        };
        self.renew_all(std::slice::from_ref(&one))
            .await
            .pop()
            .unwrap_or_else(|| Err(CoordError::Unavailable("no answer to a renewal".into())))
    }
    /// Gives a shard up (graceful shutdown, rebalancing).
    async fn release(&self, shard: &Shard, fence: Fence) -> Result<(), CoordError>;
    /// Leaves the fleet (graceful shutdown).
    async fn leave(&self) -> Result<(), CoordError>;
}
