//! The composition root: [`Bridge::build`] wires the stages — page source,
//! scheduler, publisher, shard runners, lease keeper, status — from one
//! [`Config`]. `run`, `demo`, the tests and the benchmarks all build the
//! bridge here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cas::{page_memory, Client, Token};
use crate::config::Config;
use crate::coord::redis::token_key;
use crate::coord::{BudgetUsage, Coordination, LeaseStore};
use crate::field::ConfigError;
use crate::fleet::LeaseKeeper;
use crate::publish::Publisher;
use crate::retry::Backoff;
use crate::runner::{Engine, Faults, Lane, RunnerSettings};
use crate::schedule::{Scheduler, PAGES_IN_FLIGHT};
use crate::shard::{Shard, DEFAULT_TENANT};
use crate::sink::{Sink, Topics};
use crate::source::PageSource;
use crate::status::{ShardProgress, StatusBoard};
use crate::telemetry::{Stats, Telemetry};
use crate::validate::Registry;
use crate::window::Planner;

/// How long the sink may take to flush at shutdown, after the grace.
pub const FLUSH_BOUND: Duration = Duration::from_secs(3);
/// How long giving the leases back may take at shutdown.
pub const RELEASE_BOUND: Duration = Duration::from_secs(2);

/// What the configured tenants bring to a bridge.
struct Tenants {
    /// Each tenant's source, scheduler and windows.
    lanes: HashMap<Arc<str>, Lane>,
    /// The CloudEvents origin of each tenant whose records carry them.
    origins: Vec<(String, String)>,
    /// Every shard of every tenant.
    shards: Vec<Shard>,
}

/// What a tenant's shard runners need besides their stages.
fn settings(cfg: &Config, t: &crate::tenant::Tenant) -> RunnerSettings {
    RunnerSettings {
        start_from: t.window.start_from,
        max_pause: t.budget.max_pause.get(),
        page_limit: t.api.effective_page_limit(),
        max_pages: t.window.max_pages,
        max_interval: cfg.schedule.max_interval.get(),
        page_cap: t.window.page_cap,
        per_day: t.budget.per_day,
    }
}

/// One bridge process.
pub struct Bridge {
    /// What the shard runners share.
    engine: Arc<Engine>,
    /// Leases and membership.
    leases: Arc<dyn LeaseStore>,
    /// Every configured shard.
    shards: Vec<Shard>,
    /// How long shutdown may take.
    grace: std::time::Duration,
}

impl Bridge {
    /// A bridge of the default tenant alone over the given sink and
    /// coordination, with the HTTP client (and `token`) as its page source.
    pub fn build(
        cfg: &Config,
        token: SecretString,
        sink: Arc<dyn Sink>,
        coord: Coordination,
    ) -> Result<Self, ConfigError> {
        let client = Client::new(&cfg.api, token)?;
        Self::with_source(cfg, Arc::new(client), sink, coord)
    }

    /// A bridge of every configured tenant: each its own HTTP client
    /// (host and token, read now) and window settings; tenants that share
    /// a token share its budget and scheduler.
    pub fn build_tenants(
        cfg: &Config,
        sink: Arc<dyn Sink>,
        coord: Coordination,
    ) -> Result<Self, ConfigError> {
        let status = Arc::new(StatusBoard::new(Some(crate::sink::probe(&sink))));
        Self::build_tenants_on(cfg, sink, coord, status)
    }

    /// As [`Bridge::build_tenants`], reporting to `status` (kept across a
    /// live change of the configuration, so `/readyz` and `/metrics` stay).
    pub fn build_tenants_on(
        cfg: &Config,
        sink: Arc<dyn Sink>,
        coord: Coordination,
        status: Arc<StatusBoard>,
    ) -> Result<Self, ConfigError> {
        let tenants = cfg.tenants()?;
        // The page bodies in flight are bounded once for the process, and
        // taken in turn by every tenant (a FIFO semaphore).
        let largest = tenants.iter().map(|t| t.api.max_body_bytes).max();
        let memory = page_memory(largest.unwrap_or(0));
        let mut schedulers: HashMap<String, Arc<Scheduler>> = HashMap::new();
        let mut lanes = HashMap::new();
        let mut origins = Vec::new();
        let mut shards = Vec::new();
        for t in &tenants {
            let token = Token::from_config(&t.api).map_err(|e| t.named(e))?;
            // Tenants that hold the same token share its budget.
            let first = token.current();
            let client = Client::with_token(&t.api, token)
                .map_err(|e| t.named(e))?
                .sharing_memory(memory.clone());
            let scheduler = schedulers
                .entry(token_key(&first))
                .or_insert_with(|| {
                    let budget = coord.budgets.for_tenant(&t.name, &first, &t.budget);
                    Arc::new(Scheduler::new(budget, PAGES_IN_FLIGHT))
                })
                .clone();
            if let Some(origin) = t.cloudevents_origin(cfg.sink.cloudevents)? {
                origins.push((t.name.clone(), origin));
            }
            lanes.insert(
                Arc::from(t.name.as_str()),
                Lane {
                    source: Arc::new(client),
                    scheduler,
                    planner: Planner::new(&t.window),
                    settings: settings(cfg, t),
                },
            );
            shards.extend(t.shards()?);
        }
        status.retain(&shards);
        let tenants = Tenants {
            lanes,
            origins,
            shards,
        };
        Self::assemble(cfg, tenants, sink, coord, status)
    }

    /// As [`Bridge::build`] with any page source (tests use a fake).
    pub fn with_source(
        cfg: &Config,
        source: Arc<dyn PageSource>,
        sink: Arc<dyn Sink>,
        coord: Coordination,
    ) -> Result<Self, ConfigError> {
        let sole = crate::tenant::Tenant::sole(&cfg.api, &cfg.shards, &cfg.window, &cfg.budget);
        let lane = Lane {
            source,
            scheduler: Arc::new(Scheduler::new(coord.budget.clone(), PAGES_IN_FLIGHT)),
            planner: Planner::new(&cfg.window),
            settings: settings(cfg, &sole),
        };
        let origins = cfg
            .cloudevents_origin()?
            .map(|o| (sole.name.clone(), o))
            .into_iter()
            .collect();
        let lanes = HashMap::from([(Arc::from(sole.name.as_str()), lane)]);
        let status = Arc::new(StatusBoard::new(Some(crate::sink::probe(&sink))));
        let shards = sole.shards()?;
        let tenants = Tenants {
            lanes,
            origins,
            shards,
        };
        Self::assemble(cfg, tenants, sink, coord, status)
    }

    fn assemble(
        cfg: &Config,
        tenants: Tenants,
        sink: Arc<dyn Sink>,
        coord: Coordination,
        status: Arc<StatusBoard>,
    ) -> Result<Self, ConfigError> {
        let Tenants {
            lanes,
            origins,
            shards,
        } = tenants;
        status.set_sink_allowance(cfg.ops.sink_allowance.get());
        crate::telemetry::BOARD.set_limit(cfg.ops.shard_series);
        let registry = Registry::load(cfg.schemas.dir.as_deref())?;
        let topics = Topics::new(&cfg.sink.topic_template, &cfg.sink.dead_letter)?;
        let mut publisher = Publisher::new(registry, sink, topics, coord.dedup.clone());
        for (tenant, origin) in origins {
            publisher = publisher.with_cloudevents_of(&tenant, origin);
        }
        let engine = Engine::with_lanes(
            lanes,
            publisher,
            coord.checkpoints.clone(),
            status,
            Telemetry::new(),
        );
        Ok(Self {
            engine: Arc::new(engine),
            leases: coord.leases,
            shards,
            grace: cfg.shutdown.grace.get(),
        })
    }

    /// Sets the fault hooks (tests). Only before [`Bridge::run`].
    pub fn with_faults(mut self, faults: Faults) -> Self {
        if let Some(e) = Arc::get_mut(&mut self.engine) {
            e.faults = faults;
        }
        self
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The process's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        self.engine.telemetry.stats()
    }

    /// The status board (`/readyz`, `demo`, tests).
    pub fn status(&self) -> &Arc<StatusBoard> {
        &self.engine.status
    }

    /// Each shard's progress.
    pub fn progress(&self) -> HashMap<Shard, ShardProgress> {
        self.engine.status.progress()
    }

    /// The shards this process holds leases on (and works) now.
    pub fn held(&self) -> Vec<Shard> {
        self.engine.status.held()
    }

    /// The oldest cursor over all shards (`None` while any shard has none).
    pub fn min_cursor(&self) -> Option<DateTime<Utc>> {
        self.engine.status.min_cursor(&self.shards)
    }

    /// Why the bridge is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        self.engine.status.not_ready()
    }

    /// The budget's use of the default tenant's token (the first
    /// tenant's when tenants are named).
    pub async fn budget_usage(&self) -> BudgetUsage {
        let lane = self
            .engine
            .lanes
            .get(DEFAULT_TENANT)
            .or_else(|| self.shards.first().and_then(|s| self.engine.lane(s)));
        match lane {
            Some(l) => l.scheduler.usage().await,
            None => BudgetUsage::default(),
        }
    }

    /// Runs until `cancel` fires: prepares the sink, keeps a fair share of
    /// the leases (all of them when alone) with a runner per held shard.
    /// Then shuts down within the grace period: no new requests, the page
    /// in flight abandoned without moving its cursor, the sink flushed, the
    /// leases released.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let cancel = cancel.child_token();
        let (halt, c) = (self.engine.halt.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = halt.cancelled() => c.cancel(),
                _ = c.cancelled() => {}
            }
        });
        let sink = self.engine.publisher.sink().clone();
        let all = self.engine.publisher.topics().all(&self.shards);
        let prepared = crate::retry::until_ok(
            &mut Backoff::request(),
            &cancel,
            || sink.prepare(&all),
            |e, _| {
                error!(error = %crate::field::chain(e), "cannot prepare the sink; retrying");
                true
            },
        )
        .await;
        if prepared.is_err() {
            return;
        }
        self.engine.status.set_sink_prepared();
        // Counters are per pair: one shard of each pair lists them.
        let mut pairs = std::collections::HashSet::new();
        for s in &self.shards {
            if pairs.insert((&*s.service, &*s.event)) {
                self.engine.telemetry.shard(s).register();
            }
        }
        self.engine.telemetry.register_all();
        for (tenant, lane) in &self.engine.lanes {
            self.engine.telemetry.budget_paused(tenant, None);
            self.engine.telemetry.tenant_registered(tenant);
            self.engine
                .telemetry
                .budget_day(tenant, 0, lane.settings.per_day);
            info!(%tenant, api = %lane.source.describe(), "tenant");
        }
        info!(
            shards = self.shards.len(),
            tenants = self.engine.lanes.len(),
            sink = sink.name(),
            "bridge started"
        );
        let mut keeper = LeaseKeeper::new(
            self.leases.clone(),
            self.engine.clone(),
            &self.shards,
            self.grace,
        );
        keeper.run(&cancel).await;
        // After the grace, what is left of shutdown is bounded too: a dead
        // broker or a stalled reader must not hold the process.
        match tokio::time::timeout(FLUSH_BOUND, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %crate::field::chain(&e), "flushing the sink at shutdown"),
            Err(_) => {
                error!(bound_s = crate::field::secs(FLUSH_BOUND), "the sink did not flush in time at shutdown; what it did not acknowledge stays un-checkpointed")
            }
        }
        if tokio::time::timeout(RELEASE_BOUND, keeper.release_all())
            .await
            .is_err()
        {
            warn!(
                bound_s = crate::field::secs(RELEASE_BOUND),
                "could not release the leases in time; they expire by themselves"
            );
        }
        info!("bridge stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{event, page, FakeSink, FakeSource};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_composition_root_runs_every_shard_and_stops_cleanly() {
        let mut cfg = Config::default();
        cfg.shards.pairs = vec!["exchange:dlp".into(), "box:ransomware".into()];
        let shard = Shard::new("exchange", "dlp");
        let (a, ida) = event(&shard, 1, 0);
        let (b, idb) = event(&shard, 2, 0);
        let source = FakeSource::new(vec![Ok(page(vec![a], None)), Ok(page(vec![b], None))]);
        let sink = Arc::new(FakeSink::default());
        let bridge = Arc::new(
            Bridge::with_source(
                &cfg,
                source.clone(),
                sink.clone(),
                cfg.in_memory_coordination(),
            )
            .unwrap(),
        );
        let cancel = CancellationToken::new();
        let task = tokio::spawn(bridge.clone().run(cancel.clone()));
        for _ in 0..60 {
            if bridge.min_cursor().is_some() && Stats::get(&bridge.stats().windows) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(Stats::get(&bridge.stats().windows), 2);
        let mut held = bridge.held();
        held.sort();
        assert_eq!(held.len(), 2);
        assert!(bridge.not_ready().is_empty());
        let mut ids: Vec<String> = sink.accepted().into_iter().map(|r| r.id).collect();
        ids.sort();
        let mut want = vec![ida, idb];
        want.sort();
        assert_eq!(ids, want);
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stops within the grace period")
            .unwrap();
        assert!(bridge.held().is_empty(), "leases released at shutdown");
        assert_eq!(bridge.budget_usage().await.last_minute, 2);
    }
}
