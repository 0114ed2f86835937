//! The embedded store: state in this process's memory, for a single instance.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use billing_bridge_domain::events::ResourceEvent;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::ingest::Ingest;
use crate::journal::Journal;
use crate::ledger::{Intent, Ledger, Op, Settled, WindowLedger};
use crate::{Claim, Delivery, Lease, StoreError};
use billing_bridge_domain::usage::Window;

/// The fewest claims between two sweeps of expired marks.
const SWEEP_EVERY: usize = 4_096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Processing,
    Done,
}

struct Marks {
    by_event: HashMap<String, (Mark, Instant)>,
    since_sweep: usize,
    /// Claims before the next sweep: as many as the marks the last sweep kept (at least
    /// `SWEEP_EVERY`). A sweep visits every mark, so spacing sweeps by the map's size keeps the
    /// cost per claim constant while the map holds at most about twice the live marks.
    sweep_after: usize,
}

struct Queue {
    waiting: VecDeque<(u64, ResourceEvent)>,
    in_flight: HashMap<u64, ResourceEvent>,
    next_tag: u64,
}

struct LedgerState {
    ledger: Ledger,
    journal: Option<Journal>,
}

impl LedgerState {
    fn apply(&mut self, op: Op, sync: bool) -> Result<(), StoreError> {
        if let Some(journal) = &mut self.journal {
            journal.append(&op, sync)?;
        }
        self.ledger.apply(op);
        if let Some(journal) = &mut self.journal
            && journal.needs_compaction()
        {
            journal.compact(&self.ledger)?;
        }
        Ok(())
    }
}

pub struct MemoryStore {
    capacity: usize,
    marks: Mutex<Marks>,
    queue: Mutex<Queue>,
    arrived: Notify,
    ledger: Mutex<LedgerState>,
    /// Lease name → (fencing token, held until).
    leases: Mutex<HashMap<String, (u64, Instant)>>,
    next_token: AtomicU64,
    pub(crate) ingest: Ingest,
}

impl MemoryStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            marks: Mutex::new(Marks {
                by_event: HashMap::new(),
                since_sweep: 0,
                sweep_after: SWEEP_EVERY,
            }),
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                in_flight: HashMap::new(),
                next_tag: 0,
            }),
            arrived: Notify::new(),
            ledger: Mutex::new(LedgerState {
                ledger: Ledger::default(),
                journal: None,
            }),
            leases: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            ingest: Ingest::new(),
        }
    }

    /// A memory store whose ledger is kept in a journal file (see [`Journal`]).
    pub fn with_journal(capacity: usize, path: &std::path::Path) -> Result<Self, StoreError> {
        let (journal, ledger) = Journal::open(path)?;
        let mut store = Self::new(capacity);
        store.ingest = Ingest::with_log(&crate::ingest_log_dir(path))?;
        *store.ledger.lock() = LedgerState {
            ledger,
            journal: Some(journal),
        };
        Ok(store)
    }

    pub(crate) fn acquire_lease(&self, name: &str, ttl: Duration) -> Option<Lease> {
        let now = Instant::now();
        let mut leases = self.leases.lock();
        if leases.get(name).is_some_and(|(_, until)| *until > now) {
            return None;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed) + 1;
        leases.insert(name.to_owned(), (token, now + ttl));
        Some(Lease {
            name: name.to_owned(),
            token,
        })
    }

    pub(crate) fn release_lease(&self, lease: &Lease) {
        let mut leases = self.leases.lock();
        if leases
            .get(&lease.name)
            .is_some_and(|(t, _)| *t == lease.token)
        {
            leases.remove(&lease.name);
        }
    }

    /// A write guarded by a lease goes through only while the lease is still the current one.
    fn check_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = Instant::now();
        match self.leases.lock().get(&lease.name) {
            Some((token, until)) if *token == lease.token && *until > now => Ok(()),
            _ => Err(StoreError::LeaseLost(lease.name.clone())),
        }
    }

    pub(crate) fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        match self.leases.lock().get_mut(&lease.name) {
            Some((token, until)) if *token == lease.token && *until > now => {
                *until = now + ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseLost(lease.name.clone())),
        }
    }

    pub(crate) fn window_ledger(&self, window: Window) -> WindowLedger {
        self.ledger
            .lock()
            .ledger
            .windows
            .get(&window)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn windows_done(&self, windows: &[Window]) -> Vec<bool> {
        let state = self.ledger.lock();
        windows
            .iter()
            .map(|w| state.ledger.windows.get(w).is_some_and(|e| e.done))
            .collect()
    }

    pub(crate) fn record_intents(
        &self,
        lease: &Lease,
        window: Window,
        intents: Vec<Intent>,
    ) -> Result<(), StoreError> {
        self.check_lease(lease)?;
        self.ledger.lock().apply(Op::Intents(window, intents), true)
    }

    pub(crate) fn settle(
        &self,
        lease: &Lease,
        window: Window,
        settled: Vec<Settled>,
    ) -> Result<(), StoreError> {
        self.check_lease(lease)?;
        // Not synced: a settlement lost to a power cut only means the record is sent again
        // under the same idempotency key.
        self.ledger
            .lock()
            .apply(Op::Settled(window, settled), false)
    }

    pub(crate) fn mark_done(
        &self,
        lease: &Lease,
        window: Window,
        watermark: Option<i64>,
    ) -> Result<(), StoreError> {
        self.check_lease(lease)?;
        let mut state = self.ledger.lock();
        state.apply(Op::Done(window), watermark.is_none())?;
        if let Some(end) = watermark {
            state.apply(Op::Watermark(end), true)?;
        }
        Ok(())
    }

    pub(crate) fn watermark(&self) -> Option<i64> {
        self.ledger.lock().ledger.watermark
    }

    pub(crate) fn prune(&self, before_ms: i64) -> Result<(), StoreError> {
        self.ledger.lock().apply(Op::Prune(before_ms), false)
    }

    pub(crate) fn save_links(&self, snapshot: String) -> Result<(), StoreError> {
        self.ledger.lock().apply(Op::Links(snapshot), false)
    }

    pub(crate) fn links(&self) -> Option<String> {
        self.ledger.lock().ledger.links.clone()
    }

    pub(crate) fn first_time(&self, key: &str) -> Result<bool, StoreError> {
        let mut state = self.ledger.lock();
        if state.ledger.once.contains(key) {
            return Ok(false);
        }
        state.apply(Op::Once(key.to_owned()), true)?;
        Ok(true)
    }

    pub(crate) fn claim_event(&self, event_id: &str, hold: Duration) -> Claim {
        let now = Instant::now();
        let mut marks = self.marks.lock();
        marks.since_sweep += 1;
        if marks.since_sweep >= marks.sweep_after {
            marks.by_event.retain(|_, (_, until)| *until > now);
            marks.since_sweep = 0;
            marks.sweep_after = marks.by_event.len().max(SWEEP_EVERY);
        }
        match marks.by_event.get(event_id) {
            Some((Mark::Done, until)) if *until > now => Claim::Done,
            Some((Mark::Processing, until)) if *until > now => Claim::InFlight,
            _ => {
                marks
                    .by_event
                    .insert(event_id.to_owned(), (Mark::Processing, now + hold));
                Claim::Claimed
            }
        }
    }

    pub(crate) fn finish_event(&self, event_id: &str, keep: Duration) {
        let done = (Mark::Done, Instant::now() + keep);
        let mut marks = self.marks.lock();
        // The claim left a mark under this id: overwrite it rather than allocate the key again.
        match marks.by_event.get_mut(event_id) {
            Some(mark) => *mark = done,
            None => {
                marks.by_event.insert(event_id.to_owned(), done);
            }
        }
    }

    pub(crate) fn abandon_event(&self, event_id: &str) {
        let mut marks = self.marks.lock();
        if matches!(marks.by_event.get(event_id), Some((Mark::Processing, _))) {
            marks.by_event.remove(event_id);
        }
    }

    pub(crate) fn enqueue(&self, event: ResourceEvent) -> Result<(), StoreError> {
        {
            let mut queue = self.queue.lock();
            if queue.waiting.len() + queue.in_flight.len() >= self.capacity {
                return Err(StoreError::QueueFull {
                    capacity: self.capacity,
                });
            }
            queue.next_tag += 1;
            let tag = queue.next_tag;
            queue.waiting.push_back((tag, event));
        }
        self.arrived.notify_one();
        Ok(())
    }

    pub(crate) async fn next_event(&self, wait: Duration) -> Option<Delivery> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.arrived.notified();
            {
                let mut queue = self.queue.lock();
                if let Some((tag, event)) = queue.waiting.pop_front() {
                    queue.in_flight.insert(tag, event.clone());
                    return Some(Delivery {
                        tag: tag.to_string(),
                        event,
                    });
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    pub(crate) fn ack(&self, tag: &str) {
        if let Ok(tag) = tag.parse::<u64>() {
            self.queue.lock().in_flight.remove(&tag);
        }
    }

    pub(crate) fn queue_depth(&self) -> usize {
        self.queue.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_bridge_domain::events::ResourceKind;

    fn event(id: &str) -> ResourceEvent {
        ResourceEvent {
            event_id: id.into(),
            kind: ResourceKind::ProductPlan,
            name: "silver".into(),
            resource_id: "p1".into(),
            self_link: "/catalog/v1/productplans/silver".into(),
            deleted: false,
            correlation_id: None,
            billing_id: None,
            attempt: 0,
            trace_parent: None,
        }
    }

    #[test]
    fn an_event_is_claimed_once_and_a_released_claim_can_be_taken_again() {
        let store = MemoryStore::new(10);
        let hold = Duration::from_secs(30);
        assert_eq!(store.claim_event("e1", hold), Claim::Claimed);
        assert_eq!(store.claim_event("e1", hold), Claim::InFlight);
        store.abandon_event("e1");
        assert_eq!(store.claim_event("e1", hold), Claim::Claimed);
        store.finish_event("e1", Duration::from_secs(3600));
        assert_eq!(store.claim_event("e1", hold), Claim::Done);
        store.abandon_event("e1");
        assert_eq!(
            store.claim_event("e1", hold),
            Claim::Done,
            "a finished event stays finished"
        );
    }

    #[test]
    fn an_expired_processing_mark_can_be_claimed_again() {
        let store = MemoryStore::new(10);
        assert_eq!(store.claim_event("e1", Duration::ZERO), Claim::Claimed);
        assert_eq!(
            store.claim_event("e1", Duration::from_secs(30)),
            Claim::Claimed
        );
    }

    #[test]
    fn expired_marks_are_swept_and_live_ones_kept() {
        let store = MemoryStore::new(10);
        store.claim_event("kept", Duration::from_secs(3600));
        for i in 0..3 * SWEEP_EVERY {
            store.claim_event(&format!("e{i}"), Duration::ZERO);
        }
        let marks = store.marks.lock().by_event.len();
        assert!(marks <= SWEEP_EVERY + 1, "{marks} marks left");
        assert_eq!(
            store.claim_event("kept", Duration::from_secs(30)),
            Claim::InFlight
        );
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_hands_events_out_in_order() {
        let store = MemoryStore::new(2);
        store.enqueue(event("a")).unwrap();
        store.enqueue(event("b")).unwrap();
        assert_eq!(
            store.enqueue(event("c")),
            Err(StoreError::QueueFull { capacity: 2 })
        );
        let first = store.next_event(Duration::from_millis(10)).await.unwrap();
        assert_eq!(first.event.event_id, "a");
        // Handed out but not acknowledged still counts against the capacity.
        assert!(store.enqueue(event("c")).is_err());
        store.ack(&first.tag);
        store.enqueue(event("c")).unwrap();
        assert_eq!(
            store
                .next_event(Duration::from_millis(10))
                .await
                .unwrap()
                .event
                .event_id,
            "b"
        );
        assert_eq!(store.queue_depth(), 1);
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_when_an_event_arrives() {
        let store = std::sync::Arc::new(MemoryStore::new(10));
        let consumer = {
            let store = store.clone();
            tokio::spawn(async move { store.next_event(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.enqueue(event("late")).unwrap();
        assert_eq!(consumer.await.unwrap().unwrap().event.event_id, "late");
        assert!(store.next_event(Duration::from_millis(20)).await.is_none());
    }
}
