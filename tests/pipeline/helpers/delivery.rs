//! What each sink received, and the delivery check against the
//! simulator's ground truth.
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use cas_bridge::config::{Config, SinkKind};
use cas_bridge::shard::Shard;
use cas_bridge::sim::SimHandle;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::*;

/// One message as a consumer received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub id: String,
    pub doc: Value,
    /// When the broker stored it, ms since the epoch (JetStream's own
    /// timestamp; Kafka's record timestamp; none for JSON lines).
    pub stored_ms: Option<i64>,
    /// The message's headers (none for JSON lines).
    pub headers: BTreeMap<String, String>,
}

/// What a delivery check found.
#[derive(Debug, Default)]
pub struct Report {
    pub expected: usize,
    pub delivered: usize,
    pub missing: Vec<String>,
    pub duplicated: usize,
    pub wrong_routed: usize,
    pub dead_lettered: usize,
    pub unexpected: usize,
}

/// The topic a shard's events must reach under `template`, its placeholders
/// filled in here (the expectation does not use the crate's own `Topics`).
pub fn topic_of(template: &str, shard: &Shard) -> String {
    template
        .replace("{tenant}", &shard.tenant)
        .replace("{service}", &shard.service)
        .replace("{event}", &shard.event)
}

/// The topic of every configured shard (of the top-level pairs).
pub fn shard_topics(cfg: &Config) -> Vec<String> {
    cfg.shards
        .shards()
        .unwrap()
        .iter()
        .map(|s| topic_of(&cfg.sink.topic_template, s))
        .collect()
}

/// The ids the simulator generated in `[from, to]` for each shard, with the
/// topic each must reach.
pub fn expected(
    sim: &SimHandle,
    cfg: &Config,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for p in &cfg.shards.pairs {
        let shard: Shard = p.parse().unwrap();
        // Schema violations, and events too large for the broker, go to
        // the dead-letter topic.
        let bad: std::collections::HashSet<String> = sim
            .state
            .bad_ids(&shard, from, to)
            .into_iter()
            .chain(sim.state.huge_ids(&shard, from, to))
            .collect();
        for id in sim.state.truth(&shard, from, to) {
            let topic = if bad.contains(&id) {
                cfg.sink.dead_letter.clone()
            } else {
                topic_of(&cfg.sink.topic_template, &shard)
            };
            out.insert(id, topic);
        }
    }
    out
}

/// Compares what was received with what was expected. Received messages
/// outside the expected range are allowed (the run went on past it) but
/// must still be routed by their request pair.
///
/// A check over an empty range proves nothing: it fails.
pub fn check(expected: &HashMap<String, String>, received: &[Received], cfg: &Config) -> Report {
    assert!(
        !expected.is_empty(),
        "the checked range holds no event: the check would prove nothing"
    );
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    let mut r = Report {
        expected: expected.len(),
        ..Report::default()
    };
    for m in received {
        *count.entry(m.id.as_str()).or_default() += 1;
        let shard = Shard::new(
            m.doc["service"].as_str().unwrap_or_default(),
            m.doc["event"].as_str().unwrap_or_default(),
        );
        if m.topic == cfg.sink.dead_letter {
            r.dead_lettered += 1;
            assert!(
                m.doc["reasons"].as_array().is_some_and(|a| !a.is_empty()),
                "dead letter without reasons: {}",
                m.doc
            );
        } else if m.topic != topic_of(&cfg.sink.topic_template, &shard) {
            r.wrong_routed += 1;
        }
        match expected.get(&m.id) {
            Some(t) if *t != m.topic => r.wrong_routed += 1,
            Some(_) => {}
            None => r.unexpected += 1,
        }
    }
    for id in expected.keys() {
        match count.get(id.as_str()) {
            None => r.missing.push(id.clone()),
            Some(n) => {
                r.delivered += 1;
                r.duplicated += n - 1;
            }
        }
    }
    r
}

/// Reads the run's sink, checks it against the ids the simulator generated
/// in `[from, to]`, prints the counts under `what`, and asserts that none is
/// missing or on the wrong topic. Duplicates are bounded by the caller.
pub async fn assert_delivered(
    what: &str,
    sim: &SimHandle,
    cfg: &Config,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Report {
    let want = expected(sim, cfg, from, to);
    let r = check(&want, &read_sink(cfg).await, cfg);
    println!(
        "{what}: expected {}, delivered {}, duplicates {}, dead-lettered {}",
        r.expected, r.delivered, r.duplicated, r.dead_lettered
    );
    if !r.missing.is_empty() {
        for p in &cfg.shards.pairs {
            let shard: Shard = p.parse().unwrap();
            for line in sim.state.describe(&shard, from, to, &r.missing) {
                println!("{what}: missing {line}");
            }
        }
    }
    assert!(r.missing.is_empty(), "{what}: missing {}", r.missing.len());
    assert_eq!(r.wrong_routed, 0, "{what}: {r:?}");
    r
}

/// Reads a JSON-lines sink file.
pub fn read_jsonl(path: &std::path::Path) -> Vec<Received> {
    parse_jsonl(&std::fs::read_to_string(path).unwrap_or_default())
}

/// Reads the whole lines of a JSON-lines file a bridge is still writing
/// (a last line not finished yet is left out).
pub fn read_jsonl_written(path: &std::path::Path) -> Vec<Received> {
    parse_jsonl_written(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The whole lines of `text` (read from a file still being written).
pub fn parse_jsonl_written(text: &str) -> Vec<Received> {
    parse_jsonl(&text[..text.rfind('\n').map_or(0, |i| i + 1)])
}

fn parse_jsonl(text: &str) -> Vec<Received> {
    text.lines()
        .map(|l| {
            let doc: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}"));
            Received {
                topic: doc["topic"].as_str().unwrap().to_string(),
                id: doc["id"].as_str().unwrap().to_string(),
                doc,
                stored_ms: None,
                headers: BTreeMap::new(),
            }
        })
        .collect()
}

/// Reads every message of a JetStream stream.
pub async fn read_nats(url: &str, stream: &str) -> Vec<Received> {
    let client = async_nats::connect(url).await.expect("nats connect");
    read_nats_with(client, stream).await
}

/// As [`read_nats`], over a connection the caller made (TLS, credentials).
pub async fn read_nats_with(client: async_nats::Client, stream: &str) -> Vec<Received> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let total = s.info().await.unwrap().state.messages as usize;
    let consumer = s
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let before = out.len();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            let doc: Value = serde_json::from_slice(&m.payload).unwrap();
            let msg_id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.to_string())
                .unwrap_or_else(|| panic!("no Nats-Msg-Id in {:?}", m.headers));
            let redriven = m
                .headers
                .as_ref()
                .is_some_and(|h| h.get("cas-redriven").is_some());
            // The event id; `<id>:redriven` for what `redrive` published.
            let id = match msg_id.strip_suffix(":redriven") {
                Some(id) if redriven => id.to_string(),
                _ => msg_id,
            };
            assert_eq!(
                doc["id"].as_str(),
                Some(id.as_str()),
                "Nats-Msg-Id is the event id"
            );
            let stored_ms = m
                .info()
                .ok()
                .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as i64);
            let headers = m
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
                .collect();
            out.push(Received {
                topic: m.subject.to_string(),
                id,
                doc,
                stored_ms,
                headers,
            });
        }
        assert!(
            out.len() > before,
            "stream {stream} stopped at {} of {total}",
            out.len()
        );
    }
    out
}

/// Reads every message of the given Kafka topics, partition by partition,
/// from the beginning to the end the broker's fetch answer reports
/// (`enable.partition.eof`). Not to a `ListOffsets` high watermark read
/// first: tansu 0.6 answers it with the first offset of the last batch
/// written plus one, and the rest of that batch looked missing.
pub fn read_kafka(brokers: &str, topics: &[String]) -> Vec<Received> {
    read_kafka_with(brokers, &std::collections::BTreeMap::new(), topics)
}

/// As [`read_kafka`], with librdkafka properties of its own (TLS, SASL).
pub fn read_kafka_with(
    brokers: &str,
    properties: &std::collections::BTreeMap<String, String>,
    topics: &[String],
) -> Vec<Received> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", tag())
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    for (k, v) in properties {
        c.set(k, v);
    }
    let consumer: BaseConsumer = c.create().unwrap();
    let mut out = Vec::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md.topics()[0].partitions().len() as i32;
        for p in 0..partitions {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
            consumer.assign(&tpl).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "reading {topic}/{p}: no end of the partition in 60 s"
                );
                let Some(res) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let m = match res {
                    Err(KafkaError::PartitionEOF(q)) if q == p => break,
                    Err(KafkaError::PartitionEOF(_)) => continue,
                    Err(e) => panic!("reading {topic}/{p}: {e}"),
                    Ok(m) if m.topic() != topic.as_str() || m.partition() != p => continue,
                    Ok(m) => m,
                };
                let doc: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let hdr = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "cas-event-id")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).to_string()))
                });
                assert_eq!(
                    hdr.as_deref(),
                    Some(key.as_str()),
                    "cas-event-id header is the key"
                );
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_string(), v.to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Received {
                    topic: topic.clone(),
                    id: key,
                    doc,
                    stored_ms: m.timestamp().to_millis(),
                    headers,
                });
            }
        }
    }
    out
}

/// Everything the sink `cfg` names received: the JSON-lines file, the
/// JetStream stream, or every Kafka topic of its shards.
pub async fn read_sink(cfg: &Config) -> Vec<Received> {
    match cfg.sink.kind {
        SinkKind::Jsonl => read_jsonl(std::path::Path::new(&cfg.sink.jsonl.path)),
        SinkKind::Nats => read_nats(&cfg.sink.nats.url, &cfg.sink.nats.stream).await,
        SinkKind::Kafka => {
            let mut topics = shard_topics(cfg);
            topics.push(cfg.sink.dead_letter.replace("{tenant}", "default"));
            let brokers = cfg.sink.kafka.brokers.clone();
            tokio::task::spawn_blocking(move || read_kafka(&brokers, &topics))
                .await
                .unwrap()
        }
    }
}
