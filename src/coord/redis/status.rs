//! What `cas-bridge status` reads of the fleet: workers, budget, and per
//! shard its lease, cursor, window in flight and activity.

use chrono::{DateTime, Utc};

use super::RedisCoord;
use crate::coord::{Budget, CoordError};
use crate::shard::Shard;

/// What `status` shows of one shard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardStatus {
    /// `service:event`, with `tenant:` before it for a named tenant.
    pub shard: String,
    pub tenant: String,
    pub owner: Option<String>,
    pub lease_expires_in_ms: Option<i64>,
    pub fence: Option<u64>,
    pub cursor: Option<DateTime<Utc>>,
    pub lag_seconds: Option<i64>,
    pub last_error: Option<String>,
    /// The window in flight (`start..end`), when a page of it was recorded.
    pub window_in_flight: Option<String>,
    /// Pages of that window delivered.
    pub pages_done: Option<u32>,
    /// Whoever holds the shard next continues after those pages.
    pub resumable: bool,
    /// The pair's observed events a minute, as its holder last reported.
    pub events_per_minute: Option<f64>,
    /// Its poll interval in steady state, from that rate.
    pub poll_interval_s: Option<u64>,
}

/// What `status` shows of the fleet.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetStatus {
    pub workers: Vec<String>,
    pub budget_last_minute: u32,
    pub budget_today: u32,
    /// Seconds left of a pause every replica honours (a 429, a refused token).
    pub budget_paused_s: Option<u64>,
    pub per_minute: u32,
    pub per_day: u32,
    pub shards: Vec<ShardStatus>,
    /// Each named tenant's token's budget (empty without `tenants`: the
    /// fields above are then the one token's).
    pub tenants: Vec<TenantBudget>,
}

/// One tenant's token's budget, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantBudget {
    pub tenant: String,
    pub last_minute: u32,
    pub today: u32,
    pub paused_s: Option<u64>,
    pub per_minute: u32,
    pub per_day: u32,
    /// Why it could not be read (the token file), if it could not.
    pub error: Option<String>,
}

impl RedisCoord {
    /// Everything `status` shows, for the configured shards.
    pub async fn status(&self, shards: &[Shard]) -> Result<FleetStatus, CoordError> {
        let now = self.now_ms().await?;
        let workers: Vec<String> = self
            .cmd(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(format!("{}:workers", self.prefix))
                    .arg(now)
                    .arg("+inf"),
            )
            .await?;
        let usage = self.usage().await;
        // One pipeline per shard (its keys share a slot on a cluster), a
        // few dozen at once: `status` of 100,000 shards is seconds, not
        // minutes of one round trip per key.
        let mut out = Vec::with_capacity(shards.len());
        for wave in shards.chunks(64) {
            let answers =
                futures::future::join_all(wave.iter().map(|s| self.shard_status(s, now))).await;
            for a in answers {
                out.push(a?);
            }
        }
        Ok(FleetStatus {
            workers,
            budget_last_minute: usage.last_minute,
            budget_today: usage.last_day,
            budget_paused_s: usage.paused.map(|p| p.as_secs().max(1)),
            per_minute: self.own.cfg.per_minute,
            per_day: self.own.cfg.per_day,
            shards: out,
            tenants: Vec::new(),
        })
    }
}

impl RedisCoord {
    /// What Redis holds of one shard, in one pipeline.
    async fn shard_status(&self, shard: &Shard, now: i64) -> Result<ShardStatus, CoordError> {
        let lease_key = self.key("lease", shard);
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(&lease_key)
            .cmd("PTTL")
            .arg(&lease_key)
            .cmd("GET")
            .arg(self.key("fence", shard))
            .cmd("GET")
            .arg(self.key("cursor", shard))
            .cmd("HMGET")
            .arg(self.key("status", shard))
            .arg("last_error")
            .arg("per_minute")
            .arg("poll_interval_ms")
            .cmd("GET")
            .arg(self.key("progress", shard));
        type Answer = (
            Option<String>,
            i64,
            Option<u64>,
            Option<i64>,
            (Option<String>, Option<String>, Option<String>),
            Option<String>,
        );
        let (lease, pttl, fence, cursor, (err, per_minute, interval_ms), progress): Answer =
            self.query_pipe(&pipe).await?;
        let cursor = cursor.and_then(DateTime::from_timestamp_millis);
        // A record that does not parse (another version wrote it) is not shown.
        let progress = progress
            .and_then(|t| serde_json::from_str::<crate::coord::Progress>(&t).ok())
            .filter(|p| cursor.is_none_or(|c| p.end > c));
        Ok(ShardStatus {
            shard: shard.to_string(),
            tenant: shard.tenant.to_string(),
            owner: lease
                .as_deref()
                .and_then(|l| l.rsplit_once(':'))
                .map(|(w, _)| w.to_string()),
            lease_expires_in_ms: (pttl > 0).then_some(pttl),
            fence,
            cursor,
            lag_seconds: cursor.map(|c| (now - c.timestamp_millis()) / 1000),
            last_error: err.filter(|e| !e.is_empty()),
            window_in_flight: progress.as_ref().map(|p| {
                format!(
                    "{}..{}",
                    p.start.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    p.end.format("%Y-%m-%dT%H:%M:%S%.3fZ")
                )
            }),
            pages_done: progress.as_ref().map(|p| p.pages),
            resumable: progress.is_some(),
            events_per_minute: per_minute.and_then(|v| v.parse().ok()),
            poll_interval_s: interval_ms
                .and_then(|v| v.parse::<u64>().ok())
                .map(|ms| ms / 1000),
        })
    }
}
