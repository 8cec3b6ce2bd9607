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
use chrono::Utc;
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

mod budget;
mod checkpoints;
mod migrate;
mod operator;
mod status;
mod target;

use budget::BudgetKeys;
pub use budget::RedisBudget;
pub use migrate::Migrated;
pub use operator::Seized;
pub use status::{FleetStatus, ShardStatus, TenantBudget};
pub use target::{RedisTarget, TlsFiles};

use super::lua::Scripts;
use super::BudgetConfig;
use super::{CoordError, DedupStore, Fence, LeaseStore, Renew, Renewal};
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

/// A connection to a single Redis (through the manager that reconnects)
/// or to a Redis Cluster (which follows its slots and fail-overs).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Redis coordination for one worker.
pub struct RedisCoord {
    /// Where to connect again (for Sentinel, asked at every connection).
    target: RedisTarget,
    /// The connection; dropped after a connection-level failure and made
    /// again at the next call (the manager's own reconnection does not
    /// recover from every failure, e.g. a timed-out reconnect).
    conn: std::sync::Mutex<Option<Conn>>,
    /// Keys carry hash tags (a Redis Cluster): `P:<kind>:{<shard>}`.
    tagged: bool,
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
    known: std::sync::Mutex<checkpoints::Remembered>,
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
    /// Redis Cluster: seed nodes' `host:port` (none: a single Redis).
    pub cluster: &'a [String],
}

impl RedisCoord {
    /// Connects (fails if Redis does not answer now; reconnects later by itself).
    pub async fn connect(s: RedisSettings<'_>) -> Result<Self, CoordError> {
        let target = RedisTarget::new(s.url, &s.tls, s.sentinel, s.cluster)?;
        let conn = Self::open(&target).await?;
        let tagged = target.is_cluster();
        Ok(Self {
            target,
            conn: std::sync::Mutex::new(Some(conn)),
            tagged,
            opening: tokio::sync::Mutex::new(()),
            failed_at: std::sync::Mutex::new(None),
            own: BudgetKeys::new(s.prefix, tagged, s.token, s.budget),
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
    /// holds `:`, so the two layouts cannot meet). On a Redis Cluster the
    /// shard is a hash tag, `P:<kind>:{<shard>}`: every key of one shard in
    /// one slot, so each script touches one slot.
    fn key(&self, kind: &str, shard: &Shard) -> String {
        key_of(&self.prefix, self.tagged, kind, shard)
    }

    /// Whether keys carry hash tags (a Redis Cluster).
    pub fn tagged(&self) -> bool {
        self.tagged
    }
}

/// A shard's key of `kind` in either layout (see [`RedisCoord::key`]).
pub(crate) fn key_of(prefix: &str, tagged: bool, kind: &str, shard: &Shard) -> String {
    if tagged {
        return format!("{prefix}:{kind}:{{{shard}}}");
    }
    if shard.default_tenant() {
        format!("{prefix}:{kind}:{}:{}", shard.service, shard.event)
    } else {
        format!(
            "{prefix}:{kind}:{}:{}:{}",
            shard.tenant, shard.service, shard.event
        )
    }
}

/// Candidates looked at in one acquisition call (a single Redis).
const ACQUIRE_BATCH: usize = 256;
/// Leases renewed in one call (a single Redis).
const RENEW_BATCH: usize = 128;
/// Calls in flight at once on a Redis Cluster (one shard each).
const CLUSTER_CALLS: usize = 64;
/// How long a shard's status hash outlives its last write.
const STATUS_TTL_MS: u64 = 86_400_000;

impl RedisCoord {
    /// One acquisition call over `batch` (one slot's worth on a cluster).
    async fn acquire_batch(
        &self,
        batch: &[Shard],
        want: usize,
    ) -> Result<Vec<(Shard, Fence)>, CoordError> {
        let mut inv = self.scripts.acquire.prepare_invoke();
        for s in batch {
            inv.key(self.key("lease", s)).key(self.key("fence", s));
        }
        inv.arg(&self.worker)
            .arg(self.ttl.as_millis() as u64)
            .arg(want);
        let taken: Vec<u64> = self.run(inv).await?;
        Ok(taken
            .chunks(2)
            .filter_map(|p| match p {
                [i, f] => batch
                    .get((*i as usize).checked_sub(1)?)
                    .map(|s| (s.clone(), *f)),
                _ => None,
            })
            .collect())
    }

    /// One renewal call over `batch`.
    async fn renew_batch(&self, batch: &[Renew]) -> Result<Vec<Renewal>, CoordError> {
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.arg(&self.worker)
            .arg(self.ttl.as_millis() as u64)
            .arg(STATUS_TTL_MS);
        for r in batch {
            inv.key(self.key("lease", &r.shard))
                .key(self.key("fence", &r.shard))
                .key(self.key("cursor", &r.shard))
                .key(self.key("status", &r.shard));
            let report = r.report.as_ref();
            inv.arg(r.fence)
                .arg(
                    r.cursor
                        .map(|c| c.timestamp_millis().to_string())
                        .unwrap_or_default(),
                )
                .arg(if report.is_some() { "1" } else { "0" })
                .arg(report.and_then(|p| p.last_error.as_deref()).unwrap_or(""))
                .arg(
                    report
                        .and_then(|p| p.per_minute)
                        .map(|r| format!("{r:.3}"))
                        .unwrap_or_default(),
                )
                .arg(
                    report
                        .and_then(|p| p.poll_interval)
                        .map(|d| d.as_millis().to_string())
                        .unwrap_or_default(),
                );
        }
        let codes: Vec<i64> = self.run(inv).await?;
        if codes.len() != batch.len() {
            return Err(CoordError::Unavailable(format!(
                "a renewal of {} leases answered {}",
                batch.len(),
                codes.len()
            )));
        }
        Ok(codes
            .into_iter()
            .map(|c| match c {
                1 => Renewal::Held,
                2 => Renewal::Reclaimed,
                _ => Renewal::Lost,
            })
            .collect())
    }

    async fn open(target: &RedisTarget) -> Result<Conn, CoordError> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1);
        tokio::time::timeout(CALL_TIMEOUT * 2, target.connect(cfg))
            .await
            .map_err(|_| CoordError::Unavailable("connecting to Redis timed out".into()))?
    }

    /// The connection, made again if the last one broke. While one caller
    /// makes it, or shortly after an attempt failed, the others get
    /// [`CoordError::Unavailable`] at once (they all retry later anyway).
    async fn connection(&self) -> Result<Conn, CoordError> {
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

    async fn acquire_some(
        &self,
        candidates: &[Shard],
        want: usize,
    ) -> Result<Vec<(Shard, Fence)>, CoordError> {
        let mut got = Vec::new();
        if self.tagged {
            // One shard per call (its own slot), a few calls at once, never
            // more at once than still wanted.
            let mut rest = candidates;
            while got.len() < want && !rest.is_empty() {
                let n = (want - got.len()).min(CLUSTER_CALLS).min(rest.len());
                let (wave, after) = rest.split_at(n);
                rest = after;
                let answers = futures::future::join_all(
                    wave.iter()
                        .map(|s| self.acquire_batch(std::slice::from_ref(s), 1)),
                )
                .await;
                for a in answers {
                    got.extend(a?);
                }
            }
            return Ok(got);
        }
        for batch in candidates.chunks(ACQUIRE_BATCH) {
            if got.len() >= want {
                break;
            }
            got.extend(self.acquire_batch(batch, want - got.len()).await?);
        }
        Ok(got)
    }

    async fn renew_all(&self, leases: &[Renew]) -> Vec<Result<Renewal, CoordError>> {
        // A single Redis: batches of leases per call, a few calls at once;
        // a cluster: one shard per call (its slot), more at once.
        let (per_call, at_once) = if self.tagged {
            (1, CLUSTER_CALLS)
        } else {
            (RENEW_BATCH, 4)
        };
        let batches: Vec<&[Renew]> = leases.chunks(per_call).collect();
        let mut out = Vec::with_capacity(leases.len());
        for wave in batches.chunks(at_once) {
            let answers = futures::future::join_all(wave.iter().map(|b| self.renew_batch(b))).await;
            for (batch, answer) in wave.iter().zip(answers) {
                match answer {
                    Ok(codes) => out.extend(codes.into_iter().map(Ok)),
                    Err(e) => {
                        let e = crate::field::chain(&e).to_string();
                        out.extend(
                            batch
                                .iter()
                                .map(|_| Err(CoordError::Unavailable(e.clone()))),
                        );
                    }
                }
            }
        }
        out
    }

    async fn release(&self, shard: &Shard, fence: Fence) -> Result<(), CoordError> {
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(self.key("lease", shard))
            .arg(format!("{}:{fence}", self.worker));
        self.run::<i64>(inv).await.map(|_| ())
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
