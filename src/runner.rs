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
//! The API's errors say what to do ([`Action`]): retry the page with
//! backoff, pause every shard on the token (429, capped at
//! `budget.max_pause`; 401/403), or park the shard with a long backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::cas::{Action, ApiError, Page};
use crate::coord::{CheckpointStore, CoordError, Fence, Progress};
use crate::publish::{PublishError, Publisher};
use crate::retry::Backoff;
use crate::schedule::{Ask, Pacing, Priority, Scheduler, Slot};
use crate::shard::{Shard, DEFAULT_TENANT};
use crate::source::PageSource;
use crate::status::StatusBoard;
use crate::telemetry::{ShardTelemetry, Telemetry};
use crate::window::{Plan, Planner, Window};

mod cursors;
mod lane;

pub use lane::{Lane, RunnerSettings};

/// How long every shard backs off after the API refused the token.
pub const AUTH_PAUSE: Duration = Duration::from_secs(60);
/// The pause after a 429 without `Retry-After`.
pub const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);
/// A page that comes back malformed this many times in a row is poison
/// (invalid UTF-8, duplicate keys, …): the shard is parked with the reason.
pub const MALFORMED_TRIES: u32 = 5;

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
    /// An engine of the default tenant alone.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: Arc<dyn PageSource>,
        scheduler: Scheduler,
        publisher: Publisher,
        checkpoints: Arc<dyn CheckpointStore>,
        planner: Planner,
        settings: RunnerSettings,
        status: Arc<StatusBoard>,
        telemetry: Telemetry,
    ) -> Self {
        let lane = Lane {
            source,
            scheduler: Arc::new(scheduler),
            planner,
            settings,
        };
        let lanes = HashMap::from([(Arc::from(DEFAULT_TENANT), lane)]);
        Self::with_lanes(lanes, publisher, checkpoints, status, telemetry)
    }

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
        let Some(mut cursor) = self.load_cursor(&shard, &cancel).await else {
            return;
        };
        self.status.set_cursor(&shard, cursor);
        let mut resume = self.load_progress(&shard, cursor).await;
        let mut park = Backoff::park();
        // Events a second in the last window with events: sizes the next.
        let mut density: Option<f64> = None;
        // How busy the pair is: sets how often it is polled.
        let mut pacing = Pacing::new(lane.planner.min_interval(), lane.settings.max_interval);
        let mut interval = self.show_pacing(&shard, &pacing, &tel, pacing.interval(false));
        while !cancel.is_cancelled() && !drain.is_cancelled() {
            let (window, start) = match resume.take() {
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
                    match lane
                        .planner
                        .plan_every(cursor, Utc::now(), longest, interval)
                    {
                        Plan::NotDue(wait) => {
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = cancel.cancelled() => return,
                                _ = drain.cancelled() => return,
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
            let mut window = window;
            let events = match self
                .deliver_window(&shard, fence, &mut window, start, &tel, &cancel, &drain)
                .await
            {
                Ok(events) => events,
                Err(a @ (Abort::Cancelled | Abort::Drained | Abort::Fenced)) => {
                    tracing::debug!(%shard, how = ?a, "runner stops");
                    return;
                }
                Err(Abort::Stop(why)) => {
                    tel.stopped(&why);
                    self.status.set_stopped(&shard, why);
                    return;
                }
                Err(Abort::Park(e)) => {
                    let wait = park.next_delay();
                    tel.parked(&e, wait);
                    self.status.set_parked(&shard, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => return,
                        _ = drain.cancelled() => return,
                    }
                    continue;
                }
            };
            let secs = window.duration().as_secs_f64();
            if events > 0 && secs > 0.0 {
                density = Some(events as f64 / secs);
            }
            let next = pacing.polled(events, window.duration());
            interval = self.show_pacing(&shard, &pacing, &tel, next);
            let n = self.delivered.fetch_add(1, Ordering::Relaxed) + 1;
            if self.faults.halt_before_checkpoint_after_windows == Some(n) {
                tracing::warn!(%shard, "fault injection: halting before the checkpoint");
                self.halt.cancel();
                return;
            }
            if !self.checkpoint(&shard, fence, window.end, &cancel).await {
                return;
            }
            cursor = window.end;
            park.reset();
            tel.window_checkpointed(cursor);
            self.status.set_cursor(&shard, cursor);
        }
    }

    fn lane_or_stop(&self, shard: &Shard) -> Result<&Lane, Abort> {
        self.lane(shard)
            .ok_or_else(|| Abort::Stop(format!("no tenant `{}` is configured", shard.tenant)))
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

    /// Fetches every page of `window` (from `start`) and publishes its
    /// events, recording the progress after each page; returns the number
    /// of events the window held. A new window planned up to the live edge
    /// is stretched to the live edge of when its permit came, so the time
    /// spent waiting for it does not hold its events back a whole interval.
    #[allow(clippy::too_many_arguments)]
    async fn deliver_window(
        &self,
        shard: &Shard,
        fence: Fence,
        window: &mut Window,
        start: Start,
        tel: &ShardTelemetry,
        cancel: &CancellationToken,
        drain: &CancellationToken,
    ) -> Result<u64, Abort> {
        let lane = self.lane_or_stop(shard)?;
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
                    tel.stored_link_refused(&e, p.pages);
                    (first, 0, 0, None, again)
                }
            },
        };
        self.status.set_window(shard, Some((*window, pages)));
        // The links followed in this window: one that comes again is a loop.
        let mut followed = std::collections::HashSet::new();
        loop {
            let stretch = live.then_some(&mut *window);
            let fetched = self
                .fetch(shard, &mut url, stretch, ask, tel, cancel, drain)
                .await;
            let (page, slot) = match fetched {
                Err(Abort::Park(e)) if resumed.is_some() => {
                    // The stored link is refused (expired, or the API does
                    // not know it): read the window again from its start.
                    tel.stored_link_refused(&e, resumed.take().unwrap_or(0));
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
            self.publisher
                .publish_page(shard, window, page, tel, &self.status, cancel)
                .await
                .map_err(|e| match e {
                    PublishError::Cancelled => Abort::Cancelled,
                    PublishError::Stopped(why) => Abort::Stop(why),
                })?;
            drop(slot);
            pages += 1;
            let Some(raw) = next else {
                self.status.set_window(shard, None);
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
            match self
                .checkpoints
                .store_progress(shard, fence, &progress)
                .await
            {
                Ok(()) => {}
                Err(e @ CoordError::Fenced { .. }) => {
                    tracing::warn!(%shard, error = %e, "progress refused: lost the shard");
                    self.status.set_error(shard, &e);
                    return Err(Abort::Fenced);
                }
                // Progress saves requests; the cursor keeps the guarantee.
                Err(e) => {
                    tracing::warn!(%shard, error = %e, "cannot record the progress inside the window")
                }
            }
            self.status.set_window(shard, Some((*window, pages)));
            if drain.is_cancelled() {
                return Err(Abort::Drained);
            }
            ask = pages_left;
        }
    }

    /// One page, retried until it arrives, the shard must park, or cancel.
    /// Draining stops it while it waits (nothing is in flight then); a
    /// request sent is finished. With `stretch`, `url` is the first page of
    /// that window, stretched to the live edge at the first permit.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        shard: &Shard,
        url: &mut Url,
        mut stretch: Option<&mut Window>,
        ask: Ask,
        tel: &ShardTelemetry,
        cancel: &CancellationToken,
        drain: &CancellationToken,
    ) -> Result<(Page, Slot), Abort> {
        let lane = self.lane_or_stop(shard)?;
        let mut retry = Backoff::request();
        let mut malformed = 0u32;
        loop {
            let grant = tokio::select! {
                g = lane.scheduler.grant(shard, ask) => g,
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
                _ = drain.cancelled() => return Err(Abort::Drained),
            };
            let grant = match grant {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(%shard, error = %e, "no permit; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(retry.next_delay()) => {}
                        _ = cancel.cancelled() => return Err(Abort::Cancelled),
                        _ = drain.cancelled() => return Err(Abort::Drained),
                    }
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
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
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
                    self.status.set_token_ok(true);
                    return Ok((page, grant.slot));
                }
                Err(e) => e,
            };
            drop(grant.slot);
            let status = match &e {
                ApiError::Status { status, .. } => status.to_string(),
                other => other.kind().to_string(),
            };
            malformed = if matches!(e, ApiError::Malformed(_)) {
                malformed + 1
            } else {
                0
            };
            if malformed >= MALFORMED_TRIES {
                tel.request_failed(&status, started.elapsed(), &e, None);
                return Err(Abort::Park(ApiError::Malformed(format!(
                    "the same page was malformed {malformed} times in a row: {}",
                    crate::cas::one_line(&e.to_string(), 300)
                ))));
            }
            let wait = match e.action() {
                Action::Retry => {
                    let w = retry.next_delay();
                    tel.request_failed(&status, started.elapsed(), &e, Some(w));
                    w
                }
                Action::RateLimited(asked) => {
                    tel.request_failed(&status, started.elapsed(), &e, None);
                    let pause = asked
                        .unwrap_or(DEFAULT_RATE_LIMIT_PAUSE)
                        .min(lane.settings.max_pause);
                    tel.rate_limited(pause, asked);
                    lane.scheduler.pause(pause).await;
                    Duration::ZERO
                }
                Action::Authentication if lane.source.reload_credentials() => {
                    // The token file holds a new token (rotated): send
                    // again with it rather than back off.
                    tel.request_failed(&status, started.elapsed(), &e, Some(Duration::ZERO));
                    tracing::warn!(%shard, error = %e, "the API refused the token; the token file holds a new one, asking again with it");
                    Duration::ZERO
                }
                Action::Authentication => {
                    tel.request_failed(&status, started.elapsed(), &e, Some(AUTH_PAUSE));
                    self.status.set_token_ok(false);
                    tracing::error!(%shard, error = %e, "the API refused the token; every shard backs off");
                    lane.scheduler.pause(AUTH_PAUSE).await;
                    Duration::ZERO
                }
                Action::Park => {
                    tel.request_failed(&status, started.elapsed(), &e, None);
                    return Err(Abort::Park(e));
                }
            };
            self.status.set_error(shard, &e);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return Err(Abort::Cancelled),
                _ = drain.cancelled() => return Err(Abort::Drained),
            }
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
