//! A token's request budget in Redis: permits taken in one Lua call on
//! Redis's own clock, the shared pause, the fleet's waiting heads. Keys
//! `P:budget:<token hash>:…`: tenants that share a token share one budget;
//! the token itself is never a key.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use super::{token_key, RedisCoord};
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

/// One token's budget: where it is kept and its limits.
#[derive(Debug, Clone)]
pub(super) struct BudgetKeys {
    /// `P:budget:<token hash>`.
    key: String,
    /// Limits and counting mode.
    pub(super) cfg: BudgetConfig,
}

impl BudgetKeys {
    pub(super) fn new(prefix: &str, token: &SecretString, cfg: BudgetConfig) -> Self {
        Self {
            key: format!("{prefix}:budget:{}", token_key(token)),
            cfg,
        }
    }

    fn keys(&self) -> [String; 6] {
        let mode = self.mode();
        [
            format!("{}:{mode}:minute", self.key),
            format!("{}:{mode}:day", self.key),
            format!("{}:pause", self.key),
            format!("{}:seq", self.key),
            format!("{}:last", self.key),
            format!("{}:waiters", self.key),
        ]
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
            keys: BudgetKeys::new(&self.prefix, token, cfg),
        }
    }

    async fn take_from(&self, b: &BudgetKeys, priority: Priority) -> Result<Take, CoordError> {
        let keys = b.keys();
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
        let (ok, wait_ms): (i64, i64) = self.run(inv).await?;
        Ok(if ok == 1 {
            Take::Granted(Permit::new(Duration::ZERO))
        } else {
            Take::Wait(Duration::from_millis(wait_ms.clamp(1, 10_000) as u64))
        })
    }

    async fn pause_of(&self, b: &BudgetKeys, for_: Duration) {
        let keys = b.keys();
        let mut inv = self.scripts.pause.prepare_invoke();
        inv.key(&keys[2]).arg(for_.as_millis().max(1) as u64);
        if let Err(e) = self.run::<i64>(inv).await {
            tracing::warn!(error = %e, "cannot set the shared pause");
        }
    }

    async fn usage_of(&self, b: &BudgetKeys) -> BudgetUsage {
        let keys = b.keys();
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

    async fn usage(&self) -> BudgetUsage {
        self.coord.usage_of(&self.keys).await
    }
}
