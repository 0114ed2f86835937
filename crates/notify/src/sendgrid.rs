//! Subscriber mail through SendGrid v3 mail send (reference §9): Bearer key, 202 with
//! `X-Message-Id`; 429 waits for `X-RateLimit-Reset`, 5xx and network errors are retried.
//! SendGrid has no idempotency, so a retried 5xx may send twice; the caller's outbox limits that.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::{Address, Mail, NotifyError};
use billing_bridge_upstream::{
    NoObserver, Observer, RetryPolicy, Upstream, call_span, record_exchange,
};
use std::time::Instant;
use tracing::Instrument;

const UPSTREAM: &str = "SendGrid";
/// The one operation, as metrics and spans name it.
const OPERATION: &str = "send mail";

pub struct SendGridMailer {
    http: reqwest::Client,
    endpoint: String,
    api_key: SecretString,
    retry: RetryPolicy,
    observer: Observer,
}

fn address(a: &Address) -> Value {
    match &a.name {
        Some(name) => json!({"email": a.email, "name": name}),
        None => json!({"email": a.email}),
    }
}

/// The mail-send request body.
pub(crate) fn request_body(mail: &Mail) -> Value {
    let mut content = vec![json!({"type": "text/plain", "value": mail.text})];
    if let Some(html) = &mail.html {
        content.push(json!({"type": "text/html", "value": html}));
    }
    let mut personalization = json!({"to": [address(&mail.to)]});
    if !mail.tags.is_empty() {
        personalization["custom_args"] = json!(mail.tags);
    }
    let mut body = json!({
        "personalizations": [personalization],
        "from": address(&mail.from),
        "subject": mail.subject,
        "content": content,
    });
    if let Some(reply_to) = &mail.reply_to {
        body["reply_to"] = address(reply_to);
    }
    body
}

/// Seconds until an `X-RateLimit-Reset` epoch time.
fn until_reset(reset: Option<u64>) -> Option<Duration> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    reset.map(|r| Duration::from_secs(r.saturating_sub(now).max(1)))
}

fn error_detail(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v["errors"].as_array().map(|errors| {
                errors
                    .iter()
                    .map(|e| match e["field"].as_str() {
                        Some(field) => format!("{field}: {}", e["message"].as_str().unwrap_or("")),
                        None => e["message"].as_str().unwrap_or("").to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .unwrap_or_else(|| body.chars().take(300).collect())
}

impl SendGridMailer {
    pub fn new(http: reqwest::Client, base_url: &str, api_key: SecretString) -> Self {
        Self {
            http,
            endpoint: format!("{}/v3/mail/send", base_url.trim_end_matches('/')),
            api_key,
            retry: RetryPolicy::default(),
            observer: NoObserver::shared(),
        }
    }

    /// Reports every exchange to `observer` (the metrics).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    pub fn with_retry(mut self, attempts: usize, min_delay: Duration, max_delay: Duration) -> Self {
        self.retry = RetryPolicy {
            attempts,
            min_delay,
            max_delay,
        };
        self
    }

    /// Sends the mail; returns SendGrid's `X-Message-Id`.
    pub async fn send(&self, mail: &Mail) -> Result<Option<String>, NotifyError> {
        let body = request_body(mail);
        self.retry
            .run_observed(Some((&self.observer, Upstream::Sendgrid)), || {
                self.send_once(&body)
                    .instrument(call_span(Upstream::Sendgrid, OPERATION, "POST"))
            })
            .await
    }

    async fn send_once(&self, body: &Value) -> Result<Option<String>, NotifyError> {
        let started = Instant::now();
        let response = self
            .http
            .post(&self.endpoint)
            .bearer_auth(self.api_key.expose_secret())
            .json(body)
            .send()
            .await
            .map_err(|e| {
                record_exchange(&self.observer, Upstream::Sendgrid, OPERATION, None, started);
                NotifyError::unreachable(UPSTREAM, e)
            })?;
        let status = response.status().as_u16();
        record_exchange(
            &self.observer,
            Upstream::Sendgrid,
            OPERATION,
            Some(status),
            started,
        );
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let message_id = header("X-Message-Id");
        let reset = header("X-RateLimit-Reset").and_then(|r| r.parse().ok());
        match status {
            200..=299 => Ok(message_id),
            429 => Err(NotifyError::Throttled {
                upstream: UPSTREAM,
                retry_after: until_reset(reset),
            }),
            500.. => Err(NotifyError::Unavailable {
                upstream: UPSTREAM,
                status,
            }),
            _ => {
                let text = response.text().await.unwrap_or_default();
                Err(NotifyError::Rejected {
                    upstream: UPSTREAM,
                    status,
                    detail: error_detail(&text),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details_name_each_field() {
        let body = r#"{"errors":[{"field":"from","message":"required"},{"field":null,"message":"bad"}],"id":"x"}"#;
        assert_eq!(error_detail(body), "from: required; bad");
        assert_eq!(error_detail("not json"), "not json");
    }
}
