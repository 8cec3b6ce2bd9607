use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::error::MAX_MSG_BYTES;
use super::ApiConfig;
use super::{parse_page, resolve_next_link, ApiError, Dialect, ErrorBody, Page};
use crate::coord::Permit;
use crate::field::ConfigError;
use crate::shard::Shard;
use crate::window::Window;

/// Formats a time the way the API accepts it: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// An HTTP client bound to one API host and one token.
#[derive(Clone)]
pub struct Client {
    /// The pooled HTTP client; redirects are never followed (a redirect could
    /// carry the token elsewhere).
    http: reqwest::Client,
    /// The configured API host: the only host that ever sees the token.
    base: Url,
    /// The bearer token.
    token: SecretString,
    /// Which shape of the API to speak.
    dialect: Dialect,
    /// `limit` on the first request of a window.
    page_limit: u32,
    /// Largest body read, in bytes.
    max_body: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(cfg: &ApiConfig, token: SecretString) -> Result<Self, ConfigError> {
        let base = cfg.resolved_base_url()?;
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout.get())
            .connect_timeout(cfg.timeout.get().min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cas-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::new("api", format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            token,
            dialect: cfg.dialect,
            page_limit: cfg.effective_page_limit(),
            max_body: cfg.max_body_bytes,
        })
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
        let path = format!(
            "{}{}",
            self.base.path().trim_end_matches('/'),
            self.dialect.path()
        );
        url.set_path(&path);
        url.query_pairs_mut()
            .clear()
            .append_pair("service", &shard.service)
            .append_pair("event", &shard.event)
            .append_pair("start", &format_time(window.start))
            .append_pair("end", &format_time(window.end))
            .append_pair("limit", &self.page_limit.to_string());
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
            .bearer_auth(self.token.expose_secret())
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
        let body = self.read_capped(resp).await?;
        if status == 200 {
            return parse_page(&body, self.dialect);
        }
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

    async fn read_capped(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, ApiError> {
        if resp.content_length().is_some_and(|n| n > self.max_body) {
            return Err(ApiError::TooLarge { cap: self.max_body });
        }
        // The server's Content-Length is a claim, not a size to reserve
        // up front: at most 1 MiB is, and the buffer grows with the body.
        let mut buf = Vec::with_capacity(
            resp.content_length()
                .unwrap_or(16 * 1024)
                .min(self.max_body)
                .min(1024 * 1024) as usize,
        );
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if (buf.len() + chunk.len()) as u64 > self.max_body {
                return Err(ApiError::TooLarge { cap: self.max_body });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }
}

fn transport(e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::Timeout
    } else if e.is_body() || e.is_decode() {
        ApiError::Malformed(format!("truncated body: {e}"))
    } else {
        // reqwest's Display never includes headers, so the token cannot leak here.
        ApiError::Transport(e.to_string())
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
