//! How notifications are retried: exponential back-off with jitter on transient failures only,
//! waiting at least as long as the upstream asked.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::NotifyError;

/// Retry settings; the defaults bound one notification to about half a minute.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
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
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, NotifyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, NotifyError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter();
        let max_delay = self.max_delay;
        op.retry(backoff)
            .when(NotifyError::is_transient)
            .adjust(move |err, planned| {
                // Wait as long as the upstream asked, if that is longer than planned, but never
                // longer than the policy's ceiling.
                match (err.retry_after(), planned) {
                    (Some(asked), Some(planned)) => Some(asked.max(planned).min(max_delay)),
                    (_, planned) => planned,
                }
            })
            .notify(|err, delay| {
                tracing::debug!(error = %err, ?delay, "notification failed; retrying");
            })
            .await
    }
}
