//! Live changes of the configuration file, without a restart.
//!
//! `run` looks at its configuration file every [`WATCH_EVERY`] (a
//! Kubernetes ConfigMap mount replaces it through a symlink swap; reading
//! it again sees the new one). A new file that loads and is runnable
//! (every tenant's token readable) and differs from the one in force is
//! applied the way a rolling restart would, inside the process: a bridge
//! is built on the new configuration first, then the running one stops
//! at a page boundary (its page in flight finished and recorded, its
//! leases given back), and the new one starts on the same coordination,
//! sink and status board. Tenants and pairs added start; those removed
//! stop and release their leases (their cursors stay in the store).
//!
//! A new file that does not load is refused with one error log line (per
//! distinct error) and the configuration in force stays. Changes to the
//! parts a process builds once (the sink's connection, `coord`, `ops`,
//! `log`, `shutdown`) are logged as taking effect at the next restart.
//!
//! Every replica applies a change by itself; `cas_bridge_config_info` and
//! a log line say which configuration (a hash of it, secrets redacted)
//! each one runs.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Config;

/// How often the file is looked at.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The configuration's hash: 12 hex digits of a SHA-256 of its redacted
/// JSON (a token given inline changes nothing here: tokens in files are
/// followed by themselves), without what differs between the replicas of
/// one fleet by design (`coord.worker_id`, `ops.listen`): replicas that
/// run the same configuration show the same hash.
pub fn config_hash(cfg: &Config) -> String {
    let mut shared = cfg.clone();
    shared.coord.worker_id = None;
    shared.ops.listen = crate::ops::OpsConfig::default().listen;
    let d = Sha256::digest(shared.redacted_json().as_bytes());
    hex::encode(&d[..6])
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The sections a live change does not apply, that differ.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        // The topic templates and CloudEvents are the publisher's, applied
        // live; the connection is made once.
        (
            "sink",
            json(&(
                &old.sink.kind,
                &old.sink.kafka,
                &old.sink.nats,
                &old.sink.jsonl,
            )) != json(&(
                &new.sink.kind,
                &new.sink.kafka,
                &new.sink.nats,
                &new.sink.jsonl,
            )),
        ),
        ("coord", json(&old.coord) != json(&new.coord)),
        ("ops", json(&old.ops) != json(&new.ops)),
        ("log", json(&old.log) != json(&new.log)),
        ("shutdown", json(&old.shutdown) != json(&new.shutdown)),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name)
    .collect()
}

/// Watches `file` until it holds a runnable configuration whose hash
/// differs from `current`'s, and returns it. Refusals are logged once each.
pub async fn next_config(file: &Path, current: &Config) -> Config {
    let in_force = config_hash(current);
    let mut last_refusal = String::new();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let loaded = Config::load(Some(file)).and_then(|c| c.runnable().map(|()| c));
        match loaded {
            Ok(c) if config_hash(&c) == in_force => last_refusal.clear(),
            Ok(c) => return c,
            Err(e) => {
                let why = e.to_string();
                if why != last_refusal {
                    tracing::error!(file = %file.display(), error = %why, config = %in_force, "the changed configuration file is refused; the configuration in force stays");
                    last_refusal = why;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_of_one_file_share_the_hash() {
        let mut a = Config::default();
        a.coord.worker_id = Some("cas-bridge-0".into());
        a.ops.listen = "0.0.0.0:9090".into();
        let mut b = a.clone();
        b.coord.worker_id = Some("cas-bridge-1".into());
        b.ops.listen = "127.0.0.1:9191".into();
        assert_eq!(config_hash(&a), config_hash(&b));
        b.coord.prefix = "other".into();
        assert_ne!(config_hash(&a), config_hash(&b));
    }

    #[test]
    fn the_hash_follows_the_configuration_not_its_secrets() {
        let mut a = Config::default();
        a.api.token = Some("first".to_string().into());
        let mut b = a.clone();
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_eq!(config_hash(&a).len(), 12);
        b.api.token = Some("second".to_string().into());
        assert_eq!(
            config_hash(&a),
            config_hash(&b),
            "inline tokens are redacted"
        );
        b.shards.pairs = vec!["box:dlp".into()];
        assert_ne!(config_hash(&a), config_hash(&b));
        assert!(needs_restart(&a, &b).is_empty());
        b.sink.topic_template = "x.{tenant}.{service}.{event}".into();
        assert!(needs_restart(&a, &b).is_empty(), "the publisher's, live");
        b.sink.nats.url = "nats://elsewhere:4222".into();
        b.ops.listen = "127.0.0.1:1".into();
        assert_eq!(needs_restart(&a, &b), vec!["sink", "ops"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_file_keeps_the_one_in_force_until_a_good_one_comes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[api]\ntoken = \"t\"\n").unwrap();
        let current = Config::load(Some(&f)).unwrap();
        let watch = tokio::spawn({
            let f = f.clone();
            async move { next_config(&f, &current).await }
        });
        // Bad, then the same again: nothing returned.
        std::fs::write(&f, "[window]\nmax = \"9d\"\n[api]\ntoken = \"t\"\n").unwrap();
        tokio::time::sleep(WATCH_EVERY * 3).await;
        assert!(!watch.is_finished());
        std::fs::write(&f, "[api]\ntoken = \"t\"\n").unwrap();
        tokio::time::sleep(WATCH_EVERY * 3).await;
        assert!(!watch.is_finished());
        std::fs::write(
            &f,
            "[api]\ntoken = \"t\"\n[shards]\npairs = [\"box:dlp\"]\n",
        )
        .unwrap();
        let new = tokio::time::timeout(WATCH_EVERY * 3, watch)
            .await
            .expect("the good change is taken")
            .unwrap();
        assert_eq!(new.shards.pairs, vec!["box:dlp"]);
    }
}
