//! cas-bridge streams Trend Micro Cloud App Security (CAS) SIEM events into
//! Kafka, NATS JetStream or JSON lines, without losing one.
//!
//! # Layout
//! - [`config`]: typed, layered configuration (defaults, file, env), checked once at start.
//! - [`shard`]: the (service, event) pair: the unit of work, leases and cursors.
//! - [`cas`]: the API client: requests, the two dialects, pagination, errors.
//! - [`window`]: window planning and cursor arithmetic (overlap, lag, 72 h reach, 3-day cap).
//! - [`identity`]: stable event ids (`log_item_id`, else a content hash).
//! - [`validate`]: the JSON Schema registry and verdicts.
//! - [`coord`]: checkpoints, the shared request budget, dedup memory (in memory here).
//! - [`sink`]: Kafka, NATS JetStream and JSON lines behind one trait; dead letters.
//! - [`worker`]: the per-shard loop and the [`worker::Bridge`] that runs them.
//! - [`sim`]: the built-in CAS API simulator.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`telemetry`]: metrics as typed events; the log set-up.
//! - [`app`]: the commands of the binary (`run`, `demo`, `simulate`, `check-config`).
//!
//! # Invariants
//! - No event fetched from the API is lost: it reaches its topic or the
//!   dead-letter topic before its window's cursor moves ([`worker`]).
//! - No request is sent without a budget permit ([`coord`]).
//! - The token is never logged and never sent to another host ([`cas`]).
//! - Bad configuration stops the start with a message naming the field
//!   ([`config`]); bad data from the API gets an error or a dead letter,
//!   never a panic.

#![forbid(unsafe_code)]

pub mod app;
pub mod bridge;
pub mod cas;
pub mod config;
pub mod coord;
#[cfg(test)]
mod fakes;
pub mod field;
pub mod fleet;
pub mod identity;
pub mod ops;
pub mod publish;
pub mod retry;
pub mod runner;
pub mod schedule;
pub mod shard;
pub mod sim;
pub mod sink;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod validate;
pub mod window;
