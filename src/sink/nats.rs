//! NATS JetStream: the stream is created if absent; `Nats-Msg-Id` = event id
//! (see [`msg_id`]) so the server drops duplicates within its duplicate
//! window; every publish ack is awaited.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use futures::StreamExt;

use super::config::{StreamDiscard, StreamStorage};
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
    /// The section: the stream's settings and whether to manage it.
    settings: NatsConfig,
    /// Where JetStream's acknowledgements come back.
    acks: Arc<Acks>,
}

/// The `cas-*` headers that every record of a page has alike.
const SAME_FOR_A_PAGE: [&str; 5] = [
    "cas-tenant",
    "cas-service",
    "cas-event",
    "cas-window-start",
    "cas-window-end",
];

/// How long a `publish` call waits for the acknowledgements of its
/// messages after sending the last one; those missing count as failures
/// (the call is retried; `Nats-Msg-Id` makes the retry safe).
const ACK_WAIT: Duration = Duration::from_secs(10);

/// The acknowledgements of this sink's publishes: every message is
/// published with the reply subject `<inbox>.<call>.<index>`, and one
/// subscription to `<inbox>.>` routes each acknowledgement to its call.
/// (Instead of a reply subject, a oneshot channel, a timer and a parsed
/// ack per message, as the JetStream context does.)
struct Acks {
    inbox: String,
    next_call: AtomicU64,
    calls: Mutex<HashMap<u64, Arc<Call>, foldhash::fast::RandomState>>,
}

/// What one `publish` call waits for.
struct Call {
    state: Mutex<CallState>,
    done: tokio::sync::Notify,
}

struct CallState {
    /// Which messages were acknowledged (or refused), each counted once.
    answered: Vec<bool>,
    left: usize,
    failed: Vec<String>,
}

impl Call {
    fn new(messages: usize) -> Self {
        Self {
            state: Mutex::new(CallState {
                answered: vec![false; messages],
                left: messages,
                failed: Vec::new(),
            }),
            done: tokio::sync::Notify::new(),
        }
    }

    /// The answer for message `index`: `Err` when JetStream did not store it.
    fn answer(&self, index: usize, result: Result<(), String>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if index >= st.answered.len() || st.answered[index] {
            return;
        }
        st.answered[index] = true;
        st.left -= 1;
        if let Err(e) = result {
            st.failed.push(e);
        }
        if st.left == 0 {
            self.done.notify_one();
        }
    }
}

/// Forgets a call when it ends, however it ends.
struct Forget<'a>(&'a Acks, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// What an acknowledgement says: `Ok` when the message is stored (or was
/// a duplicate), else why not.
fn ack_result(m: &async_nats::Message) -> Result<(), String> {
    if let Some(status) = m.status {
        if status == async_nats::StatusCode::NO_RESPONDERS {
            return Err("no stream takes this subject (no responders)".into());
        }
        if !status.is_success() {
            let why = m.description.as_deref().unwrap_or("");
            return Err(format!("JetStream answered {status} {why}"));
        }
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        error: Option<AnswerError>,
        #[serde(default)]
        stream: Option<serde::de::IgnoredAny>,
    }
    #[derive(serde::Deserialize)]
    struct AnswerError {
        #[serde(default)]
        code: u16,
        #[serde(default)]
        description: String,
    }
    match serde_json::from_slice::<Answer>(&m.payload) {
        Ok(Answer { error: Some(e), .. }) => Err(format!(
            "JetStream refused it ({}): {}",
            e.code, e.description
        )),
        Ok(Answer {
            stream: Some(_), ..
        }) => Ok(()),
        _ => Err(format!(
            "not a JetStream acknowledgement: {}",
            String::from_utf8_lossy(&m.payload[..m.payload.len().min(200)])
        )),
    }
}

impl Acks {
    /// Subscribes to the acknowledgements and routes them, as long as the
    /// connection lives.
    async fn start(client: &async_nats::Client) -> Result<Arc<Self>, SinkError> {
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(format!("{inbox}.>")).await.map_err(err)?;
        let acks = Arc::new(Self {
            inbox,
            next_call: AtomicU64::new(0),
            calls: Mutex::default(),
        });
        let weak = Arc::downgrade(&acks);
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(acks) = weak.upgrade() else { break };
                let mut parts = m.subject.as_str().rsplitn(3, '.');
                let index = parts.next().and_then(|i| i.parse::<usize>().ok());
                let call = parts.next().and_then(|c| c.parse::<u64>().ok());
                let (Some(index), Some(call)) = (index, call) else {
                    continue;
                };
                let call = acks
                    .calls
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&call)
                    .cloned();
                // A late answer for a call that ended is dropped.
                if let Some(call) = call {
                    call.answer(index, ack_result(&m));
                }
            }
        });
        Ok(acks)
    }
}

fn err(e: impl std::error::Error + Send + Sync + 'static) -> SinkError {
    SinkError::unavailable_from("nats", "JetStream call", e)
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

/// The user, password and token a connection presents, read again at every
/// (re)connection: a rotated Secret is used from the next one.
#[derive(Clone, Default)]
struct Credentials {
    user: Option<String>,
    password: Option<secrecy::SecretString>,
    password_file: Option<std::path::PathBuf>,
    token: Option<secrecy::SecretString>,
    token_file: Option<std::path::PathBuf>,
}

impl Credentials {
    fn any(&self) -> bool {
        self.user.is_some() || self.token.is_some() || self.token_file.is_some()
    }

    fn read(&self) -> Result<async_nats::Auth, crate::field::ConfigError> {
        let mut a = async_nats::Auth::new();
        a.username = self.user.clone();
        a.password = NatsConfig::secret("sink.nats.password", &self.password, &self.password_file)?;
        a.token = NatsConfig::secret("sink.nats.token", &self.token, &self.token_file)?;
        Ok(a)
    }
}

/// The client options of `cfg`, with the addresses (URLs without any
/// `user:password@`, which goes into the credentials instead: the client
/// logs addresses).
async fn options(
    cfg: &NatsConfig,
) -> Result<(async_nats::ConnectOptions, Vec<async_nats::ServerAddr>), SinkError> {
    let mut creds = Credentials {
        user: cfg.user.clone(),
        password: cfg.password.clone(),
        password_file: cfg.password_file.clone(),
        token: cfg.token.clone(),
        token_file: cfg.token_file.clone(),
    };
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
            if creds.user.is_none() && !u.username().is_empty() {
                creds.user = Some(u.username().to_string());
                creds.password = u.password().map(|p| p.to_string().into());
            }
            let _ = u.set_password(None);
            let _ = u.set_username("");
            raw = u.to_string();
        }
        let addr: async_nats::ServerAddr = raw
            .parse()
            .map_err(|e| SinkError::misconfigured_from("nats", "sink.nats.url", e))?;
        urls.push(addr);
    }
    let mut opts = if creds.any() {
        // Checked once now, so a missing file is named at the start.
        creds
            .read()
            .map_err(|e| SinkError::misconfigured("nats", e.to_string()))?;
        async_nats::ConnectOptions::with_auth_callback(move |_nonce| {
            let creds = creds.clone();
            async move {
                creds
                    .read()
                    .map_err(|e| async_nats::AuthError::new(e.to_string()))
            }
        })
    } else {
        async_nats::ConnectOptions::new()
    };
    opts = opts
        .name("cas-bridge")
        .connection_timeout(Duration::from_secs(5));
    if let Some(c) = &cfg.credentials {
        opts = opts.credentials_file(c).await.map_err(|e| {
            SinkError::misconfigured_from(
                "nats",
                format!("sink.nats.credentials: {}", c.display()),
                e,
            )
        })?;
    }
    if let Some(f) = &cfg.nkey_seed_file {
        let seed = std::fs::read_to_string(f).map_err(|e| {
            SinkError::misconfigured_from(
                "nats",
                format!("sink.nats.nkey_seed_file: cannot read {}", f.display()),
                e,
            )
        })?;
        opts = opts.nkey(seed.trim().to_string());
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok((opts, urls))
}

/// What a refused first connection says about the configuration, naming
/// the setting to look at; `None` when the server is just not there (yet).
fn refused(e: &async_nats::ConnectError) -> Option<SinkError> {
    use async_nats::ConnectErrorKind as K;
    let chain = crate::field::chain(e).to_string().to_ascii_lowercase();
    let tls = matches!(e.kind(), K::Tls)
        || chain.contains("certificate")
        || chain.contains("unknownissuer")
        || chain.contains("tls");
    if tls {
        return Some(SinkError::misconfigured(
            "nats",
            format!(
                "the TLS handshake failed: check sink.nats.tls_ca_file (the CA of the server's certificate) and sink.nats.tls_cert_file / tls_key_file: {}",
                crate::field::chain(e)
            ),
        ));
    }
    if matches!(e.kind(), K::Authentication | K::AuthorizationViolation) {
        return Some(SinkError::misconfigured(
            "nats",
            format!(
                "the server refused the credentials: check sink.nats.user and password (or password_file), sink.nats.token (or token_file), sink.nats.nkey_seed_file or sink.nats.credentials: {}",
                e.kind()
            ),
        ));
    }
    None
}

impl NatsSink {
    pub async fn connect(
        cfg: &NatsConfig,
        topics: Topics,
        duplicate_window: Duration,
    ) -> Result<Self, SinkError> {
        // One attempt first: a refused certificate or credentials is a
        // configuration error, named now; a server that is not there yet
        // is waited for (the replica is not ready meanwhile).
        let (opts, urls) = options(cfg).await?;
        let client = match opts.connect(urls.clone()).await {
            Ok(c) => c,
            Err(e) => {
                if let Some(bad) = refused(&e) {
                    return Err(bad);
                }
                tracing::warn!(error = %crate::field::chain(&e), "NATS is not reachable yet; connecting in the background");
                let (opts, _) = options(cfg).await?;
                opts.retry_on_initial_connect()
                    .connect(urls)
                    .await
                    .map_err(err)?
            }
        };
        let js = jetstream::new(client.clone());
        let acks = Acks::start(&client).await?;
        Ok(Self {
            client,
            js,
            stream: cfg.stream.clone(),
            subjects: topics.subject_filters(),
            duplicate_window: cfg
                .duplicate_window
                .map_or(duplicate_window, |d| d.get().max(duplicate_window)),
            settings: cfg.clone(),
            acks,
        })
    }
}

/// Whether `filter` (a stream subject, `*` and `>` wildcards) covers every
/// subject `wanted` (the bridge's, which may hold `*` themselves).
pub fn covers(filter: &str, wanted: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let w: Vec<&str> = wanted.split('.').collect();
    for (i, ft) in f.iter().enumerate() {
        match *ft {
            ">" => return i < w.len(),
            _ if i >= w.len() => return false,
            "*" => {
                if w[i] == ">" {
                    return false;
                }
            }
            t => {
                if w[i] != t {
                    return false;
                }
            }
        }
    }
    f.len() == w.len()
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

    async fn verify(&self, topics: &[String]) -> Result<String, SinkError> {
        if !self.settings.manage_stream {
            // The same read-only check as at start.
            self.prepare(topics).await?;
            return Ok(format!(
                "stream {} exists and covers {}",
                self.stream,
                self.subjects.join(", ")
            ));
        }
        // JetStream's answer about the stream says whether it is enabled
        // too (the account info's shape varies across server versions).
        let limits = "JetStream answers";
        match self.js.get_stream(&self.stream).await {
            Ok(mut s) => {
                let have = s.info().await.map_err(err)?.config.subjects.clone();
                let missing: Vec<&String> = self
                    .subjects
                    .iter()
                    .filter(|w| !have.iter().any(|f| covers(f, w)))
                    .collect();
                Ok(if missing.is_empty() {
                    format!(
                        "{limits}; stream {} covers {}",
                        self.stream,
                        self.subjects.join(", ")
                    )
                } else {
                    format!(
                        "{limits}; stream {} exists; {missing:?} to be added to its subjects at start (sink.nats.manage_stream)",
                        self.stream
                    )
                })
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(format!(
                    "{limits}; stream {} to be created at start (sink.nats.manage_stream)",
                    self.stream
                ))
            }
            Err(e) => Err(SinkError::unavailable_from(
                "nats",
                format!("stream {}", self.stream),
                e,
            )),
        }
    }

    async fn prepare(&self, _topics: &[String]) -> Result<(), SinkError> {
        let n = &self.settings;
        if !n.manage_stream {
            // Bound to a stream a platform team made: read it, never change it.
            let mut s = self.js.get_stream(&self.stream).await.map_err(|e| {
                SinkError::misconfigured_from(
                    "nats",
                    format!(
                        "sink.nats.manage_stream is false, and the stream {} cannot be read",
                        self.stream
                    ),
                    e,
                )
            })?;
            let have = s.info().await.map_err(err)?.config.subjects.clone();
            if let Some(miss) = self
                .subjects
                .iter()
                .find(|w| !have.iter().any(|f| covers(f, w)))
            {
                return Err(SinkError::misconfigured(
                    "nats",
                    format!(
                        "sink.nats.manage_stream is false, and the stream {}'s subjects {:?} do not cover `{miss}` (the bridge's subjects: {:?}); add it to the stream, or let the bridge manage the stream",
                        self.stream, have, self.subjects
                    ),
                ));
            }
            return Ok(());
        }
        let wanted = stream::Config {
            name: self.stream.clone(),
            subjects: self.subjects.clone(),
            duplicate_window: self.duplicate_window,
            storage: match n.storage {
                StreamStorage::File => stream::StorageType::File,
                StreamStorage::Memory => stream::StorageType::Memory,
            },
            num_replicas: n.replicas,
            max_age: n.max_age.get(),
            max_bytes: n.max_bytes,
            discard: match n.discard {
                StreamDiscard::Old => stream::DiscardPolicy::Old,
                StreamDiscard::New => stream::DiscardPolicy::New,
            },
            ..Default::default()
        };
        let mut s = self.js.get_or_create_stream(wanted).await.map_err(|e| {
            SinkError::unavailable_from("nats", format!("stream {}", self.stream), e)
        })?;
        // An existing stream keeps its settings, but must cover our subjects
        // and dedup at least as long as the overlap re-reads.
        let mut cfg = s.info().await.map_err(err)?.config.clone();
        let mut changed = false;
        for subj in &self.subjects {
            if !cfg.subjects.iter().any(|f| covers(f, subj)) {
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
                SinkError::unavailable_from("nats", format!("update stream {}", self.stream), e)
            })?;
        }
        Ok(())
    }

    async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let max = self.client.server_info().max_payload;
        let mut refused = Vec::new();
        let call_id = self.acks.next_call.fetch_add(1, Ordering::Relaxed);
        let call = Arc::new(Call::new(records.len()));
        self.acks
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call_id, call.clone());
        let _forget = Forget(&self.acks, call_id);
        let reply_prefix = format!("{}.{call_id}.", self.acks.inbox);
        // One subject value for each run of records on one topic.
        let mut subject: Option<(&Arc<str>, async_nats::Subject)> = None;
        let mut template: Option<(&Arc<super::PageMeta>, async_nats::HeaderMap)> = None;
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
                call.answer(index, Ok(()));
                continue;
            }
            // The page's own headers, built once and copied (a copy is
            // cheaper than hashing them into a new map).
            let page = match &template {
                Some((p, h)) if Arc::ptr_eq(p, &r.page) => h,
                _ => {
                    let h = r
                        .headers()
                        .filter(|(k, _)| SAME_FOR_A_PAGE.contains(k))
                        .map(|(k, v)| (async_nats::HeaderName::from_static(k), v.into()))
                        .collect();
                    &template.insert((&r.page, h)).1
                }
            };
            let mut headers = page.clone();
            headers.insert(
                async_nats::HeaderName::from_static("Nats-Msg-Id"),
                msg_id(r).as_ref(),
            );
            for (k, v) in r.headers().filter(|(k, _)| !SAME_FOR_A_PAGE.contains(k)) {
                headers.insert(async_nats::HeaderName::from_static(k), v);
            }
            for (k, v) in r.cloudevent(Binding::Nats) {
                headers.insert(k, v.as_str());
            }
            let to = match &subject {
                Some((t, s)) if Arc::ptr_eq(t, &r.topic) => s.clone(),
                _ => {
                    let s = async_nats::Subject::from(&*r.topic);
                    subject = Some((&r.topic, s.clone()));
                    s
                }
            };
            let mut reply = String::with_capacity(reply_prefix.len() + 4);
            reply.push_str(&reply_prefix);
            let _ = write!(reply, "{index}");
            self.client
                .publish_with_reply_and_headers(to, reply, headers, r.payload.clone())
                .await
                .map_err(|e| {
                    SinkError::unavailable("nats", format!("publish to {}: {e}", r.topic))
                })?;
        }
        // Every acknowledgement, or the wait ends.
        let waited = tokio::time::timeout(ACK_WAIT, call.done.notified()).await;
        let (mut transient, left) = {
            let st = call.state.lock().unwrap_or_else(|e| e.into_inner());
            (st.failed.clone(), st.left)
        };
        if waited.is_err() && left > 0 {
            transient.push(format!(
                "no acknowledgement from JetStream within {} s for {left} of {} messages",
                ACK_WAIT.as_secs(),
                records.len()
            ));
        }
        SinkError::from_outcomes("nats", records.len(), transient, refused)
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.client.flush().await.map_err(err)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

#[cfg(test)]
#[path = "nats_tests.rs"]
mod tests;
