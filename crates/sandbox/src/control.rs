//! Sandbox-only control routes under `/_sandbox/`: recorded requests, mails and cards; reset;
//! seed data; configuration; fault injection per upstream.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::faults::FaultSettings;
use crate::{SandboxConfig, SandboxState, Upstream, amplify, otlp, recurly};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/reset", web::post().to(reset))
        .route("/requests", web::get().to(list_requests))
        .route("/requests", web::delete().to(clear_requests))
        .route("/mails", web::get().to(list_mails))
        .route("/cards", web::get().to(list_cards))
        .route("/config", web::get().to(get_config))
        .route("/config", web::put().to(put_config))
        .route("/seed", web::post().to(seed))
        .route("/faults", web::get().to(list_faults))
        .route("/faults", web::delete().to(clear_all_faults))
        .route("/faults/{upstream}", web::put().to(put_faults))
        .route("/faults/{upstream}", web::delete().to(clear_faults))
        .configure(amplify::control_routes)
        .configure(recurly::control_routes)
        .configure(otlp::control_routes);
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": message.into()}))
}

fn upstream_from_path(name: &str) -> Result<Upstream, HttpResponse> {
    Upstream::parse(name).ok_or_else(|| {
        let known: Vec<_> = Upstream::ALL.iter().map(|u| u.name()).collect();
        HttpResponse::NotFound().json(json!({
            "error": format!("unknown upstream '{name}'; known upstreams: {}", known.join(", "))
        }))
    })
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn reset(state: web::Data<SandboxState>) -> HttpResponse {
    state.reset();
    HttpResponse::NoContent().finish()
}

#[derive(Deserialize)]
struct RequestFilter {
    upstream: Option<String>,
    #[serde(default)]
    after: u64,
}

async fn list_requests(
    state: web::Data<SandboxState>,
    filter: web::Query<RequestFilter>,
) -> HttpResponse {
    let upstream = match filter.upstream.as_deref().map(upstream_from_path) {
        Some(Err(resp)) => return resp,
        Some(Ok(u)) => Some(u),
        None => None,
    };
    HttpResponse::Ok().json(state.recorder.list(upstream, filter.after))
}

async fn clear_requests(state: web::Data<SandboxState>) -> HttpResponse {
    state.recorder.clear();
    HttpResponse::NoContent().finish()
}

async fn list_mails(state: web::Data<SandboxState>) -> HttpResponse {
    HttpResponse::Ok().json(state.sendgrid.mails())
}

async fn list_cards(state: web::Data<SandboxState>) -> HttpResponse {
    HttpResponse::Ok().json(state.teams.cards())
}

/// Credentials are shown only as set or not: a sandbox may be given a test's real secrets.
fn redacted(config: &SandboxConfig) -> serde_json::Value {
    let mut shown = config.clone();
    let hide = |c: &mut Option<String>| {
        if c.is_some() {
            *c = Some("<set>".to_owned());
        }
    };
    hide(&mut shown.amplify.client_secret);
    hide(&mut shown.recurly.api_key);
    hide(&mut shown.sendgrid.api_key);
    serde_json::to_value(shown).unwrap_or_default()
}

async fn get_config(state: web::Data<SandboxState>) -> HttpResponse {
    HttpResponse::Ok().json(redacted(&state.config()))
}

async fn put_config(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<SandboxConfig>(&body) {
        Ok(config) => {
            state.set_config(config);
            HttpResponse::Ok().json(redacted(&state.config()))
        }
        Err(e) => bad_request(format!("invalid sandbox config: {e}")),
    }
}

/// `{"amplify": {...}, "recurly": {...}}`; each section goes to its emulator.
async fn seed(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    let seed: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => return bad_request("seed body must be a JSON object with 'amplify' and/or 'recurly'"),
    };
    if let Some(unknown) = seed
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .find(|k| *k != "amplify" && *k != "recurly")
    {
        return bad_request(format!(
            "unknown seed section '{unknown}'; expected 'amplify' or 'recurly'"
        ));
    }
    let mut created = serde_json::Map::new();
    if let Some(section) = seed.get("amplify") {
        match amplify::seed(&state, section) {
            Ok(v) => {
                created.insert("amplify".into(), v);
            }
            Err(e) => return bad_request(format!("amplify seed: {e}")),
        }
    }
    if let Some(section) = seed.get("recurly") {
        match recurly::seed(&state, section) {
            Ok(v) => {
                created.insert("recurly".into(), v);
            }
            Err(e) => return bad_request(format!("recurly seed: {e}")),
        }
    }
    HttpResponse::Created().json(created)
}

async fn list_faults(state: web::Data<SandboxState>) -> HttpResponse {
    let described: serde_json::Map<_, _> = state
        .faults
        .describe()
        .into_iter()
        .map(|(u, (settings, counts))| {
            (
                u.name().to_owned(),
                json!({"settings": settings, "injected": counts}),
            )
        })
        .collect();
    HttpResponse::Ok().json(described)
}

async fn put_faults(
    state: web::Data<SandboxState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let upstream = match upstream_from_path(&path) {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let settings: FaultSettings = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return bad_request(format!("invalid fault settings: {e}")),
    };
    let rates = [
        settings.error_rate,
        settings.rate_limited_rate,
        settings.timeout_rate,
        settings.hangup_rate,
    ];
    if rates.iter().any(|r| !(0.0..=1.0).contains(r)) || rates.iter().sum::<f64>() > 1.0 {
        return bad_request("fault rates must each be within 0..=1 and add up to at most 1");
    }
    if actix_web::http::StatusCode::from_u16(settings.error_status).is_err()
        || settings.error_status < 400
    {
        return bad_request("error_status must be an HTTP error status (400..=599)");
    }
    state.faults.set(upstream, settings);
    HttpResponse::NoContent().finish()
}

async fn clear_faults(state: web::Data<SandboxState>, path: web::Path<String>) -> HttpResponse {
    match upstream_from_path(&path) {
        Ok(u) => {
            state.faults.clear(Some(u));
            HttpResponse::NoContent().finish()
        }
        Err(resp) => resp,
    }
}

async fn clear_all_faults(state: web::Data<SandboxState>) -> HttpResponse {
    state.faults.clear(None);
    HttpResponse::NoContent().finish()
}
