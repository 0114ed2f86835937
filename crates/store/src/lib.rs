//! The one seam for billing-bridge state (design.md §5): dedupe marks, the intake queue, leases
//! with fencing tokens, and the usage ledger with its watermark. `Store::Memory` is the embedded
//! default for one process (its ledger optionally journaled to a file so it survives restarts);
//! a cache of the links between Amplify subscriptions and billing, and the links the bridge made
//! itself (the only billing subscriptions it ends);
//! the Redis implementation, for many instances behind a load balancer, joins this enum with the
//! same operations. Named queues with delayed redelivery (`queue_*`) carry work that must
//! survive a restart and be tried again later, such as the notification outbox.

mod framing;
mod ingest;
mod journal;
pub mod ledger;
mod memory;
mod redis;

use std::time::Duration;

use billing_bridge_domain::events::{ResourceEvent, ResourceKind};
use billing_bridge_domain::transactions::GroupKey;
use billing_bridge_domain::trust::SubscriptionLink;
use billing_bridge_domain::usage::Window;
use thiserror::Error;

use ledger::{Intent, Settled, WindowLedger};

pub use ingest::{IngestOutcome, IngestWindow};
pub use memory::{DEFAULT_RECLAIM_AFTER, MemoryStore};
pub use redis::RedisStore;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the intake queue is full ({capacity} events not yet finished); try again shortly")]
    QueueFull { capacity: usize },
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error(
        "the state file {0} is in use by another billing-bridge process; ask that one (POST /admin/report) or stop it first"
    )]
    InUse(String),
    #[error("the {0} lease was lost to another holder; this run stops")]
    LeaseLost(String),
    /// A file of the embedded store is damaged where no crash could have cut it: nothing is
    /// dropped silently, an operator decides.
    #[error(
        "{file} is damaged at byte {offset}: {detail}. Nothing was changed; restore the file from a backup, or move it aside to start without what it holds"
    )]
    Corrupt {
        file: String,
        offset: u64,
        detail: String,
    },
}

/// A lease held under a fencing token: guarded writes go through only while it is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub token: u64,
}

/// What a dedupe claim found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time: the caller now holds the event until it finishes or abandons it.
    Claimed,
    /// Already accepted before: nothing to do.
    Done,
    /// Another request holds it right now (a concurrent duplicate).
    InFlight,
}

/// A queued event handed to its kind's consumer: acknowledge it once processed
/// ([`Store::ack`]), or hand it back for a later pass ([`Store::retry_event`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The event, its `attempt` the passes it had before this one.
    pub event: ResourceEvent,
    item: Taken,
}

/// The queue each kind of event waits in, so plans and subscriptions proceed apart.
pub fn event_queue(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::ProductPlan => "events:plans",
        ResourceKind::Subscription => "events:subscriptions",
    }
}

/// The queue the notification outbox lives in (cards and mails waiting for their channel).
pub const NOTICES_QUEUE: &str = "notices";

/// Every kind of event with a queue of its own.
pub const EVENT_KINDS: [ResourceKind; 2] = [ResourceKind::ProductPlan, ResourceKind::Subscription];

/// An item taken from a named queue (see [`Store::queue_take`]): in flight until it is
/// acknowledged ([`Store::queue_ack`]) or handed back for later ([`Store::queue_retry`]); if
/// neither happens (its consumer died), it is handed out again after the store's
/// `reclaim_after`, or when the embedded store is opened again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// Names this hand-out for [`Store::queue_ack`] and [`Store::queue_retry`].
    pub tag: String,
    /// The id the item was put with.
    pub id: String,
    pub body: String,
    /// Times it was handed back for later before this hand-out (0 the first time).
    pub attempt: u32,
}

/// The wall clock in epoch ms: due times of queued items outlive the process.
pub(crate) fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// One Store lives for the whole process, behind an Arc: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    pub fn memory(queue_capacity: usize) -> Self {
        Store::Memory(MemoryStore::new(queue_capacity))
    }

    /// The shared store on Redis; connects lazily (see [`RedisStore::new`]).
    pub fn redis(
        url: &str,
        queue_capacity: usize,
        consumer: String,
        reclaim_after: Duration,
    ) -> Result<Self, StoreError> {
        RedisStore::new(url, queue_capacity, consumer, reclaim_after).map(Store::Redis)
    }

    /// Whether the store answers (always, in memory).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.ping().await,
        }
    }

    /// The memory store with its ledger journaled to `state_file`.
    pub fn memory_with_journal(
        queue_capacity: usize,
        state_file: &std::path::Path,
    ) -> Result<Self, StoreError> {
        MemoryStore::with_journal(queue_capacity, state_file).map(Store::Memory)
    }

    /// How long an item taken from a named queue may stay unacknowledged before it is handed
    /// out again (the Redis store is given it at [`Store::redis`]).
    pub fn with_reclaim_after(mut self, reclaim_after: Duration) -> Self {
        if let Store::Memory(m) = &mut self {
            m.reclaim_after = reclaim_after;
        }
        self
    }

    /// Claims an event id: `processing` for `hold`, until [`finish_event`](Self::finish_event)
    /// or [`abandon_event`](Self::abandon_event).
    pub async fn claim_event(&self, event_id: &str, hold: Duration) -> Result<Claim, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.claim_event(event_id, hold)),
            Store::Redis(r) => r.claim_event(event_id, hold).await,
        }
    }

    /// Marks a claimed event done, remembered for `keep`.
    pub async fn finish_event(&self, event_id: &str, keep: Duration) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.finish_event(event_id, keep);
                Ok(())
            }
            Store::Redis(r) => r.finish_event(event_id, keep).await,
        }
    }

    /// Releases a claim whose event was not accepted, so a resend is processed.
    pub async fn abandon_event(&self, event_id: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.abandon_event(event_id);
                Ok(())
            }
            Store::Redis(r) => r.abandon_event(event_id).await,
        }
    }

    /// Queues an event in its kind's queue, refused with [`StoreError::QueueFull`] when that
    /// queue holds `queue_capacity` events not yet finished (waiting, in flight or scheduled).
    /// The embedded store journals it without waiting for the disk: a process crash keeps it,
    /// a power cut may lose the last ones (the reconciler finds their resources again).
    pub async fn enqueue(&self, event: ResourceEvent) -> Result<(), StoreError> {
        let queue = event_queue(event.kind);
        let body = serde_json::to_string(&event).expect("events serialize");
        match self {
            Store::Memory(m) => m.put(queue, &event.event_id, &body, Some(m.capacity), false),
            Store::Redis(r) => {
                r.queue_put(queue, &event.event_id, &body, Some(r.capacity))
                    .await
            }
        }
    }

    /// The next event of `kind`, waiting up to `wait`; `None` when none came. An event handed
    /// back for later comes again when due; one whose consumer died, after `reclaim_after`.
    pub async fn next_event(
        &self,
        kind: ResourceKind,
        wait: Duration,
    ) -> Result<Option<Delivery>, StoreError> {
        let queue = event_queue(kind);
        if let Store::Redis(r) = self {
            r.migrate_legacy_queue().await?;
        }
        let Some(item) = self.queue_take(queue, wait).await? else {
            return Ok(None);
        };
        match serde_json::from_str::<ResourceEvent>(&item.body) {
            Ok(mut event) => {
                event.attempt = item.attempt;
                Ok(Some(Delivery { event, item }))
            }
            Err(_) => {
                // Unreadable (another release's, or damaged): dropped, not handed out forever.
                self.queue_ack(queue, &item).await?;
                Ok(None)
            }
        }
    }

    /// Done with an event. The embedded store does not wait for the disk: an acknowledgement
    /// lost to a power cut only means one more (level-triggered, harmless) pass.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let queue = event_queue(delivery.event.kind);
        match self {
            Store::Memory(m) => m.queue_ack(queue, &delivery.item, false),
            Store::Redis(_) => self.queue_ack(queue, &delivery.item).await,
        }
    }

    /// Hands an event back for another pass after `delay`, acknowledging this delivery in the
    /// same step (see [`Store::queue_retry`]).
    pub async fn retry_event(
        &self,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), StoreError> {
        self.queue_retry(event_queue(delivery.event.kind), &delivery.item, delay)
            .await
    }

    /// Takes the named lease for `ttl` unless someone holds it; `None` when held.
    pub async fn acquire_lease(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.acquire_lease(name, ttl)),
            Store::Redis(r) => r.acquire_lease(name, ttl).await,
        }
    }

    /// Keeps a lease for another `ttl`; fails when it was lost meanwhile.
    pub async fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.extend_lease(lease, ttl),
            Store::Redis(r) => r.extend_lease(lease, ttl).await,
        }
    }

    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.release_lease(lease);
                Ok(())
            }
            Store::Redis(r) => r.release_lease(lease).await,
        }
    }

    /// What the ledger holds for a window (empty when nothing was reported yet).
    pub async fn window_ledger(&self, window: Window) -> Result<WindowLedger, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.window_ledger(window)),
            Store::Redis(r) => r.window_ledger(window).await,
        }
    }

    /// Whether each window is done.
    pub async fn windows_done(&self, windows: &[Window]) -> Result<Vec<bool>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.windows_done(windows)),
            Store::Redis(r) => r.windows_done(windows).await,
        }
    }

    /// Writes intents durably, before their usage records are sent.
    pub async fn record_intents(
        &self,
        lease: &Lease,
        window: Window,
        intents: Vec<Intent>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.record_intents(lease, window, intents),
            Store::Redis(r) => r.record_intents(lease, window, intents).await,
        }
    }

    /// Records what became of sent (or skipped) reports.
    pub async fn settle(
        &self,
        lease: &Lease,
        window: Window,
        settled: Vec<Settled>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.settle(lease, window, settled),
            Store::Redis(r) => r.settle(lease, window, settled).await,
        }
    }

    /// Marks a window done and, when given, moves the watermark to `watermark` (never back).
    pub async fn mark_done(
        &self,
        lease: &Lease,
        window: Window,
        watermark: Option<i64>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.mark_done(lease, window, watermark),
            Store::Redis(r) => r.mark_done(lease, window, watermark).await,
        }
    }

    /// The end of the last window reported in order, if any.
    pub async fn watermark(&self) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.watermark()),
            Store::Redis(r) => r.watermark().await,
        }
    }

    /// Drops the per-pair details of done windows ending at or before `before_ms`.
    pub async fn prune_ledger(&self, before_ms: i64) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.prune(before_ms),
            Store::Redis(r) => r.prune(before_ms).await,
        }
    }

    /// Keeps the latest snapshot of the links between Amplify subscriptions and billing (a
    /// cache: Amplify's attributes stay the source of truth).
    pub async fn save_links(&self, snapshot: String) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.save_links(snapshot),
            Store::Redis(r) => r.save_links(snapshot).await,
        }
    }

    /// The last snapshot [`save_links`](Self::save_links) kept.
    pub async fn links(&self) -> Result<Option<String>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.links()),
            Store::Redis(r) => r.links().await,
        }
    }

    /// Records, durably, that the bridge made `link.recurly_subscription` for an Amplify
    /// subscription: the only billing subscriptions the bridge ever ends (design.md §6, 7).
    pub async fn link_subscription(&self, link: &SubscriptionLink) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.link_subscription(link.clone()),
            Store::Redis(r) => r.link_subscription(link).await,
        }
    }

    /// The last sequence id the bridge processed from WatchTopic `topic`; `None` before the
    /// first read.
    pub async fn watch_sequence(&self, topic: &str) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.watch_sequence(topic)),
            Store::Redis(r) => r.watch_sequence(topic).await,
        }
    }

    /// Records, durably, that the events of WatchTopic `topic` up to `sequence` are queued.
    pub async fn set_watch_sequence(&self, topic: &str, sequence: i64) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.set_watch_sequence(topic, sequence),
            Store::Redis(r) => r.set_watch_sequence(topic, sequence).await,
        }
    }

    /// Forgets the link of an Amplify subscription whose billing has ended.
    pub async fn unlink_subscription(&self, amplify_id: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.unlink_subscription(amplify_id),
            Store::Redis(r) => r.unlink_subscription(amplify_id).await,
        }
    }

    /// The link the bridge recorded for an Amplify subscription id, if any.
    pub async fn subscription_link(
        &self,
        amplify_id: &str,
    ) -> Result<Option<SubscriptionLink>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.subscription_link(amplify_id)),
            Store::Redis(r) => r.subscription_link(amplify_id).await,
        }
    }

    /// Every link the bridge recorded (one per live billed subscription).
    pub async fn subscription_links(&self) -> Result<Vec<SubscriptionLink>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.subscription_links()),
            Store::Redis(r) => r.subscription_links().await,
        }
    }

    /// True the first time it is asked for `key` (durably), false ever after.
    pub async fn first_time(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => m.first_time(key),
            Store::Redis(r) => r.first_time(key).await,
        }
    }

    /// Events not yet finished, of every kind: waiting, in flight or scheduled for a retry.
    pub async fn queue_depth(&self) -> Result<usize, StoreError> {
        let mut depth = 0;
        for kind in EVENT_KINDS {
            depth += self.queue_len(event_queue(kind)).await?;
        }
        Ok(depth)
    }

    /// Adds an item to the named queue `queue`, due now; returns once it is durable. `id` is the
    /// caller's stable name for it (carried, not checked for repeats).
    pub async fn queue_put(&self, queue: &str, id: &str, body: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.put(queue, id, body, None, true),
            Store::Redis(r) => r.queue_put(queue, id, body, None).await,
        }
    }

    /// The next due item of `queue`, waiting up to `wait` for one (an item coming due meanwhile
    /// counts); `None` when none came. An item taken and never acknowledged nor handed back is
    /// handed out again after `reclaim_after`.
    pub async fn queue_take(
        &self,
        queue: &str,
        wait: Duration,
    ) -> Result<Option<Taken>, StoreError> {
        match self {
            Store::Memory(m) => m.queue_take(queue, wait).await,
            Store::Redis(r) => r.queue_take(queue, wait).await,
        }
    }

    /// Done with a taken item: it is never handed out again (durably, before this returns).
    pub async fn queue_ack(&self, queue: &str, taken: &Taken) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.queue_ack(queue, taken, true),
            Store::Redis(r) => r.queue_ack(queue, taken).await,
        }
    }

    /// Hands a taken item back, due again after `delay`, its attempt counted: the
    /// acknowledgement of this hand-out and the durable scheduling of the next are one step, so
    /// no crash can lose the item or leave it both in flight and scheduled. Nothing happens when
    /// the hand-out was already acknowledged (another consumer took it over and finished it).
    pub async fn queue_retry(
        &self,
        queue: &str,
        taken: &Taken,
        delay: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.queue_retry(queue, taken, delay),
            Store::Redis(r) => r.queue_retry(queue, taken, delay).await,
        }
    }

    /// Items of `queue` not yet acknowledged: due, in flight and scheduled for later.
    pub async fn queue_len(&self, queue: &str) -> Result<usize, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.queue_len(queue)),
            Store::Redis(r) => r.queue_len(queue).await,
        }
    }

    /// Takes a batch of pushed transactions (grouped by window), arriving in `generation` (see
    /// [`ingest_generation`]): an id is counted unless this generation or the previous one
    /// holds it already, or its group is new to a window already holding `max_groups` groups
    /// (then it is refused, listed in [`IngestOutcome::too_many_groups`]). Returns only once
    /// what it accepted is durable.
    pub async fn ingest(
        &self,
        generation: i64,
        max_groups: usize,
        batch: &[IngestWindow],
    ) -> Result<IngestOutcome, StoreError> {
        match self {
            Store::Memory(m) => m.ingest.ingest(generation, max_groups, batch).await,
            Store::Redis(r) => r.ingest(generation, max_groups, batch).await,
        }
    }

    /// A window's pushed transactions, counted per group.
    pub async fn ingested(&self, window: Window) -> Result<Vec<(GroupKey, u64)>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.ingest.counts(window.start_ms)),
            Store::Redis(r) => r.ingested(window).await,
        }
    }

    /// Starts of the windows holding pushed transactions, oldest first.
    pub async fn ingested_windows(&self) -> Result<Vec<i64>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.ingest.windows()),
            Store::Redis(r) => r.ingested_windows().await,
        }
    }

    /// Forgets the transaction ids of generations before `generation` (no event the horizon
    /// admits can repeat them any more); the embedded store rewrites the logs of windows whose
    /// ids are all forgotten as their counts.
    pub async fn forget_ingested_ids(&self, generation: i64) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                // Rewriting logs as their counts syncs files: off the async threads.
                let ingest = m.ingest.clone();
                tokio::task::spawn_blocking(move || ingest.forget_generations(generation))
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("ingest log compaction: {e}")))?
            }
            Store::Redis(r) => r.forget_generations(generation).await,
        }
    }

    /// Drops pushed transactions of windows ending at or before `before_ms`.
    pub async fn prune_ingested(&self, before_ms: i64, len_ms: i64) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.ingest.prune(before_ms, len_ms);
                Ok(())
            }
            Store::Redis(r) => r.prune_ingested(before_ms, len_ms).await,
        }
    }
}

/// The generation an arrival at `now_ms` belongs to: generations are `horizon + skew` long, so
/// any event the horizon admits (timestamp at most `horizon` old, at most `skew` ahead) arrived
/// first in the current generation or the one before.
pub fn ingest_generation(now_ms: i64, horizon_ms: i64, skew_ms: i64) -> i64 {
    now_ms.div_euclid((horizon_ms + skew_ms).max(1))
}

/// Where the memory store keeps pushed transactions, beside its state file.
pub fn ingest_log_dir(state_file: &std::path::Path) -> std::path::PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".ingest");
    std::path::PathBuf::from(name)
}
