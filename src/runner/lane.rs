//! What a shard runner needs besides the stages: a tenant's lane (its
//! source, scheduler, window planning) and its settings.

use std::sync::Arc;
use std::time::Duration;

use crate::schedule::Scheduler;
use crate::source::PageSource;
use crate::window::{Planner, StartFrom};

/// What the runner needs besides the stages.
#[derive(Debug, Clone, Copy)]
pub struct RunnerSettings {
    /// Where a shard without a cursor starts.
    pub start_from: StartFrom,
    /// The longest pause a 429 may impose.
    pub max_pause: Duration,
    /// Events per page (`api.page_limit` in force).
    pub page_limit: u32,
    /// Pages a catch-up window is sized to hold (`window.max_pages`).
    pub max_pages: u32,
    /// The longest a pair waits between polls (`schedule.max_interval`).
    pub max_interval: Duration,
    /// The most pages one window may take (`window.page_cap`).
    pub page_cap: u32,
    /// The token's requests a day (`budget.per_day`), for the metrics.
    pub per_day: u32,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            start_from: StartFrom::Ago(Duration::from_secs(3600)),
            max_pause: Duration::from_secs(300),
            page_limit: 500,
            max_pages: 20,
            max_interval: Duration::from_secs(300),
            page_cap: 10_000,
            per_day: 14_400,
        }
    }
}

/// What the shards of one tenant share.
pub struct Lane {
    /// Where its pages come from (its API host and token).
    pub source: Arc<dyn PageSource>,
    /// Who asks its token's budget next (tenants that share a token share
    /// one scheduler).
    pub scheduler: Arc<Scheduler>,
    /// Its window planning.
    pub planner: Planner,
    /// Its start, pause cap, page size, window sizing.
    pub settings: RunnerSettings,
}
