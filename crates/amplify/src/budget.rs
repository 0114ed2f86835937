//! Amplify's 25 requests a minute (reference §1.4) as one process-wide budget with lanes:
//! provisioning first, then reconciliation and WatchTopic reads, then reporting.
//!
//! [`Schedule`] is the pure discipline (a sliding window of grants over an injected clock, one
//! FIFO per lane, the next free slot to the oldest caller of the highest lane waiting, lower
//! lanes capped below the limit); [`Budget`] runs it over tokio's clock. A caller waiting in a
//! lower lane never keeps a provisioning call from the next free slot, and lower lanes leave
//! slots free, so a long reporting run delays provisioning by one slot at most.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// Who is calling, highest priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Provisioning passes (plans, subscriptions): a person may be waiting for them.
    Provisioning,
    /// Reconcile passes and WatchTopic reads: catching up on what was missed.
    Reconciliation,
    /// Reporting runs: large, and nobody waits for a particular call.
    Reporting,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Provisioning, Lane::Reconciliation, Lane::Reporting];

    fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Provisioning => "provisioning",
            Lane::Reconciliation => "reconciliation",
            Lane::Reporting => "reporting",
        }
    }
}

/// A place in a lane's queue, from [`Schedule::join`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    lane: Lane,
    id: u64,
}

/// What a waiting caller is to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// The slot is taken: call now.
    Go,
    /// Next in line: the next slot frees at this instant (on the schedule's clock).
    WaitUntil(Duration),
    /// Someone is ahead (an older caller of the lane, or any caller of a higher lane).
    Behind,
}

/// Amplify's window is not documented beyond "25 requests per minute" (§1.4) [I]. Grants are
/// counted over this window: a minute and a margin, so that calls granted a window apart still
/// arrive at Amplify more than a minute apart however their latencies differ.
pub const WINDOW: Duration = Duration::from_secs(61);

/// The pure budget: at most `limit` slots granted in any [`WINDOW`], and a FIFO of tickets per
/// lane. Lower lanes may fill the window only up to their cap, so slots are always left for
/// provisioning (a third of the limit while reporting, a quarter while reconciling): a
/// provisioning call never waits for a reporting run, and within the limit it is served at once.
/// Time is a `Duration` since any fixed origin the caller chooses.
#[derive(Debug)]
pub struct Schedule {
    limit: usize,
    granted: VecDeque<Duration>,
    queues: [VecDeque<u64>; 3],
    next_id: u64,
}

impl Schedule {
    /// `None` for 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<Schedule> {
        (per_minute > 0).then(|| Schedule {
            limit: per_minute as usize,
            granted: VecDeque::new(),
            queues: Default::default(),
            next_id: 0,
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Slots of the window a lane may fill.
    pub fn cap(&self, lane: Lane) -> usize {
        let reserve = match lane {
            Lane::Provisioning => 0,
            Lane::Reconciliation => self.limit / 4,
            Lane::Reporting => self.limit / 3,
        };
        (self.limit - reserve).max(1)
    }

    /// Takes a place at the back of `lane`.
    pub fn join(&mut self, lane: Lane) -> Ticket {
        let id = self.next_id;
        self.next_id += 1;
        self.queues[lane.index()].push_back(id);
        Ticket { lane, id }
    }

    /// Gives a place up (the caller went away before its turn).
    pub fn leave(&mut self, ticket: Ticket) {
        self.queues[ticket.lane.index()].retain(|id| *id != ticket.id);
    }

    /// Callers waiting per lane, in [`Lane::ALL`] order.
    pub fn waiting(&self) -> [usize; 3] {
        [
            self.queues[0].len(),
            self.queues[1].len(),
            self.queues[2].len(),
        ]
    }

    /// The ticket the next free slot goes to: the oldest of the highest lane with callers.
    fn head(&self) -> Option<u64> {
        self.queues.iter().find_map(|q| q.front().copied())
    }

    /// Asks for `ticket`'s turn at `now`; on [`Turn::Go`] the slot is taken and the ticket has
    /// left its queue. `now` never goes back.
    pub fn poll(&mut self, ticket: Ticket, now: Duration) -> Turn {
        while self.granted.front().is_some_and(|t| *t + WINDOW <= now) {
            self.granted.pop_front();
        }
        if self.head() != Some(ticket.id) {
            return Turn::Behind;
        }
        let cap = self.cap(ticket.lane);
        if self.granted.len() >= cap {
            // The window holds fewer than `cap` once this many of the oldest grants left it.
            return Turn::WaitUntil(self.granted[self.granted.len() - cap] + WINDOW);
        }
        self.granted.push_back(now);
        self.queues[ticket.lane.index()].pop_front();
        Turn::Go
    }
}

/// [`Schedule`] shared by every call of the process, on tokio's clock.
pub struct Budget {
    schedule: Mutex<Schedule>,
    /// Woken whenever a slot is taken or a caller joins or leaves: the new head looks again.
    changed: Notify,
    origin: tokio::time::Instant,
}

/// Leaves the queue if the waiting future is dropped (a caller's time-out, a shutdown).
struct Place<'a> {
    budget: &'a Budget,
    ticket: Option<Ticket>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.budget.lock().leave(ticket);
            self.budget.changed.notify_waiters();
        }
    }
}

impl Budget {
    pub fn new(schedule: Schedule) -> Budget {
        Budget {
            schedule: Mutex::new(schedule),
            changed: Notify::new(),
            origin: tokio::time::Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        // The schedule is consistent after every method: a panic elsewhere leaves nothing half
        // done, so a poisoned lock is taken over.
        self.schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Callers waiting per lane, in [`Lane::ALL`] order.
    pub fn waiting(&self) -> [usize; 3] {
        self.lock().waiting()
    }

    /// Waits for a slot in `lane`.
    pub async fn acquire(&self, lane: Lane) {
        let ticket = self.lock().join(lane);
        self.changed.notify_waiters();
        let mut place = Place {
            budget: self,
            ticket: Some(ticket),
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before looking, so a change between the look and the wait is not lost.
            notified.as_mut().enable();
            let now = tokio::time::Instant::now().saturating_duration_since(self.origin);
            let turn = self.lock().poll(ticket, now);
            match turn {
                Turn::Go => {
                    place.ticket = None;
                    self.changed.notify_waiters();
                    return;
                }
                Turn::WaitUntil(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(self.origin + at) => {}
                        _ = &mut notified => {}
                    }
                }
                Turn::Behind => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// Serves every waiting ticket in slot order, as the async loop would, from `start`:
    /// (ticket, instant) pairs.
    fn drain(
        schedule: &mut Schedule,
        tickets: &[Ticket],
        start: Duration,
    ) -> Vec<(Ticket, Duration)> {
        let mut now = start;
        let mut served = Vec::new();
        let mut left: Vec<Ticket> = tickets.to_vec();
        while !left.is_empty() {
            let mut next_time = None;
            let mut progressed = false;
            for t in left.clone() {
                match schedule.poll(t, now) {
                    Turn::Go => {
                        served.push((t, now));
                        left.retain(|x| *x != t);
                        progressed = true;
                        break;
                    }
                    Turn::WaitUntil(when) => next_time = Some(when),
                    Turn::Behind => {}
                }
            }
            if !progressed {
                now = next_time.expect("someone is next in line");
            }
        }
        served
    }

    #[test]
    fn no_minute_ever_holds_more_than_the_limit_and_a_busy_lane_runs_at_its_cap() {
        assert!(Schedule::per_minute(0).is_none());
        for (per_minute, lane) in [
            (25, Lane::Provisioning),
            (25, Lane::Reporting),
            (1, Lane::Reporting),
            (600, Lane::Reconciliation),
        ] {
            let mut s = Schedule::per_minute(per_minute).unwrap();
            let cap = s.cap(lane);
            let tickets: Vec<Ticket> = (0..per_minute * 10).map(|_| s.join(lane)).collect();
            let times: Vec<Duration> = drain(&mut s, &tickets, Duration::ZERO)
                .into_iter()
                .map(|(_, t)| t)
                .collect();
            for (i, t) in times.iter().enumerate() {
                let in_window = times[i..]
                    .iter()
                    .take_while(|u| **u < *t + at(60.0))
                    .count();
                assert!(
                    in_window <= cap,
                    "{per_minute} {lane:?}: {in_window} calls in the minute from {t:?}"
                );
            }
            // Busy, the lane gets its cap every window: 10 limits' worth take about 10 windows
            // at the full limit, 10 × limit / cap windows below it.
            let windows = times.last().unwrap().as_secs_f64() / WINDOW.as_secs_f64();
            let expected = (tickets.len() as f64 / cap as f64).ceil() - 1.0;
            assert!(
                (windows - expected).abs() < 1e-6,
                "{per_minute} {lane:?}: {windows} windows, {expected} expected"
            );
        }
        let s = Schedule::per_minute(25).unwrap();
        assert_eq!(
            Lane::ALL.map(|l| s.cap(l)),
            [25, 19, 17],
            "provisioning keeps a quarter of the window from reconciliation and a third from reporting"
        );
    }

    #[test]
    fn higher_lanes_take_the_next_slot_and_lanes_are_fifo() {
        let mut s = Schedule::per_minute(25).unwrap();
        let r1 = s.join(Lane::Reporting);
        let r2 = s.join(Lane::Reporting);
        let c1 = s.join(Lane::Reconciliation);
        let p1 = s.join(Lane::Provisioning);
        let p2 = s.join(Lane::Provisioning);
        assert_eq!(s.waiting(), [2, 1, 2]);
        // Only the head of the highest lane may go; everyone else is behind.
        for t in [r1, r2, c1, p2] {
            assert_eq!(s.poll(t, Duration::ZERO), Turn::Behind);
        }
        let order: Vec<Lane> = drain(&mut s, &[r2, r1, c1, p2, p1], Duration::ZERO)
            .into_iter()
            .map(|(t, _)| t.lane)
            .collect();
        assert_eq!(
            order,
            [
                Lane::Provisioning,
                Lane::Provisioning,
                Lane::Reconciliation,
                Lane::Reporting,
                Lane::Reporting
            ]
        );
        // FIFO within a lane: r1 joined before r2.
        let mut s = Schedule::per_minute(25).unwrap();
        let a = s.join(Lane::Reporting);
        let b = s.join(Lane::Reporting);
        assert_eq!(s.poll(b, Duration::ZERO), Turn::Behind);
        assert_eq!(s.poll(a, Duration::ZERO), Turn::Go);
        assert_eq!(s.poll(b, Duration::ZERO), Turn::Go);
    }

    #[test]
    fn a_provisioning_call_during_a_reporting_run_is_served_within_one_slot() {
        let mut s = Schedule::per_minute(25).unwrap();
        // A reporting run queues 200 calls at once and spends what it may of the budget.
        let run: Vec<Ticket> = (0..200).map(|_| s.join(Lane::Reporting)).collect();
        let mut now = Duration::ZERO;
        let mut served = 0;
        // Serve the run into its third window, until it waits for slots to free.
        loop {
            match s.poll(run[served], now) {
                Turn::Go => served += 1,
                Turn::WaitUntil(t) if served < 40 => now = t,
                Turn::WaitUntil(_) => break,
                Turn::Behind => unreachable!("the run's tickets are served in order"),
            }
        }
        assert_eq!((served, now), (51, WINDOW * 2), "17 calls a window");
        // An approval arrives with 198-odd reporting calls waiting: its calls (7 here, as an
        // approval needs) are served at once, none after the next reporting call.
        let arrival = now + at(0.5);
        let mut approval: Vec<Ticket> = (0..7).map(|_| s.join(Lane::Provisioning)).collect();
        assert_eq!(s.poll(run[served], arrival), Turn::Behind);
        for call in approval.drain(..) {
            assert_eq!(
                s.poll(call, arrival),
                Turn::Go,
                "provisioning waits for nobody"
            );
        }
        // The run goes on after it, within its cap.
        assert!(matches!(s.poll(run[served], arrival), Turn::WaitUntil(_)));
    }

    #[test]
    fn a_full_window_goes_to_the_waiting_provisioning_call_first() {
        let mut s = Schedule::per_minute(25).unwrap();
        // Provisioning itself filled the window.
        for _ in 0..25 {
            let t = s.join(Lane::Provisioning);
            assert_eq!(s.poll(t, Duration::ZERO), Turn::Go);
        }
        let report = s.join(Lane::Reporting);
        let Turn::WaitUntil(_) = s.poll(report, at(1.0)) else {
            panic!("the window is full");
        };
        let provisioning = s.join(Lane::Provisioning);
        assert_eq!(s.poll(report, at(2.0)), Turn::Behind);
        // The first slot to free is the provisioning call's.
        assert_eq!(s.poll(provisioning, at(2.0)), Turn::WaitUntil(WINDOW));
        assert_eq!(s.poll(provisioning, WINDOW), Turn::Go);
    }

    #[test]
    fn a_caller_that_leaves_gives_its_turn_to_the_next() {
        let mut s = Schedule::per_minute(25).unwrap();
        // Nobody's turn is lost with the ticket of a caller gone away.
        let p = s.join(Lane::Provisioning);
        let r = s.join(Lane::Reporting);
        assert_eq!(s.poll(r, Duration::ZERO), Turn::Behind);
        s.leave(p);
        assert_eq!(s.poll(r, Duration::ZERO), Turn::Go);
        assert_eq!(s.waiting(), [0, 0, 0]);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_budget_serves_a_late_provisioning_call_before_a_queued_reporting_run() {
        let budget = std::sync::Arc::new(Budget::new(Schedule::per_minute(25).unwrap()));
        let started = tokio::time::Instant::now();
        // A reporting run takes its cap (17) and queues 20 more calls.
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut run = Vec::new();
        for i in 0..37 {
            let (budget, order) = (budget.clone(), order.clone());
            run.push(tokio::spawn(async move {
                budget.acquire(Lane::Reporting).await;
                order.lock().unwrap().push(format!("r{i}"));
            }));
        }
        while budget.waiting()[2] > 20 || order.lock().unwrap().len() < 17 {
            tokio::task::yield_now().await;
        }
        for _ in 0..7 {
            budget.acquire(Lane::Provisioning).await;
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the approval's calls go at once"
        );
        order.lock().unwrap().push("approval".into());
        for task in run {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(
            order.iter().position(|x| x == "approval"),
            Some(17),
            "{order:?}"
        );
        assert!(
            started.elapsed() >= WINDOW,
            "the rest of the run waited for the window"
        );
    }
}
