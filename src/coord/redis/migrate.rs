//! `cas-bridge migrate-keys`: copies a single Redis's keys (the layout
//! without hash tags) into the hash-tagged layout of a Redis Cluster, so a
//! fleet moves to a cluster with its cursors, fences, in-window progress,
//! dedup memory and budgets.
//!
//! What must stay true here: the source is only read; a key that already
//! exists in the target is left as it is (the command can run again); a
//! fence is copied, never lowered, so a holder from before the move can
//! never write again; nothing is copied while the fleet still runs on the
//! source (its leases and heartbeats), unless forced.

use std::collections::BTreeMap;

use redis::AsyncCommands;
use secrecy::SecretString;

use super::{RedisCoord, RedisTarget, TlsFiles};
use crate::coord::CoordError;

/// The per-shard kinds whose keys take the shard as a hash tag.
const SHARD_KINDS: [&str; 5] = ["fence", "cursor", "progress", "status", "dedup"];

/// What one source key becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Copied under this name.
    Copy(String),
    /// `P:budget-of:<tenant>`: copied, its value (a budget key) mapped.
    BudgetOf,
    /// Not copied (live state of the fleet that was stopped, or a probe).
    Skip,
}

/// Where a key of the layout without tags goes in the tagged one.
pub fn plan(prefix: &str, key: &str) -> Plan {
    let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')) else {
        return Plan::Skip;
    };
    let (kind, tail) = rest.split_once(':').unwrap_or((rest, ""));
    match kind {
        "workers" | "lease" | "verify" => Plan::Skip,
        _ if tail.starts_with('{') => Plan::Copy(key.to_string()),
        k if SHARD_KINDS.contains(&k) && !tail.is_empty() => {
            Plan::Copy(format!("{prefix}:{k}:{{{tail}}}"))
        }
        "budget" => Plan::Copy(format!("{prefix}:{}", budget_key(prefix, rest))),
        "budget-of" => Plan::BudgetOf,
        _ => Plan::Copy(key.to_string()),
    }
}

/// `budget:<hash>[:…]` → `budget:{<hash>}[:…]`.
fn budget_key(_prefix: &str, rest: &str) -> String {
    let tail = rest.strip_prefix("budget:").unwrap_or(rest);
    match tail.split_once(':') {
        Some((hash, more)) => format!("budget:{{{hash}}}:{more}"),
        None => format!("budget:{{{tail}}}"),
    }
}

/// What a migration did, by kind of key.
#[derive(Debug, Default, serde::Serialize)]
pub struct Migrated {
    pub copied: BTreeMap<String, u64>,
    /// Already in the target: left as they were.
    pub existing: u64,
    /// Leases, heartbeats, probes: not copied.
    pub skipped: u64,
}

impl RedisCoord {
    /// Copies every key under the prefix from the Redis at `from` (the
    /// layout without tags) into this coordinator's Redis (tagged). Refuses
    /// while the source has live leases or workers, unless `force`.
    pub async fn migrate_from(
        &self,
        from: &SecretString,
        tls: &TlsFiles,
        force: bool,
        dry_run: bool,
    ) -> Result<Migrated, CoordError> {
        if !self.tagged {
            return Err(CoordError::Unavailable(
                "the configured Redis is not a cluster (coord.cluster_nodes is empty): a single Redis keeps the layout it has, there is nothing to migrate".into(),
            ));
        }
        let source = RedisTarget::new(from, tls, None, &[])?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(super::CALL_TIMEOUT)
            .set_response_timeout(super::CALL_TIMEOUT * 10);
        let mut src = source.connect(cfg).await?;
        let fail = |what: &str| {
            let what = what.to_string();
            move |e: redis::RedisError| CoordError::Failed {
                what,
                cause: Box::new(e),
            }
        };
        let prefix = &self.prefix;
        if !force {
            let (s, _): (i64, i64) = redis::cmd("TIME")
                .query_async(&mut src)
                .await
                .map_err(fail("reading the source's clock"))?;
            let live: i64 = src
                .zcount(format!("{prefix}:workers"), s * 1000, "+inf")
                .await
                .map_err(fail("reading the source's workers"))?;
            let leases = scan(&mut src, &format!("{prefix}:lease:*"), 1).await?;
            if live > 0 || !leases.is_empty() {
                return Err(CoordError::Unavailable(format!(
                    "the fleet still runs on the source ({live} live workers, leases held): stop every replica first (or --force)"
                )));
            }
        }
        let keys = scan(&mut src, &format!("{prefix}:*"), usize::MAX).await?;
        let mut dst = self.connection().await?;
        let mut done = Migrated::default();
        for key in keys {
            let kind = key
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.trim_start_matches(':').split(':').next())
                .unwrap_or("?")
                .to_string();
            let target = match plan(prefix, &key) {
                Plan::Skip => {
                    done.skipped += 1;
                    continue;
                }
                Plan::BudgetOf => key.clone(),
                Plan::Copy(t) => t,
            };
            let exists: bool = dst
                .exists(&target)
                .await
                .map_err(fail("reading the target"))?;
            if exists {
                done.existing += 1;
                continue;
            }
            *done.copied.entry(kind.clone()).or_default() += 1;
            if dry_run {
                continue;
            }
            let ttl: i64 = src.pttl(&key).await.map_err(fail("reading a TTL"))?;
            let ttl = ttl.max(0);
            if kind == "budget-of" {
                let v: Option<String> = src.get(&key).await.map_err(fail("reading a key"))?;
                let Some(v) = v else { continue };
                let mapped = match v.strip_prefix(&format!("{prefix}:")) {
                    Some(rest) if !rest.contains('{') => {
                        format!("{prefix}:{}", budget_key(prefix, rest))
                    }
                    _ => v,
                };
                let mut set = redis::cmd("SET");
                set.arg(&target).arg(mapped);
                if ttl > 0 {
                    set.arg("PX").arg(ttl);
                }
                let _: () = set
                    .query_async(&mut dst)
                    .await
                    .map_err(fail("writing the target"))?;
                continue;
            }
            let dump: Option<Vec<u8>> = redis::cmd("DUMP")
                .arg(&key)
                .query_async(&mut src)
                .await
                .map_err(fail("reading a key"))?;
            let Some(dump) = dump else { continue };
            let _: () = redis::cmd("RESTORE")
                .arg(&target)
                .arg(ttl)
                .arg(dump)
                .query_async(&mut dst)
                .await
                .map_err(fail("writing the target"))?;
        }
        Ok(done)
    }
}

/// Every key matching `pattern`, at most `limit`.
async fn scan(
    conn: &mut super::Conn,
    pattern: &str,
    limit: usize,
) -> Result<Vec<String>, CoordError> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|e| CoordError::Failed {
                what: "scanning the source".into(),
                cause: Box::new(e),
            })?;
        out.extend(keys);
        if next == 0 || out.len() >= limit {
            return Ok(out);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Shard;

    #[test]
    fn each_key_goes_where_the_tagged_layout_reads_it() {
        let p = "cb";
        let copy = |k: &str| match plan(p, k) {
            Plan::Copy(t) => t,
            other => panic!("{k}: {other:?}"),
        };
        // The oracle: the keys the coordinator builds in each layout.
        for shard in [
            Shard::new("exchange", "dlp"),
            Shard::of("acme", "box", "dlp"),
        ] {
            for kind in SHARD_KINDS {
                let old = super::super::key_of(p, false, kind, &shard);
                let new = super::super::key_of(p, true, kind, &shard);
                assert_eq!(copy(&old), new);
            }
            let lease = super::super::key_of(p, false, "lease", &shard);
            assert_eq!(plan(p, &lease), Plan::Skip);
        }
        assert_eq!(
            copy("cb:budget:abcd:sliding:minute"),
            "cb:budget:{abcd}:sliding:minute"
        );
        assert_eq!(copy("cb:budget:abcd:seq"), "cb:budget:{abcd}:seq");
        assert_eq!(plan(p, "cb:budget-of:acme"), Plan::BudgetOf);
        assert_eq!(plan(p, "cb:workers"), Plan::Skip);
        assert_eq!(plan(p, "cb:verify:w1"), Plan::Skip);
        assert_eq!(copy("cb:redriven:t.dead"), "cb:redriven:t.dead");
        // Already tagged: unchanged.
        assert_eq!(copy("cb:cursor:{box:dlp}"), "cb:cursor:{box:dlp}");
        assert_eq!(plan("other", "cb:cursor:box:dlp"), Plan::Skip);
    }
}
