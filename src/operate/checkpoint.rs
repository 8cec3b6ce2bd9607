//! `cas-bridge checkpoint show|set|reset`: a pair's cursor, read or moved
//! while the fleet runs. A move takes the shard's lease with a new fence
//! first, so no holder can overwrite it; a held shard is refused unless
//! `--force`, which displaces the holder (its next renewal or checkpoint is
//! refused and it stops working the shard; whoever takes it next starts at
//! the new cursor).

use chrono::{DateTime, Utc};

use crate::coord::redis::{RedisCoord, Seized, ShardStatus};
use crate::coord::{CheckpointStore, LeaseStore};
use crate::shard::Shard;

/// What a move did.
#[derive(Debug, Clone)]
pub struct Moved {
    pub before: ShardStatus,
    pub after: ShardStatus,
    /// The worker whose lease `--force` took.
    pub displaced: Option<String>,
}

/// One shard's line, as `show` prints it.
pub fn describe(s: &ShardStatus) -> String {
    let cursor = s
        .cursor
        .map(crate::cas::format_time)
        .unwrap_or_else(|| "none".into());
    let mut line = format!("{}  cursor {cursor}", s.shard);
    if let Some(lag) = s.lag_seconds {
        line.push_str(&format!(" ({lag} s behind)"));
    }
    if let Some(w) = &s.window_in_flight {
        line.push_str(&format!(
            "  window in flight {w} after page {}",
            s.pages_done.unwrap_or(0)
        ));
    }
    match (&s.owner, s.lease_expires_in_ms) {
        (Some(o), Some(ms)) => line.push_str(&format!("  held by {o} (lease {ms} ms)")),
        _ => line.push_str("  not held"),
    }
    if let Some(f) = s.fence {
        line.push_str(&format!("  fence {f}"));
    }
    line
}

async fn one(rc: &RedisCoord, shard: &Shard) -> anyhow::Result<ShardStatus> {
    let mut st = rc.status(std::slice::from_ref(shard)).await?;
    st.shards
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no status for {shard}"))
}

/// Refuses a cursor the fleet could not use: in the future, or past the
/// reach of the shard's stream (72 h; 7 days for quarantine events).
pub fn check_cursor(shard: &Shard, to: DateTime<Utc>, now: DateTime<Utc>) -> anyhow::Result<()> {
    let stream = shard.stream();
    let reach = chrono::Duration::from_std(stream.reach())?;
    if to > now {
        anyhow::bail!(
            "{} is in the future (now {}): the shard would skip events not yet written",
            crate::cas::format_time(to),
            crate::cas::format_time(now)
        );
    }
    if now - to > reach {
        anyhow::bail!(
            "{} reaches past the API's {} limit for {shard} (the earliest is {})",
            crate::cas::format_time(to),
            stream.reach_text(),
            crate::cas::format_time(now - reach)
        );
    }
    Ok(())
}

/// Moves `shard`'s cursor to `to` and forgets its window in flight, under
/// a lease of its own with a new fence; refused while another worker holds
/// the shard, unless `force`.
pub async fn set(
    rc: &RedisCoord,
    shard: &Shard,
    to: DateTime<Utc>,
    force: bool,
) -> anyhow::Result<Moved> {
    check_cursor(shard, to, Utc::now())?;
    let before = one(rc, shard).await?;
    let (fence, displaced) = match rc.seize(shard, force).await? {
        Seized::Held { by } => anyhow::bail!(
            "{shard} is held by {by}: nothing changed. Stop the fleet, wait for the lease to lapse, or pass --force to take the shard from it (it stops working the shard at its next renewal)"
        ),
        Seized::Ours { fence, displaced } => (fence, displaced),
    };
    let written = rc.store(shard, fence, to).await;
    // Given back even when the write failed; a lease left behind lapses
    // after its TTL anyway.
    let released = rc.release(shard, fence).await;
    written?;
    if let Err(e) = released {
        tracing::warn!(%shard, error = %crate::field::chain(&e), "cannot give the lease back; it lapses after coord.lease_ttl");
    }
    let after = one(rc, shard).await?;
    Ok(Moved {
        before,
        after,
        displaced,
    })
}
