//! The per-shard loop that ties the stages together, and the [`Bridge`]
//! that runs one loop per shard.
//!
//! What must stay true here (the delivery invariant): a shard's cursor moves
//! to a window's end only after **every** event fetched for that window was
//! acknowledged by the sink, either on its topic or on the dead-letter
//! topic. An event that cannot be published keeps the cursor where it is; a
//! crash at any point re-reads at most the window in flight, and the
//! duplicates that causes carry the same id (Kafka key, `Nats-Msg-Id`) and
//! are removed by the dedup memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::SecretString;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use url::Url;

use crate::cas::{Action, ApiError, Client, Page};
use crate::config::{Config, ConfigError, StartFrom};
use crate::coord::memory::{MemoryBudget, MemoryCheckpoints, MemoryDedup};
use crate::coord::{Budget, CheckpointStore, CoordError, DedupStore, Fence};
use crate::identity::event_id;
use crate::shard::Shard;
use crate::sink::{Record, Sink, Topics};
use crate::validate::Registry;
use crate::window::{Plan, Planner, Window};

/// Counters of one bridge process.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub pages: AtomicU64,
    pub windows: AtomicU64,
    pub events_fetched: AtomicU64,
    pub events_published: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub duplicates_skipped: AtomicU64,
    pub api_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    pub sink_errors: AtomicU64,
    pub gap_seconds: AtomicU64,
}

impl Stats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What an operator (and `demo`, and tests) can see of a shard.
#[derive(Debug, Clone, Default)]
pub struct ShardProgress {
    /// The last checkpointed cursor.
    pub cursor: Option<DateTime<Utc>>,
    /// The last error, cleared by the next delivered window.
    pub last_error: Option<String>,
}

/// The coordination stores a bridge uses.
#[derive(Clone)]
pub struct Coordination {
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub budget: Arc<dyn Budget>,
    pub dedup: Arc<dyn DedupStore>,
}

impl Coordination {
    /// The embedded mode: one process, everything in memory.
    pub fn in_memory(cfg: &Config) -> Self {
        let horizon = Planner::new(&cfg.window).dedup_horizon();
        Self {
            checkpoints: Arc::new(MemoryCheckpoints::default()),
            budget: Arc::new(MemoryBudget::new(cfg.budget.clone())),
            dedup: Arc::new(MemoryDedup::new(horizon)),
        }
    }
}

/// Test hook: stop the whole bridge after this many windows were published,
/// just before their checkpoint (as a crash there would).
#[derive(Debug, Default)]
pub struct Faults {
    pub halt_before_checkpoint_after_windows: Option<u64>,
}

/// One bridge process: a loop per shard, sharing the client, schemas, sink
/// and coordination.
pub struct Bridge {
    client: Client,
    registry: Registry,
    sink: Arc<dyn Sink>,
    topics: Topics,
    coord: Coordination,
    planner: Planner,
    start_from: StartFrom,
    shards: Vec<Shard>,
    grace: Duration,
    /// When the process started (`window.start_from` counts from here).
    started: DateTime<Utc>,
    pub stats: Arc<Stats>,
    progress: Mutex<HashMap<Shard, ShardProgress>>,
    faults: Faults,
}

/// How a window ended without being delivered.
enum Abort {
    Cancelled,
    Park(ApiError),
}

const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(60);
const PARK_BASE: Duration = Duration::from_secs(60);
const PARK_CAP: Duration = Duration::from_secs(15 * 60);
const AUTH_PAUSE: Duration = Duration::from_secs(60);

/// Exponential backoff with full jitter.
fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let ms = rand::rng().random_range(exp.as_millis() as u64 / 2..=exp.as_millis() as u64);
    Duration::from_millis(ms)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleeps, or returns `false` if cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

impl Bridge {
    /// A bridge over the given sink and coordination.
    pub fn new(
        cfg: &Config,
        token: SecretString,
        sink: Arc<dyn Sink>,
        coord: Coordination,
    ) -> Result<Self, ConfigError> {
        let client = Client::new(&cfg.api, token)?;
        let registry = Registry::load(cfg.schemas.dir.as_deref())?;
        let topics = Topics::new(&cfg.sink.topic_template, &cfg.sink.dead_letter)?;
        Ok(Self {
            client,
            registry,
            sink,
            topics,
            coord,
            planner: Planner::new(&cfg.window),
            start_from: cfg.window.start_from,
            shards: cfg.shards.shards()?,
            grace: cfg.shutdown.grace.get(),
            started: Utc::now(),
            stats: Arc::new(Stats::default()),
            progress: Mutex::new(HashMap::new()),
            faults: Faults::default(),
        })
    }

    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Each shard's progress.
    pub fn progress(&self) -> HashMap<Shard, ShardProgress> {
        lock(&self.progress).clone()
    }

    /// The oldest cursor over all shards (`None` while any shard has none).
    pub fn min_cursor(&self) -> Option<DateTime<Utc>> {
        let p = lock(&self.progress);
        let mut min: Option<DateTime<Utc>> = None;
        for s in &self.shards {
            let c = p.get(s)?.cursor?;
            min = Some(min.map_or(c, |m| m.min(c)));
        }
        min
    }

    pub async fn budget_usage(&self) -> crate::coord::BudgetUsage {
        self.coord.budget.usage().await
    }

    fn set_progress(&self, shard: &Shard, f: impl FnOnce(&mut ShardProgress)) {
        f(lock(&self.progress).entry(shard.clone()).or_default());
    }

    /// Runs every shard until `cancel` fires, then shuts down within the
    /// grace period: no new requests, the page in flight abandoned without
    /// moving its cursor, the sink flushed.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let all = self.topics.all(&self.shards);
        let mut attempt = 0;
        loop {
            match self.sink.prepare(&all).await {
                Ok(()) => break,
                Err(e) => {
                    error!(error = %e, "cannot prepare the sink; retrying");
                    if !sleep_or_cancel(backoff(RETRY_BASE, RETRY_CAP, attempt), &cancel).await {
                        return;
                    }
                    attempt += 1;
                }
            }
        }
        info!(shards = self.shards.len(), sink = self.sink.name(), api = %self.client.base(), dialect = %self.client.dialect(), "bridge started");
        let mut tasks = JoinSet::new();
        for shard in self.shards.clone() {
            let me = self.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move { me.run_shard(shard, 1, cancel).await });
        }
        cancel.cancelled().await;
        info!(grace = ?self.grace, "shutting down");
        let drained = tokio::time::timeout(self.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("grace period over; abandoning work in flight (its cursors stay)");
            tasks.abort_all();
        }
        if let Err(e) = self.sink.flush().await {
            error!(error = %e, "flushing the sink at shutdown");
        }
        info!("bridge stopped");
    }

    /// The loop of one shard held with `fence`.
    pub async fn run_shard(&self, shard: Shard, fence: Fence, cancel: CancellationToken) {
        let mut cursor = loop {
            match self.coord.checkpoints.load(&shard).await {
                Ok(Some(c)) => break c,
                Ok(None) => break self.start_from.resolve(self.started),
                Err(e) => {
                    warn!(%shard, error = %e, "cannot load the cursor; retrying");
                    if !sleep_or_cancel(Duration::from_secs(2), &cancel).await {
                        return;
                    }
                }
            }
        };
        self.set_progress(&shard, |p| p.cursor = Some(cursor));
        let mut parked = 0u32;
        while !cancel.is_cancelled() {
            let (window, gap) = match self.planner.plan(cursor, Utc::now()) {
                Plan::NotDue(wait) => {
                    if !sleep_or_cancel(wait, &cancel).await {
                        return;
                    }
                    continue;
                }
                Plan::Due { window, gap } => (window, gap),
            };
            if !gap.is_zero() {
                warn!(%shard, gap_seconds = gap.as_secs(), cursor = %cursor, "skipping data beyond the API's 72h reach");
                Stats::add(&self.stats.gap_seconds, gap.as_secs());
            }
            match self.deliver_window(&shard, &window, &cancel).await {
                Ok(()) => {}
                Err(Abort::Cancelled) => return,
                Err(Abort::Park(e)) => {
                    let wait = backoff(PARK_BASE, PARK_CAP, parked);
                    parked += 1;
                    error!(%shard, error = %e, retry_in = ?wait, "shard parked");
                    self.set_progress(&shard, |p| p.last_error = Some(e.to_string()));
                    if !sleep_or_cancel(wait, &cancel).await {
                        return;
                    }
                    continue;
                }
            }
            let n = self.stats.windows.fetch_add(1, Ordering::Relaxed) + 1;
            if self.faults.halt_before_checkpoint_after_windows == Some(n) {
                warn!(%shard, "fault injection: halting before the checkpoint");
                cancel.cancel();
                return;
            }
            // The window is delivered: move the cursor (fenced).
            let mut attempt = 0;
            loop {
                match self
                    .coord
                    .checkpoints
                    .store(&shard, fence, window.end)
                    .await
                {
                    Ok(()) => break,
                    Err(e @ CoordError::Fenced { .. }) => {
                        warn!(%shard, error = %e, "checkpoint refused: lost the shard");
                        return;
                    }
                    Err(e) => {
                        warn!(%shard, error = %e, "checkpoint failed; retrying");
                        if !sleep_or_cancel(backoff(RETRY_BASE, RETRY_CAP, attempt), &cancel).await
                        {
                            return;
                        }
                        attempt += 1;
                    }
                }
            }
            cursor = window.end;
            parked = 0;
            self.set_progress(&shard, |p| {
                p.cursor = Some(cursor);
                p.last_error = None;
            });
            debug!(%shard, cursor = %cursor, "checkpoint");
        }
    }

    /// Fetches every page of `window` and publishes its events.
    async fn deliver_window(
        &self,
        shard: &Shard,
        window: &Window,
        cancel: &CancellationToken,
    ) -> Result<(), Abort> {
        let mut url = self.client.first_page_url(shard, window);
        let mut urgent = false;
        loop {
            let page = self.fetch(shard, &url, urgent, cancel).await?;
            let next = page.next_link.clone();
            self.publish_page(shard, window, page, cancel).await?;
            match next {
                None => return Ok(()),
                Some(raw) => {
                    url = self.client.next_page_url(&raw).map_err(|e| {
                        Stats::add(&self.stats.api_errors, 1);
                        Abort::Park(e)
                    })?;
                    urgent = true;
                }
            }
        }
    }

    /// One page, retried until it arrives, the shard must park, or cancel.
    async fn fetch(
        &self,
        shard: &Shard,
        url: &Url,
        urgent: bool,
        cancel: &CancellationToken,
    ) -> Result<Page, Abort> {
        let mut attempt = 0u32;
        loop {
            let permit = tokio::select! {
                p = self.coord.budget.acquire(shard, urgent) => p,
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
            };
            if let Err(e) = permit {
                warn!(%shard, error = %e, "no permit; retrying");
                if !sleep_or_cancel(backoff(RETRY_BASE, RETRY_CAP, attempt), cancel).await {
                    return Err(Abort::Cancelled);
                }
                attempt += 1;
                continue;
            }
            Stats::add(&self.stats.requests, 1);
            let res = tokio::select! {
                r = self.client.fetch(url) => r,
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
            };
            let e = match res {
                Ok(page) => {
                    Stats::add(&self.stats.pages, 1);
                    return Ok(page);
                }
                Err(e) => e,
            };
            Stats::add(&self.stats.api_errors, 1);
            let wait = match e.action() {
                Action::Retry => {
                    let w = backoff(RETRY_BASE, RETRY_CAP, attempt);
                    warn!(%shard, error = %e, kind = e.kind(), retry_in = ?w, "request failed; fetching the page again");
                    w
                }
                Action::RateLimited(after) => {
                    Stats::add(&self.stats.rate_limited, 1);
                    let w = after.unwrap_or(Duration::from_secs(60));
                    warn!(%shard, error = %e, pause = ?w, "rate limited by the API; every shard pauses");
                    self.coord.budget.pause(w).await;
                    Duration::ZERO
                }
                Action::Authentication => {
                    error!(%shard, error = %e, "the API refused the token; every shard backs off");
                    self.coord.budget.pause(AUTH_PAUSE).await;
                    Duration::ZERO
                }
                Action::Park => return Err(Abort::Park(e)),
            };
            self.set_progress(shard, |p| p.last_error = Some(e.to_string()));
            attempt += 1;
            if !sleep_or_cancel(wait, cancel).await {
                return Err(Abort::Cancelled);
            }
        }
    }

    /// Validates, dedups and publishes one page; returns when the sink
    /// acknowledged everything.
    async fn publish_page(
        &self,
        shard: &Shard,
        window: &Window,
        page: Page,
        cancel: &CancellationToken,
    ) -> Result<(), Abort> {
        if page.events.is_empty() {
            return Ok(());
        }
        Stats::add(&self.stats.events_fetched, page.events.len() as u64);
        let ids: Vec<String> = page.events.iter().map(|e| event_id(shard, e)).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let seen = match self.coord.dedup.seen(shard, &id_refs).await {
            Ok(s) => s,
            Err(e) => {
                // Publishing a duplicate is safe; skipping an event is not.
                warn!(%shard, error = %e, "dedup memory unavailable; publishing without it");
                vec![false; ids.len()]
            }
        };
        let topic = self.topics.topic(shard);
        let mut batch_ids = HashSet::with_capacity(ids.len());
        let mut records = Vec::with_capacity(ids.len());
        let mut dead = 0u64;
        for ((event, id), seen) in page.events.iter().zip(&ids).zip(seen) {
            if seen || !batch_ids.insert(id.as_str()) {
                Stats::add(&self.stats.duplicates_skipped, 1);
                continue;
            }
            let violations = self.registry.check(&shard.event, event);
            if violations.is_empty() {
                records.push(Record::event(
                    topic.clone(),
                    id.clone(),
                    shard,
                    window,
                    event,
                ));
            } else {
                dead += 1;
                warn!(%shard, id = %id, reason = %violations[0].message, path = %violations[0].path, "event failed validation; dead-lettered");
                records.push(Record::dead_letter(
                    self.topics.dead_letter().to_string(),
                    &topic,
                    id.clone(),
                    shard,
                    window,
                    event,
                    &violations,
                ));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut attempt = 0u32;
        loop {
            let res = tokio::select! {
                r = self.sink.publish(&records) => r,
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
            };
            match res {
                Ok(()) => break,
                Err(e) => {
                    Stats::add(&self.stats.sink_errors, 1);
                    let w = backoff(RETRY_BASE, Duration::from_secs(15), attempt);
                    warn!(%shard, error = %e, retry_in = ?w, "publish failed; the cursor stays");
                    self.set_progress(shard, |p| p.last_error = Some(e.to_string()));
                    attempt += 1;
                    if !sleep_or_cancel(w, cancel).await {
                        return Err(Abort::Cancelled);
                    }
                }
            }
        }
        let delivered: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        if let Err(e) = self.coord.dedup.mark(shard, &delivered).await {
            warn!(%shard, error = %e, "cannot record delivered ids; duplicates may follow");
        }
        Stats::add(&self.stats.events_published, records.len() as u64 - dead);
        Stats::add(&self.stats.dead_lettered, dead);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..30 {
            let d = backoff(RETRY_BASE, RETRY_CAP, attempt);
            assert!(d <= RETRY_CAP);
        }
        assert!(backoff(RETRY_BASE, RETRY_CAP, 0) <= RETRY_BASE);
        assert!(backoff(RETRY_BASE, RETRY_CAP, 4) >= Duration::from_secs(4));
    }
}
