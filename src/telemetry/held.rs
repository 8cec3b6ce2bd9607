//! The series that follow what this replica holds: per held shard (its
//! lag, poll interval and rate; for at most `ops.shard_series` shards), and
//! per tenant (shards held, the largest lag, shards parked). Rendered here,
//! not by the recorder, because the recorder cannot forget a series: a
//! shard's series go with its lease, so a replica's `/metrics` grows with
//! the shards it holds, never with the fleet.
//!
//! What must stay true here: a shard released leaves no series behind; a
//! configured tenant always has its aggregates (0 when nothing is held), so
//! the fleet's view is the sum (or max) over replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use crate::shard::Shard;

/// Held shards with per-shard series when `ops.shard_series` is not set.
pub const DEFAULT_SHARD_SERIES: usize = 100;

/// An `f64` in an atomic.
#[derive(Debug, Default)]
struct F64(AtomicU64);

impl F64 {
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// One shard's gauges: written by its runner and keeper, read at render.
#[derive(Debug, Default)]
pub struct ShardGauges {
    lag: F64,
    /// Whether a lag was ever set (a shard without a cursor has none).
    lag_set: AtomicBool,
    interval: F64,
    rate: F64,
    /// Whether a poll interval was ever set.
    activity_set: AtomicBool,
    parked: AtomicBool,
}

impl ShardGauges {
    pub fn set_lag(&self, seconds: f64) {
        self.lag.set(seconds);
        self.lag_set.store(true, Ordering::Relaxed);
    }
    pub fn set_activity(&self, per_minute: Option<f64>, interval_s: f64) {
        self.rate.set(per_minute.unwrap_or(-1.0));
        self.interval.set(interval_s);
        self.activity_set.store(true, Ordering::Relaxed);
    }
    pub fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::Relaxed);
    }
    fn lag(&self) -> Option<f64> {
        self.lag_set.load(Ordering::Relaxed).then(|| self.lag.get())
    }
}

struct Entry {
    gauges: Arc<ShardGauges>,
    /// Rendered with its own series (within `ops.shard_series`).
    detail: bool,
}

#[derive(Default)]
struct Inner {
    held: BTreeMap<Shard, Entry>,
    tenants: BTreeSet<Arc<str>>,
    limit: Option<usize>,
}

impl Inner {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_SHARD_SERIES)
    }
    fn detailed(&self) -> usize {
        self.held.values().filter(|e| e.detail).count()
    }
}

/// The held shards of this process and their gauges.
#[derive(Default)]
pub struct HeldBoard {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for HeldBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (held, detailed) = self.counts();
        f.debug_struct("HeldBoard")
            .field("held", &held)
            .field("detailed", &detailed)
            .finish()
    }
}

/// The process's board (like the recorder, one per process).
pub static BOARD: LazyLock<HeldBoard> = LazyLock::new(HeldBoard::default);

/// While alive, the shard counts as held; dropped with the lease.
#[derive(Debug)]
pub struct HeldGuard {
    shard: Shard,
    gauges: Arc<ShardGauges>,
    board: &'static HeldBoard,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.board.release(&self.shard, &self.gauges);
    }
}

impl HeldBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `ops.shard_series`: how many held shards get series of their own.
    pub fn set_limit(&self, n: usize) {
        self.lock().limit = Some(n);
    }

    /// A configured tenant: its aggregates are listed from now on.
    pub fn tenant(&self, tenant: &Arc<str>) {
        self.lock().tenants.insert(tenant.clone());
    }

    /// The shard is held with these gauges until the guard is dropped.
    pub fn hold(&'static self, shard: &Shard, gauges: Arc<ShardGauges>) -> HeldGuard {
        let mut inner = self.lock();
        let detail = inner.detailed() < inner.limit();
        inner.tenants.insert(shard.tenant.clone());
        inner.held.insert(
            shard.clone(),
            Entry {
                gauges: gauges.clone(),
                detail,
            },
        );
        HeldGuard {
            shard: shard.clone(),
            gauges,
            board: self,
        }
    }

    fn release(&self, shard: &Shard, gauges: &Arc<ShardGauges>) {
        let mut inner = self.lock();
        // Only the entry this guard made (the shard may be held again).
        if inner
            .held
            .get(shard)
            .is_some_and(|e| Arc::ptr_eq(&e.gauges, gauges))
        {
            let freed = inner.held.remove(shard).is_some_and(|e| e.detail);
            // A freed place goes to a held shard without series.
            if freed {
                if let Some(e) = inner.held.values_mut().find(|e| !e.detail) {
                    e.detail = true;
                }
            }
        }
    }

    /// How many shards are held, and how many have series of their own.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.held.len(), inner.detailed())
    }

    /// The Prometheus text of the held shards' and the tenants' series.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let detail: Vec<(&Shard, &ShardGauges)> = inner
            .held
            .iter()
            .filter(|(_, e)| e.detail)
            .map(|(s, e)| (s, &*e.gauges))
            .collect();
        type Pick = fn(&ShardGauges) -> Option<f64>;
        let per_shard: [(&str, Pick); 3] = [
            ("cas_bridge_checkpoint_lag_seconds", |g| g.lag()),
            ("cas_bridge_poll_interval_seconds", |g| {
                g.activity_set
                    .load(Ordering::Relaxed)
                    .then(|| g.interval.get())
            }),
            ("cas_bridge_events_per_minute", |g| {
                g.activity_set.load(Ordering::Relaxed).then(|| g.rate.get())
            }),
        ];
        for (name, pick) in per_shard {
            header(&mut out, name);
            for (s, g) in &detail {
                if let Some(v) = pick(g) {
                    let _ = writeln!(
                        out,
                        "{name}{{tenant=\"{}\",service=\"{}\",event=\"{}\"}} {}",
                        escape(&s.tenant),
                        escape(&s.service),
                        escape(&s.event),
                        number(v)
                    );
                }
            }
        }
        // Per tenant, over every held shard (with series of its own or not).
        #[derive(Default)]
        struct Agg {
            held: u64,
            lag: f64,
            parked: u64,
        }
        let mut agg: BTreeMap<&str, Agg> = inner
            .tenants
            .iter()
            .map(|t| (&**t, Agg::default()))
            .collect();
        for (s, e) in &inner.held {
            let a = agg.entry(&*s.tenant).or_default();
            a.held += 1;
            a.lag = a.lag.max(e.gauges.lag().unwrap_or(0.0));
            a.parked += u64::from(e.gauges.parked.load(Ordering::Relaxed));
        }
        type Of = fn(&Agg) -> f64;
        let per_tenant: [(&str, Of); 3] = [
            ("cas_bridge_tenant_shards_held", |a| a.held as f64),
            ("cas_bridge_tenant_lag_max_seconds", |a| a.lag),
            ("cas_bridge_tenant_shards_parked", |a| a.parked as f64),
        ];
        for (name, of) in per_tenant {
            header(&mut out, name);
            for (t, a) in &agg {
                let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", escape(t), number(of(a)));
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str) {
    if let Some((_, _, help)) = super::prometheus::METRICS
        .iter()
        .find(|(n, _, _)| *n == name)
    {
        let _ = writeln!(out, "# HELP {name} {help}");
    }
    let _ = writeln!(out, "# TYPE {name} gauge");
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> &'static HeldBoard {
        Box::leak(Box::default())
    }

    fn samples(text: &str, name: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_released_shard_leaves_no_series_and_its_tenant_goes_to_zero() {
        let b = board();
        let s = Shard::of("acme", "exchange", "dlp");
        let g = Arc::new(ShardGauges::default());
        g.set_lag(42.5);
        g.set_activity(Some(3.0), 60.0);
        let guard = b.hold(&s, g);
        let text = b.render();
        assert_eq!(
            samples(&text, "cas_bridge_checkpoint_lag_seconds"),
            ["cas_bridge_checkpoint_lag_seconds{tenant=\"acme\",service=\"exchange\",event=\"dlp\"} 42.5"]
        );
        assert_eq!(
            samples(&text, "cas_bridge_tenant_shards_held"),
            ["cas_bridge_tenant_shards_held{tenant=\"acme\"} 1"]
        );
        assert_eq!(
            samples(&text, "cas_bridge_tenant_lag_max_seconds"),
            ["cas_bridge_tenant_lag_max_seconds{tenant=\"acme\"} 42.5"]
        );
        drop(guard);
        let text = b.render();
        for name in [
            "cas_bridge_checkpoint_lag_seconds",
            "cas_bridge_poll_interval_seconds",
            "cas_bridge_events_per_minute",
        ] {
            assert!(samples(&text, name).is_empty(), "{name}: {text}");
        }
        assert_eq!(
            samples(&text, "cas_bridge_tenant_shards_held"),
            ["cas_bridge_tenant_shards_held{tenant=\"acme\"} 0"]
        );
    }

    #[test]
    fn per_shard_series_stop_at_the_limit_and_a_freed_place_is_taken() {
        let b = board();
        b.set_limit(2);
        let shards: Vec<Shard> = (0..5)
            .map(|i| Shard::of("t", format!("s{i}"), "dlp"))
            .collect();
        let mut guards: Vec<HeldGuard> = shards
            .iter()
            .map(|s| {
                let g = Arc::new(ShardGauges::default());
                g.set_lag(1.0);
                g.set_parked(true);
                b.hold(s, g)
            })
            .collect();
        let text = b.render();
        assert_eq!(samples(&text, "cas_bridge_checkpoint_lag_seconds").len(), 2);
        assert_eq!(
            samples(&text, "cas_bridge_tenant_shards_held"),
            ["cas_bridge_tenant_shards_held{tenant=\"t\"} 5"]
        );
        assert_eq!(
            samples(&text, "cas_bridge_tenant_shards_parked"),
            ["cas_bridge_tenant_shards_parked{tenant=\"t\"} 5"]
        );
        guards.remove(0);
        assert_eq!(b.counts(), (4, 2));
        guards.clear();
        assert_eq!(b.counts(), (0, 0));
    }

    #[test]
    fn a_shard_held_again_is_not_dropped_by_its_old_guard() {
        let b = board();
        let s = Shard::of("t", "box", "dlp");
        let old = b.hold(&s, Arc::new(ShardGauges::default()));
        let _new = b.hold(&s, Arc::new(ShardGauges::default()));
        drop(old);
        assert_eq!(b.counts().0, 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(1.0), "1");
    }
}
