//! `cas-bridge replay`: re-delivers a pair's events of a past range, under
//! the token's budget, without touching any cursor, in-window progress or
//! the fleet's dedup memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::cas::{Decision, Page, Policy};
use crate::coord::memory::MemoryDedup;
use crate::coord::{Budget, DedupStore, Priority};
use crate::field::secs;
use crate::publish::{PublishError, Publisher};
use crate::shard::Shard;
use crate::source::PageSource;
use crate::status::StatusBoard;
use crate::telemetry::{Stats, Telemetry};
use crate::window::{Window, API_REACH};

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
    /// The longest pause any answer of the API may impose on the token's
    /// budget (`budget.max_pause`).
    pub max_pause: Duration,
}

impl ReplayRange {
    /// Refuses a range the API would refuse, naming the limit.
    pub fn check(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let stream = self.shard.stream();
        let reach = chrono::Duration::from_std(stream.reach() - REACH_MARGIN)?;
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
                "--from ({}) reaches past the API's {} limit for {}: the earliest a replay can start now is {} ({} back, less 5 min for the requests to be sent)",
                fmt(self.from),
                stream.reach_text(),
                match stream {
                    crate::shard::Stream::Security => "security events",
                    crate::shard::Stream::Quarantine => "quarantine events",
                },
                fmt(earliest),
                stream.reach_text()
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
    let status = StatusBoard::new(Some(crate::sink::probe(publisher.sink())));
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
            let policy = Policy::command(range.max_pause);
            let page = match fetch(source, budget, policy, &url, &mut p.requests, cancel).await {
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

/// One page, under the one API error policy ([`Policy::command`]):
/// transient failures after a backoff, a 429 pauses the whole budget
/// (capped at `budget.max_pause`), a refused token a few times. A failure
/// that retrying cannot mend ends the replay with its reason.
async fn fetch(
    source: &dyn PageSource,
    budget: &dyn Budget,
    policy: Policy,
    url: &url::Url,
    requests: &mut u64,
    cancel: &CancellationToken,
) -> Result<Page, String> {
    let mut attempts = policy.attempts();
    loop {
        let permit = tokio::select! {
            p = budget.acquire(Priority::Active) => p,
            _ = cancel.cancelled() => return Err("cancelled".into()),
        };
        let wait = match permit {
            Err(e) => {
                let wait = attempts.no_permit();
                tracing::warn!(error = %crate::field::chain(&e), retry_in_s = secs(wait), "no permit; retrying");
                wait
            }
            Ok(permit) => {
                *requests += 1;
                let res = tokio::select! {
                    r = source.fetch(permit, url) => r,
                    _ = cancel.cancelled() => return Err("cancelled".into()),
                };
                let e = match res {
                    Ok(page) => return Ok(page),
                    Err(e) => e,
                };
                let shown = crate::field::chain(&e).to_string();
                let decision = attempts.decide(e, || source.reload_credentials());
                match &decision {
                    Decision::Retry(w) => {
                        tracing::warn!(error = %shown, retry_in_s = secs(*w), "request failed; retrying")
                    }
                    Decision::Throttle { pause, asked } => {
                        tracing::warn!(error = %shown, pause_s = secs(*pause), asked_s = asked.map(secs), "throttled: the whole budget pauses");
                    }
                    Decision::NewToken => {
                        tracing::warn!(error = %shown, "the API refused the token; the token file holds a new one, asking again with it")
                    }
                    Decision::TokenRefused { pause } => {
                        tracing::error!(error = %shown, pause_s = secs(*pause), "the API refused the token; the whole budget pauses")
                    }
                    Decision::GiveUp(e) => {
                        return Err(if attempts.refusals() > 0 {
                            format!(
                                "the API refused the token {} times: {e}",
                                attempts.refusals()
                            )
                        } else {
                            e.to_string()
                        })
                    }
                }
                if let Some(pause) = decision.budget_pause() {
                    budget.pause(pause).await;
                }
                decision.wait()
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
            max_pause: Duration::from_secs(15),
        }
    }

    #[test]
    fn each_stream_replays_within_its_own_reach() {
        let now = Utc::now();
        let five_days = |event: &str| ReplayRange {
            shard: Shard::new("exchange", event),
            from: now - chrono::Duration::days(5),
            to: now - chrono::Duration::days(5) + chrono::Duration::hours(1),
            window: Duration::from_secs(3600),
            page_cap: 100,
            max_pause: Duration::from_secs(15),
        };
        five_days("quarantine").check(now).unwrap();
        let e = five_days("dlp").check(now).unwrap_err().to_string();
        assert!(e.contains("72 h limit for security events"), "{e}");
        let mut eight = five_days("quarantine");
        eight.from = now - chrono::Duration::days(8);
        let e = eight.check(now).unwrap_err().to_string();
        assert!(e.contains("7 days limit for quarantine events"), "{e}");
    }

    /// A replay of one window over `script`, under a 15 s `max_pause`,
    /// with time paused: the summary, the virtual time it took, the sink.
    async fn replay_over(
        script: Vec<Result<Page, crate::cas::ApiError>>,
    ) -> (ReplaySummary, Duration, Arc<crate::fakes::FakeSink>) {
        use crate::coord::memory::MemoryBudget;
        let source = crate::fakes::FakeSource::new(script);
        let budget = MemoryBudget::new(crate::coord::BudgetConfig {
            per_minute: 600,
            per_day: 100_000,
            ..Default::default()
        });
        let sink = Arc::new(crate::fakes::FakeSink::default());
        let publisher = Publisher::new(
            crate::validate::Registry::load(None).unwrap(),
            sink.clone(),
            crate::sink::Topics::new("cas.{service}.{event}", "cas.deadletter").unwrap(),
            own_dedup(),
        );
        let now = Utc::now();
        let r = ReplayRange {
            shard: Shard::new("exchange", "dlp"),
            from: now - chrono::Duration::hours(2),
            to: now - chrono::Duration::hours(1),
            window: Duration::from_secs(3600),
            page_cap: 100,
            max_pause: Duration::from_secs(15),
        };
        let started = tokio::time::Instant::now();
        let summary = replay(
            &r,
            source.as_ref(),
            &budget,
            &publisher,
            |_| {},
            &CancellationToken::new(),
        )
        .await;
        (summary, started.elapsed(), sink)
    }

    #[tokio::test(start_paused = true)]
    async fn a_far_future_or_huge_retry_after_pauses_at_most_max_pause() {
        use crate::cas::parse_retry_after;
        use crate::fakes::{event, page, status};
        for header in [
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "18446744073709551615",
            "3600",
        ] {
            let shard = Shard::new("exchange", "dlp");
            let (e, id) = event(&shard, 1, 0);
            let asked = parse_retry_after(header);
            assert!(asked.is_some(), "{header}");
            let (summary, took, sink) = replay_over(vec![
                Err(status(429, asked)),
                Err(status(429, asked)),
                Ok(page(vec![e], None)),
            ])
            .await;
            assert_eq!(summary.stopped, None, "{header}");
            assert_eq!(summary.progress.requests, 3, "{header}");
            assert_eq!(sink.ids_on("cas.exchange.dlp"), vec![id], "{header}");
            // Two pauses of at most 15 s each (time is paused: exact).
            assert!(took >= Duration::from_secs(15), "{header}: {took:?}");
            assert!(took <= Duration::from_secs(31), "{header}: {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_ends_the_replay_after_three_tries() {
        let (summary, _, sink) = replay_over(vec![
            Err(crate::fakes::status(401, None)),
            Err(crate::fakes::status(401, None)),
            Err(crate::fakes::status(401, None)),
        ])
        .await;
        let why = summary.stopped.expect("stopped");
        assert!(why.contains("refused the token 3 times"), "{why}");
        assert_eq!(summary.progress.requests, 3);
        assert!(sink.accepted().is_empty());
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
