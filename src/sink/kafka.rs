//! Kafka: an idempotent producer with `acks=all`; key = event id.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use super::{Binding, KafkaConfig, Record, Refusal, Sink, SinkError};

#[path = "kafka_topics.rs"]
mod topics;
use topics::{last_window_start, topics_present, topics_verified};

/// How long librdkafka tries to deliver one message before reporting a
/// failure (the worker then publishes the batch again).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What one `publish` call waits for: how many of its records librdkafka
/// has not reported on yet, and those it reported as not delivered. One per
/// call, shared by its records' delivery reports (one reference count each,
/// instead of a future and a channel per record).
struct Pending {
    left: AtomicUsize,
    failed: Mutex<Vec<Failed>>,
    done: tokio::sync::Notify,
}

/// A record librdkafka reported as not delivered.
struct Failed {
    topic: String,
    key: Vec<u8>,
    error: KafkaError,
}

impl Pending {
    fn new(records: usize) -> Self {
        Self {
            left: AtomicUsize::new(records),
            failed: Mutex::default(),
            done: tokio::sync::Notify::new(),
        }
    }

    /// One record reported on (delivered, failed, or never queued).
    fn settle(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// Routes librdkafka's delivery reports to the `publish` call that sent
/// the record; keeps the brokers' state from librdkafka's statistics and
/// rate-limits its log lines.
struct Deliveries {
    health: Arc<Health>,
}

/// What librdkafka says of the brokers, and its log lines, bounded.
#[derive(Default)]
pub struct Health {
    /// A broker connection is up (statistics, or a delivery since).
    up: std::sync::atomic::AtomicBool,
    /// librdkafka's log lines let through, by minute.
    logs: Mutex<LogWindow>,
}

/// The log lines of the current minute: at most [`LOG_LINES`] are written;
/// the same line again within the minute is not written; what was left out
/// is counted and said once the minute is over.
#[derive(Default)]
struct LogWindow {
    started: Option<std::time::Instant>,
    written: u32,
    left_out: u32,
    seen: std::collections::HashSet<String>,
}

/// The most librdkafka lines written a minute (a broker that is down makes
/// hundreds).
pub const LOG_LINES: u32 = 6;

impl Health {
    /// Whether to write `line` now (and a line saying how many were left
    /// out of the last minute, when the minute turned).
    fn admit(&self, line: &str) -> (bool, Option<u32>) {
        let mut w = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let mut summary = None;
        if w.started
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60))
        {
            if w.left_out > 0 {
                summary = Some(w.left_out);
            }
            *w = LogWindow {
                started: Some(now),
                ..Default::default()
            };
        }
        // Numbers (ports, counts, milliseconds) do not make a line new.
        let shape: String = line.chars().filter(|c| !c.is_ascii_digit()).collect();
        if w.written >= LOG_LINES || !w.seen.insert(shape) {
            w.left_out += 1;
            return (false, summary);
        }
        w.written += 1;
        (true, summary)
    }

    fn line(&self, level: rdkafka::config::RDKafkaLogLevel, text: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        let (write, summary) = self.admit(text);
        if let Some(n) = summary {
            tracing::warn!(target: "librdkafka", left_out = n, "librdkafka: {n} more line(s) in the last minute were left out (at most {LOG_LINES} a minute, each once)");
        }
        if !write {
            return;
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {text}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {text}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", "librdkafka: {text}"),
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {text}"),
        }
    }
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.health.line(level, &format!("{fac} {message}"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.health.line(
            rdkafka::config::RDKafkaLogLevel::Error,
            &format!("{error}: {reason}"),
        );
    }

    fn stats(&self, s: rdkafka::Statistics) {
        let up = s.brokers.values().any(|b| b.state == "UP");
        self.health.up.store(up, Ordering::Relaxed);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Arc<Pending>) {
        if result.is_ok() {
            self.health.up.store(true, Ordering::Relaxed);
        }
        if let Err((error, m)) = result {
            let failed = Failed {
                topic: m.topic().to_string(),
                key: m.key().unwrap_or_default().to_vec(),
                error: error.clone(),
            };
            pending
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(failed);
        }
        pending.settle();
    }
}

pub struct KafkaSink {
    /// The producer; its own thread serves the delivery reports.
    producer: std::sync::RwLock<ThreadedProducer<Deliveries>>,
    /// The secret files as the producer in use read them.
    secrets: Mutex<SecretWatch>,
    /// The section: a producer is made again from it when a secret file
    /// changes.
    cfg: KafkaConfig,
    /// The brokers' state, as librdkafka reports it.
    health: Arc<Health>,
    /// Client settings, kept for the admin client.
    client: ClientConfig,
    /// Whether to create topics in [`Sink::prepare`].
    create_topics: bool,
    partitions: i32,
    replication: i32,
    /// Topic settings of the topics the bridge creates (`retention.ms`, …).
    topic_config: std::collections::BTreeMap<String, String>,
    /// The producer's `message.max.bytes`: larger records are refused
    /// before sending.
    max_message: usize,
}

/// What a delivery error means for the record.
enum Outcome {
    Transient,
    Refused,
    Misconfigured,
}

fn classify(code: Option<RDKafkaErrorCode>) -> Outcome {
    use RDKafkaErrorCode as C;
    match code {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidTopic
            | C::InvalidRequiredAcks,
        ) => Outcome::Refused,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed,
        ) => Outcome::Misconfigured,
        _ => Outcome::Transient,
    }
}

/// The bytes a record takes against `message.max.bytes`.
pub fn record_size(r: &Record) -> usize {
    let ce: usize = r
        .cloudevent(Binding::Kafka)
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    let headers: usize = r.headers().map(|(k, v)| k.len() + v.len()).sum::<usize>() + ce;
    r.payload.len() + r.id.len() + headers
}

/// What a secret file was when it was last read: length, modification
/// time and inode (a Kubernetes Secret is swapped by a symlink).
type FileStamp = Option<(u64, Option<std::time::SystemTime>, u64)>;

fn file_stamp(path: &str) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some((m.len(), m.modified().ok(), inode))
}

/// How often the secret files are looked at (a stat each).
const SECRET_LOOK: Duration = Duration::from_secs(5);

/// The secret files as the producer in use read them.
struct SecretWatch {
    stamps: Vec<FileStamp>,
    looked: std::time::Instant,
    /// How often to look ([`SECRET_LOOK`]; tests look every time).
    every: Duration,
    /// Producers made again so far.
    remade: u32,
}

/// A producer with the bridge's fixed settings, and the client settings it
/// was made from (secret files read now).
fn producer(
    cfg: &KafkaConfig,
    health: &Arc<Health>,
) -> Result<(ThreadedProducer<Deliveries>, ClientConfig), SinkError> {
    // The properties, checked by librdkafka; secret files read now.
    let client = cfg
        .client_config()
        .map_err(|e| SinkError::misconfigured("kafka", e.to_string()))?;
    let mut producer_cfg = client.clone();
    producer_cfg
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        .set("linger.ms", "5")
        // The brokers' state every 5 s: readiness follows it.
        .set("statistics.interval.ms", "5000");
    let context = Deliveries {
        health: health.clone(),
    };
    let producer = producer_cfg
        .create_with_context(context)
        .map_err(|e| SinkError::misconfigured_from("kafka", "cannot create the producer", e))?;
    Ok((producer, client))
}

impl KafkaSink {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, SinkError> {
        let max_message = cfg
            .max_message_bytes()
            .map_err(|e| SinkError::misconfigured_from("kafka", "sink.kafka.properties", e))?;
        let health = Arc::new(Health::default());
        let stamps = cfg.secret_files.values().map(|p| file_stamp(p)).collect();
        let (producer, client) = producer(cfg, &health)?;
        Ok(Self {
            producer: std::sync::RwLock::new(producer),
            secrets: Mutex::new(SecretWatch {
                stamps,
                looked: std::time::Instant::now(),
                every: SECRET_LOOK,
                remade: 0,
            }),
            cfg: cfg.clone(),
            health,
            client,
            create_topics: cfg.create_topics,
            partitions: cfg.partitions,
            replication: cfg.replication,
            topic_config: cfg.topic_config.clone(),
            max_message,
        })
    }

    /// The producer to send with: made again, once, when a secret file
    /// changed since it was made (a rotated Secret is used from the next
    /// publish; records in flight finish on the old one).
    fn current(&self) -> ThreadedProducer<Deliveries> {
        if !self.cfg.secret_files.is_empty() {
            let mut w = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
            if w.looked.elapsed() >= w.every {
                w.looked = std::time::Instant::now();
                let now: Vec<FileStamp> = self
                    .cfg
                    .secret_files
                    .values()
                    .map(|p| file_stamp(p))
                    .collect();
                if now != w.stamps {
                    match producer(&self.cfg, &self.health) {
                        Ok((p, _)) => {
                            w.stamps = now;
                            w.remade += 1;
                            *self.producer.write().unwrap_or_else(|e| e.into_inner()) = p;
                            tracing::warn!("a secret file of sink.kafka.secret_files changed: the producer was made again with it");
                        }
                        Err(e) => {
                            tracing::error!(error = %crate::field::chain(&e), "a secret file of sink.kafka.secret_files changed, and the producer cannot be made with it; the one in use stays");
                        }
                    }
                }
            }
        }
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn connected(&self) -> bool {
        self.health.up.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn last_window_start(&self, topic: &str) -> Result<Option<String>, SinkError> {
        let cfg = self.client.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || last_window_start(&cfg, &topic))
            .await
            .map_err(|e| SinkError::unavailable_from("kafka", "reading the end of the topic", e))?
    }

    async fn read_back(&self, topic: &str, max: usize) -> Result<Vec<bytes::Bytes>, SinkError> {
        let cfg = self.client.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || super::read::kafka(&cfg, &topic, max))
            .await
            .map_err(|e| SinkError::unavailable_from("kafka", "reading the topic", e))?
    }

    async fn verify(&self, topics: &[String]) -> Result<String, SinkError> {
        let cfg = self.client.clone();
        let topics = topics.to_vec();
        let create = self.create_topics;
        tokio::task::spawn_blocking(move || topics_verified(&cfg, &topics, create))
            .await
            .map_err(|e| SinkError::unavailable_from("kafka", "reading the topics' metadata", e))?
    }

    async fn prepare(&self, topics: &[String]) -> Result<(), SinkError> {
        if self.create_topics {
            let admin: AdminClient<Deliveries> = self
                .client
                .create_with_context(Deliveries {
                    health: self.health.clone(),
                })
                .map_err(|e| {
                    SinkError::misconfigured_from("kafka", "cannot create the admin client", e)
                })?;
            let new: Vec<NewTopic<'_>> = topics
                .iter()
                .map(|t| {
                    let mut n = NewTopic::new(
                        t,
                        self.partitions,
                        TopicReplication::Fixed(self.replication),
                    );
                    for (k, v) in &self.topic_config {
                        n = n.set(k, v);
                    }
                    n
                })
                .collect();
            let opts = AdminOptions::new()
                .operation_timeout(Some(Timeout::After(Duration::from_secs(30))));
            let results = admin
                .create_topics(&new, &opts)
                .await
                .map_err(|e| SinkError::unavailable_from("kafka", "create topics", e))?;
            for r in results {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code @ RDKafkaErrorCode::TopicAuthorizationFailed))
                    | Err((topic, code @ RDKafkaErrorCode::ClusterAuthorizationFailed)) => {
                        return Err(SinkError::misconfigured(
                            "kafka",
                            format!("create topic {topic}: {code}: the bridge's principal needs Create on the topic (or the cluster), or create the topics beforehand and set sink.kafka.create_topics = false"),
                        ))
                    }
                    Err((topic, code)) => {
                        return Err(SinkError::unavailable(
                            "kafka",
                            format!("create topic {topic}: {code}"),
                        ))
                    }
                }
            }
        }
        // Every topic must be there now (created, or made by the platform
        // team): the metadata says so, and is the broker's first answer.
        let client = self.client.clone();
        let wanted = topics.to_vec();
        let create = self.create_topics;
        tokio::task::spawn_blocking(move || topics_present(&client, &wanted, create))
            .await
            .map_err(|e| SinkError::unavailable_from("kafka", "reading the topics' metadata", e))?
    }

    async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        let mut refused = Vec::new();
        let mut sent = Vec::with_capacity(records.len());
        for (index, r) in records.iter().enumerate() {
            let size = record_size(r);
            if size > self.max_message {
                refused.push(Refusal {
                    index,
                    reason: format!(
                        "record of {size} bytes exceeds message.max.bytes of {} bytes",
                        self.max_message
                    ),
                });
            } else {
                sent.push(index);
            }
        }
        let pending = Arc::new(Pending::new(sent.len()));
        let mut transient = Vec::new();
        // `None`: a report for a record this call cannot place (counted as
        // not acknowledged, so the call is retried).
        let mut outcome = |index: Option<usize>, e: &KafkaError| -> Result<(), SinkError> {
            let Some(index) = index else {
                transient.push(e.to_string());
                return Ok(());
            };
            match classify(e.rdkafka_error_code()) {
                Outcome::Transient => transient.push(e.to_string()),
                Outcome::Refused => refused.push(Refusal {
                    index,
                    reason: e.to_string(),
                }),
                Outcome::Misconfigured => {
                    return Err(SinkError::misconfigured(
                        "kafka",
                        format!("publish to {}: {e}", records[index].topic),
                    ))
                }
            }
            Ok(())
        };
        // Records librdkafka would not even queue: settled now, judged with
        // the reports once every queued record has one.
        let mut not_queued = Vec::new();
        let producer = self.current();
        for &index in &sent {
            let r = &records[index];
            let mut headers = OwnedHeaders::new_with_capacity(6);
            for (k, v) in r.headers() {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            for (k, v) in r.cloudevent(Binding::Kafka) {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut rec = BaseRecord::with_opaque_to(&r.topic, pending.clone())
                .key(r.id.as_bytes())
                .payload(r.payload.as_ref())
                .headers(headers);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    // librdkafka's queue is full: its thread drains it.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        not_queued.push((index, e));
                        pending.settle();
                        break;
                    }
                }
            }
        }
        if pending.left.load(Ordering::Acquire) > 0 {
            // Every queued record gets a report within `message.timeout.ms`.
            pending.done.notified().await;
        }
        for (index, e) in &not_queued {
            outcome(Some(*index), e)?;
        }
        let failed = std::mem::take(&mut *pending.failed.lock().unwrap_or_else(|e| e.into_inner()));
        if !failed.is_empty() {
            // Reports name topic and key; a call may hold a key twice (a
            // dead letter beside an event), so each index is taken once.
            let mut taken = vec![false; records.len()];
            for f in &failed {
                let index = sent.iter().copied().find(|&i| {
                    !taken[i]
                        && *records[i].topic == f.topic
                        && records[i].id.as_bytes() == f.key.as_slice()
                });
                if let Some(i) = index {
                    taken[i] = true;
                }
                outcome(index, &f.error)?;
            }
        }
        refused.sort_by_key(|r| r.index);
        SinkError::from_outcomes("kafka", records.len(), transient, refused)
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let p = self.current();
        tokio::task::spawn_blocking(move || p.flush(Timeout::After(Duration::from_secs(10))))
            .await
            .map_err(|e| SinkError::unavailable_from("kafka", "flush", e))?
            .map_err(|e| SinkError::unavailable_from("kafka", "flush", e))
    }
}

#[cfg(test)]
#[path = "kafka_tests.rs"]
mod tests;
