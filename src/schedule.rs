//! The scheduler: the one place that decides which shard's request goes
//! next. Its policy today: a shard with pages left in its window first,
//! then everyone else in the order they asked (so every shard gets its turn
//! within one sweep). The shard at the head of the queue alone waits for
//! the budget; when it has its permit, the next one may ask.
//!
//! It also bounds the pages in flight (fetched and not yet acknowledged by
//! the sink), so memory stays bounded whatever the number of shards. The
//! slot is taken before the permit: the permit's time must stay close to
//! the request's, so no waiting comes between them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::coord::{Budget, BudgetUsage, CoordError, Permit};
use crate::shard::Shard;

/// At most this many pages are between request and acknowledgement at once.
pub const PAGES_IN_FLIGHT: usize = 8;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How much a shard's next request matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The shard is inside a window: pages are left.
    PagesLeft,
    /// The shard starts a new window.
    NewWindow,
}

/// A page in flight: held from before the request until the sink
/// acknowledged the page.
#[derive(Debug)]
pub struct Slot {
    _slot: OwnedSemaphorePermit,
}

/// What the scheduler grants: a slot and a permit for one request.
#[derive(Debug)]
pub struct Grant {
    pub slot: Slot,
    pub permit: Permit,
}

/// Orders the requests of one process against one budget.
pub struct Scheduler {
    /// The token's budget.
    budget: Arc<dyn Budget>,
    /// Pages in flight.
    in_flight: Arc<Semaphore>,
    /// Who asks the budget next.
    queue: FairQueue,
}

impl Scheduler {
    pub fn new(budget: Arc<dyn Budget>, pages_in_flight: usize) -> Self {
        Self {
            budget,
            in_flight: Arc::new(Semaphore::new(pages_in_flight.max(1))),
            queue: FairQueue::default(),
        }
    }

    /// Waits for this shard's turn, a page slot and a budget permit.
    pub async fn grant(&self, _shard: &Shard, priority: Priority) -> Result<Grant, CoordError> {
        let slot = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CoordError::Unavailable("the scheduler is closed".into()))?;
        let turn = self.queue.wait_turn(priority == Priority::PagesLeft).await;
        let permit = self.budget.acquire().await?;
        drop(turn);
        Ok(Grant {
            slot: Slot { _slot: slot },
            permit,
        })
    }

    /// Every shard of every process on this token waits this long (429, 401).
    pub async fn pause(&self, for_: Duration) {
        self.budget.pause(for_).await;
    }

    /// What the budget has spent.
    pub async fn usage(&self) -> BudgetUsage {
        self.budget.usage().await
    }
}

/// Orders the waiters for a permit in one process: urgent waiters (a shard
/// with pages left in its window) first, then everyone else in arrival
/// order. Only the head of the queue may take a permit. A waiter that is
/// cancelled leaves the queue (its [`Turn`] is dropped).
#[derive(Debug, Default)]
pub struct FairQueue {
    inner: Mutex<QueueState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    next_ticket: u64,
    urgent: VecDeque<u64>,
    normal: VecDeque<u64>,
}

impl QueueState {
    fn head(&self) -> Option<u64> {
        self.urgent.front().or(self.normal.front()).copied()
    }
}

/// Being at the head of a [`FairQueue`]; dropping it lets the next one go.
#[derive(Debug)]
pub struct Turn<'a> {
    queue: &'a FairQueue,
    ticket: u64,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.queue.inner);
        st.urgent.retain(|t| *t != self.ticket);
        st.normal.retain(|t| *t != self.ticket);
        drop(st);
        self.queue.changed.notify_waiters();
    }
}

impl FairQueue {
    /// Waits until this caller is at the head of the queue.
    pub async fn wait_turn(&self, urgent: bool) -> Turn<'_> {
        let turn = {
            let mut st = lock(&self.inner);
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            if urgent {
                st.urgent.push_back(ticket);
            } else {
                st.normal.push_back(ticket);
            }
            Turn {
                queue: self,
                ticket,
            }
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.inner).head() == Some(turn.ticket) {
                return turn;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::memory::MemoryBudget;
    use crate::coord::BudgetConfig;

    #[tokio::test(start_paused = true)]
    async fn urgent_waiters_go_first() {
        let q = Arc::new(FairQueue::default());
        let head = q.wait_turn(false).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, urgent) in [("n1", false), ("n2", false), ("u1", true)] {
            let (q, order) = (q.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _t = q.wait_turn(urgent).await;
                lock(&order).push(name);
            }));
            tokio::task::yield_now().await;
        }
        drop(head);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*lock(&order), vec!["u1", "n1", "n2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let q = Arc::new(FairQueue::default());
        let head = q.wait_turn(false).await;
        let q2 = q.clone();
        let gone = tokio::spawn(async move {
            let _t = q2.wait_turn(true).await;
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(head);
        let t = tokio::time::timeout(Duration::from_secs(1), q.wait_turn(false)).await;
        assert!(
            t.is_ok(),
            "the queue is not stuck behind an abandoned ticket"
        );
    }

    fn scheduler(per_minute: u32, slots: usize) -> Arc<Scheduler> {
        let budget = Arc::new(MemoryBudget::new(BudgetConfig {
            per_minute,
            per_day: 100_000,
            ..BudgetConfig::default()
        }));
        Arc::new(Scheduler::new(budget, slots))
    }

    #[tokio::test(start_paused = true)]
    async fn pages_in_flight_are_bounded() {
        let s = scheduler(6000, 2);
        let shard = Shard::new("a", "b");
        let g1 = s.grant(&shard, Priority::NewWindow).await.unwrap();
        let _g2 = s.grant(&shard, Priority::NewWindow).await.unwrap();
        let third = tokio::time::timeout(
            Duration::from_secs(60),
            s.grant(&shard, Priority::PagesLeft),
        )
        .await;
        assert!(third.is_err(), "a third page waits for a slot");
        drop(g1);
        let g3 = tokio::time::timeout(Duration::from_secs(1), s.grant(&shard, Priority::PagesLeft))
            .await;
        assert!(g3.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn pages_left_overtake_new_windows_at_the_budget() {
        // 6 permits a minute: one every 10 s. Three new windows ask first,
        // then one shard with pages left: the first is served at once, the
        // second is already waiting at the budget, and the shard with pages
        // left goes before the third.
        let s = scheduler(6, 8);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, p) in [
            ("new1", Priority::NewWindow),
            ("new2", Priority::NewWindow),
            ("new3", Priority::NewWindow),
            ("pages", Priority::PagesLeft),
        ] {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let g = s.grant(&Shard::new(name, "e"), p).await.unwrap();
                lock(&order).push(name);
                g
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            drop(t.await.unwrap());
        }
        assert_eq!(*lock(&order), vec!["new1", "new2", "pages", "new3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_grant() {
        let s = scheduler(6000, 8);
        s.pause(Duration::from_secs(90)).await;
        let t = tokio::time::Instant::now();
        let g = s
            .grant(&Shard::new("a", "b"), Priority::PagesLeft)
            .await
            .unwrap();
        assert!(t.elapsed() >= Duration::from_secs(90));
        assert!(g.permit.waited() >= Duration::from_secs(90));
        assert_eq!(s.usage().await.last_minute, 1);
    }
}
