//! The embedded store: state in this process's memory, for a single instance; what must
//! survive a restart (the ledger, links, named queues) is journaled when a state file is given.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use billing_bridge_domain::trust::SubscriptionLink;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::ingest::Ingest;
use crate::journal::Journal;
use crate::ledger::{Intent, Ledger, Op, QueuedItem, Settled, WindowLedger};
use crate::{Claim, Lease, StoreError, Taken, epoch_ms};
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

/// An item of a named queue taken and not yet acknowledged nor handed back is handed out again
/// after this long (its consumer is taken for dead), unless the store is told otherwise.
pub const DEFAULT_RECLAIM_AFTER: Duration = Duration::from_secs(300);

struct LedgerState {
    ledger: Ledger,
    journal: Option<Journal>,
    /// Queue → item number → when it was handed out. Not journaled: after a restart every
    /// item not acknowledged is due again.
    taken: HashMap<String, HashMap<u64, Instant>>,
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
    /// Events a kind's queue may hold.
    pub(crate) capacity: usize,
    marks: Mutex<Marks>,
    ledger: Mutex<LedgerState>,
    /// Lease name → (fencing token, held until).
    leases: Mutex<HashMap<String, (u64, Instant)>>,
    next_token: AtomicU64,
    pub(crate) ingest: std::sync::Arc<Ingest>,
    /// Wakes the consumers waiting on named queues when an item is put.
    queued: Notify,
    pub(crate) reclaim_after: Duration,
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
            ledger: Mutex::new(LedgerState {
                ledger: Ledger::default(),
                journal: None,
                taken: HashMap::new(),
            }),
            leases: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            ingest: std::sync::Arc::new(Ingest::new()),
            queued: Notify::new(),
            reclaim_after: DEFAULT_RECLAIM_AFTER,
        }
    }

    /// A memory store whose ledger is kept in a journal file (see [`Journal`]).
    pub fn with_journal(capacity: usize, path: &std::path::Path) -> Result<Self, StoreError> {
        let (journal, ledger) = Journal::open(path)?;
        let mut store = Self::new(capacity);
        store.ingest = std::sync::Arc::new(Ingest::with_log(&crate::ingest_log_dir(path))?);
        *store.ledger.lock() = LedgerState {
            ledger,
            journal: Some(journal),
            taken: HashMap::new(),
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

    pub(crate) fn link_subscription(&self, link: SubscriptionLink) -> Result<(), StoreError> {
        self.ledger.lock().apply(Op::Linked(link), true)
    }

    pub(crate) fn watch_sequence(&self, topic: &str) -> Option<i64> {
        self.ledger
            .lock()
            .ledger
            .watch_sequences
            .get(topic)
            .copied()
    }

    pub(crate) fn set_watch_sequence(&self, topic: &str, sequence: i64) -> Result<(), StoreError> {
        self.ledger
            .lock()
            .apply(Op::WatchSequence(topic.to_owned(), sequence), true)
    }

    pub(crate) fn unlink_subscription(&self, amplify_id: &str) -> Result<(), StoreError> {
        self.ledger
            .lock()
            .apply(Op::Unlinked(amplify_id.to_owned()), true)
    }

    pub(crate) fn subscription_link(&self, amplify_id: &str) -> Option<SubscriptionLink> {
        self.ledger
            .lock()
            .ledger
            .subscriptions
            .get(amplify_id)
            .cloned()
    }

    pub(crate) fn subscription_links(&self) -> Vec<SubscriptionLink> {
        self.ledger
            .lock()
            .ledger
            .subscriptions
            .values()
            .cloned()
            .collect()
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

    /// Adds an item, refused when `capacity` items are already queued; journaled, and with
    /// `sync` on disk before it returns.
    pub(crate) fn put(
        &self,
        queue: &str,
        id: &str,
        body: &str,
        capacity: Option<usize>,
        sync: bool,
    ) -> Result<(), StoreError> {
        {
            let mut state = self.ledger.lock();
            let held = state.ledger.queues.get(queue);
            if let Some(capacity) = capacity
                && held.is_some_and(|q| q.items.len() >= capacity)
            {
                return Err(StoreError::QueueFull { capacity });
            }
            let number = held.map_or(0, |q| q.next);
            let item = QueuedItem {
                number,
                id: id.to_owned(),
                body: body.to_owned(),
                due_ms: epoch_ms(),
                attempt: 0,
            };
            state.apply(Op::QueuePut(queue.to_owned(), item), sync)?;
        }
        self.queued.notify_waiters();
        Ok(())
    }

    /// The first due item not in flight (or in flight past `reclaim_after`), marked taken; else
    /// how long until the next one comes due.
    fn take_due(&self, queue: &str) -> Result<Taken, Option<Duration>> {
        let now_ms = epoch_ms();
        let now = Instant::now();
        let mut guard = self.ledger.lock();
        let state = &mut *guard;
        let Some(items) = state.ledger.queues.get(queue) else {
            return Err(None);
        };
        let taken = state.taken.entry(queue.to_owned()).or_default();
        for &(due_ms, number) in &items.due {
            if due_ms > now_ms {
                return Err(Some(Duration::from_millis((due_ms - now_ms) as u64)));
            }
            if taken
                .get(&number)
                .is_some_and(|at| now.duration_since(*at) < self.reclaim_after)
            {
                continue;
            }
            taken.insert(number, now);
            let item = &items.items[&number];
            return Ok(Taken {
                tag: number.to_string(),
                id: item.id.clone(),
                body: item.body.clone(),
                attempt: item.attempt,
            });
        }
        // Only items in flight: look again when the oldest hand-out may be reclaimed.
        let reclaim = taken
            .values()
            .map(|at| (*at + self.reclaim_after).saturating_duration_since(now))
            .min();
        Err(reclaim)
    }

    pub(crate) async fn queue_take(
        &self,
        queue: &str,
        wait: Duration,
    ) -> Result<Option<Taken>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let put = self.queued.notified();
            let until = match self.take_due(queue) {
                Ok(taken) => return Ok(Some(taken)),
                Err(Some(next)) => deadline.min(tokio::time::Instant::now() + next),
                Err(None) => deadline,
            };
            if tokio::time::timeout_at(until, put).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Ok(None);
            }
        }
    }

    fn hand_out(taken: &Taken) -> Option<u64> {
        taken.tag.parse().ok()
    }

    /// Forgets a taken item; with `sync`, on disk before it returns.
    pub(crate) fn queue_ack(
        &self,
        queue: &str,
        taken: &Taken,
        sync: bool,
    ) -> Result<(), StoreError> {
        let Some(number) = Self::hand_out(taken) else {
            return Ok(());
        };
        let mut state = self.ledger.lock();
        if let Some(in_flight) = state.taken.get_mut(queue) {
            in_flight.remove(&number);
        }
        if !state
            .ledger
            .queues
            .get(queue)
            .is_some_and(|q| q.items.contains_key(&number))
        {
            return Ok(());
        }
        state.apply(Op::QueueAck(queue.to_owned(), number), sync)
    }

    pub(crate) fn queue_retry(
        &self,
        queue: &str,
        taken: &Taken,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let Some(number) = Self::hand_out(taken) else {
            return Ok(());
        };
        let mut state = self.ledger.lock();
        let in_flight = state
            .taken
            .get_mut(queue)
            .is_some_and(|t| t.remove(&number).is_some());
        if !in_flight {
            return Ok(());
        }
        let due_ms = epoch_ms().saturating_add(delay.as_millis() as i64);
        state.apply(
            Op::QueueRetry(queue.to_owned(), number, due_ms, taken.attempt + 1),
            true,
        )
    }

    pub(crate) fn queue_len(&self, queue: &str) -> usize {
        self.ledger
            .lock()
            .ledger
            .queues
            .get(queue)
            .map_or(0, |q| q.items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
