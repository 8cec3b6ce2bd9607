use std::time::Duration;

use serde::Deserialize;

/// The error body the API sends with every non-200 answer.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ErrorBody {
    /// A negative number, e.g. `-4290001`.
    pub code: i64,
    #[serde(rename = "traceId")]
    pub trace_id: String,
    pub msg: String,
}

/// The most of the API's `msg` that is kept (in logs, Redis, `status`).
pub const MAX_MSG_BYTES: usize = 300;

/// `s` on one line, without control characters (text logs cannot be forged
/// with newlines or terminal escapes), at most `max` bytes (cut at a
/// character boundary, marked with `…`).
pub fn one_line(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() <= max {
        return clean;
    }
    let mut end = max;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &clean[..end])
}

impl ErrorBody {
    /// The body as kept: `msg` and `traceId` on one line, bounded.
    pub fn sanitized(self) -> Self {
        Self {
            code: self.code,
            trace_id: one_line(&self.trace_id, 64),
            msg: one_line(&self.msg, MAX_MSG_BYTES),
        }
    }
}

/// What the caller should do about an [`ApiError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Transient: fetch the same page again after a backoff with jitter.
    Retry,
    /// The request or configuration of this shard is wrong: park the shard
    /// with a long backoff; the other shards go on.
    Park,
    /// The token was refused: every shard backs off.
    Authentication,
    /// Throttled: every worker pauses (for this long, when the API said).
    RateLimited(Option<Duration>),
}

/// A failed request to the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API answered {status} (code {code}, traceId {trace_id}): {msg}", code = .body.code, trace_id = .body.trace_id, msg = .body.msg)]
    Status {
        status: u16,
        body: ErrorBody,
        retry_after: Option<Duration>,
    },
    #[error("request failed: {message}")]
    Transport {
        message: String,
        /// The HTTP client's error (a refused certificate, a proxy that
        /// would not connect, a reset), when there is one.
        #[source]
        cause: Option<crate::field::Cause>,
    },
    #[error("request timed out")]
    Timeout,
    #[error("malformed response body: {0}")]
    Malformed(String),
    #[error("response body larger than the cap of {cap} bytes")]
    TooLarge { cap: u64 },
    #[error("refused to follow a next link to another host or scheme: {0}")]
    ForeignLink(String),
    /// The pages of one window do not end: a next link already followed
    /// in the window came again, or the window passed `window.page_cap`.
    #[error("the pages of the window do not end: {0}")]
    PageLoop(String),
}

impl ApiError {
    /// A transport failure without a cause of its own.
    pub fn transport(message: impl Into<String>) -> Self {
        ApiError::Transport {
            message: message.into(),
            cause: None,
        }
    }

    /// What to do about it.
    pub fn action(&self) -> Action {
        match self {
            ApiError::Status {
                status,
                retry_after,
                ..
            } => match status {
                401 | 403 => Action::Authentication,
                429 => Action::RateLimited(*retry_after),
                408 | 425 => Action::Retry,
                s if *s >= 500 => Action::Retry,
                _ => Action::Park,
            },
            ApiError::Transport { .. } | ApiError::Timeout | ApiError::Malformed(_) => {
                Action::Retry
            }
            ApiError::TooLarge { .. } | ApiError::ForeignLink(_) | ApiError::PageLoop(_) => {
                Action::Park
            }
        }
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Status { status: 401, .. } | ApiError::Status { status: 403, .. } => {
                "unauthorized"
            }
            ApiError::Status { status: 429, .. } => "rate_limited",
            ApiError::Status { status, .. } if *status >= 500 => "server_error",
            ApiError::Status { .. } => "bad_request",
            ApiError::Transport { .. } => "transport",
            ApiError::Timeout => "timeout",
            ApiError::Malformed(_) => "malformed",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::ForeignLink(_) => "foreign_link",
            ApiError::PageLoop(_) => "page_loop",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> ApiError {
        ApiError::Status {
            status: s,
            body: ErrorBody::default(),
            retry_after: None,
        }
    }

    #[test]
    fn error_messages_are_kept_short_and_on_one_line() {
        let b = ErrorBody {
            code: -1,
            trace_id: "t\x1b[31m".into(),
            msg: format!("bad\nINFO forged line \u{1b}[2J{}", "é".repeat(1_000_000)),
        }
        .sanitized();
        assert!(!b.msg.chars().any(char::is_control), "{}", &b.msg[..40]);
        assert!(b.msg.starts_with("bad INFO forged line  [2J"));
        assert!(b.msg.len() <= MAX_MSG_BYTES + '…'.len_utf8());
        assert!(b.msg.ends_with('…'));
        assert_eq!(b.trace_id, "t [31m");
        assert_eq!(one_line("short", 10), "short");
    }

    #[test]
    fn classification() {
        assert_eq!(status(400).action(), Action::Park);
        assert_eq!(status(404).action(), Action::Park);
        assert_eq!(status(405).action(), Action::Park);
        assert_eq!(status(401).action(), Action::Authentication);
        assert_eq!(status(429).action(), Action::RateLimited(None));
        assert_eq!(status(500).action(), Action::Retry);
        assert_eq!(status(503).action(), Action::Retry);
        assert_eq!(ApiError::Timeout.action(), Action::Retry);
        assert_eq!(ApiError::Malformed("x".into()).action(), Action::Retry);
        assert_eq!(ApiError::TooLarge { cap: 1 }.action(), Action::Park);
        assert_eq!(ApiError::ForeignLink("x".into()).action(), Action::Park);
    }
}
