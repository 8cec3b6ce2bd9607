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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use events::{EventPlan, Stub};

use crate::cas::{format_time, Dialect};
use crate::config::parse_duration;
use crate::shard::Shard;

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
    /// Bytes of padding added to every 200 body (oversized bodies).
    #[arg(long, default_value_t = 0)]
    pub pad_bytes: usize,
    /// Share of events padded to `--huge-bytes` (larger than a broker takes).
    #[arg(long, default_value_t = 0.0)]
    pub huge_fraction: f64,
    /// Padding of a huge event, in bytes.
    #[arg(long, default_value_t = 0)]
    pub huge_bytes: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 0).into(),
            dialect: Dialect::V1,
            token: "sim-token".into(),
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
        }
    }
}

/// One request the simulator answered.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Served {
    /// When, ms since the epoch.
    pub at_ms: i64,
    pub status: u16,
    /// Whether the request came from cas-bridge (by its User-Agent).
    pub bridge: bool,
}

/// Counts of what the simulator answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests answered with anything but 429 (they count against the budget).
    pub served: u64,
    /// Requests refused with 429.
    pub throttled: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Events returned in 200 answers.
    pub events_returned: u64,
    /// Every request, in order.
    pub log: Vec<Served>,
}

impl SimStats {
    /// The most requests served (non-429) in any sliding `span`.
    pub fn max_in_any(&self, span: Duration) -> usize {
        Self::max_of(self.log.iter().filter(|s| s.status != 429), span)
    }

    /// The most requests the bridge sent (whatever the answer) in any sliding `span`.
    pub fn max_bridge_in_any(&self, span: Duration) -> usize {
        Self::max_of(self.log.iter().filter(|s| s.bridge), span)
    }

    fn max_of<'a>(log: impl Iterator<Item = &'a Served>, span: Duration) -> usize {
        let t: Vec<i64> = log.map(|s| s.at_ms).collect();
        let span = span.as_millis() as i64;
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..t.len() {
            while t[hi] - t[lo] >= span {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
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

/// The simulator's shared state.
pub struct SimState {
    cfg: SimConfig,
    plan: EventPlan,
    throttle: Mutex<Throttle>,
    stats: Mutex<SimStats>,
    /// The visible stubs of recent (shard, start, end, as-of) queries: the
    /// pages of one window share them instead of generating them again.
    pages: Mutex<HashMap<PageKey, Arc<Vec<Stub>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimState {
    pub fn new(cfg: SimConfig) -> Self {
        Self {
            plan: cfg.plan(),
            cfg,
            throttle: Mutex::new(Throttle::default()),
            stats: Mutex::new(SimStats::default()),
            pages: Mutex::new(HashMap::new()),
        }
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

    fn record(&self, at_ms: i64, bridge: bool, status: u16, events: usize) {
        let mut st = lock(&self.stats);
        if status == 429 {
            st.throttled += 1;
        } else {
            st.served += 1;
        }
        *st.by_status.entry(status).or_default() += 1;
        st.events_returned += events as u64;
        if st.log.len() < 2_000_000 {
            st.log.push(Served {
                at_ms,
                status,
                bridge,
            });
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
    pub state: Arc<SimState>,
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
    let state = Arc::new(SimState::new(cfg));
    let cancel = CancellationToken::new();
    let app = router(state.clone());
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { c.cancelled().await })
            .await;
    });
    Ok(SimHandle {
        addr,
        state,
        cancel,
        task,
    })
}

/// The simulator's routes.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route(state.cfg.dialect.path(), any(security_events))
        .route("/_sim/truth", get(truth))
        .route("/_sim/stats", get(stats))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                -4040001,
                "The request API is not supported",
            )
        })
        .with_state(state)
}

fn error(status: StatusCode, code: i64, msg: &str) -> Response {
    let trace = uuid::Uuid::new_v4().to_string();
    (
        status,
        Json(json!({"code": code, "traceId": trace, "msg": msg})),
    )
        .into_response()
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    for f in ["%Y-%m-%dT%H:%M:%S%.fZ", "%Y-%m-%dT%H:%M:%SZ"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    None
}

async fn security_events(
    State(st): State<Arc<SimState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // Counted at arrival, as the API counts; the added latency delays the answer.
    let arrived = Utc::now().timestamp_millis();
    let bridge = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("cas-bridge/"));
    let (resp, status, events) = answer(&st, method, &headers, query.as_deref().unwrap_or(""));
    st.record(arrived, bridge, status, events);
    if !st.cfg.latency.is_zero() {
        tokio::time::sleep(st.cfg.latency).await;
    }
    resp
}

fn answer(
    st: &SimState,
    method: Method,
    headers: &HeaderMap,
    query: &str,
) -> (Response, u16, usize) {
    let fail = |s: StatusCode, code: i64, msg: &str| (error(s, code, msg), s.as_u16(), 0);
    if method != Method::GET {
        return fail(
            StatusCode::METHOD_NOT_ALLOWED,
            -4050001,
            "The request API method is not supported",
        );
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth.strip_prefix("Bearer ") != Some(st.cfg.token.as_str()) {
        return fail(
            StatusCode::UNAUTHORIZED,
            -4010001,
            "Authentication token not found",
        );
    }
    let now = Utc::now();
    if let Err(wait) = st.admit(now.timestamp_millis()) {
        let (mut r, s, n) = fail(
            StatusCode::TOO_MANY_REQUESTS,
            -4290001,
            "Maximum allowed requests exceeded",
        );
        if st.cfg.retry_after {
            if let Ok(v) = (wait.as_secs() + 1).to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
        }
        return (r, s, n);
    }
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if params.insert(k.to_string(), v.to_string()).is_some() {
            return fail(
                StatusCode::BAD_REQUEST,
                -4000001,
                &format!("parameter `{k}` given more than once"),
            );
        }
    }
    let (Some(service), Some(event)) = (params.get("service"), params.get("event")) else {
        return fail(
            StatusCode::BAD_REQUEST,
            -4000001,
            "service and event are mandatory",
        );
    };
    let shard = Shard::new(service.clone(), event.clone());
    let max = st.cfg.dialect.max_page_limit();
    let limit = match params.get("limit").map(|l| l.parse::<u32>()) {
        None => max,
        Some(Ok(l)) if (1..=max).contains(&l) => l,
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                -4000001,
                &format!("limit must be 1..{max}"),
            )
        }
    };
    let (start, end) = match (params.get("start"), params.get("end")) {
        (None, None) => (now - chrono::Duration::minutes(5), now),
        (Some(s), Some(e)) => match (parse_time(s), parse_time(e)) {
            (Some(s), Some(e)) => (s, e),
            _ => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    -4000001,
                    "start/end must be yyyy-mm-ddThh:mm:ss[.mmm]Z",
                )
            }
        },
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                -4000001,
                "start and end go together",
            )
        }
    };
    if end < start || end - start > chrono::Duration::days(3) {
        return fail(
            StatusCode::BAD_REQUEST,
            -4000001,
            "The maximum interval is three days",
        );
    }
    if start < now - chrono::Duration::hours(72) {
        return fail(
            StatusCode::BAD_REQUEST,
            -4000001,
            "start is older than 72 hours",
        );
    }
    let (offset, asof) = match params.get("page_token") {
        None => (0usize, now.timestamp_millis()),
        Some(t) => match t
            .split_once('.')
            .and_then(|(o, a)| Some((o.parse().ok()?, a.parse().ok()?)))
        {
            Some(x) => x,
            None => return fail(StatusCode::BAD_REQUEST, -4000001, "bad page_token"),
        },
    };
    let mut rng = rand::rng();
    if st.cfg.fault_500 > 0.0 && rng.random_bool(st.cfg.fault_500.min(1.0)) {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            -5000001,
            "internal error (injected)",
        );
    }
    let key = (
        shard.clone(),
        start.timestamp_millis(),
        end.timestamp_millis(),
        asof,
    );
    let cached = lock(&st.pages).get(&key).cloned();
    let stubs = match cached {
        Some(s) => s,
        None => {
            let s: Arc<Vec<Stub>> = Arc::new(
                st.plan
                    .stubs(&shard, key.1, key.2)
                    .into_iter()
                    .filter(|s| s.visible_ms <= asof)
                    .collect(),
            );
            let mut pages = lock(&st.pages);
            if pages.len() >= 512 {
                pages.clear();
            }
            pages.insert(key, s.clone());
            s
        }
    };
    let page: Vec<Value> = stubs
        .iter()
        .skip(offset)
        .take(limit as usize)
        .map(|s| st.plan.render(&shard, s, st.cfg.dialect))
        .collect();
    let more = offset + page.len() < stubs.len();
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let link_host = st.cfg.foreign_next_link.as_deref().unwrap_or(host);
    let base_query = format!(
        "service={}&event={}&start={}&end={}&limit={limit}",
        shard.service,
        shard.event,
        format_time(start),
        format_time(end)
    );
    let path = st.cfg.dialect.path();
    let current = format!("http://{host}{path}?{}", query);
    let next = if more {
        format!(
            "http://{link_host}{path}?{base_query}&page_token={}.{asof}",
            offset + page.len()
        )
    } else {
        String::new()
    };
    let d = st.cfg.dialect;
    let mut body = serde_json::Map::new();
    body.insert(d.self_field().into(), json!(current));
    body.insert(d.next_field().into(), json!(next));
    if d == Dialect::V1 {
        let last = stubs
            .last()
            .map(|s| format_time(DateTime::from_timestamp_millis(s.at_ms).unwrap_or_default()));
        body.insert(
            "last_log_item_generation_time".into(),
            json!(last.unwrap_or_default()),
        );
        body.insert("traceId".into(), json!(uuid::Uuid::new_v4().to_string()));
    }
    if st.cfg.pad_bytes > 0 {
        body.insert("padding".into(), json!("x".repeat(st.cfg.pad_bytes)));
    }
    let n = page.len();
    body.insert(d.events_field().into(), Value::Array(page));
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    if st.cfg.malformed > 0.0 && rng.random_bool(st.cfg.malformed.min(1.0)) {
        bytes.truncate(bytes.len() / 2);
    }
    let resp = ([("content-type", "application/json")], bytes).into_response();
    (resp, 200, n)
}

#[derive(Deserialize)]
struct TruthQuery {
    service: String,
    event: String,
    start: String,
    end: String,
}

async fn truth(State(st): State<Arc<SimState>>, Query(q): Query<TruthQuery>) -> Response {
    let (Some(start), Some(end)) = (parse_time(&q.start), parse_time(&q.end)) else {
        return error(StatusCode::BAD_REQUEST, -4000001, "start/end");
    };
    let shard = Shard::new(q.service, q.event);
    Json(json!({
        "ids": st.truth(&shard, start, end),
        "bad_ids": st.bad_ids(&shard, start, end),
    }))
    .into_response()
}

async fn stats(State(st): State<Arc<SimState>>) -> Json<SimStats> {
    Json(st.stats())
}
