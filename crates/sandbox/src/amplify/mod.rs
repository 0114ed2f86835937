//! Amplify emulator: token endpoint (`/auth`), Central catalog and management resources with
//! webhook delivery (`/amplify/apis`), Traceability (`/amplify/api/traceability`), Platform users.
//!
//! Submodules: `auth` (tokens, per-client limit), `resources` (kinds, paths, error body),
//! `store` (write rules), `rsql` (query filter), `catalog` (HTTP handlers), `webhooks`
//! (delivery), `platform` (users, teams), `traffic` (stored events, injection, generation),
//! `traceability` (summary), `watch` (WatchTopic event retention and reads).

mod auth;
mod catalog;
mod platform;
mod resources;
mod rsql;
mod store;
mod traceability;
mod traffic;
mod watch;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{SandboxConfig, SandboxState};

pub(crate) struct AmplifyState {
    tokens: auth::Tokens,
    catalog: Mutex<store::Catalog>,
    directory: RwLock<platform::Directory>,
    outbox: webhooks::Outbox,
    watch: Mutex<watch::Topics>,
    traffic: RwLock<traffic::TrafficStore>,
    /// The team that owns subscriptions when neither the body nor the seed names one.
    generated_team: RwLock<String>,
    requests_per_minute: Mutex<u32>,
}

impl AmplifyState {
    pub fn new(config: &SandboxConfig) -> Self {
        Self {
            tokens: auth::Tokens::default(),
            catalog: Mutex::new(store::Catalog::default()),
            directory: RwLock::new(platform::Directory::default()),
            outbox: webhooks::Outbox::default(),
            watch: Mutex::new(watch::Topics::default()),
            traffic: RwLock::new(traffic::TrafficStore::default()),
            generated_team: RwLock::new(uuid::Uuid::new_v4().to_string()),
            requests_per_minute: Mutex::new(config.amplify.requests_per_minute),
        }
    }

    /// A changed request limit starts every client's window afresh.
    pub fn configure(&self, config: &SandboxConfig) {
        let mut limit = self.requests_per_minute.lock();
        if *limit != config.amplify.requests_per_minute {
            *limit = config.amplify.requests_per_minute;
            self.tokens.reset_windows();
        }
    }

    /// Forgets resources, users, traffic, deliveries (and queued ones), WatchTopic events and
    /// request windows.
    /// Issued tokens stay valid.
    pub fn reset(&self, _config: &SandboxConfig) {
        *self.catalog.lock() = store::Catalog::default();
        *self.directory.write() = platform::Directory::default();
        self.traffic.write().clear();
        self.outbox.reset();
        *self.watch.lock() = watch::Topics::default();
        self.tokens.reset_windows();
        *self.generated_team.write() = uuid::Uuid::new_v4().to_string();
    }

    /// The owner team of a subscription created without one: the first seeded team, else a
    /// generated one.
    fn default_owner_team(&self) -> String {
        match self.directory.read().teams.first() {
            Some(team) => team.guid.clone(),
            None => self.generated_team.read().clone(),
        }
    }
}

async fn central_not_found(
    req: actix_web::HttpRequest,
    state: web::Data<SandboxState>,
) -> HttpResponse {
    if let Err(resp) = auth::authorize(&req, &state) {
        return resp;
    }
    resources::central_error(
        404,
        &format!("no such route: {} {}", req.method(), req.path()),
    )
}

pub(crate) fn central_routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/api/traceability/v1/traceability/summary",
        web::get().to(traceability::summary),
    )
    .route(
        "/api/traceability/v1/traceability/search",
        web::post().to(traceability::search_route),
    )
    .route("/apis/{tail:.*}", web::route().to(catalog::handle))
    .route(
        "/events/management/{version}/watchtopics/{name}",
        web::get().to(watch::events),
    )
    .route("/{tail:.*}", web::route().to(central_not_found));
}

pub(crate) fn auth_routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/realms/Broker/protocol/openid-connect/token",
        web::post().to(auth::token),
    );
}

pub(crate) fn platform_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/user/{guid}", web::get().to(platform::get_user))
        .route("/api/v1/team/{guid}", web::get().to(platform::get_team))
        .route("/{tail:.*}", web::route().to(platform::not_found));
}

async fn list_deliveries(state: web::Data<SandboxState>) -> HttpResponse {
    HttpResponse::Ok().json(state.amplify.outbox.deliveries())
}

async fn clear_deliveries(state: web::Data<SandboxState>) -> HttpResponse {
    state.amplify.outbox.clear();
    HttpResponse::NoContent().finish()
}

/// Routes under `/_sandbox/` that belong to Amplify (traffic injection, deliveries).
pub(crate) fn control_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/traffic", web::post().to(traffic::inject))
        .route("/traffic", web::get().to(traffic::describe))
        .route("/traffic", web::delete().to(traffic::clear))
        .route("/traffic/generate", web::post().to(traffic::generate_route))
        .route("/deliveries", web::get().to(list_deliveries))
        .route("/deliveries", web::delete().to(clear_deliveries))
        .route(
            "/watchtopics/{name}/purge",
            web::post().to(watch::purge_route),
        );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmplifySeed {
    #[serde(default)]
    users: Vec<platform::User>,
    #[serde(default)]
    teams: Vec<platform::Team>,
    #[serde(default)]
    resources: Vec<Value>,
}

/// The client id seeded writes are audited as.
const SEED_CLIENT_ID: &str = "sandbox-seed";

/// Seeds catalog resources and platform users from the `amplify` section of `/_sandbox/seed`.
/// Resources are created in order through the API's own write path (events fire), then each
/// subresource in the body is written as `PUT …/{sub}` would.
pub(crate) fn seed(state: &SandboxState, seed: &Value) -> Result<Value, String> {
    let seed: AmplifySeed = serde_json::from_value(seed.clone()).map_err(|e| e.to_string())?;
    {
        let mut directory = state.amplify.directory.write();
        directory.users.extend(seed.users.iter().cloned());
        directory.teams.extend(seed.teams.iter().cloned());
    }
    let mut created = Vec::new();
    for (i, body) in seed.resources.iter().enumerate() {
        let resource = seed_resource(state, body).map_err(|e| format!("resources[{i}]: {e}"))?;
        created.push(resource);
    }
    Ok(json!({"users": seed.users.len(), "teams": seed.teams.len(), "resources": created}))
}

fn seed_resource(state: &SandboxState, body: &Value) -> Result<Value, String> {
    let kind = body
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("every seeded resource needs a kind")?;
    let spec = resources::kind_named(kind).ok_or_else(|| format!("unknown kind '{kind}'"))?;
    let version = body
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|v| resources::API_VERSIONS.contains(v))
        .unwrap_or("v1");
    let ctx = catalog::change_context(state, SEED_CLIENT_ID);
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let mut catalog = state.amplify.catalog.lock();
    let (changes, name) = store::create(&mut catalog, spec, None, body, &ctx)
        .map_err(|e| format!("{} {}", e.status, e.detail))?;
    let scope = changes.first().and_then(|c| c.scope.clone());
    webhooks::publish(state, &catalog, &changes, version, &correlation_id);
    for sub in store::subresources_in(spec, body) {
        let sub_body = json!({ &sub: body[&sub] });
        let changes = store::put_subresource(
            &mut catalog,
            spec,
            scope.as_deref(),
            &name,
            &sub,
            &sub_body,
            &ctx,
        )
        .map_err(|e| format!("{sub}: {} {}", e.status, e.detail))?;
        webhooks::publish(state, &catalog, &changes, version, &correlation_id);
    }
    let stored = catalog
        .get(spec, scope.as_deref(), &name)
        .ok_or("the seeded resource vanished")?;
    Ok(store::render(stored, version))
}

/// Starts the webhook delivery worker.
pub(crate) fn spawn_background(state: Arc<SandboxState>) {
    webhooks::spawn_worker(state);
}

pub(crate) fn injected_error(status: u16) -> HttpResponse {
    resources::central_error(status, "injected by the sandbox")
}

pub(crate) fn injected_auth_error(status: u16) -> HttpResponse {
    auth::injected_auth_error(status)
}

pub(crate) fn rate_limited_response(retry_after: Duration) -> HttpResponse {
    auth::rate_limited_response(retry_after)
}
