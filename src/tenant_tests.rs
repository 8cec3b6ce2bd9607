//! Tenants in one engine: each its own source, scheduler and budget, so one
//! tenant's backlog never holds another tenant's requests back, and each
//! tenant's records go to its own topics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, Lane, RunnerSettings};
use crate::coord::memory::{MemoryBudget, MemoryCheckpoints, MemoryDedup};
use crate::coord::BudgetConfig;
use crate::fakes::{event, page, FakeSink, FakeSource};
use crate::schedule::Scheduler;
use crate::shard::Shard;
use crate::status::StatusBoard;
use crate::telemetry::Telemetry;
use crate::window::{Planner, WindowConfig};

fn lane(source: Arc<FakeSource>, per_minute: u32) -> Lane {
    let budget = Arc::new(MemoryBudget::new(BudgetConfig {
        per_minute,
        per_day: 100_000,
        ..BudgetConfig::default()
    }));
    Lane {
        source,
        scheduler: Arc::new(Scheduler::new(budget, 8)),
        planner: Planner::new(&WindowConfig::default()),
        settings: RunnerSettings::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn one_tenants_backlog_does_not_hold_another_back() {
    let acme = Shard::of("acme", "exchange", "dlp");
    let beta = Shard::of("beta", "exchange", "dlp");
    // acme: a window of a thousand pages, each with a next link.
    let backlog = (0..1000u64)
        .map(|i| {
            let (e, _) = event(&acme, i, 0);
            let next = format!("/v1/siem/security_events?page_token={i}");
            Ok(page(vec![e], Some(&next)))
        })
        .collect();
    let acme_source = FakeSource::new(backlog);
    let (b, beta_id) = event(&beta, 1, 0);
    let beta_source = FakeSource::new(vec![Ok(page(vec![b], None))]);
    let sink = Arc::new(FakeSink::default());
    let publisher = crate::publish::Publisher::new(
        crate::validate::Registry::load(None).expect("built-in schemas"),
        sink.clone(),
        crate::sink::Topics::new("cas.{tenant}.{service}.{event}", "cas.{tenant}.dl")
            .expect("topics"),
        Arc::new(MemoryDedup::new(Duration::from_secs(3600))),
    );
    let lanes = HashMap::from([
        (Arc::from("acme"), lane(acme_source.clone(), 60)),
        (Arc::from("beta"), lane(beta_source.clone(), 10)),
    ]);
    let engine = Arc::new(Engine::with_lanes(
        lanes,
        publisher,
        Arc::new(MemoryCheckpoints::default()),
        Arc::new(StatusBoard::default()),
        Telemetry::default(),
    ));
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for (s, fence) in [(acme.clone(), 1), (beta.clone(), 2)] {
        let (e, c) = (engine.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            e.run_shard(s, fence, c, CancellationToken::new()).await
        }));
    }
    let started = tokio::time::Instant::now();
    while sink.ids_on("cas.beta.exchange.dlp").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "beta waited behind acme's backlog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = started.elapsed();
    // acme goes on at its own budget's pace meanwhile.
    tokio::time::sleep(Duration::from_secs(60)).await;
    cancel.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(waited < Duration::from_secs(5), "beta waited {waited:?}");
    assert_eq!(sink.ids_on("cas.beta.exchange.dlp"), vec![beta_id]);
    let acme_requests = acme_source.requested().len();
    assert!(
        (55..=62).contains(&acme_requests),
        "acme at its own 60/min: {acme_requests} requests in about a minute"
    );
    assert!(!sink.ids_on("cas.acme.exchange.dlp").is_empty());
    assert!(sink.ids_on("cas.beta.exchange.dlp").len() == 1);
    assert_eq!(beta_source.requested().len(), 1);
}
