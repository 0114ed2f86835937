//! What every upstream client shares: which failures are worth another try, and the retry
//! policy (exponential back-off with jitter, never shorter than the upstream asked), and the
//! observer hook through which the clients report every exchange to the metrics.

mod observe;

pub use observe::{
    CallStatus, NoObserver, Observer, Upstream, UpstreamObserver, call_span, record_exchange,
    timed_wait,
};

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

/// A network error as one line: what failed and why (refused, DNS, time-out, TLS), without the
/// URL, which may carry a secret (a Teams webhook URL does).
pub fn network_error(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An error that knows whether trying again may help.
pub trait Transient {
    /// Throttling, 5xx, time-outs and network failures: another try may succeed.
    fn is_transient(&self) -> bool;
    /// How long the upstream asked us to wait, when it said.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// The longest wait a throttling upstream's `Retry-After` (or rate-limit reset) is honoured for
/// before giving up on that attempt.
pub const MAX_ASKED_WAIT: Duration = Duration::from_secs(120);

/// Retry settings. The default bounds one call to about half a minute of waiting, plus whatever
/// a throttling upstream asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    pub fn new(attempts: usize, min_delay: Duration, max_delay: Duration) -> Self {
        Self {
            attempts,
            min_delay,
            max_delay,
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the attempts are used up.
    pub async fn run<T, E, F, Fut>(&self, op: F) -> Result<T, E>
    where
        E: Transient + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_observed(None, op).await
    }

    /// As [`run`](Self::run), reporting to `throttled`'s observer every wait an upstream asked
    /// for (a 429's `Retry-After` or rate-limit reset) as a rate-limit wait of that upstream.
    pub async fn run_observed<T, E, F, Fut>(
        &self,
        throttled: Option<(&Observer, Upstream)>,
        op: F,
    ) -> Result<T, E>
    where
        E: Transient + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter();
        let max_delay = self.max_delay;
        op.retry(backoff)
            .when(E::is_transient)
            .adjust(move |err: &E, planned| match (err.retry_after(), planned) {
                // A throttled call waits as long as the upstream asked (up to MAX_ASKED_WAIT):
                // retrying earlier would only be refused again and count against the limit.
                (Some(asked), Some(planned)) => {
                    let wait = asked.min(MAX_ASKED_WAIT).max(planned.min(max_delay));
                    if let Some((observer, upstream)) = throttled {
                        observer.rate_limit_waited(upstream, wait);
                    }
                    Some(wait)
                }
                (_, planned) => planned,
            })
            .notify(|err: &E, delay| tracing::debug!(error = %err, ?delay, "upstream call failed; retrying"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Failure(bool);
    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failure (transient: {})", self.0)
        }
    }
    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    fn quick(attempts: usize) -> RetryPolicy {
        RetryPolicy::new(attempts, Duration::from_millis(1), Duration::from_millis(5))
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicUsize::new(0);
        let result = quick(5)
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Failure(true))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[derive(Debug)]
    struct Throttled;
    impl std::fmt::Display for Throttled {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "throttled")
        }
    }
    impl Transient for Throttled {
        fn is_transient(&self) -> bool {
            true
        }
        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_millis(300))
        }
    }

    #[tokio::test]
    async fn a_throttled_call_waits_as_long_as_the_upstream_asked() {
        let calls = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let result = quick(3)
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(Throttled)
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(result.is_ok());
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "waited {:?}",
            started.elapsed()
        );
    }

    #[derive(Default)]
    struct Waits(std::sync::Mutex<Vec<(Upstream, Duration)>>);
    impl UpstreamObserver for Waits {
        fn exchanged(&self, _: Upstream, _: &'static str, _: CallStatus, _: Duration) {}
        fn rate_limit_waited(&self, upstream: Upstream, waited: Duration) {
            self.0.lock().unwrap().push((upstream, waited));
        }
    }

    #[tokio::test]
    async fn a_wait_the_upstream_asked_for_is_reported_as_a_rate_limit_wait() {
        let waits = std::sync::Arc::new(Waits::default());
        let observer: Observer = waits.clone();
        let calls = AtomicUsize::new(0);
        let result = quick(3)
            .run_observed(Some((&observer, Upstream::Recurly)), || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(Throttled),
                    _ => Ok(()),
                }
            })
            .await;
        assert!(result.is_ok());
        assert_eq!(
            *waits.0.lock().unwrap(),
            [(Upstream::Recurly, Duration::from_millis(300))]
        );
        // A failure that asked for no wait is a retry, not a rate-limit wait.
        let calls = AtomicUsize::new(0);
        let _ = quick(2)
            .run_observed(Some((&observer, Upstream::Recurly)), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Failure(true))
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(waits.0.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried_and_attempts_are_bounded() {
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = quick(5)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Failure(false))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = quick(3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Failure(true))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
