//! Window planning and cursor arithmetic.
//!
//! A shard's **cursor** is the end of its last fully delivered window. The
//! next window is `[cursor − overlap, min(now − lag, start + max)]`:
//! - the overlap re-reads events that reached the API late (their
//!   duplicates are removed by id);
//! - `lag` keeps the window's end behind the API's own ingestion;
//! - a window never exceeds 3 days (the API's limit) and never starts before
//!   the API's 72-hour reach (less a safety margin for the time the request
//!   takes): a cursor older than that skips a **gap**, which is returned so
//!   the caller logs and counts it; it is never silent.
//!
//! The cursor moves to a window's end only after every event of the window
//! was acknowledged by the sink (see `worker`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{WindowConfig, API_REACH};

/// Kept between the oldest start we ask for and the API's 72 h reach, so a
/// request that waits for a permit is not refused with a 400.
pub const REACH_MARGIN: Duration = Duration::from_secs(15 * 60);

/// A time range requested from the API, `[start, end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    pub fn duration(&self) -> Duration {
        (self.end - self.start).to_std().unwrap_or_default()
    }
}

/// The outcome of planning one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Fetch this window. `gap` is data beyond the API's reach that had to be
    /// skipped between the cursor and the window's start.
    Due { window: Window, gap: Duration },
    /// Nothing worth a request yet; plan again after this long.
    NotDue(Duration),
}

/// Plans windows from a shard's cursor.
#[derive(Debug, Clone, Copy)]
pub struct Planner {
    lag: chrono::Duration,
    overlap: chrono::Duration,
    max: chrono::Duration,
    min_interval: chrono::Duration,
}

fn cd(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Planner {
    pub fn new(cfg: &WindowConfig) -> Self {
        Self {
            lag: cd(cfg.lag.get()),
            overlap: cd(cfg.overlap.get()),
            max: cd(cfg.max.get()),
            min_interval: cd(cfg.min_interval.get()),
        }
    }

    /// How long ids must be remembered to remove the duplicates the overlap re-reads.
    pub fn dedup_horizon(&self) -> Duration {
        ((self.overlap + self.lag) * 2 + self.min_interval)
            .to_std()
            .unwrap_or_default()
            + Duration::from_secs(600)
    }

    /// The next window for a shard whose cursor is `cursor`, at `now`.
    pub fn plan(&self, cursor: DateTime<Utc>, now: DateTime<Utc>) -> Plan {
        let target_end = now - self.lag;
        let behind = target_end - cursor;
        if behind < self.min_interval || behind <= chrono::Duration::zero() {
            let wait = (self.min_interval - behind).max(chrono::Duration::seconds(1));
            return Plan::NotDue(wait.to_std().unwrap_or(Duration::from_secs(1)));
        }
        let floor = now - cd(API_REACH) + cd(REACH_MARGIN);
        let mut start = cursor - self.overlap;
        let mut gap = Duration::ZERO;
        if start < floor {
            if cursor < floor {
                gap = (floor - cursor).to_std().unwrap_or_default();
            }
            start = floor;
        }
        let end = target_end.min(start + self.max);
        if end <= start {
            return Plan::NotDue(Duration::from_secs(1));
        }
        Plan::Due {
            window: Window { start, end },
            gap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, WindowConfig};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn planner() -> Planner {
        Planner::new(&WindowConfig::default())
    }

    #[test]
    fn overlap_and_lag() {
        let now = t("2026-01-10T12:00:00Z");
        let cursor = t("2026-01-10T11:00:00Z");
        match planner().plan(cursor, now) {
            Plan::Due { window, gap } => {
                assert_eq!(window.start, t("2026-01-10T10:58:00Z"));
                assert_eq!(window.end, t("2026-01-10T11:59:00Z"));
                assert_eq!(gap, Duration::ZERO);
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn not_due_when_up_to_date() {
        let now = t("2026-01-10T12:00:00Z");
        let cursor = t("2026-01-10T11:58:50Z");
        assert_eq!(
            planner().plan(cursor, now),
            Plan::NotDue(Duration::from_secs(20))
        );
        // A cursor ahead of now − lag (clock moved back) is not due either.
        assert!(matches!(
            planner().plan(t("2026-01-10T12:30:00Z"), now),
            Plan::NotDue(_)
        ));
    }

    #[test]
    fn clamped_to_72h_reach_with_gap() {
        let now = t("2026-01-10T12:00:00Z");
        let cursor = t("2026-01-06T12:00:00Z"); // 96 h behind
        match planner().plan(cursor, now) {
            Plan::Due { window, gap } => {
                let floor = now - chrono::Duration::hours(72) + chrono::Duration::minutes(15);
                assert_eq!(window.start, floor);
                assert_eq!(gap, (floor - cursor).to_std().unwrap());
                assert!(window.duration() <= API_REACH);
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn overlap_clamped_without_gap() {
        // The cursor is inside the reach, only the overlap would cross it.
        let now = t("2026-01-10T12:00:00Z");
        let cursor = now - chrono::Duration::hours(72) + chrono::Duration::minutes(16);
        match planner().plan(cursor, now) {
            Plan::Due { gap, window } => {
                assert_eq!(gap, Duration::ZERO);
                assert!(window.start > cursor - chrono::Duration::minutes(2));
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn capped_by_max_window() {
        let cfg = WindowConfig {
            max: Dur::secs(3600),
            ..WindowConfig::default()
        };
        let now = t("2026-01-10T12:00:00Z");
        let cursor = t("2026-01-10T06:00:00Z");
        match Planner::new(&cfg).plan(cursor, now) {
            Plan::Due { window, .. } => {
                assert_eq!(window.start, t("2026-01-10T05:58:00Z"));
                assert_eq!(window.end, t("2026-01-10T06:58:00Z"));
            }
            p => panic!("{p:?}"),
        }
        // The default max is 3 days: a window never exceeds it even with the overlap.
        let cursor = now - chrono::Duration::hours(71);
        if let Plan::Due { window, .. } = planner().plan(cursor, now) {
            assert!(window.duration() <= crate::config::API_MAX_WINDOW);
        }
    }
}
