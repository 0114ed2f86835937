//! MS Teams emulator: legacy incoming webhooks (`/teams/webhookb2/...`, 200 with body `1`) and
//! Workflows triggers (`/teams/workflows/...`, 202 empty), with Teams' card checks and throttle.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::SandboxState;
use crate::ratelimit::SlidingWindow;

/// Largest message Teams accepts (reference §8.1: 28 KB).
const MAX_MESSAGE_BYTES: usize = 28 * 1024;

/// The body the legacy connector answers with when a channel is throttled. Connectors "do not
/// throw 429s"; the error is in a 200 body (reference §8.1). The exact wording after the number
/// is inferred.
const THROTTLED_BODY: &str = "Microsoft Teams endpoint returned HTTP error 429 with ContextId tcid=0,server=msgapi-sandbox,cv=sandbox.0";

/// The error text the legacy connector gives for a body it cannot read as a card.
const BAD_PAYLOAD_BODY: &str = "Bad payload received by generic incoming webhook.";

/// Which card format a post used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardKind {
    AdaptiveCard,
    MessageCard,
    Text,
}

/// A card Teams accepted for a channel, as shown by `GET /_sandbox/cards`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PostedCard {
    pub seq: u64,
    /// The webhook path after `/teams`, which identifies the channel.
    pub channel: String,
    pub kind: CardKind,
    /// False when a Workflows trigger accepted a format it cannot render (MessageCard):
    /// the flow run fails later, out of sight of the sender.
    pub rendered: bool,
    pub body: serde_json::Value,
}

#[derive(Default)]
pub(crate) struct TeamsState {
    seq: AtomicU64,
    cards: Mutex<Vec<PostedCard>>,
    windows: Mutex<HashMap<String, Arc<SlidingWindow>>>,
}

impl TeamsState {
    pub fn reset(&self) {
        self.cards.lock().clear();
        self.windows.lock().clear();
    }

    pub fn cards(&self) -> Vec<PostedCard> {
        self.cards.lock().clone()
    }

    fn window(&self, channel: &str, per_second: u32) -> Arc<SlidingWindow> {
        self.windows
            .lock()
            .entry(channel.to_owned())
            .or_insert_with(|| Arc::new(SlidingWindow::new(per_second, Duration::from_secs(1))))
            .clone()
    }
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/{tail:.*}", web::post().to(post_message));
}

/// Why a body is not a card Teams can post.
fn classify(body: &serde_json::Value) -> Result<CardKind, &'static str> {
    let obj = body.as_object().ok_or(BAD_PAYLOAD_BODY)?;
    if obj.get("@type").and_then(|t| t.as_str()) == Some("MessageCard") {
        let has = |k: &str| {
            obj.get(k)
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty())
        };
        if !has("summary") && !has("text") {
            return Err("Summary or Text is required.");
        }
        return Ok(CardKind::MessageCard);
    }
    if obj.get("type").and_then(|t| t.as_str()) == Some("message") {
        let attachments = obj
            .get("attachments")
            .and_then(|a| a.as_array())
            .filter(|a| !a.is_empty())
            .ok_or(BAD_PAYLOAD_BODY)?;
        for attachment in attachments {
            let content_type = attachment.get("contentType").and_then(|c| c.as_str());
            let card_type = attachment
                .get("content")
                .and_then(|c| c.get("type"))
                .and_then(|t| t.as_str());
            if content_type != Some("application/vnd.microsoft.card.adaptive")
                || card_type != Some("AdaptiveCard")
            {
                return Err(BAD_PAYLOAD_BODY);
            }
        }
        return Ok(CardKind::AdaptiveCard);
    }
    if obj
        .get("text")
        .and_then(|t| t.as_str())
        .is_some_and(|t| !t.is_empty())
    {
        return Ok(CardKind::Text);
    }
    Err(BAD_PAYLOAD_BODY)
}

async fn post_message(
    req: HttpRequest,
    state: web::Data<SandboxState>,
    body: web::Bytes,
) -> HttpResponse {
    let channel = req.match_info().query("tail").to_owned();
    let workflows = channel.starts_with("workflows/");
    if !workflows && !channel.starts_with("webhookb2/") {
        return HttpResponse::NotFound().body("Webhook not found");
    }
    let per_second = state.config().teams.requests_per_second;
    if per_second > 0
        && !state
            .teams
            .window(&channel, per_second)
            .acquire(Instant::now())
            .allowed
    {
        return throttled(workflows);
    }
    if body.len() > MAX_MESSAGE_BYTES {
        return HttpResponse::PayloadTooLarge().body("Request Entity too large");
    }
    let parsed: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return HttpResponse::BadRequest().body(BAD_PAYLOAD_BODY),
    };
    let kind = match classify(&parsed) {
        Ok(kind) => kind,
        // Workflows accept the request and fail inside the flow; only legacy connectors answer 400.
        Err(_) if workflows => return HttpResponse::Accepted().finish(),
        Err(message) => return HttpResponse::BadRequest().body(message),
    };
    let rendered = !workflows || kind == CardKind::AdaptiveCard;
    let seq = state.teams.seq.fetch_add(1, Ordering::Relaxed) + 1;
    state.teams.cards.lock().push(PostedCard {
        seq,
        channel,
        kind,
        rendered,
        body: parsed,
    });
    if workflows {
        HttpResponse::Accepted().finish()
    } else {
        HttpResponse::Ok().content_type("text/plain").body("1")
    }
}

fn throttled(workflows: bool) -> HttpResponse {
    if workflows {
        // Logic Apps triggers throttle with a real 429 and Retry-After [I].
        HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", "1"))
            .finish()
    } else {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body(THROTTLED_BODY)
    }
}

pub(crate) fn throttled_response() -> HttpResponse {
    throttled(false)
}

pub(crate) fn injected_error(status: u16) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
    HttpResponse::build(status)
        .content_type("text/plain")
        .body(format!(
            "Microsoft Teams endpoint returned HTTP error {}",
            status.as_u16()
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tells_card_formats_apart_and_refuses_what_teams_refuses() {
        let adaptive = json!({"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive","content":{"type":"AdaptiveCard","version":"1.4","body":[]}}]});
        assert_eq!(classify(&adaptive), Ok(CardKind::AdaptiveCard));
        let message_card = json!({"@type":"MessageCard","summary":"s"});
        assert_eq!(classify(&message_card), Ok(CardKind::MessageCard));
        assert_eq!(
            classify(&json!({"@type":"MessageCard","sections":[]})),
            Err("Summary or Text is required.")
        );
        assert_eq!(classify(&json!({"text":"hi"})), Ok(CardKind::Text));
        assert_eq!(
            classify(&json!({"type":"message","attachments":[]})),
            Err(BAD_PAYLOAD_BODY)
        );
        assert_eq!(classify(&json!([1, 2])), Err(BAD_PAYLOAD_BODY));
    }
}
