//! One backoff type for every retry in the engine: exponential with full
//! jitter (half to all of the step), capped, reset on success.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// The delays of one retrying loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// A request to the API or a call to the coordination store failed.
    pub const fn request() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(60))
    }

    /// The sink did not acknowledge a page.
    pub const fn publish() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(15))
    }

    /// A shard met an error that retrying the same request cannot fix.
    pub const fn park() -> Self {
        Self::new(Duration::from_secs(60), Duration::from_secs(15 * 60))
    }

    /// The next delay: `base × 2^attempt`, capped, then jittered down to no
    /// less than half of it.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let ms = exp.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    /// Success: the next failure starts from the base again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Sleeps the next delay; `false` if `cancel` fired first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let d = self.next_delay();
        sleep_or_cancel(d, cancel).await
    }
}

/// Why [`until_ok`] gave up.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// `cancel` fired (while waiting or calling).
    Cancelled,
    /// The error was final: retrying cannot help.
    Final(E),
}

/// The one retry loop: calls `op` until it succeeds, waiting `backoff`'s
/// next delay after each failure. `failed(error, retry_in)` is told of each
/// failure (to log it) and says whether to try again; `false` ends the
/// loop with that error. `cancel` ends it at once, in a wait or a call.
pub async fn until_ok<T, E, Fut>(
    backoff: &mut Backoff,
    cancel: &CancellationToken,
    mut op: impl FnMut() -> Fut,
    mut failed: impl FnMut(&E, Duration) -> bool,
) -> Result<T, GaveUp<E>>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        let res = tokio::select! {
            r = op() => r,
            _ = cancel.cancelled() => return Err(GaveUp::Cancelled),
        };
        match res {
            Ok(v) => {
                backoff.reset();
                return Ok(v);
            }
            Err(e) => {
                let wait = backoff.next_delay();
                if !failed(&e, wait) {
                    return Err(GaveUp::Final(e));
                }
                if !sleep_or_cancel(wait, cancel).await {
                    return Err(GaveUp::Cancelled);
                }
            }
        }
    }
}

/// Sleeps, or returns `false` if cancelled first.
pub async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_jittered_and_capped() {
        let mut b = Backoff::request();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        for _ in 0..40 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        let mut b = Backoff::request();
        for _ in 0..4 {
            b.next_delay();
        }
        // 500 ms × 2^4 = 8 s, jittered to 4..8 s.
        let d = b.next_delay();
        assert!(
            d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
            "{d:?}"
        );
        assert_eq!(b.attempts(), 5);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn the_cap_holds_after_many_attempts() {
        let mut b = Backoff::park();
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(900) && d >= Duration::from_secs(30));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries_until_success_a_final_error_or_cancel() {
        let cancel = CancellationToken::new();
        // Two failures, then success: two backoff waits.
        let mut calls = 0;
        let mut told = Vec::new();
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let t = tokio::time::Instant::now();
        let r: Result<u32, GaveUp<&str>> = until_ok(
            &mut b,
            &cancel,
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err("down")
                    } else {
                        Ok(n)
                    }
                }
            },
            |e, wait| {
                told.push((*e, wait));
                true
            },
        )
        .await;
        assert_eq!(r.unwrap(), 3);
        assert_eq!(told.len(), 2);
        assert!(t.elapsed() >= Duration::from_secs(1));
        assert_eq!(b.attempts(), 0, "reset on success");
        // A final error ends it with that error.
        let r: Result<(), GaveUp<&str>> =
            until_ok(&mut b, &cancel, || async { Err("fenced") }, |_, _| false).await;
        assert!(matches!(r, Err(GaveUp::Final("fenced"))));
        // Cancel ends it in the wait.
        let c2 = cancel.clone();
        let r: Result<(), GaveUp<&str>> = until_ok(
            &mut Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600)),
            &cancel,
            || async { Err("down") },
            |_, _| {
                c2.cancel();
                true
            },
        )
        .await;
        assert!(matches!(r, Err(GaveUp::Cancelled)));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_or_stops_at_cancel() {
        let cancel = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let t = tokio::time::Instant::now();
        assert!(b.wait(&cancel).await);
        assert!(t.elapsed() >= Duration::from_secs(5));
        cancel.cancel();
        let t = tokio::time::Instant::now();
        assert!(!b.wait(&cancel).await);
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
