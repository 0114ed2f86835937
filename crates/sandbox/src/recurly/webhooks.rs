//! Recurly webhook notifications (reference §7): JSON envelopes signed with each endpoint's
//! secret, POSTed to the endpoints registered through the control routes, retried on Recurly's
//! schedule on the sandbox clock.
//!
//! Recurly configures endpoints only in its admin console; `/_sandbox/recurly/webhook_endpoints`
//! stands in for it, and `/_sandbox/recurly/notifications` shows every delivery.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::billing::{Event, INVOICE_OBJECT_TYPE, Processed};
use super::clock::{Clock, rfc3339_ms};
use super::store::{new_id, timestamp};
use crate::SandboxState;

/// The `site_id` of every envelope: one API key is one site [I: any 12-character id].
pub(crate) const SITE_ID: &str = "sandboxsite0";
/// "Up to 10" endpoints per site (reference §7).
pub(crate) const MAX_ENDPOINTS: usize = 10;
/// Retries after the first attempt before a notification is marked failed (reference §7).
pub(crate) const MAX_RETRIES: usize = 10;
/// A receiver must answer 2xx within 5 s (reference §7).
pub(crate) const DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Wait before the next attempt after `failed` attempts: `10 + x·2^(x+5)` seconds (reference §7),
/// with `x` the number of attempts made so far [I: which count `x` is].
pub(crate) fn retry_delay(failed: usize) -> Duration {
    let x = i64::try_from(failed).unwrap_or(i64::MAX).min(40);
    Duration::seconds(10 + x * (1_i64 << (x + 5)))
}

/// Fields of a JSON envelope beyond `id`, `object_type`, `site_id`, `event_type`, `event_time`:
/// the reference names `uuid` (subscriptions) and `subscription_uuid`/`add_on_code` (usage);
/// Recurly's docs show `invoice_number` on invoice events; accounts get `account_code` [I].
fn envelope(event: &Event) -> Value {
    let mut body = Map::new();
    body.insert("id".into(), json!(event.id));
    body.insert("object_type".into(), json!(event.object_type));
    body.insert("site_id".into(), json!(SITE_ID));
    body.insert("event_type".into(), json!(event.event_type));
    body.insert("event_time".into(), json!(timestamp(event.at)));
    for (key, value) in &event.fields {
        body.insert(key.clone(), value.clone());
    }
    Value::Object(body)
}

/// `hex(hmac_sha256(secret, "{ts}.{body}"))`, the signature of reference §7.
pub(crate) fn signature(secret: &str, ts_ms: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{ts_ms}.{body}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Debug)]
struct Endpoint {
    id: String,
    url: String,
    secret: String,
}

#[derive(Clone, Debug, Serialize)]
struct Delivery {
    /// Sandbox-clock time of the attempt.
    at: String,
    /// The receiver's status, or `None` when it did not answer in time.
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct Notification {
    /// The `recurly-notification-id` header, the same on every attempt.
    notification_id: String,
    endpoint_id: String,
    url: String,
    object_type: &'static str,
    event_type: &'static str,
    object_id: String,
    body: Value,
    /// `pending`, `delivered`, `failed` (no 2xx after every retry) or `dropped` (`drop_next`).
    status: &'static str,
    delivered: bool,
    attempts: usize,
    deliveries: Vec<Delivery>,
    next_attempt_at: Option<String>,
    #[serde(skip)]
    raw: String,
    #[serde(skip)]
    due: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Inner {
    endpoints: Vec<Endpoint>,
    notifications: Vec<Notification>,
    drop_next: DropNext,
}

/// `PUT /_sandbox/recurly/notifications/drop_next`: the next `count` notifications (of that
/// `object_type` and `event_type` when given) are never delivered.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DropNext {
    count: u64,
    #[serde(default)]
    object_type: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
}

impl DropNext {
    /// Whether this notification is dropped (and counted).
    fn take(&mut self, event: &Event) -> bool {
        let matches = self.count > 0
            && self
                .object_type
                .as_deref()
                .is_none_or(|o| o == event.object_type)
            && self
                .event_type
                .as_deref()
                .is_none_or(|e| e == event.event_type);
        if matches {
            self.count -= 1;
        }
        matches
    }
}

pub(crate) struct Notifier {
    inner: Mutex<Inner>,
    /// One deliverer at a time (the background tick and `POST /_sandbox/clock`), so a
    /// notification is never sent twice for one due attempt.
    delivering: tokio::sync::Mutex<()>,
    client: reqwest::Client,
}

impl Default for Notifier {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            delivering: tokio::sync::Mutex::new(()),
            // Redirects are not followed (reference §7).
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }
}

impl Notifier {
    pub fn reset(&self) {
        *self.inner.lock() = Inner::default();
    }

    /// One notification per registered endpoint for each event; `drop_next` swallows some.
    pub fn enqueue(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        for event in events {
            let body = envelope(&event);
            let raw = body.to_string();
            for endpoint in inner.endpoints.clone() {
                let dropped = inner.drop_next.take(&event);
                inner.notifications.push(Notification {
                    notification_id: uuid::Uuid::new_v4().to_string(),
                    endpoint_id: endpoint.id.clone(),
                    url: endpoint.url.clone(),
                    object_type: event.object_type,
                    event_type: event.event_type,
                    object_id: event.id.clone(),
                    body: body.clone(),
                    status: if dropped { "dropped" } else { "pending" },
                    delivered: false,
                    attempts: 0,
                    deliveries: Vec::new(),
                    next_attempt_at: (!dropped).then(|| rfc3339_ms(event.at)),
                    raw: raw.clone(),
                    due: (!dropped).then_some(event.at),
                });
            }
        }
    }

    /// Sends every attempt due on `clock`, oldest first; a failed attempt due again before now
    /// (the clock jumped) is sent again in the same pass, each recorded at its scheduled time.
    pub async fn deliver_due(&self, clock: &Clock) -> Vec<Processed> {
        let _one = self.delivering.lock().await;
        let mut done = Vec::new();
        loop {
            let now = clock.now();
            let job = {
                let inner = self.inner.lock();
                inner
                    .notifications
                    .iter()
                    .filter(|n| n.status == "pending" && n.due.is_some_and(|d| d <= now))
                    .min_by_key(|n| n.due)
                    .map(|n| {
                        let secret = inner
                            .endpoints
                            .iter()
                            .find(|e| e.id == n.endpoint_id)
                            .map(|e| e.secret.clone());
                        (
                            n.notification_id.clone(),
                            n.url.clone(),
                            secret,
                            n.raw.clone(),
                            n.due.unwrap_or(now),
                        )
                    })
            };
            let Some((id, url, secret, raw, due)) = job else {
                break;
            };
            let (status, error) = match secret {
                Some(secret) => self.post(&url, &secret, &id, raw).await,
                None => (None, Some("the endpoint was removed".to_owned())),
            };
            let mut inner = self.inner.lock();
            let Some(n) = inner
                .notifications
                .iter_mut()
                .find(|n| n.notification_id == id)
            else {
                continue;
            };
            n.attempts += 1;
            n.deliveries.push(Delivery {
                at: rfc3339_ms(due),
                status,
                error,
            });
            if status.is_some_and(|s| (200..300).contains(&s)) {
                n.status = "delivered";
                n.delivered = true;
                n.due = None;
            } else if n.attempts > MAX_RETRIES {
                n.status = "failed";
                n.due = None;
            } else {
                n.due = Some(due + retry_delay(n.attempts));
            }
            n.next_attempt_at = n.due.map(rfc3339_ms);
            let (sub, invoice) = match n.object_type {
                "subscription" => (Some(n.object_id.as_str()), None),
                INVOICE_OBJECT_TYPE => (None, Some(n.object_id.as_str())),
                _ => (None, None),
            };
            done.push(Processed::new(due, "notification", sub, invoice));
        }
        done
    }

    /// One POST; the timestamp in `recurly-signature` is the real time of sending, which is what
    /// a receiver checks its drift against (the sandbox clock may be days ahead).
    async fn post(
        &self,
        url: &str,
        secret: &str,
        id: &str,
        raw: String,
    ) -> (Option<u16>, Option<String>) {
        let ts = Utc::now().timestamp_millis();
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header(
                "recurly-signature",
                format!("{ts},{}", signature(secret, ts, &raw)),
            )
            .header("recurly-notification-id", id)
            .timeout(DELIVERY_TIMEOUT)
            .body(raw)
            .send()
            .await;
        match sent {
            Ok(reply) => (Some(reply.status().as_u16()), None),
            Err(e) if e.is_timeout() => (None, Some("no answer within 5 s".to_owned())),
            Err(e) => (None, Some(format!("not delivered: {e}"))),
        }
    }
}

// ---- control routes ----------------------------------------------------------------------

fn bad_request(message: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": message.into()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointInput {
    url: String,
    secret: String,
}

pub(super) async fn add_endpoint(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    let input: EndpointInput = match serde_json::from_slice(&body) {
        Ok(input) => input,
        Err(e) => return bad_request(format!("expected {{\"url\", \"secret\"}}: {e}")),
    };
    match reqwest::Url::parse(&input.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        _ => return bad_request("url must be an absolute http or https URL"),
    }
    if input.secret.is_empty() {
        return bad_request("secret must not be empty");
    }
    let mut inner = state.recurly.notifier.inner.lock();
    if inner.endpoints.len() >= MAX_ENDPOINTS {
        return bad_request(format!(
            "a site has at most {MAX_ENDPOINTS} webhook endpoints"
        ));
    }
    let id = new_id();
    inner.endpoints.push(Endpoint {
        id: id.clone(),
        url: input.url.clone(),
        secret: input.secret,
    });
    HttpResponse::Created().json(json!({"id": id, "url": input.url}))
}

/// The endpoints, secrets shown only as set.
pub(super) async fn list_endpoints(state: web::Data<SandboxState>) -> HttpResponse {
    let inner = state.recurly.notifier.inner.lock();
    let listed: Vec<Value> = inner
        .endpoints
        .iter()
        .map(|e| json!({"id": e.id, "url": e.url, "secret": "<set>"}))
        .collect();
    HttpResponse::Ok().json(listed)
}

pub(super) async fn delete_endpoint(
    state: web::Data<SandboxState>,
    path: web::Path<String>,
) -> HttpResponse {
    let mut inner = state.recurly.notifier.inner.lock();
    let before = inner.endpoints.len();
    inner.endpoints.retain(|e| e.id != *path);
    if inner.endpoints.len() == before {
        return HttpResponse::NotFound()
            .json(json!({"error": format!("no webhook endpoint '{path}'")}));
    }
    HttpResponse::NoContent().finish()
}

pub(super) async fn list_notifications(state: web::Data<SandboxState>) -> HttpResponse {
    let inner = state.recurly.notifier.inner.lock();
    HttpResponse::Ok().json(&inner.notifications)
}

pub(super) async fn drop_next(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<DropNext>(&body) {
        Ok(rule) => {
            state.recurly.notifier.inner.lock().drop_next = rule.clone();
            HttpResponse::Ok().json(json!({"drop_next": rule}))
        }
        Err(e) => bad_request(format!(
            "expected {{\"count\": N, \"object_type\"?, \"event_type\"?}}: {e}"
        )),
    }
}

/// Runs due billing work and deliveries every quarter second of real time, for notifications
/// caused by API calls and retries that come due as the clock runs.
pub(crate) fn spawn_worker(state: Arc<SandboxState>) {
    let state = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else {
                break;
            };
            state.recurly.catch_up();
            state
                .recurly
                .notifier
                .deliver_due(&state.recurly.clock)
                .await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_recurlys_formula() {
        assert_eq!(retry_delay(1).num_seconds(), 10 + 64);
        assert_eq!(retry_delay(2).num_seconds(), 10 + 2 * 128);
        assert_eq!(retry_delay(10).num_seconds(), 10 + 10 * 32768);
    }

    #[test]
    fn the_signature_is_hex_hmac_sha256_of_timestamp_dot_body() {
        let sig = signature("Jefe", 0, "");
        assert_eq!(sig.len(), 64);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert!(ring::hmac::verify(&key, b"0.", &hex_decode(&sig)).is_ok());
    }

    fn hex_decode(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
