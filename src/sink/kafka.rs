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

use super::{Record, Sink, SinkError};
use crate::config::KafkaConfig;

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
}

impl KafkaSink {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, SinkError> {
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
        let producer: FutureProducer = producer_cfg
            .create()
            .map_err(|e| SinkError::new("kafka", format!("cannot create the producer: {e}")))?;
        Ok(Self {
            producer,
            client,
            create_topics: cfg.create_topics,
            partitions: cfg.partitions,
            replication: cfg.replication,
        })
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn prepare(&self, topics: &[String]) -> Result<(), SinkError> {
        if !self.create_topics {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self
            .client
            .create()
            .map_err(|e| SinkError::new("kafka", format!("cannot create the admin client: {e}")))?;
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
            .map_err(|e| SinkError::new("kafka", format!("create topics: {e}")))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(SinkError::new(
                        "kafka",
                        format!("create topic {topic}: {code}"),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        let sends = records.iter().map(|r| {
            let mut headers = OwnedHeaders::new_with_capacity(6);
            for (k, v) in r.headers() {
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
        let mut first_error = None;
        let mut failed = 0usize;
        for res in join_all(sends).await {
            if let Err((e, _msg)) = res {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(SinkError::new(
                "kafka",
                format!(
                    "{failed} of {} records not acknowledged: {e}",
                    records.len()
                ),
            )),
        }
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || p.flush(Timeout::After(Duration::from_secs(10))))
            .await
            .map_err(|e| SinkError::new("kafka", e.to_string()))?
            .map_err(|e| SinkError::new("kafka", format!("flush: {e}")))
    }
}
