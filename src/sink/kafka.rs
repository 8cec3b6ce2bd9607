//! Kafka: an idempotent producer with `acks=all`; key = event id.

use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use super::{Binding, KafkaConfig, Record, Refusal, Sink, SinkError};

/// How long librdkafka tries to deliver one message before reporting a
/// failure (the worker then publishes the batch again).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaSink {
    /// The producer; cloned handles share one librdkafka instance.
    producer: FutureProducer,
    /// Client settings, kept for the admin client.
    client: ClientConfig,
    /// Whether to create topics in [`Sink::prepare`].
    create_topics: bool,
    partitions: i32,
    replication: i32,
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

impl KafkaSink {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, SinkError> {
        let max_message = cfg
            .max_message_bytes()
            .map_err(|e| SinkError::misconfigured("kafka", e.to_string()))?;
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &cfg.brokers);
        for (k, v) in &cfg.properties {
            client.set(k, v);
        }
        let mut producer_cfg = client.clone();
        producer_cfg
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("linger.ms", "5");
        let producer: FutureProducer = producer_cfg.create().map_err(|e| {
            SinkError::misconfigured("kafka", format!("cannot create the producer: {e}"))
        })?;
        Ok(Self {
            producer,
            client,
            create_topics: cfg.create_topics,
            partitions: cfg.partitions,
            replication: cfg.replication,
            max_message,
        })
    }
}

/// The latest `cas-window-start` header among the last records of
/// `topic`'s partitions (blocking: run off the runtime).
///
/// Each partition is read from the record before the end `ListOffsets`
/// reports to the end the fetch reports: on Kafka that is the last record;
/// on a broker whose `ListOffsets` answer lags (tansu 0.6 reports the first
/// record of the last batch) it is the rest of that batch.
fn last_window_start(client: &ClientConfig, topic: &str) -> Result<Option<String>, SinkError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::{Headers, Message};
    use rdkafka::Offset;
    let wait = Duration::from_secs(10);
    let fail = |e: rdkafka::error::KafkaError| {
        SinkError::unavailable("kafka", format!("reading the end of {topic}: {e}"))
    };
    let consumer = super::read::kafka_reader(client, "cas-bridge-position").map_err(fail)?;
    let meta = consumer.fetch_metadata(Some(topic), wait).map_err(fail)?;
    let Some(t) = meta.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    let mut latest: Option<String> = None;
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), wait)
            .map_err(fail)?;
        if high <= low {
            continue;
        }
        super::read::kafka_partition(&consumer, topic, p.id(), Offset::Offset(high - 1), |m| {
            let start = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "cas-window-start")
                    .and_then(|h| std::str::from_utf8(h.value?).ok().map(str::to_string))
            });
            if let Some(s) = start {
                if latest.as_ref().is_none_or(|l| s > *l) {
                    latest = Some(s);
                }
            }
            Ok(())
        })?;
    }
    Ok(latest)
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn last_window_start(&self, topic: &str) -> Result<Option<String>, SinkError> {
        let cfg = self.client.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || last_window_start(&cfg, &topic))
            .await
            .map_err(|e| SinkError::unavailable("kafka", e.to_string()))?
    }

    async fn read_back(&self, topic: &str, max: usize) -> Result<Vec<bytes::Bytes>, SinkError> {
        let cfg = self.client.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || super::read::kafka(&cfg, &topic, max))
            .await
            .map_err(|e| SinkError::unavailable("kafka", e.to_string()))?
    }

    async fn prepare(&self, topics: &[String]) -> Result<(), SinkError> {
        if !self.create_topics {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.client.create().map_err(|e| {
            SinkError::misconfigured("kafka", format!("cannot create the admin client: {e}"))
        })?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let opts =
            AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(30))));
        let results = admin
            .create_topics(&new, &opts)
            .await
            .map_err(|e| SinkError::unavailable("kafka", format!("create topics: {e}")))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(SinkError::unavailable(
                        "kafka",
                        format!("create topic {topic}: {code}"),
                    ))
                }
            }
        }
        Ok(())
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
        let sends = sent.iter().map(|&i| {
            let r = &records[i];
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
            let rec = FutureRecord::to(&r.topic)
                .key(r.id.as_bytes())
                .payload(r.payload.as_ref())
                .headers(headers);
            self.producer.send(rec, Timeout::After(DELIVERY_TIMEOUT))
        });
        let mut transient = Vec::new();
        for (res, &index) in join_all(sends).await.into_iter().zip(&sent) {
            if let Err((e, _msg)) = res {
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
            }
        }
        refused.sort_by_key(|r| r.index);
        SinkError::from_outcomes("kafka", records.len(), transient, refused)
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || p.flush(Timeout::After(Duration::from_secs(10))))
            .await
            .map_err(|e| SinkError::unavailable("kafka", e.to_string()))?
            .map_err(|e| SinkError::unavailable("kafka", format!("flush: {e}")))
    }
}
