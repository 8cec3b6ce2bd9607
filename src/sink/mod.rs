//! Sinks: Kafka, NATS JetStream and JSON lines, behind one trait.
//!
//! What must stay true here: [`Sink::publish`] returns `Ok` only when the
//! broker acknowledged **every** record of the batch (Kafka delivery reports
//! with `acks=all`, JetStream publish acks, a flushed file). The worker moves
//! no cursor before that.

mod jsonl;
mod kafka;
mod nats;

pub use jsonl::JsonlSink;
pub use kafka::KafkaSink;
pub use nats::NatsSink;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::{ConfigError, SinkConfig, SinkKind};
use crate::shard::Shard;
use crate::validate::Violation;
use crate::window::Window;

/// One message for the broker.
#[derive(Debug, Clone)]
pub struct Record {
    /// Topic or subject (shared by the records of a page).
    pub topic: Arc<str>,
    /// The event id: Kafka key and `Nats-Msg-Id`.
    pub id: String,
    /// The request pair and window (shared by the records of a page).
    pub page: Arc<PageMeta>,
    /// Why it was dead-lettered (the first violation's path), if it was.
    pub dead_reason: Option<String>,
    /// The JSON document.
    pub payload: bytes::Bytes,
}

/// What every record of one page has in common.
#[derive(Debug, Clone)]
pub struct PageMeta {
    pub service: String,
    pub event: String,
    /// The window's bounds in the API's time format, written once per page
    /// rather than once per record.
    pub window_start: String,
    pub window_end: String,
}

impl PageMeta {
    pub fn new(shard: &Shard, window: &Window) -> Self {
        Self {
            service: shard.service.clone(),
            event: shard.event.clone(),
            window_start: crate::cas::format_time(window.start),
            window_end: crate::cas::format_time(window.end),
        }
    }
}

/// The document a consumer receives: the vendor's event whole, with the
/// request pair, id and window beside it.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    service: &'a str,
    event: &'a str,
    window_start: &'a str,
    window_end: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<&'a [Violation]>,
    /// Written verbatim: the bytes the API sent.
    data: &'a RawValue,
}

impl Record {
    /// A record for an event that passed validation.
    pub fn event(topic: Arc<str>, id: String, page: &Arc<PageMeta>, data: &RawValue) -> Self {
        Self::build(topic, id, page, data, None)
    }

    /// A dead-letter record: the raw event, its shard, window and the reasons.
    pub fn dead_letter(
        dead_letter_topic: Arc<str>,
        intended_topic: &str,
        id: String,
        page: &Arc<PageMeta>,
        data: &RawValue,
        reasons: &[Violation],
    ) -> Self {
        Self::build(
            dead_letter_topic,
            id,
            page,
            data,
            Some((intended_topic, reasons)),
        )
    }

    fn build(
        topic: Arc<str>,
        id: String,
        page: &Arc<PageMeta>,
        data: &RawValue,
        dead: Option<(&str, &[Violation])>,
    ) -> Self {
        // Sized once: the event's text is most of the document.
        let mut payload = Vec::with_capacity(data.get().len() + 192 + id.len());
        serde_json::to_writer(
            &mut payload,
            &Envelope {
                id: &id,
                service: &page.service,
                event: &page.event,
                window_start: &page.window_start,
                window_end: &page.window_end,
                topic: dead.map(|d| d.0),
                reasons: dead.map(|d| d.1),
                data,
            },
        )
        // Serializing strings and raw JSON into a Vec cannot fail.
        .unwrap_or_default();
        let dead_reason = dead.map(|(_, reasons)| {
            let first = reasons.first().map(|v| v.path.as_str()).unwrap_or("");
            format!("schema: {first}")
        });
        Self {
            topic,
            id,
            page: Arc::clone(page),
            dead_reason,
            payload: payload.into(),
        }
    }

    /// The `cas-*` headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("cas-event-id", self.id.as_str()),
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
    }
}

/// A failed publish. The cursor stays; the batch is published again.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    pub sink: &'static str,
    pub message: String,
}

impl SinkError {
    pub fn new(sink: &'static str, message: impl Into<String>) -> Self {
        Self {
            sink,
            message: message.into(),
        }
    }
}

/// A destination for records.
#[async_trait]
pub trait Sink: Send + Sync {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Creates what must exist before publishing (topics, stream).
    async fn prepare(&self, topics: &[String]) -> Result<(), SinkError>;
    /// Publishes every record and waits until each is acknowledged.
    async fn publish(&self, records: &[Record]) -> Result<(), SinkError>;
    /// Flushes anything buffered (shutdown).
    async fn flush(&self) -> Result<(), SinkError>;
    /// Whether the connection to the broker is up (readiness).
    fn connected(&self) -> bool {
        true
    }
}

/// Topic / subject names from the template.
#[derive(Debug, Clone)]
pub struct Topics {
    template: String,
    dead_letter: String,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Topics {
    /// Checks the template (`{service}`, `{event}` are the only placeholders)
    /// and the dead-letter name: both must give names valid for Kafka topics
    /// and NATS subjects.
    pub fn new(template: &str, dead_letter: &str) -> Result<Self, ConfigError> {
        let probe = template.replace("{service}", "s").replace("{event}", "e");
        if probe.contains('{') || probe.contains('}') {
            return Err(ConfigError::new(
                "sink.topic_template",
                format!("`{template}`: only {{service}} and {{event}} may be used"),
            ));
        }
        if !valid_name(&probe) {
            return Err(ConfigError::new(
                "sink.topic_template",
                format!("`{template}` does not give a valid topic (A-Z a-z 0-9 . _ -, no empty segment)"),
            ));
        }
        if !valid_name(dead_letter) {
            return Err(ConfigError::new(
                "sink.dead_letter",
                format!(
                    "`{dead_letter}` is not a valid topic (A-Z a-z 0-9 . _ -, no empty segment)"
                ),
            ));
        }
        if template == dead_letter {
            return Err(ConfigError::new(
                "sink.dead_letter",
                "must differ from the topic",
            ));
        }
        Ok(Self {
            template: template.into(),
            dead_letter: dead_letter.into(),
        })
    }

    /// The topic of a shard's events.
    pub fn topic(&self, shard: &Shard) -> String {
        self.template
            .replace("{service}", &shard.service)
            .replace("{event}", &shard.event)
    }

    pub fn dead_letter(&self) -> &str {
        &self.dead_letter
    }

    /// Every topic the shards need, dead letter included.
    pub fn all(&self, shards: &[Shard]) -> Vec<String> {
        let mut v: Vec<String> = shards.iter().map(|s| self.topic(s)).collect();
        v.push(self.dead_letter.clone());
        v.sort();
        v.dedup();
        v
    }

    /// NATS subjects covering the template: a token with a placeholder becomes `*`.
    pub fn subject_filters(&self) -> Vec<String> {
        let wild = self
            .template
            .split('.')
            .map(|t| if t.contains('{') { "*" } else { t })
            .collect::<Vec<_>>()
            .join(".");
        let mut v = vec![wild, self.dead_letter.clone()];
        v.dedup();
        v
    }
}

/// Builds the configured sink.
pub async fn build(
    cfg: &SinkConfig,
    dup_window: std::time::Duration,
) -> Result<std::sync::Arc<dyn Sink>, SinkError> {
    let topics = Topics::new(&cfg.topic_template, &cfg.dead_letter)
        .map_err(|e| SinkError::new("config", e.to_string()))?;
    Ok(match cfg.kind {
        SinkKind::Kafka => std::sync::Arc::new(KafkaSink::new(&cfg.kafka)?),
        SinkKind::Nats => {
            std::sync::Arc::new(NatsSink::connect(&cfg.nats, topics, dup_window).await?)
        }
        SinkKind::Jsonl => std::sync::Arc::new(JsonlSink::open(&cfg.jsonl.path).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_from_template() {
        let t = Topics::new("cas.{service}.{event}", "cas.deadletter").unwrap();
        let s = Shard::new("onedrive", "securityrisk");
        assert_eq!(t.topic(&s), "cas.onedrive.securityrisk");
        assert_eq!(t.subject_filters(), vec!["cas.*.*", "cas.deadletter"]);
        assert_eq!(t.all(&[s.clone(), s]).len(), 2);
        assert!(Topics::new("cas.{tenant}", "d").is_err());
        assert!(Topics::new("cas..{event}", "d").is_err());
        assert!(Topics::new("cas.{service}.{event}", "dead letter").is_err());
        assert!(Topics::new("cas.all", "cas.all").is_err());
    }

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
        let r = Record::event("cas.exchange.dlp".into(), "id1".into(), &page, &data);
        // The vendor's bytes, verbatim (spacing, number forms, key order).
        assert!(String::from_utf8_lossy(&r.payload).contains(text));
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(doc["data"]["message"]["weird"][0], " <a> ");
        assert_eq!(doc["service"], "exchange");
        assert_eq!(doc["window_end"], "1970-01-01T00:01:00.000Z");
        let headers: Vec<_> = r.headers().collect();
        assert_eq!(
            headers,
            vec![
                ("cas-event-id", "id1"),
                ("cas-service", "exchange"),
                ("cas-event", "dlp"),
                ("cas-window-start", "1970-01-01T00:00:00.000Z"),
                ("cas-window-end", "1970-01-01T00:01:00.000Z"),
            ]
        );
        let bad = [Violation {
            path: "/message/n".into(),
            message: "1.50 is not an integer".into(),
        }];
        let d = Record::dead_letter(
            "cas.deadletter".into(),
            "cas.exchange.dlp",
            "id1".into(),
            &page,
            &data,
            &bad,
        );
        assert_eq!(&*d.topic, "cas.deadletter");
        assert_eq!(
            d.headers().last(),
            Some(("cas-dead-letter-reason", "schema: /message/n"))
        );
        let doc: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
        assert_eq!(doc["topic"], "cas.exchange.dlp");
        assert_eq!(doc["reasons"][0]["path"], "/message/n");
    }
}
