//! Sinks: Kafka, NATS JetStream and JSON lines, behind one trait.
//!
//! What must stay true here: [`Sink::publish`] returns `Ok` only when the
//! broker acknowledged **every** record of the batch (Kafka delivery reports
//! with `acks=all`, JetStream publish acks, a flushed file). A record the
//! broker will never take is reported as a [`Refusal`] (checked before
//! sending where the limit is known: NATS tells its `max_payload`, Kafka's
//! `message.max.bytes` is configured), never retried forever and never
//! dropped: the publisher dead-letters it. The engine moves no cursor
//! before every record is acknowledged somewhere.

mod config;
mod jsonl;
mod kafka;
mod nats;
pub mod read;
mod record;

pub use config::{JsonlConfig, KafkaConfig, NatsConfig, SinkConfig, SinkKind};
pub use jsonl::JsonlSink;
pub use kafka::KafkaSink;
pub use nats::NatsSink;
pub use record::{Binding, PageMeta, Reason, Record, RecordKind};

use async_trait::async_trait;

use crate::field::ConfigError;
use crate::shard::Shard;

/// A failed publish, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The broker cannot be reached or did not acknowledge: publish the
    /// same records again later; the cursor stays.
    #[error("sink {sink} unavailable: {message}")]
    Unavailable {
        sink: &'static str,
        message: String,
        /// The broker client's error, when there is one.
        #[source]
        cause: Option<crate::field::Cause>,
    },
    /// The broker will never take these records (size, topic); **every
    /// other record of the batch was acknowledged**. Each refused one goes
    /// to the dead-letter topic with the broker's reason.
    #[error("sink {sink} refused {} record(s) for good: {}", .refused.len(), .refused.first().map(|r| r.reason.as_str()).unwrap_or(""))]
    Rejected {
        sink: &'static str,
        refused: Vec<Refusal>,
    },
    /// The configuration cannot work (permissions, a topic that may not
    /// exist): stop the shard with a clear error; readiness goes false.
    #[error("sink {sink} misconfigured: {message}")]
    Misconfigured {
        sink: &'static str,
        message: String,
        /// The broker client's error, when there is one.
        #[source]
        cause: Option<crate::field::Cause>,
    },
}

/// One record the broker refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Its index in the batch.
    pub index: usize,
    /// The broker's reason.
    pub reason: String,
}

impl SinkError {
    pub fn unavailable(sink: &'static str, message: impl Into<String>) -> Self {
        Self::Unavailable {
            sink,
            message: message.into(),
            cause: None,
        }
    }

    /// Unavailable while doing `what`, because of `cause`.
    pub fn unavailable_from(
        sink: &'static str,
        what: impl Into<String>,
        cause: impl Into<crate::field::Cause>,
    ) -> Self {
        Self::Unavailable {
            sink,
            message: what.into(),
            cause: Some(cause.into()),
        }
    }

    /// Misconfigured, as `what` shows, because of `cause`.
    pub fn misconfigured_from(
        sink: &'static str,
        what: impl Into<String>,
        cause: impl Into<crate::field::Cause>,
    ) -> Self {
        Self::Misconfigured {
            sink,
            message: what.into(),
            cause: Some(cause.into()),
        }
    }

    pub fn misconfigured(sink: &'static str, message: impl Into<String>) -> Self {
        Self::Misconfigured {
            sink,
            message: message.into(),
            cause: None,
        }
    }

    /// `unavailable`, `rejected` or `misconfigured` (metrics, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Unavailable { .. } => "unavailable",
            SinkError::Rejected { .. } => "rejected",
            SinkError::Misconfigured { .. } => "misconfigured",
        }
    }

    /// Sorts the outcome of a batch: `Ok` when nothing failed; any record
    /// not acknowledged for a transient reason makes the whole batch
    /// unavailable (it is published again, refusals included); otherwise
    /// the refusals.
    pub fn from_outcomes(
        sink: &'static str,
        total: usize,
        transient: Vec<String>,
        refused: Vec<Refusal>,
    ) -> Result<(), SinkError> {
        if let Some(first) = transient.first() {
            return Err(SinkError::unavailable(
                sink,
                format!(
                    "{} of {total} records not acknowledged: {first}",
                    transient.len()
                ),
            ));
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Rejected { sink, refused })
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
    /// `cas-bridge verify`: checks, without publishing or changing
    /// anything, that `topics` can be published to as `run` would (they
    /// exist, or `prepare` would create them); says what it found.
    async fn verify(&self, _topics: &[String]) -> Result<String, SinkError> {
        Ok(format!("{}: nothing to check", self.name()))
    }
    /// Publishes every record and waits until each is acknowledged.
    async fn publish(&self, records: &[Record]) -> Result<(), SinkError>;
    /// Flushes anything buffered (shutdown).
    async fn flush(&self) -> Result<(), SinkError>;
    /// Whether the connection to the broker is up (readiness).
    fn connected(&self) -> bool {
        true
    }
    /// The window start of the last record on `topic`, when the sink can
    /// tell: where a shard whose cursor was lost with everything else in
    /// Redis continues (every window before that one was checkpointed).
    async fn last_window_start(&self, _topic: &str) -> Result<Option<String>, SinkError> {
        Ok(None)
    }
    /// Every record payload on `topic`, from its start to where it ended
    /// when the read began; refused with more than `max` records.
    async fn read_back(&self, _topic: &str, _max: usize) -> Result<Vec<bytes::Bytes>, SinkError> {
        Err(SinkError::misconfigured(
            self.name(),
            "this sink cannot be read back",
        ))
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
    /// Checks the template (`{tenant}`, `{service}`, `{event}` are the
    /// only placeholders) and the dead-letter name (`{tenant}` only): both
    /// must give names valid for Kafka topics and NATS subjects.
    pub fn new(template: &str, dead_letter: &str) -> Result<Self, ConfigError> {
        let probe = template
            .replace("{tenant}", "t")
            .replace("{service}", "s")
            .replace("{event}", "e");
        if probe.contains('{') || probe.contains('}') {
            return Err(ConfigError::new(
                "sink.topic_template",
                format!("`{template}`: only {{tenant}}, {{service}} and {{event}} may be used"),
            ));
        }
        if !valid_name(&probe) {
            return Err(ConfigError::new(
                "sink.topic_template",
                format!("`{template}` does not give a valid topic (A-Z a-z 0-9 . _ -, no empty segment)"),
            ));
        }
        let dl_probe = dead_letter.replace("{tenant}", "t");
        if dl_probe.contains('{') || dl_probe.contains('}') {
            return Err(ConfigError::new(
                "sink.dead_letter",
                format!("`{dead_letter}`: only {{tenant}} may be used"),
            ));
        }
        if !valid_name(&dl_probe) {
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
            .replace("{tenant}", &shard.tenant)
            .replace("{service}", &shard.service)
            .replace("{event}", &shard.event)
    }

    /// The dead-letter topic of the default tenant.
    pub fn dead_letter(&self) -> String {
        self.dead_letter_of(crate::shard::DEFAULT_TENANT)
    }

    /// The dead-letter topic of `tenant`.
    pub fn dead_letter_of(&self, tenant: &str) -> String {
        self.dead_letter.replace("{tenant}", tenant)
    }

    /// Every topic the shards need, their tenants' dead letters included.
    pub fn all(&self, shards: &[Shard]) -> Vec<String> {
        let mut v: Vec<String> = shards.iter().map(|s| self.topic(s)).collect();
        v.extend(shards.iter().map(|s| self.dead_letter_of(&s.tenant)));
        if shards.is_empty() {
            v.push(self.dead_letter());
        }
        v.sort();
        v.dedup();
        v
    }

    /// NATS subjects covering the template: a token with a placeholder becomes `*`.
    pub fn subject_filters(&self) -> Vec<String> {
        let wild = |template: &str| {
            template
                .split('.')
                .map(|t| if t.contains('{') { "*" } else { t })
                .collect::<Vec<_>>()
                .join(".")
        };
        let mut v = vec![wild(&self.template), wild(&self.dead_letter)];
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
        .map_err(|e| SinkError::misconfigured_from("config", "sink.topic_template", e))?;
    Ok(match cfg.kind {
        SinkKind::Kafka => std::sync::Arc::new(KafkaSink::new(&cfg.kafka)?),
        SinkKind::Nats => {
            std::sync::Arc::new(NatsSink::connect(&cfg.nats, topics, dup_window).await?)
        }
        SinkKind::Jsonl => std::sync::Arc::new(JsonlSink::open(&cfg.jsonl.path).await?),
    })
}

/// A question the status board can ask without knowing the sink: is its
/// connection up?
pub fn probe(sink: &std::sync::Arc<dyn Sink>) -> crate::status::SinkProbe {
    let sink = std::sync::Arc::clone(sink);
    std::sync::Arc::new(move || sink.connected())
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
        assert!(Topics::new("cas.{pair}", "d").is_err());
        assert!(Topics::new("cas.x", "d.{service}").is_err());
        let t = Topics::new("cas.{tenant}.{service}.{event}", "cas.{tenant}.dl").unwrap();
        let acme = Shard::of("acme", "box", "dlp");
        assert_eq!(t.topic(&acme), "cas.acme.box.dlp");
        assert_eq!(t.dead_letter_of("acme"), "cas.acme.dl");
        assert_eq!(
            t.all(&[acme, Shard::of("beta", "box", "dlp")]),
            vec![
                "cas.acme.box.dlp",
                "cas.acme.dl",
                "cas.beta.box.dlp",
                "cas.beta.dl"
            ]
        );
        assert_eq!(t.subject_filters(), vec!["cas.*.*.*", "cas.*.dl"]);
        assert!(Topics::new("cas..{event}", "d").is_err());
        assert!(Topics::new("cas.{service}.{event}", "dead letter").is_err());
        assert!(Topics::new("cas.all", "cas.all").is_err());
    }

    #[test]
    fn outcomes_sort_into_kinds() {
        assert!(SinkError::from_outcomes("t", 3, vec![], vec![]).is_ok());
        let refused = vec![Refusal {
            index: 1,
            reason: "too big".into(),
        }];
        let e = SinkError::from_outcomes("t", 3, vec![], refused.clone()).unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(e
            .to_string()
            .contains("refused 1 record(s) for good: too big"));
        // Any transient failure makes the whole batch unavailable.
        let e = SinkError::from_outcomes("t", 3, vec!["timed out".into()], refused).unwrap_err();
        assert_eq!(e.kind(), "unavailable");
        assert!(e
            .to_string()
            .contains("1 of 3 records not acknowledged: timed out"));
        assert_eq!(SinkError::misconfigured("t", "x").kind(), "misconfigured");
    }

    #[test]
    fn sizes_count_payload_key_and_headers() {
        let s = Shard::new("exchange", "dlp");
        let w = crate::window::Window {
            start: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            end: chrono::DateTime::from_timestamp(60, 0).unwrap(),
        };
        let page = std::sync::Arc::new(PageMeta::new(&s, &w));
        let data = serde_json::value::RawValue::from_string("{}".into()).unwrap();
        let r = Record::event("cas.exchange.dlp".into(), "id1".into(), &page, data.get());
        let headers: usize = r.headers().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(kafka::record_size(&r), r.payload.len() + 3 + headers);
        // NATS: the payload, `k: v\r\n` per header (Nats-Msg-Id too), and
        // the `NATS/1.0\r\n` … `\r\n` frame.
        let nats_headers = headers + r.headers().count() * 4 + "Nats-Msg-Id".len() + 3 + 4;
        assert_eq!(nats::message_size(&r), r.payload.len() + nats_headers + 12);
    }
}
