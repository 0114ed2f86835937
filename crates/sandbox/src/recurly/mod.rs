//! Recurly API v3 (v2021-02-25) emulator: plans, add-ons, measured units, accounts,
//! subscriptions and usage, with Recurly's validation, errors, rate limits and idempotency.
// STUB: to be replaced by the Recurly emulator.

use actix_web::{HttpResponse, web};

use crate::{SandboxConfig, SandboxState};

pub(crate) struct RecurlyState {}

impl RecurlyState {
    pub fn new(_config: &SandboxConfig) -> Self {
        Self {}
    }
    pub fn configure(&self, _config: &SandboxConfig) {}
    pub fn reset(&self, _config: &SandboxConfig) {}
}

pub(crate) fn routes(_cfg: &mut web::ServiceConfig) {}
/// Routes under `/_sandbox/` that belong to Recurly.
pub(crate) fn control_routes(_cfg: &mut web::ServiceConfig) {}

/// Seeds accounts (and anything else) from the `recurly` section of `/_sandbox/seed`.
pub(crate) fn seed(
    _state: &SandboxState,
    _seed: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    Ok(serde_json::Value::Null)
}

pub(crate) fn injected_error(status: u16) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
}
pub(crate) fn injected_rate_limit(_state: &SandboxState) -> HttpResponse {
    HttpResponse::TooManyRequests().finish()
}
