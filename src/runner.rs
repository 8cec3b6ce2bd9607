//! The shard runner: one shard's loop of windows — plan, fetch every page,
//! publish it, then move the cursor (fenced).
//!
//! What must stay true here (the delivery invariant): a shard's cursor moves
//! to a window's end only after **every** event fetched for that window was
//! acknowledged by the sink, either on its topic or on the dead-letter
//! topic. An event that cannot be published keeps the cursor where it is; a
//! crash at any point re-reads at most the window in flight, and the
//! duplicates that causes carry the same id (Kafka key, `Nats-Msg-Id`) and
//! are removed by the dedup memory. A runner whose fence is stale cannot
//! move the cursor: the checkpoint store refuses it and the runner stops.
//!
//! Inside a window, the position to continue from (the window, the next
//! link as the API returned it, pages done) is recorded after every page
//! the sink acknowledged, with the same fence. Whoever runs the shard next
//! continues there, so an interruption costs at most the page in flight. A
//! stored link the API refuses falls back to the window's first page (the
//! dedup memory absorbs the re-read). Draining (shutdown, rebalancing)
//! stops at a page boundary: the page in flight is finished, its progress
//! recorded, and no new request is sent.
//!
//! What a failed request means comes from the one API error policy
//! ([`crate::cas::policy`]): retry the page with backoff, pause every shard
//! on the token (429, capped at `budget.max_pause`; 401/403), or park the
//! shard with a long backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::cas::{ApiError, Decision, Page, Policy};
use crate::coord::{CheckpointStore, CoordError, Fence, Progress};
use crate::publish::{PublishError, Publisher};
use crate::retry::Backoff;
use crate::schedule::{Ask, Pacing, Priority, Slot};
use crate::shard::{Shard, DEFAULT_TENANT};
use crate::status::StatusBoard;
use crate::telemetry::{ShardTelemetry, Telemetry};
use crate::window::{Plan, Planner, Window};

mod cursors;
mod lane;

pub use lane::{Lane, RunnerSettings};

pub use crate::cas::policy::{
    AUTH_PAUSE, MALFORMED_TRIES, RATE_LIMIT_PAUSE as DEFAULT_RATE_LIMIT_PAUSE,
};

/// How often a shard whose token was refused looks at the token file.
pub const TOKEN_LOOK: Duration = Duration::from_secs(1);

/// Test hook: stop the whole bridge after this many windows were published,
/// just before their checkpoint (as a crash there would).
#[derive(Debug, Default)]
pub struct Faults {
    pub halt_before_checkpoint_after_windows: Option<u64>,
}

/// How a window ended without being delivered.
#[derive(Debug)]
enum Abort {
    /// Stopped at once (lease lost, grace over): the page in flight is lost.
    Cancelled,
    /// Stopped at a page boundary; the progress is recorded.
    Drained,
    /// Another holder's fence is current: stop without writing anything.
    Fenced,
    Park(ApiError),
    Stop(String),
}

impl Abort {
    /// How the runner stopped, for a log field.
    fn as_str(&self) -> &'static str {
        match self {
            Abort::Cancelled => "cancelled",
            Abort::Drained => "drained",
            Abort::Fenced => "fenced",
            Abort::Park(_) => "parked",
            Abort::Stop(_) => "stopped",
        }
    }
}

/// Where a window's reading starts.
enum Start {
    /// Its first page, asked for with this priority.
    First(Ask),
    /// The stored position of an interrupted reading.
    Resume(Progress),
}

/// What every shard runner of one process shares.
pub struct Engine {
    /// Each tenant's source, scheduler and windows.
    pub lanes: HashMap<Arc<str>, Lane>,
    /// Validate, dedup, publish.
    pub publisher: Publisher,
    /// Cursors (fenced).
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// When the process started (`window.start_from` counts from here).
    pub started: DateTime<Utc>,
    /// What every stage reports.
    pub status: Arc<StatusBoard>,
    /// Logs, metrics, stats.
    pub telemetry: Telemetry,
    /// Fault injection (tests).
    pub faults: Faults,
    /// Fired by fault injection to stop the whole bridge.
    pub halt: CancellationToken,
    /// Windows delivered (for the fault hook).
    delivered: AtomicU64,
}

impl Engine {
    /// An engine of these tenants' lanes.
    pub fn with_lanes(
        lanes: HashMap<Arc<str>, Lane>,
        publisher: Publisher,
        checkpoints: Arc<dyn CheckpointStore>,
        status: Arc<StatusBoard>,
        telemetry: Telemetry,
    ) -> Self {
        Self {
            lanes,
            publisher,
            checkpoints,
            started: Utc::now(),
            status,
            telemetry,
            faults: Faults::default(),
            halt: CancellationToken::new(),
            delivered: AtomicU64::new(0),
        }
    }

    /// The lane of a shard's tenant.
    pub fn lane(&self, shard: &Shard) -> Option<&Lane> {
        self.lanes.get(&shard.tenant)
    }

    /// The default tenant's lane, to adjust before the engine runs (tests).
    pub fn default_lane_mut(&mut self) -> Option<&mut Lane> {
        self.lanes.get_mut(DEFAULT_TENANT)
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
        let tel = self.telemetry.shard(&shard);
        self.run_shard_with(shard, fence, tel, cancel, drain).await
    }

    /// As [`Engine::run_shard`], with the shard's telemetry handles made by
    /// the caller (the lease keeper makes them once per lease).
    pub async fn run_shard_with(
        &self,
        shard: Shard,
        fence: Fence,
        tel: ShardTelemetry,
        cancel: CancellationToken,
        drain: CancellationToken,
    ) {
        let Some(lane) = self.lane(&shard) else {
            // Unreachable: shards come from the configured tenants.
            let why = format!("no tenant `{}` is configured", shard.tenant);
            tel.stopped(&why);
            self.status.set_stopped(&shard, why);
            return;
        };
        let run = ShardRun {
            engine: self,
            lane,
            policy: Policy::fleet(lane.settings.max_pause),
            shard,
            fence,
            tel,
            cancel,
            drain,
        };
        run.run().await
    }

    /// Shows the pair's rate and `interval` in metrics and `status`.
    fn show_pacing(
        &self,
        shard: &Shard,
        pacing: &Pacing,
        tel: &ShardTelemetry,
        interval: Duration,
    ) -> Duration {
        tel.activity(pacing.per_minute(), interval);
        self.status
            .set_activity(shard, pacing.per_minute(), interval);
        interval
    }
}

/// One shard held with one fence: what its loop, its windows, its pages
/// and its requests share. Made when a lease is taken, dropped when the
/// loop ends.
struct ShardRun<'e> {
    /// The stages every shard of the process shares.
    engine: &'e Engine,
    /// The shard's tenant's source, scheduler and windows.
    lane: &'e Lane,
    /// What a failed request means (the one API error policy).
    policy: Policy,
    /// The shard this loop works.
    shard: Shard,
    /// The fence of the lease it is held with.
    fence: Fence,
    /// Its telemetry handles.
    tel: ShardTelemetry,
    /// Stops it at once (lease lost, grace over).
    cancel: CancellationToken,
    /// Stops it at the next page boundary (shutdown, rebalancing).
    drain: CancellationToken,
}

impl ShardRun<'_> {
    /// Sleeps `d`; `Err` when the shard was stopped or drained first.
    async fn sleep(&self, d: Duration) -> Result<(), Abort> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(Abort::Cancelled),
            _ = self.drain.cancelled() => Err(Abort::Drained),
        }
    }

    /// Looks at the token file every [`TOKEN_LOOK`] for up to `pause`:
    /// `true` as soon as it holds a new token, `false` when the pause ran
    /// out without one.
    async fn await_new_token(&self, pause: Duration) -> Result<bool, Abort> {
        let until = tokio::time::Instant::now() + pause;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.sleep(left.min(TOKEN_LOOK)).await?;
            if self.lane.source.reload_credentials() {
                return Ok(true);
            }
        }
    }

    /// The loop of windows, until the shard is stopped, drained or fenced.
    async fn run(&self) {
        let (engine, lane, shard, tel) = (self.engine, self.lane, &self.shard, &self.tel);
        // The steps are boxed: a runner waiting between windows (most of
        // a large fleet's, most of the time) holds only this loop's state,
        // not the largest step's.
        let Some(mut cursor) = Box::pin(engine.load_cursor(shard, &self.cancel)).await else {
            return;
        };
        engine.status.set_cursor(shard, cursor);
        let mut resume = Box::pin(engine.load_progress(shard, cursor)).await;
        let mut park = Backoff::park();
        // Events a second in the last window with events: sizes the next.
        let mut density: Option<f64> = None;
        // How busy the pair is: sets how often it is polled.
        let mut pacing = Pacing::new(lane.planner.min_interval(), lane.settings.max_interval);
        let mut interval = engine.show_pacing(shard, &pacing, tel, pacing.interval(false));
        while !self.cancel.is_cancelled() && !self.drain.is_cancelled() {
            let (mut window, start) = match resume.take() {
                Some(p) => (
                    Window {
                        start: p.start,
                        end: p.end,
                    },
                    Start::Resume(p),
                ),
                None => {
                    let longest =
                        Planner::sized(lane.settings.max_pages, lane.settings.page_limit, density);
                    match lane.planner.for_stream(shard.stream()).plan_every(
                        cursor,
                        Utc::now(),
                        longest,
                        interval,
                    ) {
                        Plan::NotDue(wait) => {
                            if self.sleep(wait).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Plan::Due { window, gap } => {
                            if !gap.is_zero() {
                                tel.gap_skipped(gap.as_secs(), cursor);
                            }
                            let behind = lane.planner.behind(cursor, Utc::now());
                            (window, Start::First(pacing.ask(behind)))
                        }
                    }
                }
            };
            let events = match Box::pin(self.deliver_window(&mut window, start)).await {
                Ok(events) => events,
                Err(a @ (Abort::Cancelled | Abort::Drained | Abort::Fenced)) => {
                    tracing::debug!(%shard, how = a.as_str(), "runner stops");
                    return;
                }
                Err(Abort::Stop(why)) => {
                    tel.stopped(&why);
                    engine.status.set_stopped(shard, why);
                    return;
                }
                Err(Abort::Park(e)) => {
                    let wait = park.next_delay();
                    tel.parked(&crate::field::chain(&e), wait);
                    engine.status.set_parked(shard, &crate::field::chain(&e));
                    if self.sleep(wait).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let secs = window.duration().as_secs_f64();
            if events > 0 && secs > 0.0 {
                density = Some(events as f64 / secs);
            }
            let next = pacing.polled(events, window.duration());
            interval = engine.show_pacing(shard, &pacing, tel, next);
            let n = engine.delivered.fetch_add(1, Ordering::Relaxed) + 1;
            if engine.faults.halt_before_checkpoint_after_windows == Some(n) {
                tracing::warn!(%shard, "fault injection: halting before the checkpoint");
                engine.halt.cancel();
                return;
            }
            if !Box::pin(engine.checkpoint(shard, self.fence, window.end, &self.cancel)).await {
                return;
            }
            cursor = window.end;
            park.reset();
            tel.window_checkpointed(cursor);
            engine.status.set_cursor(shard, cursor);
        }
    }

    /// Fetches every page of `window` (from `start`) and publishes its
    /// events, recording the progress after each page; returns the number
    /// of events the window held. A new window planned up to the live edge
    /// is stretched to the live edge of when its permit came, so the time
    /// spent waiting for it does not hold its events back a whole interval.
    async fn deliver_window(&self, window: &mut Window, start: Start) -> Result<u64, Abort> {
        let (engine, lane, shard, tel) = (self.engine, self.lane, &self.shard, &self.tel);
        let first = lane.source.first_page(shard, window);
        let mut live = matches!(start, Start::First(_)) && lane.planner.at_edge(window, Utc::now());
        let pages_left = Ask::new(Priority::PagesLeft);
        // A window read again from its start goes as a catch-up would.
        let again = Ask::new(Priority::Backlog);
        let (mut url, mut pages, mut events, mut resumed, mut ask) = match start {
            Start::First(ask) => (first, 0u32, 0u64, None, ask),
            Start::Resume(p) => match lane.source.next_page(&p.next) {
                Ok(u) => {
                    tel.window_resumed(p.pages);
                    (u, p.pages, p.events, Some(p.pages), pages_left)
                }
                Err(e) => {
                    tel.stored_link_refused(&crate::field::chain(&e), p.pages);
                    (first, 0, 0, None, again)
                }
            },
        };
        engine.status.set_window(shard, Some((*window, pages)));
        // The links followed in this window: one that comes again is a loop.
        let mut followed = std::collections::HashSet::new();
        loop {
            let stretch = live.then_some(&mut *window);
            let (page, slot) = match self.fetch(&mut url, stretch, ask).await {
                Err(Abort::Park(e)) if resumed.is_some() => {
                    // The stored link is refused (expired, or the API does
                    // not know it): read the window again from its start.
                    tel.stored_link_refused(&crate::field::chain(&e), resumed.take().unwrap_or(0));
                    url = lane.source.first_page(shard, window);
                    (pages, events) = (0, 0);
                    ask = again;
                    continue;
                }
                other => other?,
            };
            (resumed, live) = (None, false);
            followed.insert(link_key(url.as_str()));
            let next = page.next_link.clone();
            events += page.len() as u64;
            engine
                .publisher
                .publish_page(shard, window, page, tel, &engine.status, &self.cancel)
                .await
                .map_err(|e| match e {
                    PublishError::Cancelled => Abort::Cancelled,
                    PublishError::Stopped(why) => Abort::Stop(why),
                })?;
            drop(slot);
            pages += 1;
            let Some(raw) = next else {
                engine.status.set_window(shard, None);
                return Ok(events);
            };
            url = lane.source.next_page(&raw).map_err(Abort::Park)?;
            if !followed.insert(link_key(url.as_str())) {
                return Err(Abort::Park(ApiError::PageLoop(format!(
                    "page {} links back to a page already read in this window",
                    pages
                ))));
            }
            if pages >= lane.settings.page_cap {
                return Err(Abort::Park(ApiError::PageLoop(format!(
                    "{pages} pages and still a next link (window.page_cap {})",
                    lane.settings.page_cap
                ))));
            }
            let progress = Progress {
                start: window.start,
                end: window.end,
                next: raw,
                pages,
                events,
                at: Utc::now(),
            };
            match engine
                .checkpoints
                .store_progress(shard, self.fence, &progress)
                .await
            {
                Ok(()) => {}
                Err(e @ CoordError::Fenced { .. }) => {
                    tracing::warn!(%shard, error = %crate::field::chain(&e), "progress refused: lost the shard");
                    engine.status.set_error(shard, &crate::field::chain(&e));
                    return Err(Abort::Fenced);
                }
                // Progress saves requests; the cursor keeps the guarantee.
                Err(e) => {
                    tracing::warn!(%shard, error = %crate::field::chain(&e), "cannot record the progress inside the window")
                }
            }
            engine.status.set_window(shard, Some((*window, pages)));
            if self.drain.is_cancelled() {
                return Err(Abort::Drained);
            }
            ask = pages_left;
        }
    }

    /// One page, retried until it arrives, the shard must park, or cancel.
    /// Draining stops it while it waits (nothing is in flight then); a
    /// request sent is finished. With `stretch`, `url` is the first page of
    /// that window, stretched to the live edge at the first permit.
    async fn fetch(
        &self,
        url: &mut Url,
        mut stretch: Option<&mut Window>,
        ask: Ask,
    ) -> Result<(Page, Slot), Abort> {
        let (engine, lane, shard, tel) = (self.engine, self.lane, &self.shard, &self.tel);
        let mut attempts = self.policy.attempts();
        loop {
            let grant = tokio::select! {
                g = lane.scheduler.grant(shard, ask) => g,
                _ = self.cancel.cancelled() => return Err(Abort::Cancelled),
                _ = self.drain.cancelled() => return Err(Abort::Drained),
            };
            let grant = match grant {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(%shard, error = %crate::field::chain(&e), "no permit; retrying");
                    self.sleep(attempts.no_permit()).await?;
                    continue;
                }
            };
            tel.permit(grant.permit.waited());
            // Only at the first permit: a retry asks for the same page.
            if let Some(w) = stretch.take() {
                if lane.planner.stretch(w, Utc::now()) {
                    *url = lane.source.first_page(shard, w);
                }
            }
            tracing::debug!(%shard, %url, "request");
            let started = std::time::Instant::now();
            let res = tokio::select! {
                r = lane.source.fetch(grant.permit, url) => r,
                _ = self.cancel.cancelled() => return Err(Abort::Cancelled),
            };
            let e = match res {
                // More events than asked for (twice the page size): a
                // hostile or broken answer, refused before any work on it.
                Ok(page) if page.len() as u64 > 2 * u64::from(lane.settings.page_limit.max(1)) => {
                    ApiError::Malformed(format!(
                        "the page holds {} events; {} were asked for",
                        page.len(),
                        lane.settings.page_limit
                    ))
                }
                Ok(page) => {
                    tel.page_fetched(page.len(), started.elapsed());
                    tel.token_refused(false);
                    return Ok((page, grant.slot));
                }
                Err(e) => e,
            };
            drop(grant.slot);
            let status = match &e {
                ApiError::Status { status, .. } => status.to_string(),
                other => other.kind().to_string(),
            };
            let took = started.elapsed();
            let shown = crate::field::chain(&e).to_string();
            let decision = attempts.decide(e, || lane.source.reload_credentials());
            let wait = decision.wait();
            let retry_in = match &decision {
                Decision::Retry(w) => Some(*w),
                Decision::NewToken => Some(Duration::ZERO),
                Decision::TokenRefused { pause } => Some(*pause),
                Decision::Throttle { .. } | Decision::GiveUp(_) => None,
            };
            tel.request_failed(&status, took, &shown, retry_in);
            engine.status.set_error(shard, &shown);
            match decision {
                Decision::Retry(_) => {}
                Decision::Throttle { pause, asked } => {
                    tel.rate_limited(pause, asked);
                    lane.scheduler.pause(pause).await;
                }
                Decision::NewToken => {
                    // The token file holds a new token (rotated): send
                    // again with it rather than back off.
                    tracing::warn!(%shard, error = %shown, "the API refused the token; the token file holds a new one, asking again with it");
                }
                Decision::TokenRefused { pause } => {
                    tel.token_refused(true);
                    tracing::error!(%shard, tenant = %shard.tenant, error = %shown, "the API refused the token; the tenant's shards back off");
                    lane.scheduler.pause(pause).await;
                    // A token file that changes meanwhile is tried at once.
                    if self.await_new_token(pause).await? {
                        tracing::warn!(%shard, tenant = %shard.tenant, "the token file holds a new token; asking again with it");
                        lane.scheduler.resume().await;
                    }
                }
                Decision::GiveUp(e) => return Err(Abort::Park(e)),
            }
            self.sleep(wait).await?;
        }
    }
}

/// A followed link, as a 64-bit hash (a window keeps one per page).
fn link_key(link: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    link.hash(&mut h);
    h.finish()
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "tenant_tests.rs"]
mod tenant_tests;
