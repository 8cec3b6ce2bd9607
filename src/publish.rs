//! The publisher: validate → dedup → records → sink → mark delivered.
//!
//! What must stay true here: [`Publisher::publish_page`] returns `Ok` only
//! when every event of the page is acknowledged by the sink, on its topic
//! or on the dead-letter topic (whole, or truncated when even the whole
//! dead letter is refused). A sink that is unavailable is retried without
//! end (the cursor stays); a record the broker refuses for good is
//! dead-lettered with the broker's reason, so one record never stalls its
//! shard; a misconfigured sink stops the shard with a clear error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cas::Page;
use crate::coord::DedupStore;
use crate::identity::{event_id, natural_id_on_tape};
use crate::retry::Backoff;
use crate::shard::Shard;
use crate::sink::{PageMeta, Reason, Record, RecordKind, Sink, SinkError, Topics};
use crate::status::StatusBoard;
use crate::tape::{Doc, Tape, TapeNode};
use crate::telemetry::{DeadReason, ShardTelemetry};
use crate::validate::{Registry, Violation};
use crate::window::Window;

/// Why a page was not delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// Shutdown or lease loss: the cursor stays.
    Cancelled,
    /// The sink refuses this shard's records as configured: stop the shard.
    Stopped(String),
}

/// Shared by every shard of a process.
pub struct Publisher {
    /// The compiled schemas.
    registry: Registry,
    /// Where records go.
    sink: Arc<dyn Sink>,
    /// Topic names.
    topics: Topics,
    /// Ids already delivered.
    dedup: Arc<dyn DedupStore>,
    /// Each tenant's API origin, when records carry CloudEvents attributes.
    cloudevents: HashMap<Arc<str>, String>,
}

impl Publisher {
    pub fn new(
        registry: Registry,
        sink: Arc<dyn Sink>,
        topics: Topics,
        dedup: Arc<dyn DedupStore>,
    ) -> Self {
        Self {
            registry,
            sink,
            topics,
            dedup,
            cloudevents: HashMap::new(),
        }
    }

    /// The default tenant's records carry CloudEvents attributes, `source`
    /// under this origin.
    pub fn with_cloudevents(self, origin: String) -> Self {
        self.with_cloudevents_of(crate::shard::DEFAULT_TENANT, origin)
    }

    /// `tenant`'s records carry CloudEvents attributes, `source` under
    /// this origin (its API's).
    pub fn with_cloudevents_of(mut self, tenant: &str, origin: String) -> Self {
        self.cloudevents.insert(tenant.into(), origin);
        self
    }

    /// The dead-letter topic of a shard's tenant, shared by a page's
    /// records that go there.
    fn dead_letter_topic(&self, shard: &Shard) -> Arc<str> {
        self.topics.dead_letter_of(&shard.tenant).into()
    }

    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// An event's id, verdict with reasons, and time, through a `Value`:
    /// for invalid events, content-hash ids and anything the tape refuses.
    fn checked_slowly(
        &self,
        shard: &Shard,
        raw: &str,
    ) -> (String, Vec<Violation>, Option<DateTime<Utc>>) {
        match serde_json::from_str::<Value>(raw) {
            Ok(v) => (
                event_id(shard, &v),
                self.registry.check(&shard.event, &v),
                event_time(&v),
            ),
            // Unreachable (the page parsed), but never a panic.
            Err(e) => (
                event_id(shard, &Value::String(raw.to_string())),
                vec![Violation {
                    path: String::new(),
                    message: format!("not JSON: {e}"),
                }],
                None,
            ),
        }
    }

    /// The records of one page: each event parsed on its own, checked and
    /// dropped (only its raw text, id, time and verdict stay, so a page
    /// costs little more than its body); duplicates left out. Also the
    /// times of the events published on their topic.
    async fn records(
        &self,
        shard: &Shard,
        window: &Window,
        page: &Page,
        tel: &ShardTelemetry,
    ) -> (Vec<Record>, Vec<DateTime<Utc>>) {
        let read = page.doc();
        let checked: Vec<(String, Vec<Violation>, Option<DateTime<Utc>>)> = page
            .events()
            .zip(page.roots())
            .map(|(raw, root)| {
                // The fast path: a valid event with a natural id, on the
                // tape the page was read into (or, without one, its own).
                let own = root.is_none().then(|| Tape::parse(raw).ok()).flatten();
                let own = own.as_ref().map(Tape::doc);
                let root = root
                    .map(|at| read.node(at))
                    .or_else(|| own.as_ref().map(Doc::root));
                if let Some(root) = root {
                    if let Some(id) = natural_id_on_tape(root) {
                        if self.registry.is_valid(&shard.event, root) {
                            return (id.to_string(), Vec::new(), event_time_on_tape(root));
                        }
                    }
                }
                self.checked_slowly(shard, raw)
            })
            .collect();
        let id_refs: Vec<&str> = checked.iter().map(|(id, ..)| id.as_str()).collect();
        let seen = match self.dedup.seen(shard, &id_refs).await {
            Ok(s) => s,
            Err(e) => {
                // Publishing a duplicate is safe; skipping an event is not.
                warn!(%shard, error = %crate::field::chain(&e), "dedup memory unavailable; publishing without it");
                vec![false; checked.len()]
            }
        };
        let topic: Arc<str> = self.topics.topic(shard).into();
        let mut meta = PageMeta::new(shard, window);
        if let Some(origin) = self.cloudevents.get(&shard.tenant) {
            meta = meta.with_cloudevents(origin);
        }
        let dead_letter_topic = self.dead_letter_topic(shard);
        let meta = Arc::new(meta);
        let mut batch_ids: HashSet<&str, foldhash::fast::RandomState> =
            HashSet::with_capacity_and_hasher(checked.len(), Default::default());
        let mut records = Vec::with_capacity(checked.len());
        let mut times = Vec::with_capacity(checked.len());
        let mut duplicates = 0;
        for ((raw, (id, violations, at)), seen) in page.events().zip(&checked).zip(seen) {
            if seen || !batch_ids.insert(id.as_str()) {
                duplicates += 1;
                continue;
            }
            if violations.is_empty() {
                times.extend(*at);
                let mut r = Record::event(topic.clone(), id.clone(), &meta, raw);
                r.occurred = *at;
                records.push(r);
            } else {
                records.push(Record::dead_letter(
                    dead_letter_topic.clone(),
                    &topic,
                    id.clone(),
                    &meta,
                    raw,
                    &violations.iter().map(Reason::from).collect::<Vec<_>>(),
                ));
            }
        }
        tel.duplicates_skipped(duplicates);
        (records, times)
    }

    /// Validates, dedups and publishes one page; returns when the sink
    /// acknowledged every record somewhere.
    pub async fn publish_page(
        &self,
        shard: &Shard,
        window: &Window,
        page: Page,
        tel: &ShardTelemetry,
        status: &StatusBoard,
        cancel: &CancellationToken,
    ) -> Result<(), PublishError> {
        if page.is_empty() {
            return Ok(());
        }
        let (records, times) = self.records(shard, window, &page, tel).await;
        // The events go now; the page's share of the bytes in flight stays
        // until its records are written (they are as large).
        let mut page = page;
        let _memory = page.memory.take();
        drop(page);
        if records.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut delivered: Vec<String> = Vec::with_capacity(records.len());
        let mut published = 0u64;
        // The page's dead letters: how many, and the first (one log line).
        let mut dead = (0u64, String::new(), String::new());
        let mut pending = records;
        let mut retry = Backoff::publish();
        while !pending.is_empty() {
            let res = tokio::select! {
                r = self.sink.publish(&pending) => r,
                _ = cancel.cancelled() => return Err(PublishError::Cancelled),
            };
            let refused = match res {
                Ok(()) => Vec::new(),
                Err(e @ SinkError::Unavailable { .. }) => {
                    let wait = retry.next_delay();
                    tel.sink_error(e.kind(), &crate::field::chain(&e), Some(wait));
                    status.set_error(shard, &crate::field::chain(&e));
                    status.set_sink_failing(shard, true);
                    if !crate::retry::sleep_or_cancel(wait, cancel).await {
                        return Err(PublishError::Cancelled);
                    }
                    continue;
                }
                Err(e @ SinkError::Misconfigured { .. }) => {
                    tel.sink_error(e.kind(), &crate::field::chain(&e), None);
                    return Err(PublishError::Stopped(e.to_string()));
                }
                Err(ref e @ SinkError::Rejected { ref refused, .. }) => {
                    tel.sink_error(e.kind(), &crate::field::chain(e), None);
                    refused.clone()
                }
            };
            status.set_sink_failing(shard, false);
            retry.reset();
            // Everything not refused was acknowledged.
            let mut replacements = Vec::with_capacity(refused.len());
            let mut refused_at = refused.iter().peekable();
            for (i, r) in pending.into_iter().enumerate() {
                match refused_at.next_if(|f| f.index == i) {
                    None => {
                        if r.kind != RecordKind::Event {
                            if dead.0 == 0 {
                                dead.1.clone_from(&r.id);
                                dead.2 = r.dead_reason.clone().unwrap_or_default();
                            }
                            dead.0 += 1;
                        }
                        match r.kind {
                            RecordKind::Event => published += 1,
                            RecordKind::DeadLetter => tel.dead_lettered(
                                &r.id,
                                if r.dead_reason
                                    .as_deref()
                                    .is_some_and(|d| d.starts_with("schema"))
                                {
                                    DeadReason::Schema
                                } else {
                                    DeadReason::Rejected
                                },
                                r.dead_reason.as_deref().unwrap_or(""),
                            ),
                            RecordKind::Truncated => tel.dead_lettered(
                                &r.id,
                                DeadReason::Truncated,
                                r.dead_reason.as_deref().unwrap_or(""),
                            ),
                        }
                        delivered.push(r.id);
                    }
                    Some(f) if r.kind == RecordKind::Truncated => {
                        // Not even a few hundred bytes go through: nothing
                        // the bridge can send will.
                        return Err(PublishError::Stopped(format!(
                            "the dead-letter topic `{}` refuses even a truncated dead letter: {}",
                            r.topic, f.reason
                        )));
                    }
                    Some(f) => replacements.push(Record::rejected(
                        self.dead_letter_topic(shard),
                        &r,
                        &f.reason,
                    )),
                }
            }
            pending = replacements;
        }
        let ids: Vec<&str> = delivered.iter().map(String::as_str).collect();
        if let Err(e) = self.dedup.mark(shard, &ids).await {
            warn!(%shard, error = %crate::field::chain(&e), "cannot record delivered ids; duplicates may follow");
        }
        tel.dead_letters_logged(dead.0, &dead.1, &dead.2);
        tel.page_published(published, started.elapsed());
        tel.events_aged(&times);
        Ok(())
    }
}

/// The members of `message` that hold an event's own time, in the order
/// they are looked for: security events' `detection_time`; a quarantine
/// event's `mail_message_delivery_time` (its reference documents no
/// detection time).
const TIME_FIELDS: [&str; 2] = ["detection_time", "mail_message_delivery_time"];

/// An event's own time: `message.detection_time` (else, for a quarantine
/// event, `message.mail_message_delivery_time`), with a zone
/// (`2020-07-19T22:51:30.000Z`) or without one (`2016-07-22T01:51:28`,
/// taken as UTC). `None` when absent or unreadable: the event is delivered
/// all the same, only its age is not measured.
pub fn event_time(event: &Value) -> Option<DateTime<Utc>> {
    let message = event.get("message")?;
    TIME_FIELDS
        .iter()
        .find_map(|f| message.get(*f).and_then(Value::as_str))
        .and_then(parse_event_time)
}

/// [`event_time`] on a tape.
pub fn event_time_on_tape(event: TapeNode<'_>) -> Option<DateTime<Utc>> {
    let message = event.get("message")?;
    TIME_FIELDS
        .iter()
        .find_map(|f| message.get(f).and_then(|n| n.as_str()))
        .and_then(parse_event_time)
}

fn parse_event_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Some(t) = plain_event_time(s) {
        return Some(t);
    }
    parse_event_time_slowly(s)
}

/// `YYYY-MM-DDTHH:MM:SS`, then up to nine digits of a fraction, then `Z`
/// or nothing: the shape both dialects write, read without chrono's format
/// parser (the same instant [`parse_event_time_slowly`] reads). `None` for
/// any other text, which then goes the slow way.
fn plain_event_time(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let digit = |i: usize| b[i].is_ascii_digit().then(|| u32::from(b[i] - b'0'));
    let two = |i: usize| Some(digit(i)? * 10 + digit(i + 1)?);
    let year = i32::try_from(two(0)? * 100 + two(2)?).ok()?;
    let (month, day, hour, minute, second) = (two(5)?, two(8)?, two(11)?, two(14)?, two(17)?);
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let [b'.', fraction @ ..] = rest {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        for c in &fraction[..digits] {
            nanos = nanos * 10 + u32::from(c - b'0');
        }
        nanos *= 10u32.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    if !(rest.is_empty() || rest == b"Z") || second > 59 {
        return None;
    }
    let at = chrono::NaiveDate::from_ymd_opt(year, month, day)?
        .and_hms_nano_opt(hour, minute, second, nanos)?;
    Some(at.and_utc())
}

fn parse_event_time_slowly(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// A schema's verdict, as the reason the sink writes into a dead letter.
impl From<&Violation> for Reason {
    fn from(v: &Violation) -> Self {
        Reason {
            path: v.path.clone(),
            message: v.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_time_reads_both_dialects_and_gives_up_quietly() {
        let at = |s: Value| event_time(&json!({ "message": { "detection_time": s } }));
        let want = DateTime::parse_from_rfc3339("2020-07-19T22:51:30Z").unwrap();
        assert_eq!(at(json!("2020-07-19T22:51:30.000Z")), Some(want.into()));
        assert_eq!(at(json!("2020-07-19T22:51:30")), Some(want.into()));
        assert_eq!(at(json!(" 2020-07-19T22:51:30 ")), Some(want.into()));
        assert_eq!(at(json!(1595199090)), None);
        assert_eq!(at(json!("yesterday")), None);
        assert_eq!(event_time(&json!({ "message": "unparsed" })), None);
    }

    /// The plain reading gives chrono's instant wherever it gives one, and
    /// gives one for the shapes the dialects write.
    #[test]
    fn the_plain_reading_of_a_time_is_chronos() {
        let mut texts: Vec<String> = [
            "2020-07-19T22:51:30.000Z",
            "2016-07-22T01:51:28",
            "2020-02-29T00:00:00Z",
            "2021-12-31T23:59:59.123456789Z",
            "2020-07-19T22:51:30.5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for s in &texts {
            assert!(plain_event_time(s).is_some(), "{s}");
        }
        let edits = [
            "",
            "Z",
            "z",
            ".",
            ".1234567891",
            "+01:00",
            "-00:00",
            " ",
            "t",
            "0",
            "60",
            "99",
        ];
        let base = texts.clone();
        for b in &base {
            for cut in 0..=b.len() {
                for e in &edits {
                    texts.push(format!("{}{e}", &b[..cut]));
                    if cut < b.len() {
                        texts.push(format!("{}{e}{}", &b[..cut], &b[cut + 1..]));
                    }
                }
            }
        }
        texts.extend(
            [
                "2021-02-29T00:00:00Z",
                "2020-13-01T00:00:00Z",
                "2020-01-01T24:00:00",
            ]
            .map(String::from),
        );
        for s in &texts {
            if let Some(fast) = plain_event_time(s) {
                assert_eq!(Some(fast), parse_event_time_slowly(s), "{s:?}");
            }
        }
        assert!(texts.len() > 1000);
    }
}
