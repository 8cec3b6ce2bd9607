//! The scheduler: the one place that decides which shard's request goes
//! next, and how often a shard asks at all.
//!
//! **Order.** Requests wait in four classes ([`Priority`]): pages left in a
//! window in flight (a started window is finished before anything else, so
//! no link expires and progress stays small); then backlog (a cursor more
//! than two `schedule.max_interval` behind); then active pairs; then quiet
//! ones. Within a class, arrival order. Only the request at the head of the
//! queue asks the budget, and it never blocks inside the budget: when there
//! is no permit yet it waits (at most [`ASK_AGAIN`]) and whoever is head
//! then asks — so a more urgent request that arrives while a quiet one
//! waits takes the next permit. A quiet request that waited its pair's
//! longest interval (`schedule.max_interval` since its last poll) is
//! promoted to active: no pair starves while the budget can visit it.
//!
//! **Fleet.** With Redis, the same order holds across processes: each
//! process's head records its class in the shared budget when it asks,
//! and the budget refuses a caller while another process has a more urgent
//! head waiting (see [`crate::coord::redis`]). A replica holding only quiet
//! pairs therefore gets permits only when no replica has active work.
//!
//! **How often** a shard asks, and with which class, is its [`Pacing`]
//! (the `pacing` module).
//!
//! It also bounds the pages in flight (fetched and not yet acknowledged by
//! the sink), so memory stays bounded whatever the number of shards. Only
//! the head of the queue takes a slot (waiters behind it hold none, so a
//! queue of quiet requests cannot keep the slots from an urgent one), and
//! it takes the slot before the permit: the permit's time must stay close
//! to the request's, so no waiting comes between them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

mod pacing;

pub use crate::coord::Priority;
use crate::coord::{Budget, BudgetUsage, CoordError, Permit, Take};
use crate::shard::Shard;
pub use pacing::{poll_interval, Activity, Pacing, ScheduleConfig, ACTIVITY_MEMORY};

/// At most this many pages are between request and acknowledgement at once.
pub const PAGES_IN_FLIGHT: usize = 8;
/// The head of the queue asks the budget again at least this often while
/// it waits (a process's head counts in the fleet's order only while it
/// keeps asking).
pub const ASK_AGAIN: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// A request waiting for its turn. Its class can only rise while it
/// waits: a request's urgency grows with the time it waited, and a class
/// fixed when it was queued would let it starve behind requests that became
/// more urgent meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub priority: Priority,
    /// When a quiet request becomes active (its pair's longest interval
    /// since its last poll).
    pub promote_at: Option<Instant>,
    /// When it becomes backlog (its cursor more than two longest intervals
    /// behind, as a catch-up window's would be).
    pub backlog_at: Option<Instant>,
}

impl Ask {
    pub fn new(priority: Priority) -> Self {
        Self {
            priority,
            promote_at: None,
            backlog_at: None,
        }
    }

    /// The next rise of class, if any is due later: when, and to what.
    fn next_rise(&self) -> Option<(Instant, Priority)> {
        [
            (self.promote_at, Priority::Active),
            (self.backlog_at, Priority::Backlog),
        ]
        .into_iter()
        .filter_map(|(at, to)| Some((at?, to)))
        .filter(|(_, to)| *to < self.priority)
        .min_by_key(|(at, _)| *at)
    }

    /// Rises to the class due at `now`; whether it rose.
    fn rise(&mut self, now: Instant) -> bool {
        let mut rose = false;
        while let Some((at, to)) = self.next_rise() {
            if at > now {
                break;
            }
            self.priority = to;
            rose = true;
        }
        rose
    }
}

/// What a waiting request does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Again,
    Promote,
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
    pub async fn grant(&self, _shard: &Shard, ask: Ask) -> Result<Grant, CoordError> {
        let started = Instant::now();
        let mut ask = ask;
        ask.rise(Instant::now());
        let mut turn = self.queue.join(ask.priority);
        // Taken only by the head: a request waiting behind others holds no
        // slot, so slots never go to less urgent requests first.
        let mut slot: Option<OwnedSemaphorePermit> = None;
        loop {
            let promote = async {
                match ask.next_rise() {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let changed = self.queue.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // At the head: a slot, then a permit. Anything that changes the
            // queue (a more urgent request) sends us round again.
            let step = if !turn.is_head() {
                slot = None;
                tokio::select! {
                    () = turn.head() => Step::Again,
                    () = promote => Step::Promote,
                }
            } else if slot.is_none() {
                tokio::select! {
                    s = self.in_flight.clone().acquire_owned() => {
                        slot = Some(s.map_err(|_| {
                            CoordError::Unavailable("the scheduler is closed".into())
                        })?);
                        Step::Again
                    }
                    () = &mut changed => Step::Again,
                    () = promote => Step::Promote,
                }
            } else {
                match self.budget.try_acquire(ask.priority).await? {
                    Take::Granted(permit) => {
                        drop(turn);
                        return Ok(Grant {
                            slot: Slot {
                                _slot: slot.take().expect("the head holds a slot"),
                            },
                            permit: permit.waited_since(started),
                        });
                    }
                    Take::Wait(wait) => {
                        tokio::select! {
                            () = tokio::time::sleep(wait.min(ASK_AGAIN)) => Step::Again,
                            () = &mut changed => Step::Again,
                            () = promote => Step::Promote,
                        }
                    }
                }
            };
            if step == Step::Promote && ask.rise(Instant::now()) {
                turn = self.queue.join(ask.priority);
            }
        }
    }

    /// Every shard of every process on this token waits this long (429, 401).
    pub async fn pause(&self, for_: Duration) {
        self.budget.pause(for_).await;
    }

    /// Ends the token's pause early (a new token to try).
    pub async fn resume(&self) {
        self.budget.resume().await;
    }

    /// What the budget has spent.
    pub async fn usage(&self) -> BudgetUsage {
        self.budget.usage().await
    }

    #[cfg(test)]
    /// Requests waiting, by class (most urgent first).
    pub fn waiting(&self) -> [usize; 4] {
        let st = lock(&self.queue.inner);
        st.classes.each_ref().map(VecDeque::len)
    }
}

/// Orders the waiters for a permit in one process: by class, then in
/// arrival order. Only the head of the queue may take a permit. A waiter
/// that is cancelled leaves the queue (its [`Turn`] is dropped).
#[derive(Debug, Default)]
pub struct FairQueue {
    inner: Mutex<QueueState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    next_ticket: u64,
    classes: [VecDeque<u64>; 4],
}

impl QueueState {
    fn head(&self) -> Option<u64> {
        self.classes.iter().find_map(|c| c.front()).copied()
    }
}

/// A place in a [`FairQueue`]; dropping it lets the next one go.
#[derive(Debug)]
pub struct Turn<'a> {
    queue: &'a FairQueue,
    ticket: u64,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.queue.inner);
        for c in &mut st.classes {
            c.retain(|t| *t != self.ticket);
        }
        drop(st);
        self.queue.changed.notify_waiters();
    }
}

impl Turn<'_> {
    /// Whether this place is the head of the queue now.
    pub fn is_head(&self) -> bool {
        lock(&self.queue.inner).head() == Some(self.ticket)
    }

    /// Waits until this place is the head of the queue.
    pub async fn head(&self) {
        loop {
            let notified = self.queue.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.queue.inner).head() == Some(self.ticket) {
                return;
            }
            notified.await;
        }
    }
}

impl FairQueue {
    /// Takes a place at the end of `priority`'s class.
    pub fn join(&self, priority: Priority) -> Turn<'_> {
        let mut st = lock(&self.inner);
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.classes[priority.rank()].push_back(ticket);
        drop(st);
        self.changed.notify_waiters();
        Turn {
            queue: self,
            ticket,
        }
    }

    #[cfg(test)]
    /// Waits until this caller is at the head of the queue.
    pub async fn wait_turn(&self, priority: Priority) -> Turn<'_> {
        let turn = self.join(priority);
        turn.head().await;
        turn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::memory::MemoryBudget;
    use crate::coord::BudgetConfig;

    #[tokio::test(start_paused = true)]
    async fn waiters_go_by_class_then_arrival() {
        let q = Arc::new(FairQueue::default());
        let head = q.wait_turn(Priority::Active).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, urgent) in [
            ("n1", Priority::Quiet),
            ("n2", Priority::Active),
            ("u1", Priority::PagesLeft),
        ] {
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
        assert_eq!(*lock(&order), vec!["u1", "n2", "n1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let q = Arc::new(FairQueue::default());
        let head = q.wait_turn(Priority::Active).await;
        let q2 = q.clone();
        let gone = tokio::spawn(async move {
            let _t = q2.wait_turn(Priority::PagesLeft).await;
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(head);
        let t = tokio::time::timeout(Duration::from_secs(1), q.wait_turn(Priority::Active)).await;
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
        let g1 = s.grant(&shard, Ask::new(Priority::Active)).await.unwrap();
        let _g2 = s.grant(&shard, Ask::new(Priority::Active)).await.unwrap();
        let third = tokio::time::timeout(
            Duration::from_secs(60),
            s.grant(&shard, Ask::new(Priority::PagesLeft)),
        )
        .await;
        assert!(third.is_err(), "a third page waits for a slot");
        drop(g1);
        let g3 = tokio::time::timeout(
            Duration::from_secs(1),
            s.grant(&shard, Ask::new(Priority::PagesLeft)),
        )
        .await;
        assert!(g3.is_ok());
    }

    /// Runs `asks` in order (each starts after the previous one queued, 1 s
    /// apart) against a budget of `per_minute`; returns who got permits in
    /// which order.
    async fn served_order(per_minute: u32, asks: Vec<(&'static str, Ask)>) -> Vec<&'static str> {
        let s = scheduler(per_minute, 8);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, ask) in asks {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let g = s.grant(&Shard::new(name, "e"), ask).await.unwrap();
                lock(&order).push(name);
                g
            }));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for t in tasks {
            drop(t.await.unwrap());
        }
        let v = lock(&order).clone();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_at_the_budget_does_not_hold_back_a_more_urgent_one() {
        // 6 permits a minute: one every 10 s. The first is served at once;
        // the next two wait for the budget when the urgent ones arrive, and
        // these go first all the same.
        let order = served_order(
            6,
            vec![
                ("quiet1", Ask::new(Priority::Quiet)),
                ("quiet2", Ask::new(Priority::Quiet)),
                ("active", Ask::new(Priority::Active)),
                ("backlog", Ask::new(Priority::Backlog)),
                ("pages", Ask::new(Priority::PagesLeft)),
            ],
        )
        .await;
        assert_eq!(
            order,
            vec!["quiet1", "pages", "backlog", "active", "quiet2"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_request_is_promoted_when_it_waited_its_longest_interval() {
        // One permit a minute. A quiet request promoted after 30 s goes
        // before an active request that arrives after its promotion (and
        // would go after it unpromoted).
        let t0 = Instant::now();
        let s = scheduler(1, 8);
        let g = s
            .grant(&Shard::new("x", "e"), Ask::new(Priority::Active))
            .await
            .unwrap();
        let s2 = s.clone();
        let quiet = tokio::spawn(async move {
            s2.grant(
                &Shard::new("q", "e"),
                Ask {
                    promote_at: Some(t0 + Duration::from_secs(30)),
                    ..Ask::new(Priority::Quiet)
                },
            )
            .await
            .unwrap()
        });
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert_eq!(s.waiting(), [0, 0, 1, 0], "promoted to active at 30 s");
        let s3 = s.clone();
        let late = tokio::spawn(async move {
            s3.grant(&Shard::new("late", "e"), Ask::new(Priority::Active))
                .await
                .unwrap()
        });
        tokio::task::yield_now().await;
        let q = quiet.await.unwrap();
        assert!(!late.is_finished(), "the promoted request went first");
        drop((g, q, late));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_whose_cursor_falls_far_behind_becomes_backlog() {
        // One permit a minute; a stream of backlog requests, one arriving
        // every 30 s, would starve an active request forever. Due for
        // backlog after 90 s, it is served before the backlog requests that
        // arrived after that.
        let s = scheduler(1, 8);
        let _first = s
            .grant(&Shard::new("first", "e"), Ask::new(Priority::Active))
            .await
            .unwrap();
        let t0 = Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let mut spawn = |name: &'static str, ask: Ask| {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let g = s.grant(&Shard::new(name, "e"), ask).await.unwrap();
                lock(&order).push(name);
                g
            }));
        };
        spawn(
            "active",
            Ask {
                backlog_at: Some(t0 + Duration::from_secs(90)),
                ..Ask::new(Priority::Active)
            },
        );
        for name in ["b1", "b2", "b3", "b4"] {
            tokio::time::sleep(Duration::from_secs(30)).await;
            spawn(name, Ask::new(Priority::Backlog));
        }
        for t in tasks {
            drop(t.await.unwrap());
        }
        // Permits at 60 s (b1, 30 s), 120 s (b2 at 60 s; active became
        // backlog at 90 s, behind b2), 180 s: active, then b3, b4.
        assert_eq!(*lock(&order), vec!["b1", "b2", "active", "b3", "b4"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_slot_goes_to_the_most_urgent_waiter() {
        // One slot, held. A quiet request waits for it at the head of the
        // queue; an active one arrives: when the slot frees, the active
        // one gets it.
        let s = scheduler(6000, 1);
        let held = s
            .grant(&Shard::new("h", "e"), Ask::new(Priority::Active))
            .await
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, p) in [("quiet", Priority::Quiet), ("active", Priority::Active)] {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let g = s.grant(&Shard::new(name, "e"), Ask::new(p)).await.unwrap();
                lock(&order).push(name);
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(g);
            }));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(s.waiting(), [0, 0, 1, 1], "both wait for the slot");
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*lock(&order), vec!["active", "quiet"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_grant() {
        let s = scheduler(6000, 8);
        s.pause(Duration::from_secs(90)).await;
        let t = tokio::time::Instant::now();
        let g = s
            .grant(&Shard::new("a", "b"), Ask::new(Priority::PagesLeft))
            .await
            .unwrap();
        assert!(t.elapsed() >= Duration::from_secs(90));
        assert!(g.permit.waited() >= Duration::from_secs(90));
        assert_eq!(s.usage().await.last_minute, 1);
        assert_eq!(s.usage().await.paused, None, "the pause is over");
        s.pause(Duration::from_secs(30)).await;
        assert_eq!(s.usage().await.paused, Some(Duration::from_secs(30)));
    }
}
