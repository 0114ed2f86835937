//! The one seam for billing-bridge state (design.md §5): dedupe marks, the intake queue, leases
//! with fencing tokens, and the usage ledger with its watermark. `Store::Memory` is the embedded
//! default for one process (its ledger optionally journaled to a file so it survives restarts);
//! and a cache of the links between Amplify subscriptions and billing;
//! the Redis implementation, for many instances behind a load balancer, joins this enum with the
//! same operations.

mod ingest;
mod journal;
pub mod ledger;
mod memory;
mod redis;

use std::time::Duration;

use billing_bridge_domain::events::ResourceEvent;
use billing_bridge_domain::transactions::GroupKey;
use billing_bridge_domain::usage::Window;
use thiserror::Error;

use ledger::{Intent, Settled, WindowLedger};

pub use ingest::{IngestOutcome, IngestWindow};
pub use memory::MemoryStore;
pub use redis::RedisStore;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the intake queue is full ({capacity} events waiting); try again shortly")]
    QueueFull { capacity: usize },
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error(
        "the state file {0} is in use by another billing-bridge process; ask that one (POST /admin/report) or stop it first"
    )]
    InUse(String),
    #[error("the {0} lease was lost to another holder; this run stops")]
    LeaseLost(String),
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

/// A queued event handed to a consumer; acknowledge it once processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Names the delivery for [`Store::ack`] (a queue position, or a stream entry id).
    pub tag: String,
    pub event: ResourceEvent,
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

    pub async fn enqueue(&self, event: ResourceEvent) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.enqueue(event),
            Store::Redis(r) => r.enqueue(event).await,
        }
    }

    /// The next event, waiting up to `wait`; `None` when none came.
    pub async fn next_event(&self, wait: Duration) -> Result<Option<Delivery>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.next_event(wait).await),
            Store::Redis(r) => r.next_event(wait).await,
        }
    }

    pub async fn ack(&self, tag: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.ack(tag);
                Ok(())
            }
            Store::Redis(r) => r.ack(tag).await,
        }
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

    /// True the first time it is asked for `key` (durably), false ever after.
    pub async fn first_time(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => m.first_time(key),
            Store::Redis(r) => r.first_time(key).await,
        }
    }

    /// Events waiting (not yet handed out).
    pub async fn queue_depth(&self) -> Result<usize, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.queue_depth()),
            Store::Redis(r) => r.queue_depth().await,
        }
    }

    /// Takes a batch of pushed transactions (grouped by window), arriving in `generation` (see
    /// [`ingest_generation`]): an id is counted unless this generation or the previous one
    /// holds it already. Returns only once what it accepted is durable.
    pub async fn ingest(
        &self,
        generation: i64,
        batch: &[IngestWindow],
    ) -> Result<IngestOutcome, StoreError> {
        match self {
            Store::Memory(m) => m.ingest.ingest(generation, batch).await,
            Store::Redis(r) => r.ingest(generation, batch).await,
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
    /// admits can repeat them any more).
    pub async fn forget_ingested_ids(&self, generation: i64) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.ingest.forget_generations(generation);
                Ok(())
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
