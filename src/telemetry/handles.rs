//! The metric handles shared by every shard of a pair and of a tenant:
//! made once per process, so a held shard's telemetry is a few pointers.

use std::sync::Arc;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use super::{DeadReason, SINK_ERROR_KINDS};
use crate::shard::Shard;

/// The handles of one pair (service, event), made once per process.
#[derive(Debug)]
pub(super) struct PairHandles {
    pub(super) fetched: Counter,
    pub(super) pages: Counter,
    pub(super) published: Counter,
    pub(super) dead: [Counter; 3],
    pub(super) windows: Counter,
    pub(super) duplicates: Counter,
    pub(super) gap: Counter,
    pub(super) permits: Counter,
    pub(super) budget_wait: Histogram,
    pub(super) api_duration: Histogram,
    pub(super) publish_duration: Histogram,
    pub(super) sink_errors: [Counter; 3],
    pub(super) parked: Counter,
    pub(super) stopped: Counter,
    pub(super) resumed: Counter,
    pub(super) links_refused: Counter,
    pub(super) reread: Counter,
    pub(super) recovered: Counter,
    pub(super) age: Histogram,
}

/// The handles of one tenant, made once per process.
#[derive(Debug)]
pub(super) struct TenantHandles {
    pub(super) api_ok: Counter,
    pub(super) rate_limited: Counter,
    /// 1 while the API refuses the tenant's token.
    pub(super) token_refused: Gauge,
}

/// Handles by key, made once.
pub(super) fn cached<K: std::hash::Hash + Eq, V>(
    cache: &std::sync::Mutex<std::collections::HashMap<K, Arc<V>>>,
    key: K,
    make: impl FnOnce() -> V,
) -> Arc<V> {
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

type Cache<K, V> = std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<K, Arc<V>>>>;
pub(super) static PAIRS: Cache<(String, String), PairHandles> =
    std::sync::LazyLock::new(Default::default);
pub(super) static TENANTS: Cache<Arc<str>, TenantHandles> =
    std::sync::LazyLock::new(Default::default);

impl PairHandles {
    pub(super) fn new(shard: &Shard) -> Self {
        // Counters are per pair, not per shard: their number is bounded by
        // the pairs, whatever the tenants (per shard: `status`, the logs,
        // and the held shards' gauges).
        let l = [
            ("service", shard.service.to_string()),
            ("event", shard.event.to_string()),
        ];
        let dead = |reason: DeadReason| {
            let [s, e] = l.clone();
            counter!(
                "cas_bridge_events_dead_lettered_total",
                &[s, e, ("reason", reason.label().to_string())]
            )
        };
        let sink = |kind: &'static str| counter!("cas_bridge_sink_errors_total", "kind" => kind);
        Self {
            fetched: counter!("cas_bridge_events_fetched_total", &l),
            pages: counter!("cas_bridge_pages_fetched_total", &l),
            published: counter!("cas_bridge_events_published_total", &l),
            dead: [
                dead(DeadReason::Schema),
                dead(DeadReason::Rejected),
                dead(DeadReason::Truncated),
            ],
            windows: counter!("cas_bridge_windows_checkpointed_total", &l),
            duplicates: counter!("cas_bridge_duplicates_skipped_total"),
            gap: counter!("cas_bridge_window_gap_seconds_total"),
            permits: counter!("cas_bridge_budget_permits_total"),
            budget_wait: histogram!("cas_bridge_budget_wait_seconds"),
            api_duration: histogram!("cas_bridge_api_request_duration_seconds"),
            publish_duration: histogram!("cas_bridge_sink_publish_duration_seconds"),
            sink_errors: SINK_ERROR_KINDS.map(sink),
            parked: counter!("cas_bridge_shards_parked_total", &l),
            stopped: counter!("cas_bridge_shards_stopped_total", &l),
            resumed: counter!("cas_bridge_windows_resumed_total", &l),
            links_refused: counter!("cas_bridge_stored_links_refused_total", &l),
            reread: counter!("cas_bridge_pages_reread_total", &l),
            recovered: counter!("cas_bridge_cursors_recovered_total", &l),
            age: histogram!("cas_bridge_event_age_seconds", &l),
        }
    }
}

impl TenantHandles {
    pub(super) fn new(tenant: &str) -> Self {
        Self {
            api_ok: counter!("cas_bridge_api_requests_total", "tenant" => tenant.to_string(), "status" => "200"),
            rate_limited: counter!("cas_bridge_rate_limited_total", "tenant" => tenant.to_string()),
            token_refused: gauge!("cas_bridge_token_refused", "tenant" => tenant.to_string()),
        }
    }
}
