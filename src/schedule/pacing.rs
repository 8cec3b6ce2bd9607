//! How often a shard asks for a new window, and how much it matters.
//!
//! A shard in steady state asks when its poll interval has passed
//! ([`poll_interval`]): each pair's rate of events is tracked
//! ([`Activity`]), and the interval falls with the square root of the rate
//! — the rule that minimises the mean delay of events for a fixed number of
//! requests — between `window.min_interval` and `schedule.max_interval`. A
//! pair not seen yet starts at the minimum; a quiet pair that returns
//! events is promoted at once (the rate jumps up, and decays slowly). Its
//! request is catch-up when the cursor is far behind, quiet when the pair
//! returned nothing lately, active otherwise ([`Pacing::ask`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Ask, Priority};
use crate::field::{ConfigError, Dur};

/// How fast an activity estimate forgets: a pair that stops sending events
/// is considered quiet after about this long.
pub const ACTIVITY_MEMORY: Duration = Duration::from_secs(15 * 60);

/// The `schedule` section.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// The longest a pair goes without a poll while the budget allows it
    /// (a quiet pair is polled this often).
    pub max_interval: Dur,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            max_interval: Dur::secs(300),
        }
    }
}

impl ScheduleConfig {
    /// `min_interval` is `window.min_interval`: the longest interval may
    /// not be shorter.
    pub fn validate(&self, min_interval: Duration) -> Result<(), ConfigError> {
        let max = self.max_interval.get();
        if max < Duration::from_secs(1) || max > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "schedule.max_interval",
                format!("{} is out of range: 1s to 1d", self.max_interval),
            ));
        }
        if max < min_interval {
            return Err(ConfigError::new(
                "schedule.max_interval",
                format!(
                    "{} is shorter than window.min_interval ({})",
                    self.max_interval,
                    Dur(min_interval)
                ),
            ));
        }
        Ok(())
    }
}

/// A pair's observed rate of events.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Activity {
    /// Events a minute; `None` until the pair was polled once.
    per_minute: Option<f64>,
}

impl Activity {
    /// Folds in a window of `span` that held `events`: a higher rate is
    /// taken at once (a pair that wakes up is promoted by its first
    /// events), a lower one decays the estimate over [`ACTIVITY_MEMORY`].
    pub fn observe(&mut self, events: u64, span: Duration) {
        let secs = span.as_secs_f64().max(1.0);
        let seen = events as f64 * 60.0 / secs;
        let next = match self.per_minute {
            None => seen,
            Some(old) if seen >= old => seen,
            Some(old) => {
                let keep = (-secs / ACTIVITY_MEMORY.as_secs_f64()).exp();
                let v = old * keep + seen * (1.0 - keep);
                // Below one event in ten hours: quiet.
                if v < 1.0 / 600.0 {
                    0.0
                } else {
                    v
                }
            }
        };
        self.per_minute = Some(next);
    }

    /// Events a minute, once the pair was polled.
    pub fn per_minute(&self) -> Option<f64> {
        self.per_minute
    }

    /// Whether the pair returned nothing lately.
    pub fn is_quiet(&self) -> bool {
        self.per_minute == Some(0.0)
    }
}

/// How long a pair waits between polls in steady state, from its rate
/// (`None`: not polled yet). With `M` = `max` in minutes and `r` events a
/// minute: `max / √(1 + r·M)`, between `min` and `max` — a silent pair
/// every `max`, one event every few minutes about every `max / 2`, and
/// √(M / r) minutes for a busy one (the 1/√rate rule).
pub fn poll_interval(per_minute: Option<f64>, min: Duration, max: Duration) -> Duration {
    let max = max.max(min);
    let Some(r) = per_minute.filter(|r| r.is_finite()) else {
        return min;
    };
    let m = max.as_secs_f64() / 60.0;
    let secs = max.as_secs_f64() / (1.0 + r.max(0.0) * m).sqrt();
    Duration::from_secs_f64(secs).clamp(min, max)
}

/// One shard's pacing in a runner: its activity, when it was last polled,
/// and the bounds of its interval.
#[derive(Debug, Clone)]
pub struct Pacing {
    activity: Activity,
    last_poll: Instant,
    /// `window.min_interval`.
    min: Duration,
    /// `schedule.max_interval`.
    max: Duration,
}

impl Pacing {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            activity: Activity::default(),
            last_poll: Instant::now(),
            min,
            max,
        }
    }

    /// Events a minute, once the pair was polled.
    pub fn per_minute(&self) -> Option<f64> {
        self.activity.per_minute()
    }

    /// A window of `span` holding `events` was delivered now; returns the
    /// interval until the next one.
    pub fn polled(&mut self, events: u64, span: Duration) -> Duration {
        let first = self.activity.per_minute().is_none();
        self.activity.observe(events, span);
        self.last_poll = Instant::now();
        self.interval(first)
    }

    /// The next poll interval from the activity. Jittered down by up to a
    /// fifth, so pairs with the same rate do not ask in step; after a
    /// pair's `first` poll of a run, a quiet pair's interval is spread over
    /// a tenth to all of its length, so the pairs all polled at the start
    /// do not come back together.
    pub fn interval(&self, first: bool) -> Duration {
        let base = poll_interval(self.activity.per_minute(), self.min, self.max);
        let jitter = if first && self.activity.is_quiet() {
            0.1 + 0.9 * rand::random::<f64>()
        } else {
            0.8 + 0.2 * rand::random::<f64>()
        };
        base.mul_f64(jitter).max(self.min)
    }

    /// How much a new window matters with the cursor `behind` now − lag:
    /// catch-up when more than two longest intervals behind; quiet
    /// (promoted to active once the pair waited its longest interval since
    /// its last poll) when the pair returned nothing lately; active else.
    /// Waiting makes the cursor fall behind: past two longest intervals,
    /// the request becomes catch-up.
    pub fn ask(&self, behind: Duration) -> Ask {
        let far = self.max * 2;
        if behind > far {
            return Ask::new(Priority::Backlog);
        }
        let backlog_at = Some(Instant::now() + (far - behind));
        if self.activity.is_quiet() {
            Ask {
                priority: Priority::Quiet,
                promote_at: Some(self.last_poll + self.max),
                backlog_at,
            }
        } else {
            Ask {
                backlog_at,
                ..Ask::new(Priority::Active)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_interval_follows_the_square_root_of_the_rate() {
        let (min, max) = (Duration::from_secs(10), Duration::from_secs(300));
        assert_eq!(poll_interval(None, min, max), min, "not seen yet");
        assert_eq!(poll_interval(Some(0.0), min, max), max, "silent");
        // 5 minutes / √(1 + r·5).
        let at = |r: f64| poll_interval(Some(r), min, max).as_secs_f64();
        assert!((at(1.0) - 300.0 / 6f64.sqrt()).abs() < 0.01);
        assert!((at(20.0) - 300.0 / 101f64.sqrt()).abs() < 0.01);
        // Four times the rate: about half the interval.
        assert!((at(80.0) / at(20.0) - 0.5).abs() < 0.01);
        assert_eq!(poll_interval(Some(1e9), min, max), min);
        assert_eq!(poll_interval(Some(f64::NAN), min, max), min);
    }

    #[test]
    fn activity_jumps_up_and_decays_slowly() {
        let mut a = Activity::default();
        assert_eq!(a.per_minute(), None);
        a.observe(0, Duration::from_secs(300));
        assert!(a.is_quiet());
        // A pair that wakes up is active from its first window with events.
        a.observe(10, Duration::from_secs(60));
        assert_eq!(a.per_minute(), Some(10.0));
        // Then silent for 15 minutes: down to ~1/e, not to zero.
        for _ in 0..3 {
            a.observe(0, Duration::from_secs(300));
        }
        let r = a.per_minute().unwrap();
        assert!((r - 10.0 / std::f64::consts::E).abs() < 0.01, "{r}");
        // Silent for hours: quiet.
        for _ in 0..100 {
            a.observe(0, Duration::from_secs(300));
        }
        assert!(a.is_quiet());
    }

    #[test]
    fn max_interval_rules() {
        let min = Duration::from_secs(30);
        assert!(ScheduleConfig::default().validate(min).is_ok());
        let c = ScheduleConfig {
            max_interval: Dur::secs(10),
        };
        let e = c.validate(min).unwrap_err();
        assert_eq!(e.field, "schedule.max_interval");
        assert!(e.to_string().contains("window.min_interval"), "{e}");
        let c = ScheduleConfig {
            max_interval: Dur::secs(0),
        };
        assert_eq!(
            c.validate(Duration::ZERO).unwrap_err().field,
            "schedule.max_interval"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn new_windows_are_asked_for_by_how_far_behind_and_how_busy_the_pair_is() {
        let (min, max) = (Duration::from_secs(30), Duration::from_secs(300));
        let (mut quiet, mut busy) = (Pacing::new(min, max), Pacing::new(min, max));
        quiet.polled(0, Duration::from_secs(300));
        busy.polled(100, Duration::from_secs(300));
        let t = Instant::now();
        let mins = |m: u64| Duration::from_secs(m * 60);
        // More than two longest intervals (2 × 5 min) behind: catch-up.
        assert_eq!(quiet.ask(mins(59)).priority, Priority::Backlog);
        let a = busy.ask(mins(2));
        assert_eq!(a.priority, Priority::Active);
        // 2 minutes behind now − lag: backlog once it waited 8 more minutes.
        let at = a.backlog_at.unwrap() - Instant::now();
        assert!(
            at.abs_diff(Duration::from_secs(480)) < Duration::from_secs(1),
            "{at:?}"
        );
        // Not polled yet: active until its rate is known.
        assert_eq!(
            Pacing::new(min, max).ask(mins(2)).priority,
            Priority::Active
        );
        // Quiet, promoted once it waited its longest interval since its poll.
        let a = quiet.ask(mins(2));
        assert_eq!(a.priority, Priority::Quiet);
        assert_eq!(a.promote_at, Some(t + Duration::from_secs(300)));
    }
}
