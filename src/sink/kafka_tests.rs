use super::*;
use crate::shard::Shard;
use crate::sink::PageMeta;
use crate::window::Window;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn meta() -> Arc<PageMeta> {
    let w = Window {
        start: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        end: chrono::DateTime::from_timestamp(60, 0).unwrap(),
    };
    Arc::new(PageMeta::new(&Shard::new("exchange", "dlp"), &w))
}

fn records(topics: &[&str], n: usize) -> Vec<Record> {
    let meta = meta();
    (0..n)
        .map(|i| {
            let topic = topics[i % topics.len()];
            Record::event(
                topic.into(),
                format!("id-{i}"),
                &meta,
                &format!("{{\"n\":{i}}}"),
            )
        })
        .collect()
}

/// A sink on `cluster`, whose `topics` it creates with `partitions`.
fn sink_with(
    cluster: &MockCluster<'_, DefaultProducerContext>,
    topics: &[&str],
    partitions: i32,
    properties: &[(&str, &str)],
) -> KafkaSink {
    for t in topics {
        cluster.create_topic(t, partitions, 1).unwrap();
    }
    KafkaSink::new(&KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        create_topics: false,
        properties: properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..KafkaConfig::default()
    })
    .unwrap()
}

fn sink(cluster: &MockCluster<'_, DefaultProducerContext>, topics: &[&str]) -> KafkaSink {
    sink_with(cluster, topics, 2, &[])
}

/// One call's records are all reported on before it returns: each is
/// on its topic when it does, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_file_makes_the_producer_again_and_delivery_goes_on() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("s.one", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Any property can come from a file; client.id is harmless here.
    let file = dir.path().join("client-id");
    std::fs::write(&file, "first\n").unwrap();
    let sink = KafkaSink::new(&KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        create_topics: false,
        secret_files: [("client.id".to_string(), file.display().to_string())].into(),
        ..KafkaConfig::default()
    })
    .unwrap();
    sink.secrets.lock().unwrap().every = Duration::ZERO;
    sink.publish(&records(&["s.one"], 3)).await.unwrap();
    assert_eq!(sink.secrets.lock().unwrap().remade, 0, "unchanged: kept");
    // Rotated as Kubernetes does: a new file put in place.
    let next = dir.path().join("client-id.new");
    std::fs::write(&next, "second-and-longer\n").unwrap();
    std::fs::rename(&next, &file).unwrap();
    sink.publish(&records(&["s.one"], 3)).await.unwrap();
    assert_eq!(sink.secrets.lock().unwrap().remade, 1, "made again once");
    sink.publish(&records(&["s.one"], 3)).await.unwrap();
    assert_eq!(sink.secrets.lock().unwrap().remade, 1);
    // A file that went bad keeps the producer in use.
    std::fs::remove_file(&file).unwrap();
    sink.publish(&records(&["s.one"], 3)).await.unwrap();
    assert_eq!(sink.secrets.lock().unwrap().remade, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_returns_when_every_record_is_acknowledged() {
    let cluster = MockCluster::new(1).unwrap();
    let topics = ["a.one", "a.two"];
    let sink = sink(&cluster, &topics);
    let batch = records(&topics, 300);
    // Two calls at once share the producer and each waits for its own.
    let (first, second) = batch.split_at(120);
    let (r1, r2) = tokio::join!(sink.publish(first), sink.publish(second));
    r1.unwrap();
    r2.unwrap();
    let mut ids = Vec::new();
    for t in topics {
        for b in sink.read_back(t, 1000).await.unwrap() {
            let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(
                doc["data"]["n"].as_u64().unwrap() % 2,
                (t == "a.two") as u64
            );
            ids.push(doc["id"].as_str().unwrap().to_string());
        }
    }
    ids.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("id-{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
}

/// A broker that refuses records for good: each refused record is named
/// by its index in the call, so the publisher dead-letters exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_broker_refuses_are_named_by_their_index() {
    let cluster = MockCluster::new(1).unwrap();
    let topics = ["b.one"];
    let sink = sink(&cluster, &topics);
    sink.publish(&records(&topics, 3)).await.unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 50],
    );
    let batch = records(&topics, 5);
    match sink.publish(&batch).await {
        Err(SinkError::Rejected { refused, .. }) => {
            assert!(!refused.is_empty());
            let mut at: Vec<usize> = refused.iter().map(|r| r.index).collect();
            at.dedup();
            assert_eq!(at.len(), refused.len(), "an index named twice: {at:?}");
            assert!(at.iter().all(|&i| i < 5), "{at:?}");
            assert!(
                refused[0].reason.contains("too large"),
                "{}",
                refused[0].reason
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A record larger than `message.max.bytes` is refused before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_is_refused_before_sending() {
    let cluster = MockCluster::new(1).unwrap();
    let topics = ["c.one"];
    let sink = sink_with(&cluster, &topics, 1, &[("message.max.bytes", "2000")]);
    let mut batch = records(&topics, 3);
    batch[1] = Record::event(
        "c.one".into(),
        "big".into(),
        &meta(),
        &format!("\"{}\"", "x".repeat(5000)),
    );
    match sink.publish(&batch).await {
        Err(SinkError::Rejected { refused, .. }) => {
            assert_eq!(refused.len(), 1);
            assert_eq!(refused[0].index, 1);
            assert!(refused[0].reason.contains("message.max.bytes"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(sink.read_back("c.one", 10).await.unwrap().len(), 2);
}
