//! Reading a topic back, from its start to its end (`cas-bridge redrive`
//! reads the dead letters this way; a restart without Redis reads the last
//! records of a topic).

use std::time::Duration;

use bytes::Bytes;

use super::SinkError;
use rdkafka::error::KafkaError;

/// How long a read waits for the broker before it gives up.
const READ_WAIT: Duration = Duration::from_secs(10);

fn too_many(sink: &'static str, topic: &str, max: usize) -> SinkError {
    SinkError::misconfigured(
        sink,
        format!("{topic} holds more than {max} records: raise --max or redrive part of them"),
    )
}

/// The reader's client context: the end of a partition is how a read
/// ends, not an error, so librdkafka's "Global error: PartitionEOF" is not
/// logged; other client errors are warnings of the command that reads.
pub(super) struct Reader;

impl rdkafka::client::ClientContext for Reader {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            _ => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !is_end_of_partition(&error) {
            tracing::warn!(target: "librdkafka", "librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Reader {}

/// Whether a client error only says a partition was read to its end.
pub(super) fn is_end_of_partition(e: &KafkaError) -> bool {
    matches!(e, KafkaError::PartitionEOF(_))
        || e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
}

/// A consumer for reading partitions to their end: it reports reaching
/// the end of a partition (`enable.partition.eof`) and commits nothing.
pub(super) fn kafka_reader(
    client: &rdkafka::ClientConfig,
    group: &str,
) -> Result<rdkafka::consumer::BaseConsumer<Reader>, rdkafka::error::KafkaError> {
    let mut cfg = client.clone();
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("log_level", "3");
    cfg.create_with_context(Reader)
}

/// Reads partition `partition` of `topic` from `from` to its end and hands
/// each message to `each`.
///
/// The end is where the broker's fetch answer says the partition ends (its
/// high watermark), not a `ListOffsets` answer read beforehand: a
/// Kafka-compatible broker may answer that one wrongly (tansu 0.6's
/// object-store engine answers "latest" with the first offset of the last
/// batch written, plus one, so the rest of that batch looked absent).
pub(super) fn kafka_partition(
    consumer: &rdkafka::consumer::BaseConsumer<Reader>,
    topic: &str,
    partition: i32,
    from: rdkafka::Offset,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), SinkError>,
) -> Result<(), SinkError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Message;
    use rdkafka::TopicPartitionList;
    let fail = |e: KafkaError| {
        SinkError::unavailable_from("kafka", format!("reading {topic}/{partition}"), e)
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, from)
        .map_err(fail)?;
    consumer.assign(&tpl).map_err(fail)?;
    let mut idle = std::time::Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            None if idle.elapsed() > READ_WAIT => {
                return Err(SinkError::unavailable(
                    "kafka",
                    format!(
                        "reading {topic}/{partition}: no message and no end of the partition in {} s",
                        READ_WAIT.as_secs()
                    ),
                ));
            }
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok(()),
            // The end or a message of a partition read before this one.
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Ok(m)) if m.topic() != topic || m.partition() != partition => {}
            Some(Err(e)) => return Err(fail(e)),
            Some(Ok(m)) => {
                idle = std::time::Instant::now();
                each(&m)?;
            }
        }
    }
}

/// Every record payload of a Kafka topic, partition by partition, from the
/// start to the end each partition has when the read reaches it.
pub fn kafka(
    client: &rdkafka::ClientConfig,
    topic: &str,
    max: usize,
) -> Result<Vec<Bytes>, SinkError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Message;
    let fail = |e: rdkafka::error::KafkaError| {
        SinkError::unavailable_from("kafka", format!("reading {topic}"), e)
    };
    let consumer = kafka_reader(client, "cas-bridge-read").map_err(fail)?;
    let meta = consumer
        .fetch_metadata(Some(topic), READ_WAIT)
        .map_err(fail)?;
    let Some(t) = meta.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for p in t.partitions() {
        kafka_partition(&consumer, topic, p.id(), rdkafka::Offset::Beginning, |m| {
            if out.len() == max {
                return Err(too_many("kafka", topic, max));
            }
            out.push(Bytes::copy_from_slice(m.payload().unwrap_or_default()));
            Ok(())
        })?;
    }
    Ok(out)
}

/// Every message payload on `subject` in the stream, from the first to the
/// last there when the read began.
pub async fn nats(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
    max: usize,
) -> Result<Vec<Bytes>, SinkError> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    let fail = |e: crate::field::Cause| {
        SinkError::unavailable_from("nats", format!("reading {subject} in {stream}"), e)
    };
    let s = js.get_stream(stream).await.map_err(|e| fail(e.into()))?;
    let mut consumer = s
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            filter_subject: subject.to_string(),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| fail(e.into()))?;
    let total = consumer
        .info()
        .await
        .map_err(|e| fail(e.into()))?
        .num_pending as usize;
    if total > max {
        return Err(too_many("nats", subject, max));
    }
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let mut batch = consumer
            .fetch()
            .max_messages((total - out.len()).min(1000))
            .expires(READ_WAIT)
            .messages()
            .await
            .map_err(|e| fail(e.into()))?;
        let before = out.len();
        while let Some(m) = batch.next().await {
            out.push(m.map_err(fail)?.payload.clone());
        }
        if out.len() == before {
            return Err(fail(
                format!("stalled at {before} of {total} messages").into(),
            ));
        }
    }
    Ok(out)
}

/// Every line of a JSON-lines file whose `topic` is `topic`.
pub async fn jsonl(
    path: &std::path::Path,
    topic: &str,
    max: usize,
) -> Result<Vec<Bytes>, SinkError> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        topic: std::borrow::Cow<'a, str>,
    }
    let text = tokio::fs::read(path).await.map_err(|e| {
        SinkError::unavailable("jsonl", format!("cannot read {}: {e}", path.display()))
    })?;
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        match serde_json::from_slice::<Line<'_>>(line) {
            Ok(l) if l.topic == topic => {
                if out.len() == max {
                    return Err(too_many("jsonl", topic, max));
                }
                out.push(Bytes::copy_from_slice(line));
            }
            _ => {}
        }
    }
    Ok(out)
}
