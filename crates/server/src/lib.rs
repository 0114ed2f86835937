//! billing-bridge's HTTP face: the Amplify webhook intake, the admin API, `/metrics`, `/healthz`
//! and `/readyz`. Intake only checks, dedupes and queues: an event is acknowledged (202) once it
//! is safely in the store's queue, and refused before anything of it is processed otherwise.

mod app;
mod budget;
mod ingest;
mod intake;
mod recurly;

use std::sync::Arc;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use billing_bridge_pipeline::actors::ReconcileNow;
use billing_bridge_pipeline::usage::actors::RunReport;
use billing_bridge_pipeline::usage::{RunError, RunRequest, parse_instant};
use billing_bridge_pipeline::{Bridge, Pipeline};
use secrecy::ExposeSecret;
use serde_json::json;
use subtle::ConstantTimeEq;

pub use app::{Application, Options, StartError};
pub use ingest::INGEST_PATH;
pub use intake::WEBHOOK_PATH;
pub use recurly::{RECURLY_WEBHOOK_PATH, signature_valid};

/// What every handler can reach.
pub struct AppState {
    pub bridge: Arc<Bridge>,
    pub pipeline: Pipeline,
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched in any letter
/// case and may be followed by several spaces (RFC 7235 §2.1: `auth-scheme 1*SP token68`).
pub(crate) fn bearer(req: &HttpRequest) -> Option<&[u8]> {
    let value = req.headers().get("Authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' ').as_bytes())
}

/// Compares a presented secret with the configured one without leaking where they differ.
pub(crate) fn secret_matches(given: Option<&[u8]>, expected: &str) -> bool {
    match given {
        Some(given) => given.ct_eq(expected.as_bytes()).into(),
        None => false,
    }
}

/// Every route. The ingest route also needs the shared `IngestGate` (budget and parse slots)
/// that [`Application::start`] adds as app data, one for all workers.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(WEBHOOK_PATH, web::post().to(intake::receive))
        .route(INGEST_PATH, web::post().to(ingest::receive))
        .route(RECURLY_WEBHOOK_PATH, web::post().to(recurly::receive))
        .route("/admin/reconcile", web::post().to(reconcile))
        .route("/admin/report", web::post().to(report))
        .route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store_ok = state.bridge.store.queue_depth().await.is_ok();
    if store_ok && state.pipeline.is_running() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "5"))
            .json(json!({"status": "not ready", "store": store_ok, "pipeline": state.pipeline.is_running()}))
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.bridge.refresh_depths().await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.bridge.metrics.encode())
}

/// The admin API's gate: 404 when no admin token is configured, 401 without the right one.
fn admin_refusal(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let Some(token) = state.bridge.config.server.admin_token.as_ref() else {
        return Some(
            HttpResponse::NotFound()
                .json(json!({"error": "the admin API is off: set server.admin_token"})),
        );
    };
    if !secret_matches(bearer(req), token.expose_secret()) {
        return Some(
            HttpResponse::Unauthorized().json(json!({"error": "missing or wrong admin token"})),
        );
    }
    None
}

/// `POST /admin/reconcile` with `Authorization: Bearer <server.admin_token>`: runs a pass now.
async fn reconcile(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = admin_refusal(&req, &state) {
        return refusal;
    }
    match state.pipeline.reconciler.send(ReconcileNow).await {
        Ok(Ok(summary)) => HttpResponse::Ok().json(summary),
        Ok(Err(e)) => {
            HttpResponse::BadGateway().json(json!({"error": format!("reconciliation failed: {e}")}))
        }
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(json!({"error": format!("reconciler unavailable: {e}")})),
    }
}

/// Reads `{"from": T, "to": T, "dry_run": bool}` (all optional; T is RFC 3339 or epoch ms).
fn run_request(body: &[u8]) -> Result<RunRequest, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RunRequest::default());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("the body must be a JSON object: {\"from\", \"to\", \"dry_run\"}".into());
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "from" | "to" | "dry_run"))
    {
        return Err(format!(
            "unknown field {unknown:?}; expected from, to, dry_run"
        ));
    }
    let instant = |field: &str| -> Result<Option<i64>, String> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => parse_instant(s).map(Some),
            Some(serde_json::Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("{field} must be epoch milliseconds")),
            Some(_) => Err(format!(
                "{field} must be an RFC 3339 string or epoch milliseconds"
            )),
        }
    };
    let range = match (instant("from")?, instant("to")?) {
        (Some(from), Some(to)) => Some((from, to)),
        (None, None) => None,
        _ => return Err("give both from and to, or neither".into()),
    };
    let dry_run = match object.get("dry_run") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => return Err("dry_run must be true or false".into()),
    };
    Ok(RunRequest { range, dry_run })
}

/// `POST /admin/report` with `Authorization: Bearer <server.admin_token>`: runs traffic
/// reporting now and answers its summary once it finished.
async fn report(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = admin_refusal(&req, &state) {
        return refusal;
    }
    let request = match run_request(&body) {
        Ok(request) => request,
        Err(e) => return HttpResponse::BadRequest().json(json!({"error": e})),
    };
    match state.pipeline.reporter.send(RunReport(request)).await {
        Ok(Ok(summary)) => HttpResponse::Ok().json(summary),
        Ok(Err(e @ (RunError::Busy | RunError::Disabled))) => HttpResponse::Conflict()
            .insert_header(("Retry-After", "5"))
            .json(json!({"error": e.to_string()})),
        Ok(Err(e @ RunError::BadRequest(_))) => {
            HttpResponse::BadRequest().json(json!({"error": e.to_string()}))
        }
        Ok(Err(e)) => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "5"))
            .json(json!({"error": e.to_string()})),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(json!({"error": format!("usage reporter unavailable: {e}")})),
    }
}

/// The HTTP server of every route over `state`, serving on `listener` once awaited (or
/// spawned). `workers`: `None` = one per core. [`Application::start`] is its one caller.
fn http_server(
    state: web::Data<AppState>,
    listener: std::net::TcpListener,
    workers: Option<usize>,
) -> std::io::Result<actix_web::dev::Server> {
    let gate = web::Data::new(ingest::IngestGate::new(
        &state.bridge.config.ingest,
        &state.bridge.metrics,
    ));
    // The server's accept loop is driven by mio, which needs a non-blocking socket.
    listener.set_nonblocking(true)?;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(gate.clone())
            .configure(routes)
    })
    .disable_signals()
    .shutdown_timeout(5);
    if let Some(workers) = workers {
        server = server.workers(workers.max(1));
    }
    Ok(server.listen(listener)?.run())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_requests_are_read_strictly() {
        assert!(run_request(b"").unwrap().range.is_none());
        let r = run_request(
            br#"{"from": "2026-11-21T09:00:00Z", "to": 1763722800000, "dry_run": true}"#,
        )
        .unwrap();
        assert_eq!(r.range, Some((1_795_251_600_000, 1_763_722_800_000)));
        assert!(r.dry_run);
        for bad in [
            &b"{"[..],
            br#"[1]"#,
            br#"{"from": "yesterday", "to": 1}"#,
            br#"{"from": 1}"#,
            br#"{"dry": true}"#,
            br#"{"dry_run": "yes"}"#,
        ] {
            assert!(
                run_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
