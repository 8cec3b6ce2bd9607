//! `cas-bridge verify`: before going live, with the configuration `run`
//! would use, each thing `run` needs is tried once: every tenant's token
//! with one real request (a permit from the token's shared budget, the
//! smallest window), Redis (a write under the prefix, the Lua scripts),
//! and the sink (the topics or the stream the templates give). Nothing is
//! published, no cursor is written, no topic or stream is made.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use secrecy::SecretString;
use serde::Serialize;

use crate::cas::{ApiError, Client};
use crate::config::Config;
use crate::coord::memory::MemoryBudget;
use crate::coord::redis::RedisCoord;
use crate::coord::{Budget, Priority};
use crate::sink::Topics;
use crate::tenant::Tenant;
use crate::window::Window;

/// How long one check may take (a permit may wait for the fleet's
/// budget up to a minute).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
const PERMIT_TIMEOUT: Duration = Duration::from_secs(90);

/// One check's outcome: one line of the output.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `config`, `token`, `redis`, `sink`.
    pub check: &'static str,
    /// The tenant, for a tenant's own check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub ok: bool,
    /// What was found, or what failed and why.
    pub detail: String,
}

impl Check {
    fn new(check: &'static str, tenant: Option<&str>, r: Result<String, String>) -> Self {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Self {
            check,
            tenant: tenant.map(str::to_string),
            ok,
            detail,
        }
    }

    /// `ok   token    acme   …`
    pub fn line(&self) -> String {
        format!(
            "{:<4} {:<6} {:<12} {}",
            if self.ok { "ok" } else { "FAIL" },
            self.check,
            self.tenant.as_deref().unwrap_or("-"),
            self.detail
        )
    }
}

/// `cas-bridge verify [--json]`.
pub async fn verify_cmd(file: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let cfg = Config::load(file)?;
    let checks = checks(&cfg).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!("{}", c.line());
        }
    }
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| match &c.tenant {
            Some(t) => format!("{} of {t}", c.check),
            None => c.check.to_string(),
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("verify failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Every check, in order: the configuration, Redis, each tenant's token,
/// the sink.
pub async fn checks(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let tenants = match cfg.tenants() {
        Ok(t) => t,
        Err(e) => {
            out.push(Check::new("config", None, Err(e.to_string())));
            return out;
        }
    };
    out.push(Check::new(
        "config",
        None,
        Ok(format!(
            "valid; hash {}; {} tenant(s), {} shard(s)",
            crate::reload::config_hash(cfg),
            tenants.len(),
            cfg.all_shards().map(|s| s.len()).unwrap_or(0)
        )),
    ));
    let redis = if cfg.coord.redis_url.is_some() {
        let r = redis(cfg, &tenants).await;
        let (rc, result) = match r {
            Ok((rc, found)) => (Some(rc), Ok(found)),
            Err(e) => (None, Err(e)),
        };
        out.push(Check::new("redis", None, result));
        rc
    } else {
        out.push(Check::new(
            "redis",
            None,
            Ok("not configured (coord.redis_url): one replica, state in memory".into()),
        ));
        None
    };
    for t in &tenants {
        let r = token(cfg, t, redis.as_ref()).await;
        out.push(Check::new("token", Some(&t.name), r));
    }
    out.push(Check::new("sink", None, sink(cfg).await));
    out
}

/// Redis reachable, writable under the prefix, the scripts loaded.
async fn redis(cfg: &Config, tenants: &[Tenant]) -> Result<(Arc<RedisCoord>, String), String> {
    let token = tenants
        .first()
        .and_then(|t| t.api.resolved_token().ok())
        .unwrap_or_else(|| SecretString::from(String::new()));
    let mut own = cfg.clone();
    own.coord.worker_id = Some(format!("verify-{}", crate::coord::default_worker_id()));
    let work = async {
        let (_, rc) = own
            .redis_coordination(&token)
            .await
            .map_err(|e| format!("cannot reach Redis: {}", crate::field::chain(&e)))?;
        let found = rc
            .verify()
            .await
            .map_err(|e| crate::field::chain(&e).to_string())?;
        Ok((rc, found))
    };
    tokio::time::timeout(CHECK_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("Redis did not answer within {CHECK_TIMEOUT:?}")))
}

/// One real request with the tenant's token: its first pair, a one-minute
/// window ending `window.lag` ago, one permit of its budget.
async fn token(
    cfg: &Config,
    t: &Tenant,
    redis: Option<&Arc<RedisCoord>>,
) -> Result<String, String> {
    let token = t.api.resolved_token().map_err(|e| e.to_string())?;
    let host = t
        .api
        .resolved_base_url()
        .map_err(|e| e.to_string())?
        .host_str()
        .unwrap_or_default()
        .to_string();
    let shard = t
        .shards()
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("no pair configured")?;
    let budget: Arc<dyn Budget> = match redis {
        Some(rc) => Arc::new(rc.budget_of(&t.name, &token, t.budget.clone())),
        None if cfg.coord.redis_url.is_some() => {
            return Err("not checked: Redis (the token's shared budget) failed".into())
        }
        None => Arc::new(MemoryBudget::new(t.budget.clone())),
    };
    let client = Client::new(&t.api, token).map_err(|e| e.to_string())?;
    let end = Utc::now() - chrono::Duration::from_std(t.window.lag.get()).unwrap_or_default();
    let window = Window {
        start: end - chrono::Duration::minutes(1),
        end,
    };
    let url = client.first_page_url(&shard, &window);
    let permit = tokio::time::timeout(PERMIT_TIMEOUT, budget.acquire(Priority::Active))
        .await
        .map_err(|_| {
            format!(
                "no permit of the token's budget within {PERMIT_TIMEOUT:?}: the fleet spends all of it"
            )
        })?
        .map_err(|e| format!("no permit: {}", crate::field::chain(&e)))?;
    let answer = tokio::time::timeout(CHECK_TIMEOUT, client.fetch(permit, &url)).await;
    match answer {
        Err(_) => Err(format!("{host} did not answer within {CHECK_TIMEOUT:?}")),
        Ok(Ok(page)) => Ok(format!(
            "accepted by {host} ({} dialect): {} event(s) of {shard} in the minute to {}",
            client.dialect(),
            page.len(),
            crate::cas::format_time(end)
        )),
        Ok(Err(e)) => Err(match &e {
            ApiError::Status { status: 401, .. } => format!(
                "refused by {host} (401): check {} — is it this account's SIEM API token, for this region?",
                if t.api.token_file.is_some() { "api.token_file" } else { "api.token" }
            ),
            ApiError::Status { status: 429, retry_after, .. } => format!(
                "{host} throttles the token (429; retry after {}): the token could not be checked now",
                retry_after.map_or("?".into(), |d| format!("{} s", d.as_secs()))
            ),
            _ => format!("{host}: {}", crate::field::chain(&e)),
        }),
    }
}

/// The sink reachable, and the topics (or the stream) the templates give.
async fn sink(cfg: &Config) -> Result<String, String> {
    let topics =
        Topics::new(&cfg.sink.topic_template, &cfg.sink.dead_letter).map_err(|e| e.to_string())?;
    let shards = cfg.all_shards().map_err(|e| e.to_string())?;
    let wanted = topics.all(&shards);
    let work = async {
        let sink = crate::sink::build(&cfg.sink, cfg.sink_dedup_window())
            .await
            .map_err(|e| crate::field::chain(&e).to_string())?;
        sink.verify(&wanted)
            .await
            .map_err(|e| crate::field::chain(&e).to_string())
    };
    let kind = cfg.sink.kind;
    tokio::time::timeout(CHECK_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the {kind:?} sink did not answer within {CHECK_TIMEOUT:?}"
            ))
        })
}
