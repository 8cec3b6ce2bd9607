//! The coordination stores a process uses, made in one place: in memory
//! (the embedded mode) or in Redis (a fleet), and where each tenant's
//! token's budget is kept.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use secrecy::SecretString;

use super::memory::{MemoryBudget, MemoryCheckpoints, MemoryDedup, SoleWorker};
use super::redis::{RedisCoord, RedisSettings};
use super::{
    Budget, BudgetConfig, CheckpointStore, CoordConfig, CoordError, DedupStore, LeaseStore,
};

/// Where the budget of a token is kept.
#[derive(Clone)]
pub enum Budgets {
    /// In this process (the embedded mode).
    Memory,
    /// In Redis, shared by the fleet.
    Redis(Arc<RedisCoord>),
}

impl Budgets {
    /// The budget of `tenant`'s token (`token`, as held now) with these
    /// limits. In Redis it keeps the key its first user gave it, across
    /// token rotations.
    pub fn for_tenant(
        &self,
        tenant: &str,
        token: &SecretString,
        cfg: &BudgetConfig,
    ) -> Arc<dyn Budget> {
        match self {
            Budgets::Memory => Arc::new(MemoryBudget::new(cfg.clone())),
            Budgets::Redis(rc) => Arc::new(rc.budget_of(tenant, token, cfg.clone())),
        }
    }
}

/// The coordination stores a bridge uses.
#[derive(Clone)]
pub struct Coordination {
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// The budget of the top-level token (a bridge without tenants).
    pub budget: Arc<dyn Budget>,
    /// Where each tenant's token's budget is made.
    pub budgets: Budgets,
    pub dedup: Arc<dyn DedupStore>,
    pub leases: Arc<dyn LeaseStore>,
}

impl Coordination {
    /// The embedded mode: one process, everything in memory.
    /// `budget` is the top-level token's; `dedup_horizon` the longest any
    /// shard's windows re-read.
    pub fn in_memory(budget: &BudgetConfig, dedup_horizon: Duration) -> Self {
        Self {
            checkpoints: Arc::new(MemoryCheckpoints::default()),
            budget: Arc::new(MemoryBudget::new(budget.clone())),
            budgets: Budgets::Memory,
            dedup: Arc::new(MemoryDedup::new(dedup_horizon)),
            leases: Arc::new(SoleWorker),
        }
    }

    /// A fleet member: everything in Redis (`coord.redis_url` must be set).
    pub async fn redis(
        coord: &CoordConfig,
        budget: &BudgetConfig,
        token: &SecretString,
        dedup_horizon: Duration,
    ) -> Result<(Self, Arc<RedisCoord>), CoordError> {
        let url = coord
            .redis_url
            .as_ref()
            .ok_or_else(|| CoordError::Unavailable("coord.redis_url is not set".into()))?;
        let rc = Arc::new(
            RedisCoord::connect(RedisSettings {
                url,
                prefix: &coord.prefix,
                worker: coord.worker_id.clone().unwrap_or_else(default_worker_id),
                lease_ttl: coord.lease_ttl.get(),
                budget: budget.clone(),
                token,
                dedup_horizon,
                tls: crate::coord::redis::TlsFiles {
                    ca: coord.tls_ca_file.clone(),
                    cert: coord.tls_cert_file.clone(),
                    key: coord.tls_key_file.clone(),
                },
                sentinel: coord
                    .sentinel_master
                    .as_deref()
                    .map(|m| (m, coord.sentinels.as_slice())),
                cluster: &coord.cluster_nodes,
            })
            .await?,
        );
        Ok((
            Self {
                checkpoints: rc.clone(),
                budget: rc.clone(),
                budgets: Budgets::Redis(rc.clone()),
                dedup: rc.clone(),
                leases: rc.clone(),
            },
            rc,
        ))
    }
}

/// `<host>-<pid>-<random>`: unique even when pods share a host name.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().replace([':', ' '], "-"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let r: u16 = rand::rng().random();
    format!("{host}-{}-{r:04x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_unique_and_safe() {
        let a = default_worker_id();
        assert!(!a.contains(':') && !a.contains(' '), "{a}");
        assert!(a.contains(&std::process::id().to_string()));
    }
}
