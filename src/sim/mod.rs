//! The built-in CAS SIEM API simulator: the API's test double in every test,
//! and the source for `demo` and the benchmarks.
//!
//! It behaves as `API-NOTES.md` describes, in either dialect: bearer auth
//! (401), parameter checks (400: missing service/event, bad times, a window
//! over 3 days or reaching past 72 hours, `limit` over the maximum, a
//! parameter given twice), 404 and 405 with error bodies, the 5-minute
//! default window, pagination by a next link that carries the whole query,
//! per-minute and per-day throttling (fixed from the first request, as the
//! live API counts, or sliding) with `-4290001` bodies, deterministic events
//! with messy values, late-arriving events, and injected faults (500s,
//! latency, truncated bodies, oversized bodies, a next link to another host,
//! schema-violating events). Its ground truth (the ids of a window, the
//! requests served and refused) is open to tests.

pub mod events;
mod http;
mod stats;

pub use stats::{Served, SimStats};

pub use http::router;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use events::{EventPlan, Stub};

use crate::cas::{format_time, Dialect};
use crate::field::parse_duration;
use crate::shard::{Shard, Stream, QUARANTINE};

impl FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" => Ok(Dialect::V1),
            "legacy" => Ok(Dialect::Legacy),
            o => Err(format!("unknown dialect `{o}` (v1 or legacy)")),
        }
    }
}

/// How the simulator counts requests against its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleMode {
    /// A minute (and a day) starting at the first request, as the live API counts.
    Fixed,
    /// Any 60 s (and any 24 h).
    Sliding,
}

impl FromStr for ThrottleMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed" => Ok(ThrottleMode::Fixed),
            "sliding" => Ok(ThrottleMode::Sliding),
            o => Err(format!("unknown throttle mode `{o}` (fixed or sliding)")),
        }
    }
}

fn dur(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// Settings of the simulator (also the flags of `cas-bridge simulate`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// `v1` (live shape) or `legacy` (seed page shape).
    #[arg(long, default_value = "v1")]
    pub dialect: Dialect,
    /// The bearer token it accepts.
    #[arg(
        long,
        default_value = "sim-token",
        env = "CAS_SIM_TOKEN",
        hide_env_values = true
    )]
    pub token: String,
    /// Serve this many tenants (0: one, with `--token`): tenant `i` has
    /// the token `<token>-<i>`, its own events (seed `seed + i`) and its
    /// own budget (`--per-minute`, `--per-day` each).
    #[arg(long, default_value_t = 0)]
    pub tenants: u32,
    /// Requests accepted per minute (per token); 0 = unlimited.
    #[arg(long, default_value_t = 20)]
    pub per_minute: u32,
    /// Requests accepted per day (per token); 0 = unlimited.
    #[arg(long, default_value_t = 14_400)]
    pub per_day: u32,
    /// `fixed` (from the first request, as the live API) or `sliding`.
    #[arg(long, default_value = "fixed")]
    pub throttle: ThrottleMode,
    /// Send `Retry-After` with 429s (the live API is not known to).
    #[arg(long)]
    pub retry_after: bool,
    /// Mean events per hour per (service, event).
    #[arg(long, default_value_t = 120.0)]
    pub events_per_hour: f64,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of events that reach the API late.
    #[arg(long, default_value_t = 0.05)]
    pub late_fraction: f64,
    /// How late a late event is.
    #[arg(long, default_value = "90s", value_parser = dur)]
    pub late_by: Duration,
    /// Share of events with a schema-violating shape.
    #[arg(long, default_value_t = 0.0)]
    pub bad_fraction: f64,
    /// Share of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub fault_500: f64,
    /// Share of 200 answers whose body is cut in half.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Latency added to every answer.
    #[arg(long, default_value = "0s", value_parser = dur)]
    pub latency: Duration,
    /// Next links point to this `host:port` instead of the simulator.
    #[arg(long)]
    pub foreign_next_link: Option<String>,
    /// Next links say `https://` (the simulator stands behind a TLS front
    /// that forwards to it, e.g. `socat OPENSSL-LISTEN:… TCP:…`).
    #[arg(long)]
    pub https_links: bool,
    /// Bytes of padding added to every 200 body (oversized bodies).
    #[arg(long, default_value_t = 0)]
    pub pad_bytes: usize,
    /// Share of events padded to `--huge-bytes` (larger than a broker takes).
    #[arg(long, default_value_t = 0.0)]
    pub huge_fraction: f64,
    /// Padding of a huge event, in bytes.
    #[arg(long, default_value_t = 0)]
    pub huge_bytes: usize,
    /// Next links older than this answer 400 (`page_token expired`).
    #[arg(long, value_parser = dur)]
    pub link_ttl: Option<Duration>,
    /// Per-pair activity, repeatable: `service:event=PER_HOUR`, or
    /// `service:event=PER_HOUR@+DELAY` for a pair silent until DELAY after
    /// the simulator started. When any is given, pairs not named are
    /// silent (they answer 200 with no events), as on a real tenant.
    #[arg(long = "activity", value_parser = parse_activity)]
    pub activity: Vec<PairActivity>,
    /// A hostile API: every 200 answer carries this many items `0` as its
    /// events (0: off).
    #[arg(long, default_value_t = 0)]
    pub flood: usize,
    /// A hostile API: the first this many requests answer 429, with
    /// `--throttle-retry-after` as their `Retry-After` (0: off).
    #[arg(long, default_value_t = 0)]
    pub throttle_first: u32,
    /// The `Retry-After` text of the `--throttle-first` answers, sent as
    /// it is (seconds, an HTTP date, or anything else).
    #[arg(long)]
    pub throttle_retry_after: Option<String>,
}

/// One pair's activity in the simulator (`--activity`).
#[derive(Debug, Clone, PartialEq)]
pub struct PairActivity {
    pub shard: Shard,
    /// Mean events per hour.
    pub per_hour: f64,
    /// Silent until this long after the simulator started.
    pub after: Duration,
}

/// Parses `service:event=PER_HOUR[@+DELAY]`.
pub fn parse_activity(s: &str) -> Result<PairActivity, String> {
    let bad = || format!("`{s}` is not service:event=PER_HOUR or service:event=PER_HOUR@+DELAY");
    let (pair, rest) = s.split_once('=').ok_or_else(bad)?;
    let shard: Shard = pair.trim().parse().map_err(|_| bad())?;
    let (rate, after) = match rest.split_once("@+") {
        Some((r, d)) => (r, parse_duration(d.trim())?),
        None => (rest, Duration::ZERO),
    };
    let per_hour: f64 = rate.trim().parse().map_err(|_| bad())?;
    if !per_hour.is_finite() || per_hour < 0.0 {
        return Err(bad());
    }
    Ok(PairActivity {
        shard,
        per_hour,
        after,
    })
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 0).into(),
            dialect: Dialect::V1,
            token: "sim-token".into(),
            tenants: 0,
            per_minute: 20,
            per_day: 14_400,
            throttle: ThrottleMode::Fixed,
            retry_after: false,
            events_per_hour: 120.0,
            seed: 1,
            late_fraction: 0.05,
            late_by: Duration::from_secs(90),
            bad_fraction: 0.0,
            fault_500: 0.0,
            malformed: 0.0,
            latency: Duration::ZERO,
            foreign_next_link: None,
            pad_bytes: 0,
            huge_fraction: 0.0,
            huge_bytes: 0,
            link_ttl: None,
            https_links: false,
            activity: Vec::new(),
            flood: 0,
            throttle_first: 0,
            throttle_retry_after: None,
        }
    }
}

impl SimConfig {
    fn plan(&self) -> EventPlan {
        EventPlan {
            seed: self.seed,
            events_per_hour: self.events_per_hour,
            late_fraction: self.late_fraction,
            late_by_ms: self.late_by.as_millis() as i64,
            bad_fraction: self.bad_fraction,
            huge_fraction: self.huge_fraction,
            huge_bytes: self.huge_bytes,
            activity: self
                .activity
                .iter()
                .map(|a| {
                    let from = chrono::Utc::now()
                        + chrono::Duration::from_std(a.after).unwrap_or_default();
                    (a.shard.clone(), a.per_hour, from.timestamp_millis())
                })
                .collect(),
        }
    }
}

#[derive(Default)]
struct Throttle {
    minute_start: Option<i64>,
    minute_count: u32,
    day_start: Option<i64>,
    day_count: u32,
    recent: VecDeque<i64>,
    today: VecDeque<i64>,
}

/// (shard, start ms, end ms, as-of ms): what a window's pages share.
type PageKey = (Shard, i64, i64, i64);

/// The tenants a simulator serves; a request goes to the one whose token
/// it carries (to the first when it carries none of them: a 401 there).
pub struct Tenants(pub Vec<Arc<SimState>>);

impl Tenants {
    fn by_token(&self, headers: &axum::http::HeaderMap) -> &Arc<SimState> {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.strip_prefix("Bearer "));
        bearer
            .and_then(|b| self.0.iter().find(|t| t.token_index(b).is_some()))
            .unwrap_or(&self.0[0])
    }
}

/// The simulator's shared state (one tenant's).
pub struct SimState {
    cfg: SimConfig,
    /// The tokens it accepts (`--token` at the start).
    tokens: Mutex<Vec<String>>,
    plan: EventPlan,
    throttle: Mutex<Throttle>,
    stats: Mutex<SimStats>,
    /// The visible stubs of recent (shard, start, end, as-of) queries: the
    /// pages of one window share them instead of generating them again.
    pages: Mutex<HashMap<PageKey, Arc<Vec<Stub>>>>,
    /// `--throttle-first` answers still to send.
    throttled_first: std::sync::atomic::AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimState {
    pub fn new(cfg: SimConfig) -> Self {
        Self {
            plan: cfg.plan(),
            tokens: Mutex::new(vec![cfg.token.clone()]),
            throttle: Mutex::new(Throttle::default()),
            stats: Mutex::new(SimStats::default()),
            pages: Mutex::new(HashMap::new()),
            throttled_first: std::sync::atomic::AtomicU32::new(cfg.throttle_first),
            cfg,
        }
    }

    /// Takes one of the `--throttle-first` answers, if any are left.
    fn throttled_first(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.throttled_first
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Every id generated for `shard` in `[start, end]` (inclusive), whether
    /// or not it is visible yet, in order.
    pub fn truth(&self, shard: &Shard, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<String> {
        self.plan
            .stubs(shard, start.timestamp_millis(), end.timestamp_millis())
            .iter()
            .map(|s| self.plan.id(shard, s, self.cfg.dialect))
            .collect()
    }

    /// One line per id of `ids` generated for `shard` in `[start, end]`:
    /// when it was generated and became visible, and what it is — what a
    /// failed delivery check prints about the ids it misses.
    pub fn describe(
        &self,
        shard: &Shard,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        ids: &[String],
    ) -> Vec<String> {
        self.plan
            .stubs(shard, start.timestamp_millis(), end.timestamp_millis())
            .iter()
            .filter_map(|s| {
                let id = self.plan.id(shard, s, self.cfg.dialect);
                ids.contains(&id).then(|| {
                    let at = Utc.timestamp_millis_opt(s.at_ms).single();
                    format!(
                        "{shard} {id}: at {at:?}, visible {} ms later{}{}",
                        s.visible_ms - s.at_ms,
                        if self.plan.is_huge(s) { ", huge" } else { "" },
                        if self.plan.is_bad(s) { ", bad" } else { "" },
                    )
                })
            })
            .collect()
    }

    /// Every id generated for `shard` in `[start, end]` with the time it
    /// becomes visible in the API (ms since the epoch): what delivery
    /// latency is measured from.
    pub fn visible(
        &self,
        shard: &Shard,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Vec<(String, i64)> {
        self.plan
            .stubs(shard, start.timestamp_millis(), end.timestamp_millis())
            .iter()
            .map(|s| (self.plan.id(shard, s, self.cfg.dialect), s.visible_ms))
            .collect()
    }

    /// The ids among [`SimState::truth`] that reach the API late.
    pub fn late_ids(&self, shard: &Shard, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<String> {
        self.plan
            .stubs(shard, start.timestamp_millis(), end.timestamp_millis())
            .iter()
            .filter(|s| s.visible_ms - s.at_ms > 2_000)
            .map(|s| self.plan.id(shard, s, self.cfg.dialect))
            .collect()
    }

    /// The ids among [`SimState::truth`] that violate the schema.
    pub fn bad_ids(&self, shard: &Shard, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<String> {
        self.plan
            .stubs(shard, start.timestamp_millis(), end.timestamp_millis())
            .iter()
            .filter(|s| self.plan.is_bad(s))
            .map(|s| self.plan.id(shard, s, self.cfg.dialect))
            .collect()
    }

    /// The ids among [`SimState::truth`] padded to `huge_bytes`.
    pub fn huge_ids(&self, shard: &Shard, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<String> {
        self.plan
            .stubs(shard, start.timestamp_millis(), end.timestamp_millis())
            .iter()
            .filter(|s| self.plan.is_huge(s))
            .map(|s| self.plan.id(shard, s, self.cfg.dialect))
            .collect()
    }

    /// The dialect it speaks.
    pub fn dialect(&self) -> Dialect {
        self.cfg.dialect
    }

    pub fn stats(&self) -> SimStats {
        lock(&self.stats).clone()
    }

    /// Accepts these tokens from now on (e.g. the old and the new one
    /// during a rotation; the new one alone when the old is revoked).
    pub fn set_tokens(&self, tokens: Vec<String>) {
        *lock(&self.tokens) = tokens;
    }

    /// Which accepted token `bearer` is, if any.
    fn token_index(&self, bearer: &str) -> Option<usize> {
        lock(&self.tokens).iter().position(|t| t == bearer)
    }

    fn record(&self, at_ms: i64, served: Served, events: usize) {
        let status = served.status;
        let mut st = lock(&self.stats);
        if status == 429 {
            st.throttled += 1;
        } else {
            st.served += 1;
        }
        *st.by_status.entry(status).or_default() += 1;
        st.events_returned += events as u64;
        if st.log.len() < 2_000_000 {
            st.log.push(Served { at_ms, ..served });
        }
    }

    /// Counts a request against the limits; `Err(retry_after)` if refused.
    fn admit(&self, now: i64) -> Result<(), Duration> {
        let (pm, pd) = (self.cfg.per_minute, self.cfg.per_day);
        let mut t = lock(&self.throttle);
        match self.cfg.throttle {
            ThrottleMode::Fixed => {
                if t.minute_start.is_none_or(|s| now - s >= 60_000) {
                    t.minute_start = Some(now);
                    t.minute_count = 0;
                }
                if t.day_start.is_none_or(|s| now - s >= 86_400_000) {
                    t.day_start = Some(now);
                    t.day_count = 0;
                }
                if pm > 0 && t.minute_count >= pm {
                    let left = 60_000 - (now - t.minute_start.unwrap_or(now));
                    return Err(Duration::from_millis(left.max(0) as u64));
                }
                if pd > 0 && t.day_count >= pd {
                    let left = 86_400_000 - (now - t.day_start.unwrap_or(now));
                    return Err(Duration::from_millis(left.max(0) as u64));
                }
                t.minute_count += 1;
                t.day_count += 1;
            }
            ThrottleMode::Sliding => {
                while t.recent.front().is_some_and(|x| now - x >= 60_000) {
                    t.recent.pop_front();
                }
                while t.today.front().is_some_and(|x| now - x >= 86_400_000) {
                    t.today.pop_front();
                }
                if pm > 0 && t.recent.len() >= pm as usize {
                    let left = 60_000 - (now - t.recent[0]);
                    return Err(Duration::from_millis(left.max(0) as u64));
                }
                if pd > 0 && t.today.len() >= pd as usize {
                    let left = 86_400_000 - (now - t.today[0]);
                    return Err(Duration::from_millis(left.max(0) as u64));
                }
                t.recent.push_back(now);
                t.today.push_back(now);
            }
        }
        Ok(())
    }
}

/// A running simulator.
pub struct SimHandle {
    pub addr: SocketAddr,
    /// The first (or only) tenant's state.
    pub state: Arc<SimState>,
    /// Every tenant's state, by index (`--tenants`); one without it.
    pub tenants: Vec<Arc<SimState>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// `http://ip:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Starts the simulator on `cfg.listen` (port 0 picks a free port).
pub async fn start(cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let tenants: Vec<Arc<SimState>> = if cfg.tenants == 0 {
        vec![Arc::new(SimState::new(cfg))]
    } else {
        (0..cfg.tenants)
            .map(|i| {
                Arc::new(SimState::new(SimConfig {
                    token: format!("{}-{i}", cfg.token),
                    seed: cfg.seed + u64::from(i),
                    tenants: 0,
                    ..cfg.clone()
                }))
            })
            .collect()
    };
    let state = tenants[0].clone();
    let cancel = CancellationToken::new();
    let app = router(Arc::new(Tenants(tenants.clone())));
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { c.cancelled().await })
            .await;
    });
    Ok(SimHandle {
        addr,
        state,
        tenants,
        cancel,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_told_apart_by_token_each_with_its_events_and_budget() {
        let base = SimConfig {
            per_minute: 2,
            ..SimConfig::default()
        };
        let states: Vec<Arc<SimState>> = (0..3u64)
            .map(|i| {
                Arc::new(SimState::new(SimConfig {
                    token: format!("t-{i}"),
                    seed: 1 + i,
                    ..base.clone()
                }))
            })
            .collect();
        let tenants = Tenants(states.clone());
        let mut h = axum::http::HeaderMap::new();
        h.insert("authorization", "Bearer t-2".parse().unwrap());
        assert!(Arc::ptr_eq(tenants.by_token(&h), &states[2]));
        h.insert("authorization", "Bearer nobody".parse().unwrap());
        assert!(Arc::ptr_eq(tenants.by_token(&h), &states[0]));
        // Own events: the same pair and range, other ids.
        let shard = Shard::new("exchange", "dlp");
        let (from, to) = (
            chrono::Utc::now() - chrono::Duration::hours(6),
            chrono::Utc::now(),
        );
        let a = states[0].truth(&shard, from, to);
        let b = states[1].truth(&shard, from, to);
        assert!(!a.is_empty() && !b.is_empty());
        assert!(a.iter().all(|id| !b.contains(id)));
        // Own budget: tenant 0 spent, tenant 1 not.
        let now = chrono::Utc::now().timestamp_millis();
        assert!(states[0].admit(now).is_ok() && states[0].admit(now).is_ok());
        assert!(states[0].admit(now).is_err());
        assert!(states[1].admit(now).is_ok());
    }

    #[test]
    fn activity_flags_parse_and_say_what_is_wrong() {
        let a = parse_activity("box:dlp=1200").unwrap();
        assert_eq!(a.shard, Shard::new("box", "dlp"));
        assert_eq!((a.per_hour, a.after), (1200.0, Duration::ZERO));
        let b = parse_activity("gmail:ransomware=60@+150s").unwrap();
        assert_eq!(b.after, Duration::from_secs(150));
        for bad in [
            "box:dlp",
            "box=5",
            "box:dlp=fast",
            "box:dlp=-1",
            "box:dlp=5@+soon",
        ] {
            let e = parse_activity(bad).unwrap_err();
            assert!(e.contains(bad) || e.contains("soon"), "{bad}: {e}");
        }
    }
}
