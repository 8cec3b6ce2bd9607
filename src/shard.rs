//! A shard is one configured (service, event) pair: the unit of work, of
//! leases and of cursors. Routing, keys and checkpoints use the **request**
//! pair, never the `service`/`event` values found inside returned events.

use std::fmt;
use std::str::FromStr;

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
/// The 4 event types every current integration polls.
pub const DEFAULT_EVENTS: [&str; 4] = ["securityrisk", "virtualanalyzer", "ransomware", "dlp"];

/// The `shards` section: which pairs to collect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardsConfig {
    /// `service:event` pairs; default 12 services × 4 events.
    pub pairs: Vec<String>,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        let pairs = DEFAULT_SERVICES
            .iter()
            .flat_map(|s| DEFAULT_EVENTS.iter().map(move |e| format!("{s}:{e}")))
            .collect();
        Self { pairs }
    }
}

impl ShardsConfig {
    /// The configured shards, parsed and checked for duplicates.
    pub fn shards(&self) -> Result<Vec<Shard>, ConfigError> {
        let mut out: Vec<Shard> = Vec::with_capacity(self.pairs.len());
        for p in &self.pairs {
            let shard: Shard = p
                .parse()
                .map_err(|e: String| ConfigError::new("shards.pairs", e))?;
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

/// One (service, event) pair as requested from the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    /// The `service` request parameter, e.g. `exchange`.
    pub service: String,
    /// The `event` request parameter, e.g. `dlp`.
    pub event: String,
}

impl Shard {
    pub fn new(service: impl Into<String>, event: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            event: event.into(),
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.event)
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
        assert_eq!(s.to_string(), "exchange/dlp");
        assert!("exchange".parse::<Shard>().is_err());
        assert!("ex change:dlp".parse::<Shard>().is_err());
        assert!(":dlp".parse::<Shard>().is_err());
    }

    #[test]
    fn default_pairs_are_12_by_4_and_unique() {
        let shards = ShardsConfig::default().shards().unwrap();
        assert_eq!(shards.len(), 48);
        assert_eq!(shards[0], Shard::new("exchange", "securityrisk"));
        assert!(shards.contains(&Shard::new("teams_chat", "dlp")));
    }

    #[test]
    fn duplicate_or_no_pairs_are_refused() {
        let c = ShardsConfig {
            pairs: vec!["box:dlp".into(), " box:dlp".into()],
        };
        assert!(c.shards().unwrap_err().problem.contains("listed twice"));
        let c = ShardsConfig { pairs: vec![] };
        assert_eq!(c.shards().unwrap_err().field, "shards.pairs");
        let long = format!("{}:dlp", "x".repeat(65));
        assert!(long.parse::<Shard>().is_err());
    }
}
