//! The lease keeper: fleet membership, the fair share, hand-over. Every
//! third of the lease TTL it reaps finished runners, renews the leases it
//! holds, announces itself, and takes or gives up shards towards
//! ⌈shards ÷ live workers⌉. It publishes the shards it holds on the status
//! board's one channel; nothing else keeps that list.
//!
//! What must stay true here: a shard is worked only under a lease; a lease
//! that cannot be renewed before it expires stops its runner at once; a
//! surplus shard, and every shard at shutdown, is given up at a page
//! boundary (drain: the page in flight is published and its progress
//! recorded, so the next holder continues after it); shutdown takes at most
//! the grace period, then abandons what is still in flight (the cursor and
//! progress stay at the last page delivered) and releases the leases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::coord::{Fence, LeaseStore, Renew, Renewal, ShardReport};
use crate::field::{ConfigError, Dur};
use crate::runner::Engine;
use crate::shard::Shard;
use crate::telemetry::ShardTelemetry;

/// The `shutdown` section.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long shutdown may take before in-flight work is abandoned.
    pub grace: Dur,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Dur::secs(20),
        }
    }
}

impl ShutdownConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.grace.get() > Duration::from_secs(3600) {
            return Err(ConfigError::new("shutdown.grace", "must be at most 1h"));
        }
        Ok(())
    }
}

/// A shard this process holds a lease on.
struct Held {
    fence: Fence,
    /// Stops the runner at once (lease lost, shutdown).
    cancel: CancellationToken,
    /// Stops it at the next page boundary (rebalancing, shutdown).
    drain: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    last_renewed: tokio::time::Instant,
    /// The lease is gone: the runner was cancelled and must not be released.
    lost: bool,
    /// The shard's telemetry handles (its labels built once).
    tel: ShardTelemetry,
    /// Its series on `/metrics`: they go when the lease goes.
    _series: crate::telemetry::HeldGuard,
    /// What `status` shows of it, as last written, and when.
    reported: Option<(ShardReport, tokio::time::Instant)>,
}

impl Drop for Held {
    /// If the keeper's own task is dropped (aborted), its runners must not
    /// outlive it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps this process's share of the leases and a runner per held shard.
pub struct LeaseKeeper {
    /// Leases and membership.
    leases: Arc<dyn LeaseStore>,
    /// Runs each held shard.
    engine: Arc<Engine>,
    /// Every configured shard, in this worker's search order.
    order: Vec<Shard>,
    /// How long shutdown may take.
    grace: Duration,
    /// The shards held, by shard.
    held: HashMap<Shard, Held>,
    /// Where the search for free shards goes on in `order`.
    scan_at: usize,
    /// Where the reading of the fleet's cursors goes on in `order`.
    refresh_at: usize,
    /// The live workers the last full search saw, and how many full
    /// searches in a row found nothing (they are spaced out, see
    /// [`LeaseKeeper::rebalance`]).
    searched: (usize, u32),
    /// Rounds until the next full search.
    search_in: u32,
    /// Where the reading of the tenants' budgets goes on.
    usage_at: usize,
    /// Told when a runner ends.
    finished: Arc<tokio::sync::Notify>,
}

/// Every tenant's budget gauges are read within this many rounds.
const USAGE_ROUNDS: usize = 12;

/// At most this many shards are looked at for free ones in a round after
/// a full search found none (the fleet is settled).
const SCAN_SLICE: usize = 1024;
/// The fleet's cursors read per round (this process remembers them, see
/// [`crate::coord::CheckpointStore::remembered`]).
const REFRESH_SLICE: usize = 1024;
/// A shard's `status` is written again after this long even if unchanged
/// (its hash expires a day after the last write).
const REPORT_AGAIN: Duration = Duration::from_secs(3600);

impl LeaseKeeper {
    pub fn new(
        leases: Arc<dyn LeaseStore>,
        engine: Arc<Engine>,
        shards: &[Shard],
        grace: Duration,
    ) -> Self {
        // Workers start their search for free shards at different places.
        let mut order = shards.to_vec();
        let offset = rand::rng().random_range(0..order.len().max(1));
        order.rotate_left(offset);
        Self {
            leases,
            engine,
            order,
            grace,
            held: HashMap::new(),
            scan_at: 0,
            refresh_at: 0,
            searched: (0, 0),
            search_in: 0,
            usage_at: 0,
            finished: Arc::default(),
        }
    }

    /// Keeps leases until `cancel` fires, then shuts down within the grace
    /// period. The caller flushes the sink and then calls
    /// [`LeaseKeeper::release_all`].
    pub async fn run(&mut self, cancel: &CancellationToken) {
        let period = self.leases.ttl() / 3;
        loop {
            self.tend(cancel).await;
            // Between rounds, a runner that ended (a surplus shard drained
            // for a joining replica) gives its lease back at once, not at
            // the next round.
            let next = tokio::time::Instant::now() + period;
            let go_on = loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break true,
                    _ = cancel.cancelled() => break false,
                    _ = self.finished.notified() => {
                        self.reap().await;
                        self.publish_held();
                    }
                }
            };
            if !go_on {
                break;
            }
        }
        info!(
            grace_s = crate::field::secs(self.grace),
            "shutting down: finishing the pages in flight"
        );
        // Each runner finishes its page in flight, records its progress and
        // stops: the next holder continues after that page.
        for h in self.held.values() {
            h.drain.cancel();
        }
        // The leases stay renewed while the runners finish, so no other
        // worker takes a shard whose last page is still being delivered.
        let deadline = tokio::time::Instant::now() + self.grace;
        let mut next_renewal = tokio::time::Instant::now() + period;
        while self.held.values().any(|h| !h.task.is_finished()) {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                for (shard, h) in self.held.iter_mut().filter(|(_, h)| !h.task.is_finished()) {
                    warn!(%shard, "grace period over; abandoning the page in flight (cursor and progress stay at the last page delivered)");
                    h.cancel.cancel();
                    h.task.abort();
                }
                break;
            }
            if now >= next_renewal {
                self.renew().await;
                next_renewal = now + period;
            }
            tokio::time::sleep(Duration::from_millis(20).min(deadline - now)).await;
        }
    }

    /// Gives every lease back and leaves the fleet.
    pub async fn release_all(&mut self) {
        let held: Vec<(Shard, Held)> = self.held.drain().collect();
        let leases = &self.leases;
        futures::future::join_all(held.iter().filter(|(_, h)| !h.lost).map(
            |(shard, h)| async move {
                if let Err(e) = leases.release(shard, h.fence).await {
                    warn!(%shard, error = %crate::field::chain(&e), "cannot release the lease; it expires by itself");
                }
            },
        ))
        .await;
        drop(held);
        if let Err(e) = self.leases.leave().await {
            warn!(error = %crate::field::chain(&e), "cannot leave the fleet; the heartbeat expires by itself");
        }
        self.publish_held();
    }

    fn publish_held(&self) {
        let mut holding: Vec<Shard> = self
            .held
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(s, _)| s.clone())
            .collect();
        holding.sort();
        self.engine.telemetry.leases_held(holding.len());
        self.engine.status.set_held(holding);
    }

    /// One round: reap finished runners, renew, announce, and take or give
    /// up shards towards the fair share; then publish what is held.
    async fn tend(&mut self, cancel: &CancellationToken) {
        self.round(cancel).await;
        self.publish_held();
    }

    async fn round(&mut self, cancel: &CancellationToken) {
        self.reap().await;
        self.renew().await;
        self.publish_held();
        if cancel.is_cancelled() {
            return;
        }
        let live = match self.leases.heartbeat().await {
            Ok(n) => {
                self.engine.status.set_coord_ok(true);
                // The budgets' gauges: every tenant's within 12 rounds (a
                // minute at the default TTL), a part each round — not one
                // call per tenant per round.
                let mut tenants: Vec<&Arc<str>> = self.engine.lanes.keys().collect();
                tenants.sort();
                let part = tenants
                    .len()
                    .div_ceil(USAGE_ROUNDS)
                    .max(1)
                    .min(tenants.len());
                for i in 0..part {
                    let tenant = tenants[(self.usage_at + i) % tenants.len()];
                    let lane = &self.engine.lanes[tenant];
                    let usage = lane.scheduler.usage().await;
                    let tel = &self.engine.telemetry;
                    tel.budget_paused(tenant, usage.paused);
                    tel.budget_day(tenant, usage.last_day, lane.settings.per_day);
                }
                self.usage_at = (self.usage_at + part) % tenants.len().max(1);
                // Every replica keeps cursors in memory too (its own
                // shards', and a part of the fleet's read each round): a
                // Redis that comes back empty loses none while one is up.
                let part = self.refresh_part();
                if let Err(e) = self.engine.checkpoints.refresh(&part).await {
                    tracing::debug!(error = %crate::field::chain(&e), "cannot read the fleet's cursors");
                }
                n.max(1)
            }
            Err(e) => {
                self.engine.status.set_coord_ok(false);
                warn!(error = %crate::field::chain(&e), "heartbeat failed; taking no new shards");
                return;
            }
        };
        self.rebalance(live).await;
    }

    /// Runners that ended (drained, lost, fenced, stopped): their leases go back.
    async fn reap(&mut self) {
        let done: Vec<Shard> = self
            .held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(s, _)| s.clone())
            .collect();
        for shard in done {
            self.engine.status.forget(&shard);
            if let Some(h) = self.held.remove(&shard) {
                if !h.lost {
                    if let Err(e) = self.leases.release(&shard, h.fence).await {
                        warn!(%shard, error = %crate::field::chain(&e), "cannot release the lease; it expires by itself");
                    }
                }
            }
        }
    }

    /// The next part of the fleet's shards whose cursors to read.
    fn refresh_part(&mut self) -> Vec<Shard> {
        let n = self.order.len().min(REFRESH_SLICE);
        let part = (0..n)
            .map(|i| self.order[(self.refresh_at + i) % self.order.len()].clone())
            .collect();
        self.refresh_at = (self.refresh_at + n) % self.order.len().max(1);
        part
    }

    /// Renews every held lease in batches (one slow or hung Redis costs
    /// one call timeout, not one per shard), writing a shard's `status`
    /// only when it changed, then stops the runners of the leases that are
    /// lost or cannot be renewed before they expire.
    async fn renew(&mut self) {
        let ttl = self.leases.ttl();
        let period = ttl / 3;
        let now = tokio::time::Instant::now();
        let asks: Vec<Renew> = self
            .held
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(s, h)| {
                let p = self.engine.status.shard(s);
                let report = ShardReport {
                    last_error: p.last_error,
                    per_minute: p.per_minute,
                    poll_interval: p.poll_interval,
                };
                let unchanged = h
                    .reported
                    .as_ref()
                    .is_some_and(|(r, at)| *r == report && now - *at < REPORT_AGAIN);
                Renew {
                    shard: s.clone(),
                    fence: h.fence,
                    cursor: p.cursor,
                    report: (!unchanged).then_some(report),
                }
            })
            .collect();
        let answers = self.leases.renew_all(&asks).await;
        let mut answered = true;
        for (ask, answer) in asks.into_iter().zip(answers) {
            let shard = &ask.shard;
            let Some(h) = self.held.get_mut(shard) else {
                continue;
            };
            if let Some(c) = ask.cursor {
                h.tel.checkpoint_lag(c);
            }
            let lost = match answer {
                Ok(Renewal::Lost) => Some("another worker holds it"),
                Ok(r) => {
                    if r == Renewal::Reclaimed {
                        warn!(%shard, fence = h.fence, "lease had lapsed or Redis lost it; reclaimed (cursor written back if missing)");
                    }
                    h.last_renewed = tokio::time::Instant::now();
                    if let Some(report) = ask.report {
                        h.reported = Some((report, now));
                    }
                    None
                }
                Err(e) if h.last_renewed.elapsed() + period < ttl => {
                    answered = false;
                    warn!(%shard, error = %crate::field::chain(&e), "cannot renew the lease; trying again");
                    None
                }
                Err(_) => {
                    answered = false;
                    Some("cannot renew it before it expires")
                }
            };
            if let Some(why) = lost {
                h.cancel.cancel();
                h.lost = true;
                self.engine.telemetry.lease_lost(shard, why);
            }
        }
        if !answered {
            // Not ready until a heartbeat is answered again.
            self.engine.status.set_coord_ok(false);
        }
    }

    /// Takes or gives up shards towards the fair share. The search for
    /// free shards goes through every shard when the fleet changed (the
    /// live workers differ from the last full search's, or the last search
    /// took some); once a full search finds none, full searches are spaced
    /// out (every 4, 8, 16 rounds after a second one) and the rounds between look at a
    /// slice of [`SCAN_SLICE`] shards: a settled fleet does not scan every
    /// shard every round.
    async fn rebalance(&mut self, live: usize) {
        let fair = self.order.len().div_ceil(live);
        let mut active: Vec<&Shard> = self
            .held
            .iter()
            .filter(|(_, h)| !h.lost && !h.drain.is_cancelled())
            .map(|(s, _)| s)
            .collect();
        if active.len() > fair {
            // Give up the surplus at a page boundary.
            active.sort();
            let surplus = active.len() - fair;
            for shard in active.iter().rev().take(surplus) {
                if let Some(h) = self.held.get(*shard) {
                    info!(%shard, fair, live, "over the fair share; releasing after the page in flight");
                    h.drain.cancel();
                }
            }
            return;
        }
        let want = fair - active.len();
        if want == 0 || self.order.is_empty() {
            return;
        }
        let full = live != self.searched.0 || self.search_in == 0;
        let limit = if full {
            self.order.len()
        } else {
            self.search_in -= 1;
            SCAN_SLICE.min(self.order.len())
        };
        let took = self.search(want, limit).await;
        if full {
            if took > 0 {
                self.searched = (live, 0);
            } else {
                self.searched = (live, self.searched.1.saturating_add(1));
            }
            // Once more at the next round after the first search that found
            // nothing (shards drained for this replica are on their way).
            self.search_in = if took > 0 || self.searched.1 <= 1 {
                0
            } else {
                (1u32 << self.searched.1.min(4)).min(16)
            };
        }
    }

    /// Looks at up to `limit` shards from where the last search stopped and
    /// takes up to `want` free ones; returns how many it took.
    async fn search(&mut self, want: usize, limit: usize) -> usize {
        const CHUNK: usize = 1024;
        let mut took = 0;
        let mut looked = 0;
        while looked < limit && took < want {
            let n = CHUNK.min(limit - looked);
            let len = self.order.len();
            let candidates: Vec<Shard> = (0..n)
                .map(|i| &self.order[(self.scan_at + i) % len])
                .filter(|s| !self.held.contains_key(*s))
                .cloned()
                .collect();
            match self.leases.acquire_some(&candidates, want - took).await {
                Ok(got) => {
                    // Go on after the last one taken (or the whole chunk).
                    let next = match got.last() {
                        Some((last, _)) if took + got.len() >= want => (0..n)
                            .find(|i| &self.order[(self.scan_at + i) % len] == last)
                            .map_or(n, |i| i + 1),
                        _ => n,
                    };
                    looked += next;
                    self.scan_at = (self.scan_at + next) % len;
                    for (shard, fence) in got {
                        self.engine.telemetry.lease_acquired(&shard, fence);
                        self.spawn(shard, fence);
                        took += 1;
                    }
                }
                Err(e) => {
                    warn!(error = %crate::field::chain(&e), "cannot acquire leases");
                    break;
                }
            }
        }
        took
    }

    fn spawn(&mut self, shard: Shard, fence: Fence) {
        // Not a child of the keeper's token: shutdown drains a runner at a
        // page boundary; only a lost lease or the end of the grace period
        // stops it at once.
        let h_cancel = CancellationToken::new();
        let drain = CancellationToken::new();
        let engine = self.engine.clone();
        let tel = self.engine.telemetry.shard(&shard);
        let (s2, c2, d2, t2) = (shard.clone(), h_cancel.clone(), drain.clone(), tel.clone());
        let finished = self.finished.clone();
        let task = tokio::spawn(async move {
            engine.run_shard_with(s2, fence, t2, c2, d2).await;
            finished.notify_one();
        });
        self.held.insert(
            shard,
            Held {
                fence,
                cancel: h_cancel,
                drain,
                task,
                last_renewed: tokio::time::Instant::now(),
                lost: false,
                reported: None,
                _series: self.engine.telemetry.hold(&tel),
                tel,
            },
        );
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
