//! `cas-bridge replay`: re-delivers a pair's events of a past range, under
//! the token's budget, without touching any cursor, in-window progress or
//! the fleet's dedup memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::cas::{Action, ApiError, Page};
use crate::coord::memory::MemoryDedup;
use crate::coord::{Budget, DedupStore, Priority};
use crate::publish::{PublishError, Publisher};
use crate::retry::Backoff;
use crate::shard::Shard;
use crate::source::PageSource;
use crate::status::StatusBoard;
use crate::telemetry::{Stats, Telemetry};
use crate::window::{Window, API_REACH};

/// How long a replay waits after a 429 that named no wait.
const RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);
/// How long every request waits after the token was refused.
const AUTH_PAUSE: Duration = Duration::from_secs(60);
/// Requests refused for the token in a row before a replay gives up.
const AUTH_TRIES: u32 = 3;
/// The earliest `--from` must leave the requests this long to be sent
/// before the API's 72 hours pass it.
pub const REACH_MARGIN: Duration = Duration::from_secs(300);

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayRange {
    pub shard: Shard,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The longest window of one request sequence: a shorter one shows
    /// progress sooner, and costs at least one request each.
    pub window: Duration,
    /// The most pages one window may take (`window.page_cap`).
    pub page_cap: u32,
}

impl ReplayRange {
    /// Refuses a range the API would refuse, naming the limit.
    pub fn check(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let reach = chrono::Duration::from_std(API_REACH - REACH_MARGIN)?;
        let earliest = now - reach;
        if self.from >= self.to {
            anyhow::bail!(
                "--from ({}) must be before --to ({})",
                fmt(self.from),
                fmt(self.to)
            );
        }
        if self.to > now {
            anyhow::bail!(
                "--to ({}) is in the future (now {})",
                fmt(self.to),
                fmt(now)
            );
        }
        if self.from < earliest {
            anyhow::bail!(
                "--from ({}) reaches past the API's 72 h limit: the earliest a replay can start now is {} (72 h back, less 5 min for the requests to be sent)",
                fmt(self.from),
                fmt(earliest)
            );
        }
        if self.window.is_zero() {
            anyhow::bail!("--window must be longer than zero");
        }
        Ok(())
    }

    /// The windows, in order, each at most `window` long.
    pub fn windows(&self) -> Vec<Window> {
        let step = chrono::Duration::from_std(self.window).unwrap_or(chrono::Duration::MAX);
        let mut out = Vec::new();
        let mut start = self.from;
        while start < self.to {
            let end = start
                .checked_add_signed(step)
                .unwrap_or(self.to)
                .min(self.to);
            out.push(Window { start, end });
            start = end;
        }
        out
    }
}

fn fmt(t: DateTime<Utc>) -> String {
    crate::cas::format_time(t)
}

/// Where a replay is, after each page.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayProgress {
    pub windows_done: usize,
    pub windows: usize,
    pub pages: u64,
    pub requests: u64,
    pub published: u64,
    pub dead_lettered: u64,
    /// This report is the one made when a window ended (the others come
    /// after each page).
    pub window_ended: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    pub progress: ReplayProgress,
    /// Events of the range the API sent twice (left out).
    pub duplicates: u64,
    pub elapsed: Duration,
    /// Set when the replay stopped before the end of the range.
    pub stopped: Option<String>,
}

/// The dedup memory a replay's publisher uses: its own, in this process,
/// so an event the API sends twice (in two windows that meet, or again on
/// a retried page) is published once, while the fleet's memory is neither
/// read nor written: a replay sends again what the fleet delivered.
pub fn own_dedup() -> Arc<dyn DedupStore> {
    Arc::new(MemoryDedup::new(API_REACH))
}

/// Re-delivers `range` through `publisher` (built over [`own_dedup`]),
/// taking a permit from `budget` for every request. `progress` is called
/// after every page.
pub async fn replay(
    range: &ReplayRange,
    source: &dyn PageSource,
    budget: &dyn Budget,
    publisher: &Publisher,
    mut progress: impl FnMut(&ReplayProgress),
    cancel: &CancellationToken,
) -> ReplaySummary {
    let started = Instant::now();
    let telemetry = Telemetry::new();
    let tel = telemetry.shard(&range.shard);
    let status = StatusBoard::new(Some(publisher.sink().clone()));
    let stats: Arc<Stats> = telemetry.stats().clone();
    let windows = range.windows();
    let mut p = ReplayProgress {
        windows: windows.len(),
        ..Default::default()
    };
    let mut stopped = None;
    'windows: for w in &windows {
        let mut url = source.first_page(&range.shard, w);
        let mut pages = 0u32;
        loop {
            if pages >= range.page_cap {
                stopped = Some(format!(
                    "window {}..{} took more than window.page_cap ({}) pages",
                    fmt(w.start),
                    fmt(w.end),
                    range.page_cap
                ));
                break 'windows;
            }
            let page = match fetch(source, budget, &url, &mut p.requests, cancel).await {
                Ok(page) => page,
                Err(e) => {
                    stopped = Some(e);
                    break 'windows;
                }
            };
            pages += 1;
            p.pages += 1;
            let next = page.next_link.clone();
            match publisher
                .publish_page(&range.shard, w, page, &tel, &status, cancel)
                .await
            {
                Ok(()) => {}
                Err(PublishError::Cancelled) => {
                    stopped = Some("cancelled".into());
                    break 'windows;
                }
                Err(PublishError::Stopped(e)) => {
                    stopped = Some(format!("the sink refuses the records: {e}"));
                    break 'windows;
                }
            }
            p.published = Stats::get(&stats.events_published);
            p.dead_lettered = Stats::get(&stats.dead_lettered);
            p.window_ended = false;
            progress(&p);
            match next {
                Some(link) => match source.next_page(&link) {
                    Ok(u) => url = u,
                    Err(e) => {
                        stopped = Some(e.to_string());
                        break 'windows;
                    }
                },
                None => break,
            }
        }
        p.windows_done += 1;
        p.window_ended = true;
        progress(&p);
    }
    ReplaySummary {
        progress: p,
        duplicates: Stats::get(&stats.duplicates_skipped),
        elapsed: started.elapsed(),
        stopped,
    }
}

/// One page, retried as the fleet retries it: transient failures after a
/// backoff, a 429 pauses the whole budget, a refused token a few times.
/// A failure that retrying cannot mend ends the replay with its reason.
async fn fetch(
    source: &dyn PageSource,
    budget: &dyn Budget,
    url: &url::Url,
    requests: &mut u64,
    cancel: &CancellationToken,
) -> Result<Page, String> {
    let mut retry = Backoff::request();
    let mut refused = 0u32;
    loop {
        let permit = tokio::select! {
            p = budget.acquire(Priority::Active) => p,
            _ = cancel.cancelled() => return Err("cancelled".into()),
        };
        let wait = match permit {
            Err(e) => {
                tracing::warn!(error = %e, "no permit; retrying");
                retry.next_delay()
            }
            Ok(permit) => {
                *requests += 1;
                let res = tokio::select! {
                    r = source.fetch(permit, url) => r,
                    _ = cancel.cancelled() => return Err("cancelled".into()),
                };
                let e: ApiError = match res {
                    Ok(page) => return Ok(page),
                    Err(e) => e,
                };
                match e.action() {
                    Action::Retry => {
                        let w = retry.next_delay();
                        tracing::warn!(error = %e, retry_in = ?w, "request failed; retrying");
                        w
                    }
                    Action::RateLimited(asked) => {
                        let pause = asked.unwrap_or(RATE_LIMIT_PAUSE);
                        tracing::warn!(error = %e, pause = ?pause, "throttled: the whole budget pauses");
                        budget.pause(pause).await;
                        Duration::ZERO
                    }
                    Action::Authentication => {
                        refused += 1;
                        if refused >= AUTH_TRIES {
                            return Err(format!("the API refused the token {refused} times: {e}"));
                        }
                        tracing::error!(error = %e, "the API refused the token; the whole budget pauses");
                        budget.pause(AUTH_PAUSE).await;
                        Duration::ZERO
                    }
                    Action::Park => return Err(e.to_string()),
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return Err("cancelled".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn range(from: &str, to: &str, window: u64) -> ReplayRange {
        ReplayRange {
            shard: Shard::new("exchange", "dlp"),
            from: at(from),
            to: at(to),
            window: Duration::from_secs(window),
            page_cap: 100,
        }
    }

    #[test]
    fn a_range_is_cut_into_windows_that_meet() {
        let r = range("2026-12-01T10:00:00Z", "2026-12-01T12:30:00Z", 3600);
        let w = r.windows();
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].start, r.from);
        assert_eq!(w[2].end, r.to);
        assert!(w.windows(2).all(|p| p[0].end == p[1].start));
        assert_eq!(w[2].duration(), Duration::from_secs(1800));
    }

    #[test]
    fn ranges_the_api_would_refuse_are_refused_naming_the_limit() {
        let now = at("2026-12-02T12:00:00Z");
        let ok = range("2026-12-01T10:00:00Z", "2026-12-01T12:00:00Z", 3600);
        assert!(ok.check(now).is_ok());
        let old = range("2026-11-29T11:00:00Z", "2026-12-01T12:00:00Z", 3600);
        let e = old.check(now).unwrap_err().to_string();
        assert!(
            e.contains("72 h") && e.contains("2026-11-29T12:05:00"),
            "{e}"
        );
        let e = range("2026-12-01T12:00:00Z", "2026-12-01T10:00:00Z", 60)
            .check(now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be before"), "{e}");
        let e = range("2026-12-02T11:00:00Z", "2026-12-02T13:00:00Z", 60)
            .check(now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("future"), "{e}");
    }
}
