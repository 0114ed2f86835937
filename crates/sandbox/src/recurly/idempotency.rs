//! `Idempotency-Key` handling for POST, PUT and DELETE: the first answer to a key is kept and
//! replayed with `Idempotency-Prior: true`; a key still being worked on is a simultaneous request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a key is remembered [U: undocumented; 24 h like Stripe's].
pub(crate) const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest key accepted; longer ones get 400 `bad_request` [U: undocumented, 255 like Stripe].
pub(crate) const MAX_KEY_LEN: usize = 255;
/// A request that has held its key this long without answering is taken to have died.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);
/// Expired keys are swept at most this often, so a busy site does not rescan on every key.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Which answers are remembered: everything except 5xx and 429, as Stripe does, so a client
/// retrying after a server fault or throttling gets a real second attempt, while a retried
/// validation error gives the same 422 again [U: Recurly's choice is undocumented].
pub(crate) fn answer_is_kept(status: u16) -> bool {
    status < 500 && status != 429
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct KeptAnswer {
    pub status: u16,
    pub body: String,
}

enum Slot {
    InFlight(Instant),
    Done(KeptAnswer, Instant),
}

/// What to do with a request carrying a key.
#[derive(Debug, PartialEq)]
pub(crate) enum Claim {
    /// First use: run the request, then [`IdempotencyKeys::finish`].
    Fresh,
    /// Seen before: answer with this.
    Replay(KeptAnswer),
    /// Another request with this key has not answered yet.
    InFlight,
}

/// Keys per API key (the caller prefixes it). The key alone names the request: reusing it for
/// another path or body replays the first answer [U: what Recurly does then is undocumented;
/// the bridge derives one key per logical operation, so it never meets this case].
#[derive(Default)]
pub(crate) struct IdempotencyKeys {
    slots: Mutex<HashMap<String, Slot>>,
    last_sweep: Mutex<Option<Instant>>,
}

impl IdempotencyKeys {
    pub fn claim(&self, key: &str, now: Instant) -> Claim {
        let mut slots = self.slots.lock();
        match slots.get(key) {
            Some(Slot::Done(answer, at)) if now.duration_since(*at) < KEY_TTL => {
                return Claim::Replay(answer.clone());
            }
            Some(Slot::InFlight(at)) if now.duration_since(*at) < ABANDONED_AFTER => {
                return Claim::InFlight;
            }
            _ => {}
        }
        slots.insert(key.to_owned(), Slot::InFlight(now));
        let mut last_sweep = self.last_sweep.lock();
        if last_sweep.is_none_or(|at| now.duration_since(at) >= SWEEP_INTERVAL) {
            *last_sweep = Some(now);
            slots.retain(|_, slot| match slot {
                Slot::Done(_, at) => now.duration_since(*at) < KEY_TTL,
                Slot::InFlight(at) => now.duration_since(*at) < ABANDONED_AFTER,
            });
        }
        Claim::Fresh
    }

    /// Records the answer to a fresh key, or frees the key when the answer is not kept.
    pub fn finish(&self, key: &str, answer: KeptAnswer, now: Instant) {
        let mut slots = self.slots.lock();
        if answer_is_kept(answer.status) {
            slots.insert(key.to_owned(), Slot::Done(answer, now));
        } else {
            slots.remove(key);
        }
    }

    pub fn clear(&self) {
        self.slots.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> KeptAnswer {
        KeptAnswer {
            status,
            body: format!("{{\"status\":{status}}}"),
        }
    }

    #[test]
    fn a_replayed_key_gets_the_first_answer_until_it_expires() {
        let keys = IdempotencyKeys::default();
        let t0 = Instant::now();
        assert_eq!(keys.claim("k", t0), Claim::Fresh);
        assert_eq!(keys.claim("k", t0), Claim::InFlight);
        keys.finish("k", answer(201), t0);
        assert_eq!(
            keys.claim("k", t0 + Duration::from_secs(5)),
            Claim::Replay(answer(201))
        );
        assert_eq!(keys.claim("k", t0 + KEY_TTL), Claim::Fresh);
    }

    #[test]
    fn server_errors_and_throttling_free_the_key_for_a_real_retry() {
        let keys = IdempotencyKeys::default();
        let t0 = Instant::now();
        for status in [500, 503, 429] {
            assert_eq!(keys.claim("k", t0), Claim::Fresh);
            keys.finish("k", answer(status), t0);
        }
        assert_eq!(keys.claim("k", t0), Claim::Fresh);
        keys.finish("k", answer(422), t0);
        assert_eq!(keys.claim("k", t0), Claim::Replay(answer(422)));
    }

    #[test]
    fn an_abandoned_claim_is_taken_over() {
        let keys = IdempotencyKeys::default();
        let t0 = Instant::now();
        assert_eq!(keys.claim("k", t0), Claim::Fresh);
        assert_eq!(keys.claim("k", t0 + ABANDONED_AFTER), Claim::Fresh);
    }
}
