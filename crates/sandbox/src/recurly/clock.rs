//! The sandbox's Recurly clock: real time plus an offset that `POST /_sandbox/clock` moves
//! forward, so tests can reach a renewal or a dunning retry without waiting for it.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, SecondsFormat, SubsecRound, Utc};

/// Real time plus an offset in milliseconds (never negative: the clock only moves forward).
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Now, to the millisecond: every time the clock gives out is exact in the route's format, so
    /// moving it `to` a listed time reaches that time exactly.
    pub fn now(&self) -> DateTime<Utc> {
        let real = Utc::now().trunc_subsecs(3);
        real + Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    /// Moves the clock so that it reads `to` now; `Err` with the current time when `to` is
    /// before it.
    pub fn move_to(&self, to: DateTime<Utc>) -> Result<DateTime<Utc>, DateTime<Utc>> {
        let now = self.now();
        if to < now {
            return Err(now);
        }
        // Rounded up, so the clock reads at least `to` afterwards.
        let ahead = (to - now + Duration::microseconds(999)).num_milliseconds();
        self.offset_ms.fetch_add(ahead, Ordering::SeqCst);
        Ok(self.now())
    }

    pub fn reset(&self) {
        self.offset_ms.store(0, Ordering::SeqCst);
    }
}

/// RFC 3339 with milliseconds and `Z`, the clock route's format.
pub(crate) fn rfc3339_ms(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
