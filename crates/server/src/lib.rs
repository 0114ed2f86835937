//! billing-bridge's HTTP face: the Amplify webhook intake, the admin API, `/metrics`, `/healthz`
//! and `/readyz`. Intake only checks, dedupes and queues: an event is acknowledged (202) once it
//! is safely in the store's queue, and refused before anything of it is processed otherwise.

mod intake;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use billing_bridge_pipeline::actors::ReconcileNow;
use billing_bridge_pipeline::{Bridge, Pipeline};
use secrecy::ExposeSecret;
use serde_json::json;
use subtle::ConstantTimeEq;

pub use intake::WEBHOOK_PATH;

/// What every handler can reach.
pub struct AppState {
    pub bridge: Arc<Bridge>,
    pub pipeline: Pipeline,
}

/// Compares a presented secret with the configured one without leaking where they differ.
pub(crate) fn secret_matches(given: Option<&[u8]>, expected: &str) -> bool {
    match given {
        Some(given) => given.ct_eq(expected.as_bytes()).into(),
        None => false,
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(WEBHOOK_PATH, web::post().to(intake::receive))
        .route("/admin/reconcile", web::post().to(reconcile))
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
    if let Ok(depth) = state.bridge.store.queue_depth().await {
        state.bridge.metrics.queue_depth.set(depth as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.bridge.metrics.encode())
}

/// `POST /admin/reconcile` with `Authorization: Bearer <server.admin_token>`: runs a pass now.
async fn reconcile(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(token) = state.bridge.config.server.admin_token.as_ref() else {
        return HttpResponse::NotFound()
            .json(json!({"error": "the admin API is off: set server.admin_token"}));
    };
    let given = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    if !secret_matches(given, token.expose_secret()) {
        return HttpResponse::Unauthorized().json(json!({"error": "missing or wrong admin token"}));
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

/// A running bridge server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub server: actix_web::dev::ServerHandle,
}

impl ServerHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds the server and starts serving in the current actix system. `workers`: `None` = one per
/// core.
pub fn start(
    state: AppState,
    listen: &str,
    workers: Option<usize>,
) -> std::io::Result<(ServerHandle, actix_web::dev::Server)> {
    let state = web::Data::new(state);
    let mut server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes))
        .disable_signals()
        .shutdown_timeout(5);
    if let Some(workers) = workers {
        server = server.workers(workers.max(1));
    }
    let server = server.bind(listen)?;
    let addr = *server
        .addrs()
        .first()
        .ok_or_else(|| std::io::Error::other("bound no address"))?;
    let server = server.run();
    Ok((
        ServerHandle {
            addr,
            server: server.handle(),
        },
        server,
    ))
}
