//! The in-flight byte budget of push ingestion (`[ingest] max_inflight_bytes`): every batch
//! reserves what it is about to hold before it holds it, and gives it back when its guard drops.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;

/// Bytes shared by every batch in progress; a reservation that would pass the limit is refused
/// at once (the caller answers 503), never waited for, so a full budget holds no connection.
#[derive(Debug)]
pub(crate) struct InflightBudget {
    used: AtomicUsize,
    limit: usize,
    /// Mirrors `used` for `/metrics`.
    gauge: Gauge,
}

impl InflightBudget {
    pub(crate) fn new(limit: usize, gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
            gauge,
        })
    }

    /// Reserves `bytes`, or `None` when fewer are left.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut reservation = Reservation {
            budget: self.clone(),
            bytes: 0,
        };
        reservation.grow_to(bytes).then_some(reservation)
    }

    fn take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if taken {
            self.gauge.inc_by(bytes as i64);
        }
        taken
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.gauge.dec_by(bytes as i64);
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// A batch's share of the budget, given back when dropped, whichever way the batch ends
/// (answered, refused, timed out, its connection gone, its task panicked).
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<InflightBudget>,
    bytes: usize,
}

impl Reservation {
    /// Holds `total` bytes in all from now on; `false` (and the reservation unchanged) when the
    /// budget cannot give the difference.
    #[must_use]
    pub(crate) fn grow_to(&mut self, total: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        if !self.budget.take(total - self.bytes) {
            return false;
        }
        self.bytes = total;
        true
    }

    /// Holds only `total` bytes from now on (no-op when it holds less).
    pub(crate) fn shrink_to(&mut self, total: usize) {
        if total < self.bytes {
            self.budget.give_back(self.bytes - total);
            self.bytes = total;
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_pass_the_limit_and_give_everything_back() {
        let gauge = Gauge::default();
        let budget = InflightBudget::new(100, gauge.clone());
        let mut a = budget.reserve(60).expect("60 of 100");
        assert!(budget.reserve(41).is_none(), "41 more than the 40 left");
        let b = budget.reserve(40).expect("the 40 left");
        assert_eq!((budget.used(), gauge.get()), (100, 100));
        assert!(!a.grow_to(61), "nothing left to grow into");
        assert_eq!(
            a.bytes(),
            60,
            "a refused growth leaves the reservation as it was"
        );
        drop(b);
        assert!(a.grow_to(90));
        a.shrink_to(10);
        assert_eq!((a.bytes(), budget.used(), gauge.get()), (10, 10, 10));
        assert!(
            a.grow_to(5),
            "growing to less than is held keeps what is held"
        );
        assert_eq!(a.bytes(), 10);
        drop(a);
        assert_eq!((budget.used(), gauge.get()), (0, 0));
        assert!(budget.reserve(0).is_some());
        assert!(budget.reserve(usize::MAX).is_none(), "no overflow");
    }

    #[test]
    fn concurrent_reservations_add_up_exactly() {
        let budget = InflightBudget::new(1_000, Gauge::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let mut held = 0;
                    for _ in 0..10_000 {
                        if let Some(r) = budget.reserve(7) {
                            assert!(budget.used() <= 1_000);
                            held += r.bytes();
                        }
                    }
                    held
                })
            })
            .collect();
        let held: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(held > 0);
        assert_eq!(budget.used(), 0);
    }
}
