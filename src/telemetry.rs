//! Telemetry: Prometheus metrics (all prefixed `cas_bridge_`) as small typed
//! events, each bumping its metric with a fixed label set; and the log set-up.
//! The token never reaches a log line: it lives in `SecretString`s whose
//! `Debug` is redacted, and no event takes it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::shard::Shard;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

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
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist already (tests); ours then stays unused.
            let _ = metrics::set_global_recorder(recorder);
            describe();
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
    describe_counter!(
        "cas_bridge_api_requests_total",
        "Requests to the CAS API, by HTTP status (or error kind)"
    );
    describe_histogram!(
        "cas_bridge_api_request_duration_seconds",
        Unit::Seconds,
        "Duration of API requests"
    );
    describe_counter!(
        "cas_bridge_events_fetched_total",
        "Events fetched from the API"
    );
    describe_counter!(
        "cas_bridge_events_published_total",
        "Events acknowledged by the sink on their topic"
    );
    describe_counter!(
        "cas_bridge_events_dead_lettered_total",
        "Events acknowledged on the dead-letter topic"
    );
    describe_counter!(
        "cas_bridge_duplicates_skipped_total",
        "Events already delivered (overlap, retries)"
    );
    describe_counter!(
        "cas_bridge_budget_permits_total",
        "Permits taken from the token's budget"
    );
    describe_histogram!(
        "cas_bridge_budget_wait_seconds",
        Unit::Seconds,
        "Time waited for a permit"
    );
    describe_counter!("cas_bridge_rate_limited_total", "429 answers from the API");
    describe_gauge!("cas_bridge_leases_held", "Shard leases this process holds");
    describe_counter!(
        "cas_bridge_leases_lost_total",
        "Leases lost to another worker or to a missed renewal"
    );
    describe_gauge!(
        "cas_bridge_checkpoint_lag_seconds",
        "now − cursor, per shard: how late data is"
    );
    describe_counter!(
        "cas_bridge_window_gap_seconds_total",
        "Seconds of data skipped beyond the API's 72 h reach"
    );
    describe_histogram!(
        "cas_bridge_sink_publish_duration_seconds",
        Unit::Seconds,
        "Time until the sink acknowledged a batch"
    );
}

fn pair(shard: &Shard) -> [(&'static str, String); 2] {
    [
        ("service", shard.service.clone()),
        ("event", shard.event.clone()),
    ]
}

/// An API request ended with `status` (an HTTP status, or an error kind).
pub fn api_request(status: &str, took: Duration) {
    counter!("cas_bridge_api_requests_total", "status" => status.to_string()).increment(1);
    histogram!("cas_bridge_api_request_duration_seconds").record(took.as_secs_f64());
}

pub fn events_fetched(shard: &Shard, n: u64) {
    counter!("cas_bridge_events_fetched_total", &pair(shard)).increment(n);
}

pub fn events_published(shard: &Shard, n: u64) {
    counter!("cas_bridge_events_published_total", &pair(shard)).increment(n);
}

pub fn events_dead_lettered(shard: &Shard, reason: &'static str, n: u64) {
    let [s, e] = pair(shard);
    counter!(
        "cas_bridge_events_dead_lettered_total",
        &[s, e, ("reason", reason.to_string())]
    )
    .increment(n);
}

pub fn duplicates_skipped(n: u64) {
    counter!("cas_bridge_duplicates_skipped_total").increment(n);
}

pub fn permit(waited: Duration) {
    counter!("cas_bridge_budget_permits_total").increment(1);
    histogram!("cas_bridge_budget_wait_seconds").record(waited.as_secs_f64());
}

pub fn rate_limited() {
    counter!("cas_bridge_rate_limited_total").increment(1);
}

pub fn leases_held(n: usize) {
    gauge!("cas_bridge_leases_held").set(n as f64);
}

pub fn lease_lost() {
    counter!("cas_bridge_leases_lost_total").increment(1);
}

pub fn checkpoint_lag(shard: &Shard, lag_seconds: f64) {
    gauge!("cas_bridge_checkpoint_lag_seconds", &pair(shard)).set(lag_seconds);
}

pub fn window_gap(seconds: u64) {
    counter!("cas_bridge_window_gap_seconds_total").increment(seconds);
}

pub fn sink_publish(took: Duration) {
    histogram!("cas_bridge_sink_publish_duration_seconds").record(took.as_secs_f64());
}

/// Touches every metric once so that `/metrics` lists them all from the start.
pub fn register_all(shards: &[Shard]) {
    counter!("cas_bridge_api_requests_total", "status" => "200").increment(0);
    counter!("cas_bridge_duplicates_skipped_total").increment(0);
    counter!("cas_bridge_budget_permits_total").increment(0);
    counter!("cas_bridge_rate_limited_total").increment(0);
    counter!("cas_bridge_leases_lost_total").increment(0);
    counter!("cas_bridge_window_gap_seconds_total").increment(0);
    gauge!("cas_bridge_leases_held").increment(0.0);
    for s in shards {
        events_fetched(s, 0);
        events_published(s, 0);
        events_dead_lettered(s, "schema", 0);
    }
}
