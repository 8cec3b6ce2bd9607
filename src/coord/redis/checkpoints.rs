//! Cursors and in-window progress in Redis, written with the shard's fence,
//! and this process's memory of the fleet's cursors.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{lock, unavailable, RedisCoord};
use crate::coord::{CheckpointStore, CoordError, Fence, Progress};
use crate::shard::Shard;

#[async_trait]
impl CheckpointStore for RedisCoord {
    async fn load(&self, shard: &Shard) -> Result<Option<DateTime<Utc>>, CoordError> {
        let v: Option<i64> = self
            .cmd(redis::cmd("GET").arg(self.key("cursor", shard)))
            .await?;
        if let Some(ms) = v {
            self.remember(shard, ms);
        }
        Ok(v.and_then(DateTime::from_timestamp_millis))
    }

    async fn refresh(&self, shards: &[Shard]) -> Result<(), CoordError> {
        if shards.is_empty() {
            return Ok(());
        }
        let mut mget = redis::cmd("MGET");
        for s in shards {
            mget.arg(self.key("cursor", s));
        }
        let v: Vec<Option<i64>> = self.cmd(&mget).await?;
        for (shard, ms) in shards.iter().zip(v) {
            if let Some(ms) = ms {
                self.remember(shard, ms);
            }
        }
        Ok(())
    }

    fn remembered(&self, shard: &Shard) -> Option<DateTime<Utc>> {
        let known = lock(&self.known);
        known
            .get(shard)
            .copied()
            .and_then(DateTime::from_timestamp_millis)
    }

    async fn store(
        &self,
        shard: &Shard,
        fence: Fence,
        cursor: DateTime<Utc>,
    ) -> Result<(), CoordError> {
        self.fenced_write(
            shard,
            fence,
            "cursor",
            cursor.timestamp_millis().to_string(),
        )
        .await?;
        self.remember(shard, cursor.timestamp_millis());
        Ok(())
    }

    async fn load_progress(&self, shard: &Shard) -> Result<Option<Progress>, CoordError> {
        let v: Option<String> = self
            .cmd(redis::cmd("GET").arg(self.key("progress", shard)))
            .await?;
        // A record that does not parse (another version wrote it) is ignored:
        // the window is read from its start, which is always safe.
        Ok(v.and_then(|t| serde_json::from_str(&t).ok()))
    }

    async fn store_progress(
        &self,
        shard: &Shard,
        fence: Fence,
        progress: &Progress,
    ) -> Result<(), CoordError> {
        let text = serde_json::to_string(progress).map_err(unavailable)?;
        self.fenced_write(shard, fence, "progress", text).await
    }
}

impl RedisCoord {
    /// What the store says `shard`'s cursor is now (it is authoritative: an
    /// operator may have moved it back).
    fn remember(&self, shard: &Shard, ms: i64) {
        let mut known = lock(&self.known);
        known.insert(shard.clone(), ms);
    }

    /// Writes the cursor (and deletes the progress) or the progress, in one
    /// Lua step that checks the lease holder and the fence.
    async fn fenced_write(
        &self,
        shard: &Shard,
        fence: Fence,
        target: &str,
        value: String,
    ) -> Result<(), CoordError> {
        let mut inv = self.scripts.checkpoint.prepare_invoke();
        inv.key(self.key("lease", shard))
            .key(self.key("fence", shard))
            .key(self.key(target, shard))
            .key(self.key("progress", shard))
            .arg(&self.worker)
            .arg(fence)
            .arg(self.ttl.as_millis() as u64)
            .arg(value)
            .arg(if target == "cursor" { "1" } else { "0" });
        let (code, current): (i64, u64) = self.run(inv).await?;
        match code {
            1 => Ok(()),
            2 => {
                tracing::warn!(%shard, fence, "Redis had lost this shard's lease and fence; restored them with the {target}");
                Ok(())
            }
            _ => Err(CoordError::Fenced {
                shard: shard.to_string(),
                ours: fence,
                current,
            }),
        }
    }
}
