//! The shard's cursor and in-window progress: loaded when a runner starts,
//! moved after every window (fenced).

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::coord::{CoordError, Fence, Progress};
use crate::retry::Backoff;
use crate::shard::Shard;

impl Engine {
    /// Where the sink says the shard was: the window start of the last
    /// record on its topic (every window before it was checkpointed). A
    /// shard that ran before continues there rather than at
    /// `window.start_from`, even when Redis and every replica forgot it.
    async fn sink_position(&self, shard: &Shard) -> Option<DateTime<Utc>> {
        let topic = self.publisher.topics().topic(shard);
        match self.publisher.sink().last_window_start(&topic).await {
            Ok(Some(text)) => match DateTime::parse_from_rfc3339(&text) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(e) => {
                    tracing::warn!(%shard, window_start = %crate::cas::one_line(&text, 64), error = %crate::field::chain(&e), "the last record on the topic has an unreadable window start; starting at window.start_from");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%shard, error = %crate::field::chain(&e), "no cursor, and the sink cannot say where the shard was; starting at window.start_from");
                None
            }
        }
    }

    /// The stored position inside the window after `cursor`, if there is
    /// one worth resuming (a record of an older window is ignored).
    pub(super) async fn load_progress(
        &self,
        shard: &Shard,
        cursor: DateTime<Utc>,
    ) -> Option<Progress> {
        match self.checkpoints.load_progress(shard).await {
            Ok(Some(p)) if p.end > cursor && p.start < p.end => Some(p),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(%shard, error = %crate::field::chain(&e), "cannot load the progress inside the window; reading it from its start");
                None
            }
        }
    }

    /// The stored cursor, or the configured start; `None` if cancelled.
    pub(super) async fn load_cursor(
        &self,
        shard: &Shard,
        cancel: &CancellationToken,
    ) -> Option<DateTime<Utc>> {
        let mut retry = Backoff::request();
        loop {
            match self.checkpoints.load(shard).await {
                Ok(Some(c)) => return Some(c),
                Ok(None) => {
                    if let Some(c) = self.checkpoints.remembered(shard) {
                        self.telemetry
                            .shard(shard)
                            .cursor_recovered(c, "this process's memory");
                        return Some(c);
                    }
                    if let Some(c) = self.sink_position(shard).await {
                        self.telemetry.shard(shard).cursor_recovered(c, "the sink");
                        return Some(c);
                    }
                    let lane = self.lane(shard)?;
                    return Some(lane.settings.start_from.resolve(self.started));
                }
                Err(e) => {
                    tracing::warn!(%shard, error = %crate::field::chain(&e), "cannot load the cursor; retrying");
                    if !retry.wait(cancel).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Moves the cursor; `false` when the shard must stop (fenced, cancelled).
    pub(super) async fn checkpoint(
        &self,
        shard: &Shard,
        fence: Fence,
        end: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> bool {
        let mut retry = Backoff::request();
        loop {
            match self.checkpoints.store(shard, fence, end).await {
                Ok(()) => return true,
                Err(e @ CoordError::Fenced { .. }) => {
                    tracing::warn!(%shard, error = %crate::field::chain(&e), "checkpoint refused: lost the shard");
                    self.status.set_error(shard, &crate::field::chain(&e));
                    return false;
                }
                Err(e) => {
                    tracing::warn!(%shard, error = %crate::field::chain(&e), "checkpoint failed; retrying");
                    if !retry.wait(cancel).await {
                        return false;
                    }
                }
            }
        }
    }
}
