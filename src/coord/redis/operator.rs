//! What an operator's command does to a shard in Redis: take its lease
//! with a new fence, so that no holder can overwrite what the command
//! writes (`cas-bridge checkpoint set|reset`).

use super::RedisCoord;
use crate::coord::{CoordError, Fence};
use crate::shard::Shard;

/// What [`RedisCoord::seize`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seized {
    /// The shard is ours under this new fence. `displaced` names the worker
    /// whose live lease was taken (`--force`): its next renewal or
    /// checkpoint is refused and it stops working the shard.
    Ours {
        fence: Fence,
        displaced: Option<String>,
    },
    /// A worker holds the shard (and `force` was not given).
    Held { by: String },
}

/// `worker:fence` → `worker`.
fn worker_of(lease: &str) -> String {
    lease.rsplit_once(':').map_or(lease, |(w, _)| w).to_string()
}

impl RedisCoord {
    /// Takes `shard`'s lease for this worker with a new fence; while another
    /// worker holds it, only with `force`. The fence is bumped either way,
    /// so a holder whose lease had lapsed cannot write either. Give it back
    /// with [`crate::coord::LeaseStore::release`].
    pub async fn seize(&self, shard: &Shard, force: bool) -> Result<Seized, CoordError> {
        let mut inv = self.scripts.seize.prepare_invoke();
        inv.key(self.key("lease", shard))
            .key(self.key("fence", shard))
            .arg(&self.worker)
            .arg(self.ttl.as_millis() as u64)
            .arg(if force { "1" } else { "0" });
        let (fence, lease): (u64, String) = self.run(inv).await?;
        Ok(if fence == 0 {
            Seized::Held {
                by: worker_of(&lease),
            }
        } else {
            Seized::Ours {
                fence,
                displaced: (!lease.is_empty()).then(|| worker_of(&lease)),
            }
        })
    }
}

/// How long the ids `redrive` published are remembered (longer than any
/// dead-letter topic is likely to keep its records).
const REDRIVEN_TTL_MS: u64 = 90 * 86_400_000;

impl RedisCoord {
    fn redriven_key(&self, dead_letter_topic: &str) -> String {
        format!("{}:redriven:{dead_letter_topic}", self.prefix)
    }

    /// For each id, whether `redrive` already published it from
    /// `dead_letter_topic`.
    pub async fn redriven(
        &self,
        dead_letter_topic: &str,
        ids: &[&str],
    ) -> Result<Vec<bool>, CoordError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(self.redriven_key(dead_letter_topic)).arg(ids);
        self.cmd(&cmd).await
    }

    /// Records ids as published by `redrive` (after the broker took them).
    pub async fn mark_redriven(
        &self,
        dead_letter_topic: &str,
        ids: &[&str],
    ) -> Result<(), CoordError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.redriven_key(dead_letter_topic);
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(&key).arg(ids).ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(REDRIVEN_TTL_MS).ignore();
        self.pipe(&pipe).await
    }
}

impl RedisCoord {
    /// `cas-bridge verify`: writes, reads back and deletes a key under the
    /// prefix, and loads every Lua script the fleet runs. Says what it
    /// found (the server's role and version when it tells).
    pub async fn verify(&self) -> Result<String, CoordError> {
        let mut conn = self.connection().await?;
        let key = format!("{}:verify:{}", self.prefix, self.worker);
        let wrote: String = redis::cmd("SET")
            .arg(&key)
            .arg("ok")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .map_err(super::unavailable)?;
        let read: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(super::unavailable)?;
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(super::unavailable)?;
        if wrote != "OK" || read.as_deref() != Some("ok") {
            return Err(CoordError::Unavailable(format!(
                "wrote {key} and read back {read:?}: a replica or a proxy that does not keep writes?"
            )));
        }
        let s = &self.scripts;
        for script in [
            &s.acquire,
            &s.renew,
            &s.checkpoint,
            &s.release,
            &s.seize,
            &s.heartbeat,
            &s.take,
            &s.usage,
            &s.pause,
        ] {
            let _: String = script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(super::unavailable)?;
        }
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        // A cluster answers INFO per node, not as one text.
        let what = if self.tagged {
            "a Redis Cluster".to_string()
        } else {
            format!("Redis {version}")
        };
        Ok(format!(
            "{what}: wrote and read {}:*, 9 Lua scripts loaded",
            self.prefix
        ))
    }
}
