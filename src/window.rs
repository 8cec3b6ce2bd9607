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
//! was acknowledged by the sink (see [`crate::runner`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::field::{parse_duration, ConfigError, Dur};
use crate::shard::Stream;

/// The API's reach into the past, counted from the time of the request.
pub const API_REACH: Duration = Duration::from_secs(72 * 3600);
/// The longest window the API accepts in one request.
pub const API_MAX_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);

/// The `window` section.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Where a shard without a cursor starts: `now`, a duration back, or an RFC 3339 time.
    pub start_from: StartFrom,
    /// How far behind now a window ends (events reach the API late).
    pub lag: Dur,
    /// How far back each window re-reads before the cursor (late events).
    pub overlap: Dur,
    /// The longest window (at most 3 days).
    pub max: Dur,
    /// A shard is polled again only when its cursor is this far behind `now − lag`.
    pub min_interval: Dur,
    /// During catch-up, a window is sized to hold about this many pages,
    /// from the event density the shard has seen (at most `max` long).
    pub max_pages: u32,
    /// The most pages one window may take: a window with more (a next link
    /// that never ends) parks its shard.
    pub page_cap: u32,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            start_from: StartFrom::Ago(Duration::from_secs(3600)),
            lag: Dur::secs(60),
            overlap: Dur::secs(120),
            max: Dur(API_MAX_WINDOW),
            min_interval: Dur::secs(30),
            max_pages: 20,
            page_cap: 10_000,
        }
    }
}

impl WindowConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max.get().is_zero() || self.max.get() > API_MAX_WINDOW {
            return Err(ConfigError::new(
                "window.max",
                format!("{} is out of range: more than 0 and at most 3d", self.max),
            ));
        }
        if self.lag.get() > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new("window.lag", "must be at most 1d"));
        }
        if self.overlap.get() >= API_REACH / 2 {
            return Err(ConfigError::new("window.overlap", "must be less than 36h"));
        }
        if self.min_interval.get() > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "window.min_interval",
                "must be at most 1d",
            ));
        }
        if self.max_pages == 0 || self.max_pages > 10_000 {
            return Err(ConfigError::new(
                "window.max_pages",
                format!("{} is out of range: 1 to 10000", self.max_pages),
            ));
        }
        if self.page_cap < self.max_pages || self.page_cap > 1_000_000 {
            return Err(ConfigError::new(
                "window.page_cap",
                format!(
                    "{} is out of range: window.max_pages ({}) to 1000000",
                    self.page_cap, self.max_pages
                ),
            ));
        }
        if let StartFrom::Ago(d) = self.start_from {
            // The longest reach of a stream; a pair of a shorter one starts
            // at its own (security events: 72 h), the gap logged.
            if d > Stream::Quarantine.reach() {
                return Err(ConfigError::new(
                    "window.start_from",
                    format!(
                        "{} reaches past the API's limit: 7d (quarantine events; security events start at most 72h back)",
                        Dur(d)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Where a shard with no cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The current time: only new events.
    Now,
    /// This long before the start of the process.
    Ago(Duration),
    /// A fixed time (clamped to the API's reach at run time, the gap logged).
    At(DateTime<Utc>),
}

impl StartFrom {
    /// The initial cursor for a shard that has none.
    pub fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            StartFrom::Now => now,
            StartFrom::Ago(d) => now - chrono::Duration::from_std(d).unwrap_or_default(),
            StartFrom::At(t) => t,
        }
    }
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "now" {
            return Ok(StartFrom::Now);
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
            return Ok(StartFrom::At(t.with_timezone(&Utc)));
        }
        parse_duration(&s).map(StartFrom::Ago).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{s}` is not `now`, a duration back (e.g. 2h) or an RFC 3339 time"
            ))
        })
    }
}

impl schemars::JsonSchema for StartFrom {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StartFrom".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`now`, a duration back (e.g. 2h, at most 72h) or an RFC 3339 time.",
            "type": "string"
        })
    }
}

impl Serialize for StartFrom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StartFrom::Now => s.serialize_str("now"),
            StartFrom::Ago(d) => s.collect_str(&Dur(*d)),
            StartFrom::At(t) => s.collect_str(&t.to_rfc3339()),
        }
    }
}

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
    /// How far back the API answers for the pair's stream.
    reach: chrono::Duration,
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
            reach: cd(API_REACH),
        }
    }

    /// The same planner for a pair of `stream`: its windows start no
    /// further back than that stream's reach (7 days for quarantine events).
    pub fn for_stream(mut self, stream: Stream) -> Self {
        self.reach = cd(stream.reach());
        self
    }

    /// How long a window should be to hold about `pages` pages of
    /// `page_limit` events at `per_second` events a second; `None` (the
    /// configured maximum) when nothing was seen yet. Never under a minute.
    pub fn sized(pages: u32, page_limit: u32, per_second: Option<f64>) -> Option<Duration> {
        let rate = per_second.filter(|r| r.is_finite() && *r > 0.0)?;
        let secs = f64::from(pages) * f64::from(page_limit) / rate;
        Some(Duration::from_secs_f64(
            secs.clamp(60.0, API_MAX_WINDOW.as_secs_f64()),
        ))
    }

    /// `window.min_interval`.
    pub fn min_interval(&self) -> Duration {
        self.min_interval.to_std().unwrap_or_default()
    }

    /// How far the cursor is behind `now − lag` (zero when ahead).
    /// How far back each window starts before the cursor.
    pub fn overlap(&self) -> chrono::Duration {
        self.overlap
    }

    /// Whether `window` ends at the live edge (`now − lag`, to the second):
    /// a steady-state window, not a catch-up one cut at its longest.
    pub fn at_edge(&self, window: &Window, now: DateTime<Utc>) -> bool {
        window.end + chrono::Duration::seconds(1) >= now - self.lag
    }

    /// Moves the end of a window planned at the live edge to the live edge
    /// of `now`; whether it moved.
    pub fn stretch(&self, window: &mut Window, now: DateTime<Utc>) -> bool {
        let edge = now - self.lag;
        let moved = edge > window.end;
        if moved {
            window.end = edge;
        }
        moved
    }

    pub fn behind(&self, cursor: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
        (now - self.lag - cursor).to_std().unwrap_or_default()
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
        self.plan_sized(cursor, now, None)
    }

    /// As [`Planner::plan`], with the window at most `longest` long (the
    /// length that holds the pages wanted at the density seen).
    pub fn plan_sized(
        &self,
        cursor: DateTime<Utc>,
        now: DateTime<Utc>,
        longest: Option<Duration>,
    ) -> Plan {
        self.plan_every(cursor, now, longest, Duration::ZERO)
    }

    /// As [`Planner::plan_sized`], for a pair polled every `interval` (the
    /// scheduler's choice from its activity; never under `min_interval`).
    pub fn plan_every(
        &self,
        cursor: DateTime<Utc>,
        now: DateTime<Utc>,
        longest: Option<Duration>,
        interval: Duration,
    ) -> Plan {
        let target_end = now - self.lag;
        let behind = target_end - cursor;
        let every = self.min_interval.max(cd(interval));
        if behind < every || behind <= chrono::Duration::zero() {
            let wait = (every - behind).max(chrono::Duration::seconds(1));
            return Plan::NotDue(wait.to_std().unwrap_or(Duration::from_secs(1)));
        }
        let floor = now - self.reach + cd(REACH_MARGIN);
        let mut start = cursor - self.overlap;
        let mut gap = Duration::ZERO;
        if start < floor {
            if cursor < floor {
                gap = (floor - cursor).to_std().unwrap_or_default();
            }
            start = floor;
        }
        let max = longest.map_or(self.max, |l| self.max.min(cd(l)));
        let end = target_end.min(start + max);
        if end <= start {
            return Plan::NotDue(Duration::from_secs(1));
        }
        Plan::Due {
            window: Window { start, end },
            gap,
        }
    }
}

/// A time as the bridge writes it everywhere, window bounds in records and
/// in requests (the form the API accepts): `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn planner() -> Planner {
        Planner::new(&WindowConfig::default())
    }

    #[test]
    fn each_stream_plans_within_its_own_reach() {
        let now = t("2026-01-10T12:00:00Z");
        let six_days = t("2026-01-04T12:00:00Z");
        // Security events: the window starts at the 72 h floor, the rest is
        // a gap (logged and counted by the runner).
        let Plan::Due { window, gap } = planner().plan(six_days, now) else {
            panic!("due")
        };
        assert_eq!(
            window.start,
            now - chrono::Duration::hours(72) + cd(REACH_MARGIN)
        );
        assert!(gap > Duration::from_secs(3 * 86_400 - 600), "{gap:?}");
        // Quarantine events reach 7 days: nothing is skipped.
        let q = planner().for_stream(Stream::Quarantine);
        let Plan::Due { window, gap } = q.plan(six_days, now) else {
            panic!("due")
        };
        assert_eq!(window.start, six_days - chrono::Duration::seconds(120));
        assert_eq!(gap, Duration::ZERO);
        // Eight days back: clamped to the 7 days, the day beyond a gap.
        let Plan::Due { window, gap } = q.plan(t("2026-01-02T12:00:00Z"), now) else {
            panic!("due")
        };
        assert_eq!(
            window.start,
            now - chrono::Duration::days(7) + cd(REACH_MARGIN)
        );
        assert!(gap >= Duration::from_secs(86_400), "{gap:?}");
    }

    #[test]
    fn a_window_at_the_live_edge_stretches_to_when_its_permit_came() {
        let p = planner();
        let now = t("2026-01-10T12:00:00Z");
        let Plan::Due { mut window, .. } = p.plan(t("2026-01-10T11:50:00Z"), now) else {
            panic!("due")
        };
        assert!(p.at_edge(&window, now));
        // The permit came 45 s later: the window ends at that time − lag.
        assert!(p.stretch(&mut window, now + chrono::Duration::seconds(45)));
        assert_eq!(window.end, t("2026-01-10T11:59:45Z"));
        assert!(!p.stretch(&mut window, now), "never shortened");
        assert_eq!(window.end, t("2026-01-10T11:59:45Z"));
        // A catch-up window, cut at its longest, is not at the edge.
        let p = Planner::new(&WindowConfig {
            max: Dur::secs(3600),
            ..WindowConfig::default()
        });
        let Plan::Due { window, .. } = p.plan(t("2026-01-09T12:00:00Z"), now) else {
            panic!("due")
        };
        assert!(window.end < now - chrono::Duration::hours(1));
        assert!(!p.at_edge(&window, now));
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
        match planner().plan(cursor, now) {
            Plan::Due { window, .. } => assert!(window.duration() <= API_MAX_WINDOW),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn start_from_forms() {
        let now = t("2026-01-10T12:00:00Z");
        let p = |s: &str| serde_json::from_str::<StartFrom>(&format!("\"{s}\"")).unwrap();
        assert_eq!(p("now").resolve(now), now);
        assert_eq!(p("2h").resolve(now), t("2026-01-10T10:00:00Z"));
        assert_eq!(
            p("2026-01-09T00:00:00Z").resolve(now),
            t("2026-01-09T00:00:00Z")
        );
        assert!(serde_json::from_str::<StartFrom>("\"yesterday\"").is_err());
        assert_eq!(serde_json::to_string(&p("90m")).unwrap(), "\"90m\"");
    }

    #[test]
    fn config_rules_name_their_field() {
        let bad = |f: fn(&mut WindowConfig)| {
            let mut c = WindowConfig::default();
            f(&mut c);
            c.validate().unwrap_err().field
        };
        assert_eq!(bad(|c| c.max = Dur::secs(4 * 86_400)), "window.max");
        assert_eq!(bad(|c| c.max = Dur::secs(0)), "window.max");
        assert_eq!(bad(|c| c.lag = Dur::secs(2 * 86_400)), "window.lag");
        assert_eq!(bad(|c| c.overlap = Dur::secs(36 * 3600)), "window.overlap");
        assert_eq!(
            bad(|c| c.min_interval = Dur::secs(2 * 86_400)),
            "window.min_interval"
        );
        assert_eq!(
            bad(|c| c.start_from = StartFrom::Ago(Duration::from_secs(8 * 86_400))),
            "window.start_from"
        );
        assert!(WindowConfig::default().validate().is_ok());
    }

    #[test]
    fn dedup_horizon_covers_overlap_and_lag() {
        let h = planner().dedup_horizon();
        // (120 s + 60 s) × 2 + 30 s + 600 s
        assert_eq!(h, Duration::from_secs(990));
    }

    #[test]
    fn successive_windows_cover_time_without_holes() {
        // Windows planned from each other's end re-read the overlap and
        // never leave a second between them unrequested.
        let p = planner();
        let mut now = t("2026-01-10T12:00:00Z");
        let mut cursor = t("2026-01-10T09:00:00Z");
        for _ in 0..5 {
            match p.plan(cursor, now) {
                Plan::Due { window, gap } => {
                    assert_eq!(gap, Duration::ZERO);
                    assert!(window.start <= cursor);
                    assert!(window.end > cursor);
                    cursor = window.end;
                }
                Plan::NotDue(_) => {}
            }
            now += chrono::Duration::minutes(7);
        }
        assert_eq!(
            cursor,
            now - chrono::Duration::minutes(7) - chrono::Duration::seconds(60)
        );
    }

    #[test]
    fn windows_are_sized_from_the_density_seen() {
        // 200 events an hour, pages of 500, 20 pages: 50 hours.
        let d = Planner::sized(20, 500, Some(200.0 / 3600.0)).unwrap();
        assert_eq!(d.as_secs(), 50 * 3600);
        // Nothing seen yet: the configured maximum.
        assert_eq!(Planner::sized(20, 500, None), None);
        assert_eq!(Planner::sized(20, 500, Some(0.0)), None);
        // Very dense: never under a minute; very sparse: never over 3 days.
        assert_eq!(Planner::sized(1, 1, Some(1e9)).unwrap().as_secs(), 60);
        assert_eq!(Planner::sized(20, 500, Some(1e-9)).unwrap(), API_MAX_WINDOW);
        let now = t("2026-01-10T12:00:00Z");
        let cursor = t("2026-01-08T00:00:00Z");
        match planner().plan_sized(cursor, now, Some(Duration::from_secs(3600))) {
            Plan::Due { window, .. } => {
                assert_eq!(
                    window.end,
                    cursor - chrono::Duration::minutes(2) + chrono::Duration::hours(1)
                );
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn max_pages_is_bounded() {
        let c = WindowConfig {
            max_pages: 0,
            ..WindowConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "window.max_pages");
    }
}
