//! The operator's commands: `replay`, `checkpoint`, `redrive`. `app.rs`
//! parses the CLI and calls [`replay_cmd`], [`checkpoint_cmd`] and
//! [`redrive_cmd`].

pub mod checkpoint;
pub mod redrive;
pub mod replay;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::cas::Client;
use crate::config::{Config, Tenant};
use crate::coord::memory::MemoryBudget;
use crate::coord::redis::RedisCoord;
use crate::coord::Budget;
use crate::publish::Publisher;
use crate::shard::Shard;
use crate::sink::Topics;
use crate::validate::Registry;

pub use replay::{ReplayProgress, ReplayRange, ReplaySummary};

/// A time on the command line: RFC 3339 (`2026-12-02T10:00:00Z`), `now`,
/// or a duration meaning that long ago (`90m`, `2h`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    match crate::config::parse_duration(s) {
        Ok(d) => Ok(now - chrono::Duration::from_std(d)?),
        Err(_) => anyhow::bail!(
            "{s:?} is not a time: give RFC 3339 (2026-12-02T10:00:00Z), `now`, or a duration back from now (90m, 2h)"
        ),
    }
}

/// `cas-bridge checkpoint …`.
#[derive(Debug, Subcommand)]
pub enum CheckpointCmd {
    /// Each pair's cursor, window in flight, holder and fence.
    Show {
        /// SERVICE:EVENT (repeatable); every configured pair when none.
        #[arg(long = "pair")]
        pairs: Vec<String>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Moves a pair's cursor to TIME and forgets its window in flight. The
    /// shard's lease is taken with a new fence first, so no holder can
    /// overwrite the move. Ids the fleet delivered within its dedup
    /// horizon are not sent again after a move back: use `replay` to
    /// re-deliver.
    Set {
        /// SERVICE:EVENT.
        #[arg(long)]
        pair: String,
        /// RFC 3339, `now`, or a duration back from now (`2h`).
        #[arg(long)]
        to: String,
        /// Take the shard from the worker holding it (it stops working the
        /// shard at its next lease renewal); without it a held shard is refused.
        #[arg(long)]
        force: bool,
    },
    /// Moves a pair's cursor to where a new pair starts (`window.start_from`,
    /// counted from now), as `set` does.
    Reset {
        /// SERVICE:EVENT.
        #[arg(long)]
        pair: String,
        /// As for `set`.
        #[arg(long)]
        force: bool,
    },
}

/// `cas-bridge checkpoint [--tenant NAME] …`.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// The tenant whose pairs are meant (required when several are
    /// configured; `show` without it shows every tenant's).
    #[arg(long, global = true)]
    pub tenant: Option<String>,
    #[command(subcommand)]
    pub cmd: CheckpointCmd,
}

/// `cas-bridge replay …`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The tenant (required when several are configured).
    #[arg(long)]
    pub tenant: Option<String>,
    /// SERVICE:EVENT.
    #[arg(long)]
    pub pair: String,
    /// The range's start: RFC 3339, or a duration back from now (`3h`).
    /// At most 72 h back (the API's limit), less 5 minutes.
    #[arg(long)]
    pub from: String,
    /// The range's end: RFC 3339, `now`, or a duration back from now.
    #[arg(long)]
    pub to: String,
    /// A topic template for the replayed events (`{tenant}`, `{service}`, `{event}`);
    /// `sink.topic_template` when not given. Dead letters go to `sink.dead_letter`.
    #[arg(long)]
    pub topic: Option<String>,
    /// The longest window per request sequence: shorter shows progress
    /// sooner; each window costs at least one request.
    #[arg(long, default_value = "1h")]
    pub window: String,
}

/// `cas-bridge redrive`.
#[derive(Debug, clap::Args)]
pub struct RedriveArgs {
    /// The tenant whose dead-letter topic is read (required when several
    /// are configured).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Count what would be published again; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse a dead-letter topic holding more records than this (they
    /// are read into memory).
    #[arg(long, default_value_t = 100_000)]
    pub max: usize,
}

/// `cas-bridge redrive`.
pub async fn redrive_cmd(file: Option<&Path>, args: RedriveArgs) -> anyhow::Result<()> {
    let cfg = Config::load(file)?;
    let tenant = tenant_arg(&cfg, args.tenant.as_deref())?;
    let topics = Topics::new(&cfg.sink.topic_template, &cfg.sink.dead_letter)?;
    let dead_letter = topics.dead_letter_of(&tenant.name);
    let registry = Registry::load(cfg.schemas.dir.as_deref())?;
    let dup_window = cfg.sink_dedup_window();
    let sink = crate::sink::build(&cfg.sink, dup_window).await?;
    let in_redis;
    let in_memory = redrive::InMemory::default();
    let ledger: &dyn redrive::Ledger = if cfg.coord.redis_url.is_some() {
        in_redis = redrive::InRedis {
            coord: redis_for(&cfg, "redrive").await?,
            dead_letter_topic: dead_letter.clone(),
        };
        &in_redis
    } else {
        tracing::warn!("coord.redis_url is not set: the ids published are remembered for this run only; a second run publishes them again");
        &in_memory
    };
    let origin = tenant.cloudevents_origin(cfg.sink.cloudevents)?;
    let s = redrive::Redrive {
        sink: sink.as_ref(),
        registry: &registry,
        dead_letter_topic: &dead_letter,
        ledger,
        max: args.max,
        dry_run: args.dry_run,
        cloudevents: origin.as_deref(),
    }
    .run()
    .await?;
    let _ = sink.flush().await;
    println!("redrive summary ({dead_letter}):");
    println!("  dead letters read     {}", s.read);
    println!(
        "  published again       {}{}",
        s.republished,
        if args.dry_run {
            " (dry run: would be)"
        } else {
            ""
        }
    );
    println!("  published before      {}", s.already);
    println!(
        "  still invalid         {}",
        s.still_invalid.values().map(|(n, _)| n).sum::<u64>()
    );
    for (path, (n, first)) in &s.still_invalid {
        println!("    {n:>6}  at {path} (the first: {first})");
    }
    println!(
        "  without the event     {} (truncated: the broker refused it whole)",
        s.without_event
    );
    println!("  not a dead letter     {}", s.unreadable);
    println!(
        "  refused by the broker {}",
        s.refused.values().sum::<u64>()
    );
    for (reason, n) in &s.refused {
        println!("    {n:>6}  {reason}");
    }
    Ok(())
}

/// The tenant a command works on: the one named, or the only one.
fn tenant_arg(cfg: &Config, name: Option<&str>) -> anyhow::Result<Tenant> {
    let tenants = cfg.tenants()?;
    let names = || {
        tenants
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => tenants
            .iter()
            .find(|t| t.name == n)
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!("--tenant {n:?}: no such tenant (configured: {})", names())
            }),
        None if tenants.len() == 1 => Ok(tenants[0].clone()),
        None => anyhow::bail!(
            "{} tenants are configured: name one with --tenant ({})",
            tenants.len(),
            names()
        ),
    }
}

fn shard_arg(s: &str, tenant: &Tenant) -> anyhow::Result<Shard> {
    let mut shard: Shard = s
        .parse()
        .map_err(|e| anyhow::anyhow!("--pair {s:?}: {e}"))?;
    shard.tenant = tenant.name.as_str().into();
    if !tenant.shards.allow_unknown_pairs {
        shard
            .known()
            .map_err(|e| anyhow::anyhow!("--pair {s:?}: {e}"))?;
    }
    if !tenant.shards()?.contains(&shard) {
        tracing::warn!(%shard, "the pair is not among the tenant's configured pairs");
    }
    Ok(shard)
}

/// Redis for an operator's command: the fleet's keys, under a worker name
/// of its own; it does not join the fleet. Without a token (a command that
/// spends no budget may run without one) the budget key is a placeholder.
async fn redis_for(cfg: &Config, what: &str) -> anyhow::Result<Arc<RedisCoord>> {
    if cfg.coord.redis_url.is_none() {
        anyhow::bail!("{what} works on the fleet's state in Redis: set coord.redis_url (env CAS_BRIDGE__COORD__REDIS_URL)");
    }
    let token = cfg
        .api
        .resolved_token()
        .unwrap_or_else(|_| SecretString::from(String::new()));
    let mut own = cfg.clone();
    own.coord.worker_id = Some(format!("{what}-{}", crate::coord::default_worker_id()));
    let (_, rc) = own
        .redis_coordination(&token)
        .await
        .with_context(|| format!("{what}: cannot reach Redis"))?;
    Ok(rc)
}

/// `cas-bridge checkpoint`.
pub async fn checkpoint_cmd(file: Option<&Path>, args: CheckpointArgs) -> anyhow::Result<()> {
    let cfg = Config::load(file)?;
    let rc = redis_for(&cfg, "checkpoint").await?;
    let tenant = || tenant_arg(&cfg, args.tenant.as_deref());
    match args.cmd {
        CheckpointCmd::Show { pairs, json } => {
            let shards = match (pairs.is_empty(), &args.tenant) {
                (true, None) => cfg.all_shards()?,
                (true, Some(_)) => tenant()?.shards()?,
                (false, _) => {
                    let t = tenant()?;
                    pairs
                        .iter()
                        .map(|p| shard_arg(p, &t))
                        .collect::<anyhow::Result<_>>()?
                }
            };
            let st = rc.status(&shards).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st.shards)?);
            } else {
                for s in &st.shards {
                    println!("{}", checkpoint::describe(s));
                }
            }
        }
        CheckpointCmd::Set { pair, to, force } => {
            let shard = shard_arg(&pair, &tenant()?)?;
            let to = parse_time(&to, Utc::now())?;
            print_moved(&checkpoint::set(&rc, &shard, to, force).await?);
        }
        CheckpointCmd::Reset { pair, force } => {
            let t = tenant()?;
            let shard = shard_arg(&pair, &t)?;
            let to = t.window.start_from.resolve(Utc::now());
            print_moved(&checkpoint::set(&rc, &shard, to, force).await?);
        }
    }
    Ok(())
}

fn print_moved(m: &checkpoint::Moved) {
    println!("before: {}", checkpoint::describe(&m.before));
    if let Some(w) = &m.displaced {
        println!("took the shard from {w}: it stops working it at its next lease renewal");
    }
    println!("after:  {}", checkpoint::describe(&m.after));
}

/// `cas-bridge replay`.
pub async fn replay_cmd(file: Option<&Path>, args: ReplayArgs) -> anyhow::Result<()> {
    let cfg = Config::load(file)?;
    let tenant = tenant_arg(&cfg, args.tenant.as_deref())?;
    let token = tenant.api.resolved_token().map_err(|e| tenant.named(e))?;
    let now = Utc::now();
    let range = ReplayRange {
        shard: shard_arg(&args.pair, &tenant)?,
        from: parse_time(&args.from, now)?,
        to: parse_time(&args.to, now)?,
        window: crate::config::parse_duration(&args.window)
            .map_err(|e| anyhow::anyhow!("--window: {e}"))?
            .min(tenant.window.max.get()),
        page_cap: tenant.window.page_cap,
        max_pause: tenant.budget.max_pause.get(),
    };
    range.check(now)?;
    let budget: Arc<dyn Budget> = if cfg.coord.redis_url.is_some() {
        // The tenant's budget key, as the fleet uses it (across rotations).
        Arc::new(redis_for(&cfg, "replay").await?.budget_of(
            &tenant.name,
            &token,
            tenant.budget.clone(),
        ))
    } else {
        tracing::warn!("coord.redis_url is not set: the replay counts its requests alone; a bridge running on the same token does not see them");
        Arc::new(MemoryBudget::new(tenant.budget.clone()))
    };
    let template = args
        .topic
        .clone()
        .unwrap_or_else(|| cfg.sink.topic_template.clone());
    let topics = Topics::new(&template, &cfg.sink.dead_letter).context("--topic")?;
    let dup_window = cfg.sink_dedup_window();
    let sink = crate::sink::build(&cfg.sink, dup_window).await?;
    sink.prepare(&[
        topics.topic(&range.shard),
        topics.dead_letter_of(&tenant.name),
    ])
    .await?;
    let registry = Registry::load(cfg.schemas.dir.as_deref())?;
    let mut publisher = Publisher::new(registry, sink.clone(), topics.clone(), replay::own_dedup());
    if let Some(origin) = tenant.cloudevents_origin(cfg.sink.cloudevents)? {
        publisher = publisher.with_cloudevents_of(&tenant.name, origin);
    }
    let source = Client::new(&tenant.api, token).map_err(|e| tenant.named(e))?;
    let cancel = CancellationToken::new();
    crate::shutdown::cancel_on_signals(cancel.clone());
    eprintln!(
        "replay {} {}..{} to {} ({} window(s); the fleet's cursors are not touched)",
        range.shard,
        crate::cas::format_time(range.from),
        crate::cas::format_time(range.to),
        topics.topic(&range.shard),
        range.windows().len()
    );
    let summary = replay::replay(
        &range,
        &source,
        budget.as_ref(),
        &publisher,
        draw_progress,
        &cancel,
    )
    .await;
    eprintln!();
    let _ = sink.flush().await;
    let p = &summary.progress;
    println!("replay summary:");
    println!("  windows        {}/{}", p.windows_done, p.windows);
    println!("  requests       {}", p.requests);
    println!("  pages          {}", p.pages);
    println!("  published      {}", p.published);
    println!("  dead-lettered  {}", p.dead_lettered);
    println!(
        "  duplicates     {} (sent twice by the API, left out)",
        summary.duplicates
    );
    println!("  elapsed        {:.1}s", summary.elapsed.as_secs_f64());
    if let Some(why) = summary.stopped {
        anyhow::bail!("the replay stopped before the end of the range: {why}");
    }
    Ok(())
}

/// A bar on stderr: redrawn after every page on a terminal, one line per
/// window otherwise (a log file or a pod's log gets no carriage returns).
fn draw_progress(p: &ReplayProgress) {
    use std::io::IsTerminal;
    const WIDTH: usize = 30;
    let mut err = std::io::stderr().lock();
    let terminal = err.is_terminal();
    if !terminal && !p.window_ended {
        return;
    }
    let done = (p.windows_done * WIDTH)
        .checked_div(p.windows)
        .unwrap_or(WIDTH);
    let _ = write!(
        err,
        "{}[{}{}] windows {}/{}  pages {}  events {}  dead-lettered {}  requests {}{}",
        if terminal { "\r" } else { "" },
        "#".repeat(done),
        "-".repeat(WIDTH - done),
        p.windows_done,
        p.windows,
        p.pages,
        p.published,
        p.dead_lettered,
        p.requests,
        if terminal { "" } else { "\n" }
    );
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_may_go_as_far_back_as_its_stream_reaches() {
        let now = Utc::now();
        let back = |d: i64| now - chrono::Duration::days(d);
        let q = Shard::new("exchange", "quarantine");
        let s = Shard::new("exchange", "dlp");
        checkpoint::check_cursor(&q, back(5), now).unwrap();
        let e = checkpoint::check_cursor(&s, back(5), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("72 h limit"), "{e}");
        let e = checkpoint::check_cursor(&q, back(8), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 days limit"), "{e}");
        assert!(checkpoint::check_cursor(&s, now + chrono::Duration::hours(1), now).is_err());
    }

    #[test]
    fn the_tenant_of_a_command_is_named_or_the_only_one() {
        let mut cfg = Config::default();
        assert_eq!(tenant_arg(&cfg, None).unwrap().name, "default");
        let spec = |n: &str| crate::tenant::TenantSpec {
            name: n.into(),
            api: serde_json::json!({"token": "t"})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        };
        cfg.tenants = vec![spec("acme"), spec("beta")];
        let e = tenant_arg(&cfg, None).unwrap_err().to_string();
        assert!(e.contains("--tenant") && e.contains("acme, beta"), "{e}");
        let beta = tenant_arg(&cfg, Some("beta")).unwrap();
        let e = tenant_arg(&cfg, Some("gamma")).unwrap_err().to_string();
        assert!(e.contains("no such tenant"), "{e}");
        let shard = shard_arg("box:dlp", &beta).unwrap();
        assert_eq!(shard, Shard::of("beta", "box", "dlp"));
    }

    #[test]
    fn times_on_the_command_line() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(
            parse_time("2h", now).unwrap(),
            now - chrono::Duration::hours(2)
        );
        assert_eq!(
            parse_time("2026-12-01T10:00:00+01:00", now).unwrap(),
            DateTime::parse_from_rfc3339("2026-12-01T09:00:00Z").unwrap()
        );
        let e = parse_time("yesterday", now).unwrap_err().to_string();
        assert!(e.contains("RFC 3339"), "{e}");
    }
}
