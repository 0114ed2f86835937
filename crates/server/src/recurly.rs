//! `POST /webhooks/recurly`: Recurly's JSON notifications (reference §7). The signature is checked
//! before anything else is read, a notification id is acted on once, and what it names is read
//! again from Recurly before anything is done (the body is only a hint; events arrive out of order).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use billing_bridge_pipeline::billing_state::{Named, act_on};
use billing_bridge_pipeline::metrics::RecurlyNotificationOutcome;
use billing_bridge_store::Claim;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::Sha256;

use crate::AppState;

pub const RECURLY_WEBHOOK_PATH: &str = "/webhooks/recurly";
/// A notification being handled is held this long against a concurrent copy.
const HOLD: Duration = Duration::from_secs(60);
/// Recurly keeps notifications (and so may resend one) for 15 days (reference §7).
const KEEP: Duration = Duration::from_secs(16 * 24 * 3600);

fn answer(
    state: &AppState,
    outcome: RecurlyNotificationOutcome,
    status: StatusCode,
    body: serde_json::Value,
) -> HttpResponse {
    state.bridge.metrics.recurly_notification(outcome);
    let mut response = HttpResponse::build(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.insert_header(("Retry-After", "10"));
    }
    response.json(body)
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `header` (`<ts_ms>,<hex hmac>[,<hex hmac>...]`) signs `body` with `secret` at a time
/// within `tolerance_ms` of `now_ms`. Any listed signature may match (two are valid while a key
/// is rotated); each is compared in constant time.
pub fn signature_valid(
    header: &str,
    body: &[u8],
    secret: &[u8],
    now_ms: i64,
    tolerance_ms: i64,
) -> bool {
    let mut parts = header.split(',').map(str::trim);
    let Some(ts) = parts.next().and_then(|t| t.parse::<i64>().ok()) else {
        return false;
    };
    if (now_ms - ts).abs() > tolerance_ms {
        return false;
    }
    let mut matched = false;
    for signature in parts {
        let Some(signature) = hex(signature) else {
            continue;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(ts.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // Every signature is checked, so the time taken does not say which one matched.
        matched |= mac.verify_slice(&signature).is_ok();
    }
    matched
}

pub async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let bridge = &state.bridge;
    let Some(secret) = bridge.config.recurly.webhook_secret.as_ref() else {
        return answer(
            &state,
            RecurlyNotificationOutcome::Unauthorized,
            StatusCode::UNAUTHORIZED,
            json!({"error": "Recurly notifications are off: set recurly.webhook_secret"}),
        );
    };
    let signature = req
        .headers()
        .get("recurly-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let tolerance = bridge.config.recurly.webhook_tolerance.as_millis() as i64;
    if !signature_valid(
        signature,
        &body,
        secret.expose_secret().as_bytes(),
        // The wall clock, as Recurly's: the signature says when it was sent, not billing time.
        chrono::Utc::now().timestamp_millis(),
        tolerance,
    ) {
        return answer(
            &state,
            RecurlyNotificationOutcome::Unauthorized,
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing, wrong or stale recurly-signature"}),
        );
    }
    let Some(id) = req
        .headers()
        .get("recurly-notification-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
    else {
        return answer(
            &state,
            RecurlyNotificationOutcome::Malformed,
            StatusCode::BAD_REQUEST,
            json!({"error": "the recurly-notification-id header is missing"}),
        );
    };
    let envelope: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        _ => {
            return answer(
                &state,
                RecurlyNotificationOutcome::Malformed,
                StatusCode::BAD_REQUEST,
                json!({"error": "the body is not a JSON notification (object_type, id, event_type)"}),
            );
        }
    };
    let named = Named::of(
        envelope["object_type"].as_str().unwrap_or_default(),
        envelope["id"].as_str().unwrap_or_default(),
    );
    let key = format!("recurly-notification:{id}");
    match bridge.store.claim_event(&key, HOLD).await {
        Ok(Claim::Claimed) => {}
        Ok(Claim::Done) => {
            return answer(
                &state,
                RecurlyNotificationOutcome::Duplicate,
                StatusCode::OK,
                json!({"status": "duplicate"}),
            );
        }
        Ok(Claim::InFlight) => {
            // The first copy is being handled; if it fails, this resend must not be lost.
            return answer(
                &state,
                RecurlyNotificationOutcome::Failed,
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "this notification is being handled; send it again later"}),
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "Recurly notification not taken: the store is unavailable");
            return answer(
                &state,
                RecurlyNotificationOutcome::Failed,
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the store is unavailable"}),
            );
        }
    }
    let notices = state.pipeline.notices();
    match act_on(bridge, &notices, &named).await {
        Ok(acted) => {
            let _ = bridge.store.finish_event(&key, KEEP).await;
            tracing::info!(notification = %id, event = %envelope["event_type"], ?acted, "Recurly notification");
            answer(
                &state,
                RecurlyNotificationOutcome::Accepted,
                StatusCode::OK,
                json!({"status": "accepted", "acted": acted}),
            )
        }
        Err(e) => {
            let _ = bridge.store.abandon_event(&key).await;
            tracing::warn!(notification = %id, error = %e, "Recurly notification not handled; Recurly sends it again");
            answer(
                &state,
                RecurlyNotificationOutcome::Failed,
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!("not handled yet: {e}")}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], ts: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn any_listed_signature_within_the_drift_is_accepted_and_nothing_else() {
        let body = br#"{"id":"s1","object_type":"subscription","event_type":"expired"}"#;
        let now = 1_700_000_000_000;
        let good = sign(b"key", now, body);
        let old_key = sign(b"old", now, body);
        let tolerance = 300_000;
        assert!(signature_valid(
            &format!("{now},{good}"),
            body,
            b"key",
            now,
            tolerance
        ));
        assert!(signature_valid(
            &format!("{now},{old_key},{good}"),
            body,
            b"key",
            now,
            tolerance
        ));
        assert!(!signature_valid(
            &format!("{now},{old_key}"),
            body,
            b"key",
            now,
            tolerance
        ));
        assert!(!signature_valid(
            &format!("{now},{good}"),
            b"{}",
            b"key",
            now,
            tolerance
        ));
        let stale = now - tolerance - 1;
        let stale_sig = sign(b"key", stale, body);
        assert!(!signature_valid(
            &format!("{stale},{stale_sig}"),
            body,
            b"key",
            now,
            tolerance
        ));
        assert!(!signature_valid(&good, body, b"key", now, tolerance));
        assert!(!signature_valid("", body, b"key", now, tolerance));
        assert!(!signature_valid(
            &format!("{now},zz"),
            body,
            b"key",
            now,
            tolerance
        ));
    }
}
