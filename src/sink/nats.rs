//! NATS JetStream: the stream is created if absent; `Nats-Msg-Id` = event id
//! so the server drops duplicates within its duplicate window; every publish
//! ack is awaited.

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use futures::future::join_all;

use super::{Record, Sink, SinkError, Topics};
use crate::config::NatsConfig;

pub struct NatsSink {
    /// The connection (flushed at shutdown).
    client: async_nats::Client,
    /// The JetStream context over that connection.
    js: jetstream::Context,
    /// The stream's name.
    stream: String,
    /// Subject filters the stream must cover.
    subjects: Vec<String>,
    /// Server-side dedup window (≥ overlap + lag).
    duplicate_window: Duration,
}

fn err(e: impl std::fmt::Display) -> SinkError {
    SinkError::new("nats", e.to_string())
}

impl NatsSink {
    pub async fn connect(
        cfg: &NatsConfig,
        topics: Topics,
        duplicate_window: Duration,
    ) -> Result<Self, SinkError> {
        let mut opts = async_nats::ConnectOptions::new()
            .name("cas-bridge")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5));
        if let Some(c) = &cfg.credentials {
            opts = opts
                .credentials_file(c)
                .await
                .map_err(|e| SinkError::new("nats", format!("credentials {}: {e}", c.display())))?;
        }
        let urls: Vec<async_nats::ServerAddr> = cfg
            .url
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| SinkError::new("nats", format!("sink.nats.url: {e}")))?;
        let client = opts.connect(urls).await.map_err(err)?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            stream: cfg.stream.clone(),
            subjects: topics.subject_filters(),
            duplicate_window,
        })
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn prepare(&self, _topics: &[String]) -> Result<(), SinkError> {
        let wanted = stream::Config {
            name: self.stream.clone(),
            subjects: self.subjects.clone(),
            duplicate_window: self.duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut s = self
            .js
            .get_or_create_stream(wanted)
            .await
            .map_err(|e| SinkError::new("nats", format!("stream {}: {e}", self.stream)))?;
        // An existing stream keeps its settings, but must cover our subjects
        // and dedup at least as long as the overlap re-reads.
        let mut cfg = s.info().await.map_err(err)?.config.clone();
        let mut changed = false;
        for subj in &self.subjects {
            if !cfg.subjects.contains(subj) {
                cfg.subjects.push(subj.clone());
                changed = true;
            }
        }
        if cfg.duplicate_window < self.duplicate_window {
            cfg.duplicate_window = self.duplicate_window;
            changed = true;
        }
        if changed {
            self.js.update_stream(cfg).await.map_err(|e| {
                SinkError::new("nats", format!("update stream {}: {e}", self.stream))
            })?;
        }
        Ok(())
    }

    async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        let mut acks = Vec::with_capacity(records.len());
        for r in records {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", r.id.as_str());
            for (k, v) in r.headers() {
                headers.insert(k, v);
            }
            let ack = self
                .js
                .publish_with_headers(r.topic.to_string(), headers, r.payload.clone())
                .await
                .map_err(|e| SinkError::new("nats", format!("publish to {}: {e}", r.topic)))?;
            acks.push(ack);
        }
        let mut failed = 0usize;
        let mut first = None;
        for res in join_all(acks.into_iter().map(|a| a.into_future())).await {
            if let Err(e) = res {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(e) => Err(SinkError::new(
                "nats",
                format!(
                    "{failed} of {} publishes not acknowledged: {e}",
                    records.len()
                ),
            )),
        }
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.client.flush().await.map_err(err)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}
