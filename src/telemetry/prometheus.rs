//! The Prometheus side of telemetry: the process-wide recorder, its
//! histogram buckets and upkeep, the text `/metrics` serves, and the help
//! text of every metric.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("cas_bridge_budget_wait_seconds".into()),
                        &[0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("cas_bridge_event_age_seconds".into()),
                        &[
                            5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
                            1800.0, 3600.0, 21600.0, 86400.0,
                        ],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist already (tests); ours then stays unused.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            // Histogram samples wait in the recorder until upkeep folds them
            // into buckets: without a scrape they would pile up (one per
            // event for the event age), so upkeep runs on its own.
            let h = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    h.run_upkeep();
                });
            handle
        })
        .clone()
}

/// The Prometheus text of the recorder's metrics.
pub(super) fn render() -> String {
    let h = install();
    h.run_upkeep();
    h.render()
}

/// A metric's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// In seconds.
    Histogram,
}

/// Every metric the bridge exports: its name, kind and help text (the
/// reference in docs/metrics.md lists the same, checked by a test).
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "cas_bridge_api_requests_total",
        Kind::Counter,
        "Requests to the CAS API, by HTTP status (or error kind)",
    ),
    (
        "cas_bridge_pages_fetched_total",
        Kind::Counter,
        "Pages fetched from the API",
    ),
    (
        "cas_bridge_events_fetched_total",
        Kind::Counter,
        "Events fetched from the API",
    ),
    (
        "cas_bridge_events_published_total",
        Kind::Counter,
        "Events acknowledged by the sink on their topic",
    ),
    (
        "cas_bridge_events_dead_lettered_total",
        Kind::Counter,
        "Events acknowledged on the dead-letter topic, by reason (schema, rejected, truncated)",
    ),
    (
        "cas_bridge_duplicates_skipped_total",
        Kind::Counter,
        "Events already delivered (overlap, retries)",
    ),
    (
        "cas_bridge_budget_permits_total",
        Kind::Counter,
        "Permits taken from the budgets (every tenant's)",
    ),
    (
        "cas_bridge_rate_limited_total",
        Kind::Counter,
        "429 answers from the API",
    ),
    (
        "cas_bridge_leases_lost_total",
        Kind::Counter,
        "Leases lost to another worker or to a missed renewal",
    ),
    (
        "cas_bridge_window_gap_seconds_total",
        Kind::Counter,
        "Seconds of data skipped beyond the API's 72 h reach",
    ),
    (
        "cas_bridge_windows_checkpointed_total",
        Kind::Counter,
        "Windows whose cursor moved after every event was acknowledged",
    ),
    (
        "cas_bridge_sink_errors_total",
        Kind::Counter,
        "Failed publishes, by kind (unavailable, rejected, misconfigured)",
    ),
    (
        "cas_bridge_shards_parked_total",
        Kind::Counter,
        "Times a shard was parked after an error retrying cannot fix",
    ),
    (
        "cas_bridge_shards_stopped_total",
        Kind::Counter,
        "Shards stopped because the sink is misconfigured",
    ),
    (
        "cas_bridge_cursors_recovered_total",
        Kind::Counter,
        "Shards without a cursor in the coordination store continued from one this process remembered or from their topic's last record",
    ),
    (
        "cas_bridge_windows_resumed_total",
        Kind::Counter,
        "Windows continued from a recorded page instead of their start",
    ),
    (
        "cas_bridge_stored_links_refused_total",
        Kind::Counter,
        "Recorded next links the API refused (the window was read again from its start)",
    ),
    (
        "cas_bridge_pages_reread_total",
        Kind::Counter,
        "Pages read again because a recorded next link was refused",
    ),
    (
        "cas_bridge_api_request_duration_seconds",
        Kind::Histogram,
        "Duration of API requests",
    ),
    (
        "cas_bridge_budget_wait_seconds",
        Kind::Histogram,
        "Time waited for a permit",
    ),
    (
        "cas_bridge_sink_publish_duration_seconds",
        Kind::Histogram,
        "Time until the sink acknowledged a page's records",
    ),
    (
        "cas_bridge_event_age_seconds",
        Kind::Histogram,
        "Per pair: from an event's own time (`message.detection_time`) to the sink's acknowledgement",
    ),
    (
        "cas_bridge_poll_interval_seconds",
        Kind::Gauge,
        "Per held shard (within ops.shard_series): how long it waits between polls in steady state (from its activity)",
    ),
    (
        "cas_bridge_events_per_minute",
        Kind::Gauge,
        "Per held shard (within ops.shard_series): the observed rate of events that sets its poll interval (-1 until polled)",
    ),
    (
        "cas_bridge_leases_held",
        Kind::Gauge,
        "Shard leases this process holds",
    ),
    (
        "cas_bridge_config_info",
        Kind::Gauge,
        "1 for the configuration this process runs (label hash: SHA-256 of its redacted JSON, 12 hex digits), 0 for one it ran before a live change",
    ),
    (
        "cas_bridge_ready",
        Kind::Gauge,
        "1 when /readyz answers 200 (coordination, sink and at least one working shard), else 0",
    ),
    (
        "cas_bridge_budget_used_last_day",
        Kind::Gauge,
        "Requests the token's budget granted in its current day (every replica's)",
    ),
    (
        "cas_bridge_budget_per_day",
        Kind::Gauge,
        "budget.per_day: the token's requests a day",
    ),
    (
        "cas_bridge_budget_paused_seconds",
        Kind::Gauge,
        "What is left of the pause every replica honours after a 429 or a refused token (0: none)",
    ),
    (
        "cas_bridge_token_refused",
        Kind::Gauge,
        "1 while the API refuses the tenant's token (its shards wait for a new one), else 0",
    ),
    (
        "cas_bridge_checkpoint_lag_seconds",
        Kind::Gauge,
        "now − cursor, per held shard (within ops.shard_series): how late data is",
    ),
    (
        "cas_bridge_tenant_shards_held",
        Kind::Gauge,
        "Per tenant: the shards this replica holds (the fleet's sum is the tenant's shards)",
    ),
    (
        "cas_bridge_tenant_lag_max_seconds",
        Kind::Gauge,
        "Per tenant: the largest now − cursor of the shards this replica holds (0 when none)",
    ),
    (
        "cas_bridge_tenant_shards_parked",
        Kind::Gauge,
        "Per tenant: held shards parked now (waiting after an error retrying cannot fix)",
    ),
    (
        "cas_bridge_build_info",
        Kind::Gauge,
        "1, with the version and the commit this binary was built from (labels version, commit)",
    ),
];

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, Unit::Seconds, help),
        }
    }
}
