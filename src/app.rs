//! The commands of the `cas-bridge` binary. `main.rs` only parses the CLI
//! and calls [`main`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;
use crate::config::Config;
use crate::sim::{self, SimConfig};

/// The version and the commit the binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit (12 hex digits, or `unknown`), recorded by `build.rs`.
pub const COMMIT: &str = env!("CAS_BRIDGE_COMMIT");
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CAS_BRIDGE_COMMIT"),
    ")"
);

/// Streams Trend Micro Cloud App Security SIEM events into Kafka or NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "cas-bridge", version = LONG_VERSION)]
pub struct Cli {
    /// Configuration file (TOML or YAML); `CAS_BRIDGE__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "CAS_BRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge (the production entry point).
    Run,
    /// Simulator and bridge in one process on embedded defaults, then a summary.
    Demo(crate::demo::DemoArgs),
    /// Serve the built-in CAS API simulator.
    Simulate(SimConfig),
    /// Print the effective configuration (token redacted) and check it;
    /// exits non-zero when `run` would refuse to start.
    CheckConfig {
        /// Check the file without its secret: a missing or unreadable token
        /// is reported but does not fail.
        #[arg(long)]
        without_secret: bool,
    },
    /// Check, before going live, that `run` would work: each tenant's token
    /// with one real request, Redis, and the sink's topics or stream.
    ///
    /// Prints one line per check (per tenant where it is the tenant's) and
    /// exits non-zero naming what failed. The token is never printed.
    Verify {
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the configuration file (for editors and
    /// YAML language servers).
    ConfigSchema,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// GET a URL and exit 0 if it answers 2xx (container health checks; the image has no shell).
    Probe {
        /// e.g. http://127.0.0.1:9090/readyz
        url: String,
    },
    /// Re-deliver a pair's events of a past range (at most 72 h back).
    ///
    /// Requests take permits from the token's budget, shared with the
    /// fleet through Redis. Cursors,
    /// in-window progress and the fleet's dedup memory are not touched.
    /// The events keep their ids: JetStream drops those it still holds
    /// within its duplicate window (`Nats-Msg-Id`); Kafka consumers can
    /// dedup by the record key.
    Replay(crate::operate::ReplayArgs),
    /// Publish dead letters that pass the current schemas again.
    ///
    /// Each event is checked against the current schemas; those that pass go to the topic they were meant
    /// for (header `cas-redriven`), the rest stay, counted by reason.
    /// Idempotent by id (remembered in Redis when `coord.redis_url` is set).
    Redrive(crate::operate::RedriveArgs),
    /// Show or move a pair's cursor, safely while the fleet runs.
    Checkpoint(crate::operate::CheckpointArgs),
    /// Show the fleet: each shard's owner, lease, fence, cursor, lag and last error; the budget; live workers.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy a single Redis's keys into the Redis Cluster the configuration
    /// names (`coord.cluster_nodes`), in its hash-tagged layout: cursors,
    /// fences, in-window progress, dedup memory, budgets. Stop the fleet
    /// first; the source is only read, and keys already in the cluster are
    /// left as they are (it can run again).
    MigrateKeys {
        /// The single Redis to copy from, e.g. redis://:password@old-redis:6379/0
        /// (same prefix; TLS files from the configuration for rediss://).
        #[arg(long, env = "CAS_BRIDGE_MIGRATE_FROM", hide_env_values = true)]
        from: String,
        /// Copy even though the source still has live workers or leases.
        #[arg(long)]
        force: bool,
        /// Count what would be copied; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run => run(cli.config).await.map_err(fatal),
        Command::Demo(args) => {
            init_logs("text", "warn");
            crate::demo::demo(cli.config, args).await
        }
        Command::Simulate(cfg) => simulate(cfg).await,
        Command::CheckConfig { without_secret } => check_config(cli.config, without_secret),
        Command::Status { json } => status(cli.config, json).await,
        Command::MigrateKeys {
            from,
            force,
            dry_run,
        } => {
            init_logs("text", "warn");
            migrate_keys(cli.config, from.into(), force, dry_run).await
        }
        Command::Probe { url } => probe(&url).await,
        Command::Verify { json } => {
            // Each check's line names what failed; the Kafka client's own
            // lines about a broker it cannot reach would only repeat it.
            init_logs("text", "error,librdkafka=off,rdkafka=off");
            crate::verify::verify_cmd(cli.config.as_deref(), json).await
        }
        Command::ConfigSchema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::config::schema())?
            );
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "cas-bridge", &mut std::io::stdout());
            Ok(())
        }
        Command::Replay(args) => {
            init_logs("text", "warn");
            crate::operate::replay_cmd(cli.config.as_deref(), args).await
        }
        Command::Redrive(args) => {
            init_logs("text", "warn");
            crate::operate::redrive_cmd(cli.config.as_deref(), args).await
        }
        Command::Checkpoint(args) => {
            init_logs("text", "warn");
            crate::operate::checkpoint_cmd(cli.config.as_deref(), args).await
        }
    }
}

/// An error already written to the log: `main` exits non-zero without
/// printing it again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(String);

/// `run`'s fatal error, as a log line in the configured format (JSON by
/// default; `CAS_BRIDGE__LOG__FORMAT` when the file could not be read), so
/// a log pipeline that parses JSON sees why the process ended.
fn fatal(e: anyhow::Error) -> anyhow::Error {
    let format = std::env::var("CAS_BRIDGE__LOG__FORMAT")
        .unwrap_or_else(|_| crate::telemetry::LogConfig::default().format);
    // Already set up (the configuration was read) or set up now.
    init_logs(&format, "error");
    let text = format!("{e:#}");
    tracing::error!(error = %text, version = VERSION, commit = COMMIT, "cas-bridge cannot run");
    Reported(text).into()
}

fn init_logs(format: &str, level: &str) {
    // The Kafka client crate's own line for every broker error event it
    // does not handle ("Ignored event 'Error' on base producer poll") says
    // nothing librdkafka's bounded lines do not: kept to errors unless the
    // level names it.
    let level = if level.contains("rdkafka") {
        level.to_string()
    } else {
        format!("{level},rdkafka::producer=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: never escape codes in a
    // file or a pipe.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        b.json().flatten_event(true).try_init()
    } else {
        b.try_init()
    };
}

/// What shutdown may take beyond `shutdown.grace`: the sink's flush and
/// the leases given back (docs/metrics.md promises grace + 5 s).
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

async fn run(file: Option<PathBuf>) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    crate::shutdown::cancel_on_signals(cancel.clone());
    let mut cfg = Config::load(file.as_deref())?;
    init_logs(&cfg.log.format, &cfg.log.level);
    tracing::info!(
        version = VERSION,
        commit = COMMIT,
        config = %crate::reload::config_hash(&cfg),
        "cas-bridge starting"
    );
    let token = first_token(&cfg)?;
    // SIGTERM ends the process within the grace and 5 s more, whatever
    // state it is in (a broker never reached, a producer still connecting).
    crate::shutdown::exit_after(cancel.clone(), cfg.shutdown.grace.get() + SHUTDOWN_MARGIN);
    let dup_window = cfg.sink_dedup_window();
    let coord = if cfg.coord.redis_url.is_some() {
        let joined = crate::retry::until_ok(
            &mut crate::retry::Backoff::new(Duration::from_secs(1), Duration::from_secs(32)),
            &cancel,
            || cfg.redis_coordination(&token),
            |e, wait| {
                tracing::error!(error = %crate::field::chain(e), retry_in_s = crate::field::secs(wait), "cannot reach Redis");
                true
            },
        )
        .await;
        let Ok((c, rc)) = joined else {
            return Ok(());
        };
        tracing::info!(worker = rc.worker_id(), prefix = %cfg.coord.prefix, "joined the fleet through Redis");
        c
    } else {
        cfg.in_memory_coordination()
    };
    let sink = crate::sink::build(&cfg.sink, dup_window).await?;
    let status = Arc::new(crate::status::StatusBoard::new(Some(crate::sink::probe(
        &sink,
    ))));
    let mut bridge = Arc::new(Bridge::build_tenants_on(
        &cfg,
        sink.clone(),
        coord.clone(),
        status.clone(),
    )?);
    let ops_cancel = CancellationToken::new();
    let (addr, ops) = crate::ops::serve(cfg.ops.addr()?, status.clone(), ops_cancel.clone())
        .await
        .with_context(|| format!("ops.listen: cannot listen on {}", cfg.ops.listen))?;
    tracing::info!(%addr, "ops server listening (/healthz, /readyz, /metrics)");
    let telemetry = crate::telemetry::Telemetry::new();
    telemetry.build_info(VERSION, COMMIT);
    let mut hash = crate::reload::config_hash(&cfg);
    telemetry.config_in_force(&hash, None, bridge.shards().len());
    // `seen`: the file's configuration last looked at (the one in force,
    // or a later one that could not be applied).
    let mut seen = cfg.clone();
    let mut round = cancel.child_token();
    let mut task = tokio::spawn(bridge.clone().run(round.clone()));
    loop {
        let change = async {
            match &file {
                Some(f) => crate::reload::next_config(f, &seen).await,
                None => std::future::pending().await,
            }
        };
        let new = tokio::select! {
            _ = &mut task => break,
            c = change => c,
        };
        seen = new.clone();
        // The new bridge is built before the running one stops: a change
        // that cannot be built leaves the running one alone.
        let next = match Bridge::build_tenants_on(&new, sink.clone(), coord.clone(), status.clone())
        {
            Ok(b) => Arc::new(b),
            Err(e) => {
                tracing::error!(error = %crate::field::chain(&e), config = %hash, "the changed configuration cannot be applied; the configuration in force stays");
                continue;
            }
        };
        let restart = crate::reload::needs_restart(&cfg, &new);
        if !restart.is_empty() {
            tracing::warn!(sections = ?restart, "these sections changed and take effect at the next restart");
        }
        round.cancel();
        let _ = task.await;
        if cancel.is_cancelled() {
            break;
        }
        let old = std::mem::replace(&mut hash, crate::reload::config_hash(&new));
        telemetry.config_in_force(&hash, Some(&old), next.shards().len());
        cfg = new;
        bridge = next;
        round = cancel.child_token();
        task = tokio::spawn(bridge.clone().run(round.clone()));
    }
    ops_cancel.cancel();
    // A client holding a connection open must not keep the process alive.
    let _ = tokio::time::timeout(Duration::from_secs(1), ops).await;
    Ok(())
}

/// The first tenant's token (the top-level one without `tenants`): the
/// budget `status` shows and the fleet's connection is made with.
fn first_token(cfg: &Config) -> anyhow::Result<SecretString> {
    let tenants = cfg.tenants()?;
    let first = tenants
        .first()
        .ok_or_else(|| anyhow::anyhow!("no tenant is configured"))?;
    Ok(first.api.resolved_token().map_err(|e| first.named(e))?)
}

async fn migrate_keys(
    file: Option<PathBuf>,
    from: SecretString,
    force: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let cfg = Config::load(file.as_deref())?;
    if cfg.coord.cluster_nodes.is_empty() {
        anyhow::bail!("migrate-keys copies into a Redis Cluster: set coord.cluster_nodes (and coord.redis_url for the scheme and credentials)");
    }
    let token = first_token(&cfg)?;
    let mut quiet = cfg.clone();
    quiet.coord.worker_id = Some("migrate-keys".into());
    let (_, rc) = quiet.redis_coordination(&token).await?;
    let tls = crate::coord::redis::TlsFiles {
        ca: cfg.coord.tls_ca_file.clone(),
        cert: cfg.coord.tls_cert_file.clone(),
        key: cfg.coord.tls_key_file.clone(),
    };
    let done = rc
        .migrate_from(&from, &tls, force, dry_run)
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::field::chain(&e)))?;
    let verb = if dry_run { "would copy" } else { "copied" };
    let total: u64 = done.copied.values().sum();
    println!("{verb} {total} keys under {}:", cfg.coord.prefix);
    for (kind, n) in &done.copied {
        println!("  {kind:<10} {n}");
    }
    println!(
        "left as they were: {} already in the cluster; not copied: {} (leases, heartbeats, probes)",
        done.existing, done.skipped
    );
    Ok(())
}

async fn status(file: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let cfg = Config::load(file.as_deref())?;
    if cfg.coord.redis_url.is_none() {
        anyhow::bail!("status reads the fleet's state from Redis: set coord.redis_url (env CAS_BRIDGE__COORD__REDIS_URL)");
    }
    let token = first_token(&cfg)?;
    let mut quiet = cfg.clone();
    quiet.coord.worker_id = Some("status".into());
    let (_, rc) = quiet.redis_coordination(&token).await?;
    let mut st = rc.status(&cfg.all_shards()?).await?;
    if !cfg.tenants.is_empty() {
        for t in cfg.tenants()? {
            let (usage, error) = match t.api.resolved_token() {
                Ok(token) => {
                    let b = rc.budget_of(&t.name, &token, t.budget.clone());
                    (crate::coord::Budget::usage(&b).await, None)
                }
                Err(e) => (Default::default(), Some(t.named(e).to_string())),
            };
            st.tenants.push(crate::coord::redis::TenantBudget {
                tenant: t.name.clone(),
                last_minute: usage.last_minute,
                today: usage.last_day,
                paused_s: usage.paused.map(|p| p.as_secs().max(1)),
                per_minute: t.budget.per_minute,
                per_day: t.budget.per_day,
                error,
            });
        }
    }
    if json {
        let mut v = serde_json::to_value(&st)?;
        if !st.tenants.is_empty() {
            // Each tenant's budget is under `tenants`; the top-level fields
            // are the one token's only without tenants.
            if let Some(o) = v.as_object_mut() {
                for k in [
                    "budget_last_minute",
                    "budget_today",
                    "budget_paused_s",
                    "per_minute",
                    "per_day",
                ] {
                    o.remove(k);
                }
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("workers ({}): {}", st.workers.len(), st.workers.join(", "));
    let paused = |s: Option<u64>| {
        s.map(|s| format!("; PAUSED for {s} s more (the API throttled the token or refused it)"))
            .unwrap_or_default()
    };
    if st.tenants.is_empty() {
        println!(
            "budget: {}/{} in the last minute, {}/{} today{}",
            st.budget_last_minute,
            st.per_minute,
            st.budget_today,
            st.per_day,
            paused(st.budget_paused_s)
        );
    }
    for t in &st.tenants {
        match &t.error {
            Some(e) => println!("budget of {}: unknown ({e})", t.tenant),
            None => println!(
                "budget of {}: {}/{} in the last minute, {}/{} today{}",
                t.tenant,
                t.last_minute,
                t.per_minute,
                t.today,
                t.per_day,
                paused(t.paused_s)
            ),
        }
    }
    println!(
        "{:<36} {:<28} {:>9} {:>6} {:<24} {:>8} {:>6} {:>8} {:>7}  last error",
        "shard", "owner", "lease ms", "fence", "cursor", "lag s", "pages", "ev/min", "every s"
    );
    let dash = || "-".to_string();
    for s in &st.shards {
        println!(
            "{:<36} {:<28} {:>9} {:>6} {:<24} {:>8} {:>6} {:>8} {:>7}  {}",
            s.shard,
            s.owner.as_deref().unwrap_or("-"),
            s.lease_expires_in_ms
                .map(|v| v.to_string())
                .unwrap_or_else(dash),
            s.fence.map(|v| v.to_string()).unwrap_or_else(dash),
            s.cursor.map(crate::cas::format_time).unwrap_or_else(dash),
            s.lag_seconds.map(|v| v.to_string()).unwrap_or_else(dash),
            // Pages of the window in flight already delivered (resumable).
            s.pages_done.map(|v| v.to_string()).unwrap_or_else(dash),
            // The pair's activity and the poll interval it sets.
            s.events_per_minute
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(dash),
            s.poll_interval_s
                .map(|v| v.to_string())
                .unwrap_or_else(dash),
            s.last_error.as_deref().unwrap_or("")
        );
        if let Some(w) = &s.window_in_flight {
            println!(
                "{:<36} window in flight {w}, resumes after page {}",
                "",
                s.pages_done.unwrap_or(0)
            );
        }
    }
    Ok(())
}

async fn probe(url: &str) -> anyhow::Result<()> {
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        anyhow::bail!("GET {url}: {}", resp.status());
    }
    Ok(())
}

fn check_config(file: Option<PathBuf>, without_secret: bool) -> anyhow::Result<()> {
    let cfg = Config::load(file.as_deref())?;
    println!("{}", cfg.redacted_json());
    // What each tenant resolves to: the host a region means, its budget,
    // its pairs.
    for t in cfg.tenants()? {
        let host = t
            .api
            .resolved_base_url()
            .map_or_else(|e| e.to_string(), |u| u.to_string());
        let pairs: Vec<String> = t
            .shards()?
            .iter()
            .map(|s| format!("{}:{}", s.service, s.event))
            .collect();
        let every = crate::shard::ShardsConfig::default().pairs;
        let pairs = if pairs == every {
            "the 49 default pairs (12 services × 4 events, and exchange:quarantine)".to_string()
        } else {
            format!("{} pair(s): {}", pairs.len(), pairs.join(" "))
        };
        eprintln!(
            "tenant {}: API {host} ({} dialect); budget {}/min, {}/day ({}); {pairs}",
            t.name,
            t.api.dialect,
            t.budget.per_minute,
            t.budget.per_day,
            format!("{:?}", t.budget.mode).to_lowercase(),
        );
    }
    eprintln!(
        "configuration hash {} (the same on every replica of this configuration)",
        crate::reload::config_hash(&cfg)
    );
    match cfg.runnable() {
        Ok(()) => eprintln!("configuration is valid; a token is set"),
        Err(e) if without_secret => {
            eprintln!("configuration is valid (checked without its secret: {e})")
        }
        Err(e) => anyhow::bail!("`run` would refuse to start: {e}"),
    }
    Ok(())
}

async fn simulate(cfg: SimConfig) -> anyhow::Result<()> {
    init_logs("text", "info");
    let handle = sim::start(cfg.clone())
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!(addr = %handle.addr, dialect = %cfg.dialect, per_minute = cfg.per_minute, "simulator listening");
    let cancel = CancellationToken::new();
    crate::shutdown::cancel_on_signals(cancel.clone());
    cancel.cancelled().await;
    handle.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text).unwrap();
        f
    }

    /// Every file of `examples/` passes `check-config --without-secret` (its
    /// secrets are mounted elsewhere) and the configuration's own schema.
    #[test]
    fn every_example_passes_check_config_and_the_schema() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let schema = crate::config::schema();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            n += 1;
            check_config(Some(path.clone()), true)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            let raw: serde_json::Value = config::Config::builder()
                .add_source(config::File::from(path.as_path()))
                .build()
                .unwrap()
                .try_deserialize()
                .unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&raw)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        }
        assert!(n >= 4, "{n} examples");
    }

    #[test]
    fn completions_know_every_command() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "cas-bridge", &mut out);
            let text = String::from_utf8(out).unwrap();
            for sub in [
                "run",
                "verify",
                "check-config",
                "config-schema",
                "checkpoint",
                "replay",
            ] {
                assert!(text.contains(sub), "{shell}: {sub} missing");
            }
        }
        let v = <Cli as clap::CommandFactory>::command().render_version();
        assert!(v.contains(VERSION) && v.contains(COMMIT), "{v}");
    }

    #[test]
    fn the_schema_refuses_what_the_loader_refuses() {
        let schema = crate::config::schema();
        let validator = jsonschema::validator_for(&schema).unwrap();
        for bad in [
            serde_json::json!({"coord": {"lease_tll": "10s"}}),
            serde_json::json!({"sink": {"kind": "kafka2"}}),
            serde_json::json!({"budget": {"per_minute": "abc"}}),
            serde_json::json!({"window": {"lag": "5 minutes"}}),
            serde_json::json!({"log": {"format": "xml"}}),
        ] {
            assert!(!validator.is_valid(&bad), "{bad}");
        }
        assert!(validator
            .is_valid(&serde_json::json!({"window": {"lag": "5m"}, "sink": {"kind": "nats"}})));
    }

    #[test]
    fn check_config_fails_when_run_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        // No token: `run` refuses, so `check-config` fails; with
        // --without-secret the rest of the file still passes.
        let f = file(&dir, "[window]\nlag = \"2m\"\n");
        let e = check_config(Some(f.clone()), false).unwrap_err();
        assert!(e.to_string().contains("api.token"), "{e}");
        assert!(check_config(Some(f), true).is_ok());
        // An unreadable token file is named.
        let f = file(&dir, "[api]\ntoken_file = \"/nonexistent/token\"\n");
        let e = check_config(Some(f), false).unwrap_err();
        assert!(e.to_string().contains("api.token_file"), "{e}");
        // A token file that reads: valid.
        let t = dir.path().join("t");
        std::fs::write(&t, "abc").unwrap();
        let f = file(&dir, &format!("[api]\ntoken_file = \"{}\"\n", t.display()));
        assert!(check_config(Some(f), false).is_ok());
        // A bad value fails even without the secret.
        let f = file(&dir, "[sink]\nkind = \"kafka\"\n");
        let e = check_config(Some(f), true).unwrap_err();
        assert!(e.to_string().contains("sink.kafka.brokers"), "{e}");
    }
}
