//! Typed, layered configuration: defaults → optional file (TOML or YAML) →
//! environment (`CAS_BRIDGE__SECTION__KEY`).
//!
//! Each stage owns its section and its rules ([`crate::cas::ApiConfig`],
//! [`crate::window::WindowConfig`], [`crate::coord::BudgetConfig`], …);
//! this module only layers the sources and fans the checks out, so it
//! depends on the stages and never the reverse. Everything is checked once,
//! in [`Config::validate`], before any request is sent: a bad value stops
//! the start with a [`ConfigError`] that names the field and says what is
//! allowed. The names of the fields are a public contract (operators and
//! the Helm chart use them).

use std::path::Path;

use serde::{Deserialize, Serialize};

mod explain;

pub use crate::cas::{ApiConfig, REGIONS};
pub use crate::coord::{BudgetConfig, BudgetMode, CoordConfig};
pub use crate::field::{parse_duration, redact_urls, ConfigError, Dur};
pub use crate::fleet::ShutdownConfig;
pub use crate::ops::OpsConfig;
pub use crate::schedule::ScheduleConfig;
pub use crate::shard::{ShardsConfig, DEFAULT_EVENTS, DEFAULT_SERVICES};
pub use crate::sink::{JsonlConfig, KafkaConfig, NatsConfig, SinkConfig, SinkKind};
pub use crate::telemetry::LogConfig;
pub use crate::tenant::{Tenant, TenantSpec};
pub use crate::validate::SchemasConfig;
pub use crate::window::{StartFrom, WindowConfig, API_MAX_WINDOW, API_REACH};

/// The whole configuration of one bridge process.
#[derive(Debug, Clone, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How to reach the CAS SIEM API.
    pub api: ApiConfig,
    /// Which (service, event) pairs to collect.
    pub shards: ShardsConfig,
    /// Window planning.
    pub window: WindowConfig,
    /// Which pair's request goes next, and how often a pair is polled.
    pub schedule: ScheduleConfig,
    /// The token's request budget.
    pub budget: BudgetConfig,
    /// Fleet coordination through Redis.
    pub coord: CoordConfig,
    /// Where events go.
    pub sink: SinkConfig,
    /// JSON Schemas events are validated against.
    pub schemas: SchemasConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// The health and metrics server.
    pub ops: OpsConfig,
    /// Several CAS accounts in one fleet; each may override `api`,
    /// `shards`, `window` and `budget` (see [`crate::tenant`]). Empty: the
    /// top-level sections are the one tenant, `default`.
    pub tenants: Vec<TenantSpec>,
}

impl Config {
    /// How long the sink's server-side dedup must remember an id: the
    /// overlap a window re-reads, the lag, and a minute to spare.
    pub fn sink_dedup_window(&self) -> std::time::Duration {
        self.window.overlap.get() + self.window.lag.get() + std::time::Duration::from_secs(60)
    }

    /// The longest dedup horizon of any tenant's windows.
    pub fn dedup_horizon(&self) -> std::time::Duration {
        let top = crate::window::Planner::new(&self.window).dedup_horizon();
        self.tenants()
            .unwrap_or_default()
            .iter()
            .map(|t| crate::window::Planner::new(&t.window).dedup_horizon())
            .fold(top, std::time::Duration::max)
    }

    /// The embedded mode's coordination: one process, everything in memory.
    pub fn in_memory_coordination(&self) -> crate::coord::Coordination {
        crate::coord::Coordination::in_memory(&self.budget, self.dedup_horizon())
    }

    /// A fleet member's coordination, in Redis (`coord.redis_url` must be
    /// set), with the top-level `token`'s budget.
    pub async fn redis_coordination(
        &self,
        token: &secrecy::SecretString,
    ) -> Result<
        (
            crate::coord::Coordination,
            std::sync::Arc<crate::coord::redis::RedisCoord>,
        ),
        crate::coord::CoordError,
    > {
        crate::coord::Coordination::redis(&self.coord, &self.budget, token, self.dedup_horizon())
            .await
    }

    /// The CloudEvents `source` origin (the API's), when records carry
    /// CloudEvents attributes.
    pub fn cloudevents_origin(&self) -> Result<Option<String>, ConfigError> {
        if !self.sink.cloudevents {
            return Ok(None);
        }
        Ok(Some(
            self.api.resolved_base_url()?.origin().ascii_serialization(),
        ))
    }

    /// Every tenant, its sections resolved (one, `default`, without
    /// `tenants`).
    pub fn tenants(&self) -> Result<Vec<Tenant>, ConfigError> {
        crate::tenant::resolve(
            &self.tenants,
            &self.api,
            &self.shards,
            &self.window,
            &self.budget,
        )
    }

    /// Every shard of every tenant.
    pub fn all_shards(&self) -> Result<Vec<crate::shard::Shard>, ConfigError> {
        let mut out = Vec::new();
        for t in self.tenants()? {
            out.extend(t.shards()?);
        }
        Ok(out)
    }

    /// Loads defaults, then `file` (if any), then `CAS_BRIDGE__*` variables,
    /// and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, vars)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::new(
                    "--config",
                    format!("{} does not exist", f.display()),
                ));
            }
            b = b.add_source(config::File::from(f));
        }
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("CAS_BRIDGE__"))
            .collect();
        let env: config::Map<String, String> = vars.iter().cloned().collect();
        b = b.add_source(
            config::Environment::with_prefix("CAS_BRIDGE")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("shards.pairs")
                .try_parsing(true)
                .source(Some(env)),
        );
        let explain = |e| explain::explain(e, file, &vars);
        let raw = b.build().map_err(explain)?;
        let cfg: Config = raw.try_deserialize().map_err(explain)?;
        cfg.validate().map_err(|e| explain::polish(e, file))?;
        Ok(cfg)
    }

    /// Checks every rule no type can express, section by section (each
    /// stage checks its own). Does not read the token file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.api.validate()?;
        self.shards.shards()?;
        self.window.validate()?;
        self.schedule.validate(self.window.min_interval.get())?;
        self.budget.validate()?;
        self.coord.validate()?;
        self.sink.validate()?;
        self.shutdown.validate()?;
        self.ops.addr()?;
        self.log.validate()?;
        let tenants = self.tenants()?;
        for t in &tenants {
            self.schedule
                .validate(t.window.min_interval.get())
                .map_err(|e| t.named(e))?;
        }
        if tenants.len() > 1 {
            for (field, template) in [
                ("sink.topic_template", &self.sink.topic_template),
                ("sink.dead_letter", &self.sink.dead_letter),
            ] {
                if !template.contains("{tenant}") {
                    return Err(ConfigError::new(
                        field,
                        format!("`{template}` has no {{tenant}}: with {} tenants their events would mix on one topic (e.g. cas.{{tenant}}.{{service}}.{{event}}, cas.{{tenant}}.deadletter)", tenants.len()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What `run` needs beyond a valid file: the token (read from the
    /// token file when one is named). `check-config` fails when this does.
    pub fn runnable(&self) -> Result<(), ConfigError> {
        for t in self.tenants()? {
            t.api.resolved_token().map_err(|e| t.named(e))?;
        }
        Ok(())
    }

    /// The effective configuration as JSON, every secret redacted: the
    /// token and Redis URL (by their types), any field whose name says it
    /// holds a secret (`password`, `secret`, `token`, `jaas`, `*.pem` — e.g.
    /// Kafka's `sasl.password`), and the password of any URL (`sink.nats.url`).
    pub fn redacted_json(&self) -> String {
        let mut v = match serde_json::to_value(self) {
            Ok(v) => v,
            Err(e) => return format!("{{\"error\":\"{e}\"}}"),
        };
        redact(&mut v);
        serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Whether a field of this name holds a secret.
fn secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    // A file's path is not its content (`password_file`, `secret_files`).
    if k.ends_with("_file") || k.ends_with("_files") {
        return false;
    }
    ["password", "secret", "jaas"].iter().any(|w| k.contains(w))
        || k == "token"
        || k.ends_with(".pem")
}

fn redact(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if k.ends_with("_files") {
                    // Paths by property name (`sasl.password` = a path).
                    continue;
                }
                if secret_name(k) && !val.is_null() {
                    *val = Value::String("[REDACTED]".into());
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) if s.contains('@') => *s = redact_urls(s),
        _ => {}
    }
}

/// The JSON Schema of the configuration file (`cas-bridge config-schema`):
/// every key, its type, default and description, for editors and YAML
/// language servers.
pub fn schema() -> serde_json::Value {
    let mut s = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default();
    if let Some(o) = s.as_object_mut() {
        o.insert("title".into(), "cas-bridge configuration".into());
    }
    s
}

/// Every key of the configuration file, dotted (`coord.lease_ttl`), as
/// the schema gives them; free-form tables (Kafka `properties`) are one key.
pub fn keys() -> Vec<String> {
    let s = schema();
    let mut out = Vec::new();
    fn walk(s: &serde_json::Value, n: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        for k in explain::properties(s, n) {
            let path = if at.is_empty() {
                k
            } else {
                format!("{at}.{k}")
            };
            let child = explain::node(s, &path);
            match child {
                Some(c)
                    if !explain::properties(s, c).is_empty() && !path.starts_with("tenants.") =>
                {
                    walk(s, c, &path, out)
                }
                _ => out.push(path),
            }
        }
    }
    let root = s.clone();
    walk(&s, &root, "", &mut out);
    out
}

#[cfg(test)]
mod tests;
