//! Fault injection per upstream (error rate, latency, 429 bursts, time-outs, hang-ups), and the
//! gate every upstream request passes through: faults first, then the emulator, then the recorder.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::record::{RecordedRequest, body_value};
use crate::{SandboxState, Upstream};

/// What to inject into one upstream's answers. Rates are fractions of matching requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Fraction of requests answered with `error_status` and that upstream's error body.
    pub error_rate: f64,
    pub error_status: u16,
    /// Fixed delay added before every matching request is handled.
    pub latency_ms: u64,
    /// Extra random delay, uniform in `0..=latency_jitter_ms`.
    pub latency_jitter_ms: u64,
    /// The next N matching requests are refused as rate limited (a 429 burst).
    pub rate_limited_next: u32,
    /// Fraction of requests refused as rate limited.
    pub rate_limited_rate: f64,
    /// How far ahead an injected 429 says the limit resets (`X-RateLimit-Reset`, `Retry-After`):
    /// a short burst by default, so clients that wait it out correctly are not held for minutes.
    pub retry_after_secs: u64,
    /// Fraction of requests held for `hang_ms` and then dropped without an answer.
    pub timeout_rate: f64,
    pub hang_ms: u64,
    /// Fraction of requests whose connection is closed without an answer.
    pub hangup_rate: f64,
    /// Only requests whose path contains this string are affected.
    pub path_contains: Option<String>,
    /// Only requests with one of these methods are affected (empty: all).
    pub methods: Vec<String>,
    /// Seed for the random choices, so a fault pattern can be replayed.
    pub seed: Option<u64>,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 503,
            latency_ms: 0,
            latency_jitter_ms: 0,
            rate_limited_next: 0,
            rate_limited_rate: 0.0,
            retry_after_secs: 1,
            timeout_rate: 0.0,
            hang_ms: 30_000,
            hangup_rate: 0.0,
            path_contains: None,
            methods: Vec::new(),
            seed: None,
        }
    }
}

/// Counts of what was injected, shown by `GET /_sandbox/faults`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultCounts {
    pub errors: u64,
    pub rate_limited: u64,
    pub timeouts: u64,
    pub hangups: u64,
    pub delayed: u64,
}

#[derive(Debug)]
struct ActiveFaults {
    settings: FaultSettings,
    burst_left: u32,
    rng: StdRng,
    counts: FaultCounts,
}

/// The fault decision for one request.
#[derive(Debug, PartialEq)]
enum Injection {
    None,
    Error(u16),
    RateLimited(Duration),
    Timeout(Duration),
    Hangup,
}

#[derive(Debug, Default)]
pub struct Faults {
    by_upstream: Mutex<BTreeMap<Upstream, ActiveFaults>>,
}

impl Faults {
    pub fn set(&self, upstream: Upstream, settings: FaultSettings) {
        let rng = match settings.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let active = ActiveFaults {
            burst_left: settings.rate_limited_next,
            settings,
            rng,
            counts: FaultCounts::default(),
        };
        self.by_upstream.lock().insert(upstream, active);
    }

    pub fn clear(&self, upstream: Option<Upstream>) {
        let mut map = self.by_upstream.lock();
        match upstream {
            Some(u) => {
                map.remove(&u);
            }
            None => map.clear(),
        }
    }

    pub fn describe(&self) -> BTreeMap<Upstream, (FaultSettings, FaultCounts)> {
        self.by_upstream
            .lock()
            .iter()
            .map(|(u, a)| (*u, (a.settings.clone(), a.counts.clone())))
            .collect()
    }

    /// Decides what happens to one request, and how long to delay it first.
    fn decide(&self, upstream: Upstream, method: &str, path: &str) -> (Duration, Injection) {
        let mut map = self.by_upstream.lock();
        let Some(active) = map.get_mut(&upstream) else {
            return (Duration::ZERO, Injection::None);
        };
        let s = &active.settings;
        if s.path_contains
            .as_deref()
            .is_some_and(|p| !path.contains(p))
            || (!s.methods.is_empty() && !s.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
        {
            return (Duration::ZERO, Injection::None);
        }
        let jitter = if s.latency_jitter_ms > 0 {
            active.rng.random_range(0..=s.latency_jitter_ms)
        } else {
            0
        };
        let delay = Duration::from_millis(s.latency_ms + jitter);
        if !delay.is_zero() {
            active.counts.delayed += 1;
        }
        let roll: f64 = active.rng.random();
        let s = &active.settings;
        let retry_after = Duration::from_secs(s.retry_after_secs);
        let injection = if active.burst_left > 0 {
            active.burst_left -= 1;
            Injection::RateLimited(retry_after)
        } else if roll < s.error_rate {
            Injection::Error(s.error_status)
        } else if roll < s.error_rate + s.rate_limited_rate {
            Injection::RateLimited(retry_after)
        } else if roll < s.error_rate + s.rate_limited_rate + s.timeout_rate {
            Injection::Timeout(Duration::from_millis(s.hang_ms))
        } else if roll < s.error_rate + s.rate_limited_rate + s.timeout_rate + s.hangup_rate {
            Injection::Hangup
        } else {
            Injection::None
        };
        match injection {
            Injection::Error(_) => active.counts.errors += 1,
            Injection::RateLimited(_) => active.counts.rate_limited += 1,
            Injection::Timeout(_) => active.counts.timeouts += 1,
            Injection::Hangup => active.counts.hangups += 1,
            Injection::None => {}
        }
        (delay, injection)
    }
}

/// A response body that fails before its first byte, so the server drops the connection and
/// the client sees it closed without an answer.
fn hangup_response() -> HttpResponse {
    let failing = futures_util::stream::once(async {
        Err::<web::Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "sandbox fault injection: hang-up",
        ))
    })
    .boxed_local();
    HttpResponse::Ok().streaming(failing)
}

fn header_map(headers: &actix_web::http::header::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Middleware on every upstream scope: injects the configured faults, runs the emulator and
/// records the exchange.
pub async fn gate(
    upstream: Upstream,
    mut req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<SandboxState>>()
        .cloned()
        .expect("sandbox state is registered on the app");
    let method = req.method().as_str().to_owned();
    let path = req.path().to_owned();
    let arrived = state.recorder.next_seq();
    let (delay, injection) = state.faults.decide(upstream, &method, &path);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let record_limit = state.config().recorder.limit;

    // Read the body once so it can be both recorded and handed on to the emulator.
    let mut request_body = web::BytesMut::new();
    if record_limit > 0 {
        let mut payload = req.take_payload();
        while let Some(chunk) = payload.next().await {
            request_body.extend_from_slice(&chunk?);
        }
        req.set_payload(actix_web::dev::Payload::from(request_body.clone().freeze()));
    }
    let request_headers = (record_limit > 0).then(|| header_map(req.headers()));
    let query = req.query_string().to_owned();

    let (injected, response) = match injection {
        Injection::None => {
            let res = next.call(req).await?;
            (None, res)
        }
        Injection::Error(status) => {
            let resp = upstream.injected_error(status, &state);
            (Some(format!("error {status}")), req.into_response(resp))
        }
        Injection::RateLimited(retry_after) => {
            let resp = upstream.injected_rate_limit(&state, retry_after);
            (Some("rate_limited".to_owned()), req.into_response(resp))
        }
        Injection::Timeout(hang) => {
            tokio::time::sleep(hang).await;
            (
                Some("timeout".to_owned()),
                req.into_response(hangup_response()),
            )
        }
        Injection::Hangup => (
            Some("hangup".to_owned()),
            req.into_response(hangup_response()),
        ),
    };
    if record_limit == 0 || matches!(injection, Injection::Timeout(_) | Injection::Hangup) {
        if record_limit > 0 {
            state.recorder.push(
                record_limit,
                RecordedRequest {
                    seq: state.recorder.next_seq(),
                    arrived,
                    upstream,
                    method,
                    path,
                    query,
                    headers: request_headers.unwrap_or_default(),
                    body: body_value(&request_body),
                    status: 0,
                    response_headers: BTreeMap::new(),
                    response_body: serde_json::Value::Null,
                    injected,
                },
            );
        }
        return Ok(response);
    }

    let (http_req, res) = response.into_parts();
    let status = res.status().as_u16();
    let response_headers = header_map(res.headers());
    let (res, body) = res.into_parts();
    let bytes = actix_web::body::to_bytes(body)
        .await
        .map_err(|e| actix_web::error::ErrorInternalServerError(e.to_string()))?;
    state.recorder.push(
        record_limit,
        RecordedRequest {
            seq: state.recorder.next_seq(),
            arrived,
            upstream,
            method,
            path,
            query,
            headers: request_headers.unwrap_or_default(),
            body: body_value(&request_body),
            status,
            response_headers,
            response_body: body_value(&bytes),
            injected,
        },
    );
    let res = res.set_body(bytes.boxed());
    Ok(ServiceResponse::new(http_req, res))
}
