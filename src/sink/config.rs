//! The `sink` section: which broker, its settings, topic names.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Topics;
use crate::field::ConfigError;

/// Which sink events go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Kafka,
    Nats,
    Jsonl,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `kafka`, `nats` or `jsonl`.
    pub kind: SinkKind,
    /// Topic / subject template; placeholders `{service}` and `{event}`.
    pub topic_template: String,
    /// Dead-letter topic / subject.
    pub dead_letter: String,
    /// CloudEvents 1.0 attributes as headers (binary content mode): `ce_*`
    /// on Kafka, `ce-*` on NATS; the payload unchanged. JSON lines has no
    /// headers.
    pub cloudevents: bool,
    pub kafka: KafkaConfig,
    pub nats: NatsConfig,
    pub jsonl: JsonlConfig,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            kind: SinkKind::Jsonl,
            topic_template: "cas.{service}.{event}".into(),
            dead_letter: "cas.deadletter".into(),
            cloudevents: false,
            kafka: KafkaConfig::default(),
            nats: NatsConfig::default(),
            jsonl: JsonlConfig::default(),
        }
    }
}

/// Producer settings the bridge owns: overriding them would break the
/// delivery guarantee.
const KAFKA_FIXED: [&str; 3] = ["bootstrap.servers", "enable.idempotence", "acks"];

/// librdkafka's default `message.max.bytes`.
pub const KAFKA_DEFAULT_MAX_MESSAGE: usize = 1_000_000;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]` (required for `kind = kafka`).
    pub brokers: String,
    /// librdkafka properties passed through (SASL, SSL, `message.max.bytes`, …).
    pub properties: BTreeMap<String, String>,
    /// Create the topics at start through the admin API.
    pub create_topics: bool,
    /// Partitions of topics the bridge creates.
    pub partitions: i32,
    /// Replication factor of topics the bridge creates.
    pub replication: i32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            properties: BTreeMap::new(),
            create_topics: true,
            partitions: 1,
            replication: 1,
        }
    }
}

impl KafkaConfig {
    /// The largest record the producer accepts (`message.max.bytes`).
    pub fn max_message_bytes(&self) -> Result<usize, ConfigError> {
        match self.properties.get("message.max.bytes") {
            None => Ok(KAFKA_DEFAULT_MAX_MESSAGE),
            Some(v) => v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "sink.kafka.properties.message.max.bytes",
                    format!("`{v}` is not a number of bytes"),
                )
            }),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "sink.kafka.brokers",
                "is required when sink.kind = kafka (e.g. kafka-0:9092,kafka-1:9092)",
            ));
        }
        if self.partitions < 1 {
            return Err(ConfigError::new(
                "sink.kafka.partitions",
                "must be at least 1",
            ));
        }
        if self.replication < 1 {
            return Err(ConfigError::new(
                "sink.kafka.replication",
                "must be at least 1",
            ));
        }
        if let Some(k) = self
            .properties
            .keys()
            .find(|k| KAFKA_FIXED.contains(&k.as_str()))
        {
            return Err(ConfigError::new(
                format!("sink.kafka.properties.{k}"),
                "is set by the bridge and cannot be overridden",
            ));
        }
        self.max_message_bytes().map(|_| ())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated (required for `kind = nats`).
    pub url: String,
    /// JetStream stream name (created if absent).
    pub stream: String,
    /// A `.creds` file.
    pub credentials: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            stream: "CAS".into(),
            credentials: None,
        }
    }
}

impl NatsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.url.trim().is_empty() {
            return Err(ConfigError::new(
                "sink.nats.url",
                "is required when sink.kind = nats (e.g. nats://nats:4222)",
            ));
        }
        let s = &self.stream;
        if s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::new(
                "sink.nats.stream",
                format!("`{s}` must be non-empty and use only A-Z a-z 0-9 - _"),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonlConfig {
    /// File to append to; `-` is stdout.
    pub path: String,
}

impl Default for JsonlConfig {
    fn default() -> Self {
        Self { path: "-".into() }
    }
}

impl SinkConfig {
    /// Checks the templates and the settings of the chosen kind (the other
    /// kinds' settings are not used and not checked).
    pub fn validate(&self) -> Result<(), ConfigError> {
        Topics::new(&self.topic_template, &self.dead_letter)?;
        match self.kind {
            SinkKind::Kafka => self.kafka.validate(),
            SinkKind::Nats => self.nats.validate(),
            SinkKind::Jsonl if self.jsonl.path.trim().is_empty() => Err(ConfigError::new(
                "sink.jsonl.path",
                "is empty (use - for stdout)",
            )),
            SinkKind::Jsonl => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(kind: SinkKind) -> SinkConfig {
        SinkConfig {
            kind,
            ..SinkConfig::default()
        }
    }

    #[test]
    fn kafka_and_nats_need_their_address() {
        assert_eq!(
            with(SinkKind::Kafka).validate().unwrap_err().field,
            "sink.kafka.brokers"
        );
        assert_eq!(
            with(SinkKind::Nats).validate().unwrap_err().field,
            "sink.nats.url"
        );
        assert!(with(SinkKind::Jsonl).validate().is_ok());
        let mut k = with(SinkKind::Kafka);
        k.kafka.brokers = "k:9092".into();
        assert!(k.validate().is_ok());
    }

    #[test]
    fn kafka_fixed_properties_and_sizes() {
        let mut k = with(SinkKind::Kafka);
        k.kafka.brokers = "k:9092".into();
        k.kafka.properties.insert("acks".into(), "1".into());
        assert_eq!(
            k.validate().unwrap_err().field,
            "sink.kafka.properties.acks"
        );
        k.kafka.properties.clear();
        assert_eq!(k.kafka.max_message_bytes().unwrap(), 1_000_000);
        k.kafka
            .properties
            .insert("message.max.bytes".into(), "lots".into());
        assert_eq!(
            k.validate().unwrap_err().field,
            "sink.kafka.properties.message.max.bytes"
        );
        k.kafka
            .properties
            .insert("message.max.bytes".into(), "65536".into());
        assert_eq!(k.kafka.max_message_bytes().unwrap(), 65_536);
    }

    #[test]
    fn nats_stream_name() {
        let mut n = with(SinkKind::Nats);
        n.nats.url = "nats://n:4222".into();
        n.nats.stream = "CAS EVENTS".into();
        assert_eq!(n.validate().unwrap_err().field, "sink.nats.stream");
    }
}
