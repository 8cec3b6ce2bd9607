use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::error::MAX_MSG_BYTES;
use super::token::Token;
use super::ApiConfig;
use super::{parse_page_owned, resolve_next_link, ApiError, Dialect, ErrorBody, Page};
use crate::coord::Permit;
use crate::field::ConfigError;
use crate::shard::Shard;
use crate::window::format_time;
use crate::window::Window;

/// An HTTP client bound to one API host and one token.
#[derive(Clone)]
pub struct Client {
    /// The pooled HTTP client; redirects are never followed (a redirect could
    /// carry the token elsewhere).
    http: reqwest::Client,
    /// The configured API host: the only host that ever sees the token.
    base: Url,
    /// The bearer token (followed in its file, when it comes from one).
    token: Arc<Token>,
    /// Which shape of the API to speak.
    dialect: Dialect,
    /// `limit` on the first request of a window.
    page_limit: u32,
    /// Largest body read, in bytes.
    max_body: u64,
    /// The bodies of pages in flight, in KiB: a body is read only once its
    /// size is reserved here, and the reservation goes with the page until
    /// the page is dropped (after the sink acknowledged it).
    memory: Arc<Semaphore>,
}

/// Bytes of page bodies held at once by one process (or `api.max_body_bytes`
/// when larger, so that one page always fits). A page costs a few times its
/// body while it is parsed, validated and written for the sink; this bounds
/// the pages in flight by bytes whatever their number (ordinary pages of a
/// few hundred KB are never held back by it). The events' tapes, read with
/// the body (about its size again), are counted here too when there is
/// room, and let go when there is not.
pub const PAGE_BYTES_IN_FLIGHT: u64 = 32 * 1024 * 1024;

/// The bound of the page bodies held at once, for clients whose largest
/// `api.max_body_bytes` is `max_body` (in KiB permits, FIFO: clients that
/// share it are served in turn).
pub fn page_memory(max_body: u64) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        kib(PAGE_BYTES_IN_FLIGHT.max(max_body)) as usize
    ))
}

fn kib(bytes: u64) -> u32 {
    bytes.div_ceil(1024).clamp(1, u64::from(u32::MAX)) as u32
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

/// The HTTP client of these settings: one per process for every tenant
/// whose timeout, proxy and CA agree (a client holds a TLS configuration
/// with its root store and a connection pool; made once, not per tenant).
fn shared_http(cfg: &ApiConfig, base: &url::Url) -> Result<reqwest::Client, ConfigError> {
    static CLIENTS: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, reqwest::Client>>,
    > = std::sync::LazyLock::new(Default::default);
    // A CA file rewritten in place (a live change) makes a new client.
    let ca_changed = cfg
        .ca_file
        .as_ref()
        .and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
    // The proxy as configured or from the environment (HTTPS_PROXY,
    // NO_PROXY), read when the client is made: a change makes a new one.
    let key = format!(
        "{:?}|{}|{:?}|{}|{:?}|{:?}|{ca_changed:?}",
        cfg.timeout.get(),
        base.scheme(),
        cfg.proxy_url(),
        cfg.proxy.is_some(),
        std::env::var("NO_PROXY")
            .or_else(|_| std::env::var("no_proxy"))
            .ok(),
        cfg.ca_file
    );
    let mut cache = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = cache.get(&key) {
        return Ok(c.clone());
    }
    let mut builder = reqwest::Client::builder()
        .timeout(cfg.timeout.get())
        .connect_timeout(cfg.timeout.get().min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cas-bridge/", env!("CARGO_PKG_VERSION")))
        // Proxies come only from `api.proxy` / HTTPS_PROXY, below.
        .no_proxy();
    if let Some(p) = cfg.proxy_url().filter(|_| base.scheme() == "https") {
        let shown = crate::field::redact_urls(&p);
        let proxy = reqwest::Proxy::https(&p)
            .map_err(|e| ConfigError::new("api.proxy", format!("`{shown}`: {e}")))?
            .no_proxy(reqwest::NoProxy::from_env());
        tracing::info!(proxy = %shown, "requests to the API go through a proxy, inside CONNECT tunnels");
        builder = builder.proxy(proxy);
    }
    if let Some(f) = &cfg.ca_file {
        let pem = std::fs::read(f).map_err(|e| {
            ConfigError::new("api.ca_file", format!("cannot read {}: {e}", f.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    "api.ca_file",
                    format!("{} holds no PEM certificate", f.display()),
                )
            })?;
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    let http = builder
        .build()
        .map_err(|e| ConfigError::new("api", format!("HTTP client: {e}")))?;
    cache.insert(key, http.clone());
    Ok(http)
}

impl Client {
    /// A client sending this token, always.
    pub fn new(cfg: &ApiConfig, token: SecretString) -> Result<Self, ConfigError> {
        Self::with_token(cfg, Token::fixed(token))
    }

    /// A client sending `token` as it is at each request.
    pub fn with_token(cfg: &ApiConfig, token: Token) -> Result<Self, ConfigError> {
        let base = cfg.resolved_base_url()?;
        let http = shared_http(cfg, &base)?;
        Ok(Self {
            http,
            base,
            token: Arc::new(token),
            dialect: cfg.dialect,
            page_limit: cfg.effective_page_limit(),
            max_body: cfg.max_body_bytes,
            memory: page_memory(cfg.max_body_bytes),
        })
    }

    /// The same client, holding its page bodies against `memory` (one
    /// bound shared by several clients: every tenant of a process).
    pub fn sharing_memory(mut self, memory: Arc<Semaphore>) -> Self {
        self.memory = memory;
        self
    }

    /// Reads the token file again (after the API refused the token);
    /// whether the token changed.
    pub fn reload_token(&self) -> bool {
        self.token.reload()
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of the first page of `window` for `shard`.
    pub fn first_page_url(&self, shard: &Shard, window: &Window) -> Url {
        let mut url = self.base.clone();
        let stream = shard.stream();
        let path = format!(
            "{}{}",
            self.base.path().trim_end_matches('/'),
            self.dialect.path_of(stream)
        );
        url.set_path(&path);
        {
            let mut q = url.query_pairs_mut();
            q.clear().append_pair("service", &shard.service);
            // The quarantine endpoint takes a service only. Both bounds are
            // always sent: its answer without them (the last day, or the
            // day around the one given) is never relied on.
            if stream == crate::shard::Stream::Security {
                q.append_pair("event", &shard.event);
            }
            q.append_pair("start", &format_time(window.start))
                .append_pair("end", &format_time(window.end))
                .append_pair("limit", &self.page_limit.to_string());
        }
        url
    }

    /// Resolves a next link, refusing any other host.
    pub fn next_page_url(&self, raw: &str) -> Result<Url, ApiError> {
        resolve_next_link(raw, &self.base)
    }

    /// Fetches one page, spending `permit`. `url` must come from
    /// [`Client::first_page_url`] or [`Client::next_page_url`]; anything
    /// else is refused before sending.
    pub async fn fetch(&self, permit: Permit, url: &Url) -> Result<Page, ApiError> {
        drop(permit);
        if url.host_str() != self.base.host_str()
            || url.port_or_known_default() != self.base.port_or_known_default()
        {
            return Err(ApiError::ForeignLink(url.host_str().unwrap_or("?").into()));
        }
        let resp = self
            .http
            .get(url.clone())
            .bearer_auth(self.token.current().expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let (body, memory) = self.read_capped(resp).await?;
        if status == 200 {
            let mut page = parse_page_owned(body, self.dialect)?;
            // The events' tapes, read with the body, are held with it when
            // there is room; else the worker parses each event itself.
            let mut memory = memory;
            match self
                .memory
                .clone()
                .try_acquire_many_owned(kib(page.tape_bytes() as u64))
            {
                Ok(more) => memory.merge(more),
                Err(_) => page.drop_tapes(),
            }
            page.memory = Some(memory);
            return Ok(page);
        }
        drop(memory);
        let body = serde_json::from_slice::<ErrorBody>(&body)
            .unwrap_or_else(|_| ErrorBody {
                code: 0,
                trace_id: String::new(),
                msg: String::from_utf8_lossy(&body[..body.len().min(MAX_MSG_BYTES)]).into_owned(),
            })
            .sanitized();
        Err(ApiError::Status {
            status,
            body,
            retry_after,
        })
    }

    /// The body, and its reservation in the bodies in flight.
    async fn read_capped(
        &self,
        mut resp: reqwest::Response,
    ) -> Result<(Vec<u8>, OwnedSemaphorePermit), ApiError> {
        if resp.content_length().is_some_and(|n| n > self.max_body) {
            return Err(ApiError::TooLarge { cap: self.max_body });
        }
        // Reserved before reading: the claimed length (within the cap), or
        // 1 MiB when the server gives none. A body that outgrows its
        // reservation takes more if it is free, else gives back what it
        // holds and waits for the whole amount: a page never waits while
        // holding a reservation, so two pages cannot wait on each other.
        let claimed = resp.content_length().map(|n| n.min(self.max_body));
        let closed = |_| ApiError::transport("the client is closed");
        let mut memory = self
            .memory
            .clone()
            .acquire_many_owned(kib(claimed.unwrap_or(1024 * 1024)))
            .await
            .map_err(closed)?;
        // The claimed length is reserved: the buffer takes it at once (no
        // copies as it grows; what the body does not fill stays untouched).
        let mut buf = Vec::with_capacity(claimed.unwrap_or(16 * 1024) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if (buf.len() + chunk.len()) as u64 > self.max_body {
                return Err(ApiError::TooLarge { cap: self.max_body });
            }
            buf.extend_from_slice(&chunk);
            let (need, held) = (kib(buf.len() as u64), memory.num_permits() as u32);
            if need > held {
                let want = need.max(held * 2).min(kib(self.max_body));
                match self.memory.clone().try_acquire_many_owned(want - held) {
                    Ok(more) => memory.merge(more),
                    Err(_) => {
                        drop(memory);
                        memory = self
                            .memory
                            .clone()
                            .acquire_many_owned(want)
                            .await
                            .map_err(closed)?;
                    }
                }
            }
        }
        // Keep only what the body took.
        let used = kib(buf.len() as u64);
        if let Some(extra) = memory.num_permits().checked_sub(used as usize) {
            drop(memory.split(extra));
        }
        Ok((buf, memory))
    }
}

fn transport(e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::Timeout
    } else if e.is_body() || e.is_decode() {
        ApiError::Malformed(format!("truncated body: {e}"))
    } else {
        // reqwest's Display never includes headers, so the token cannot
        // leak here; the causes (kept as the source, shown through
        // `field::Chain`) say what failed: a refused certificate, a proxy
        // that would not connect, a reset.
        ApiError::Transport {
            message: crate::cas::one_line(&e.to_string(), 600),
            cause: Some(Box::new(e)),
        }
    }
}

/// `Retry-After` as seconds or an HTTP date, as the API said it. The
/// engine caps it (`budget.max_pause`) in both forms.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((when - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_with_millis_and_z() {
        let t = DateTime::parse_from_rfc3339("2020-07-19T22:51:30.5+00:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_time(t), "2020-07-19T22:51:30.500Z");
    }

    #[test]
    fn the_quarantine_pair_asks_its_own_endpoint_with_both_bounds() {
        let cfg = ApiConfig {
            base_url: Some("https://api.example".into()),
            ..ApiConfig::default()
        };
        let c = Client::new(&cfg, SecretString::from("t".to_string())).unwrap();
        let w = Window {
            start: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            end: DateTime::from_timestamp(1_700_003_600, 0).unwrap(),
        };
        let q = c.first_page_url(&Shard::new("exchange", "quarantine"), &w);
        assert_eq!(q.path(), "/v1/siem/quarantine_events");
        let keys: Vec<String> = q.query_pairs().map(|(k, _)| k.into_owned()).collect();
        assert_eq!(keys, ["service", "start", "end", "limit"]);
        let s = c.first_page_url(&Shard::new("exchange", "dlp"), &w);
        assert_eq!(s.path(), "/v1/siem/security_events");
        assert!(s.query().unwrap().contains("event=dlp"));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        // A far-future date is returned as said: the engine caps it.
        assert!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT").unwrap()
                > Duration::from_secs(365 * 86_400)
        );
    }
}
