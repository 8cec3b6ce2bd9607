//! `cas-bridge redrive`: reads the dead-letter topic, checks each event
//! against the current schemas, and publishes those that now pass to the
//! topic they were meant for, with the header `cas-redriven`. The rest
//! stay, counted by reason. Idempotent by id: the ids published are
//! remembered (in Redis when the fleet has it) and not published again.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::coord::redis::RedisCoord;
use crate::coord::CoordError;
use crate::publish::event_time;
use crate::retry::{until_ok, Backoff, GaveUp};
use crate::sink::{PageMeta, Record, Sink, SinkError};
use crate::validate::Registry;
use tokio_util::sync::CancellationToken;

/// Records published per call to the sink.
const BATCH: usize = 500;
/// Attempts at a batch the broker does not acknowledge.
const PUBLISH_TRIES: u32 = 5;

/// Which ids were already published again.
#[async_trait]
pub trait Ledger: Send + Sync {
    async fn done(&self, ids: &[&str]) -> Result<Vec<bool>, CoordError>;
    async fn record(&self, ids: &[&str]) -> Result<(), CoordError>;
}

/// The fleet's memory of redriven ids, in Redis.
pub struct InRedis {
    pub coord: Arc<RedisCoord>,
    pub dead_letter_topic: String,
}

#[async_trait]
impl Ledger for InRedis {
    async fn done(&self, ids: &[&str]) -> Result<Vec<bool>, CoordError> {
        self.coord.redriven(&self.dead_letter_topic, ids).await
    }
    async fn record(&self, ids: &[&str]) -> Result<(), CoordError> {
        self.coord.mark_redriven(&self.dead_letter_topic, ids).await
    }
}

/// This run's memory only (no Redis): a second run publishes again.
#[derive(Default)]
pub struct InMemory(Mutex<HashSet<String>>);

#[async_trait]
impl Ledger for InMemory {
    async fn done(&self, ids: &[&str]) -> Result<Vec<bool>, CoordError> {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ids.iter().map(|i| set.contains(*i)).collect())
    }
    async fn record(&self, ids: &[&str]) -> Result<(), CoordError> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.extend(ids.iter().map(|i| i.to_string()));
        Ok(())
    }
}

/// What a dead letter holds (see `sink::record`).
#[derive(Deserialize)]
struct DeadLetter {
    id: String,
    /// Absent in dead letters written before tenants existed.
    #[serde(default)]
    tenant: Option<String>,
    service: String,
    event: String,
    window_start: String,
    window_end: String,
    intended_topic: Option<String>,
    data: Option<Box<RawValue>>,
}

/// What a redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RedriveSummary {
    /// Dead letters read.
    pub read: u64,
    /// Published again to their topics (or, with `--dry-run`, that would be).
    pub republished: u64,
    /// Passed, but published by an earlier redrive (or twice on the topic).
    pub already: u64,
    /// Still invalid: per path of the first violation, how many and the
    /// first one's message (messages quote the value, so they differ).
    pub still_invalid: BTreeMap<String, (u64, String)>,
    /// Dead letters without the event (truncated: the broker refused it whole).
    pub without_event: u64,
    /// Records that are not dead letters of this bridge.
    pub unreadable: u64,
    /// Refused for good by the broker again: per reason.
    pub refused: BTreeMap<String, u64>,
}

/// What to redrive and how.
pub struct Redrive<'a> {
    pub sink: &'a dyn Sink,
    pub registry: &'a Registry,
    pub dead_letter_topic: &'a str,
    pub ledger: &'a dyn Ledger,
    /// Refuse a dead-letter topic with more records than this.
    pub max: usize,
    /// Count only; publish nothing.
    pub dry_run: bool,
    /// The API origin, when records carry CloudEvents attributes.
    pub cloudevents: Option<&'a str>,
}

impl Redrive<'_> {
    pub async fn run(&self) -> anyhow::Result<RedriveSummary> {
        let payloads = self
            .sink
            .read_back(self.dead_letter_topic, self.max)
            .await?;
        let mut s = RedriveSummary {
            read: payloads.len() as u64,
            ..Default::default()
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut seen = HashSet::new();
        let mut ready = Vec::new();
        for p in &payloads {
            let Ok(dl) = serde_json::from_slice::<DeadLetter>(p) else {
                s.unreadable += 1;
                continue;
            };
            let (Some(data), Some(topic)) = (&dl.data, &dl.intended_topic) else {
                if dl.intended_topic.is_some() {
                    s.without_event += 1;
                } else {
                    s.unreadable += 1;
                }
                continue;
            };
            let Ok(value) = serde_json::from_str::<Value>(data.get()) else {
                s.unreadable += 1;
                continue;
            };
            if let Some(v) = self.registry.check(&dl.event, &value).first() {
                let path = if v.path.is_empty() { "/" } else { &v.path };
                s.still_invalid
                    .entry(crate::cas::one_line(path, 200))
                    .or_insert_with(|| (0, crate::cas::one_line(&v.message, 200)))
                    .0 += 1;
                continue;
            }
            if !seen.insert(dl.id.clone()) {
                s.already += 1;
                continue;
            }
            let mut meta = PageMeta {
                tenant: dl
                    .tenant
                    .as_deref()
                    .unwrap_or(crate::shard::DEFAULT_TENANT)
                    .into(),
                service: dl.service.clone(),
                event: dl.event.clone(),
                ce_source: None,
                window_start: dl.window_start.clone(),
                window_end: dl.window_end.clone(),
                envelope: Default::default(),
            };
            if let Some(origin) = self.cloudevents {
                meta = meta.with_cloudevents(origin);
            }
            let mut r = Record::event(
                topic.as_str().into(),
                dl.id.clone(),
                &Arc::new(meta),
                data.get(),
            );
            r.occurred = event_time(&value);
            r.redriven = Some(now.clone());
            ready.push(r);
        }
        // One topic per call, as the bridge publishes a page.
        ready.sort_by(|a, b| a.topic.cmp(&b.topic));
        let batches = ready
            .chunk_by(|a, b| a.topic == b.topic)
            .flat_map(|same| same.chunks(BATCH));
        for batch in batches {
            let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
            let done = self.ledger.done(&ids).await?;
            let todo: Vec<Record> = batch
                .iter()
                .zip(&done)
                .filter(|(_, d)| !**d)
                .map(|(r, _)| r.clone())
                .collect();
            s.already += (batch.len() - todo.len()) as u64;
            if self.dry_run || todo.is_empty() {
                s.republished += todo.len() as u64;
                continue;
            }
            let refused = self.publish(&todo).await?;
            let taken: Vec<&str> = todo
                .iter()
                .enumerate()
                .filter(|(i, _)| !refused.iter().any(|(j, _)| j == i))
                .map(|(_, r)| r.id.as_str())
                .collect();
            self.ledger.record(&taken).await?;
            s.republished += taken.len() as u64;
            for (_, reason) in refused {
                *s.refused.entry(reason).or_default() += 1;
            }
        }
        Ok(s)
    }

    /// Publishes until the broker acknowledged every record or refused some
    /// for good (returned with the reasons, by index).
    async fn publish(&self, records: &[Record]) -> anyhow::Result<Vec<(usize, String)>> {
        let mut tries = 0u32;
        let published = until_ok(
            &mut Backoff::publish(),
            &CancellationToken::new(),
            || self.sink.publish(records),
            |e, wait| {
                tries += 1;
                let again = matches!(e, SinkError::Unavailable { .. }) && tries < PUBLISH_TRIES;
                if again {
                    tracing::warn!(error = %crate::field::chain(e), retry_in_s = crate::field::secs(wait), "the broker did not acknowledge; retrying");
                }
                again
            },
        )
        .await;
        match published {
            Ok(()) => Ok(Vec::new()),
            Err(GaveUp::Final(SinkError::Rejected { refused, .. })) => Ok(refused
                .into_iter()
                .map(|r| (r.index, crate::cas::one_line(&r.reason, 200)))
                .collect()),
            Err(GaveUp::Final(e)) => Err(e.into()),
            Err(GaveUp::Cancelled) => anyhow::bail!("cancelled"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{event, FakeSink};
    use crate::shard::Shard;
    use crate::sink::Reason;
    use crate::window::Window;

    const DEAD: &str = "cas.deadletter";

    fn dead_letter(sink: &FakeSink, shard: &Shard, data: &str, id: &str) -> Record {
        let w = Window {
            start: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            end: chrono::DateTime::from_timestamp(1_700_000_060, 0).unwrap(),
        };
        let page = Arc::new(PageMeta::new(shard, &w));
        let why = [Reason {
            path: "/message/x".into(),
            message: "an older schema refused it".into(),
        }];
        let topic = format!("cas.{}.{}", shard.service, shard.event);
        let r = Record::dead_letter(DEAD.into(), &topic, id.into(), &page, data, &why);
        sink.accepted.lock().unwrap().push(r.clone());
        r
    }

    #[tokio::test]
    async fn passing_dead_letters_go_to_their_topic_once_and_the_rest_stay_counted() {
        let sink = FakeSink::default();
        let shard = Shard::new("exchange", "dlp");
        let registry = Registry::load(None).unwrap();
        // Two events that pass the current schemas (one dead-lettered twice),
        // one that still fails, one truncated dead letter, one stranger.
        let (good, good_id) = event(&shard, 1, 0);
        let (good2, good2_id) = event(&shard, 2, 0);
        dead_letter(&sink, &shard, good.get(), &good_id);
        dead_letter(&sink, &shard, good.get(), &good_id);
        let kept = dead_letter(&sink, &shard, good2.get(), &good2_id);
        let mut bad: Value = serde_json::from_str(good.get()).unwrap();
        bad["message"]["detection_time"] = 12.into();
        dead_letter(&sink, &shard, &bad.to_string(), "bad-1");
        let truncated = Record::truncated(DEAD.into(), &kept, "too large");
        sink.accepted.lock().unwrap().push(truncated);
        let mut stranger = kept.clone();
        stranger.payload = bytes::Bytes::from_static(b"{\"hello\":1}");
        sink.accepted.lock().unwrap().push(stranger);

        let ledger = InMemory::default();
        let redrive = Redrive {
            sink: &sink,
            registry: &registry,
            dead_letter_topic: DEAD,
            ledger: &ledger,
            max: 100,
            dry_run: false,
            cloudevents: None,
        };
        let s = redrive.run().await.unwrap();
        assert_eq!(
            (
                s.read,
                s.republished,
                s.already,
                s.without_event,
                s.unreadable
            ),
            (6, 2, 1, 1, 1),
            "{s:?}"
        );
        assert_eq!(
            s.still_invalid.keys().collect::<Vec<_>>(),
            ["/message/detection_time"],
            "{s:?}"
        );
        assert_eq!(s.still_invalid["/message/detection_time"].0, 1);
        let mut on_topic = sink.ids_on("cas.exchange.dlp");
        on_topic.sort();
        let mut want = vec![good_id.clone(), good2_id];
        want.sort();
        assert_eq!(on_topic, want);
        // The republished record is the event as it would have been
        // published, marked as redriven.
        let r = sink
            .accepted()
            .into_iter()
            .find(|r| &*r.topic == "cas.exchange.dlp" && r.id == good_id)
            .unwrap();
        assert!(r.headers().any(|(k, _)| k == "cas-redriven"));
        let doc: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(
            doc["data"],
            serde_json::from_str::<Value>(good.get()).unwrap()
        );
        assert!(doc.get("reasons").is_none() && doc.get("intended_topic").is_none());

        // A second run publishes nothing again.
        let again = redrive.run().await.unwrap();
        assert_eq!((again.republished, again.already), (0, 3), "{again:?}");
        assert_eq!(sink.ids_on("cas.exchange.dlp").len(), 2);
    }
}
