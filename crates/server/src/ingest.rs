//! `POST /ingest/transactions` (docs/ingest.md): batches of agent-sdk transaction summaries, in
//! either shape (`domain::transactions` reads both), pushed by gateways and log pipelines. The token is checked before the body is read; a body too
//! large (as sent or unzipped), too slow to arrive, over the shared in-flight byte budget, or not a
//! JSON array / NDJSON is refused whole; each event is then accepted, a duplicate (its
//! transaction id was taken before, in either shape), ignored (another event type) or refused with its reason. The
//! answer comes only once the store holds every accepted event durably, so a sender that got no
//! answer sends the batch again, and loses and doubles nothing.
//!
//! Fairness: the request threads only move bytes. Unzipping and parsing run on the blocking pool,
//! a few batches at a time (`[ingest] parse_threads`), and every byte a batch holds is reserved
//! from one budget first (`[ingest] max_inflight_bytes`), so `/healthz`, webhooks and small
//! senders are answered while big bodies are decoded, and memory stays bounded.

use std::borrow::Cow;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use billing_bridge_config::{IngestConfig, TrafficSource};
use billing_bridge_domain::ingest::{Admission, BatchWindows, Placement};
use billing_bridge_domain::transactions::{
    Group, Parsed, TxKey, parse_event, refused_transaction_id, tx_key,
};
use billing_bridge_pipeline::metrics::{
    IngestBatchStatus, IngestOutcomeLabel, IngestRefusal, Metrics,
};
use billing_bridge_store::{IngestWindow, ingest_generation};
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::budget::{InflightBudget, Reservation};
use crate::{AppState, bearer, secret_matches};

pub const INGEST_PATH: &str = "/ingest/transactions";
/// Refusals listed in an answer; `refused` counts them all.
const LISTED_REFUSALS: usize = 100;
/// What a 503 for a spent budget asks the sender to wait: batches in progress finish in well
/// under a second each, so a second frees room for most.
const RETRY_AFTER_SECONDS: &str = "1";
/// The first room given to a body of unknown length, and at least that given to an unzipped
/// one; both grow by half as they fill.
const FIRST_ROOM: usize = 64 * 1024;
/// Room for unzipping is reserved with the zipped body, at this many times its size (JSON
/// events unzip to 5–10 times): a batch admitted can then mostly be unzipped without asking the
/// budget again, so many big bodies received at once cannot each hold room the others need to
/// unzip and leave none of them able to finish.
const UNZIP_RATIO: usize = 8;
/// A UTF-8 byte order mark, which some log shippers write before a body.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// What every batch shares: the in-flight byte budget and the blocking pool's parse slots.
pub(crate) struct IngestGate {
    budget: Arc<InflightBudget>,
    parse_slots: Arc<Semaphore>,
}

impl IngestGate {
    pub(crate) fn new(config: &IngestConfig, metrics: &Metrics) -> Self {
        let slots = match config.parse_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Self {
            budget: InflightBudget::new(config.max_inflight_bytes, metrics.ingest_inflight.clone()),
            parse_slots: Arc::new(Semaphore::new(slots)),
        }
    }
}

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

    /// Copies the (at most [`LISTED_REFUSALS`]) ids borrowed from the body, so the body can go.
    fn into_owned(self) -> Answer<'static> {
        Answer {
            refusals: self
                .refusals
                .into_iter()
                .map(|r| Refusal {
                    index: r.index,
                    transaction_id: r.transaction_id.map(|id| Cow::Owned(id.into_owned())),
                    reason: r.reason,
                    detail: r.detail,
                })
                .collect(),
            received: self.received,
            accepted: self.accepted,
            duplicates: self.duplicates,
            ignored: self.ignored,
            refused: self.refused,
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

/// Why a batch is refused whole, before anything of it is taken.
#[derive(Debug)]
enum Whole {
    TooLarge(String),
    BadRequest(String),
    /// `[ingest] max_inflight_bytes` is spent.
    OverBudget,
}

impl Whole {
    fn answer(self, state: &AppState) -> HttpResponse {
        match self {
            Whole::TooLarge(e) => refuse(
                state,
                IngestBatchStatus::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                e,
            ),
            Whole::BadRequest(e) => refuse(
                state,
                IngestBatchStatus::BadRequest,
                StatusCode::BAD_REQUEST,
                e,
            ),
            Whole::OverBudget => {
                state
                    .bridge
                    .metrics
                    .ingest_batch(IngestBatchStatus::OverBudget, 0.0);
                HttpResponse::ServiceUnavailable()
                    .insert_header(("Retry-After", RETRY_AFTER_SECONDS))
                    .json(json!({"error": format!(
                        "the batches in progress hold all the bytes they may ([ingest] max_inflight_bytes = {}); nothing of this batch was taken: send it again after Retry-After",
                        state.bridge.config.ingest.max_inflight_bytes
                    )}))
            }
        }
    }
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

/// The next room for a buffer holding `len` of at most `limit` bytes: half as much again.
fn next_room(len: usize, first: usize, limit: usize) -> usize {
    len.saturating_add((len / 2).max(first)).min(limit)
}

/// The room reserved for unzipping `zipped` bytes before they are unzipped.
fn unzip_room(zipped: usize, max_decoded: usize) -> usize {
    zipped
        .saturating_mul(UNZIP_RATIO)
        .max(FIRST_ROOM)
        .min(max_decoded)
}

/// Reads the body as it arrives, reserving room in the budget before it is taken: at once for an
/// announced length, by halves for a chunked body.
async fn read_body(
    payload: &mut web::Payload,
    announced: Option<usize>,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, Whole> {
    let mut body = Vec::with_capacity(announced.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return Err(Whole::BadRequest("the body could not be read".into()));
        };
        let needed = body.len() + chunk.len();
        if needed > limit {
            return Err(Whole::TooLarge(format!(
                "the body is over the {limit}-byte limit ([ingest] max_body_bytes)"
            )));
        }
        if needed > body.capacity() {
            let room = next_room(body.len(), FIRST_ROOM, limit).max(needed);
            if !reservation.grow_to(reservation.bytes() + (room - body.capacity())) {
                return Err(Whole::OverBudget);
            }
            body.reserve_exact(room - body.len());
        }
        body.extend_from_slice(&chunk);
    }
    if let Some(announced) = announced.filter(|n| *n != body.len()) {
        return Err(Whole::BadRequest(format!(
            "the body ended after {} of the {announced} bytes its Content-Length announced",
            body.len()
        )));
    }
    Ok(body)
}

/// Unzips `zipped` into a buffer whose room is reserved before it is written: `reservation`
/// holds `zipped_room` bytes for the zipped copy and the rest for the first room of the
/// unzipped one; at most `max` bytes.
fn gunzip(
    zipped: &[u8],
    zipped_room: usize,
    max: usize,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, Whole> {
    let held = zipped_room;
    let reserved = reservation.bytes().saturating_sub(zipped_room);
    let too_large = || {
        Whole::TooLarge(format!(
            "the body unzips to more than {max} bytes ([ingest] max_decoded_bytes)"
        ))
    };
    let broken =
        |e: std::io::Error| Whole::BadRequest(format!("the gzip body does not decode: {e}"));
    let mut decoder = flate2::read::MultiGzDecoder::new(zipped);
    let mut out: Vec<u8> = Vec::new();
    let mut len = 0;
    loop {
        if len == out.len() {
            if len == max {
                // Full to the limit: one byte more is one too many.
                let mut probe = [0u8; 1];
                return match read_retrying(&mut decoder, &mut probe) {
                    Ok(0) => Ok(out),
                    Ok(_) => Err(too_large()),
                    Err(e) => Err(broken(e)),
                };
            }
            let room = next_room(len, reserved.max(FIRST_ROOM), max);
            if !reservation.grow_to(held + room) {
                return Err(Whole::OverBudget);
            }
            out.reserve_exact(room - len);
            out.resize(room, 0);
        }
        match read_retrying(&mut decoder, &mut out[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(broken(e)),
        }
    }
    out.truncate(len);
    Ok(out)
}

fn read_retrying(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// What judging a batch needs to know besides its bytes.
struct Limits {
    gzip: bool,
    max_decoded: usize,
    max_events: usize,
    admission: Admission,
    horizon: Duration,
    future_skew: Duration,
}

/// A batch judged event by event, owning everything it holds, with the budget it still needs.
struct Judged {
    answer: Answer<'static>,
    batch: Vec<IngestWindow>,
    too_old: u64,
    in_future: u64,
    invalid: u64,
    /// Per window, for each of its transactions, its index in the batch and its id (to name a
    /// refusal the store makes).
    origins: Vec<Vec<(usize, u32)>>,
    ids: IdArena,
    _reservation: Reservation,
}

/// The transaction ids of a batch, end to end in one string.
#[derive(Default)]
struct IdArena {
    text: String,
    ends: Vec<usize>,
}

impl IdArena {
    fn push(&mut self, id: &str) -> u32 {
        self.text.push_str(id);
        self.ends.push(self.text.len());
        (self.ends.len() - 1) as u32
    }

    fn get(&self, slot: u32) -> &str {
        let slot = slot as usize;
        let start = if slot == 0 { 0 } else { self.ends[slot - 1] };
        &self.text[start..self.ends[slot]]
    }

    fn bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }
}

/// Unzips, splits and judges a batch: CPU work for the blocking pool, never a request thread.
/// Each copy of the body goes as soon as the next stage has what it needs, and gives its budget
/// back with it.
fn judge(body: Vec<u8>, limits: &Limits, mut reservation: Reservation) -> Result<Judged, Whole> {
    let body = if limits.gzip {
        let mut decoded = gunzip(&body, body.capacity(), limits.max_decoded, &mut reservation)?;
        drop(body);
        decoded.shrink_to_fit();
        reservation.shrink_to(decoded.capacity());
        decoded
    } else {
        body
    };
    let text = body.strip_prefix(UTF8_BOM).unwrap_or(&body);
    let events = events(text).map_err(Whole::BadRequest)?;
    if events.len() > limits.max_events {
        return Err(Whole::TooLarge(format!(
            "{} events is more than the {} a batch may hold ([ingest] max_events)",
            events.len(),
            limits.max_events
        )));
    }
    let parsed_bytes = events.len() * IngestConfig::PARSE_BYTES_PER_EVENT;
    if !reservation.grow_to(reservation.bytes() + parsed_bytes) {
        return Err(Whole::OverBudget);
    }

    let mut answer = Answer {
        received: events.len(),
        ..Answer::default()
    };
    let (mut too_old, mut in_future, mut invalid) = (0u64, 0u64, 0u64);
    // Each taken transaction: its key, its index in the batch and its id's slot in `ids`.
    let mut windows: BatchWindows<'_, (TxKey, usize, u32)> = BatchWindows::default();
    let mut ids = IdArena::default();
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
                    transaction_id: refused_transaction_id(event),
                    reason: "invalid",
                    detail,
                });
                continue;
            }
        };
        let placement = limits.admission.place(tx.timestamp_ms);
        let detail = match placement {
            Placement::Window { start_ms } => {
                let key = tx_key(&tx.id);
                let slot = ids.push(&tx.id);
                windows.add(start_ms, tx.group, (key, index, slot));
                continue;
            }
            Placement::TooOld => {
                too_old += 1;
                format!(
                    "timestamp {} is older than the {} horizon ([ingest] horizon): its window is no longer reported",
                    rfc3339(tx.timestamp_ms),
                    humantime::format_duration(limits.horizon)
                )
            }
            Placement::InFuture => {
                in_future += 1;
                format!(
                    "timestamp {} is more than {} ahead of this server's clock",
                    rfc3339(tx.timestamp_ms),
                    humantime::format_duration(limits.future_skew)
                )
            }
        };
        answer.refuse(Refusal {
            index,
            transaction_id: Some(tx.id),
            reason: placement.refusal().unwrap_or("invalid"),
            detail,
        });
    }
    let mut origins: Vec<Vec<(usize, u32)>> = Vec::new();
    let batch: Vec<IngestWindow> = windows
        .into_windows()
        .into_iter()
        .map(|w| {
            origins.push(w.items.iter().map(|((_, i, s), _)| (*i, *s)).collect());
            IngestWindow {
                start_ms: w.start_ms,
                groups: w.groups.iter().map(Group::to_owned_key).collect(),
                transactions: w.items.into_iter().map(|((k, _, _), g)| (k, g)).collect(),
            }
        })
        .collect();
    let answer = answer.into_owned();
    drop(events);
    drop(body);
    // From here on the batch holds only its keys, groups and ids.
    reservation.shrink_to(parsed_bytes + ids.bytes());
    Ok(Judged {
        answer,
        batch,
        too_old,
        in_future,
        invalid,
        origins,
        ids,
        _reservation: reservation,
    })
}

pub(crate) async fn receive(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
    gate: web::Data<IngestGate>,
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
    let announced = req
        .headers()
        .get("Content-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Whole::TooLarge(format!(
            "the body is over the {limit}-byte limit ([ingest] max_body_bytes)"
        ))
        .answer(&state);
    }
    // Room for an announced body is taken before a byte of it is read: a full budget answers
    // at once and holds nothing.
    let max_decoded = config.ingest.max_decoded_bytes;
    let first = announced.map_or(0, |n| {
        if gzip {
            n + unzip_room(n, max_decoded)
        } else {
            n
        }
    });
    let Some(mut reservation) = gate.budget.reserve(first) else {
        return Whole::OverBudget.answer(&state);
    };
    let body_timeout = config.ingest.body_timeout;
    let read = tokio::time::timeout_at(
        (started + body_timeout).into(),
        read_body(&mut payload, announced, limit, &mut reservation),
    )
    .await;
    let body = match read {
        // A chunked body's room for unzipping is known only now.
        Ok(Ok(body))
            if gzip
                && announced.is_none()
                && !reservation.grow_to(body.capacity() + unzip_room(body.len(), max_decoded)) =>
        {
            return Whole::OverBudget.answer(&state);
        }
        Ok(Ok(body)) => body,
        Ok(Err(whole)) => return whole.answer(&state),
        Err(_) => {
            return refuse(
                &state,
                IngestBatchStatus::Timeout,
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive whole within {} ([ingest] body_timeout); nothing of it was taken: send it again",
                    humantime::format_duration(body_timeout)
                ),
            );
        }
    };

    let now = chrono::Utc::now().timestamp_millis();
    let horizon = config.ingest.horizon.as_millis() as i64;
    let limits = Limits {
        gzip,
        max_decoded,
        max_events: config.ingest.max_events,
        admission: Admission::at(
            now,
            horizon,
            config.ingest.future_skew.as_millis() as i64,
            config.reporting.window.as_millis() as i64,
        ),
        horizon: config.ingest.horizon,
        future_skew: config.ingest.future_skew,
    };
    // A parse slot is waited for (the body is here and its room reserved); the work runs on the
    // blocking pool so this thread keeps answering other requests meanwhile.
    let Ok(slot) = gate.parse_slots.clone().acquire_owned().await else {
        return Whole::OverBudget.answer(&state);
    };
    let judged = web::block(move || {
        let _slot = slot;
        judge(body, &limits, reservation)
    })
    .await;
    let judged = match judged {
        Ok(Ok(judged)) => judged,
        Ok(Err(whole)) => return whole.answer(&state),
        Err(e) => {
            tracing::error!(error = %e, "ingest: judging a batch failed; nothing of it was taken");
            return refuse(
                &state,
                IngestBatchStatus::BadRequest,
                StatusCode::INTERNAL_SERVER_ERROR,
                "the batch could not be judged; nothing of it was taken".into(),
            );
        }
    };
    let Judged {
        mut answer,
        batch,
        too_old,
        in_future,
        invalid,
        origins,
        ids,
        _reservation: reservation,
    } = judged;

    let metrics = &state.bridge.metrics;
    let skew = config.ingest.future_skew.as_millis() as i64;
    let generation = ingest_generation(now, horizon, skew);
    let stored = if batch.is_empty() {
        Ok(Default::default())
    } else {
        state
            .bridge
            .store
            .ingest(generation, config.ingest.max_groups_per_window, &batch)
            .await
    };
    drop(batch);
    drop(reservation);
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
    let too_many_groups = outcome.too_many_groups.len() as u64;
    let mut refused_by_store: Vec<(usize, u32)> = outcome
        .too_many_groups
        .iter()
        .map(|(w, t)| origins[*w][*t])
        .collect();
    refused_by_store.sort_unstable();
    let max_groups = config.ingest.max_groups_per_window;
    for (index, slot) in refused_by_store {
        let listed = answer.refusals.len() < LISTED_REFUSALS;
        answer.refuse(Refusal {
            index,
            transaction_id: listed.then(|| ids.get(slot).to_owned().into()),
            reason: "too_many_groups",
            detail: format!(
                "its window already holds {max_groups} distinct (subscription, quota, resource, status) groups ([ingest] max_groups_per_window) and this one is new"
            ),
        });
    }
    // Refusals are listed in batch order.
    answer.refusals.sort_by_key(|r| r.index);
    metrics.ingested(IngestOutcomeLabel::Accepted, outcome.accepted);
    metrics.ingested(IngestOutcomeLabel::Duplicate, outcome.duplicates);
    metrics.ingested(IngestOutcomeLabel::Ignored, answer.ignored);
    metrics.ingested(IngestOutcomeLabel::Refused, answer.refused);
    metrics.ingest_refused(IngestRefusal::TooOld, too_old);
    metrics.ingest_refused(IngestRefusal::InFuture, in_future);
    metrics.ingest_refused(IngestRefusal::Invalid, invalid);
    metrics.ingest_refused(IngestRefusal::TooManyGroups, too_many_groups);
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    fn zip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gunzip_takes_exactly_the_limit_and_reserves_what_it_holds() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let zipped = zip(&plain);
        let budget = InflightBudget::new(1 << 30, Gauge::default());
        let z = zipped.len();
        let mut reservation = budget.reserve(z).unwrap();
        let out = gunzip(&zipped, z, plain.len(), &mut reservation).unwrap();
        assert_eq!(out, plain);
        assert!(reservation.bytes() >= z + out.capacity());
        // Room reserved beforehand is used before more is asked for.
        let mut reservation = budget.reserve(z + plain.len()).unwrap();
        let out = gunzip(&zipped, z, plain.len(), &mut reservation).unwrap();
        assert_eq!(
            (out.len(), reservation.bytes()),
            (plain.len(), z + plain.len())
        );
        let mut reservation = budget.reserve(z).unwrap();
        assert!(matches!(
            gunzip(&zipped, z, plain.len() - 1, &mut reservation),
            Err(Whole::TooLarge(_))
        ));
        assert!(matches!(
            gunzip(b"not gzip", 8, 10, &mut budget.reserve(8).unwrap()),
            Err(Whole::BadRequest(_))
        ));
    }

    #[test]
    fn gunzip_stops_when_the_budget_is_spent_and_gives_it_back() {
        let plain = vec![b' '; 1 << 20];
        let zipped = zip(&plain);
        let budget = InflightBudget::new(zipped.len() + 200_000, Gauge::default());
        let mut reservation = budget.reserve(zipped.len()).unwrap();
        assert!(matches!(
            gunzip(&zipped, zipped.len(), plain.len(), &mut reservation),
            Err(Whole::OverBudget)
        ));
        drop(reservation);
        assert!(budget.reserve(zipped.len() + 200_000).is_some());
    }
}
