//! A shard is one configured (tenant, service, event): the unit of work, of
//! leases and of cursors. Routing, keys and checkpoints use the **request**
//! pair, never the `service`/`event` values found inside returned events.
//!
//! A configuration without `tenants` has one tenant, [`DEFAULT_TENANT`];
//! its shards print (`service:event`), and are keyed in Redis, as before
//! tenants existed, so a single-tenant fleet keeps its cursors.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::field::ConfigError;

/// The 12 services every current integration polls.
pub const DEFAULT_SERVICES: [&str; 12] = [
    "exchange",
    "sharepoint",
    "onedrive",
    "dropbox",
    "box",
    "googledrive",
    "gmail",
    "teams",
    "exchangeserver",
    "salesforce_sandbox",
    "salesforce_production",
    "teams_chat",
];
/// The tenant of a configuration without `tenants`.
pub const DEFAULT_TENANT: &str = "default";

/// The 4 event types every current integration polls.
pub const DEFAULT_EVENTS: [&str; 4] = ["securityrisk", "virtualanalyzer", "ransomware", "dlp"];

/// The event name of the quarantine stream (`exchange:quarantine`): the
/// API's second log endpoint, `quarantine_events`.
pub const QUARANTINE: &str = "quarantine";
/// The services the quarantine stream exists for.
pub const QUARANTINE_SERVICES: [&str; 1] = ["exchange"];

/// Which of the API's two log endpoints a pair reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// `security_events`: one `service` and one `event` per request,
    /// 72 hours of reach.
    Security,
    /// `quarantine_events`: one `service` per request (Exchange Online
    /// only), 7 days of reach.
    Quarantine,
}

impl Stream {
    /// How far back from the time of a request the API answers.
    pub fn reach(self) -> std::time::Duration {
        match self {
            Stream::Security => std::time::Duration::from_secs(72 * 3600),
            Stream::Quarantine => std::time::Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// The reach as people write it (`72 h`, `7 days`).
    pub fn reach_text(self) -> &'static str {
        match self {
            Stream::Security => "72 h",
            Stream::Quarantine => "7 days",
        }
    }
}

/// The `shards` section: which pairs to collect.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShardsConfig {
    /// `service:event` pairs; default 12 services × 4 events, and the
    /// quarantine stream (`exchange:quarantine`): 49.
    pub pairs: Vec<String>,
    /// Accept a service or event the API does not document (yet): a pair
    /// of unknown names is otherwise refused, with the nearest known name.
    pub allow_unknown_pairs: bool,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        let pairs = DEFAULT_SERVICES
            .iter()
            .flat_map(|s| DEFAULT_EVENTS.iter().map(move |e| format!("{s}:{e}")))
            .chain(
                QUARANTINE_SERVICES
                    .iter()
                    .map(|s| format!("{s}:{QUARANTINE}")),
            )
            .collect();
        Self {
            pairs,
            allow_unknown_pairs: false,
        }
    }
}

impl ShardsConfig {
    /// The configured shards of the default tenant, parsed and checked
    /// for duplicates.
    pub fn shards(&self) -> Result<Vec<Shard>, ConfigError> {
        self.shards_of(DEFAULT_TENANT)
    }

    /// The configured shards of `tenant`, parsed and checked for duplicates.
    pub fn shards_of(&self, tenant: &str) -> Result<Vec<Shard>, ConfigError> {
        let mut out: Vec<Shard> = Vec::with_capacity(self.pairs.len());
        for p in &self.pairs {
            let mut shard: Shard = p
                .parse()
                .map_err(|e: String| ConfigError::new("shards.pairs", e))?;
            shard.tenant = tenant.into();
            if !self.allow_unknown_pairs {
                shard
                    .known()
                    .map_err(|e| ConfigError::new("shards.pairs", format!("`{p}`: {e}")))?;
            }
            if out.contains(&shard) {
                return Err(ConfigError::new(
                    "shards.pairs",
                    format!("`{p}` is listed twice"),
                ));
            }
            out.push(shard);
        }
        if out.is_empty() {
            return Err(ConfigError::new("shards.pairs", "no pair configured"));
        }
        Ok(out)
    }
}

/// One (service, event) pair of one tenant, as requested from its API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    /// The tenant (CAS account) whose API is asked: [`DEFAULT_TENANT`]
    /// unless the configuration names tenants.
    pub tenant: Arc<str>,
    /// The `service` request parameter, e.g. `exchange`.
    pub service: Arc<str>,
    /// The `event` request parameter, e.g. `dlp`.
    pub event: Arc<str>,
}

/// One shared copy of each name: a fleet's replica lists every shard of
/// the fleet (100,000 of them), and a shard's clone is then three
/// reference counts, not three strings.
fn interned(name: &str) -> Arc<str> {
    static NAMES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<Arc<str>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.get(name) {
        return n.clone();
    }
    let n: Arc<str> = Arc::from(name);
    names.insert(n.clone());
    n
}

impl Shard {
    /// A pair of the default tenant.
    pub fn new(service: impl Into<String>, event: impl Into<String>) -> Self {
        Self::of(DEFAULT_TENANT, service, event)
    }

    /// A pair of `tenant`.
    pub fn of(tenant: &str, service: impl Into<String>, event: impl Into<String>) -> Self {
        Self {
            tenant: interned(tenant),
            service: interned(&service.into()),
            event: interned(&event.into()),
        }
    }

    /// Checks that its service and event are names the API documents;
    /// the error names the nearest known one.
    pub fn known(&self) -> Result<(), String> {
        if &*self.event == QUARANTINE {
            if QUARANTINE_SERVICES.contains(&&*self.service) {
                return Ok(());
            }
            return Err(format!(
                "quarantine events exist for {} only, not `{}`; shards.allow_unknown_pairs = true accepts a service the API added later",
                QUARANTINE_SERVICES.join(", "),
                self.service
            ));
        }
        for (what, given, known) in [
            ("service", &self.service, &DEFAULT_SERVICES[..]),
            ("event", &self.event, &DEFAULT_EVENTS[..]),
        ] {
            if !known.contains(&&**given) {
                let all = known
                    .iter()
                    .copied()
                    .chain((what == "event").then_some(QUARANTINE));
                let hint = match crate::field::nearest(given, all) {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!("known: {}", known.join(", ")),
                };
                return Err(format!(
                    "unknown {what} `{given}` ({hint}); shards.allow_unknown_pairs = true accepts a {what} the API added later"
                ));
            }
        }
        Ok(())
    }

    /// Which endpoint it reads: `quarantine` is the quarantine stream.
    pub fn stream(&self) -> Stream {
        if &*self.event == QUARANTINE {
            Stream::Quarantine
        } else {
            Stream::Security
        }
    }

    /// Whether it belongs to the default tenant (keyed and printed as
    /// before tenants existed).
    pub fn default_tenant(&self) -> bool {
        &*self.tenant == DEFAULT_TENANT
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The form pairs are written in (`service:event`), the tenant
        // before them: one id in logs, `status` and operator commands.
        if self.default_tenant() {
            write!(f, "{}:{}", self.service, self.event)
        } else {
            write!(f, "{}:{}:{}", self.tenant, self.service, self.event)
        }
    }
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl FromStr for Shard {
    type Err = String;

    /// Parses `service:event`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (svc, ev) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not of the form service:event"))?;
        if !valid_part(svc) || !valid_part(ev) {
            return Err(format!(
                "`{s}`: service and event may use only A-Z a-z 0-9 _ - (at most 64 each)"
            ));
        }
        Ok(Shard::new(svc, ev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs() {
        let s: Shard = "exchange:dlp".parse().unwrap();
        assert_eq!(s, Shard::new("exchange", "dlp"));
        assert_eq!(s.to_string(), "exchange:dlp");
        assert_eq!(Shard::of("acme", "box", "dlp").to_string(), "acme:box:dlp");
        assert_ne!(Shard::of("acme", "box", "dlp"), Shard::new("box", "dlp"));
        assert!("exchange".parse::<Shard>().is_err());
        assert!("ex change:dlp".parse::<Shard>().is_err());
        assert!(":dlp".parse::<Shard>().is_err());
    }

    #[test]
    fn default_pairs_are_12_by_4_and_the_quarantine_stream() {
        let shards = ShardsConfig::default().shards().unwrap();
        assert_eq!(shards.len(), 49);
        let q = Shard::new("exchange", "quarantine");
        assert!(shards.contains(&q));
        assert_eq!(q.stream(), Stream::Quarantine);
        assert_eq!(q.stream().reach().as_secs(), 7 * 86400);
        assert_eq!(
            Shard::new("exchange", "dlp").stream().reach().as_secs(),
            72 * 3600
        );
        assert_eq!(shards[0], Shard::new("exchange", "securityrisk"));
        assert!(shards.contains(&Shard::new("teams_chat", "dlp")));
    }

    #[test]
    fn duplicate_or_no_pairs_are_refused() {
        let c = ShardsConfig {
            pairs: vec!["box:dlp".into(), " box:dlp".into()],
            allow_unknown_pairs: false,
        };
        assert!(c.shards().unwrap_err().problem.contains("listed twice"));
        let c = ShardsConfig {
            pairs: vec![],
            allow_unknown_pairs: false,
        };
        assert_eq!(c.shards().unwrap_err().field, "shards.pairs");
        let long = format!("{}:dlp", "x".repeat(65));
        assert!(long.parse::<Shard>().is_err());
    }

    #[test]
    fn unknown_names_are_refused_with_the_nearest_known_one() {
        let mut c = ShardsConfig {
            pairs: vec!["gmial:dlp".into()],
            allow_unknown_pairs: false,
        };
        let e = c.shards().unwrap_err();
        assert_eq!(e.field, "shards.pairs");
        assert!(e.problem.contains("unknown service `gmial`"), "{e}");
        assert!(e.problem.contains("did you mean `gmail`?"), "{e}");
        c.pairs = vec!["sharepoint:ransomwear".into()];
        let e = c.shards().unwrap_err();
        assert!(e.problem.contains("did you mean `ransomware`?"), "{e}");
        // Nothing near: the known names are listed.
        c.pairs = vec!["exchange:zzzzzzzz".into()];
        let e = c.shards().unwrap_err();
        assert!(
            e.problem
                .contains("known: securityrisk, virtualanalyzer, ransomware, dlp"),
            "{e}"
        );
        // The quarantine stream is Exchange Online's only.
        c.pairs = vec!["gmail:quarantine".into()];
        let e = c.shards().unwrap_err();
        assert!(
            e.problem
                .contains("quarantine events exist for exchange only"),
            "{e}"
        );
        c.pairs = vec!["exchange:quarantin".into()];
        let e = c.shards().unwrap_err();
        assert!(e.problem.contains("did you mean `quarantine`?"), "{e}");
        // A service the API added later, accepted on request.
        c.pairs = vec!["slack:dlp".into(), "gmial:dlp".into()];
        c.allow_unknown_pairs = true;
        assert_eq!(c.shards().unwrap().len(), 2);
    }
}
