//! A token's request budget in Redis: permits taken in one Lua call on
//! Redis's own clock, the shared pause, the fleet's waiting heads. Keys
//! `P:budget:<token hash>:…`: tenants that share a token share one budget;
//! the token itself is never a key.
//!
//! A tenant's token is rotated while the fleet runs, and replicas see the
//! new file at different moments (or start after it): were each to key the
//! budget by the token it holds, replicas on the old and the new token
//! would count apart and together exceed it. So a tenant's budget key is
//! fixed by the first replica that uses it, under `P:budget-of:<tenant>`
//! (the hash of the token it held then), and every replica and command
//! uses that key afterwards, whatever token it holds now.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use super::{lock, token_key, RedisCoord};
use crate::coord::{
    Budget, BudgetConfig, BudgetMode, BudgetUsage, CoordError, Permit, Priority, Take,
};

/// The budget's minute and day, before `budget.margin` is added: a permit
/// is taken on Redis's clock but counted by the API when the request
/// arrives, and those two instants differ by a variable delay.
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// A worker's waiting request counts against less urgent ones on other
/// workers for this long after it last asked (its scheduler asks again at
/// least every [`crate::schedule::ASK_AGAIN`]).
const WAITER_STALE: Duration = Duration::from_secs(3);

/// The lookup of a tenant's budget key, boxed.
type Lookup<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, CoordError>> + Send + 'a>>;

/// How long a tenant's budget key is remembered after its last lookup.
const BUDGET_OF_TTL_S: u64 = 90 * 86_400;

/// One token's budget: where it is kept and its limits.
#[derive(Debug)]
pub(super) struct BudgetKeys {
    /// `P:budget:<hash of the token given>`.
    key: String,
    /// The tenant it belongs to, whose first key stands (see the module).
    tenant: Option<String>,
    /// The key in force, once looked up.
    resolved: tokio::sync::OnceCell<String>,
    /// Limits and counting mode.
    pub(super) cfg: BudgetConfig,
    /// The highest grant number this process was given, and when (see
    /// [`RedisCoord::take_from`]).
    last_grant: std::sync::Mutex<(i64, Option<tokio::time::Instant>)>,
}

impl BudgetKeys {
    /// `tagged` (a Redis Cluster): `P:budget:{<hash>}`, so the keys of one
    /// budget share a slot.
    pub(super) fn new(prefix: &str, tagged: bool, token: &SecretString, cfg: BudgetConfig) -> Self {
        let hash = token_key(token);
        Self {
            key: if tagged {
                format!("{prefix}:budget:{{{hash}}}")
            } else {
                format!("{prefix}:budget:{hash}")
            },
            tenant: None,
            resolved: tokio::sync::OnceCell::new(),
            cfg,
            last_grant: std::sync::Mutex::new((0, None)),
        }
    }

    /// The key in force: the token's own, or the one the tenant's first
    /// user recorded.
    async fn current(&self, coord: &RedisCoord) -> Result<&str, CoordError> {
        let Some(tenant) = &self.tenant else {
            return Ok(&self.key);
        };
        if let Some(key) = self.resolved.get() {
            return Ok(key);
        }
        // Boxed: the lookup's future inside every budget call's future
        // nests deeper than the compiler's layout limit otherwise.
        let lookup: Lookup<'_> = Box::pin(async move {
            let map = format!("{}:budget-of:{tenant}", coord.prefix);
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&map)
                .arg(&self.key)
                .arg("NX")
                .ignore()
                .cmd("EXPIRE")
                .arg(&map)
                .arg(BUDGET_OF_TTL_S)
                .ignore()
                .cmd("GET")
                .arg(&map);
            let (key,): (Option<String>,) = coord.query_pipe(&pipe).await?;
            Ok(key.unwrap_or_else(|| self.key.clone()))
        });
        self.resolved
            .get_or_try_init(|| lookup)
            .await
            .map(String::as_str)
    }

    async fn keys(&self, coord: &RedisCoord) -> Result<[String; 6], CoordError> {
        let mode = self.mode();
        let key = self.current(coord).await?;
        Ok([
            format!("{key}:{mode}:minute"),
            format!("{key}:{mode}:day"),
            format!("{key}:pause"),
            format!("{key}:seq"),
            format!("{key}:last"),
            format!("{key}:waiters"),
        ])
    }

    fn margin_ms(&self) -> i64 {
        self.cfg.margin.get().as_millis() as i64
    }

    fn mode(&self) -> &'static str {
        match self.cfg.mode {
            BudgetMode::Sliding => "sliding",
            BudgetMode::Fixed => "fixed",
        }
    }
}

impl RedisCoord {
    /// The budget of `token` with these limits, over this connection.
    pub fn budget_for(self: &Arc<Self>, token: &SecretString, cfg: BudgetConfig) -> RedisBudget {
        RedisBudget {
            coord: self.clone(),
            keys: BudgetKeys::new(&self.prefix, self.tagged, token, cfg),
        }
    }

    /// The budget of `tenant`'s token: the key its first user recorded
    /// (`token` is the one held now; it names the key only when the
    /// tenant has none yet), so a rotated token keeps the budget's count.
    pub fn budget_of(
        self: &Arc<Self>,
        tenant: &str,
        token: &SecretString,
        cfg: BudgetConfig,
    ) -> RedisBudget {
        let mut keys = BudgetKeys::new(&self.prefix, self.tagged, token, cfg);
        keys.tenant = Some(tenant.to_string());
        RedisBudget {
            coord: self.clone(),
            keys,
        }
    }

    async fn take_from(&self, b: &BudgetKeys, priority: Priority) -> Result<Take, CoordError> {
        let keys = b.keys(self).await?;
        let mut inv = self.scripts.take.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(b.cfg.per_minute)
            .arg(b.cfg.per_day)
            .arg(MINUTE_MS + b.margin_ms())
            .arg(DAY_MS + b.margin_ms())
            .arg(b.mode())
            .arg(b.cfg.pace().as_millis() as u64)
            .arg(&self.worker)
            .arg(priority.rank())
            .arg(WAITER_STALE.as_millis() as u64);
        // The highest grant number this process was given, and how long ago
        // (the script notices a store that forgot it: see lua.rs, TAKE).
        let (seen, at) = *lock(&b.last_grant);
        inv.arg(seen)
            .arg(at.map_or(i64::MAX / 2, |t| t.elapsed().as_millis() as i64));
        let (ok, n): (i64, i64) = self.run(inv).await?;
        if ok != 1 {
            return Ok(Take::Wait(Duration::from_millis(n.clamp(1, 10_000) as u64)));
        }
        let mut last = lock(&b.last_grant);
        if n > last.0 {
            *last = (n, Some(tokio::time::Instant::now()));
        }
        Ok(Take::Granted(Permit::new(Duration::ZERO)))
    }

    async fn pause_of(&self, b: &BudgetKeys, for_: Duration) {
        let keys = match b.keys(self).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %crate::field::chain(&e), "cannot set the shared pause");
                return;
            }
        };
        let mut inv = self.scripts.pause.prepare_invoke();
        // Capped before it is stored: every replica on the token reads it.
        let ms = for_
            .min(crate::cas::policy::PAUSE_CEILING)
            .as_millis()
            .max(1) as u64;
        inv.key(&keys[2]).arg(ms);
        if let Err(e) = self.run::<i64>(inv).await {
            tracing::warn!(error = %crate::field::chain(&e), "cannot set the shared pause");
        }
    }

    async fn resume_of(&self, b: &BudgetKeys) {
        let Ok(keys) = b.keys(self).await else {
            return;
        };
        if let Err(e) = self.cmd::<i64>(redis::cmd("DEL").arg(&keys[2])).await {
            tracing::warn!(error = %crate::field::chain(&e), "cannot end the shared pause");
        }
    }

    async fn usage_of(&self, b: &BudgetKeys) -> BudgetUsage {
        let Ok(keys) = b.keys(self).await else {
            return BudgetUsage::default();
        };
        let mut inv = self.scripts.usage.prepare_invoke();
        inv.key(&keys[0])
            .key(&keys[1])
            .key(&keys[2])
            .arg(MINUTE_MS + b.margin_ms())
            .arg(DAY_MS + b.margin_ms())
            .arg(b.mode());
        let (m, d, p): (u32, u32, i64) = self.run(inv).await.unwrap_or((0, 0, 0));
        BudgetUsage {
            last_minute: m,
            last_day: d,
            paused: (p > 0).then(|| Duration::from_millis(p as u64)),
        }
    }
}

/// The budget of the token [`RedisCoord`] was made with.
#[async_trait]
impl Budget for RedisCoord {
    async fn try_acquire(&self, priority: Priority) -> Result<Take, CoordError> {
        self.take_from(&self.own, priority).await
    }

    async fn pause(&self, for_: Duration) {
        self.pause_of(&self.own, for_).await
    }

    async fn resume(&self) {
        self.resume_of(&self.own).await
    }

    async fn usage(&self) -> BudgetUsage {
        self.usage_of(&self.own).await
    }
}

/// Another token's budget, over a [`RedisCoord`]'s connection (a tenant's).
pub struct RedisBudget {
    coord: Arc<RedisCoord>,
    keys: BudgetKeys,
}

#[async_trait]
impl Budget for RedisBudget {
    async fn try_acquire(&self, priority: Priority) -> Result<Take, CoordError> {
        self.coord.take_from(&self.keys, priority).await
    }

    async fn pause(&self, for_: Duration) {
        self.coord.pause_of(&self.keys, for_).await
    }

    async fn resume(&self) {
        self.coord.resume_of(&self.keys).await
    }

    async fn usage(&self) -> BudgetUsage {
        self.coord.usage_of(&self.keys).await
    }
}
