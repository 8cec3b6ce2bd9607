//! Fakes at the engine's seams, for the hermetic unit tier: a scripted page
//! source and a sink that behaves like a broker with limits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::value::RawValue;
use url::Url;

use crate::cas::{ApiError, Dialect, ErrorBody, Page};
use crate::coord::Permit;
use crate::shard::Shard;
use crate::sim::events::{EventPlan, Stub};
use crate::sink::{Record, Refusal, Sink, SinkError};
use crate::source::PageSource;
use crate::window::Window;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A valid v1 event and the id the simulator says it has; `pad` bytes of
/// filler make it as large as a test needs.
pub fn event(shard: &Shard, key: u64, pad: usize) -> (Box<RawValue>, String) {
    let plan = EventPlan {
        seed: 1,
        events_per_hour: 60.0,
        late_fraction: 0.0,
        late_by_ms: 0,
        bad_fraction: 0.0,
        huge_fraction: 0.0,
        huge_bytes: 0,
        activity: Vec::new(),
    };
    let stub = Stub {
        at_ms: 1_700_000_000_000 + key as i64,
        visible_ms: 1_700_000_000_000 + key as i64,
        key,
    };
    let mut v = plan.render(shard, &stub, Dialect::V1);
    if pad > 0 {
        v["message"]["padding"] = "x".repeat(pad).into();
    }
    let raw = RawValue::from_string(v.to_string()).expect("JSON");
    (raw, plan.id(shard, &stub, Dialect::V1))
}

/// A page of `events`, with a next link or not.
pub fn page(events: Vec<Box<RawValue>>, next: Option<&str>) -> Page {
    Page::from_events(&events, next.map(str::to_string))
}

pub fn status(code: u16, retry_after: Option<std::time::Duration>) -> ApiError {
    ApiError::Status {
        status: code,
        body: ErrorBody {
            code: -(i64::from(code)) * 10_000,
            trace_id: "t".into(),
            msg: format!("status {code}"),
        },
        retry_after,
    }
}

/// Answers each request with the next scripted result; an empty page
/// without a next link when the script is spent.
#[derive(Default)]
pub struct FakeSource {
    script: Mutex<VecDeque<Result<Page, ApiError>>>,
    /// Every URL requested, in order.
    pub requests: Mutex<Vec<Url>>,
    /// Credentials read again after a refusal that turned out new (a
    /// rotated token), counted down.
    pub rotated: AtomicUsize,
}

impl FakeSource {
    pub fn new(script: Vec<Result<Page, ApiError>>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
            requests: Mutex::new(Vec::new()),
            rotated: AtomicUsize::new(0),
        })
    }

    pub fn requested(&self) -> Vec<Url> {
        lock(&self.requests).clone()
    }
}

#[async_trait]
impl PageSource for FakeSource {
    fn first_page(&self, shard: &Shard, window: &Window) -> Url {
        let mut u = Url::parse("https://api.test/v1/siem/security_events").expect("URL");
        u.query_pairs_mut()
            .append_pair("service", &shard.service)
            .append_pair("event", &shard.event)
            .append_pair("start", &crate::cas::format_time(window.start))
            .append_pair("end", &crate::cas::format_time(window.end));
        u
    }
    fn next_page(&self, link: &str) -> Result<Url, ApiError> {
        crate::cas::resolve_next_link(link, &Url::parse("https://api.test/").expect("URL"))
    }
    async fn fetch(&self, permit: Permit, url: &Url) -> Result<Page, ApiError> {
        drop(permit);
        lock(&self.requests).push(url.clone());
        lock(&self.script)
            .pop_front()
            .unwrap_or_else(|| Ok(page(Vec::new(), None)))
    }
    fn describe(&self) -> String {
        "fake".into()
    }
    fn reload_credentials(&self) -> bool {
        self.rotated
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Accepts records like a broker: refuses for good any larger than
/// `max_size`, is unavailable for the next `unavailable` publishes, and
/// misconfigured while the flag is set.
#[derive(Default)]
pub struct FakeSink {
    pub accepted: Mutex<Vec<Record>>,
    pub max_size: Option<usize>,
    /// Whether `max_size` holds on the dead-letter topic too (a broker
    /// configured per topic may allow it larger records).
    pub limit_dead_letters: bool,
    pub unavailable: AtomicUsize,
    pub misconfigured: AtomicBool,
    pub calls: AtomicUsize,
    /// From this call on (counting from 1), publishing never returns, like
    /// a process that dies while the broker has its records; 0 = never.
    pub hang_from_call: AtomicUsize,
    /// What [`Sink::last_window_start`] answers.
    pub position: Mutex<Option<String>>,
}

impl FakeSink {
    pub fn accepted(&self) -> Vec<Record> {
        lock(&self.accepted).clone()
    }
    pub fn ids_on(&self, topic: &str) -> Vec<String> {
        self.accepted()
            .into_iter()
            .filter(|r| &*r.topic == topic)
            .map(|r| r.id)
            .collect()
    }
}

#[async_trait]
impl Sink for FakeSink {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn prepare(&self, _topics: &[String]) -> Result<(), SinkError> {
        Ok(())
    }
    async fn last_window_start(&self, _topic: &str) -> Result<Option<String>, SinkError> {
        Ok(lock(&self.position).clone())
    }
    async fn read_back(&self, topic: &str, _max: usize) -> Result<Vec<bytes::Bytes>, SinkError> {
        Ok(self
            .accepted()
            .into_iter()
            .filter(|r| &*r.topic == topic)
            .map(|r| r.payload)
            .collect())
    }
    async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let hang = self.hang_from_call.load(Ordering::Relaxed);
        if hang > 0 && call >= hang {
            std::future::pending::<()>().await;
        }
        if self.misconfigured.load(Ordering::Relaxed) {
            return Err(SinkError::misconfigured(
                "fake",
                "not authorised for the topic",
            ));
        }
        if self
            .unavailable
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SinkError::unavailable("fake", "broker down"));
        }
        let mut refused = Vec::new();
        let mut acc = lock(&self.accepted);
        for (index, r) in records.iter().enumerate() {
            match self.max_size {
                Some(max)
                    if r.payload.len() > max
                        && (self.limit_dead_letters
                            || r.kind == crate::sink::RecordKind::Event) =>
                {
                    refused.push(Refusal {
                        index,
                        reason: format!("{} bytes is over {max}", r.payload.len()),
                    })
                }
                _ => acc.push(r.clone()),
            }
        }
        SinkError::from_outcomes("fake", records.len(), Vec::new(), refused)
    }
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// An engine over fakes: in-memory budget (600 a minute), checkpoints and
/// dedup, the built-in schemas, topics `cas.{service}.{event}` and
/// `cas.deadletter`, default windows starting an hour back, `max_pause` 5 min.
pub fn engine(
    source: Arc<dyn PageSource>,
    sink: Arc<dyn Sink>,
    checkpoints: Arc<dyn crate::coord::CheckpointStore>,
) -> crate::runner::Engine {
    use crate::coord::memory::{MemoryBudget, MemoryDedup};
    let budget = Arc::new(MemoryBudget::new(crate::coord::BudgetConfig {
        per_minute: 600,
        per_day: 100_000,
        ..crate::coord::BudgetConfig::default()
    }));
    let lane = crate::runner::Lane {
        source,
        scheduler: Arc::new(crate::schedule::Scheduler::new(budget, 8)),
        planner: crate::window::Planner::new(&crate::window::WindowConfig::default()),
        settings: crate::runner::RunnerSettings::default(),
    };
    crate::runner::Engine::with_lanes(
        std::collections::HashMap::from([(Arc::from(crate::shard::DEFAULT_TENANT), lane)]),
        crate::publish::Publisher::new(
            crate::validate::Registry::load(None).expect("built-in schemas"),
            sink,
            crate::sink::Topics::new("cas.{service}.{event}", "cas.deadletter").expect("topics"),
            Arc::new(MemoryDedup::new(std::time::Duration::from_secs(3600))),
        ),
        checkpoints,
        Arc::new(crate::status::StatusBoard::default()),
        crate::telemetry::Telemetry::default(),
    )
}
