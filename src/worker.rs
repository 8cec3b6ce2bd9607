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
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use url::Url;

use crate::cas::{Action, ApiError, Client, Page};
use crate::config::{Config, ConfigError, StartFrom};
use crate::coord::memory::{MemoryBudget, MemoryCheckpoints, MemoryDedup, SoleWorker};
use crate::coord::redis::{RedisCoord, RedisSettings};
use crate::coord::{Budget, CheckpointStore, CoordError, DedupStore, Fence, LeaseStore, Renewal};
use crate::identity::event_id;
use crate::shard::Shard;
use crate::sink::{PageMeta, Record, Sink, Topics};
use crate::telemetry;
use crate::validate::{Registry, Violation};
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
    pub leases_lost: AtomicU64,
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
    pub leases: Arc<dyn LeaseStore>,
}

impl Coordination {
    /// The embedded mode: one process, everything in memory.
    pub fn in_memory(cfg: &Config) -> Self {
        let horizon = Planner::new(&cfg.window).dedup_horizon();
        Self {
            checkpoints: Arc::new(MemoryCheckpoints::default()),
            budget: Arc::new(MemoryBudget::new(cfg.budget.clone())),
            dedup: Arc::new(MemoryDedup::new(horizon)),
            leases: Arc::new(SoleWorker),
        }
    }

    /// A fleet member: everything in Redis (`coord.redis_url` must be set).
    pub async fn redis(
        cfg: &Config,
        token: &SecretString,
    ) -> Result<(Self, Arc<RedisCoord>), CoordError> {
        let url = cfg
            .coord
            .redis_url
            .as_ref()
            .ok_or_else(|| CoordError::Unavailable("coord.redis_url is not set".into()))?;
        let rc = Arc::new(
            RedisCoord::connect(RedisSettings {
                url,
                prefix: &cfg.coord.prefix,
                worker: cfg
                    .coord
                    .worker_id
                    .clone()
                    .unwrap_or_else(default_worker_id),
                lease_ttl: cfg.coord.lease_ttl.get(),
                budget: cfg.budget.clone(),
                token,
                dedup_horizon: Planner::new(&cfg.window).dedup_horizon(),
            })
            .await?,
        );
        Ok((
            Self {
                checkpoints: rc.clone(),
                budget: rc.clone(),
                dedup: rc.clone(),
                leases: rc.clone(),
            },
            rc,
        ))
    }
}

/// `<host>-<pid>-<random>`: unique even when pods share a host name.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().replace([':', ' '], "-"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let r: u16 = rand::rng().random();
    format!("{host}-{}-{r:04x}", std::process::id())
}

/// A shard this process holds a lease on.
struct Held {
    fence: Fence,
    /// Stops the shard's loop at once (lease lost, shutdown).
    cancel: CancellationToken,
    /// Stops it after the window in flight (rebalancing).
    drain: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    last_renewed: tokio::time::Instant,
    /// The lease is gone: the loop was cancelled and must not be released.
    lost: bool,
}

impl Drop for Held {
    /// If the bridge's own task is dropped (aborted), its shard loops must
    /// not outlive it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Test hook: stop the whole bridge after this many windows were published,
/// just before their checkpoint (as a crash there would).
#[derive(Debug, Default)]
pub struct Faults {
    pub halt_before_checkpoint_after_windows: Option<u64>,
}

/// What `/readyz` reports.
#[derive(Debug)]
pub struct Health {
    /// The coordination store answered the last heartbeat.
    pub coord_ok: std::sync::atomic::AtomicBool,
    /// The last publish was acknowledged (true until one fails).
    pub sink_ok: std::sync::atomic::AtomicBool,
    /// The API did not refuse the token at the last request.
    pub token_ok: std::sync::atomic::AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            coord_ok: true.into(),
            sink_ok: true.into(),
            token_ok: true.into(),
        }
    }
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
    /// The shards this process works now.
    held: Mutex<Vec<Shard>>,
    faults: Faults,
    /// Fired by fault injection to stop the whole bridge.
    halt: CancellationToken,
    /// Readiness signals.
    pub health: Health,
    /// Pages fetched and not yet published: bounds memory whatever the
    /// number of shards.
    in_flight: tokio::sync::Semaphore,
}

/// At most this many pages are between request and acknowledgement at once.
const PAGES_IN_FLIGHT: usize = 8;

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
            held: Mutex::new(Vec::new()),
            faults: Faults::default(),
            halt: CancellationToken::new(),
            health: Health::default(),
            in_flight: tokio::sync::Semaphore::new(PAGES_IN_FLIGHT),
        })
    }

    /// Why the bridge is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if !self.health.coord_ok.load(Ordering::Relaxed) {
            why.push("coordination store (Redis) unreachable");
        }
        if !self.health.sink_ok.load(Ordering::Relaxed) || !self.sink.connected() {
            why.push("sink not connected");
        }
        if !self.health.token_ok.load(Ordering::Relaxed) {
            why.push("the API refused the token");
        }
        why
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

    /// The shards this process holds leases on (and works) now.
    pub fn held(&self) -> Vec<Shard> {
        lock(&self.held).clone()
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

    /// Runs until `cancel` fires: holds a fair share of the shards' leases
    /// (all of them when alone), runs a loop per held shard, and rebalances
    /// every third of the lease TTL. Then shuts down within the grace
    /// period: no new requests, the page in flight abandoned without moving
    /// its cursor, the sink flushed, the leases released.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let cancel = cancel.child_token();
        let (halt, c) = (self.halt.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = halt.cancelled() => c.cancel(),
                _ = c.cancelled() => {}
            }
        });
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
        // Workers start their search for free shards at different places.
        let mut order = self.shards.clone();
        let offset = rand::rng().random_range(0..order.len().max(1));
        order.rotate_left(offset);
        let period = self.coord.leases.ttl() / 3;
        let mut held: HashMap<Shard, Held> = HashMap::new();
        loop {
            self.tend(&mut held, &order, &cancel).await;
            let holding: Vec<Shard> = order
                .iter()
                .filter(|s| held.get(*s).is_some_and(|h| !h.lost))
                .cloned()
                .collect();
            telemetry::leases_held(holding.len());
            *lock(&self.held) = holding;
            if !sleep_or_cancel(period, &cancel).await {
                break;
            }
        }
        info!(grace = ?self.grace, "shutting down");
        for h in held.values() {
            h.cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        for (shard, h) in held.iter_mut() {
            if tokio::time::timeout_at(deadline, &mut h.task)
                .await
                .is_err()
            {
                warn!(%shard, "grace period over; abandoning work in flight (its cursor stays)");
                h.task.abort();
            }
        }
        if let Err(e) = self.sink.flush().await {
            error!(error = %e, "flushing the sink at shutdown");
        }
        for (shard, h) in &held {
            if !h.lost {
                if let Err(e) = self.coord.leases.release(shard, h.fence).await {
                    warn!(%shard, error = %e, "cannot release the lease; it expires by itself");
                }
            }
        }
        if let Err(e) = self.coord.leases.leave().await {
            warn!(error = %e, "cannot leave the fleet; the heartbeat expires by itself");
        }
        lock(&self.held).clear();
        info!("bridge stopped");
    }

    /// One round of lease keeping: reap finished loops, renew, announce,
    /// and take or give up shards towards the fair share.
    async fn tend(
        self: &Arc<Self>,
        held: &mut HashMap<Shard, Held>,
        order: &[Shard],
        cancel: &CancellationToken,
    ) {
        let leases = &self.coord.leases;
        let ttl = leases.ttl();
        let period = ttl / 3;
        // Loops that ended (drained, lost, fenced): give their leases back.
        let done: Vec<Shard> = held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(s, _)| s.clone())
            .collect();
        for shard in done {
            lock(&self.held).retain(|s| *s != shard);
            if let Some(h) = held.remove(&shard) {
                if !h.lost {
                    if let Err(e) = leases.release(&shard, h.fence).await {
                        warn!(%shard, error = %e, "cannot release the lease; it expires by itself");
                    }
                }
            }
        }
        let progress = self.progress();
        let now = Utc::now();
        for (shard, h) in held.iter_mut().filter(|(_, h)| !h.lost) {
            let p = progress.get(shard).cloned().unwrap_or_default();
            if let Some(c) = p.cursor {
                telemetry::checkpoint_lag(shard, (now - c).num_milliseconds() as f64 / 1000.0);
            }
            match leases.renew(shard, h.fence, p.cursor).await {
                Ok(Renewal::Lost) => {
                    warn!(%shard, "lease lost to another worker; stopping the shard");
                    lock(&self.held).retain(|s| s != shard);
                    h.cancel.cancel();
                    h.lost = true;
                    Stats::add(&self.stats.leases_lost, 1);
                    telemetry::lease_lost();
                }
                Ok(r) => {
                    if r == Renewal::Reclaimed {
                        warn!(%shard, fence = h.fence, "lease had lapsed or Redis lost it; reclaimed (cursor written back if missing)");
                    }
                    h.last_renewed = tokio::time::Instant::now();
                    let _ = leases.report(shard, h.fence, p.last_error.as_deref()).await;
                }
                Err(e) if h.last_renewed.elapsed() + period < ttl => {
                    warn!(%shard, error = %e, "cannot renew the lease; trying again");
                }
                Err(e) => {
                    warn!(%shard, error = %e, "cannot renew the lease before it expires; stopping the shard");
                    lock(&self.held).retain(|s| s != shard);
                    h.cancel.cancel();
                    h.lost = true;
                    Stats::add(&self.stats.leases_lost, 1);
                    telemetry::lease_lost();
                }
            }
        }
        if cancel.is_cancelled() {
            return;
        }
        let live = match leases.heartbeat().await {
            Ok(n) => {
                self.health.coord_ok.store(true, Ordering::Relaxed);
                n.max(1)
            }
            Err(e) => {
                self.health.coord_ok.store(false, Ordering::Relaxed);
                warn!(error = %e, "heartbeat failed; taking no new shards");
                return;
            }
        };
        let fair = self.shards.len().div_ceil(live);
        let active: Vec<Shard> = order
            .iter()
            .filter(|s| {
                held.get(*s)
                    .is_some_and(|h| !h.lost && !h.drain.is_cancelled())
            })
            .cloned()
            .collect();
        if active.len() > fair {
            // Give up the surplus at a window boundary.
            for shard in active.iter().rev().take(active.len() - fair) {
                if let Some(h) = held.get(shard) {
                    info!(%shard, fair, live, "over the fair share; releasing after the window in flight");
                    h.drain.cancel();
                }
            }
            return;
        }
        let mut want = fair - active.len();
        for shard in order {
            if want == 0 {
                break;
            }
            if held.contains_key(shard) {
                continue;
            }
            match leases.acquire(shard).await {
                Ok(Some(fence)) => {
                    info!(%shard, fence, "lease acquired");
                    let h_cancel = cancel.child_token();
                    let drain = CancellationToken::new();
                    let me = self.clone();
                    let (s2, c2, d2) = (shard.clone(), h_cancel.clone(), drain.clone());
                    let task = tokio::spawn(async move { me.run_shard(s2, fence, c2, d2).await });
                    held.insert(
                        shard.clone(),
                        Held {
                            fence,
                            cancel: h_cancel,
                            drain,
                            task,
                            last_renewed: tokio::time::Instant::now(),
                            lost: false,
                        },
                    );
                    lock(&self.held).push(shard.clone());
                    want -= 1;
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(%shard, error = %e, "cannot acquire a lease");
                    break;
                }
            }
        }
    }

    /// The loop of one shard held with `fence`. `cancel` stops it at once;
    /// `drain` after the window in flight.
    pub async fn run_shard(
        &self,
        shard: Shard,
        fence: Fence,
        cancel: CancellationToken,
        drain: CancellationToken,
    ) {
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
        while !cancel.is_cancelled() && !drain.is_cancelled() {
            let (window, gap) = match self.planner.plan(cursor, Utc::now()) {
                Plan::NotDue(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => return,
                        _ = drain.cancelled() => return,
                    }
                    continue;
                }
                Plan::Due { window, gap } => (window, gap),
            };
            if !gap.is_zero() {
                warn!(%shard, gap_seconds = gap.as_secs(), cursor = %cursor, "skipping data beyond the API's 72h reach");
                Stats::add(&self.stats.gap_seconds, gap.as_secs());
                telemetry::window_gap(gap.as_secs());
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
                self.halt.cancel();
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
            telemetry::checkpoint_lag(
                &shard,
                (Utc::now() - cursor).num_milliseconds() as f64 / 1000.0,
            );
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
            let (page, slot) = self.fetch(shard, &url, urgent, cancel).await?;
            let next = page.next_link.clone();
            self.publish_page(shard, window, page, cancel).await?;
            drop(slot);
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
    ) -> Result<(Page, tokio::sync::SemaphorePermit<'_>), Abort> {
        let mut attempt = 0u32;
        loop {
            // A slot before the budget permit: the permit's time must stay
            // close to the request's, so no waiting comes between them.
            let slot = tokio::select! {
                s = self.in_flight.acquire() => s.map_err(|_| Abort::Cancelled)?,
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
            };
            let permit = tokio::select! {
                p = self.coord.budget.acquire(shard, urgent) => p,
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
            };
            match permit {
                Ok(p) => telemetry::permit(p.waited),
                Err(e) => {
                    drop(slot);
                    warn!(%shard, error = %e, "no permit; retrying");
                    if !sleep_or_cancel(backoff(RETRY_BASE, RETRY_CAP, attempt), cancel).await {
                        return Err(Abort::Cancelled);
                    }
                    attempt += 1;
                    continue;
                }
            }
            Stats::add(&self.stats.requests, 1);
            let started = std::time::Instant::now();
            let res = tokio::select! {
                r = self.client.fetch(url) => r,
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
            };
            let e = match res {
                Ok(page) => {
                    telemetry::api_request("200", started.elapsed());
                    self.health.token_ok.store(true, Ordering::Relaxed);
                    Stats::add(&self.stats.pages, 1);
                    return Ok((page, slot));
                }
                Err(e) => e,
            };
            match &e {
                ApiError::Status { status, .. } => {
                    telemetry::api_request(&status.to_string(), started.elapsed())
                }
                other => telemetry::api_request(other.kind(), started.elapsed()),
            }
            Stats::add(&self.stats.api_errors, 1);
            drop(slot);
            let wait = match e.action() {
                Action::Retry => {
                    let w = backoff(RETRY_BASE, RETRY_CAP, attempt);
                    warn!(%shard, error = %e, kind = e.kind(), retry_in = ?w, "request failed; fetching the page again");
                    w
                }
                Action::RateLimited(after) => {
                    Stats::add(&self.stats.rate_limited, 1);
                    telemetry::rate_limited();
                    let w = after.unwrap_or(Duration::from_secs(60));
                    warn!(%shard, error = %e, pause = ?w, "rate limited by the API; every shard pauses");
                    self.coord.budget.pause(w).await;
                    Duration::ZERO
                }
                Action::Authentication => {
                    self.health.token_ok.store(false, Ordering::Relaxed);
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
        telemetry::events_fetched(shard, page.events.len() as u64);
        // Each event is parsed on its own, checked, and dropped: only its raw
        // text, id and verdict stay, so a page costs little more than its body.
        let checked: Vec<(String, Vec<Violation>)> = page
            .events
            .iter()
            .map(|raw| match serde_json::from_str::<Value>(raw.get()) {
                Ok(v) => (event_id(shard, &v), self.registry.check(&shard.event, &v)),
                // Unreachable (the page parsed), but never a panic.
                Err(e) => (
                    event_id(shard, &Value::String(raw.get().to_string())),
                    vec![Violation {
                        path: String::new(),
                        message: format!("not JSON: {e}"),
                    }],
                ),
            })
            .collect();
        let id_refs: Vec<&str> = checked.iter().map(|(id, _)| id.as_str()).collect();
        let seen = match self.coord.dedup.seen(shard, &id_refs).await {
            Ok(s) => s,
            Err(e) => {
                // Publishing a duplicate is safe; skipping an event is not.
                warn!(%shard, error = %e, "dedup memory unavailable; publishing without it");
                vec![false; checked.len()]
            }
        };
        let topic: Arc<str> = self.topics.topic(shard).into();
        let meta = Arc::new(PageMeta::new(shard, window));
        let dead_letter_topic: Arc<str> = self.topics.dead_letter().into();
        let mut batch_ids = HashSet::with_capacity(checked.len());
        let mut records = Vec::with_capacity(checked.len());
        let mut dead = 0u64;
        for ((raw, (id, violations)), seen) in page.events.iter().zip(&checked).zip(seen) {
            if seen || !batch_ids.insert(id.as_str()) {
                Stats::add(&self.stats.duplicates_skipped, 1);
                telemetry::duplicates_skipped(1);
                continue;
            }
            if violations.is_empty() {
                records.push(Record::event(topic.clone(), id.clone(), &meta, raw));
            } else {
                dead += 1;
                warn!(%shard, id = %id, reason = %violations[0].message, path = %violations[0].path, "event failed validation; dead-lettered");
                records.push(Record::dead_letter(
                    dead_letter_topic.clone(),
                    &topic,
                    id.clone(),
                    &meta,
                    raw,
                    violations,
                ));
            }
        }
        drop(page);
        if records.is_empty() {
            return Ok(());
        }
        let mut attempt = 0u32;
        loop {
            let started = std::time::Instant::now();
            let res = tokio::select! {
                r = self.sink.publish(&records) => r,
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
            };
            match res {
                Ok(()) => {
                    telemetry::sink_publish(started.elapsed());
                    self.health.sink_ok.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    self.health.sink_ok.store(false, Ordering::Relaxed);
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
        telemetry::events_published(shard, records.len() as u64 - dead);
        telemetry::events_dead_lettered(shard, "schema", dead);
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
