//! The Axway login token endpoint (client credentials, Keycloak answers; reference §1.2) and the
//! gate every Central and Platform request passes: a live bearer token, then the per-client limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use parking_lot::Mutex;
use serde_json::json;

use super::resources::central_error_body;
use crate::SandboxState;
use crate::config::credential_matches;
use crate::ratelimit::SlidingWindow;

/// The window the per-client limit counts over (reference §1.4: requests per minute).
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// An issued access token.
#[derive(Debug, Clone)]
struct IssuedToken {
    client_id: String,
    expires_at: Instant,
}

/// Issued tokens and each client's request window.
#[derive(Default)]
pub(crate) struct Tokens {
    issued: Mutex<HashMap<String, IssuedToken>>,
    windows: Mutex<HashMap<String, Arc<SlidingWindow>>>,
}

impl Tokens {
    /// Forgets the request windows (a new limit applies from scratch). Tokens stay valid: they are
    /// credentials a client holds, not data.
    pub fn reset_windows(&self) {
        self.windows.lock().clear();
    }

    fn window(&self, client_id: &str, limit: u32) -> Arc<SlidingWindow> {
        self.windows
            .lock()
            .entry(client_id.to_owned())
            .or_insert_with(|| Arc::new(SlidingWindow::new(limit, RATE_WINDOW)))
            .clone()
    }
}

/// A Keycloak OAuth error answer.
fn keycloak_error(status: u16, error: &str, description: &str) -> HttpResponse {
    let code = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    HttpResponse::build(code).json(json!({"error": error, "error_description": description}))
}

pub(crate) fn injected_auth_error(status: u16) -> HttpResponse {
    let error = if status >= 500 {
        "server_error"
    } else {
        "invalid_request"
    };
    let description = actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error");
    keycloak_error(status, error, description)
}

/// Client id and secret from `Authorization: Basic`, else from the form (reference §1.2).
fn client_credentials(
    req: &HttpRequest,
    form: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let basic = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        });
    let decode = |s: String| {
        percent_encoding::percent_decode_str(&s)
            .decode_utf8_lossy()
            .into_owned()
    };
    match basic {
        // OAuth clients form-encode id and secret before putting them in Basic auth (RFC 6749 §2.3.1).
        Some((id, secret)) => (Some(decode(id)), Some(decode(secret))),
        None => (
            form.get("client_id").cloned(),
            form.get("client_secret").cloned(),
        ),
    }
}

/// A JWT-shaped token, so clients that peek at `exp` find one; the signature is random.
fn new_access_token(client_id: &str, ttl_secs: u64) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = json!({"exp": now + ttl_secs as i64, "iat": now, "jti": uuid::Uuid::new_v4().to_string(),
                        "iss": "sandbox/auth/realms/Broker", "azp": client_id, "typ": "Bearer",
                        "scope": "email profile"});
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    format!("{header}.{claims}.{signature}")
}

pub(crate) async fn token(
    req: HttpRequest,
    state: web::Data<SandboxState>,
    body: web::Bytes,
) -> HttpResponse {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let config = state.config();
    let Some(grant_type) = form.get("grant_type") else {
        return keycloak_error(400, "invalid_request", "Missing form parameter: grant_type");
    };
    let (client_id, secret) = client_credentials(&req, &form);
    let authenticated = credential_matches(&config.amplify.client_id, client_id.as_deref())
        && credential_matches(&config.amplify.client_secret, secret.as_deref());
    let client_id = match client_id {
        Some(id) if authenticated => id,
        _ => {
            return keycloak_error(
                401,
                "unauthorized_client",
                "Invalid client or Invalid client credentials",
            );
        }
    };
    if grant_type != "client_credentials" {
        return keycloak_error(400, "unsupported_grant_type", "Unsupported grant_type");
    }
    let ttl = config.amplify.token_ttl_secs;
    let access_token = new_access_token(&client_id, ttl);
    state.amplify.tokens.issued.lock().insert(
        access_token.clone(),
        IssuedToken {
            client_id,
            expires_at: Instant::now() + Duration::from_secs(ttl),
        },
    );
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"))
        .json(json!({
            "access_token": access_token,
            "expires_in": ttl,
            "refresh_expires_in": 0,
            "token_type": "bearer",
            "not-before-policy": 0,
            "scope": "email profile",
        }))
}

fn unauthorized(detail: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", "Bearer"))
        .json(central_error_body(401, detail))
}

/// The answer to a client over its limit. The reference does not give the status or headers;
/// 429 with `Retry-After` in whole seconds is [I] (reference §1.4, §7.6).
pub(crate) fn rate_limited_response(retry_after: Duration) -> HttpResponse {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    HttpResponse::TooManyRequests()
        .insert_header(("Retry-After", secs.max(1).to_string()))
        .json(central_error_body(
            429,
            "Rate limit exceeded: too many requests for this client; retry later",
        ))
}

/// The client behind the request's bearer token, once the token and the client's budget allow it.
pub(crate) fn authorize(req: &HttpRequest, state: &SandboxState) -> Result<String, HttpResponse> {
    let token = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("Authorization header with a Bearer token is required"))?;
    let now = Instant::now();
    let issued = state.amplify.tokens.issued.lock().get(token).cloned();
    let client_id = match issued {
        Some(t) if t.expires_at > now => t.client_id,
        Some(_) => return Err(unauthorized("The access token has expired")),
        None => return Err(unauthorized("The access token is invalid")),
    };
    let limit = state.config().amplify.requests_per_minute;
    if limit > 0 {
        let decision = state.amplify.tokens.window(&client_id, limit).acquire(now);
        if !decision.allowed {
            return Err(rate_limited_response(decision.reset_after));
        }
    }
    Ok(client_id)
}
