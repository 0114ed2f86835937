//! `POST /ingest/transactions` (docs/ingest.md): batches of agent-sdk `transactionSummary` events
//! pushed by gateways and log pipelines. The token is checked before the body is read; a body too
//! large (as sent or unzipped) or not a JSON array / NDJSON is refused whole; each event is then
//! accepted, a duplicate (its `transactionId` was taken before), ignored (another event type) or
//! refused with its reason. The answer comes only once the store holds every accepted event
//! durably, so a sender that got no answer sends the batch again, and loses and doubles nothing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use billing_bridge_config::TrafficSource;
use billing_bridge_domain::transactions::{Group, Parsed, parse_event, tx_key};
use billing_bridge_domain::usage::Window;
use billing_bridge_pipeline::metrics::{IngestBatchStatus, IngestOutcomeLabel, IngestRefusal};
use billing_bridge_store::{IngestWindow, ingest_generation};
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::{AppState, bearer, secret_matches};

/// A batch's groups by value (a fast hash: the keys are short ids, not attacker-chosen keys
/// that could collide on purpose to any effect beyond one slow batch).
type GroupIndex<'a> = HashMap<Group<'a>, u32, foldhash::fast::RandomState>;

pub const INGEST_PATH: &str = "/ingest/transactions";
/// Refusals listed in an answer; `refused` counts them all.
const LISTED_REFUSALS: usize = 100;

#[derive(Serialize)]
struct Refusal<'a> {
    index: usize,
    #[serde(rename = "transactionId")]
    transaction_id: Option<Cow<'a, str>>,
    reason: &'static str,
    detail: String,
}

#[derive(Serialize, Default)]
struct Answer<'a> {
    received: usize,
    accepted: u64,
    duplicates: u64,
    ignored: u64,
    refused: u64,
    refusals: Vec<Refusal<'a>>,
}

impl<'a> Answer<'a> {
    /// Counts a refused event; the first [`LISTED_REFUSALS`] are listed.
    fn refuse(&mut self, refusal: Refusal<'a>) {
        self.refused += 1;
        if self.refusals.len() < LISTED_REFUSALS {
            self.refusals.push(refusal);
        }
    }
}

fn refuse(
    state: &AppState,
    status: IngestBatchStatus,
    code: StatusCode,
    message: String,
) -> HttpResponse {
    state.bridge.metrics.ingest_batch(status, 0.0);
    HttpResponse::build(code).json(json!({"error": message}))
}

fn rfc3339(ms: i64) -> String {
    billing_bridge_pipeline::usage::rfc3339(ms)
}

/// Splits a body into its events: a JSON array's elements, or NDJSON's non-blank lines.
fn events(body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<&RawValue> = serde_json::from_slice(body)
            .map_err(|e| format!("the body starts as a JSON array but is not one: {e}"))?;
        return Ok(items.into_iter().map(|v| v.get().as_bytes()).collect());
    }
    Ok(body
        .split(|b| *b == b'\n')
        .map(|line| line.trim_ascii())
        .filter(|line| !line.is_empty())
        .collect())
}

pub(crate) async fn receive(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let started = Instant::now();
    let config = &state.bridge.config;
    if config.reporting.source != TrafficSource::Push {
        return refuse(
            &state,
            IngestBatchStatus::Off,
            StatusCode::CONFLICT,
            "push ingestion is off: set [reporting] source = \"push\" to bill pushed transactions"
                .into(),
        );
    }
    let given = bearer(&req);
    let expected = config
        .ingest
        .token
        .as_ref()
        .map(|t| t.expose_secret())
        .unwrap_or("");
    if expected.is_empty() || !secret_matches(given, expected) {
        return refuse(
            &state,
            IngestBatchStatus::Unauthorized,
            StatusCode::UNAUTHORIZED,
            "missing or wrong ingest token (Authorization: Bearer <[ingest] token>)".into(),
        );
    }
    let gzip = match req
        .headers()
        .get("Content-Encoding")
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") | Some("") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            state
                .bridge
                .metrics
                .ingest_batch(IngestBatchStatus::BadRequest, 0.0);
            return HttpResponse::UnsupportedMediaType().json(json!({
                "error": format!("Content-Encoding {other:?} is not supported: send gzip or identity")
            }));
        }
    };

    let limit = config.ingest.max_body_bytes;
    let too_large = |what: String| {
        refuse(
            &state,
            IngestBatchStatus::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            what,
        )
    };
    let announced = req
        .headers()
        .get("Content-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return too_large(format!(
            "the body is over the {limit}-byte limit ([ingest] max_body_bytes)"
        ));
    }
    let mut body = web::BytesMut::with_capacity(announced.unwrap_or(64 * 1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return refuse(
                &state,
                IngestBatchStatus::BadRequest,
                StatusCode::BAD_REQUEST,
                "the body could not be read".into(),
            );
        };
        if body.len() + chunk.len() > limit {
            return too_large(format!(
                "the body is over the {limit}-byte limit ([ingest] max_body_bytes)"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if announced.is_some_and(|n| n != body.len()) {
        return refuse(
            &state,
            IngestBatchStatus::BadRequest,
            StatusCode::BAD_REQUEST,
            format!(
                "the body ended after {} of the {} bytes its Content-Length announced",
                body.len(),
                announced.unwrap_or_default()
            ),
        );
    }
    let decoded: Vec<u8>;
    let body: &[u8] = if gzip {
        let max = config.ingest.max_decoded_bytes;
        let mut out = Vec::with_capacity((body.len() * 8).min(max));
        let read = flate2::read::MultiGzDecoder::new(&body[..])
            .take(max as u64 + 1)
            .read_to_end(&mut out);
        if let Err(e) = read {
            return refuse(
                &state,
                IngestBatchStatus::BadRequest,
                StatusCode::BAD_REQUEST,
                format!("the gzip body does not decode: {e}"),
            );
        }
        if out.len() > max {
            return too_large(format!(
                "the body unzips to more than {max} bytes ([ingest] max_decoded_bytes)"
            ));
        }
        decoded = out;
        &decoded
    } else {
        &body
    };
    let events = match events(body) {
        Ok(events) => events,
        Err(e) => {
            return refuse(
                &state,
                IngestBatchStatus::BadRequest,
                StatusCode::BAD_REQUEST,
                e,
            );
        }
    };
    if events.len() > config.ingest.max_events {
        return too_large(format!(
            "{} events is more than the {} a batch may hold ([ingest] max_events)",
            events.len(),
            config.ingest.max_events
        ));
    }

    let now = chrono::Utc::now().timestamp_millis();
    let horizon = config.ingest.horizon.as_millis() as i64;
    let oldest = now - horizon;
    let newest = now + config.ingest.future_skew.as_millis() as i64;
    let len = config.reporting.window.as_millis() as i64;
    let mut answer = Answer {
        received: events.len(),
        ..Answer::default()
    };
    let (mut too_old, mut in_future, mut invalid) = (0u64, 0u64, 0u64);
    let mut windows: Vec<(IngestWindow, GroupIndex<'_>)> = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let tx = match parse_event(event) {
            Ok(Parsed::Transaction(tx)) => tx,
            Ok(Parsed::Ignored) => {
                answer.ignored += 1;
                continue;
            }
            Err(detail) => {
                invalid += 1;
                answer.refuse(Refusal {
                    index,
                    transaction_id: None,
                    reason: "invalid",
                    detail,
                });
                continue;
            }
        };
        if tx.timestamp_ms < oldest || tx.timestamp_ms > newest {
            let (reason, detail) = if tx.timestamp_ms < oldest {
                too_old += 1;
                (
                    "too_old",
                    format!(
                        "timestamp {} is older than the {} horizon ([ingest] horizon): its window is no longer reported",
                        rfc3339(tx.timestamp_ms),
                        humantime::format_duration(config.ingest.horizon)
                    ),
                )
            } else {
                in_future += 1;
                (
                    "in_future",
                    format!(
                        "timestamp {} is more than {} ahead of this server's clock",
                        rfc3339(tx.timestamp_ms),
                        humantime::format_duration(config.ingest.future_skew)
                    ),
                )
            };
            answer.refuse(Refusal {
                index,
                transaction_id: Some(tx.id),
                reason,
                detail,
            });
            continue;
        }
        let start = Window::containing(tx.timestamp_ms, len).start_ms;
        let at = match windows.iter().position(|(w, _)| w.start_ms == start) {
            Some(at) => at,
            None => {
                windows.push((
                    IngestWindow {
                        start_ms: start,
                        ..IngestWindow::default()
                    },
                    GroupIndex::default(),
                ));
                windows.len() - 1
            }
        };
        let (window, groups) = &mut windows[at];
        let group = match groups.get(&tx.group) {
            Some(g) => *g,
            None => {
                let g = window.groups.len() as u32;
                window.groups.push(tx.group.to_owned_key());
                groups.insert(tx.group, g);
                g
            }
        };
        window.transactions.push((tx_key(&tx.id), group));
    }
    let batch: Vec<IngestWindow> = windows.into_iter().map(|(w, _)| w).collect();
    let metrics = &state.bridge.metrics;
    let skew = config.ingest.future_skew.as_millis() as i64;
    let generation = ingest_generation(now, horizon, skew);
    let stored = if batch.is_empty() {
        Ok(Default::default())
    } else {
        state.bridge.store.ingest(generation, &batch).await
    };
    let outcome = match stored {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(error = %e, "ingest: the store did not take a batch; the sender will send it again");
            state
                .bridge
                .metrics
                .ingest_batch(IngestBatchStatus::Unavailable, 0.0);
            return HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "1"))
                .json(json!({"error": format!("{e}; nothing of this batch was acknowledged: send it again")}));
        }
    };
    answer.accepted = outcome.accepted;
    answer.duplicates = outcome.duplicates;
    metrics.ingested(IngestOutcomeLabel::Accepted, outcome.accepted);
    metrics.ingested(IngestOutcomeLabel::Duplicate, outcome.duplicates);
    metrics.ingested(IngestOutcomeLabel::Ignored, answer.ignored);
    metrics.ingested(IngestOutcomeLabel::Refused, answer.refused);
    metrics.ingest_refused(IngestRefusal::TooOld, too_old);
    metrics.ingest_refused(IngestRefusal::InFuture, in_future);
    metrics.ingest_refused(IngestRefusal::Invalid, invalid);
    metrics.ingest_batch(IngestBatchStatus::Ok, started.elapsed().as_secs_f64());
    forget_expired_ids(&state, generation);
    HttpResponse::Ok().json(answer)
}

/// Ids of generations before the previous one can repeat no event the horizon admits: they
/// are dropped, once per generation, in the background.
fn forget_expired_ids(state: &web::Data<AppState>, generation: i64) {
    let before = generation - 1;
    let previous = state.bridge.ingest_forgotten_before.load(Ordering::Acquire);
    if before <= previous
        || state
            .bridge
            .ingest_forgotten_before
            .compare_exchange(previous, before, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return;
    }
    let bridge = state.bridge.clone();
    actix_web::rt::spawn(async move {
        if let Err(e) = bridge.store.forget_ingested_ids(before).await {
            tracing::warn!(error = %e, "ingest: ids past the horizon could not be dropped yet");
            bridge
                .ingest_forgotten_before
                .store(previous, Ordering::Release);
        }
    });
}
