//! Fleet coordination in Redis: shard leases with fencing tokens, worker
//! heartbeats, fenced checkpoints, the token's shared budget and the shared
//! dedup memory.
//!
//! Keys (all under `coord.prefix`, written `P` here; a shard is `svc:event`
//! for the default tenant, `tenant:svc:event` for a named one):
//! - `P:workers` — sorted set of live workers, scored by heartbeat expiry;
//! - `P:lease:<shard>` — `worker:fence`, with the lease TTL;
//! - `P:fence:<shard>` — the fencing counter, bumped at every acquisition;
//! - `P:cursor:<shard>` — the cursor, ms since the epoch;
//! - `P:progress:<shard>` — the position inside the window in flight (JSON:
//!   window, next link, pages and events done), deleted with the checkpoint;
//! - `P:status:<shard>` — what `status` shows (owner, fence, last error);
//! - `P:dedup:<shard>` — delivered ids scored by expiry;
//! - `P:budget:<token hash>:…` — permits granted, the shared pause, and
//!   `…:waiters`: per worker, the priority of the request at the head of
//!   its queue, so a permit goes to the most urgent request in the fleet;
//! - `P:budget-of:<tenant>` — which `P:budget:<token hash>` a tenant's
//!   budget is (set by its first user; it outlives token rotations).
//!
//! What must stay true here:
//! - the budget is checked and taken in one Lua call on Redis's own clock
//!   (`TIME`), so the pods' clocks do not matter; the key holds a hash of the
//!   token, never the token;
//! - a cursor is written only by the worker whose `worker:fence` is the
//!   shard's lease (or, if Redis lost both the lease and the fence, by the
//!   holder restoring them), in one Lua compare-and-set.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::Script;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

mod budget;
mod checkpoints;
mod operator;
mod status;
mod target;

use budget::BudgetKeys;
pub use budget::RedisBudget;
pub use operator::Seized;
pub use status::{FleetStatus, ShardStatus, TenantBudget};
pub use target::{RedisTarget, TlsFiles};

use super::lua::Scripts;
use super::BudgetConfig;
use super::{CoordError, DedupStore, Fence, LeaseStore, Renewal, ShardReport};
use crate::shard::Shard;

/// Every Redis call gives up after this long (the caller retries later).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed connection attempt, calls fail at once for this long.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A hash of the token that names its budget; the token itself never
/// reaches Redis.
pub fn token_key(token: &SecretString) -> String {
    let d = Sha256::digest(format!("cas-bridge budget:{}", token.expose_secret()).as_bytes());
    hex::encode(&d[..8])
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> CoordError {
    CoordError::Failed {
        what: "Redis call".into(),
        cause: Box::new(e),
    }
}

/// Redis coordination for one worker.
pub struct RedisCoord {
    /// Where to connect again (for Sentinel, asked at every connection).
    target: RedisTarget,
    /// The connection; dropped after a connection-level failure and made
    /// again at the next call (the manager's own reconnection does not
    /// recover from every failure, e.g. a timed-out reconnect).
    conn: std::sync::Mutex<Option<ConnectionManager>>,
    /// Held while a connection is being made: one caller makes it, the
    /// others fail at once instead of queueing behind it (a hung Redis
    /// would otherwise cost every waiting call a connect timeout in turn).
    opening: tokio::sync::Mutex<()>,
    /// When the last attempt to connect failed: callers fail at once for
    /// [`RECONNECT_AFTER`] after it.
    failed_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Key namespace.
    prefix: String,
    /// This worker's name.
    worker: String,
    /// Lease lifetime.
    ttl: Duration,
    /// The budget of the token it was made with (`status`, `replay`,
    /// a single-tenant bridge); [`RedisCoord::budget_for`] gives others.
    own: BudgetKeys,
    /// How long delivered ids are remembered.
    horizon: Duration,
    /// The Lua scripts (hashed once; sent by SHA, loaded again when Redis forgot them).
    scripts: Scripts,
    /// The last cursor seen of every shard, ms (see
    /// [`CheckpointStore::remembered`]).
    known: std::sync::Mutex<std::collections::HashMap<Shard, i64>>,
}

impl std::fmt::Debug for RedisCoord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCoord")
            .field("prefix", &self.prefix)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// The settings [`RedisCoord::connect`] needs.
pub struct RedisSettings<'a> {
    pub url: &'a SecretString,
    pub prefix: &'a str,
    pub worker: String,
    pub lease_ttl: Duration,
    pub budget: BudgetConfig,
    pub token: &'a SecretString,
    pub dedup_horizon: Duration,
    /// TLS files for `rediss://`.
    pub tls: TlsFiles,
    /// Redis Sentinel: the master's name and the sentinels' `host:port`.
    pub sentinel: Option<(&'a str, &'a [String])>,
}

impl RedisCoord {
    /// Connects (fails if Redis does not answer now; reconnects later by itself).
    pub async fn connect(s: RedisSettings<'_>) -> Result<Self, CoordError> {
        let target = RedisTarget::new(s.url, &s.tls, s.sentinel)?;
        let conn = Self::open(&target).await?;
        Ok(Self {
            target,
            conn: std::sync::Mutex::new(Some(conn)),
            opening: tokio::sync::Mutex::new(()),
            failed_at: std::sync::Mutex::new(None),
            own: BudgetKeys::new(s.prefix, s.token, s.budget),
            prefix: s.prefix.to_string(),
            worker: s.worker,
            ttl: s.lease_ttl,
            horizon: s.dedup_horizon,
            scripts: Scripts::new(),
            known: Default::default(),
        })
    }

    pub fn worker_id(&self) -> &str {
        &self.worker
    }

    /// `P:<kind>:<service>:<event>` for the default tenant (the layout
    /// before tenants existed, so its cursors are kept), and
    /// `P:<kind>:<tenant>:<service>:<event>` for a named one (a part never
    /// holds `:`, so the two layouts cannot meet).
    fn key(&self, kind: &str, shard: &Shard) -> String {
        if shard.default_tenant() {
            format!("{}:{kind}:{}:{}", self.prefix, shard.service, shard.event)
        } else {
            format!(
                "{}:{kind}:{}:{}:{}",
                self.prefix, shard.tenant, shard.service, shard.event
            )
        }
    }

    /// A call of a script over a shard's lease, fence and cursor keys, with
    /// the worker, fence, TTL and a cursor (ms, or empty) as arguments.
    fn shard_call<'a>(
        &self,
        script: &'a Script,
        shard: &Shard,
        fence: Fence,
        cursor_ms: String,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.key("lease", shard))
            .key(self.key("fence", shard))
            .key(self.key("cursor", shard))
            .arg(&self.worker)
            .arg(fence)
            .arg(self.ttl.as_millis() as u64)
            .arg(cursor_ms);
        inv
    }

    async fn open(target: &RedisTarget) -> Result<ConnectionManager, CoordError> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1);
        tokio::time::timeout(CALL_TIMEOUT * 2, async {
            let client = target.client().await?;
            ConnectionManager::new_with_config(client, cfg)
                .await
                .map_err(unavailable)
        })
        .await
        .map_err(|_| CoordError::Unavailable("connecting to Redis timed out".into()))?
    }

    /// The connection, made again if the last one broke. While one caller
    /// makes it, or shortly after an attempt failed, the others get
    /// [`CoordError::Unavailable`] at once (they all retry later anyway).
    async fn connection(&self) -> Result<ConnectionManager, CoordError> {
        let current = || lock(&self.conn).clone();
        if let Some(c) = current() {
            return Ok(c);
        }
        let Ok(_opening) = self.opening.try_lock() else {
            return Err(CoordError::Unavailable("reconnecting to Redis".into()));
        };
        if let Some(c) = current() {
            return Ok(c);
        }
        if lock(&self.failed_at).is_some_and(|t| t.elapsed() < RECONNECT_AFTER) {
            return Err(CoordError::Unavailable(
                "Redis did not answer the last connection attempt".into(),
            ));
        }
        match Self::open(&self.target).await {
            Ok(c) => {
                *lock(&self.conn) = Some(c.clone());
                *lock(&self.failed_at) = None;
                Ok(c)
            }
            Err(e) => {
                *lock(&self.failed_at) = Some(tokio::time::Instant::now());
                Err(e)
            }
        }
    }

    /// Maps a call's outcome; a connection-level failure drops the connection.
    async fn settle<T>(
        &self,
        r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, CoordError> {
        let broken = match &r {
            Err(_) => true,
            Ok(Err(e)) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    // A master demoted by a fail-over (or a replica named
                    // by mistake): connect again, through Sentinel when it
                    // is configured, to whoever is master now.
                    || e.kind() == redis::ErrorKind::ReadOnly
            }
            Ok(Ok(_)) => false,
        };
        if broken {
            *lock(&self.conn) = None;
        }
        r.map_err(|_| CoordError::Unavailable("Redis call timed out".into()))?
            .map_err(unavailable)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, CoordError> {
        let mut conn = self.connection().await?;
        let r = tokio::time::timeout(CALL_TIMEOUT, inv.invoke_async(&mut conn)).await;
        self.settle(r).await
    }

    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, CoordError> {
        let mut conn = self.connection().await?;
        let r = tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn)).await;
        self.settle(r).await
    }

    async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, CoordError> {
        let mut conn = self.connection().await?;
        let r = tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<T>(&mut conn)).await;
        self.settle(r).await
    }

    async fn pipe(&self, pipe: &redis::Pipeline) -> Result<(), CoordError> {
        let mut conn = self.connection().await?;
        let r = tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
        self.settle(r).await
    }

    /// Redis's own time, ms since the epoch.
    async fn now_ms(&self) -> Result<i64, CoordError> {
        let (s, us): (i64, i64) = self.cmd(&redis::cmd("TIME")).await?;
        Ok(s * 1000 + us / 1000)
    }
}

#[async_trait]
impl DedupStore for RedisCoord {
    async fn seen(&self, shard: &Shard, ids: &[&str]) -> Result<Vec<bool>, CoordError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let now = Utc::now().timestamp_millis() as f64;
        let scores: Vec<Option<f64>> = self
            .cmd(redis::cmd("ZMSCORE").arg(self.key("dedup", shard)).arg(ids))
            .await?;
        Ok(scores
            .into_iter()
            .map(|s| s.is_some_and(|s| s > now))
            .collect())
    }

    async fn mark(&self, shard: &Shard, ids: &[&str]) -> Result<(), CoordError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = Utc::now().timestamp_millis();
        let until = now + self.horizon.as_millis() as i64;
        let key = self.key("dedup", shard);
        let mut pipe = redis::pipe();
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&key);
        for id in ids {
            zadd.arg(until).arg(*id);
        }
        pipe.add_command(zadd).ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(self.horizon.as_millis() as u64)
            .ignore();
        self.pipe(&pipe).await
    }
}

#[async_trait]
impl LeaseStore for RedisCoord {
    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn heartbeat(&self) -> Result<usize, CoordError> {
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(format!("{}:workers", self.prefix))
            .arg(&self.worker)
            .arg(self.ttl.as_millis() as u64);
        self.run(inv).await
    }

    async fn acquire(&self, shard: &Shard) -> Result<Option<Fence>, CoordError> {
        let mut inv = self.scripts.acquire.prepare_invoke();
        inv.key(self.key("lease", shard))
            .key(self.key("fence", shard))
            .arg(&self.worker)
            .arg(self.ttl.as_millis() as u64);
        let f: u64 = self.run(inv).await?;
        Ok((f > 0).then_some(f))
    }

    async fn renew(
        &self,
        shard: &Shard,
        fence: Fence,
        cursor: Option<DateTime<Utc>>,
    ) -> Result<Renewal, CoordError> {
        let cursor = cursor
            .map(|c| c.timestamp_millis().to_string())
            .unwrap_or_default();
        let inv = self.shard_call(&self.scripts.renew, shard, fence, cursor);
        let code: i64 = self.run(inv).await?;
        Ok(match code {
            1 => Renewal::Held,
            2 => Renewal::Reclaimed,
            _ => Renewal::Lost,
        })
    }

    async fn release(&self, shard: &Shard, fence: Fence) -> Result<(), CoordError> {
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(self.key("lease", shard))
            .arg(format!("{}:{fence}", self.worker));
        self.run::<i64>(inv).await.map(|_| ())
    }

    async fn report(
        &self,
        shard: &Shard,
        fence: Fence,
        report: &ShardReport,
    ) -> Result<(), CoordError> {
        let key = self.key("status", shard);
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("owner")
            .arg(&self.worker)
            .arg("fence")
            .arg(fence)
            .arg("last_error")
            .arg(report.last_error.as_deref().unwrap_or(""))
            .arg("per_minute")
            .arg(
                report
                    .per_minute
                    .map(|r| format!("{r:.3}"))
                    .unwrap_or_default(),
            )
            .arg("poll_interval_ms")
            .arg(
                report
                    .poll_interval
                    .map(|d| d.as_millis().to_string())
                    .unwrap_or_default(),
            )
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(86_400_000u64).ignore();
        self.pipe(&pipe).await
    }

    async fn leave(&self) -> Result<(), CoordError> {
        self.cmd::<i64>(
            redis::cmd("ZREM")
                .arg(format!("{}:workers", self.prefix))
                .arg(&self.worker),
        )
        .await
        .map(|_| ())
    }
}
