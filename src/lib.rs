//! cas-bridge streams Trend Micro Cloud App Security (CAS) SIEM events into
//! Kafka, NATS JetStream or JSON lines, without losing one.
//!
//! # Layout
//! The flow of one request: the [`fleet`] lease keeper holds shards and
//! starts a [`runner`] per shard; the runner plans a window ([`window`]),
//! asks the [`schedule`] scheduler for a turn and a budget permit
//! ([`coord`]), fetches a page from the [`source`] (the [`cas`] client),
//! hands it to the [`publish`] publisher (ids from [`identity`], schemas
//! from [`validate`], records into a [`sink`]), and moves its cursor when
//! the window is delivered. Every stage reports to the [`status`] board and
//! through [`telemetry`].
//!
//! - [`bridge`]: the composition root: builds every stage from one config.
//! - [`fleet`]: the lease keeper: membership, fair share, hand-over, shutdown.
//! - [`schedule`]: the scheduler: which shard's request goes next; pages in flight.
//! - [`runner`]: the shard runner (`ShardRun`, one held shard): windows, pages, the fenced checkpoint.
//! - [`source`]: the page source trait; the HTTP client implements it.
//! - [`publish`]: validate → dedup → records → sink → mark delivered; dead letters.
//! - [`status`]: per-shard health and progress, readiness, the held shards.
//! - [`telemetry`]: one call per event: log, Prometheus, in-process stats.
//! - [`retry`]: the one backoff type and the one retry loop (`until_ok`).
//! - [`shutdown`]: SIGTERM/SIGINT cancel the token every command stops on.
//! - [`config`]: layering (defaults, file, env) and the fan-out to the sections;
//!   the JSON Schema of the file ([`config::schema`]) and its errors in the
//!   project's words (`config/explain.rs`: allowed values, nearest key, line).
//! - [`field`]: the leaf under every section: field errors, durations.
//! - [`shard`]: the (tenant, service, event): the unit of work, leases and cursors.
//! - [`tenant`]: several CAS accounts in one fleet: each tenant's sections over the top level.
//! - [`cas`]: the API client: requests, the two dialects, pagination, errors,
//!   and the one API error policy ([`cas::policy`]) every caller decides by.
//! - [`window`]: window planning and cursor arithmetic (overlap, lag, 72 h reach, 3-day cap).
//! - [`identity`]: stable event ids (`log_item_id`, else a content hash).
//! - [`validate`]: the JSON Schema registry and verdicts.
//! - [`coord`]: leases, checkpoints, the shared budget, dedup: in memory and in
//!   Redis, and the factories that make either set ([`coord::Coordination`]).
//! - [`sink`]: Kafka, NATS JetStream and JSON lines behind one trait; records,
//!   dead-letter reasons, typed errors that keep their causes.
//! - [`tape`]: the strict JSON parser that splits a page into events and reads
//!   each event's members in the same pass.
//! - [`operate`]: the operator's commands (`replay`, `checkpoint`, `redrive`).
//! - [`verify`]: `cas-bridge verify`: each tenant's token, Redis and the sink
//!   tried once before going live.
//! - [`sim`]: the built-in CAS API simulator.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`reload`]: live changes of the configuration file (tenants, pairs, windows, budgets).
//! - [`app`]: the commands of the binary (`run`, `simulate`, `check-config`,
//!   `status`, `config-schema`, `completions`, `probe`), the version and commit.
//! - [`demo`]: `cas-bridge demo`: simulator and bridge in one process, a summary.
//!
//! Configuration depends on the stages (each owns its section), never the
//! reverse; no module imports one that imports it back. A stage never
//! imports the composition root ([`bridge`]) or the CLI ([`app`]); a sink
//! knows records, not verdicts or the API; the status board knows figures,
//! not sinks.
//!
//! # Invariants
//! - No event fetched from the API is lost: it reaches its topic or the
//!   dead-letter topic before its window's cursor moves ([`runner`],
//!   [`publish`]).
//! - No request is sent without a budget permit ([`coord`]).
//! - The token is never logged and never sent to another host ([`cas`]).
//! - Bad configuration stops the start with a message naming the field,
//!   what is allowed and where it was written ([`config`]); bad data from the API gets an error or a dead letter,
//!   never a panic.

#![forbid(unsafe_code)]

pub mod app;
pub mod bridge;
pub mod cas;
pub mod config;
pub mod coord;
pub mod demo;
#[cfg(test)]
mod fakes;
pub mod field;
pub mod fleet;
pub mod identity;
pub mod operate;
pub mod ops;
pub mod publish;
pub mod reload;
pub mod retry;
pub mod runner;
pub mod schedule;
pub mod shard;
pub mod shutdown;
pub mod sim;
pub mod sink;
pub mod source;
pub mod status;
pub mod tape;
pub mod telemetry;
pub mod tenant;
pub mod validate;
pub mod verify;
pub mod window;
