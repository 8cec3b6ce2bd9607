//! The floor under `compare`: what the bridge's input and output cost on
//! their own, per event, whatever a collector does in between.
//!
//! - **fetch**: every page of the same history read over HTTP (reqwest, as
//!   the bridge), sequentially, the next link found by a byte search; no
//!   event parsed.
//! - **jsonl**: the bridge's own output file, held in memory, written again
//!   to a new file in runs of 500 lines (one page a write, as the sink).
//! - **kafka**: 500 of the bridge's records (simulator events, the page's
//!   envelope, key and `cas-*` headers) produced over and over until as
//!   many as the run published, each run of 500 awaited: once through the
//!   bridge's own sink, once straight through librdkafka with the same key,
//!   headers and settings (idempotent, `acks=all`, `linger.ms` 5), and once
//!   as the Python collector produces (no key, no header, default settings).
//!
//! Each part is timed on its own in this process's CPU. A collector that
//! writes what the bridge writes pays at least fetch + sink; the best
//! ratio against the Python collector any such collector could show is
//! the Python collector's CPU per event over that sum.

use std::sync::Arc;
use std::time::Duration;

use cas_bridge::config::Config;
use cas_bridge::shard::Shard;
use cas_bridge::sink::{PageMeta, Record};
use cas_bridge::window::Window;
use chrono::{DateTime, SecondsFormat, Utc};

use super::cpu_seconds;

/// CPU µs per event of one part.
pub struct Part {
    pub name: &'static str,
    pub us_per_event: f64,
}

/// µs of CPU per event to read every page of `pairs` over [start, end].
pub async fn fetch(
    api: &str,
    pairs: &[String],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    events: u64,
) -> Part {
    let client = reqwest::Client::new();
    let (start, end) = (
        start.to_rfc3339_opts(SecondsFormat::Secs, true),
        end.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    let finder = memchr::memmem::Finder::new(b"\"next_link\":\"");
    let cpu0 = cpu_seconds("self");
    let mut bytes = 0usize;
    for pair in pairs {
        let (service, event) = pair.split_once(':').expect("service:event");
        let mut url = format!(
            "{api}/v1/siem/security_events?service={service}&event={event}&start={start}&end={end}&limit=500"
        );
        loop {
            let body = client
                .get(&url)
                .bearer_auth("sim-token")
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .expect("a page")
                .bytes()
                .await
                .expect("a body");
            bytes += body.len();
            let Some(at) = finder.find(&body) else { break };
            let rest = &body[at + finder.needle().len()..];
            let close = memchr::memchr(b'"', rest).expect("a closed next_link");
            if close == 0 {
                break;
            }
            url = String::from_utf8(rest[..close].to_vec()).expect("a URL");
        }
    }
    let cpu = cpu_seconds("self") - cpu0;
    assert!(bytes > 0, "no page read");
    Part {
        name: "fetch every page (no parse)",
        us_per_event: cpu * 1e6 / events.max(1) as f64,
    }
}

/// µs of CPU per line to write `lines` (the bridge's output) again, 500
/// lines a write.
pub fn jsonl(lines: &[u8], to: &std::path::Path) -> Part {
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(to)
        .expect("floor file");
    let mut n = 0u64;
    let cpu0 = cpu_seconds("self");
    let mut rest = lines;
    while !rest.is_empty() {
        let mut end = 0;
        for _ in 0..500 {
            match memchr::memchr(b'\n', &rest[end..]) {
                Some(i) => {
                    end += i + 1;
                    n += 1;
                }
                None => {
                    end = rest.len();
                    break;
                }
            }
            if end == rest.len() {
                break;
            }
        }
        out.write_all(&rest[..end]).expect("floor write");
        rest = &rest[end..];
    }
    let cpu = cpu_seconds("self") - cpu0;
    Part {
        name: "write the bridge's lines (500 a write)",
        us_per_event: cpu * 1e6 / n.max(1) as f64,
    }
}

/// 500 records as the bridge builds them for one page of `shard`.
fn records(topic: &str) -> Vec<Record> {
    use cas_bridge::cas::Dialect;
    use cas_bridge::identity::event_id;
    use cas_bridge::sim::EventPlan;
    let plan = EventPlan::plain(3, 600.0, 0.0);
    let shard = Shard::new("exchange", "dlp");
    let window = Window {
        start: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        end: DateTime::from_timestamp(1_700_003_600, 0).unwrap(),
    };
    let meta = Arc::new(PageMeta::new(&shard, &window));
    let topic: Arc<str> = topic.into();
    plan.stubs(&shard, 1_700_000_000_000, 1_700_003_600_000)
        .iter()
        .take(500)
        .map(|stub| {
            let v = plan.render(&shard, stub, Dialect::V1);
            let raw = serde_json::to_string(&v).unwrap();
            let mut r = Record::event(topic.clone(), event_id(&shard, &v), &meta, &raw);
            r.occurred = Some(window.start);
            r
        })
        .collect()
}

/// The Kafka parts: the bridge's sink, librdkafka with the bridge's
/// records, librdkafka as the Python collector uses it.
pub async fn kafka(cfg: &Config, tag: &str, events: u64) -> Vec<Part> {
    let topic = format!("{tag}floor.exchange.dlp");
    let batch = records(&topic);
    assert_eq!(batch.len(), 500, "the simulator's plan gave too few events");
    let rounds = (events / 500).max(1);
    let per = |cpu: f64| cpu * 1e6 / (rounds * 500) as f64;
    let sink = cas_bridge::sink::build(&cfg.sink, Duration::from_secs(600))
        .await
        .expect("kafka sink");
    sink.prepare(std::slice::from_ref(&topic))
        .await
        .expect("floor topic");
    let cpu0 = cpu_seconds("self");
    for _ in 0..rounds {
        sink.publish(&batch).await.expect("floor publish");
    }
    let through_sink = per(cpu_seconds("self") - cpu0);
    drop(sink);

    let idempotent = [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "5"),
    ];
    let with_headers = produce(&batch, &topic, &idempotent, true, rounds).await;
    let plain = produce(&batch, &topic, &[("linger.ms", "5")], false, rounds).await;
    vec![
        Part {
            name: "the bridge's Kafka sink, its records",
            us_per_event: through_sink,
        },
        Part {
            name: "librdkafka alone, the bridge's records",
            us_per_event: per(with_headers),
        },
        Part {
            name: "librdkafka alone, payload only (as Python)",
            us_per_event: per(plain),
        },
    ]
}

/// A record as handed to librdkafka: key, headers, payload.
type Produced = (String, Vec<(&'static str, String)>, bytes::Bytes);

/// CPU seconds to produce `batch` `rounds` times, each round flushed.
async fn produce(
    batch: &[Record],
    topic: &str,
    settings: &[(&str, &str)],
    keyed: bool,
    rounds: u64,
) -> f64 {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", "127.0.0.1:19092");
    for (k, v) in settings {
        c.set(*k, *v);
    }
    let producer: BaseProducer = c.create().expect("producer");
    let topic = topic.to_string();
    let batch: Vec<Produced> = batch
        .iter()
        .map(|r| {
            let headers = r.headers().map(|(k, v)| (k, v.to_string())).collect();
            (r.id.clone(), headers, r.payload.clone())
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        let cpu0 = cpu_seconds("self");
        for _ in 0..rounds {
            for (id, hs, payload) in &batch {
                let mut rec = BaseRecord::<str, [u8]>::to(&topic).payload(&payload[..]);
                if keyed {
                    let mut headers = OwnedHeaders::new_with_capacity(hs.len());
                    for (k, v) in hs {
                        headers = headers.insert(Header {
                            key: k,
                            value: Some(v.as_bytes()),
                        });
                    }
                    rec = rec.key(id.as_str()).headers(headers);
                }
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            producer.poll(Duration::from_millis(1));
                            rec = back;
                        }
                    }
                }
                producer.poll(Duration::ZERO);
            }
            producer.flush(Duration::from_secs(30)).expect("flush");
        }
        cpu_seconds("self") - cpu0
    })
    .await
    .expect("producer thread")
}
