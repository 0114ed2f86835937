//! Sliding-window request counting, the way Recurly, Amplify and Teams count: a request is
//! refused when the window already holds `limit` requests.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The outcome of asking for one request's worth of budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests still available in the window after this one.
    pub remaining: u32,
    /// How long until the oldest counted request leaves the window.
    pub reset_after: Duration,
}

/// A sliding window of `limit` requests per `window`, one log of timestamps per key holder.
#[derive(Debug)]
pub struct SlidingWindow {
    limit: u32,
    window: Duration,
    hits: Mutex<VecDeque<Instant>>,
}

impl SlidingWindow {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            hits: Mutex::new(VecDeque::with_capacity(limit.min(8_192) as usize)),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Counts one request at `now` if the window has room.
    pub fn acquire(&self, now: Instant) -> Decision {
        let mut hits = self.hits.lock();
        while hits
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            hits.pop_front();
        }
        let allowed = (hits.len() as u32) < self.limit;
        if allowed {
            hits.push_back(now);
        }
        let reset_after = hits
            .front()
            .map(|t| self.window.saturating_sub(now.duration_since(*t)))
            .unwrap_or_default();
        Decision {
            allowed,
            limit: self.limit,
            remaining: self.limit.saturating_sub(hits.len() as u32),
            reset_after,
        }
    }

    /// Looks at the window without counting a request.
    pub fn peek(&self, now: Instant) -> Decision {
        let hits = self.hits.lock();
        let live = hits
            .iter()
            .filter(|t| now.duration_since(**t) < self.window)
            .count() as u32;
        let reset_after = hits
            .iter()
            .find(|t| now.duration_since(**t) < self.window)
            .map(|t| self.window.saturating_sub(now.duration_since(*t)))
            .unwrap_or_default();
        Decision {
            allowed: live < self.limit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(live),
            reset_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_recovers_when_the_window_slides() {
        let w = SlidingWindow::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            let d = w.acquire(t0 + Duration::from_secs(i));
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i as u32);
        }
        let refused = w.acquire(t0 + Duration::from_secs(10));
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset_after, Duration::from_secs(50));
        // The first hit leaves the window at t0+60s, making room for exactly one more.
        assert!(w.acquire(t0 + Duration::from_secs(60)).allowed);
        assert!(!w.acquire(t0 + Duration::from_secs(60)).allowed);
    }
}
