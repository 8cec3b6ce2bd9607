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
        let mut known = lock(&self.known);
        for (shard, ms) in shards.iter().zip(v) {
            if let Some(ms) = ms {
                known.sampled(shard, ms);
            }
        }
        Ok(())
    }

    fn remembered(&self, shard: &Shard) -> Option<DateTime<Utc>> {
        lock(&self.known)
            .get(shard)
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
        lock(&self.known).own(shard, ms);
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

/// Cursors of shards this process loaded or wrote (it held them) are kept
/// up to this many, the least recently touched forgotten first.
const OWN_MAX: usize = 32_768;
/// Cursors read from the fleet (a part each round) are kept up to this many.
const SAMPLE_MAX: usize = 4_096;

/// This process's memory of cursors, bounded: the shards it held lately,
/// and a sample of the fleet's.
#[derive(Debug, Default)]
pub(super) struct Remembered {
    own: Lru,
    sample: Lru,
}

impl Remembered {
    /// A cursor this process loaded or wrote.
    pub(super) fn own(&mut self, shard: &Shard, ms: i64) {
        self.sample.map.remove(shard);
        self.own.put(shard, ms, OWN_MAX);
    }

    /// A cursor read from the fleet.
    pub(super) fn sampled(&mut self, shard: &Shard, ms: i64) {
        if let Some(e) = self.own.map.get_mut(shard) {
            // The store is authoritative (an operator may have moved it).
            e.0 = ms;
            return;
        }
        self.sample.put(shard, ms, SAMPLE_MAX);
    }

    pub(super) fn get(&self, shard: &Shard) -> Option<i64> {
        self.own
            .map
            .get(shard)
            .or_else(|| self.sample.map.get(shard))
            .map(|e| e.0)
    }

    /// How many cursors are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.own.map.len() + self.sample.map.len()
    }
}

/// Values by shard with a touch counter; past `cap`, the older half goes.
#[derive(Debug, Default)]
struct Lru {
    map: std::collections::HashMap<Shard, (i64, u64)>,
    tick: u64,
}

impl Lru {
    fn put(&mut self, shard: &Shard, ms: i64, cap: usize) {
        self.tick += 1;
        match self.map.get_mut(shard) {
            Some(e) => *e = (ms, self.tick),
            None => {
                self.map.insert(shard.clone(), (ms, self.tick));
            }
        }
        if self.map.len() > cap {
            let mut ticks: Vec<u64> = self.map.values().map(|e| e.1).collect();
            let (_, cut, _) = ticks.select_nth_unstable(cap / 2);
            let cut = *cut;
            self.map.retain(|_, e| e.1 >= cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_of_cursors_is_bounded_and_keeps_its_own_first() {
        let mut r = Remembered::default();
        let mine = Shard::of("t", "box", "dlp");
        r.own(&mine, 7);
        for i in 0..(SAMPLE_MAX * 3) {
            r.sampled(&Shard::of("t", format!("s{i}"), "dlp"), i as i64);
        }
        assert!(r.len() <= SAMPLE_MAX + 1, "{}", r.len());
        assert_eq!(r.get(&mine), Some(7), "its own cursor stays");
        // The latest samples are kept, the oldest forgotten.
        let last = SAMPLE_MAX * 3 - 1;
        assert_eq!(
            r.get(&Shard::of("t", format!("s{last}"), "dlp")),
            Some(last as i64)
        );
        assert_eq!(r.get(&Shard::of("t", "s0", "dlp")), None);
        // A fleet read updates its own cursor (the store is authoritative).
        r.sampled(&mine, 9);
        assert_eq!(r.get(&mine), Some(9));
        for i in 0..(OWN_MAX + 10) {
            r.own(&Shard::of("u", format!("s{i}"), "dlp"), 1);
        }
        assert!(r.own.map.len() <= OWN_MAX);
    }
}
