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
mod tests {
    use super::*;
    use std::time::Duration;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(
            None,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid_and_have_49_shards() {
        let c = load(&[]).unwrap();
        assert_eq!(c.shards.shards().unwrap().len(), 49);
        assert_eq!(c.api.effective_page_limit(), 500);
        assert_eq!(c.budget.per_minute, 10);
    }

    #[test]
    fn env_overrides_and_lists() {
        let c = load(&[
            ("CAS_BRIDGE__SHARDS__PAIRS", "exchange:dlp,box:ransomware"),
            ("CAS_BRIDGE__WINDOW__LAG", "5m"),
            ("CAS_BRIDGE__API__DIALECT", "legacy"),
            ("CAS_BRIDGE__BUDGET__PER_MINUTE", "20"),
        ])
        .unwrap();
        assert_eq!(c.shards.pairs, vec!["exchange:dlp", "box:ransomware"]);
        assert_eq!(c.window.lag.get(), Duration::from_secs(300));
        assert_eq!(c.api.effective_page_limit(), 200);
        assert_eq!(c.budget.per_minute, 20);
    }

    #[test]
    fn redaction_hides_the_token() {
        let c = load(&[
            ("CAS_BRIDGE__API__TOKEN", "s3cr3t-token-value"),
            (
                "CAS_BRIDGE__COORD__REDIS_URL",
                "redis://:s3cr3tpw@redis:6379/0",
            ),
        ])
        .unwrap();
        assert!(!c.redacted_json().contains("s3cr3tpw"));
        assert!(!format!("{c:?}").contains("s3cr3tpw"));
        assert!(!c.redacted_json().contains("s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(c.redacted_json().contains("[REDACTED]"));
    }

    #[test]
    fn redaction_hides_broker_secrets_by_name_and_in_urls() {
        let mut c = Config::default();
        c.sink.nats.url = "nats://bridge:natspw1@n1:4222,nats://n2:4222".into();
        let props = &mut c.sink.kafka.properties;
        props.insert("sasl.password".into(), "kafkapw2".into());
        props.insert("ssl.key.password".into(), "keypw3".into());
        props.insert("sasl.username".into(), "bridge".into());
        let out = c.redacted_json();
        for secret in ["natspw1", "kafkapw2", "keypw3"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("nats://bridge:REDACTED@n1:4222"), "{out}");
        assert!(out.contains("\"sasl.username\": \"bridge\""), "{out}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("CAS_BRIDGE__WINDOW__MAX", "4d", "window.max"),
            ("CAS_BRIDGE__API__REGION", "mars", "api.region"),
            (
                "CAS_BRIDGE__SINK__TOPIC_TEMPLATE",
                "cas.{pair}",
                "sink.topic_template",
            ),
            ("CAS_BRIDGE__API__PAGE_LIMIT", "501", "api.page_limit"),
            ("CAS_BRIDGE__WINDOW__START_FROM", "8d", "window.start_from"),
            ("CAS_BRIDGE__SHARDS__PAIRS", "exchange", "shards.pairs"),
            ("CAS_BRIDGE__BUDGET__PER_MINUTE", "0", "budget.per_minute"),
            (
                "CAS_BRIDGE__COORD__REDIS_URL",
                "http://x",
                "coord.redis_url",
            ),
            ("CAS_BRIDGE__COORD__LEASE_TTL", "1s", "coord.lease_ttl"),
        ];
        for (k, v, field) in cases {
            let e = load(&[(k, v)]).unwrap_err();
            assert_eq!(&e.field, field, "{k}={v}: {e}");
        }
    }

    #[test]
    fn a_file_then_env_layers() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[window]\nlag = \"2m\"\n[budget]\nper_minute = 20\n[sink]\nkind = \"nats\"\n[sink.nats]\nurl = \"nats://n:4222\"\n",
        )
        .unwrap();
        let c = Config::load_from(
            Some(&f),
            [(
                "CAS_BRIDGE__BUDGET__PER_MINUTE".to_string(),
                "15".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(c.window.lag.get(), Duration::from_secs(120));
        assert_eq!(c.budget.per_minute, 15);
        assert_eq!(c.sink.kind, SinkKind::Nats);
    }

    #[test]
    fn unknown_keys_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[window]\nlagg = \"2m\"\n").unwrap();
        let e = Config::load_from(Some(&f), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("lagg"), "{e}");
        let e = Config::load_from(Some(&dir.path().join("none.toml")), Vec::new()).unwrap_err();
        assert_eq!(e.field, "--config");
    }

    #[test]
    fn errors_name_the_field_the_allowed_values_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str, &str, &[&str])] = &[
            // Unknown key: the nearest known one, the file and line.
            (
                "c.toml",
                "[coord]\nprefix = \"x\"\nlease_tll = \"10s\"\n",
                "coord.lease_tll",
                &[
                    "unknown key `lease_tll`",
                    "did you mean `coord.lease_ttl`?",
                    "c.toml, line 3",
                ],
            ),
            (
                "c.yaml",
                "api:\n  regoin: us\n",
                "api.regoin",
                &["did you mean `api.region`?", "c.yaml, line 2"],
            ),
            (
                "c.toml",
                "[sinks]\nkind = \"nats\"\n",
                "sinks",
                &["did you mean `sink`?"],
            ),
            (
                "c.toml",
                "[[tenants]]\nname = \"a\"\n[tenants.api]\ntokn = \"x\"\n",
                "tenants.a.api.tokn",
                &["did you mean `tenants.a.api.token`?", "line 4"],
            ),
            // Unknown enum value: every allowed value.
            (
                "c.toml",
                "[sink]\nkind = \"kafka2\"\n",
                "sink.kind",
                &[
                    "`kafka2` is not one of: kafka, nats, jsonl",
                    "did you mean `kafka`?",
                ],
            ),
            (
                "c.toml",
                "[budget]\nmode = \"slidng\"\n",
                "budget.mode",
                &["not one of: sliding, fixed"],
            ),
            (
                "c.toml",
                "[api]\ndialect = \"v2\"\n",
                "api.dialect",
                &["not one of: v1, legacy"],
            ),
            // Wrong type: in words, not Rust's type names.
            (
                "c.toml",
                "[budget]\nper_minute = \"abc\"\n",
                "budget.per_minute",
                &["expected a whole number, got string \"abc\"", "line 2"],
            ),
            (
                "c.toml",
                "[sink]\ncloudevents = \"maybe\"\n",
                "sink.cloudevents",
                &["expected true or false"],
            ),
            // Bad duration.
            (
                "c.toml",
                "[window]\nlag = \"5 minutes\"\n",
                "window.lag",
                &["unknown unit `minutes` (use ms, s, m, h or d)", "line 2"],
            ),
        ];
        for (name, text, field, says) in cases {
            let f = dir.path().join(name);
            std::fs::write(&f, text).unwrap();
            let e = Config::load_from(Some(&f), Vec::new()).unwrap_err();
            assert_eq!(&e.field, field, "{text}: {e}");
            for s in *says {
                assert!(e.problem.contains(s), "{text}: `{s}` not in: {e}");
            }
            for rust in [
                "SinkKind",
                "BudgetMode",
                "Dialect",
                "u32",
                "variant constructor",
            ] {
                assert!(!e.problem.contains(rust), "{text}: {e}");
            }
        }
        // From the environment: the variable is named.
        let e = load(&[("CAS_BRIDGE__SINK__KIND", "natz")]).unwrap_err();
        assert_eq!(e.field, "sink.kind");
        assert!(e.problem.contains("did you mean `nats`?"), "{e}");
        assert!(
            e.problem
                .contains("from the environment, CAS_BRIDGE__SINK__KIND"),
            "{e}"
        );
    }

    /// Every key the configuration serializes (an oracle apart from the
    /// schema) is in the schema, and the schema has no other.
    #[test]
    fn the_schema_lists_every_key() {
        fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
            let free = [
                "sink.kafka.properties",
                "sink.kafka.secret_files",
                "sink.kafka.topic_config",
            ];
            if let Some(m) = v.as_object() {
                if !free.contains(&at) && !at.is_empty() || at.is_empty() {
                    for (k, child) in m {
                        let path = if at.is_empty() {
                            k.clone()
                        } else {
                            format!("{at}.{k}")
                        };
                        if child.is_object() && !free.contains(&path.as_str()) {
                            walk(child, &path, out);
                        } else {
                            out.push(path);
                        }
                    }
                }
            }
        }
        let mut serialized = Vec::new();
        walk(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut serialized,
        );
        // `tenants` is an empty list by default: its entries' keys.
        serialized.extend(
            [
                "tenants.name",
                "tenants.api",
                "tenants.shards",
                "tenants.window",
                "tenants.budget",
            ]
            .map(String::from),
        );
        serialized.retain(|k| k != "tenants");
        serialized.sort();
        let mut from_schema = keys();
        from_schema.sort();
        assert_eq!(from_schema, serialized);
        assert!(from_schema.len() > 60, "{}", from_schema.len());
    }

    /// Every key of the configuration is in the reference's table (a row
    /// naming it, or a row of its section naming its last part).
    #[test]
    fn the_docs_table_lists_every_key() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ))
        .unwrap();
        let first_cells: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" | ").next())
            .collect();
        let missing: Vec<String> = keys()
            .into_iter()
            .filter(|key| {
                let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
                !first_cells.iter().any(|c| {
                    c.contains(&format!("`{key}`"))
                        || (!section.is_empty()
                            && (c.contains(&format!("`{section}."))
                                || c.contains(&format!("`{section}`")))
                            && (c.contains(&format!("`{leaf}`"))
                                || doc.lines().any(|l| {
                                    l.starts_with(&format!("| `{section}`"))
                                        && l.contains(&format!("`{leaf}`"))
                                })))
                })
            })
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/configuration.md's table: {missing:?}"
        );
    }

    #[test]
    fn runnable_needs_a_token() {
        let c = load(&[]).unwrap();
        assert_eq!(c.runnable().unwrap_err().field, "api.token");
        let c = load(&[("CAS_BRIDGE__API__TOKEN", "t")]).unwrap();
        assert!(c.runnable().is_ok());
    }

    #[test]
    fn several_tenants_need_tenant_in_both_templates() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let tenants = "[[tenants]]\nname = \"acme\"\n[tenants.api]\ntoken = \"a\"\n[[tenants]]\nname = \"beta\"\n[tenants.api]\ntoken = \"b\"\nregion = \"eu\"\n";
        std::fs::write(&f, tenants).unwrap();
        let e = Config::load_from(Some(&f), Vec::new()).unwrap_err();
        assert_eq!(e.field, "sink.topic_template", "{e}");
        assert!(e.problem.contains("would mix"), "{e}");
        let with_topic =
            format!("[sink]\ntopic_template = \"cas.{{tenant}}.{{service}}.{{event}}\"\n{tenants}");
        std::fs::write(&f, &with_topic).unwrap();
        let e = Config::load_from(Some(&f), Vec::new()).unwrap_err();
        assert_eq!(e.field, "sink.dead_letter", "{e}");
        let both = with_topic.replace("[sink]\n", "[sink]\ndead_letter = \"cas.{tenant}.dl\"\n");
        std::fs::write(&f, both).unwrap();
        let c = Config::load_from(Some(&f), Vec::new()).unwrap();
        let shards = c.all_shards().unwrap();
        assert_eq!(shards.len(), 98);
        assert!(c.runnable().is_ok());
        assert_eq!(c.tenants().unwrap()[1].api.region.as_deref(), Some("eu"));
        // A tenant's inline token is redacted like the top-level one.
        assert!(
            !c.redacted_json().contains("\"a\""),
            "{}",
            c.redacted_json()
        );
        assert!(!format!("{c:?}").contains("String(\"b\")"), "{c:?}");
        assert!(format!("{c:?}").contains("[REDACTED]"));
        // One tenant alone may leave {tenant} out.
        std::fs::write(
            &f,
            "[[tenants]]\nname = \"acme\"\n[tenants.api]\ntoken = \"a\"\n",
        )
        .unwrap();
        assert!(Config::load_from(Some(&f), Vec::new()).is_ok());
    }

    #[test]
    fn kafka_without_brokers_is_refused_outside_demo() {
        let e = load(&[("CAS_BRIDGE__SINK__KIND", "kafka")]).unwrap_err();
        assert_eq!(e.field, "sink.kafka.brokers");
        let e = load(&[("CAS_BRIDGE__SINK__KIND", "nats")]).unwrap_err();
        assert_eq!(e.field, "sink.nats.url");
    }
}
