//! Telemetry: one typed call per thing that happens. Each call logs it,
//! counts it in Prometheus (all names prefixed `cas_bridge_`) and in the
//! process's [`Stats`] (what `demo`, tests and benchmarks read), so the
//! three can never drift apart. A shard's label set is built once, when its
//! [`ShardTelemetry`] is made; the calls only bump handles.
//!
//! The token never reaches a log line: it lives in `SecretString`s whose
//! `Debug` is redacted, and no call takes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{counter, gauge};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::field::ConfigError;

mod handles;
mod held;
mod prometheus;

use crate::shard::Shard;
use handles::{cached, PairHandles, TenantHandles, PAIRS, TENANTS};
pub use held::{HeldGuard, ShardGauges, BOARD, DEFAULT_SHARD_SERIES};
pub use prometheus::install;

/// The Prometheus text of every metric: the recorder's, then the series of
/// the shards this process holds and of its tenants.
pub fn render() -> String {
    let mut text = prometheus::render();
    text.push_str(&BOARD.render());
    text
}

/// The `log` section.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` or `text`.
    #[schemars(extend("enum" = ["json", "text"]))]
    pub format: String,
    /// A tracing filter, e.g. `info` or `cas_bridge=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.format.as_str(), "json" | "text") {
            return Err(ConfigError::new(
                "log.format",
                format!("`{}` is not json or text", self.format),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!("`{}` is not a tracing filter", self.level),
            ));
        }
        Ok(())
    }
}

/// Counters of one bridge process (the in-process side of every call).
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub pages: AtomicU64,
    pub windows: AtomicU64,
    pub events_fetched: AtomicU64,
    pub events_published: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub duplicates_skipped: AtomicU64,
    pub api_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    pub sink_errors: AtomicU64,
    pub gap_seconds: AtomicU64,
    pub leases_lost: AtomicU64,
    pub windows_resumed: AtomicU64,
    pub stored_links_refused: AtomicU64,
    /// Shards continued from a remembered cursor after the store lost theirs.
    pub cursors_recovered: AtomicU64,
    /// The last [`AGES_KEPT`] event ages at acknowledgement (ms, a ring),
    /// for the demo's percentiles.
    pub ages_ms: std::sync::Mutex<(Vec<u32>, usize)>,
}

impl Stats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// The `q` quantile (0–1) of the event ages recorded so far.
    pub fn age_quantile(&self, q: f64) -> Option<Duration> {
        let mut v = self
            .ages_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(Duration::from_millis(u64::from(v[i])))
    }
}

/// At most this many ages are kept for [`Stats::age_quantile`] (the last
/// ones, 256 KiB; the histogram in `/metrics` counts every one).
const AGES_KEPT: usize = 1 << 16;

/// Why a record went to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// It failed the JSON Schemas.
    Schema,
    /// The broker refused it for good (size, topic).
    Rejected,
    /// Even its dead letter was refused; a truncated one was sent.
    Truncated,
}

impl DeadReason {
    pub fn label(self) -> &'static str {
        match self {
            DeadReason::Schema => "schema",
            DeadReason::Rejected => "rejected",
            DeadReason::Truncated => "truncated",
        }
    }
}

/// The kinds of sink failure (see [`crate::sink::SinkError`]).
pub const SINK_ERROR_KINDS: [&str; 3] = ["unavailable", "rejected", "misconfigured"];

/// The process's telemetry: its [`Stats`] and the calls that are not about
/// one shard.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    stats: Arc<Stats>,
}

impl Telemetry {
    /// Installs the Prometheus recorder (once per process) first, so every
    /// handle made afterwards records.
    pub fn new() -> Self {
        install();
        Self::default()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The handles of one shard, its label set built here once.
    pub fn shard(&self, shard: &Shard) -> ShardTelemetry {
        ShardTelemetry::new(shard, self.stats.clone())
    }

    /// Lists a tenant's series from the start: answers 200 and 429s at
    /// zero, its token not refused, its held-shard aggregates (other
    /// statuses appear when they happen: a tenant costs a fixed handful of
    /// series, whatever the fleet's size).
    pub fn tenant_registered(&self, tenant: &str) {
        counter!(
            "cas_bridge_api_requests_total",
            "tenant" => tenant.to_string(),
            "status" => "200"
        )
        .increment(0);
        counter!("cas_bridge_rate_limited_total", "tenant" => tenant.to_string()).increment(0);
        self.token_refused(tenant, false);
        BOARD.tenant(&Arc::from(tenant));
    }

    /// The shard's series exist while the returned guard lives (the
    /// keeper keeps it with the lease).
    pub fn hold(&self, tel: &ShardTelemetry) -> HeldGuard {
        BOARD.hold(&tel.shard, tel.gauges.clone())
    }

    /// Whether the API refuses a tenant's token now (1) or took it at the
    /// last request (0): that tenant's trouble, never the replica's
    /// readiness.
    pub fn token_refused(&self, tenant: &str, refused: bool) {
        gauge!("cas_bridge_token_refused", "tenant" => tenant.to_string()).set(if refused {
            1.0
        } else {
            0.0
        });
    }

    /// What is left of a tenant's budget's pause (0 when none).
    pub fn budget_paused(&self, tenant: &str, left: Option<Duration>) {
        gauge!("cas_bridge_budget_paused_seconds", "tenant" => tenant.to_string())
            .set(left.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// What a tenant's token's budget granted in its current day, against
    /// its limit.
    pub fn budget_day(&self, tenant: &str, used: u32, per_day: u32) {
        let t = tenant.to_string();
        gauge!("cas_bridge_budget_used_last_day", "tenant" => t.clone()).set(f64::from(used));
        gauge!("cas_bridge_budget_per_day", "tenant" => t).set(f64::from(per_day));
    }

    /// The configuration this process runs now (`previous`: the one it
    /// replaced, after a live change).
    /// `cas_bridge_build_info{version,commit}`: 1, the binary's identity.
    pub fn build_info(&self, version: &'static str, commit: &'static str) {
        gauge!("cas_bridge_build_info", "version" => version, "commit" => commit).set(1.0);
    }

    pub fn config_in_force(&self, hash: &str, previous: Option<&str>, shards: usize) {
        if let Some(p) = previous {
            gauge!("cas_bridge_config_info", "hash" => p.to_string()).set(0.0);
        }
        gauge!("cas_bridge_config_info", "hash" => hash.to_string()).set(1.0);
        match previous {
            None => info!(config = hash, shards, "configuration in force"),
            // Seen at the default level: it changes what the process does.
            Some(p) => {
                warn!(
                    config = hash,
                    previous = p,
                    shards,
                    "configuration changed: now in force"
                )
            }
        }
    }

    pub fn leases_held(&self, n: usize) {
        gauge!("cas_bridge_leases_held").set(n as f64);
    }

    pub fn lease_acquired(&self, shard: &Shard, fence: u64) {
        info!(%shard, fence, "lease acquired");
    }

    pub fn lease_lost(&self, shard: &Shard, why: &str) {
        warn!(%shard, why, "lease lost; stopping the shard");
        Stats::add(&self.stats.leases_lost, 1);
        counter!("cas_bridge_leases_lost_total").increment(1);
    }

    /// Touches every process-wide metric once so `/metrics` lists them all
    /// from the start.
    pub fn register_all(&self) {
        for name in [
            "cas_bridge_duplicates_skipped_total",
            "cas_bridge_leases_lost_total",
            "cas_bridge_window_gap_seconds_total",
        ] {
            counter!(name).increment(0);
        }
        counter!("cas_bridge_budget_permits_total").increment(0);
        for kind in SINK_ERROR_KINDS {
            counter!("cas_bridge_sink_errors_total", "kind" => kind).increment(0);
        }
        gauge!("cas_bridge_leases_held").increment(0.0);
        gauge!("cas_bridge_ready").increment(0.0);
    }
}

/// One shard's telemetry: the handles with its labels (shared by every
/// shard of its pair and of its tenant), its gauges, and the shard for the
/// log lines. Small: a replica holds one per held shard.
#[derive(Debug, Clone)]
pub struct ShardTelemetry {
    shard: Shard,
    stats: Arc<Stats>,
    /// Lag, poll interval, rate, parked: rendered while the shard is held.
    gauges: Arc<ShardGauges>,
    pair: Arc<PairHandles>,
    tenant: Arc<TenantHandles>,
}

impl ShardTelemetry {
    fn new(shard: &Shard, stats: Arc<Stats>) -> Self {
        Self {
            shard: shard.clone(),
            stats,
            gauges: Arc::default(),
            pair: cached(
                &PAIRS,
                (shard.service.to_string(), shard.event.to_string()),
                || PairHandles::new(shard),
            ),
            tenant: cached(&TENANTS, shard.tenant.clone(), || {
                TenantHandles::new(&shard.tenant)
            }),
        }
    }

    /// Makes the shard's series visible before anything happened.
    pub fn register(&self) {
        self.pair.fetched.increment(0);
        self.pair.published.increment(0);
        self.pair.dead[0].increment(0);
        self.pair.windows.increment(0);
        self.tenant.rate_limited.increment(0);
        // The rare ones too: an alert on `increase(…[5m]) > 0` needs the
        // series before its first increment.
        for c in [
            &self.pair.parked,
            &self.pair.stopped,
            &self.pair.resumed,
            &self.pair.links_refused,
            &self.pair.reread,
            &self.pair.recovered,
        ] {
            c.increment(0);
        }
    }

    /// A permit was granted after `waited`.
    pub fn permit(&self, waited: Duration) {
        Stats::add(&self.stats.requests, 1);
        self.pair.permits.increment(1);
        self.pair.budget_wait.record(waited.as_secs_f64());
    }

    /// A page arrived with `events` events.
    pub fn page_fetched(&self, events: usize, took: Duration) {
        Stats::add(&self.stats.pages, 1);
        Stats::add(&self.stats.events_fetched, events as u64);
        self.tenant.api_ok.increment(1);
        self.pair.api_duration.record(took.as_secs_f64());
        self.pair.pages.increment(1);
        self.pair.fetched.increment(events as u64);
        debug!(shard = %self.shard, events, "page fetched");
    }

    /// A request failed with `status` (an HTTP status or an error kind).
    pub fn request_failed(
        &self,
        status: &str,
        took: Duration,
        error: &dyn std::fmt::Display,
        retry_in: Option<Duration>,
    ) {
        Stats::add(&self.stats.api_errors, 1);
        counter!(
            "cas_bridge_api_requests_total",
            "tenant" => self.shard.tenant.to_string(),
            "status" => status.to_string()
        )
        .increment(1);
        self.pair.api_duration.record(took.as_secs_f64());
        warn!(shard = %self.shard, %error, status, retry_in_s = retry_in.map(crate::field::secs), "request failed");
    }

    /// Whether the API refuses the tenant's token now.
    pub fn token_refused(&self, refused: bool) {
        self.tenant
            .token_refused
            .set(if refused { 1.0 } else { 0.0 });
    }

    /// The API throttled us; every shard pauses for `pause`.
    pub fn rate_limited(&self, pause: Duration, asked: Option<Duration>) {
        Stats::add(&self.stats.rate_limited, 1);
        self.tenant.rate_limited.increment(1);
        warn!(shard = %self.shard, pause_s = crate::field::secs(pause), asked_s = asked.map(crate::field::secs), "rate limited by the API; every shard pauses");
    }

    /// A page's records were acknowledged: `published` on their topic.
    pub fn page_published(&self, published: u64, took: Duration) {
        Stats::add(&self.stats.events_published, published);
        self.pair.published.increment(published);
        self.pair.publish_duration.record(took.as_secs_f64());
    }

    /// The sink acknowledged events whose own times are `times`.
    pub fn events_aged(&self, times: &[DateTime<Utc>]) {
        if times.is_empty() {
            return;
        }
        let now = Utc::now();
        let mut kept = self.stats.ages_ms.lock().unwrap_or_else(|p| p.into_inner());
        let (ring, next) = &mut *kept;
        for t in times {
            let ms = (now - *t).num_milliseconds().max(0);
            self.pair.age.record(ms as f64 / 1000.0);
            let ms = ms.min(i64::from(u32::MAX)) as u32;
            if ring.len() < AGES_KEPT {
                ring.push(ms);
            } else {
                ring[*next % AGES_KEPT] = ms;
            }
            *next += 1;
        }
    }

    /// The pair's activity and the poll interval it sets.
    pub fn activity(&self, per_minute: Option<f64>, interval: Duration) {
        self.gauges.set_activity(per_minute, interval.as_secs_f64());
        debug!(shard = %self.shard, per_minute, interval_s = crate::field::secs(interval), "poll interval");
    }

    /// One record was acknowledged on the dead-letter topic (counted; the
    /// page's dead letters are logged together by
    /// [`ShardTelemetry::dead_letters_logged`]).
    pub fn dead_lettered(&self, id: &str, reason: DeadReason, detail: &str) {
        Stats::add(&self.stats.dead_lettered, 1);
        self.pair.dead[reason as usize].increment(1);
        debug!(shard = %self.shard, id, reason = reason.label(), detail, "event dead-lettered");
    }

    /// One line for a page's `n` dead letters, naming the first: a page of
    /// a million bad events writes one warning, not a million.
    pub fn dead_letters_logged(&self, n: u64, first_id: &str, first_detail: &str) {
        if n > 0 {
            warn!(shard = %self.shard, dead_letters = n, first_id, first_detail, "events of the page dead-lettered");
        }
    }

    /// `n` events were already delivered and were not published again.
    pub fn duplicates_skipped(&self, n: u64) {
        if n == 0 {
            return;
        }
        Stats::add(&self.stats.duplicates_skipped, n);
        self.pair.duplicates.increment(n);
        debug!(shard = %self.shard, n, "duplicates skipped");
    }

    /// The cursor moved to `cursor`.
    pub fn window_checkpointed(&self, cursor: DateTime<Utc>) {
        Stats::add(&self.stats.windows, 1);
        self.pair.windows.increment(1);
        self.gauges.set_parked(false);
        self.checkpoint_lag(cursor);
        debug!(shard = %self.shard, %cursor, "checkpoint");
    }

    /// How far behind now the cursor is.
    pub fn checkpoint_lag(&self, cursor: DateTime<Utc>) {
        self.gauges
            .set_lag((Utc::now() - cursor).num_milliseconds() as f64 / 1000.0);
    }

    /// Data beyond the API's reach was skipped: never silent.
    pub fn gap_skipped(&self, seconds: u64, cursor: DateTime<Utc>) {
        Stats::add(&self.stats.gap_seconds, seconds);
        self.pair.gap.increment(seconds);
        let reach = self.shard.stream().reach_text();
        warn!(shard = %self.shard, gap_seconds = seconds, %cursor, reach, "skipping data beyond the API's reach (72 h for security events, 7 days for quarantine events)");
    }

    /// A publish failed; `kind` is one of [`SINK_ERROR_KINDS`].
    pub fn sink_error(
        &self,
        kind: &'static str,
        error: &dyn std::fmt::Display,
        retry_in: Option<Duration>,
    ) {
        Stats::add(&self.stats.sink_errors, 1);
        if let Some(i) = SINK_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.pair.sink_errors[i].increment(1);
        }
        warn!(shard = %self.shard, %error, kind, retry_in_s = retry_in.map(crate::field::secs), "publish failed; the cursor stays");
    }

    /// The shard waits `retry_in` before trying its window again.
    pub fn parked(&self, error: &dyn std::fmt::Display, retry_in: Duration) {
        self.pair.parked.increment(1);
        self.gauges.set_parked(true);
        error!(shard = %self.shard, %error, retry_in_s = crate::field::secs(retry_in), "shard parked");
    }

    /// A window continues from its recorded position after `pages` pages.
    pub fn window_resumed(&self, pages: u32) {
        Stats::add(&self.stats.windows_resumed, 1);
        self.pair.resumed.increment(1);
        info!(shard = %self.shard, pages_done = pages, "window resumed from its recorded page");
    }

    /// A recorded next link was refused: the window is read again from its
    /// start, `pages` pages read twice.
    pub fn stored_link_refused(&self, error: &dyn std::fmt::Display, pages: u32) {
        Stats::add(&self.stats.stored_links_refused, 1);
        self.pair.links_refused.increment(1);
        self.pair.reread.increment(u64::from(pages));
        warn!(shard = %self.shard, %error, pages_reread = pages, "the recorded next link was refused; reading the window again from its start");
    }

    /// The store had no cursor for the shard; it continues from the last
    /// one this process saw (whoever held the shard then), or from the
    /// window of its last record in the sink.
    pub fn cursor_recovered(&self, cursor: DateTime<Utc>, from: &str) {
        Stats::add(&self.stats.cursors_recovered, 1);
        self.pair.recovered.increment(1);
        warn!(shard = %self.shard, %cursor, from, "the coordination store has no cursor for this shard; continuing from where the shard was");
    }

    /// The shard stopped for good (until restart): nothing it can do helps.
    pub fn stopped(&self, error: &dyn std::fmt::Display) {
        self.pair.stopped.increment(1);
        error!(shard = %self.shard, %error, "shard stopped: the sink refuses its records as configured; fix the configuration and restart");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/metrics.md's table lists exactly the metrics the bridge
    /// describes, and every counter is on `/metrics` at zero from the
    /// start (an alert on `increase(…) > 0` needs the series first).
    #[test]
    fn the_reference_lists_every_metric_and_counters_start_at_zero() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
            .unwrap();
        let documented: std::collections::BTreeSet<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `cas_bridge_"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let described: std::collections::BTreeSet<&str> = prometheus::METRICS
            .iter()
            .map(|(n, _, _)| n.trim_start_matches("cas_bridge_"))
            .collect();
        assert_eq!(documented, described);
        let t = Telemetry::new();
        t.register_all();
        t.tenant_registered("zero");
        t.build_info("0.0.0", "abc");
        t.config_in_force("000000000000", None, 1);
        t.shard(&Shard::of("zero", "teams", "dlp")).register();
        let text = render();
        for (name, kind, _) in prometheus::METRICS {
            if *kind != prometheus::Kind::Counter {
                continue;
            }
            let listed = text.lines().any(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            });
            assert!(listed, "{name} is not on /metrics from the start");
        }
        assert!(
            text.contains("cas_bridge_build_info{version=\"0.0.0\",commit=\"abc\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn one_call_counts_in_stats() {
        let t = Telemetry::default();
        let s = t.shard(&Shard::new("box", "dlp"));
        s.permit(Duration::from_millis(5));
        s.page_fetched(7, Duration::from_millis(3));
        s.page_published(5, Duration::from_millis(1));
        s.dead_lettered("x", DeadReason::Rejected, "too big");
        s.duplicates_skipped(2);
        s.duplicates_skipped(0);
        s.window_checkpointed(Utc::now());
        s.gap_skipped(30, Utc::now());
        s.sink_error("unavailable", &"down", None);
        t.lease_lost(&Shard::new("box", "dlp"), "test");
        let now = Utc::now();
        let ago = |s: i64| now - chrono::Duration::seconds(s);
        s.events_aged(&[ago(10), ago(30), ago(20), ago(40), ago(50)]);
        let st = t.stats();
        assert_eq!(Stats::get(&st.requests), 1);
        assert_eq!(Stats::get(&st.pages), 1);
        assert_eq!(Stats::get(&st.events_fetched), 7);
        assert_eq!(Stats::get(&st.events_published), 5);
        assert_eq!(Stats::get(&st.dead_lettered), 1);
        assert_eq!(Stats::get(&st.duplicates_skipped), 2);
        assert_eq!(Stats::get(&st.windows), 1);
        assert_eq!(Stats::get(&st.gap_seconds), 30);
        assert_eq!(Stats::get(&st.sink_errors), 1);
        assert_eq!(Stats::get(&st.leases_lost), 1);
        let secs = |q: f64| st.age_quantile(q).unwrap().as_secs();
        assert_eq!((secs(0.0), secs(0.5), secs(1.0)), (10, 30, 50));
    }

    #[test]
    fn log_config_rules() {
        let mut c = LogConfig::default();
        assert!(c.validate().is_ok());
        c.format = "xml".into();
        assert_eq!(c.validate().unwrap_err().field, "log.format");
        c.format = "text".into();
        c.level = "[[".into();
        assert_eq!(c.validate().unwrap_err().field, "log.level");
    }
}
