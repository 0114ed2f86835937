//! What the clients tell whoever watches them: one report per HTTP exchange (upstream, operation,
//! status class, latency) and one per rate-limit wait. The pipeline turns them into metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The upstream services the bridge calls.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Upstream {
    Amplify,
    Recurly,
    Teams,
    Sendgrid,
}

impl Upstream {
    pub fn as_str(self) -> &'static str {
        match self {
            Upstream::Amplify => "amplify",
            Upstream::Recurly => "recurly",
            Upstream::Teams => "teams",
            Upstream::Sendgrid => "sendgrid",
        }
    }
}

/// How one exchange ended, in a few classes (a label must keep a small set of values).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CallStatus {
    /// 2xx (and 3xx, which the clients do not follow).
    Success,
    /// 429, or a 200 whose body says it was throttled (Teams).
    Throttled,
    /// Any other 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// No answer: refused, reset, time-out, TLS.
    NetworkError,
}

impl CallStatus {
    pub fn of_http(status: u16) -> Self {
        match status {
            429 => CallStatus::Throttled,
            400..=499 => CallStatus::ClientError,
            500.. => CallStatus::ServerError,
            _ => CallStatus::Success,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Success => "2xx",
            CallStatus::Throttled => "429",
            CallStatus::ClientError => "4xx",
            CallStatus::ServerError => "5xx",
            CallStatus::NetworkError => "network_error",
        }
    }
}

/// Watches a client's exchanges. `operation` is one of the client's own fixed names
/// (`"create plan"`), never a URL or anything carrying an id or a secret.
pub trait UpstreamObserver: Send + Sync {
    /// One HTTP exchange ended (each retry is an exchange of its own).
    fn exchanged(
        &self,
        upstream: Upstream,
        operation: &'static str,
        status: CallStatus,
        elapsed: Duration,
    );
    /// A call waited this long for the client's own limiter or an upstream's reset time.
    fn rate_limit_waited(&self, upstream: Upstream, waited: Duration);
}

/// A shared observer, as the clients hold it.
pub type Observer = Arc<dyn UpstreamObserver>;

/// Watches nothing: the clients' default.
pub struct NoObserver;

impl UpstreamObserver for NoObserver {
    fn exchanged(&self, _: Upstream, _: &'static str, _: CallStatus, _: Duration) {}
    fn rate_limit_waited(&self, _: Upstream, _: Duration) {}
}

impl NoObserver {
    pub fn shared() -> Observer {
        Arc::new(NoObserver)
    }
}

/// Waits for `wait` (a limiter, a reset time) and reports the wait when it was noticeable
/// (a millisecond or more; an open limiter answers in microseconds).
pub async fn timed_wait<F: Future<Output = ()>>(observer: &Observer, upstream: Upstream, wait: F) {
    let started = Instant::now();
    wait.await;
    let waited = started.elapsed();
    if waited >= Duration::from_millis(1) {
        observer.rate_limit_waited(upstream, waited);
    }
}

/// The span of one exchange: a child of whatever provisioning or reporting span is current.
/// Its fields name the upstream and operation only: never a URL, id or secret.
pub fn call_span(upstream: Upstream, operation: &'static str, method: &str) -> tracing::Span {
    tracing::info_span!(
        "upstream_call",
        otel.name = %format_args!("{} {operation}", upstream.as_str()),
        otel.kind = "client",
        upstream = upstream.as_str(),
        operation,
        http.request.method = method,
        http.response.status_code = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

/// Reports an exchange to `observer` and onto the current exchange span.
pub fn record_exchange(
    observer: &Observer,
    upstream: Upstream,
    operation: &'static str,
    status: Option<u16>,
    started: Instant,
) {
    let class = match status {
        Some(code) => CallStatus::of_http(code),
        None => CallStatus::NetworkError,
    };
    let span = tracing::Span::current();
    if let Some(code) = status {
        span.record("http.response.status_code", i64::from(code));
    }
    span.record("outcome", class.as_str());
    observer.exchanged(upstream, operation, class, started.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_into_a_few_classes() {
        let classes: Vec<&str> = [200, 201, 204, 400, 404, 422, 429, 500, 503]
            .into_iter()
            .map(|s| CallStatus::of_http(s).as_str())
            .collect();
        assert_eq!(
            classes,
            [
                "2xx", "2xx", "2xx", "4xx", "4xx", "4xx", "429", "5xx", "5xx"
            ]
        );
    }
}
