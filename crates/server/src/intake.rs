//! Webhook intake: secret, size, shape, organization, interest, dedupe, queue. Each refusal says
//! what was wrong, and nothing of a refused or ignored request is processed.

use actix_web::{HttpRequest, HttpResponse, web};
use billing_bridge_amplify::{EnvelopeHead, EventType, WebhookEnvelope};
use billing_bridge_domain::events::EventPayload;
use billing_bridge_pipeline::intake::{NotAdmitted, QueueError, Queued, Source, admit, queue_once};
use billing_bridge_pipeline::metrics::{WebhookIgnored, WebhookOutcome};
use billing_bridge_store::StoreError;
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde_json::json;
use tracing::{Instrument, Span};

use crate::{AppState, secret_matches};

/// Where Amplify posts events; `install-hooks` registers this path.
pub const WEBHOOK_PATH: &str = "/webhooks/amplify";

/// Counts the outcome and notes it on the webhook's span.
fn record_outcome(state: &AppState, outcome: WebhookOutcome) {
    state.bridge.metrics.webhook(outcome);
    Span::current().record("outcome", outcome.as_str());
}

fn refuse(
    state: &AppState,
    outcome: WebhookOutcome,
    status: actix_web::http::StatusCode,
    message: String,
) -> HttpResponse {
    record_outcome(state, outcome);
    HttpResponse::build(status).json(json!({"error": message}))
}

fn busy(state: &AppState, retry_after_secs: u32, message: String) -> HttpResponse {
    record_outcome(state, WebhookOutcome::Busy);
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", retry_after_secs.to_string()))
        .json(json!({"error": message}))
}

/// 202 `ignored`: acknowledged (Amplify does not resend it) and counted by why.
fn ignored(state: &AppState, reason: WebhookIgnored) -> HttpResponse {
    state.bridge.metrics.webhook_ignored(reason);
    Span::current().record("outcome", WebhookOutcome::Ignored.as_str());
    HttpResponse::Accepted().json(json!({"status": "ignored", "reason": reason.as_str()}))
}

fn answered(state: &AppState, outcome: WebhookOutcome, status: &str) -> HttpResponse {
    record_outcome(state, outcome);
    HttpResponse::Accepted().json(json!({"status": status}))
}

/// One webhook, one trace: the root span opens here and travels with the queued event.
pub(crate) async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let span = billing_bridge_pipeline::trace::webhook_span();
    accept(req, payload, state).instrument(span).await
}

async fn accept(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let config = &state.bridge.config;
    let expected = config
        .webhook
        .secret
        .as_ref()
        .map(|s| s.expose_secret())
        .unwrap_or("");
    let given = req
        .headers()
        .get(config.webhook.header.as_str())
        .map(|v| v.as_bytes());
    if expected.is_empty() || !secret_matches(given, expected) {
        return refuse(
            &state,
            WebhookOutcome::Unauthorized,
            StatusCode::UNAUTHORIZED,
            format!(
                "missing or wrong secret in the {} header",
                config.webhook.header
            ),
        );
    }

    let limit = config.server.max_body_bytes;
    let announced = req
        .headers()
        .get("Content-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|length| length > limit) {
        return refuse(
            &state,
            WebhookOutcome::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is over the {limit}-byte limit"),
        );
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return refuse(
                &state,
                WebhookOutcome::Malformed,
                StatusCode::BAD_REQUEST,
                "the body could not be read".into(),
            );
        };
        if body.len() + chunk.len() > limit {
            return refuse(
                &state,
                WebhookOutcome::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over the {limit}-byte limit"),
            );
        }
        body.extend_from_slice(&chunk);
    }
    // A connection closed before the announced length leaves an incomplete message (RFC 9112
    // §6.3), even when what arrived happens to parse.
    if announced.is_some_and(|length| length != body.len()) {
        return refuse(
            &state,
            WebhookOutcome::Malformed,
            StatusCode::BAD_REQUEST,
            format!(
                "the body ended after {} of the {} bytes its Content-Length announced",
                body.len(),
                announced.unwrap_or_default()
            ),
        );
    }

    // Only the payload fields the rules read are parsed; the rest of the resource is skipped.
    let envelope: WebhookEnvelope<EventPayload> = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(e) => {
            // An event that is no resource change (`TriggerAction`, `Ping`, a type added later)
            // has a shape of its own: acknowledged and counted, never refused.
            if let Ok(head) = serde_json::from_slice::<EnvelopeHead>(&body)
                && !EventType::is_change(&head.event_type)
            {
                return ignored(&state, WebhookIgnored::EventType);
            }
            return refuse(
                &state,
                WebhookOutcome::Malformed,
                StatusCode::BAD_REQUEST,
                format!("not an Amplify webhook event (expected id, time, type, payload): {e}"),
            );
        }
    };
    let span = Span::current();
    span.record("event_id", envelope.id.as_str());
    span.record("event_type", tracing::field::debug(&envelope.event_type));
    if let Some(correlation) = envelope.correlation_id.as_deref() {
        span.record("correlation_id", correlation);
    }
    if envelope.id.trim().is_empty() {
        return refuse(
            &state,
            WebhookOutcome::Malformed,
            StatusCode::BAD_REQUEST,
            "the event has an empty id".into(),
        );
    }
    let mut event = match admit(config, &envelope, Source::Webhook) {
        Ok(event) => event,
        Err(NotAdmitted::Ignored(reason)) => return ignored(&state, reason),
        Err(NotAdmitted::BadName(e)) => {
            return refuse(
                &state,
                WebhookOutcome::Malformed,
                StatusCode::BAD_REQUEST,
                format!("the event's resource name is refused: {e}"),
            );
        }
    };
    span.record("kind", tracing::field::debug(&event.kind));
    span.record("resource", event.name.as_str());
    event.trace_parent = billing_bridge_pipeline::trace::traceparent(&span);
    tracing::debug!(event = %envelope.id, kind = ?event.kind, resource = %event.name, correlation = ?event.correlation_id, "webhook accepted");
    match queue_once(&state.bridge.store, event).await {
        Ok(Queued::Queued) => answered(&state, WebhookOutcome::Accepted, "accepted"),
        Ok(Queued::Duplicate) => answered(&state, WebhookOutcome::Duplicate, "duplicate"),
        Err(QueueError::InFlight) => busy(
            &state,
            1,
            "the same event is being accepted right now; send it again shortly".into(),
        ),
        Err(QueueError::Store(e)) => {
            let retry = if matches!(e, StoreError::QueueFull { .. }) {
                5
            } else {
                10
            };
            busy(&state, retry, format!("cannot accept events now: {e}"))
        }
    }
}
