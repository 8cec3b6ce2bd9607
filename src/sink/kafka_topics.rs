//! What the broker says of topics, read with a plain consumer's metadata
//! calls (blocking: the sink runs them off the runtime): whether the
//! topics exist (at start, and for `verify`), and where a topic ends.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::sink::SinkError;

/// `verify`: what the broker says of each topic of `wanted` (blocking).
/// A topic the principal may not describe fails; a missing one fails
/// unless the bridge would create it.
pub(super) fn topics_verified(
    client: &ClientConfig,
    wanted: &[String],
    create: bool,
) -> Result<String, SinkError> {
    use rdkafka::consumer::Consumer;
    let fail =
        |e: KafkaError| SinkError::unavailable_from("kafka", "reading the topics' metadata", e);
    let consumer = crate::sink::read::kafka_reader(client, "cas-bridge-verify").map_err(fail)?;
    let meta = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(fail)?;
    let (mut present, mut missing) = (0, Vec::new());
    for topic in wanted {
        match meta.topics().iter().find(|t| t.name() == topic).map(|t| t.error()) {
            Some(None) => present += 1,
            Some(Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)) => {
                return Err(SinkError::misconfigured(
                    "kafka",
                    format!("topic {topic}: not authorized: the bridge's principal needs Describe and Write on it"),
                ))
            }
            _ => missing.push(topic.as_str()),
        }
    }
    if !missing.is_empty() && !create {
        return Err(SinkError::misconfigured(
            "kafka",
            format!(
                "{} of {} topics do not exist and sink.kafka.create_topics is false: {}",
                missing.len(),
                wanted.len(),
                missing.join(", ")
            ),
        ));
    }
    let brokers = meta.brokers().len();
    let mut out = format!(
        "{brokers} broker(s); {present} of {} topics present",
        wanted.len()
    );
    if !missing.is_empty() {
        out.push_str(&format!(
            ", {} to be created at start (sink.kafka.create_topics)",
            missing.len()
        ));
    }
    Ok(out)
}

/// Checks that every topic of `wanted` exists (blocking: run off the
/// runtime). A missing one, when the bridge may not create topics, is a
/// configuration error naming the topic and what it needs.
pub(super) fn topics_present(
    client: &ClientConfig,
    wanted: &[String],
    created: bool,
) -> Result<(), SinkError> {
    use rdkafka::consumer::Consumer;
    let fail =
        |e: KafkaError| SinkError::unavailable_from("kafka", "reading the topics' metadata", e);
    let consumer = crate::sink::read::kafka_reader(client, "cas-bridge-metadata").map_err(fail)?;
    let meta = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(fail)?;
    for topic in wanted {
        let found = meta.topics().iter().find(|t| t.name() == topic);
        let missing = match found {
            None => true,
            Some(t) => match t.error() {
                None => false,
                Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) => {
                    return Err(SinkError::misconfigured(
                        "kafka",
                        format!("topic {topic}: not authorized: the bridge's principal needs Describe and Write on it (and Read for redrive on the dead-letter topic)"),
                    ))
                }
                Some(_) => true,
            },
        };
        if missing {
            let hint = if created {
                "it was just created; the broker does not show it yet (asked again)"
            } else {
                "sink.kafka.create_topics is false: create it (with the partitions and replication the platform wants) and give the bridge's principal Describe and Write on it, or let the bridge create it"
            };
            let e = format!("topic {topic} does not exist: {hint}");
            return Err(if created {
                SinkError::unavailable("kafka", e)
            } else {
                SinkError::misconfigured("kafka", e)
            });
        }
    }
    Ok(())
}

/// The latest `cas-window-start` header among the last records of
/// `topic`'s partitions (blocking: run off the runtime).
///
/// Each partition is read from the record before the end `ListOffsets`
/// reports to the end the fetch reports: on Kafka that is the last record;
/// on a broker whose `ListOffsets` answer lags (tansu 0.6 reports the first
/// record of the last batch) it is the rest of that batch.
pub(super) fn last_window_start(
    client: &ClientConfig,
    topic: &str,
) -> Result<Option<String>, SinkError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::{Headers, Message};
    use rdkafka::Offset;
    let wait = Duration::from_secs(10);
    let fail = |e: rdkafka::error::KafkaError| {
        SinkError::unavailable_from("kafka", format!("reading the end of {topic}"), e)
    };
    let consumer = crate::sink::read::kafka_reader(client, "cas-bridge-position").map_err(fail)?;
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
        crate::sink::read::kafka_partition(
            &consumer,
            topic,
            p.id(),
            Offset::Offset(high - 1),
            |m| {
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
            },
        )?;
    }
    Ok(latest)
}
