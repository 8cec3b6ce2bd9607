//! NATS JetStream: the stream is created if absent; `Nats-Msg-Id` = event id
//! (see [`msg_id`]) so the server drops duplicates within its duplicate
//! window; every publish ack is awaited.

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use futures::future::join_all;

use super::{Binding, NatsConfig, Record, Refusal, Sink, SinkError, Topics};

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
    SinkError::unavailable("nats", e.to_string())
}

/// The bytes a message takes against the server's `max_payload`: the
/// payload and the header block (`NATS/1.0\r\n`, one `k: v\r\n` a header,
/// a closing `\r\n`).
pub fn message_size(r: &Record) -> usize {
    let ce: usize = r
        .cloudevent(Binding::Nats)
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum();
    let headers: usize = r
        .headers()
        .chain(std::iter::once(("Nats-Msg-Id", msg_id(r).as_ref())))
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + ce;
    r.payload.len() + headers + 12
}

/// The `Nats-Msg-Id` JetStream dedups by: the event id; for a record
/// `redrive` publishes, `<id>:redriven`, so the dead letter that carries
/// the same id does not make the server drop it as a duplicate.
pub fn msg_id(r: &Record) -> std::borrow::Cow<'_, str> {
    match &r.redriven {
        None => std::borrow::Cow::Borrowed(r.id.as_str()),
        Some(_) => std::borrow::Cow::Owned(format!("{}:redriven", r.id)),
    }
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
            opts = opts.credentials_file(c).await.map_err(|e| {
                SinkError::misconfigured("nats", format!("credentials {}: {e}", c.display()))
            })?;
        }
        // A user and password in a URL are given to the client as options
        // and taken out of the addresses, which the client logs.
        let mut user_pass = None;
        let mut urls = Vec::new();
        for raw in cfg.url.split(',') {
            let mut raw = raw.trim().to_string();
            if raw.contains('@') {
                let mut u = url::Url::parse(&raw).map_err(|e| {
                    SinkError::misconfigured(
                        "nats",
                        format!(
                            "sink.nats.url: `{}` is not a URL: {e}",
                            crate::field::redact_urls(&raw)
                        ),
                    )
                })?;
                if let Some(p) = u.password() {
                    user_pass = Some((u.username().to_string(), p.to_string()));
                    let _ = u.set_password(None);
                    let _ = u.set_username("");
                    raw = u.to_string();
                }
            }
            let addr: async_nats::ServerAddr = raw
                .parse()
                .map_err(|e| SinkError::misconfigured("nats", format!("sink.nats.url: {e}")))?;
            urls.push(addr);
        }
        if let Some((user, pass)) = user_pass {
            opts = opts.user_and_password(user, pass);
        }
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

    async fn last_window_start(&self, topic: &str) -> Result<Option<String>, SinkError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let stream = self.js.get_stream(&self.stream).await.map_err(err)?;
        match stream.get_last_raw_message_by_subject(topic).await {
            Ok(m) => Ok(m
                .headers
                .get("cas-window-start")
                .map(|v| v.as_str().to_string())),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn read_back(&self, topic: &str, max: usize) -> Result<Vec<bytes::Bytes>, SinkError> {
        super::read::nats(&self.js, &self.stream, topic, max).await
    }

    async fn prepare(&self, _topics: &[String]) -> Result<(), SinkError> {
        let wanted = stream::Config {
            name: self.stream.clone(),
            subjects: self.subjects.clone(),
            duplicate_window: self.duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut s =
            self.js.get_or_create_stream(wanted).await.map_err(|e| {
                SinkError::unavailable("nats", format!("stream {}: {e}", self.stream))
            })?;
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
                SinkError::unavailable("nats", format!("update stream {}: {e}", self.stream))
            })?;
        }
        Ok(())
    }

    async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        let max = self.client.server_info().max_payload;
        let mut refused = Vec::new();
        let mut acks = Vec::with_capacity(records.len());
        for (index, r) in records.iter().enumerate() {
            let size = message_size(r);
            if max > 0 && size > max {
                // The server would close the connection on it: never sent.
                refused.push(Refusal {
                    index,
                    reason: format!(
                        "message of {size} bytes exceeds the server's max_payload of {max} bytes"
                    ),
                });
                continue;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id(r).as_ref());
            for (k, v) in r.headers() {
                headers.insert(k, v);
            }
            for (k, v) in r.cloudevent(Binding::Nats) {
                headers.insert(k, v.as_str());
            }
            let ack = self
                .js
                .publish_with_headers(r.topic.to_string(), headers, r.payload.clone())
                .await
                .map_err(|e| {
                    SinkError::unavailable("nats", format!("publish to {}: {e}", r.topic))
                })?;
            acks.push(ack);
        }
        let transient: Vec<String> = join_all(acks.into_iter().map(|a| a.into_future()))
            .await
            .into_iter()
            .filter_map(|res| res.err().map(|e| e.to_string()))
            .collect();
        SinkError::from_outcomes("nats", records.len(), transient, refused)
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.client.flush().await.map_err(err)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}
