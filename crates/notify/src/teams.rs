//! Posts provider cards to an MS Teams channel, legacy incoming webhook or Workflows trigger,
//! within Teams' per-webhook rate and retrying what Teams says is temporary.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};

use crate::{NotifyError, ProviderCard};
use billing_bridge_upstream::{
    NoObserver, Observer, RetryPolicy, Upstream, call_span, record_exchange, timed_wait,
};
use std::time::Instant;
use tracing::Instrument;

const UPSTREAM: &str = "MS Teams";
/// The one operation, as metrics and spans name it.
const OPERATION: &str = "post card";

/// Where provider cards go: a Teams channel, or nowhere.
pub enum ProviderChannel {
    Off,
    Teams(TeamsClient),
}

impl ProviderChannel {
    /// Posts the card; `Ok(false)` when cards are switched off.
    pub async fn post(&self, card: &ProviderCard) -> Result<bool, NotifyError> {
        match self {
            ProviderChannel::Off => Ok(false),
            ProviderChannel::Teams(client) => client.post(card).await.map(|()| true),
        }
    }
}

pub struct TeamsClient {
    http: reqwest::Client,
    url: SecretString,
    limiter: DefaultDirectRateLimiter,
    retry: RetryPolicy,
    observer: Observer,
}

/// What a Teams answer means. Legacy connectors answer 200 with `1`, and report throttling and
/// downstream errors inside a 200 body; Workflows answer 202 (reference §8.1, §8.3, §10).
fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> Result<(), NotifyError> {
    match status {
        200 if body.trim() == "1" => Ok(()),
        200 if body.contains("429") || body.contains("ApplicationThrottled") => {
            Err(NotifyError::Throttled {
                upstream: UPSTREAM,
                retry_after,
            })
        }
        200 => Err(NotifyError::Rejected {
            upstream: UPSTREAM,
            status,
            detail: body.chars().take(300).collect(),
        }),
        202 => Ok(()),
        429 => Err(NotifyError::Throttled {
            upstream: UPSTREAM,
            retry_after,
        }),
        500.. => Err(NotifyError::Unavailable {
            upstream: UPSTREAM,
            status,
        }),
        _ => Err(NotifyError::Rejected {
            upstream: UPSTREAM,
            status,
            detail: body.chars().take(300).collect(),
        }),
    }
}

impl TeamsClient {
    pub fn new(http: reqwest::Client, url: SecretString, requests_per_second: u32) -> Self {
        // Teams counts over a sliding second; a token bucket with a burst would let a burst plus
        // its refill land in one second. Spacing posts evenly (burst 1), 5% wider than the
        // limit for network jitter, keeps every sliding second within it.
        let spacing = Duration::from_secs(1).mul_f64(1.05 / f64::from(requests_per_second.max(1)));
        let quota = Quota::with_period(spacing)
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::MIN);
        Self {
            http,
            url,
            limiter: RateLimiter::direct(quota),
            retry: RetryPolicy::default(),
            observer: NoObserver::shared(),
        }
    }

    /// Reports every exchange and rate-limit wait to `observer` (the metrics).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    /// Shorter retries, for tests and for the `check` command.
    pub fn with_retry(mut self, attempts: usize, min_delay: Duration, max_delay: Duration) -> Self {
        self.retry = RetryPolicy {
            attempts,
            min_delay,
            max_delay,
        };
        self
    }

    pub async fn post(&self, card: &ProviderCard) -> Result<(), NotifyError> {
        let envelope = card.to_envelope();
        self.retry
            .run_observed(Some((&self.observer, Upstream::Teams)), || {
                async {
                    timed_wait(&self.observer, Upstream::Teams, self.limiter.until_ready()).await;
                    let started = Instant::now();
                    let response = self
                        .http
                        .post(self.url.expose_secret())
                        .json(&envelope)
                        .send()
                        .await
                        .map_err(|e| {
                            record_exchange(
                                &self.observer,
                                Upstream::Teams,
                                OPERATION,
                                None,
                                started,
                            );
                            NotifyError::unreachable(UPSTREAM, e)
                        })?;
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("Retry-After")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .map(Duration::from_secs);
                    let body = response.text().await.unwrap_or_default();
                    let answer = classify(status, &body, retry_after);
                    // A 200 whose body reports throttling counts as the 429 it is.
                    let seen = match &answer {
                        Err(NotifyError::Throttled { .. }) => 429,
                        _ => status,
                    };
                    record_exchange(
                        &self.observer,
                        Upstream::Teams,
                        OPERATION,
                        Some(seen),
                        started,
                    );
                    answer
                }
                .instrument(call_span(Upstream::Teams, OPERATION, "POST"))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_teams_answers_the_way_teams_means_them() {
        assert!(classify(200, "1", None).is_ok());
        assert!(classify(202, "", None).is_ok());
        let throttled = classify(
            200,
            "Microsoft Teams endpoint returned HTTP error 429 with ContextId x",
            None,
        );
        assert!(matches!(throttled, Err(NotifyError::Throttled { .. })));
        assert!(
            classify(429, "", Some(Duration::from_secs(2)))
                .unwrap_err()
                .retry_after()
                == Some(Duration::from_secs(2))
        );
        assert!(matches!(
            classify(400, "Summary or Text is required.", None),
            Err(NotifyError::Rejected { status: 400, .. })
        ));
        assert!(classify(503, "", None).unwrap_err().is_transient());
        assert!(
            !classify(
                200,
                "Bad payload received by generic incoming webhook.",
                None
            )
            .unwrap_err()
            .is_transient()
        );
    }
}
