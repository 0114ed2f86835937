//! SendGrid v3 mail send emulator (`/sendgrid/v3/mail/send`): Bearer key, SendGrid's request
//! validation and error bodies, 202 with `X-Message-Id`, rate-limit headers on every answer.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{HttpRequest, HttpResponse, web};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::SandboxState;
use crate::config::credential_matches;
use crate::ratelimit::{Decision, SlidingWindow};

/// Total message size SendGrid accepts (reference §9: under 30 MB).
const MAX_MESSAGE_BYTES: usize = 30 * 1024 * 1024;
/// Mail send allows 10,000 requests per second (reference §9).
const REQUESTS_PER_SECOND: u32 = 10_000;
const MAX_PERSONALIZATIONS: usize = 1_000;
const MAX_RECIPIENTS: usize = 1_000;
const MAX_CATEGORIES: usize = 10;
/// `send_at` may be at most 72 hours ahead.
const MAX_SCHEDULE_SECS: i64 = 72 * 3600;

/// A mail SendGrid accepted for delivery, as shown by `GET /_sandbox/mails`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SentMail {
    pub message_id: String,
    /// Every `to`, `cc` and `bcc` address of every personalization.
    pub recipients: Vec<String>,
    pub from: String,
    pub subject: Option<String>,
    pub template_id: Option<String>,
    pub request: Value,
}

pub(crate) struct SendgridState {
    mails: Mutex<Vec<SentMail>>,
    window: SlidingWindow,
}

impl Default for SendgridState {
    fn default() -> Self {
        Self {
            mails: Mutex::new(Vec::new()),
            window: SlidingWindow::new(REQUESTS_PER_SECOND, Duration::from_secs(1)),
        }
    }
}

impl SendgridState {
    pub fn reset(&self) {
        self.mails.lock().clear();
    }

    pub fn mails(&self) -> Vec<SentMail> {
        self.mails.lock().clone()
    }
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v3/mail/send", web::post().to(mail_send));
}

/// One entry of SendGrid's `{"errors":[…]}` body.
fn error(field: Option<&str>, message: &str) -> Value {
    json!({"field": field, "message": message, "help": null})
}

fn error_body(errors: Vec<Value>) -> Value {
    json!({"errors": errors, "id": uuid::Uuid::new_v4().simple().to_string()})
}

fn with_limit_headers(
    mut builder: actix_web::HttpResponseBuilder,
    decision: &Decision,
) -> actix_web::HttpResponseBuilder {
    let reset = SystemTime::now()
        .checked_add(decision.reset_after)
        .unwrap_or_else(SystemTime::now)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 1)
        .unwrap_or_default();
    builder
        .insert_header(("X-RateLimit-Limit", decision.limit.to_string()))
        .insert_header(("X-RateLimit-Remaining", decision.remaining.to_string()))
        .insert_header(("X-RateLimit-Reset", reset.to_string()));
    builder
}

fn is_email(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c == ',' || c == ';')
}

/// Checks `{email, name?}` objects; returns the addresses found.
fn check_addresses(list: &Value, field: &str, errors: &mut Vec<Value>) -> Vec<String> {
    let mut found = Vec::new();
    let Some(items) = list.as_array() else {
        errors.push(error(
            Some(field),
            "Invalid type. Expected: array, given: object.",
        ));
        return found;
    };
    for (i, item) in items.iter().enumerate() {
        match item.get("email").and_then(|e| e.as_str()) {
            Some(email) if is_email(email) => found.push(email.to_ascii_lowercase()),
            _ => errors.push(error(
                Some(&format!("{field}.{i}.email")),
                "Does not contain a valid address.",
            )),
        }
    }
    found
}

/// SendGrid's request validation; every problem is reported, as SendGrid does.
fn validate(body: &Value, now_secs: i64) -> (Vec<Value>, Vec<String>) {
    let mut errors = Vec::new();
    let mut recipients = Vec::new();
    let personalizations = body
        .get("personalizations")
        .and_then(|p| p.as_array())
        .filter(|p| !p.is_empty());
    match personalizations {
        None => errors.push(error(
            Some("personalizations"),
            "The personalizations field is required and must have at least one personalization.",
        )),
        Some(list) if list.len() > MAX_PERSONALIZATIONS => errors.push(error(
            Some("personalizations"),
            "The personalizations field cannot have more than 1000 personalizations.",
        )),
        Some(list) => {
            for (i, p) in list.iter().enumerate() {
                let mut seen = HashSet::new();
                match p.get("to").filter(|t| t.as_array().is_some_and(|a| !a.is_empty())) {
                    None => errors.push(error(
                        Some(&format!("personalizations.{i}.to")),
                        "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
                    )),
                    Some(to) => {
                        for kind in ["to", "cc", "bcc"] {
                            let Some(list) = (if kind == "to" { Some(to) } else { p.get(kind) }) else {
                                continue;
                            };
                            let field = format!("personalizations.{i}.{kind}");
                            for email in check_addresses(list, &field, &mut errors) {
                                if !seen.insert(email.clone()) {
                                    errors.push(error(Some(&field), &format!(
                                        "Each email address in the personalization block should be unique between to, cc, and bcc. We found the first duplicate instance of [{email}] in the {field} field."
                                    )));
                                }
                                recipients.push(email);
                            }
                        }
                    }
                }
                if let Some(send_at) = p.get("send_at").and_then(|s| s.as_i64())
                    && send_at > now_secs + MAX_SCHEDULE_SECS
                {
                    errors.push(error(
                        Some(&format!("personalizations.{i}.send_at")),
                        "The send_at parameter cannot be more than 72 hours in the future.",
                    ));
                }
            }
        }
    }
    if let Some(send_at) = body.get("send_at").and_then(|s| s.as_i64())
        && send_at > now_secs + MAX_SCHEDULE_SECS
    {
        errors.push(error(
            Some("send_at"),
            "The send_at parameter cannot be more than 72 hours in the future.",
        ));
    }
    if recipients.len() > MAX_RECIPIENTS {
        errors.push(error(
            Some("personalizations"),
            "The total number of recipients (to, cc and bcc) must be less than 1001.",
        ));
    }
    match body.get("from") {
        Some(from) if from.get("email").and_then(|e| e.as_str()).is_some_and(is_email) => {}
        Some(from) if from.get("email").is_some() => {
            errors.push(error(Some("from.email"), "Does not contain a valid address."))
        }
        _ => errors.push(error(
            Some("from"),
            "The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.",
        )),
    }
    if let Some(reply_to) = body.get("reply_to") {
        if body.get("reply_to_list").is_some() {
            errors.push(error(
                Some("reply_to"),
                "The reply_to and reply_to_list fields cannot both be set.",
            ));
        }
        if !reply_to
            .get("email")
            .and_then(|e| e.as_str())
            .is_some_and(is_email)
        {
            errors.push(error(
                Some("reply_to.email"),
                "Does not contain a valid address.",
            ));
        }
    }
    if let Some(list) = body.get("reply_to_list") {
        check_addresses(list, "reply_to_list", &mut errors);
    }
    let template = body.get("template_id").and_then(|t| t.as_str());
    let every_personalization_has_subject = personalizations.is_some_and(|list| {
        list.iter().all(|p| {
            p.get("subject")
                .and_then(|s| s.as_str())
                .is_some_and(|s| !s.is_empty())
        })
    });
    let has_subject = body
        .get("subject")
        .and_then(|s| s.as_str())
        .is_some_and(|s| !s.is_empty());
    if template.is_none() && !has_subject && !every_personalization_has_subject {
        errors.push(error(
            Some("subject"),
            "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.",
        ));
    }
    match body.get("content").and_then(|c| c.as_array()) {
        Some(blocks) if !blocks.is_empty() => {
            for (i, block) in blocks.iter().enumerate() {
                if block.get("type").and_then(|t| t.as_str()).is_none_or(str::is_empty) {
                    errors.push(error(
                        Some(&format!("content.{i}.type")),
                        "The content type cannot contain ';', or CRLF characters and must be at least 1 character.",
                    ));
                }
                if block.get("value").and_then(|v| v.as_str()).is_none_or(str::is_empty) {
                    errors.push(error(
                        Some(&format!("content.{i}.value")),
                        "The content value must be a string at least one character in length.",
                    ));
                }
            }
        }
        _ if template.is_some() => {}
        _ => errors.push(error(
            Some("content"),
            "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required.",
        )),
    }
    if body
        .get("categories")
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.len() > MAX_CATEGORIES)
    {
        errors.push(error(
            Some("categories"),
            "Too many categories. A maximum of 10 may be used.",
        ));
    }
    (errors, recipients)
}

fn message_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

async fn mail_send(
    req: HttpRequest,
    state: web::Data<SandboxState>,
    body: web::Bytes,
) -> HttpResponse {
    let decision = state.sendgrid.window.acquire(Instant::now());
    if !decision.allowed {
        return with_limit_headers(HttpResponse::TooManyRequests(), &decision)
            .json(json!({"errors":[{"field": null, "message": "too many requests"}]}));
    }
    let respond = |builder: actix_web::HttpResponseBuilder| with_limit_headers(builder, &decision);

    let key = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if key.is_none_or(str::is_empty) {
        return respond(HttpResponse::Unauthorized())
            .json(error_body(vec![error(None, "authorization required")]));
    }
    if !credential_matches(&state.config().sendgrid.api_key, key) {
        return respond(HttpResponse::Unauthorized()).json(error_body(vec![error(
            None,
            "The provided authorization grant is invalid, expired, or revoked",
        )]));
    }
    if body.len() > MAX_MESSAGE_BYTES {
        return respond(HttpResponse::PayloadTooLarge())
            .json(error_body(vec![error(None, "content too large")]));
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return respond(HttpResponse::BadRequest()).json(error_body(vec![error(
                None,
                "Bad Request: the request body must be a JSON object.",
            )]));
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let (errors, recipients) = validate(&parsed, now);
    if !errors.is_empty() {
        return respond(HttpResponse::BadRequest()).json(error_body(errors));
    }
    let sandbox_mode = parsed
        .pointer("/mail_settings/sandbox_mode/enable")
        .and_then(|e| e.as_bool())
        .unwrap_or(false);
    if sandbox_mode {
        // Validation only: SendGrid answers 200 and sends nothing.
        return respond(HttpResponse::Ok()).finish();
    }
    let message_id = message_id();
    state.sendgrid.mails.lock().push(SentMail {
        message_id: message_id.clone(),
        recipients,
        from: parsed
            .pointer("/from/email")
            .and_then(|e| e.as_str())
            .unwrap_or_default()
            .to_owned(),
        subject: parsed
            .get("subject")
            .and_then(|s| s.as_str())
            .map(str::to_owned),
        template_id: parsed
            .get("template_id")
            .and_then(|s| s.as_str())
            .map(str::to_owned),
        request: parsed,
    });
    respond(HttpResponse::Accepted())
        .insert_header(("X-Message-Id", message_id))
        .finish()
}

pub(crate) fn rate_limited_response(retry_after: Duration) -> HttpResponse {
    let decision = Decision {
        allowed: false,
        limit: REQUESTS_PER_SECOND,
        remaining: 0,
        reset_after: retry_after,
    };
    with_limit_headers(HttpResponse::TooManyRequests(), &decision)
        .json(json!({"errors":[{"field": null, "message": "too many requests"}]}))
}

pub(crate) fn injected_error(status: u16, state: &SandboxState) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
    // Every SendGrid answer carries the rate-limit headers, errors included (reference §9).
    let decision = state.sendgrid.window.peek(Instant::now());
    with_limit_headers(HttpResponse::build(status), &decision).json(error_body(vec![error(
        None,
        status.canonical_reason().unwrap_or("error"),
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({
            "personalizations": [{"to": [{"email": "dev@consumer.example"}]}],
            "from": {"email": "billing@market.example"},
            "subject": "Welcome",
            "content": [{"type": "text/plain", "value": "hello"}]
        })
    }

    #[test]
    fn a_complete_mail_passes_and_names_its_recipients() {
        let (errors, recipients) = validate(&valid(), 0);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(recipients, vec!["dev@consumer.example"]);
    }

    #[test]
    fn each_missing_part_is_reported_with_its_field() {
        let (errors, _) = validate(&json!({}), 0);
        let fields: Vec<_> = errors
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["personalizations", "from", "subject", "content"]);
    }

    #[test]
    fn a_template_stands_in_for_subject_and_content() {
        let mut body = valid();
        body.as_object_mut().unwrap().remove("subject");
        body.as_object_mut().unwrap().remove("content");
        body["template_id"] = json!("d-0123456789abcdef0123456789abcdef");
        assert!(validate(&body, 0).0.is_empty());
    }

    #[test]
    fn a_mail_scheduled_more_than_72_hours_ahead_is_refused_wherever_send_at_is() {
        let mut body = valid();
        body["send_at"] = json!(MAX_SCHEDULE_SECS + 1);
        let (errors, _) = validate(&body, 0);
        assert_eq!(errors[0]["field"], "send_at");
        let mut body = valid();
        body["personalizations"][0]["send_at"] = json!(MAX_SCHEDULE_SECS + 1);
        assert_eq!(
            validate(&body, 0).0[0]["field"],
            "personalizations.0.send_at"
        );
        body["personalizations"][0]["send_at"] = json!(MAX_SCHEDULE_SECS);
        assert!(validate(&body, 0).0.is_empty());
    }

    #[test]
    fn duplicate_and_malformed_addresses_are_refused() {
        let mut body = valid();
        body["personalizations"][0]["cc"] =
            json!([{"email": "DEV@consumer.example"}, {"email": "not-an-address"}]);
        let (errors, _) = validate(&body, 0);
        let fields: Vec<_> = errors
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            ["personalizations.0.cc.1.email", "personalizations.0.cc"]
        );
    }
}
