//! Recurly API v3 (v2021-02-25) emulator: plans, add-ons, measured units, accounts,
//! subscriptions and usage, with Recurly's validation, errors, rate limits and idempotency.
//!
//! Every request under `/recurly` goes through [`dispatch`]: Basic auth, the versioned `Accept`
//! header, the sliding rate-limit window, `Idempotency-Key`, then the route's [`Store`] method.

mod accounts;
mod billing;
mod catalog;
mod clock;
mod errors;
mod fields;
mod idempotency;
mod paging;
mod store;
mod subscriptions;
mod usage;
mod validation;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::config::credential_matches;
use crate::ratelimit::{Decision, SlidingWindow};
use crate::{SandboxConfig, SandboxState};
use errors::ApiError;
use idempotency::{Claim, IdempotencyKeys, KeptAnswer, MAX_KEY_LEN};
use paging::ListQuery;
use store::{Reply, Store};

pub(crate) const API_VERSION: &str = "v2021-02-25";
/// Recurly counts requests over a sliding 5-minute window with a budget of five times the
/// per-minute figure [I: reference §1.4; the Go client's fixture shows `X-RateLimit-Limit: 2000`
/// for a 400/min sandbox site].
pub(crate) const RATE_LIMIT_WINDOW_MINUTES: u32 = 5;
/// The Accept headers the real API lists in its 406 answer.
const ACCEPTABLE_ACCEPT_HEADERS: &[&str] = &[
    "application/vnd.recurly.v2016-03-01",
    "application/vnd.recurly.v2016-04-27",
    "application/vnd.recurly.v2016-07-27",
    "application/vnd.recurly.v2016-12-15",
    "application/vnd.recurly.v2017-01-12",
    "application/vnd.recurly.v2017-09-30",
    "application/vnd.recurly.v2018-01-24",
    "application/vnd.recurly.v2018-05-10",
    "application/vnd.recurly.v2018-06-06",
    "application/vnd.recurly.v2018-08-09",
    "application/vnd.recurly.v2019-10-10",
    "application/vnd.recurly.v2021-02-25",
];

pub(crate) struct RecurlyState {
    store: RwLock<Store>,
    keys: IdempotencyKeys,
    window: RwLock<Option<Arc<SlidingWindow>>>,
    /// The latest counted decision, shown on answers that are not counted (production-mode
    /// writes, usage calls, refusals): peeking the window scans every hit in it, too slow to
    /// do on every request of a busy site.
    last_decision: Mutex<Option<(Instant, Decision)>>,
    /// The one clock every Recurly timestamp is written with.
    pub(crate) clock: clock::Clock,
    pub(crate) notifier: webhooks::Notifier,
    /// Milliseconds since the epoch of the store's next due work (`i64::MAX`: none), read
    /// without a lock before each request.
    next_due_ms: AtomicI64,
}

/// How long a counted decision stands in for a peek at the window.
const DECISION_REUSE: Duration = Duration::from_secs(1);

fn window_for(config: &SandboxConfig) -> Option<Arc<SlidingWindow>> {
    config.recurly.per_minute_limit().map(|per_minute| {
        Arc::new(SlidingWindow::new(
            per_minute.saturating_mul(RATE_LIMIT_WINDOW_MINUTES),
            Duration::from_secs(60 * u64::from(RATE_LIMIT_WINDOW_MINUTES)),
        ))
    })
}

impl RecurlyState {
    pub fn new(config: &SandboxConfig) -> Self {
        let mut store = Store::default();
        store.billing.settings = config.recurly.dunning;
        Self {
            store: RwLock::new(store),
            keys: IdempotencyKeys::default(),
            window: RwLock::new(window_for(config)),
            last_decision: Mutex::new(None),
            clock: clock::Clock::default(),
            notifier: webhooks::Notifier::default(),
            next_due_ms: AtomicI64::new(i64::MAX),
        }
    }

    /// Hands the notifications the last store operation caused to the notifier and notes when
    /// the next due work is.
    fn after_write(&self, mut store: parking_lot::RwLockWriteGuard<'_, Store>) {
        let events = std::mem::take(&mut store.billing.outbox);
        let next = store
            .next_due()
            .map_or(i64::MAX, |at| at.timestamp_millis());
        self.next_due_ms.store(next, Ordering::SeqCst);
        drop(store);
        self.notifier.enqueue(events);
    }

    /// Runs the renewals, dunning attempts and expiries due by the clock's now (contract: due
    /// work is processed before any request is served). Cheap when nothing is due.
    pub(crate) fn catch_up(&self) -> Vec<billing::Processed> {
        let now = self.clock.now();
        self.catch_up_to(now)
    }

    fn catch_up_to(&self, now: DateTime<Utc>) -> Vec<billing::Processed> {
        if self.next_due_ms.load(Ordering::SeqCst) > now.timestamp_millis() {
            return Vec::new();
        }
        let mut store = self.store.write();
        let done = store.process_due(now);
        self.after_write(store);
        done
    }

    /// A changed limit starts a fresh window; an unchanged one keeps its count.
    pub fn configure(&self, config: &SandboxConfig) {
        self.store.write().billing.settings = config.recurly.dunning;
        let budget = config
            .recurly
            .per_minute_limit()
            .map(|l| l.saturating_mul(RATE_LIMIT_WINDOW_MINUTES));
        let mut window = self.window.write();
        if window.as_ref().map(|w| w.limit()) != budget {
            *window = window_for(config);
            *self.last_decision.lock() = None;
        }
    }

    pub fn reset(&self, config: &SandboxConfig) {
        let mut store = Store::default();
        store.billing.settings = config.recurly.dunning;
        *self.store.write() = store;
        self.next_due_ms.store(i64::MAX, Ordering::SeqCst);
        self.clock.reset();
        self.notifier.reset();
        self.keys.clear();
        *self.window.write() = window_for(config);
        *self.last_decision.lock() = None;
    }

    fn window(&self) -> Option<Arc<SlidingWindow>> {
        self.window.read().clone()
    }

    /// Counts one request against the window.
    fn count_request(&self, window: &SlidingWindow) -> Decision {
        let now = Instant::now();
        let decision = window.acquire(now);
        *self.last_decision.lock() = Some((now, decision));
        decision
    }

    /// The window's state for an answer that is not counted.
    fn observe(&self, window: &SlidingWindow) -> Decision {
        let now = Instant::now();
        match *self.last_decision.lock() {
            Some((at, decision)) if now.duration_since(at) < DECISION_REUSE => Decision {
                reset_after: decision.reset_after.saturating_sub(now.duration_since(at)),
                ..decision
            },
            _ => window.peek(now),
        }
    }
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/{tail:.*}", web::route().to(dispatch));
}

/// Routes under `/_sandbox/` that belong to Recurly.
pub(crate) fn control_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/recurly/usage_totals", web::get().to(usage_totals))
        .route("/clock", web::get().to(get_clock))
        .route("/clock", web::post().to(move_clock))
        .route(
            "/recurly/accounts/{code}/payments",
            web::put().to(set_payments),
        )
        .route(
            "/recurly/webhook_endpoints",
            web::post().to(webhooks::add_endpoint),
        )
        .route(
            "/recurly/webhook_endpoints",
            web::get().to(webhooks::list_endpoints),
        )
        .route(
            "/recurly/webhook_endpoints/{id}",
            web::delete().to(webhooks::delete_endpoint),
        )
        .route(
            "/recurly/notifications",
            web::get().to(webhooks::list_notifications),
        )
        .route(
            "/recurly/notifications/drop_next",
            web::put().to(webhooks::drop_next),
        );
}

/// Starts the worker that runs due work and notification deliveries as real time passes.
pub(crate) fn spawn_background(state: Arc<SandboxState>) {
    webhooks::spawn_worker(state);
}

fn control_error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"error": message.into()}))
}

async fn get_clock(state: web::Data<SandboxState>) -> HttpResponse {
    HttpResponse::Ok()
        .json(serde_json::json!({"now": clock::rfc3339_ms(state.recurly.clock.now())}))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockMove {
    advance_secs: Option<u64>,
    to: Option<String>,
}

/// `POST /_sandbox/clock`: moves the clock forward, then runs every renewal, dunning attempt,
/// expiry and notification delivery now due, and lists them in time order.
async fn move_clock(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    let input: ClockMove = match serde_json::from_slice(&body) {
        Ok(input) => input,
        Err(e) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"advance_secs\": N}} or {{\"to\": \"RFC 3339\"}}: {e}"),
            );
        }
    };
    let recurly = &state.recurly;
    let target = match (input.advance_secs, input.to.as_deref()) {
        (Some(secs), None) => i64::try_from(secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .and_then(|d| recurly.clock.now().checked_add_signed(d)),
        (None, Some(text)) => match paging::parse_time(text) {
            Some(at) => Some(at),
            None => {
                return control_error(StatusCode::BAD_REQUEST, "`to` must be an RFC 3339 time");
            }
        },
        _ => {
            return control_error(
                StatusCode::BAD_REQUEST,
                "give exactly one of `advance_secs` and `to`",
            );
        }
    };
    let Some(target) = target else {
        return control_error(StatusCode::BAD_REQUEST, "advance_secs is too large");
    };
    let now = match recurly.clock.move_to(target) {
        Ok(now) => now,
        Err(now) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the clock only moves forward: {} is before now ({})",
                    clock::rfc3339_ms(target),
                    clock::rfc3339_ms(now)
                ),
            );
        }
    };
    let mut processed = recurly.catch_up_to(now);
    processed.extend(recurly.notifier.deliver_due(&recurly.clock).await);
    processed.sort_by_key(|p| p.time);
    HttpResponse::Ok().json(serde_json::json!({
        "now": clock::rfc3339_ms(recurly.clock.now()),
        "processed": processed,
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Payments {
    fail: bool,
}

/// `PUT /_sandbox/recurly/accounts/{code}/payments` `{"fail": bool}`: while set, the account's
/// renewal invoices fail to collect and go through dunning.
async fn set_payments(
    state: web::Data<SandboxState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    match serde_json::from_slice::<Payments>(&body) {
        Ok(Payments { fail }) => {
            state
                .recurly
                .store
                .write()
                .set_payments_failing(&path, fail);
            HttpResponse::Ok().json(serde_json::json!({"account_code": *path, "fail": fail}))
        }
        Err(e) => control_error(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"fail\": true|false}}: {e}"),
        ),
    }
}

async fn usage_totals(state: web::Data<SandboxState>) -> HttpResponse {
    HttpResponse::Ok().json(state.recurly.store.read().usage_totals())
}

/// Seeds `{"measured_units":[…],"accounts":[…],"plans":[…],"subscriptions":[…]}` (create
/// bodies, created in that order through the API's validation) and returns what was created.
pub(crate) fn seed(state: &SandboxState, seed: &Value) -> Result<Value, String> {
    const SECTIONS: [&str; 4] = ["measured_units", "accounts", "plans", "subscriptions"];
    let sections = seed
        .as_object()
        .ok_or("the recurly seed must be an object with measured_units, accounts, plans and/or subscriptions")?;
    if let Some(unknown) = sections.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
        return Err(format!(
            "unknown recurly seed section '{unknown}'; expected {}",
            SECTIONS.join(", ")
        ));
    }
    state.recurly.catch_up();
    let mut store = state.recurly.store.write();
    let now = state.recurly.clock.now();
    let mut created = serde_json::Map::new();
    for section in SECTIONS {
        let Some(items) = sections.get(section) else {
            continue;
        };
        let items = items
            .as_array()
            .ok_or_else(|| format!("recurly seed '{section}' must be an array"))?;
        let mut bodies = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let reply = match section {
                "measured_units" => store.create_unit(item, now),
                "accounts" => store.create_account(item, now),
                "plans" => store.create_plan(item, now),
                _ => store.create_subscription(item, now),
            };
            match reply {
                Ok(Reply::Json(_, mut body)) => {
                    fields::complete_answer(&mut body);
                    bodies.push(body)
                }
                Ok(_) => {}
                // The message already names every refused field ("Code is invalid, …").
                Err(e) => {
                    state.recurly.after_write(store);
                    return Err(format!("{section}[{i}]: {}", e.message));
                }
            }
        }
        created.insert(section.to_owned(), Value::Array(bodies));
    }
    state.recurly.after_write(store);
    Ok(Value::Object(created))
}

/// A fresh `X-Request-Id`: 20 hex digits from the thread's generator (no system call).
fn request_id() -> String {
    let id: u128 = rand::random();
    format!("{:020x}", id >> 48)
}

fn reset_epoch(decision: &Decision) -> u64 {
    SystemTime::now()
        .checked_add(decision.reset_after)
        .unwrap_or_else(SystemTime::now)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or_default()
}

/// Builds an answer with the headers every Recurly response carries.
fn answer(
    status: u16,
    body: Option<String>,
    limit: Option<&Decision>,
    request_id: &str,
) -> HttpResponse {
    let mut builder = HttpResponse::build(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    );
    builder
        .insert_header(("Recurly-Version", format!("recurly.{API_VERSION}")))
        .insert_header(("X-Request-Id", request_id.to_owned()));
    if let Some(decision) = limit {
        builder
            .insert_header(("X-RateLimit-Limit", decision.limit.to_string()))
            .insert_header(("X-RateLimit-Remaining", decision.remaining.to_string()))
            .insert_header(("X-RateLimit-Reset", reset_epoch(decision).to_string()));
    }
    match body {
        Some(body) => builder
            .insert_header(("Content-Type", "application/json; charset=utf-8"))
            .body(body),
        None => builder.finish(),
    }
}

fn error_answer(error: &ApiError, limit: Option<&Decision>, request_id: &str) -> HttpResponse {
    answer(
        error.status().as_u16(),
        Some(error.body().to_string()),
        limit,
        request_id,
    )
}

/// The API key from `Authorization: Basic …`; both `base64("KEY:")` (Go) and `base64("KEY")`
/// (Ruby) are accepted.
fn api_key(req: &HttpRequest) -> Option<String> {
    let header = req.headers().get("Authorization")?.to_str().ok()?;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let key = decoded
        .split_once(':')
        .map_or(decoded.as_str(), |(key, _)| key);
    (!key.is_empty()).then(|| key.to_owned())
}

/// `application/vnd.recurly.v2021-02-25[+json]`, or `latest`, among the Accept values.
fn accepts_api_version(req: &HttpRequest) -> bool {
    let Some(accept) = req.headers().get("Accept").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    accept.split(',').any(|value| {
        let media = value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let media = media.strip_suffix("+json").unwrap_or(&media);
        media == format!("application/vnd.recurly.{API_VERSION}")
            || media == "application/vnd.recurly.latest"
    })
}

/// "The Usage API endpoints are not rate-limited to support real-time logging" (reference §1.4).
fn exempt_from_rate_limit(segments: &[String]) -> bool {
    segments.first().is_some_and(|s| s == "usage") || segments.last().is_some_and(|s| s == "usage")
}

/// The path below the Recurly base URL (`/plans?…` for `/recurly/plans?…`), still encoded.
fn relative_path(req: &HttpRequest) -> String {
    let path = req.uri().path();
    path.strip_prefix("/recurly").unwrap_or(path).to_owned()
}

/// Decoded path segments, with a leading `/sites/{site_id}` dropped (one key is one site).
fn segments(relative: &str) -> Vec<String> {
    let mut segments: Vec<String> = relative
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    if segments.first().is_some_and(|s| s == "sites") && segments.len() >= 2 {
        segments.drain(..2);
    }
    segments
}

fn rate_limited(decision: Option<&Decision>, request_id: &str) -> HttpResponse {
    let error = ApiError::new(
        "rate_limited",
        format!(
            "You have made too many API requests in the last {RATE_LIMIT_WINDOW_MINUTES} minutes. Wait until the time in X-RateLimit-Reset before retrying."
        ),
    );
    error_answer(&error, decision, request_id)
}

async fn dispatch(
    req: HttpRequest,
    state: web::Data<SandboxState>,
    body: web::Bytes,
) -> HttpResponse {
    let request_id = request_id();
    let config = state.config();
    let recurly = &state.recurly;
    let window = recurly.window();
    let peek = || window.as_deref().map(|w| recurly.observe(w));

    let Some(key) = api_key(&req) else {
        let error = ApiError::new(
            "unauthorized",
            "Please use basic authentication with your API key as the username and an empty password.",
        );
        return error_answer(&error, peek().as_ref(), &request_id);
    };
    if !credential_matches(&config.recurly.api_key, Some(&key)) {
        let error = ApiError::new("invalid_api_key", "The API key provided is invalid.");
        return error_answer(&error, peek().as_ref(), &request_id);
    }
    if !accepts_api_version(&req) {
        // The body of the spec's "Unsupported Versions" example, list field included.
        let error = ApiError::new(
            "invalid_api_version",
            "That accept header isn't in the format we use to specify an API version. Try one of these instead:",
        );
        let mut body = error.body();
        body["error"]["acceptable_accept_headers"] = serde_json::json!(ACCEPTABLE_ACCEPT_HEADERS);
        return answer(
            error.status().as_u16(),
            Some(body.to_string()),
            peek().as_ref(),
            &request_id,
        );
    }

    let relative = relative_path(&req);
    let segments = segments(&relative);
    let method = req.method().clone();
    let counts =
        config.recurly.counts_against_limit(method.as_str()) && !exempt_from_rate_limit(&segments);
    let decision = match (&window, counts) {
        (Some(w), true) => Some(recurly.count_request(w)),
        (Some(w), false) => Some(recurly.observe(w)),
        (None, _) => None,
    };
    if decision.is_some_and(|d| counts && !d.allowed) {
        return rate_limited(decision.as_ref(), &request_id);
    }
    let limit = decision.as_ref();

    let writes = matches!(method, Method::POST | Method::PUT | Method::DELETE);
    let idempotency_key = match req.headers().get("Idempotency-Key").map(|v| v.to_str()) {
        Some(Ok(k)) if writes && k.len() > MAX_KEY_LEN => {
            let error = ApiError::bad_request(format!(
                "Idempotency-Key must be at most {MAX_KEY_LEN} characters"
            ));
            return error_answer(&error, limit, &request_id);
        }
        Some(Ok(k)) if writes && !k.is_empty() => Some(format!("{key}\n{k}")),
        Some(Err(_)) if writes => {
            return error_answer(
                &ApiError::bad_request("Idempotency-Key must be ASCII"),
                limit,
                &request_id,
            );
        }
        _ => None,
    };
    if let Some(idem) = &idempotency_key {
        match recurly.keys.claim(idem, Instant::now()) {
            Claim::Fresh => {}
            Claim::Replay(kept) => {
                let mut res = answer(
                    kept.status,
                    (!kept.body.is_empty()).then_some(kept.body),
                    limit,
                    &request_id,
                );
                res.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static("idempotency-prior"),
                    actix_web::http::header::HeaderValue::from_static("true"),
                );
                return res;
            }
            Claim::InFlight => {
                let error = ApiError::new(
                    "simultaneous_request",
                    "A request with this Idempotency-Key is already being processed; retry shortly.",
                );
                return error_answer(&error, limit, &request_id);
            }
        }
    }

    let head = method == Method::HEAD;
    recurly.catch_up();
    let result = parse_body(&req, &body).and_then(|input| {
        let query = req.query_string();
        run(recurly, &method, &segments, &relative, query, &req, &input)
    });
    let (status, text, total) = match result {
        Ok(Reply::Json(status, mut value)) => {
            fields::complete_answer(&mut value);
            (status, Some(value.to_string()), None)
        }
        Ok(Reply::Raw(status, text)) => (status, Some(text), None),
        Ok(Reply::List(page)) => {
            let total = page.total;
            let mut body = page.body();
            fields::complete_answer(&mut body);
            (200, Some(body.to_string()), Some(total))
        }
        Ok(Reply::NoContent) => (204, None, None),
        Err(error) => (
            error.status().as_u16(),
            Some(error.body().to_string()),
            None,
        ),
    };
    if let Some(idem) = &idempotency_key {
        let kept = KeptAnswer {
            status,
            body: text.clone().unwrap_or_default(),
        };
        recurly.keys.finish(idem, kept, Instant::now());
    }
    if head {
        let mut res = answer(status, None, limit, &request_id);
        if let Some(total) = total {
            res.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("recurly-total-records"),
                total.into(),
            );
        }
        return res;
    }
    answer(status, text, limit, &request_id)
}

/// The JSON request body; an empty body is `null` (cancel and DELETE send none).
fn parse_body(req: &HttpRequest, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let content_type = req
        .headers()
        .get("Content-Type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !content_type.to_ascii_lowercase().contains("json") {
        return Err(ApiError::new(
            "invalid_content_type",
            format!("Content-Type '{content_type}' is not supported; send application/json"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("Bad request, perhaps invalid JSON?"))
}

const DATE_SORTS: &[&str] = &["created_at", "updated_at"];
const USAGE_SORTS: &[&str] = &["usage_timestamp", "recorded_timestamp"];

/// Routes one request to its store operation.
fn run(
    recurly: &RecurlyState,
    method: &Method,
    segments: &[String],
    path: &str,
    query: &str,
    req: &HttpRequest,
    input: &Value,
) -> Result<Reply, ApiError> {
    let now = recurly.clock.now();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let list =
        |sorts: &[&str]| ListQuery::parse(path.split('?').next().unwrap_or(path), query, sorts);
    let read = matches!(*method, Method::GET | Method::HEAD);
    if read {
        let store = recurly.store.read();
        return match seg.as_slice() {
            ["plans"] => store.list_plans(&list(DATE_SORTS)?),
            ["plans", plan] => store.get_plan(plan),
            ["plans", plan, "add_ons"] => store.list_plan_add_ons(plan, &list(DATE_SORTS)?),
            ["plans", plan, "add_ons", add_on] => store.get_add_on(plan, add_on),
            ["add_ons"] => store.list_all_add_ons(&list(DATE_SORTS)?),
            ["add_ons", add_on] => store.get_any_add_on(add_on),
            ["measured_units"] => store.list_units(&list(DATE_SORTS)?),
            ["measured_units", unit] => store.get_unit(unit),
            ["accounts"] => store.list_accounts(&list(DATE_SORTS)?, now),
            ["accounts", account] => store.get_account(account, now),
            ["accounts", account, "subscriptions"] => {
                store.list_subscriptions(Some(account), &list(DATE_SORTS)?, now)
            }
            ["subscriptions"] => store.list_subscriptions(None, &list(DATE_SORTS)?, now),
            ["subscriptions", sub] => store.get_subscription(sub),
            ["subscriptions", sub, "change"] => store.get_subscription_change(sub),
            ["subscriptions", sub, "add_ons", add_on, "usage"] => {
                store.list_usage(sub, add_on, &list(USAGE_SORTS)?)
            }
            ["usage", usage] => store.get_usage(usage),
            ["subscriptions", sub, "invoices"] => {
                store.list_invoices(Some(sub), None, &list(DATE_SORTS)?)
            }
            ["accounts", account, "invoices"] => {
                store.list_invoices(None, Some(account), &list(DATE_SORTS)?)
            }
            ["invoices", invoice] => store.get_invoice(invoice),
            ["invoices", invoice, "line_items"] => {
                store.list_line_items(invoice, &list(DATE_SORTS)?)
            }
            _ => Err(no_route(method, path)),
        };
    }
    let mut store = recurly.store.write();
    let query_param = |key: &str| {
        form_urlencoded::parse(req.query_string().as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let result = match (method.as_str(), seg.as_slice()) {
        ("POST", ["plans"]) => store.create_plan(input, now),
        ("PUT", ["plans", plan]) => store.update_plan(plan, input, now),
        ("DELETE", ["plans", plan]) => store.delete_plan(plan, now),
        ("POST", ["plans", plan, "add_ons"]) => store.create_add_on(plan, input, now),
        ("PUT", ["plans", plan, "add_ons", add_on]) => {
            store.update_add_on(plan, add_on, input, now)
        }
        ("DELETE", ["plans", plan, "add_ons", add_on]) => store.delete_add_on(plan, add_on, now),
        ("POST", ["measured_units"]) => store.create_unit(input, now),
        ("PUT", ["measured_units", unit]) => store.update_unit(unit, input, now),
        ("DELETE", ["measured_units", unit]) => store.delete_unit(unit, now),
        ("POST", ["accounts"]) => store.create_account(input, now),
        ("PUT", ["accounts", account]) => store.update_account(account, input, now),
        ("DELETE", ["accounts", account]) => store.deactivate_account(account, now),
        ("PUT", ["accounts", account, "reactivate"]) => store.reactivate_account(account, now),
        ("POST", ["subscriptions"]) => store.create_subscription(input, now),
        ("PUT", ["subscriptions", sub, "cancel"]) => store.cancel_subscription(sub, input, now),
        ("PUT", ["subscriptions", sub, "reactivate"]) => store.reactivate_subscription(sub, now),
        ("POST", ["subscriptions", sub, "change"]) => store.change_subscription(sub, input, now),
        ("DELETE", ["subscriptions", sub, "change"]) => store.delete_subscription_change(sub, now),
        ("DELETE", ["subscriptions", sub]) => store.terminate_subscription(
            sub,
            query_param("refund").as_deref(),
            query_param("charge").as_deref(),
            now,
        ),
        ("POST", ["subscriptions", sub, "add_ons", add_on, "usage"]) => {
            store.create_usage(sub, add_on, input, now)
        }
        ("PUT", ["usage", usage]) => store.update_usage(usage, input, now),
        ("DELETE", ["usage", usage]) => store.delete_usage(usage),
        _ => Err(no_route(method, path)),
    };
    recurly.after_write(store);
    result
}

fn no_route(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        "not_found",
        format!("The requested resource ({method} {path}) was not found"),
    )
}

/// An injected fault answer: 5xx statuses with a type get Recurly's JSON error; 502/503/504
/// come from Recurly's edge with no type, so they get a short plain body.
pub(crate) fn injected_error(status: u16) -> HttpResponse {
    let kind = match status {
        400 => Some("bad_request"),
        401 => Some("unauthorized"),
        403 => Some("invalid_api_key"),
        404 => Some("not_found"),
        406 => Some("invalid_api_version"),
        422 => Some("validation"),
        429 => Some("rate_limited"),
        502..=504 => None,
        _ if status >= 500 => Some("internal_server_error"),
        _ => Some("bad_request"),
    };
    let request_id = request_id();
    match kind {
        Some(kind) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let error = ApiError::new(kind, code.canonical_reason().unwrap_or("Error"));
            answer(status, Some(error.body().to_string()), None, &request_id)
        }
        None => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            HttpResponse::build(code)
                .insert_header(("Content-Type", "text/html"))
                .insert_header(("X-Request-Id", request_id))
                .body(format!(
                    "<html><body><h1>{status} {}</h1></body></html>",
                    code.canonical_reason().unwrap_or("Error")
                ))
        }
    }
}

pub(crate) fn injected_rate_limit(state: &SandboxState, retry_after: Duration) -> HttpResponse {
    let config = state.config();
    let decision = match state.recurly.window() {
        Some(window) => Decision {
            allowed: false,
            remaining: 0,
            ..state.recurly.observe(&window)
        },
        None => Decision {
            allowed: false,
            limit: config
                .recurly
                .per_minute_limit()
                .unwrap_or(400)
                .saturating_mul(RATE_LIMIT_WINDOW_MINUTES),
            remaining: 0,
            reset_after: Duration::from_secs(60),
        },
    };
    // The fault says how long the burst lasts; the real window may be longer, but a client
    // that waits for `X-RateLimit-Reset` must be able to recover from an injected burst.
    let decision = Decision {
        reset_after: retry_after.max(Duration::from_secs(1)),
        ..decision
    };
    rate_limited(Some(&decision), &request_id())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use base64::Engine;

    use super::*;

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[test]
    fn the_key_is_read_with_or_without_the_colon_of_an_empty_password() {
        for credentials in ["KEY:", "KEY"] {
            let req = TestRequest::default()
                .insert_header(("Authorization", basic(credentials)))
                .to_http_request();
            assert_eq!(api_key(&req).as_deref(), Some("KEY"), "{credentials}");
        }
        for header in [
            basic(":"),
            basic(""),
            "Bearer KEY".to_owned(),
            "Basic !!".to_owned(),
        ] {
            let req = TestRequest::default()
                .insert_header(("Authorization", header.clone()))
                .to_http_request();
            assert_eq!(api_key(&req), None, "{header}");
        }
    }

    #[test]
    fn only_the_current_or_latest_version_is_accepted() {
        let accepts = |accept: &str| {
            accepts_api_version(
                &TestRequest::default()
                    .insert_header(("Accept", accept))
                    .to_http_request(),
            )
        };
        assert!(accepts("application/vnd.recurly.v2021-02-25"));
        assert!(accepts(
            "application/vnd.recurly.v2021-02-25+json; charset=utf-8"
        ));
        assert!(accepts("application/json, application/vnd.recurly.latest"));
        assert!(!accepts("application/vnd.recurly.v2019-10-10"));
        assert!(!accepts("application/json"));
        assert!(!accepts_api_version(
            &TestRequest::default().to_http_request()
        ));
    }

    #[test]
    fn path_segments_are_decoded_and_a_site_prefix_is_dropped() {
        assert_eq!(
            segments("/sites/subdomain-acme/plans/code-a%2Fb+c"),
            ["plans", "code-a/b+c"]
        );
        assert!(exempt_from_rate_limit(&segments("/usage/abc")));
        assert!(exempt_from_rate_limit(&segments(
            "/subscriptions/s/add_ons/code-x/usage"
        )));
        assert!(!exempt_from_rate_limit(&segments("/plans")));
    }

    #[test]
    fn injected_gateway_errors_have_no_recurly_body() {
        let res = injected_error(503);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().get("Recurly-Version").is_none());
        let res = injected_error(500);
        assert_eq!(
            res.headers().get("Content-Type").unwrap(),
            "application/json; charset=utf-8"
        );
    }
}
