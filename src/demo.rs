//! `cas-bridge demo`: the built-in simulator and a bridge in one process on
//! embedded defaults (in-memory coordination, JSON lines), over a stretch
//! of simulated history, with progress lines and a summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;
use crate::config::{Config, Dur, SinkKind, StartFrom};
use crate::sim::{self, SimConfig};
use crate::telemetry::Stats;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the events go (JSON lines; a file is started afresh, so each
    /// demo collects its whole history again).
    #[arg(long, default_value = "./cas-events.jsonl")]
    pub out: String,
    /// How much history to collect.
    #[arg(long, default_value = "2h")]
    pub history: String,
    /// Events per hour per shard in the simulator.
    #[arg(long, default_value_t = 600.0)]
    pub events_per_hour: f64,
    /// Requests per minute for both the simulator and the bridge's budget.
    #[arg(long, default_value_t = 1200)]
    pub per_minute: u32,
    /// Give up after this long.
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

pub async fn demo(file: Option<PathBuf>, args: DemoArgs) -> anyhow::Result<()> {
    let history = crate::config::parse_duration(&args.history).map_err(anyhow::Error::msg)?;
    let timeout = crate::config::parse_duration(&args.timeout).map_err(anyhow::Error::msg)?;
    let mut cfg = Config::load(file.as_deref())?;
    let sim_cfg = SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        dialect: cfg.api.dialect,
        events_per_hour: args.events_per_hour,
        per_minute: args.per_minute,
        per_day: 0,
        ..SimConfig::default()
    };
    let handle = sim::start(sim_cfg.clone())
        .await
        .context("starting the simulator")?;
    cfg.api.base_url = Some(handle.base_url());
    cfg.api.region = None;
    cfg.budget.per_minute = args.per_minute;
    cfg.window.start_from = StartFrom::Ago(history);
    cfg.window.min_interval = Dur::secs(10);
    cfg.sink.kind = SinkKind::Jsonl;
    cfg.sink.jsonl.path = args.out.clone();
    cfg.validate()?;
    if args.out != "-" {
        std::fs::write(&args.out, b"").with_context(|| format!("cannot write {}", args.out))?;
    }
    let token = SecretString::from(sim_cfg.token.clone());
    let sink = crate::sink::build(&cfg.sink, Duration::from_secs(600)).await?;
    let bridge = Arc::new(Bridge::build(
        &cfg,
        token,
        sink,
        cfg.in_memory_coordination(),
    )?);
    println!(
        "demo: {} shards, {} of history, simulator at {} ({} dialect), events to {}",
        bridge.shards().len(),
        args.history,
        handle.base_url(),
        cfg.api.dialect,
        args.out
    );
    let cancel = CancellationToken::new();
    crate::shutdown::cancel_on_signals(cancel.clone());
    let started = Instant::now();
    let caught_up_at = Utc::now() - chrono::Duration::from_std(cfg.window.lag.get())?;
    let runner = tokio::spawn(bridge.clone().run(cancel.clone()));
    let s = bridge.stats().clone();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let finished = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => break false,
        }
        let usage = bridge.budget_usage().await;
        println!(
            "  pages {:>5}  events {:>7}  dead-lettered {:>4}  budget {}/{} this minute",
            Stats::get(&s.pages),
            Stats::get(&s.events_published),
            Stats::get(&s.dead_lettered),
            usage.last_minute,
            cfg.budget.per_minute
        );
        if bridge.min_cursor().is_some_and(|c| c >= caught_up_at) {
            break true;
        }
        if started.elapsed() > timeout {
            break false;
        }
    };
    cancel.cancel();
    let _ = runner.await;
    handle.stop().await;
    let secs = started.elapsed().as_secs_f64();
    let delivered = Stats::get(&s.events_published);
    println!("demo summary:");
    println!("  events delivered      {delivered}");
    println!("  dead-lettered         {}", Stats::get(&s.dead_lettered));
    println!(
        "  duplicates removed    {}",
        Stats::get(&s.duplicates_skipped)
    );
    println!("  requests used         {}", Stats::get(&s.requests));
    println!("  windows checkpointed  {}", Stats::get(&s.windows));
    println!(
        "  elapsed               {secs:.1}s ({:.0} events/s)",
        delivered as f64 / secs
    );
    // Event age at the sink's acknowledgement, from `message.detection_time`
    // (the demo replays history, so these are mostly the history's age).
    let q = |x: f64| {
        s.age_quantile(x)
            .map_or_else(|| "-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()))
    };
    println!(
        "  delivery latency      p50 {}  p90 {}  p99 {}  max {}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    if args.out != "-" {
        // The quarantine stream's share of the output, by topic.
        let text = std::fs::read_to_string(&args.out).unwrap_or_default();
        let topic =
            crate::sink::Topics::new(&cfg.sink.topic_template, &cfg.sink.dead_letter)?.topic(
                &crate::shard::Shard::new("exchange", crate::shard::QUARANTINE),
            );
        let needle = format!("{{\"topic\":\"{topic}\"");
        let n = text.lines().filter(|l| l.starts_with(&needle)).count();
        println!("  quarantine events     {n} (on {topic}; ids from mail_log_id)");
    }
    println!("  output                {}", args.out);
    if !finished {
        anyhow::bail!("the demo did not catch up on every shard in time");
    }
    Ok(())
}
