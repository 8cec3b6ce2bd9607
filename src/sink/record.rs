//! The records a sink publishes: the vendor's event whole, with the request
//! pair, id and window beside it; dead letters carry the reasons.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::shard::Shard;
use crate::window::Window;

/// Why a record is a dead letter: where in the event (a JSON pointer, or
/// empty for the whole event) and what was wrong, as text. The sink writes
/// it into the dead letter; it does not judge events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// JSON pointer into the event, e.g. `/message/detection_time`.
    pub path: String,
    /// What was wrong.
    pub message: String,
}

/// One message for the broker.
#[derive(Debug, Clone)]
pub struct Record {
    /// Topic or subject (shared by the records of a page).
    pub topic: Arc<str>,
    /// The event id: Kafka key and `Nats-Msg-Id`.
    pub id: String,
    /// The request pair and window (shared by the records of a page).
    pub page: Arc<PageMeta>,
    /// What it is: an event, a dead letter, a truncated dead letter.
    pub kind: RecordKind,
    /// Why it was dead-lettered (the first violation's path, or the
    /// broker's reason), if it was.
    pub dead_reason: Option<String>,
    /// The JSON document.
    pub payload: bytes::Bytes,
    /// When the event happened (`message.detection_time`), if known: the
    /// CloudEvents `time`.
    pub occurred: Option<DateTime<Utc>>,
    /// When `cas-bridge redrive` published it again from the dead letters
    /// (the `cas-redriven` header), if it did.
    pub redriven: Option<String>,
}

/// The protocol binding whose header names CloudEvents attributes take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// `ce_<attribute>`, and `content-type` for `datacontenttype`.
    Kafka,
    /// `ce-<attribute>`, `datacontenttype` included.
    Nats,
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An event on its topic.
    Event,
    /// An event on the dead-letter topic, whole, with the reasons.
    DeadLetter,
    /// A dead letter without the event (the broker refused the whole one):
    /// id, pair, window, size and reason.
    Truncated,
}

/// What every record of one page has in common.
#[derive(Debug, Clone)]
pub struct PageMeta {
    /// The tenant (`default` without `tenants`).
    pub tenant: Arc<str>,
    pub service: String,
    pub event: String,
    /// The CloudEvents `source` (API origin and pair), when the sink sends
    /// CloudEvents attributes.
    pub ce_source: Option<String>,
    /// The window's bounds in the API's time format, written once per page
    /// rather than once per record.
    pub window_start: String,
    pub window_end: String,
    /// The members of an event's document after its id, serialized once
    /// for the page (see [`PageMeta::envelope_tail`]).
    pub envelope: std::sync::OnceLock<Vec<u8>>,
}

impl PageMeta {
    /// With CloudEvents attributes, `source` being `<origin>/<service>/<event>`.
    pub fn with_cloudevents(mut self, origin: &str) -> Self {
        self.ce_source = Some(format!("{origin}/{}/{}", self.service, self.event));
        self
    }

    pub fn new(shard: &Shard, window: &Window) -> Self {
        Self {
            tenant: shard.tenant.clone(),
            service: shard.service.to_string(),
            event: shard.event.to_string(),
            ce_source: None,
            window_start: crate::window::format_time(window.start),
            window_end: crate::window::format_time(window.end),
            envelope: std::sync::OnceLock::new(),
        }
    }

    /// `,"tenant":…,"window_end":…`: what an event's document holds
    /// between its id and its data, the same for every event of the page.
    fn envelope_tail(&self) -> &[u8] {
        self.envelope.get_or_init(|| {
            let mut tail = Vec::with_capacity(160);
            for (name, value) in [
                ("tenant", &*self.tenant),
                ("service", &self.service),
                ("event", &self.event),
                ("window_start", &self.window_start),
                ("window_end", &self.window_end),
            ] {
                tail.push(b',');
                // Writing strings into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut tail, name);
                tail.push(b':');
                let _ = serde_json::to_writer(&mut tail, value);
            }
            tail
        })
    }
}

/// The document a consumer receives: the vendor's event whole, with the
/// request pair, id and window beside it.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    tenant: &'a str,
    service: &'a str,
    event: &'a str,
    window_start: &'a str,
    window_end: &'a str,
    /// Where a dead letter would have gone (not `topic`: the JSON-lines
    /// sink puts the topic the record went to under that name).
    #[serde(skip_serializing_if = "Option::is_none")]
    intended_topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<&'a [Reason]>,
    /// The size of the refused record (truncated dead letters only).
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<usize>,
    // The event, `data`, is written verbatim after these (see `build`).
}

/// The part of a published document a dead letter needs back.
#[derive(Deserialize)]
struct Published<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Record {
    /// A record for an event that passed validation.
    pub fn event(topic: Arc<str>, id: String, page: &Arc<PageMeta>, data: &str) -> Self {
        Self::build(topic, id, page, Some(data), None, RecordKind::Event, None)
    }

    /// A dead-letter record: the raw event, its shard, window and the reasons.
    pub fn dead_letter(
        dead_letter_topic: Arc<str>,
        intended_topic: &str,
        id: String,
        page: &Arc<PageMeta>,
        data: &str,
        reasons: &[Reason],
    ) -> Self {
        let first = reasons.first().map(|v| v.path.as_str()).unwrap_or("");
        Self::build(
            dead_letter_topic,
            id,
            page,
            Some(data),
            Some((intended_topic, reasons)),
            RecordKind::DeadLetter,
            Some(format!("schema: {first}")),
        )
    }

    /// The dead letter of a record the broker refused for good: the event
    /// whole, the broker's reason. For a record that was already a dead
    /// letter (or whose event cannot be recovered), the truncated form.
    pub fn rejected(dead_letter_topic: Arc<str>, refused: &Record, reason: &str) -> Self {
        let data = match refused.kind {
            RecordKind::Event => serde_json::from_slice::<Published<'_>>(&refused.payload).ok(),
            RecordKind::DeadLetter | RecordKind::Truncated => None,
        };
        let Some(data) = data else {
            return Self::truncated(dead_letter_topic, refused, reason);
        };
        let reasons = [Reason {
            path: String::new(),
            message: format!("broker: {reason}"),
        }];
        let mut r = Self::build(
            dead_letter_topic,
            refused.id.clone(),
            &refused.page,
            Some(data.data.get()),
            Some((&refused.topic, &reasons)),
            RecordKind::DeadLetter,
            Some(short(&format!("broker: {reason}"))),
        );
        r.occurred = refused.occurred;
        r
    }

    /// A dead letter without the event: id, pair, window, the refused
    /// record's size and the reason. Small enough for any broker.
    pub fn truncated(dead_letter_topic: Arc<str>, refused: &Record, reason: &str) -> Self {
        let reasons = [Reason {
            path: String::new(),
            message: format!("broker: {}", short(reason)),
        }];
        let mut r = Self::build(
            dead_letter_topic,
            refused.id.clone(),
            &refused.page,
            None,
            Some((&refused.topic, &reasons)),
            RecordKind::Truncated,
            Some(short(&format!("truncated; broker: {reason}"))),
        );
        // The size of the event as it was refused.
        let mut doc: serde_json::Value =
            serde_json::from_slice(&r.payload).unwrap_or(serde_json::Value::Null);
        doc["size"] = refused.payload.len().into();
        doc["truncated"] = true.into();
        r.payload = serde_json::to_vec(&doc).unwrap_or_default().into();
        r.occurred = refused.occurred;
        r
    }

    /// `data` is an event's JSON text exactly as the API sent it (the page
    /// parser checked it), written as the document's last member.
    fn build(
        topic: Arc<str>,
        id: String,
        page: &Arc<PageMeta>,
        data: Option<&str>,
        dead: Option<(&str, &[Reason])>,
        kind: RecordKind,
        dead_reason: Option<String>,
    ) -> Self {
        // Sized once: the event's text is most of the document.
        let len = data.map_or(0, str::len);
        let mut payload = Vec::with_capacity(len + 192 + id.len());
        if dead.is_none() {
            // An event: the page's envelope, written once, after its id;
            // the same bytes as the `Envelope` below would write.
            payload.extend_from_slice(b"{\"id\":");
            let _ = serde_json::to_writer(&mut payload, &id);
            payload.extend_from_slice(page.envelope_tail());
            payload.push(b'}');
        } else {
            Self::envelope(&mut payload, &id, page, dead);
        }
        if let Some(data) = data {
            // `{…}` becomes `{…,"data":<the event>}`.
            payload.pop();
            payload.extend_from_slice(b",\"data\":");
            payload.extend_from_slice(data.as_bytes());
            payload.push(b'}');
        }
        Self {
            topic,
            id,
            page: Arc::clone(page),
            kind,
            dead_reason,
            payload: payload.into(),
            occurred: None,
            redriven: None,
        }
    }

    /// The document's members before `data`, through serde.
    fn envelope(payload: &mut Vec<u8>, id: &str, page: &PageMeta, dead: Option<(&str, &[Reason])>) {
        serde_json::to_writer(
            payload,
            &Envelope {
                id,
                tenant: &page.tenant,
                service: &page.service,
                event: &page.event,
                window_start: &page.window_start,
                window_end: &page.window_end,
                intended_topic: dead.map(|d| d.0),
                reasons: dead.map(|d| d.1),
                size: None,
            },
        )
        // Serializing strings into a Vec cannot fail.
        .unwrap_or_default();
    }

    /// The CloudEvents 1.0 attributes of the record (binary content mode),
    /// as `binding` names its headers; none unless the sink sends them.
    /// `id` is the event id, `source` the API origin and pair, `type`
    /// `com.trendmicro.cas.<event>` (`….deadletter` on the dead-letter
    /// topic), `subject` the topic, `time` the event's detection time.
    pub fn cloudevent(&self, binding: Binding) -> Vec<(&'static str, String)> {
        let Some(source) = &self.page.ce_source else {
            return Vec::new();
        };
        let names: [&'static str; 7] = match binding {
            Binding::Kafka => [
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "ce_subject",
                "content-type",
                "ce_time",
            ],
            Binding::Nats => [
                "ce-specversion",
                "ce-id",
                "ce-source",
                "ce-type",
                "ce-subject",
                "ce-datacontenttype",
                "ce-time",
            ],
        };
        let ty = match self.kind {
            RecordKind::Event => format!("com.trendmicro.cas.{}", self.page.event),
            RecordKind::DeadLetter | RecordKind::Truncated => {
                format!("com.trendmicro.cas.{}.deadletter", self.page.event)
            }
        };
        let mut out = vec![
            (names[0], "1.0".to_string()),
            (names[1], self.id.clone()),
            (names[2], source.clone()),
            (names[3], ty),
            (names[4], self.topic.to_string()),
            (names[5], "application/json".to_string()),
        ];
        if let Some(at) = self.occurred {
            out.push((
                names[6],
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ));
        }
        out
    }

    /// The `cas-*` headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("cas-event-id", self.id.as_str()),
            ("cas-tenant", &*self.page.tenant),
            ("cas-service", self.page.service.as_str()),
            ("cas-event", self.page.event.as_str()),
            ("cas-window-start", self.page.window_start.as_str()),
            ("cas-window-end", self.page.window_end.as_str()),
        ]
        .into_iter()
        .chain(
            self.dead_reason
                .as_deref()
                .map(|r| ("cas-dead-letter-reason", r)),
        )
        .chain(self.redriven.as_deref().map(|t| ("cas-redriven", t)))
    }
}

/// A header value: one line, at most 200 bytes.
fn short(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() <= 200 {
        return line;
    }
    let mut end = 200;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_carries_the_event_whole() {
        let s = Shard::new("exchange", "dlp");
        let w = Window {
            start: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            end: chrono::DateTime::from_timestamp(60, 0).unwrap(),
        };
        let text = r#"{"service": "Exchange", "message": {"weird": [" <a> ", null], "n": 1.50}}"#;
        let data = RawValue::from_string(text.to_string()).unwrap();
        let page = Arc::new(PageMeta::new(&s, &w));
        let r = Record::event("cas.exchange.dlp".into(), "id1".into(), &page, data.get());
        // The vendor's bytes, verbatim (spacing, number forms, key order).
        assert!(String::from_utf8_lossy(&r.payload).contains(text));
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(doc["data"]["message"]["weird"][0], " <a> ");
        assert_eq!(doc["service"], "exchange");
        assert_eq!(doc["tenant"], "default");
        assert_eq!(doc["window_end"], "1970-01-01T00:01:00.000Z");
        let headers: Vec<_> = r.headers().collect();
        assert_eq!(
            headers,
            vec![
                ("cas-event-id", "id1"),
                ("cas-tenant", "default"),
                ("cas-service", "exchange"),
                ("cas-event", "dlp"),
                ("cas-window-start", "1970-01-01T00:00:00.000Z"),
                ("cas-window-end", "1970-01-01T00:01:00.000Z"),
            ]
        );
        let bad = [Reason {
            path: "/message/n".into(),
            message: "1.50 is not an integer".into(),
        }];
        let d = Record::dead_letter(
            "cas.deadletter".into(),
            "cas.exchange.dlp",
            "id1".into(),
            &page,
            data.get(),
            &bad,
        );
        assert_eq!(&*d.topic, "cas.deadletter");
        assert_eq!(
            d.headers().last(),
            Some(("cas-dead-letter-reason", "schema: /message/n"))
        );
        let doc: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
        assert_eq!(doc["intended_topic"], "cas.exchange.dlp");
        assert!(doc.get("topic").is_none());
        assert_eq!(doc["reasons"][0]["path"], "/message/n");
    }

    #[test]
    fn an_events_document_is_the_envelope_serde_writes_then_the_event() {
        let w = Window {
            start: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            end: chrono::DateTime::from_timestamp(60, 0).unwrap(),
        };
        let mut meta = PageMeta::new(&Shard::new("ex\"ch\u{1}é", "dl\\p"), &w);
        meta.tenant = "t\n1".into();
        let meta = Arc::new(meta);
        let data = r#"{"a": [1, "x"]}"#;
        for id in ["id1", "i\"d\u{7f}😀"] {
            let r = Record::event("t".into(), id.into(), &meta, data);
            let mut want = serde_json::to_vec(&Envelope {
                id,
                tenant: &meta.tenant,
                service: &meta.service,
                event: &meta.event,
                window_start: &meta.window_start,
                window_end: &meta.window_end,
                intended_topic: None,
                reasons: None,
                size: None,
            })
            .unwrap();
            want.pop();
            want.extend_from_slice(b",\"data\":");
            want.extend_from_slice(data.as_bytes());
            want.push(b'}');
            assert_eq!(
                String::from_utf8_lossy(&r.payload),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[test]
    fn a_refused_event_becomes_a_whole_dead_letter_then_a_truncated_one() {
        let s = Shard::new("exchange", "dlp");
        let w = Window {
            start: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            end: chrono::DateTime::from_timestamp(60, 0).unwrap(),
        };
        let page = Arc::new(PageMeta::new(&s, &w));
        let text = r#"{"message":{"big":"xxxxxxxxxxxxxxxx"}}"#;
        let data = RawValue::from_string(text.to_string()).unwrap();
        let r = Record::event("cas.exchange.dlp".into(), "id9".into(), &page, data.get());
        let d = Record::rejected("cas.dl".into(), &r, "message too large\r\n(65536)");
        assert_eq!(d.kind, RecordKind::DeadLetter);
        assert_eq!(&*d.topic, "cas.dl");
        assert!(String::from_utf8_lossy(&d.payload).contains(text));
        let doc: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
        assert_eq!(doc["intended_topic"], "cas.exchange.dlp");
        assert!(doc.get("topic").is_none());
        assert_eq!(
            doc["reasons"][0]["message"],
            "broker: message too large\r\n(65536)"
        );
        assert_eq!(
            d.headers().last(),
            Some((
                "cas-dead-letter-reason",
                "broker: message too large  (65536)"
            ))
        );
        // Its own dead letter refused too: the truncated form, no event.
        let t = Record::rejected("cas.dl".into(), &d, "still too large");
        assert_eq!(t.kind, RecordKind::Truncated);
        let doc: serde_json::Value = serde_json::from_slice(&t.payload).unwrap();
        assert_eq!(doc["id"], "id9");
        assert_eq!(doc["service"], "exchange");
        assert_eq!(doc["window_end"], "1970-01-01T00:01:00.000Z");
        assert_eq!(doc["size"], d.payload.len());
        assert_eq!(doc["truncated"], true);
        assert!(doc.get("data").is_none());
        assert!(t.payload.len() < 1024);
    }

    #[test]
    fn cloudevents_attributes_follow_each_binding() {
        let shard = Shard::new("exchange", "dlp");
        let window = Window {
            start: DateTime::from_timestamp(0, 0).unwrap(),
            end: DateTime::from_timestamp(60, 0).unwrap(),
        };
        let plain = Arc::new(PageMeta::new(&shard, &window));
        let text = r#"{"message":{"x":1}}"#;
        let r = Record::event("cas.exchange.dlp".into(), "id1".into(), &plain, text);
        assert!(r.cloudevent(Binding::Kafka).is_empty(), "off by default");

        let page = Arc::new(PageMeta::new(&shard, &window).with_cloudevents("https://api.test"));
        let mut r = Record::event("cas.exchange.dlp".into(), "id1".into(), &page, text);
        r.occurred = DateTime::from_timestamp(1_595_199_090, 0);
        let kafka: Vec<_> = r.cloudevent(Binding::Kafka);
        let get = |attrs: &[(&str, String)], k: &str| {
            attrs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&kafka, "ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(get(&kafka, "ce_id").as_deref(), Some("id1"));
        assert_eq!(
            get(&kafka, "ce_source").as_deref(),
            Some("https://api.test/exchange/dlp")
        );
        assert_eq!(
            get(&kafka, "ce_type").as_deref(),
            Some("com.trendmicro.cas.dlp")
        );
        assert_eq!(
            get(&kafka, "ce_subject").as_deref(),
            Some("cas.exchange.dlp")
        );
        assert_eq!(
            get(&kafka, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            get(&kafka, "ce_time").as_deref(),
            Some("2020-07-19T22:51:30.000Z")
        );
        let nats = r.cloudevent(Binding::Nats);
        assert_eq!(nats.len(), 7);
        assert!(nats.iter().all(|(k, _)| k.starts_with("ce-")), "{nats:?}");
        assert_eq!(
            get(&nats, "ce-datacontenttype").as_deref(),
            Some("application/json")
        );
        // A dead letter says so in its type, and keeps the event's time.
        let d = Record::rejected("cas.dl".into(), &r, "too large");
        let attrs = d.cloudevent(Binding::Kafka);
        assert_eq!(
            get(&attrs, "ce_type").as_deref(),
            Some("com.trendmicro.cas.dlp.deadletter")
        );
        assert_eq!(get(&attrs, "ce_subject").as_deref(), Some("cas.dl"));
        assert!(get(&attrs, "ce_time").is_some());
        // No time known: no `time` attribute.
        r.occurred = None;
        assert!(get(&r.cloudevent(Binding::Kafka), "ce_time").is_none());
        // The payload is the same document either way.
        let p = Record::event("cas.exchange.dlp".into(), "id1".into(), &plain, text);
        assert_eq!(r.payload, p.payload);
    }

    #[test]
    fn header_reasons_are_one_short_line() {
        assert_eq!(short("a\nb"), "a b");
        assert_eq!(short(&"é".repeat(300)).len(), 200);
    }
}
