//! A shard is one configured (service, event) pair: the unit of work, of
//! leases and of cursors. Routing, keys and checkpoints use the **request**
//! pair, never the `service`/`event` values found inside returned events.

use std::fmt;
use std::str::FromStr;

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
}
