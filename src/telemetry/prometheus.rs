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

/// The Prometheus text of every metric.
pub fn render() -> String {
    let h = install();
    h.run_upkeep();
    h.render()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    let counters: &[(&str, &str)] = &[
        (
            "cas_bridge_api_requests_total",
            "Requests to the CAS API, by HTTP status (or error kind)",
        ),
        (
            "cas_bridge_pages_fetched_total",
            "Pages fetched from the API",
        ),
        (
            "cas_bridge_events_fetched_total",
            "Events fetched from the API",
        ),
        (
            "cas_bridge_events_published_total",
            "Events acknowledged by the sink on their topic",
        ),
        (
            "cas_bridge_events_dead_lettered_total",
            "Events acknowledged on the dead-letter topic, by reason (schema, rejected, truncated)",
        ),
        (
            "cas_bridge_duplicates_skipped_total",
            "Events already delivered (overlap, retries)",
        ),
        (
            "cas_bridge_budget_permits_total",
            "Permits taken from the token's budget",
        ),
        ("cas_bridge_rate_limited_total", "429 answers from the API"),
        (
            "cas_bridge_leases_lost_total",
            "Leases lost to another worker or to a missed renewal",
        ),
        (
            "cas_bridge_window_gap_seconds_total",
            "Seconds of data skipped beyond the API's 72 h reach",
        ),
        (
            "cas_bridge_windows_checkpointed_total",
            "Windows whose cursor moved after every event was acknowledged",
        ),
        (
            "cas_bridge_sink_errors_total",
            "Failed publishes, by kind (unavailable, rejected, misconfigured)",
        ),
        (
            "cas_bridge_shards_parked_total",
            "Times a shard was parked after an error retrying cannot fix",
        ),
        (
            "cas_bridge_shards_stopped_total",
            "Shards stopped because the sink is misconfigured",
        ),
        (
            "cas_bridge_cursors_recovered_total",
            "Shards without a cursor in the coordination store continued from one this process remembered or from their topic's last record",
        ),
        (
            "cas_bridge_windows_resumed_total",
            "Windows continued from a recorded page instead of their start",
        ),
        (
            "cas_bridge_stored_links_refused_total",
            "Recorded next links the API refused (the window was read again from its start)",
        ),
        (
            "cas_bridge_pages_reread_total",
            "Pages read again because a recorded next link was refused",
        ),
    ];
    for &(name, help) in counters {
        describe_counter!(name, help);
    }
    describe_histogram!(
        "cas_bridge_api_request_duration_seconds",
        Unit::Seconds,
        "Duration of API requests"
    );
    describe_histogram!(
        "cas_bridge_budget_wait_seconds",
        Unit::Seconds,
        "Time waited for a permit"
    );
    describe_histogram!(
        "cas_bridge_sink_publish_duration_seconds",
        Unit::Seconds,
        "Time until the sink acknowledged a page's records"
    );
    describe_histogram!(
        "cas_bridge_event_age_seconds",
        Unit::Seconds,
        "Per pair: from an event's own time (`message.detection_time`) to the sink's acknowledgement"
    );
    describe_gauge!(
        "cas_bridge_poll_interval_seconds",
        "Per pair: how long it waits between polls in steady state (from its activity)"
    );
    describe_gauge!(
        "cas_bridge_events_per_minute",
        "Per pair: the observed rate of events that sets its poll interval (-1 until polled)"
    );
    describe_gauge!("cas_bridge_leases_held", "Shard leases this process holds");
    describe_gauge!(
        "cas_bridge_config_info",
        "1 for the configuration this process runs (label hash: SHA-256 of its redacted JSON, 12 hex digits), 0 for one it ran before a live change"
    );
    describe_gauge!(
        "cas_bridge_ready",
        "1 when /readyz answers 200 (coordination, sink and at least one working shard), else 0"
    );
    describe_gauge!(
        "cas_bridge_budget_used_last_day",
        "Requests the token's budget granted in its current day (every replica's)"
    );
    describe_gauge!(
        "cas_bridge_budget_per_day",
        "budget.per_day: the token's requests a day"
    );
    describe_gauge!(
        "cas_bridge_budget_paused_seconds",
        "What is left of the pause every replica honours after a 429 or a refused token (0: none)"
    );
    describe_gauge!(
        "cas_bridge_token_refused",
        "1 while the API refuses the tenant's token (its shards wait for a new one), else 0"
    );
    describe_gauge!(
        "cas_bridge_checkpoint_lag_seconds",
        "now − cursor, per shard: how late data is"
    );
}
