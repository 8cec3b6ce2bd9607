//! Reading a topic back, from its start to where it ended when the read
//! began (`cas-bridge redrive` reads the dead letters this way).

use std::time::Duration;

use bytes::Bytes;

use super::SinkError;

/// How long a read waits for the broker before it gives up.
const READ_WAIT: Duration = Duration::from_secs(10);

fn too_many(sink: &'static str, topic: &str, max: usize) -> SinkError {
    SinkError::misconfigured(
        sink,
        format!("{topic} holds more than {max} records: raise --max or redrive part of them"),
    )
}

/// Every record payload of a Kafka topic, partition by partition, from the
/// low to the high watermark seen when the read began.
pub fn kafka(
    client: &rdkafka::ClientConfig,
    topic: &str,
    max: usize,
) -> Result<Vec<Bytes>, SinkError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let fail = |e: rdkafka::error::KafkaError| {
        SinkError::unavailable("kafka", format!("reading {topic}: {e}"))
    };
    let mut cfg = client.clone();
    cfg.set("group.id", "cas-bridge-read")
        .set("enable.auto.commit", "false")
        .set("log_level", "3");
    let consumer: BaseConsumer = cfg.create().map_err(fail)?;
    let meta = consumer
        .fetch_metadata(Some(topic), READ_WAIT)
        .map_err(fail)?;
    let Some(t) = meta.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), READ_WAIT)
            .map_err(fail)?;
        if high <= low {
            continue;
        }
        if out.len() as i64 + (high - low) > max as i64 {
            return Err(too_many("kafka", topic, max));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
            .map_err(fail)?;
        consumer.assign(&tpl).map_err(fail)?;
        let mut next = low;
        let mut idle = std::time::Instant::now();
        while next < high {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                if idle.elapsed() > READ_WAIT {
                    return Err(SinkError::unavailable(
                        "kafka",
                        format!(
                            "reading {topic}/{}: stalled at offset {next} of {high}",
                            p.id()
                        ),
                    ));
                }
                continue;
            };
            let m = m.map_err(fail)?;
            idle = std::time::Instant::now();
            next = m.offset() + 1;
            out.push(Bytes::copy_from_slice(m.payload().unwrap_or_default()));
        }
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
    let fail = |e: &dyn std::fmt::Display| {
        SinkError::unavailable("nats", format!("reading {subject} in {stream}: {e}"))
    };
    let s = js.get_stream(stream).await.map_err(|e| fail(&e))?;
    let mut consumer = s
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            filter_subject: subject.to_string(),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    let total = consumer.info().await.map_err(|e| fail(&e))?.num_pending as usize;
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
            .map_err(|e| fail(&e))?;
        let before = out.len();
        while let Some(m) = batch.next().await {
            out.push(m.map_err(|e| fail(&e))?.payload.clone());
        }
        if out.len() == before {
            return Err(fail(&format!("stalled at {before} of {total} messages")));
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
