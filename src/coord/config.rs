//! The `budget` and `coord` sections: the token's request budget and the
//! fleet's coordination store.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::field::{check_range, ConfigError, Dur};

/// How the budget counts requests.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BudgetMode {
    /// Never more than `per_minute` in any 60 s (and `per_day` in any 24 h).
    #[default]
    Sliding,
    /// Windows that start at the first request, as the live API counts.
    Fixed,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Requests per minute for the token (all workers together).
    pub per_minute: u32,
    /// Requests per day for the token (all workers together).
    pub per_day: u32,
    /// `sliding` or `fixed`.
    pub mode: BudgetMode,
    /// Added to the budget's minute (and day): a permit is taken on Redis's
    /// clock, but the API counts the request when it arrives, up to this
    /// much later.
    pub margin: Dur,
    /// The longest pause a 429's `Retry-After` (seconds or an HTTP date)
    /// may impose on the fleet; a longer one is cut to this.
    pub max_pause: Dur,
}

impl BudgetConfig {
    /// The least time between two permits: the minute spread evenly over
    /// `per_minute` requests.
    pub fn pace(&self) -> Duration {
        Duration::from_millis(60_000 / u64::from(self.per_minute.max(1)))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.per_minute == 0 {
            return Err(ConfigError::new("budget.per_minute", "must be at least 1"));
        }
        if self.per_day == 0 {
            return Err(ConfigError::new("budget.per_day", "must be at least 1"));
        }
        if self.margin.get() > Duration::from_secs(30) {
            return Err(ConfigError::new("budget.margin", "must be at most 30s"));
        }
        check_range(
            "budget.max_pause",
            self.max_pause,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            per_minute: 10,
            per_day: 14_400,
            mode: BudgetMode::Sliding,
            margin: Dur(Duration::from_millis(250)),
            max_pause: Dur::secs(300),
        }
    }
}

fn redact_url<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(u) => match url::Url::parse(u.expose_secret()) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("REDACTED"));
                }
                s.serialize_str(url.as_str())
            }
            Err(_) => s.serialize_str("[unparsable]"),
        },
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CoordConfig {
    /// `redis://[:password@]host:port[/db]` or `rediss://…`; none = in-process (one worker).
    #[schemars(with = "Option<String>")]
    #[serde(serialize_with = "redact_url")]
    pub redis_url: Option<SecretString>,
    /// Namespace of every Redis key.
    pub prefix: String,
    /// Lifetime of a shard lease; renewed every third of it.
    pub lease_ttl: Dur,
    /// This worker's name (default: host name, process id and a random suffix).
    pub worker_id: Option<String>,
    /// A PEM bundle of CA certificates trusted for `rediss://` (instead of
    /// the built-in roots).
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate (PEM), for a Redis that asks for one; with
    /// `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// Redis Sentinel: the name of the master the sentinels watch. The
    /// master's address comes from them; `redis_url` gives the rest
    /// (scheme, user, password, db), its host is not used.
    pub sentinel_master: Option<String>,
    /// Redis Sentinel: each sentinel's `host:port`.
    pub sentinels: Vec<String>,
    /// Redis Cluster: seed nodes' `host:port` (the rest of the cluster is
    /// learnt from them). `redis_url` gives the scheme and credentials, its
    /// host is not used. Keys carry hash tags: every key of one shard in
    /// one slot, a token's budget keys in another (`cas-bridge
    /// migrate-keys` copies a single Redis's keys into this layout).
    pub cluster_nodes: Vec<String>,
}

/// A `host:port`.
pub fn host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.trim().rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    (!h.is_empty()).then_some(())?;
    Some((h.to_string(), p.parse().ok()?))
}

impl Default for CoordConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            prefix: "cas-bridge".into(),
            lease_ttl: Dur::secs(15),
            worker_id: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            sentinel_master: None,
            sentinels: Vec::new(),
            cluster_nodes: Vec::new(),
        }
    }
}

impl CoordConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.redis_url {
            match url::Url::parse(u.expose_secret()) {
                Ok(url)
                    if matches!(url.scheme(), "redis" | "rediss") && url.host_str().is_some() => {}
                _ => {
                    return Err(ConfigError::new(
                        "coord.redis_url",
                        "must be redis://[:password@]host[:port][/db] or rediss://…",
                    ))
                }
            }
        }
        let tls_url = self
            .redis_url
            .as_ref()
            .is_some_and(|u| u.expose_secret().starts_with("rediss://"));
        if (self.tls_ca_file.is_some() || self.tls_cert_file.is_some()) && !tls_url {
            return Err(ConfigError::new(
                "coord.tls_ca_file",
                "TLS files need a rediss:// coord.redis_url",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::new(
                "coord.tls_cert_file",
                "a client certificate needs its key (coord.tls_key_file), and a key its certificate",
            ));
        }
        match (&self.sentinel_master, self.sentinels.is_empty()) {
            (Some(m), _) if m.trim().is_empty() => {
                return Err(ConfigError::new("coord.sentinel_master", "is empty"));
            }
            (Some(_), true) => {
                return Err(ConfigError::new(
                    "coord.sentinels",
                    "coord.sentinel_master needs at least one sentinel (host:port)",
                ));
            }
            (None, false) => {
                return Err(ConfigError::new(
                    "coord.sentinel_master",
                    "coord.sentinels needs the master's name",
                ));
            }
            _ => {}
        }
        if let Some(bad) = self.sentinels.iter().find(|s| host_port(s).is_none()) {
            return Err(ConfigError::new(
                "coord.sentinels",
                format!("`{bad}` is not host:port"),
            ));
        }
        if self.sentinel_master.is_some() && self.redis_url.is_none() {
            return Err(ConfigError::new(
                "coord.redis_url",
                "with Sentinel, set it for the scheme and credentials, e.g. redis://:password@sentinel/0 (its host is not used)",
            ));
        }
        if !self.cluster_nodes.is_empty() {
            if let Some(bad) = self.cluster_nodes.iter().find(|s| host_port(s).is_none()) {
                return Err(ConfigError::new(
                    "coord.cluster_nodes",
                    format!("`{bad}` is not host:port"),
                ));
            }
            if self.sentinel_master.is_some() {
                return Err(ConfigError::new(
                    "coord.cluster_nodes",
                    "a Redis Cluster or Sentinel, not both",
                ));
            }
            if self.redis_url.is_none() {
                return Err(ConfigError::new(
                    "coord.redis_url",
                    "with a Redis Cluster, set it for the scheme and credentials, e.g. redis://:password@cluster (its host is not used)",
                ));
            }
        }
        let p = &self.prefix;
        if p.is_empty()
            || p.len() > 64
            || p.chars().any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(ConfigError::new(
                "coord.prefix",
                format!("`{p}` must be 1 to 64 characters without spaces or braces"),
            ));
        }
        check_range(
            "coord.lease_ttl",
            self.lease_ttl,
            Duration::from_secs(3),
            Duration::from_secs(300),
        )?;
        if let Some(w) = &self.worker_id {
            if w.is_empty()
                || w.len() > 128
                || w.contains(':')
                || w.chars().any(char::is_whitespace)
            {
                return Err(ConfigError::new(
                    "coord.worker_id",
                    "must be 1 to 128 characters without spaces or colons",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_spreads_the_minute() {
        let b = BudgetConfig {
            per_minute: 20,
            ..BudgetConfig::default()
        };
        assert_eq!(b.pace(), Duration::from_secs(3));
        assert_eq!(BudgetConfig::default().pace(), Duration::from_secs(6));
    }

    #[test]
    fn budget_rules() {
        let bad = |f: fn(&mut BudgetConfig)| {
            let mut c = BudgetConfig::default();
            f(&mut c);
            c.validate().unwrap_err().field
        };
        assert_eq!(bad(|c| c.per_minute = 0), "budget.per_minute");
        assert_eq!(bad(|c| c.per_day = 0), "budget.per_day");
        assert_eq!(bad(|c| c.margin = Dur::secs(31)), "budget.margin");
        assert_eq!(bad(|c| c.max_pause = Dur::secs(7200)), "budget.max_pause");
        assert!(BudgetConfig::default().validate().is_ok());
    }

    #[test]
    fn coord_rules() {
        let bad = |f: fn(&mut CoordConfig)| {
            let mut c = CoordConfig::default();
            f(&mut c);
            c.validate().unwrap_err().field
        };
        assert_eq!(
            bad(|c| c.redis_url = Some("http://x".to_string().into())),
            "coord.redis_url"
        );
        assert_eq!(bad(|c| c.prefix = "a b".into()), "coord.prefix");
        assert_eq!(bad(|c| c.prefix = "{x}".into()), "coord.prefix");
        assert_eq!(bad(|c| c.lease_ttl = Dur::secs(1)), "coord.lease_ttl");
        assert_eq!(bad(|c| c.worker_id = Some("a:b".into())), "coord.worker_id");
        assert_eq!(
            bad(|c| c.tls_ca_file = Some("ca.pem".into())),
            "coord.tls_ca_file"
        );
        assert_eq!(
            bad(|c| {
                c.redis_url = Some("rediss://r:6380".to_string().into());
                c.tls_cert_file = Some("c.pem".into());
            }),
            "coord.tls_cert_file"
        );
        assert_eq!(
            bad(|c| c.sentinel_master = Some("m".into())),
            "coord.sentinels"
        );
        assert_eq!(
            bad(|c| c.sentinels = vec!["127.0.0.1:26379".into()]),
            "coord.sentinel_master"
        );
        assert_eq!(
            bad(|c| {
                c.sentinel_master = Some("m".into());
                c.sentinels = vec!["127.0.0.1".into()];
            }),
            "coord.sentinels"
        );
        assert_eq!(
            bad(|c| {
                c.sentinel_master = Some("m".into());
                c.sentinels = vec!["127.0.0.1:26379".into()];
            }),
            "coord.redis_url"
        );
        assert_eq!(
            bad(|c| c.cluster_nodes = vec!["127.0.0.1:7000".into()]),
            "coord.redis_url"
        );
        assert_eq!(
            bad(|c| {
                c.redis_url = Some("redis://cluster".to_string().into());
                c.cluster_nodes = vec!["127.0.0.1".into()];
            }),
            "coord.cluster_nodes"
        );
        assert_eq!(
            bad(|c| {
                c.redis_url = Some("redis://cluster".to_string().into());
                c.cluster_nodes = vec!["127.0.0.1:7000".into()];
                c.sentinel_master = Some("m".into());
                c.sentinels = vec!["127.0.0.1:26379".into()];
            }),
            "coord.cluster_nodes"
        );
        assert_eq!(host_port("[::1]:26379"), Some(("::1".into(), 26379)));
        assert!(CoordConfig::default().validate().is_ok());
    }

    #[test]
    fn redis_password_is_redacted() {
        let c = CoordConfig {
            redis_url: Some("redis://:pw123@r:6379/0".to_string().into()),
            ..CoordConfig::default()
        };
        let j = serde_json::to_string(&c).unwrap();
        assert!(!j.contains("pw123"), "{j}");
        assert!(j.contains("REDACTED"));
    }
}
