//! Tenants: one fleet serving several CAS accounts, each with its own API
//! host, token, pairs, windows and budget.
//!
//! The `tenants` list names each tenant and may set the sections `api`,
//! `shards`, `window` and `budget`; a tenant's section is layered field by
//! field over the top-level one, with three exceptions that keep a token
//! where it belongs:
//! - `api.token` and `api.token_file` are never inherited: every tenant
//!   names its own (a tenant without one is refused);
//! - a tenant that sets `api.base_url` or `api.region` inherits neither;
//! - `api.proxy` and `api.ca_file` are inherited unless the tenant sets them.
//!
//! Without `tenants`, the top-level sections are one tenant,
//! [`DEFAULT_TENANT`], keyed in Redis exactly as before tenants existed.
//! Naming a tenant `default` keeps those keys too: a single-tenant fleet
//! becomes multi-tenant without moving its cursors.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cas::ApiConfig;
use crate::coord::BudgetConfig;
use crate::field::ConfigError;
use crate::shard::{Shard, ShardsConfig, DEFAULT_TENANT};
use crate::window::WindowConfig;

/// One entry of `tenants`, as written: the sections it overrides. Its
/// `Debug` shows no token.
#[derive(Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSpec {
    /// Used in topics, Redis keys, metrics and logs.
    pub name: String,
    /// Overrides of the top-level `api` (the token is never inherited).
    #[schemars(with = "ApiConfig")]
    pub api: Map<String, Value>,
    /// Overrides of the top-level `shards`.
    #[schemars(with = "ShardsConfig")]
    pub shards: Map<String, Value>,
    /// Overrides of the top-level `window`.
    #[schemars(with = "WindowConfig")]
    pub window: Map<String, Value>,
    /// Overrides of the top-level `budget`.
    #[schemars(with = "BudgetConfig")]
    pub budget: Map<String, Value>,
}

impl std::fmt::Debug for TenantSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut api = self.api.clone();
        if let Some(t) = api.get_mut("token") {
            *t = Value::String("[REDACTED]".into());
        }
        f.debug_struct("TenantSpec")
            .field("name", &self.name)
            .field("api", &api)
            .field("shards", &self.shards)
            .field("window", &self.window)
            .field("budget", &self.budget)
            .finish()
    }
}

/// One tenant, its sections resolved.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub api: ApiConfig,
    pub shards: ShardsConfig,
    pub window: WindowConfig,
    pub budget: BudgetConfig,
}

impl Tenant {
    /// The top-level sections as the one tenant of a configuration
    /// without `tenants`.
    pub fn sole(
        api: &ApiConfig,
        shards: &ShardsConfig,
        window: &WindowConfig,
        budget: &BudgetConfig,
    ) -> Self {
        Self {
            name: DEFAULT_TENANT.into(),
            api: api.clone(),
            shards: shards.clone(),
            window: window.clone(),
            budget: budget.clone(),
        }
    }

    /// Its shards. The seed page's dialect has no quarantine endpoint:
    /// with it the default pairs leave the quarantine stream out, and a
    /// quarantine pair listed by hand is refused.
    pub fn shards(&self) -> Result<Vec<Shard>, ConfigError> {
        let mut shards = self
            .shards
            .shards_of(&self.name)
            .map_err(|e| self.named(e))?;
        if self.api.dialect == crate::cas::Dialect::Legacy {
            let quarantine = |s: &Shard| s.stream() == crate::shard::Stream::Quarantine;
            if self.shards.pairs == ShardsConfig::default().pairs {
                shards.retain(|s| !quarantine(s));
            } else if let Some(q) = shards.iter().find(|s| quarantine(s)) {
                return Err(self.named(ConfigError::new(
                    "shards.pairs",
                    format!(
                        "`{}:{}`: the legacy dialect (the seed page's API) has no quarantine events endpoint; quarantine events need api.dialect = v1",
                        q.service, q.event
                    ),
                )));
            }
        }
        Ok(shards)
    }

    /// An error of one of its sections, named as the field is written.
    pub fn named(&self, e: ConfigError) -> ConfigError {
        if self.name == DEFAULT_TENANT && !e.field.starts_with("tenants") {
            return e;
        }
        ConfigError::new(format!("tenants.{}.{}", self.name, e.field), e.problem)
    }

    /// The CloudEvents `source` origin of its records (its API's), when
    /// records carry CloudEvents attributes (`sink.cloudevents`).
    pub fn cloudevents_origin(&self, on: bool) -> Result<Option<String>, ConfigError> {
        if !on {
            return Ok(None);
        }
        let url = self.api.resolved_base_url().map_err(|e| self.named(e))?;
        Ok(Some(url.origin().ascii_serialization()))
    }

    /// Checks its sections (not the token file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.api.validate().map_err(|e| self.named(e))?;
        self.shards()?;
        self.window.validate().map_err(|e| self.named(e))?;
        self.budget.validate().map_err(|e| self.named(e))
    }
}

/// Whether `name` may name a tenant: it goes into topics (Kafka and NATS),
/// Redis keys and metric labels.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a tenant name: 1 to 48 of a-z 0-9 _ -, starting with a letter or digit (it is used in topics, Redis keys and metrics)"
        ))
    }
}

/// `over` layered onto `base`, field by field (objects merge, anything
/// else is replaced).
fn layer(base: &mut Value, over: &Map<String, Value>) {
    let Value::Object(b) = base else {
        *base = Value::Object(over.clone());
        return;
    };
    for (k, v) in over {
        match (b.get_mut(k), v) {
            (Some(bv @ Value::Object(_)), Value::Object(o)) => layer(bv, o),
            _ => {
                b.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A section of `spec` over the top-level `base`, deserialized; an error
/// names `tenants.<name>.<section>`.
fn section<T: Serialize + serde::de::DeserializeOwned>(
    name: &str,
    section: &str,
    base: &T,
    over: &Map<String, Value>,
    drop: &[&str],
) -> Result<T, ConfigError> {
    let field = format!("tenants.{name}.{section}");
    let mut v = serde_json::to_value(base).map_err(|e| ConfigError::new(&field, e.to_string()))?;
    if let Value::Object(m) = &mut v {
        for k in drop {
            m.remove(*k);
        }
    }
    layer(&mut v, over);
    serde_json::from_value(v).map_err(|e| ConfigError::new(field, e.to_string()))
}

/// Each tenant of `specs` over the top-level sections, checked: names
/// valid and unique, sections valid.
pub fn resolve(
    specs: &[TenantSpec],
    api: &ApiConfig,
    shards: &ShardsConfig,
    window: &WindowConfig,
    budget: &BudgetConfig,
) -> Result<Vec<Tenant>, ConfigError> {
    if specs.is_empty() {
        let t = Tenant::sole(api, shards, window, budget);
        return Ok(vec![t]);
    }
    let mut out: Vec<Tenant> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        valid_name(&spec.name).map_err(|e| ConfigError::new(format!("tenants[{i}].name"), e))?;
        if out.iter().any(|t| t.name == spec.name) {
            return Err(ConfigError::new(
                format!("tenants[{i}].name"),
                format!("tenant `{}` is listed twice", spec.name),
            ));
        }
        let name = spec.name.as_str();
        // The token and the host are the tenant's own; the secrets of the
        // top level (token, proxy) never pass through a serialization,
        // which redacts them.
        let mut drop = vec!["token", "token_file", "proxy"];
        if spec.api.contains_key("base_url") || spec.api.contains_key("region") {
            drop.extend(["base_url", "region"]);
        }
        let mut t_api: ApiConfig = section(name, "api", api, &spec.api, &drop)?;
        if !spec.api.contains_key("proxy") {
            t_api.proxy = api.proxy.clone();
        }
        let t = Tenant {
            name: name.to_string(),
            api: t_api,
            shards: section(name, "shards", shards, &spec.shards, &[])?,
            window: section(name, "window", window, &spec.window, &[])?,
            budget: section(name, "budget", budget, &spec.budget, &[])?,
        };
        if t.api.token.is_none() && t.api.token_file.is_none() {
            return Err(ConfigError::new(
                format!("tenants.{name}.api.token"),
                "every tenant names its own token: set api.token_file (or api.token) in the tenant",
            ));
        }
        t.validate()?;
        out.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::time::Duration;

    fn spec(name: &str, api: Value) -> TenantSpec {
        TenantSpec {
            name: name.into(),
            api: api.as_object().cloned().unwrap_or_default(),
            ..TenantSpec::default()
        }
    }

    fn top() -> (ApiConfig, ShardsConfig, WindowConfig, BudgetConfig) {
        let api = ApiConfig {
            region: Some("us".into()),
            token: Some("top-secret".to_string().into()),
            proxy: Some("http://u:pw@proxy:3128".into()),
            ..ApiConfig::default()
        };
        let window = WindowConfig {
            lag: crate::field::Dur::secs(90),
            ..WindowConfig::default()
        };
        (
            api,
            ShardsConfig::default(),
            window,
            BudgetConfig::default(),
        )
    }

    fn run(specs: &[TenantSpec]) -> Result<Vec<Tenant>, ConfigError> {
        let (a, s, w, b) = top();
        resolve(specs, &a, &s, &w, &b)
    }

    #[test]
    fn without_tenants_the_top_level_is_the_default_tenant() {
        let t = run(&[]).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, DEFAULT_TENANT);
        assert_eq!(
            t[0].shards().unwrap()[0],
            Shard::new("exchange", "securityrisk")
        );
    }

    #[test]
    fn a_tenant_layers_its_sections_over_the_top_level() {
        let mut s = spec(
            "acme",
            serde_json::json!({"region": "eu", "token": "acme-t", "timeout": "5s"}),
        );
        s.shards
            .insert("pairs".into(), serde_json::json!(["exchange:dlp"]));
        s.budget.insert("per_minute".into(), serde_json::json!(20));
        let t = run(&[
            s,
            spec("beta", serde_json::json!({"token_file": "/t/beta"})),
        ])
        .unwrap();
        let acme = &t[0];
        assert_eq!(
            acme.api.resolved_base_url().unwrap().as_str(),
            "https://api-eu.tmcas.trendmicro.com/"
        );
        assert_eq!(acme.api.timeout.get(), Duration::from_secs(5));
        assert_eq!(acme.api.token.as_ref().unwrap().expose_secret(), "acme-t");
        assert_eq!(
            acme.shards().unwrap(),
            vec![Shard::of("acme", "exchange", "dlp")]
        );
        assert_eq!(acme.budget.per_minute, 20);
        // Inherited: the window, the proxy with its password, the region.
        assert_eq!(acme.window.lag.get(), Duration::from_secs(90));
        assert_eq!(acme.api.proxy.as_deref(), Some("http://u:pw@proxy:3128"));
        let beta = &t[1];
        assert!(
            beta.api.token.is_none(),
            "the top-level token is not inherited"
        );
        assert_eq!(beta.api.region.as_deref(), Some("us"));
        assert_eq!(beta.shards().unwrap().len(), 49);
        // The legacy dialect has no quarantine endpoint: left out of the
        // defaults, refused when listed.
        let mut legacy = beta.clone();
        legacy.api.dialect = crate::cas::Dialect::Legacy;
        assert_eq!(legacy.shards().unwrap().len(), 48);
        legacy.shards.pairs = vec!["exchange:quarantine".into()];
        let e = legacy.shards().unwrap_err();
        assert!(e.problem.contains("api.dialect = v1"), "{e}");
        assert_eq!(beta.budget.per_minute, 10);
    }

    #[test]
    fn bad_tenants_are_refused_naming_the_field() {
        let tok = serde_json::json!({"token": "t"});
        let cases: Vec<(Vec<TenantSpec>, &str, &str)> = vec![
            (vec![spec("Acme", tok.clone())], "tenants[0].name", "a-z"),
            (vec![spec("a.b", tok.clone())], "tenants[0].name", "a-z"),
            (vec![spec("", tok.clone())], "tenants[0].name", "a-z"),
            (
                vec![spec("a", tok.clone()), spec("a", tok.clone())],
                "tenants[1].name",
                "twice",
            ),
            (
                vec![spec("a", serde_json::json!({}))],
                "tenants.a.api.token",
                "own token",
            ),
            (
                vec![spec(
                    "a",
                    serde_json::json!({"token": "t", "region": "mars"}),
                )],
                "tenants.a.api.region",
                "unknown region",
            ),
            (
                vec![spec("a", serde_json::json!({"token": "t", "regoin": "eu"}))],
                "tenants.a.api",
                "regoin",
            ),
        ];
        for (specs, field, words) in cases {
            let e = run(&specs).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.problem.contains(words), "{e}");
        }
        let mut s = spec("a", tok);
        s.shards.insert("pairs".into(), serde_json::json!(["box"]));
        assert_eq!(run(&[s]).unwrap_err().field, "tenants.a.shards.pairs");
    }
}
