//! The one seam for billing-bridge state (design.md §5): dedupe marks and the intake queue.
//! `Store::Memory` is the embedded default for one process; the Redis implementation, for many
//! instances behind a load balancer, joins this enum with the same operations.

mod memory;

use std::time::Duration;

use billing_bridge_domain::events::ResourceEvent;
use thiserror::Error;

pub use memory::MemoryStore;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the intake queue is full ({capacity} events waiting); try again shortly")]
    QueueFull { capacity: usize },
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
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
    pub tag: u64,
    pub event: ResourceEvent,
}

pub enum Store {
    Memory(MemoryStore),
}

impl Store {
    pub fn memory(queue_capacity: usize) -> Self {
        Store::Memory(MemoryStore::new(queue_capacity))
    }

    /// Claims an event id: `processing` for `hold`, until [`finish_event`](Self::finish_event)
    /// or [`abandon_event`](Self::abandon_event).
    pub async fn claim_event(&self, event_id: &str, hold: Duration) -> Result<Claim, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.claim_event(event_id, hold)),
        }
    }

    /// Marks a claimed event done, remembered for `keep`.
    pub async fn finish_event(&self, event_id: &str, keep: Duration) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.finish_event(event_id, keep);
                Ok(())
            }
        }
    }

    /// Releases a claim whose event was not accepted, so a resend is processed.
    pub async fn abandon_event(&self, event_id: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.abandon_event(event_id);
                Ok(())
            }
        }
    }

    pub async fn enqueue(&self, event: ResourceEvent) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.enqueue(event),
        }
    }

    /// The next event, waiting up to `wait`; `None` when none came.
    pub async fn next_event(&self, wait: Duration) -> Result<Option<Delivery>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.next_event(wait).await),
        }
    }

    pub async fn ack(&self, tag: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.ack(tag);
                Ok(())
            }
        }
    }

    /// Events waiting (not yet handed out).
    pub async fn queue_depth(&self) -> Result<usize, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.queue_depth()),
        }
    }
}
