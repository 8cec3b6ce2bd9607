//! CloudEvents 1.0 attributes as headers (`sink.cloudevents = true`), on
//! JetStream and on Kafka (tansu): every message carries them, each one
//! agrees with the message itself, and the payload is unchanged.

use cas_bridge::config::{Config, SinkKind};
use chrono::DateTime;

use crate::helpers::*;

async fn every_message_carries_valid_attributes(mut cfg: Config, sim: cas_bridge::sim::SimHandle) {
    cfg.sink.cloudevents = true;
    let (run, range) = Running::caught_up(&cfg).await;
    run.stop().await;
    let r = assert_delivered("cloudevents", &sim, &cfg, range.from, range.to).await;
    assert!(r.expected > 50, "{r:?}");

    let (prefix, content_type) = match cfg.sink.kind {
        SinkKind::Kafka => ("ce_", "content-type"),
        _ => ("ce-", "ce-datacontenttype"),
    };
    let origin = url::Url::parse(&sim.base_url())
        .unwrap()
        .origin()
        .ascii_serialization();
    let got = read_sink(&cfg).await;
    // Every event the simulator made in the range is among what is read
    // back (the simulator's truth, not a count taken from `got`).
    let read: std::collections::HashSet<&str> = got.iter().map(|m| m.id.as_str()).collect();
    let truth = expected(&sim, &cfg, range.from, range.to);
    let absent: Vec<&String> = truth
        .keys()
        .filter(|id| !read.contains(id.as_str()))
        .collect();
    assert!(
        absent.is_empty(),
        "{} of {} not read back: {:?}",
        absent.len(),
        truth.len(),
        &absent[..absent.len().min(5)]
    );
    let (mut events, mut dead, mut timed) = (0, 0, 0);
    for m in &got {
        let h = |k: &str| {
            m.headers
                .get(&format!("{prefix}{k}"))
                .unwrap_or_else(|| {
                    panic!("no {prefix}{k} on {} {}: {:?}", m.topic, m.id, m.headers)
                })
                .as_str()
        };
        let (service, event) = (
            m.doc["service"].as_str().unwrap(),
            m.doc["event"].as_str().unwrap(),
        );
        assert_eq!(h("specversion"), "1.0");
        assert_eq!(h("id"), m.id);
        assert_eq!(h("id"), m.doc["id"].as_str().unwrap());
        assert_eq!(h("source"), format!("{origin}/{service}/{event}"));
        assert_eq!(h("subject"), m.topic);
        assert_eq!(m.headers[content_type], "application/json");
        if m.topic == cfg.sink.dead_letter {
            assert_eq!(h("type"), format!("com.trendmicro.cas.{event}.deadletter"));
            dead += 1;
        } else {
            assert_eq!(h("type"), format!("com.trendmicro.cas.{event}"));
            events += 1;
        }
        // `time` is the event's own detection time, when it has one.
        let detected = m.doc["data"]["message"]["detection_time"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok());
        match (m.headers.get(&format!("{prefix}time")), detected) {
            (Some(t), Some(d)) => {
                assert_eq!(DateTime::parse_from_rfc3339(t).unwrap(), d, "{}", m.doc);
                timed += 1;
            }
            (Some(t), None) => {
                DateTime::parse_from_rfc3339(t).unwrap();
            }
            (None, _) => {}
        }
        // The payload is the document as ever: the event whole inside.
        assert!(m.doc["data"].is_object(), "{}", m.doc);
    }
    assert!(
        events > 50 && dead > 0,
        "{events} events, {dead} dead letters"
    );
    assert!(timed > 50, "{timed} with a time");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_headers_on_jetstream() {
    let sim = start_sim(cas_bridge::sim::SimConfig {
        bad_fraction: 0.05,
        ..sim_config()
    })
    .await;
    let cfg = bridge_config(&sim, &tag(), SinkKind::Nats);
    every_message_carries_valid_attributes(cfg, sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_headers_on_kafka() {
    require_kafka();
    let sim = start_sim(cas_bridge::sim::SimConfig {
        bad_fraction: 0.05,
        ..sim_config()
    })
    .await;
    let cfg = bridge_config(&sim, &tag(), SinkKind::Kafka);
    every_message_carries_valid_attributes(cfg, sim).await;
}
