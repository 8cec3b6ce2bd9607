//! The CAS SIEM API: its two dialects, the HTTP client, pages and errors.
//!
//! What must stay true here:
//! - the next link is followed exactly as returned, and only to the
//!   configured host (and never from https down to http): a foreign link is
//!   an error and no request is sent there;
//! - the token goes only into the `Authorization` header of requests to the
//!   configured host; it is never logged;
//! - a body that is empty, truncated, malformed or larger than the cap is an
//!   error that tells the caller what to do, never a panic.

mod client;
mod config;
mod error;
mod page;
pub mod policy;
mod token;

pub use crate::window::format_time;
pub use client::{page_memory, parse_retry_after, Client, PAGE_BYTES_IN_FLIGHT};
pub use config::{ApiConfig, REGIONS};
pub use error::{one_line, Action, ApiError, ErrorBody};
pub use page::{parse_page, parse_page_owned, resolve_next_link, Page};
pub use policy::{Attempts, Decision, Policy};
pub use token::Token;

use serde::{Deserialize, Serialize};
use std::fmt;

/// The shape of the API: the live one or the one the seed page describes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default, schemars::JsonSchema,
)]
pub enum Dialect {
    /// The live API: `/v1/siem/security_events`, `security_events`, `next_link`.
    #[default]
    #[serde(rename = "v1")]
    V1,
    /// The seed page: `/siem/v1/security_events`, `securityEvents`, `nextLink`.
    #[serde(rename = "legacy")]
    Legacy,
}

impl Dialect {
    /// The path of the security events endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Dialect::V1 => "/v1/siem/security_events",
            Dialect::Legacy => "/siem/v1/security_events",
        }
    }
    /// The path of a stream's endpoint: the quarantine stream's is the live
    /// API's alone (`/v1/siem/quarantine_events`); the seed page's dialect
    /// has none, and its path answers 404 as the old paths do.
    pub fn path_of(self, stream: crate::shard::Stream) -> &'static str {
        use crate::shard::Stream;
        match (self, stream) {
            (_, Stream::Security) => self.path(),
            (Dialect::V1, Stream::Quarantine) => "/v1/siem/quarantine_events",
            (Dialect::Legacy, Stream::Quarantine) => "/siem/v1/quarantine_events",
        }
    }
    /// The name of a stream's events array in a page.
    pub fn events_field_of(self, stream: crate::shard::Stream) -> &'static str {
        match stream {
            crate::shard::Stream::Security => self.events_field(),
            crate::shard::Stream::Quarantine => "quarantine_events",
        }
    }
    /// The name of the events array in a page.
    pub fn events_field(self) -> &'static str {
        match self {
            Dialect::V1 => "security_events",
            Dialect::Legacy => "securityEvents",
        }
    }
    /// The name of the next-page link.
    pub fn next_field(self) -> &'static str {
        match self {
            Dialect::V1 => "next_link",
            Dialect::Legacy => "nextLink",
        }
    }
    /// The name of the this-page link.
    pub fn self_field(self) -> &'static str {
        match self {
            Dialect::V1 => "current_link",
            Dialect::Legacy => "selfLink",
        }
    }
    /// The largest `limit` the API accepts (and its default).
    pub fn max_page_limit(self) -> u32 {
        match self {
            Dialect::V1 => 500,
            Dialect::Legacy => 200,
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::V1 => "v1",
            Dialect::Legacy => "legacy",
        })
    }
}
