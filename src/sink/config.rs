//! The `sink` section: which broker, its settings, topic names.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Topics;
use crate::field::ConfigError;

/// Which sink events go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Kafka,
    Nats,
    Jsonl,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
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

#[derive(Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]` (required for `kind = kafka`).
    pub brokers: String,
    /// librdkafka properties passed through (SASL, SSL, `message.max.bytes`, …).
    /// Nested keys are joined with dots, so the environment can set them:
    /// `CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL__PASSWORD` is `sasl.password`.
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    #[serde(deserialize_with = "dotted")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties read from files, e.g. `"sasl.password" =
    /// "/var/run/secrets/kafka/password"` (a mounted Secret): the file's
    /// text, without its final line break, is the value. Keys nest like
    /// `properties`.
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    #[serde(deserialize_with = "dotted")]
    pub secret_files: BTreeMap<String, String>,
    /// Create the topics at start through the admin API.
    pub create_topics: bool,
    /// Partitions of topics the bridge creates.
    pub partitions: i32,
    /// Replication factor of topics the bridge creates.
    pub replication: i32,
    /// Topic settings of the topics the bridge creates, e.g.
    /// `"retention.ms" = "604800000"`, `"min.insync.replicas" = "2"`.
    /// Keys nest like `properties`.
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    #[serde(deserialize_with = "dotted")]
    pub topic_config: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            properties: BTreeMap::new(),
            secret_files: BTreeMap::new(),
            create_topics: true,
            partitions: 1,
            replication: 1,
            topic_config: BTreeMap::new(),
        }
    }
}

/// Whether a librdkafka property's value is a secret (never shown).
pub fn kafka_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "jaas", ".pem"]
        .iter()
        .any(|w| k.contains(w))
}

/// The properties with every secret value hidden.
fn shown(props: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    props
        .iter()
        .map(|(k, v)| {
            let v = if kafka_secret(k) {
                "[REDACTED]"
            } else {
                v.as_str()
            };
            (k.as_str(), v)
        })
        .collect()
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("properties", &shown(&self.properties))
            .field("secret_files", &self.secret_files)
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("topic_config", &self.topic_config)
            .finish()
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
            .chain(self.secret_files.keys())
            .find(|k| KAFKA_FIXED.contains(&k.as_str()))
        {
            return Err(ConfigError::new(
                format!("sink.kafka.properties.{k}"),
                "is set by the bridge and cannot be overridden",
            ));
        }
        if let Some(k) = self
            .secret_files
            .keys()
            .find(|k| self.properties.contains_key(*k))
        {
            return Err(ConfigError::new(
                format!("sink.kafka.secret_files.{k}"),
                "is also set in sink.kafka.properties: set it in one place",
            ));
        }
        self.max_message_bytes()?;
        // librdkafka itself judges the names (and the values it can check
        // without a broker); a secret file's value is not read here.
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for k in self.secret_files.keys() {
            c.set(k, "placeholder");
        }
        native_check(&c)
    }

    /// The client settings: `brokers`, `properties` and the values of
    /// `secret_files` (read now). An unreadable file names its field.
    pub fn client_config(&self) -> Result<rdkafka::ClientConfig, ConfigError> {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, path) in &self.secret_files {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    format!("sink.kafka.secret_files.{k}"),
                    format!("cannot read {path}: {e}"),
                )
            })?;
            c.set(
                k,
                text.strip_suffix('\n')
                    .unwrap_or(&text)
                    .trim_end_matches('\r'),
            );
        }
        native_check(&c)?;
        Ok(c)
    }
}

/// Asks librdkafka whether it takes every property of `c`, naming the
/// first it refuses and why, never its value (librdkafka's own message
/// quotes the value; it is cut out).
pub fn native_check(c: &rdkafka::ClientConfig) -> Result<(), ConfigError> {
    match c.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, desc, key, value)) => {
            let mut why = desc;
            if !value.is_empty() {
                why = why.replace(&value, "…");
            }
            if key.contains('_') && !key.contains('.') {
                why.push_str(&format!(
                    " (librdkafka's names use dots: `{}`; in the environment nest them with __, e.g. CAS_BRIDGE__SINK__KAFKA__PROPERTIES__{})",
                    key.replace('_', "."),
                    key.to_ascii_uppercase().replace('_', "__")
                ));
            }
            Err(ConfigError::new(
                format!("sink.kafka.properties.{key}"),
                why,
            ))
        }
        Err(e) => Err(ConfigError::new("sink.kafka.properties", e.to_string())),
    }
}

/// A map whose nested keys are joined with dots, values as text: the
/// environment's `A__B__C=v` arrives as `{a: {b: {c: v}}}` and becomes
/// `a.b.c = "v"`; a TOML file's `"a.b.c" = "v"` and `a.b.c = "v"` too.
fn dotted<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Bool(bool),
        Int(i64),
        Float(f64),
        Map(BTreeMap<String, Value>),
    }
    fn flatten(prefix: &str, m: BTreeMap<String, Value>, out: &mut BTreeMap<String, String>) {
        for (k, v) in m {
            let key = if prefix.is_empty() {
                k
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Text(t) => {
                    out.insert(key, t);
                }
                Value::Bool(b) => {
                    out.insert(key, b.to_string());
                }
                Value::Int(i) => {
                    out.insert(key, i.to_string());
                }
                Value::Float(f) => {
                    out.insert(key, f.to_string());
                }
                Value::Map(inner) => flatten(&key, inner, out),
            }
        }
    }
    let m = BTreeMap::<String, Value>::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten("", m, &mut out);
    Ok(out)
}

/// Where a JetStream stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamStorage {
    File,
    Memory,
}

/// What a full JetStream stream does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamDiscard {
    /// Drops the oldest messages (the stream keeps the newest).
    Old,
    /// Refuses the new message: the bridge keeps it un-checkpointed and
    /// retries, so nothing is lost while the stream is full.
    New,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated (required for `kind = nats`). A
    /// `user:password@` in a URL is used, and never shown.
    pub url: String,
    /// JetStream stream name.
    pub stream: String,
    /// Create the stream when it is absent and keep it covering the
    /// bridge's subjects (true); false: bind to a stream someone else made
    /// and never change it (a clear error when its subjects do not cover
    /// the bridge's).
    pub manage_stream: bool,
    /// Replicas of a stream the bridge creates (a clustered server).
    pub replicas: usize,
    /// `file` or `memory`, for a stream the bridge creates.
    pub storage: StreamStorage,
    /// How long a stream the bridge creates keeps a message; `0s` forever.
    pub max_age: crate::field::Dur,
    /// The most bytes a stream the bridge creates holds; -1 unlimited.
    pub max_bytes: i64,
    /// The stream's duplicate window (`Nats-Msg-Id` dedup); unset: the
    /// overlap a window re-reads plus the lag and a minute (at least).
    pub duplicate_window: Option<crate::field::Dur>,
    /// `old` or `new`: what a full stream drops.
    pub discard: StreamDiscard,
    /// A `.creds` file (JWT and nkey seed).
    pub credentials: Option<PathBuf>,
    /// A user, with `password` or `password_file`.
    pub user: Option<String>,
    /// The user's password (env `CAS_BRIDGE__SINK__NATS__PASSWORD`).
    #[schemars(with = "Option<String>")]
    #[serde(serialize_with = "crate::field::redact_secret")]
    pub password: Option<secrecy::SecretString>,
    /// A file holding the user's password, read at every connection.
    pub password_file: Option<PathBuf>,
    /// A token (env `CAS_BRIDGE__SINK__NATS__TOKEN`).
    #[schemars(with = "Option<String>")]
    #[serde(serialize_with = "crate::field::redact_secret")]
    pub token: Option<secrecy::SecretString>,
    /// A file holding the token, read at every connection.
    pub token_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// The CA that signs the server's certificate (the server must speak
    /// TLS when it is set).
    pub tls_ca_file: Option<PathBuf>,
    /// This client's certificate, for a server that verifies clients.
    pub tls_cert_file: Option<PathBuf>,
    /// This client's key, with `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            stream: "CAS".into(),
            manage_stream: true,
            replicas: 1,
            storage: StreamStorage::File,
            max_age: crate::field::Dur::secs(0),
            max_bytes: -1,
            duplicate_window: None,
            discard: StreamDiscard::Old,
            credentials: None,
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
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
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError::new(
                "sink.nats.replicas",
                "must be 1 to 5 (JetStream's limit)",
            ));
        }
        if self.max_bytes == 0 || self.max_bytes < -1 {
            return Err(ConfigError::new(
                "sink.nats.max_bytes",
                "must be -1 (unlimited) or a number of bytes",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(ConfigError::new(
                "sink.nats.password",
                "set sink.nats.password or sink.nats.password_file, not both",
            ));
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err(ConfigError::new(
                "sink.nats.token",
                "set sink.nats.token or sink.nats.token_file, not both",
            ));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.user.is_none() {
            return Err(ConfigError::new(
                "sink.nats.user",
                "is required with sink.nats.password or sink.nats.password_file",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::new(
                "sink.nats.tls_key_file",
                "sink.nats.tls_cert_file and sink.nats.tls_key_file go together",
            ));
        }
        for (field, f) in [
            ("sink.nats.credentials", &self.credentials),
            ("sink.nats.password_file", &self.password_file),
            ("sink.nats.token_file", &self.token_file),
            ("sink.nats.nkey_seed_file", &self.nkey_seed_file),
            ("sink.nats.tls_ca_file", &self.tls_ca_file),
            ("sink.nats.tls_cert_file", &self.tls_cert_file),
            ("sink.nats.tls_key_file", &self.tls_key_file),
        ] {
            if let Some(p) = f {
                if p.as_os_str().is_empty() {
                    return Err(ConfigError::new(field, "is empty"));
                }
            }
        }
        Ok(())
    }

    /// The secret in `inline` or `file` (read now, without its final line
    /// break); `field` names it in errors.
    pub fn secret(
        field: &str,
        inline: &Option<secrecy::SecretString>,
        file: &Option<PathBuf>,
    ) -> Result<Option<String>, ConfigError> {
        use secrecy::ExposeSecret;
        if let Some(s) = inline {
            return Ok(Some(s.expose_secret().to_string()));
        }
        let Some(p) = file else { return Ok(None) };
        let text = std::fs::read_to_string(p).map_err(|e| {
            ConfigError::new(
                format!("{field}_file"),
                format!("cannot read {}: {e}", p.display()),
            )
        })?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
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
#[path = "config_tests.rs"]
mod tests;
