//! The shard's cursor and in-window progress: loaded when a runner starts,
//! moved after every window (fenced).

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::coord::{CoordError, Fence, Progress};
use crate::retry::{until_ok, Backoff};
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
        let loaded = until_ok(
            &mut Backoff::request(),
            cancel,
            || self.checkpoints.load(shard),
            |e, _| {
                tracing::warn!(%shard, error = %crate::field::chain(e), "cannot load the cursor; retrying");
                true
            },
        )
        .await
        .ok()?;
        if let Some(c) = loaded {
            return Some(c);
        }
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
        Some(lane.settings.start_from.resolve(self.started))
    }

    /// Moves the cursor; `false` when the shard must stop (fenced, cancelled).
    pub(super) async fn checkpoint(
        &self,
        shard: &Shard,
        fence: Fence,
        end: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> bool {
        until_ok(
            &mut Backoff::request(),
            cancel,
            || self.checkpoints.store(shard, fence, end),
            |e, _| match e {
                CoordError::Fenced { .. } => {
                    tracing::warn!(%shard, error = %e, "checkpoint refused: lost the shard");
                    self.status.set_error(shard, e);
                    false
                }
                _ => {
                    tracing::warn!(%shard, error = %crate::field::chain(e), "checkpoint failed; retrying");
                    true
                }
            },
        )
        .await
        .is_ok()
    }
}
