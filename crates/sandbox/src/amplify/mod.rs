//! Amplify emulator: token endpoint (`/auth`), Central catalog and management resources with
//! webhook delivery (`/amplify/apis`), Traceability (`/amplify/api/traceability`), Platform users.
// STUB: to be replaced by the Amplify emulator.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};

use crate::{SandboxConfig, SandboxState};

pub(crate) struct AmplifyState {}

impl AmplifyState {
    pub fn new(_config: &SandboxConfig) -> Self {
        Self {}
    }
    pub fn configure(&self, _config: &SandboxConfig) {}
    pub fn reset(&self, _config: &SandboxConfig) {}
}

pub(crate) fn central_routes(_cfg: &mut web::ServiceConfig) {}
pub(crate) fn auth_routes(_cfg: &mut web::ServiceConfig) {}
pub(crate) fn platform_routes(_cfg: &mut web::ServiceConfig) {}
/// Routes under `/_sandbox/` that belong to Amplify (traffic injection, deliveries).
pub(crate) fn control_routes(_cfg: &mut web::ServiceConfig) {}

/// Seeds catalog resources and platform users from the `amplify` section of `/_sandbox/seed`.
pub(crate) fn seed(
    _state: &SandboxState,
    _seed: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    Ok(serde_json::Value::Null)
}

pub(crate) fn spawn_background(_state: Arc<SandboxState>) {}

pub(crate) fn injected_error(status: u16) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
}
pub(crate) fn injected_auth_error(status: u16) -> HttpResponse {
    injected_error(status)
}
pub(crate) fn rate_limited_response(_retry_after: Duration) -> HttpResponse {
    HttpResponse::TooManyRequests().finish()
}
