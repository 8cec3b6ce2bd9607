//! The simulator's HTTP side: the security-events endpoint in both
//! dialects (windows, pages, throttling, faults), the quarantine-events
//! endpoint of the live dialect (7 days of reach; the seed page's host
//! answers its path with 404), the ground truth and the counters.

use std::sync::Arc;

use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::*;

/// The simulator's routes.
pub fn router(tenants: Arc<Tenants>) -> Router {
    let dialect = tenants.0[0].cfg.dialect;
    let mut router = Router::new().route(dialect.path(), any(security_events));
    if dialect == Dialect::V1 {
        router = router.route(dialect.path_of(Stream::Quarantine), any(quarantine_events));
    }
    router
        .route("/_sim/truth", get(truth))
        .route("/_sim/stats", get(stats))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                -4040001,
                "The request API is not supported",
            )
        })
        .with_state(tenants)
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
    State(tenants): State<Arc<Tenants>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    events_of(Stream::Security, &tenants, method, headers, query).await
}

async fn quarantine_events(
    State(tenants): State<Arc<Tenants>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    events_of(Stream::Quarantine, &tenants, method, headers, query).await
}

async fn events_of(
    stream: Stream,
    tenants: &Tenants,
    method: Method,
    headers: HeaderMap,
    query: Option<String>,
) -> Response {
    let st = tenants.by_token(&headers);
    // Counted at arrival, as the API counts; the added latency delays the answer.
    let arrived = Utc::now().timestamp_millis();
    let bridge = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("cas-bridge/"));
    let query = query.as_deref().unwrap_or("");
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "))
        .and_then(|t| st.token_index(t));
    let (resp, status, events) = answer(st, stream, method, &headers, query, token.is_some());
    let served = super::Served {
        at_ms: arrived,
        status,
        bridge,
        pair: asked_pair(stream, query),
        token,
    };
    st.record(arrived, served, events);
    if !st.cfg.latency.is_zero() {
        tokio::time::sleep(st.cfg.latency).await;
    }
    resp
}

/// `service:event` from a query (for the request log); `service:quarantine`
/// on the quarantine endpoint.
fn asked_pair(stream: Stream, query: &str) -> String {
    let (mut service, mut event) = (String::new(), String::new());
    if stream == Stream::Quarantine {
        event = QUARANTINE.into();
    }
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "service" => service = v.into_owned(),
            "event" => event = v.into_owned(),
            _ => {}
        }
    }
    if service.is_empty() && event.is_empty() {
        String::new()
    } else {
        format!("{service}:{event}")
    }
}

fn answer(
    st: &SimState,
    stream: Stream,
    method: Method,
    headers: &HeaderMap,
    query: &str,
    token_ok: bool,
) -> (Response, u16, usize) {
    let fail = |s: StatusCode, code: i64, msg: &str| (error(s, code, msg), s.as_u16(), 0);
    if method != Method::GET {
        return fail(
            StatusCode::METHOD_NOT_ALLOWED,
            -4050001,
            "The request API method is not supported",
        );
    }
    if !token_ok {
        return fail(
            StatusCode::UNAUTHORIZED,
            -4010001,
            "Authentication token not found",
        );
    }
    if st.throttled_first() {
        let (mut r, s, n) = fail(
            StatusCode::TOO_MANY_REQUESTS,
            -4290001,
            "Maximum allowed requests exceeded",
        );
        if let Some(v) = st.cfg.throttle_retry_after.as_deref() {
            if let Ok(v) = v.parse() {
                r.headers_mut().insert("retry-after", v);
            }
        }
        return (r, s, n);
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
    let shard = match stream {
        Stream::Security => {
            let (Some(service), Some(event)) = (params.get("service"), params.get("event")) else {
                return fail(
                    StatusCode::BAD_REQUEST,
                    -4000001,
                    "service and event are mandatory",
                );
            };
            Shard::new(service.clone(), event.clone())
        }
        Stream::Quarantine => match params.get("service").map(String::as_str) {
            Some("exchange") => Shard::new("exchange", QUARANTINE),
            Some(_) => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    -4000001,
                    "service must be exchange",
                )
            }
            None => return fail(StatusCode::BAD_REQUEST, -4000001, "service is mandatory"),
        },
    };
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
    let bad_time = || {
        fail(
            StatusCode::BAD_REQUEST,
            -4000001,
            "start/end must be yyyy-mm-ddThh:mm:ss[.mmm]Z",
        )
    };
    let day = chrono::Duration::days(1);
    let (start, end) = match (params.get("start"), params.get("end"), stream) {
        (None, None, Stream::Security) => (now - chrono::Duration::minutes(5), now),
        // The quarantine endpoint's own defaults: the last day, the day
        // after a start, the day before an end.
        (None, None, Stream::Quarantine) => (now - day, now),
        (Some(s), None, Stream::Quarantine) => match parse_time(s) {
            Some(s) => (s, s + day),
            None => return bad_time(),
        },
        (None, Some(e), Stream::Quarantine) => match parse_time(e) {
            Some(e) => (e - day, e),
            None => return bad_time(),
        },
        (Some(s), Some(e), _) => match (parse_time(s), parse_time(e)) {
            (Some(s), Some(e)) => (s, e),
            _ => return bad_time(),
        },
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                -4000001,
                "start and end go together",
            )
        }
    };
    let (longest, reach, reach_text) = match stream {
        Stream::Security => (
            chrono::Duration::days(3),
            chrono::Duration::hours(72),
            "72 hours",
        ),
        Stream::Quarantine => (
            chrono::Duration::days(7),
            chrono::Duration::days(7),
            "7 days",
        ),
    };
    if end < start || end - start > longest {
        return fail(
            StatusCode::BAD_REQUEST,
            -4000001,
            &format!("The maximum interval is {} days", longest.num_days()),
        );
    }
    if start < now - reach {
        return fail(
            StatusCode::BAD_REQUEST,
            -4000001,
            &format!("start is older than {reach_text}"),
        );
    }
    // page_token = offset.asof.issued (ms): where the page starts, the
    // time the window's first page was asked (what it shows), and when
    // this link was handed out (its age, when links expire).
    let (offset, asof) = match params.get("page_token") {
        None => (0usize, now.timestamp_millis()),
        Some(t) => {
            let parts: Vec<&str> = t.split('.').collect();
            let parsed = match parts.as_slice() {
                [o, a] | [o, a, _] => o.parse().ok().zip(a.parse().ok()),
                _ => None,
            };
            let Some(x) = parsed else {
                return fail(StatusCode::BAD_REQUEST, -4000001, "bad page_token");
            };
            let issued: Option<i64> = parts.get(2).and_then(|i| i.parse().ok());
            if let (Some(ttl), Some(issued)) = (st.cfg.link_ttl, issued) {
                if now.timestamp_millis() - issued > ttl.as_millis() as i64 {
                    lock(&st.stats).links_expired += 1;
                    return fail(StatusCode::BAD_REQUEST, -4000001, "page_token expired");
                }
            }
            x
        }
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
    let base_query = match stream {
        Stream::Security => format!(
            "service={}&event={}&start={}&end={}&limit={limit}",
            shard.service,
            shard.event,
            format_time(start),
            format_time(end)
        ),
        Stream::Quarantine => format!(
            "service={}&start={}&end={}&limit={limit}",
            shard.service,
            format_time(start),
            format_time(end)
        ),
    };
    let path = st.cfg.dialect.path_of(stream);
    let scheme = if st.cfg.https_links { "https" } else { "http" };
    let current = format!("{scheme}://{host}{path}?{}", query);
    let next = if more {
        format!(
            "{scheme}://{link_host}{path}?{base_query}&page_token={}.{asof}.{}",
            offset + page.len(),
            now.timestamp_millis()
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
    *lock(&st.stats)
        .page_reads
        .entry(format!(
            "{}:{}:{}:{}:{offset}",
            shard.service,
            shard.event,
            start.timestamp_millis(),
            end.timestamp_millis()
        ))
        .or_default() += 1;
    let field = d.events_field_of(stream);
    if st.cfg.flood > 0 {
        body.insert(field.into(), Value::Array(vec![json!(0); st.cfg.flood]));
    } else {
        body.insert(field.into(), Value::Array(page));
    }
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    if st.cfg.malformed > 0.0 && rng.random_bool(st.cfg.malformed.min(1.0)) {
        bytes.truncate(bytes.len() / 2);
    }
    let resp = ([("content-type", "application/json")], bytes).into_response();
    (resp, 200, n)
}

#[derive(Deserialize)]
struct TruthQuery {
    /// The tenant's index (`--tenants`); 0 by default.
    #[serde(default)]
    tenant: usize,
    service: String,
    event: String,
    start: String,
    end: String,
}

async fn truth(State(tenants): State<Arc<Tenants>>, Query(q): Query<TruthQuery>) -> Response {
    let Some(st) = tenants.0.get(q.tenant) else {
        return error(StatusCode::BAD_REQUEST, -4000001, "no such tenant");
    };
    let (Some(start), Some(end)) = (parse_time(&q.start), parse_time(&q.end)) else {
        return error(StatusCode::BAD_REQUEST, -4000001, "start/end");
    };
    let shard = Shard::new(q.service, q.event);
    let visible: Vec<i64> = st
        .visible(&shard, start, end)
        .into_iter()
        .map(|(_, ms)| ms)
        .collect();
    Json(json!({
        "ids": st.truth(&shard, start, end),
        "bad_ids": st.bad_ids(&shard, start, end),
        // When each of `ids` became visible in the API (ms since the epoch).
        "visible_ms": visible,
    }))
    .into_response()
}

/// `?tenant=i`: one tenant's counters (the first's without it).
async fn stats(State(tenants): State<Arc<Tenants>>, Query(q): Query<TenantQuery>) -> Response {
    match tenants.0.get(q.tenant) {
        Some(st) => Json(st.stats()).into_response(),
        None => error(StatusCode::BAD_REQUEST, -4000001, "no such tenant"),
    }
}

#[derive(Deserialize)]
struct TenantQuery {
    #[serde(default)]
    tenant: usize,
}
