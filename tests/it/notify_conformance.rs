//! Black-box conformance of the sandbox's MS Teams and SendGrid emulators against
//! `shared/reference/recurly-teams-sendgrid.md` §8 (Teams) and §9 (SendGrid).

use billing_bridge_sandbox::{SandboxConfig, SendgridSettings};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestSandbox, default_sandbox, spawn_sandbox};

// ---------------------------------------------------------------------------------------------
// Teams (§8)

/// The Adaptive Card envelope of §8.2, as posted to a legacy webhook or a Workflows trigger.
fn adaptive_card(title: &str) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard", "version": "1.2",
                "body": [
                    {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true},
                    {"type": "FactSet", "facts": [{"title": "Plan", "value": "acme-weather-basic"}]}
                ],
                "actions": [{"type": "Action.OpenUrl", "title": "Open in Recurly", "url": "https://example.recurly.com"}]
            }
        }]
    })
}

/// The MessageCard of §8.1 with its required `summary`.
fn message_card_with_summary() -> Value {
    json!({
        "@type": "MessageCard", "@context": "http://schema.org/extensions", "themeColor": "0076D7",
        "summary": "Subscription provisioned",
        "sections": [{"activityTitle": "Subscription provisioned",
                      "facts": [{"name": "Plan", "value": "Silver"}], "markdown": true}]
    })
}

async fn post_teams(sb: &TestSandbox, path: &str, body: &Value) -> (StatusCode, String) {
    let resp = sb
        .http
        .post(sb.at(path))
        .json(body)
        .send()
        .await
        .expect("teams answers");
    let status = resp.status();
    (status, resp.text().await.expect("teams body"))
}

async fn cards(sb: &TestSandbox) -> Vec<Value> {
    let resp = sb
        .http
        .get(sb.at("/_sandbox/cards"))
        .send()
        .await
        .expect("cards route answers");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Vec<Value>>()
        .await
        .expect("cards are a JSON array")
}

#[tokio::test]
async fn teams_legacy_webhook_accepts_adaptive_card_with_body_1_and_lists_it() {
    let sb = default_sandbox().await;
    let (status, body) = post_teams(
        &sb,
        "/teams/webhookb2/tenant-a@org/IncomingWebhook/abc/def",
        &adaptive_card("New subscription provisioned"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "§8.1: success is HTTP 200");
    assert_eq!(body, "1", "§8.1: success body is `1`");

    let cards = cards(&sb).await;
    assert_eq!(cards.len(), 1, "one accepted card: {cards:?}");
    assert_eq!(cards[0]["kind"], "adaptive_card");
    assert!(
        cards[0]["channel"]
            .as_str()
            .is_some_and(|c| c.contains("abc/def")),
        "channel names the webhook URL: {}",
        cards[0]
    );
    assert_eq!(
        cards[0]["body"]["attachments"][0]["content"]["body"][0]["text"],
        "New subscription provisioned"
    );
}

#[tokio::test]
async fn teams_legacy_webhook_accepts_message_card_with_summary() {
    let sb = default_sandbox().await;
    let (status, body) = post_teams(&sb, "/teams/webhookb2/mc", &message_card_with_summary()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    let cards = cards(&sb).await;
    assert_eq!(cards.len(), 1);
    assert_eq!(cards[0]["kind"], "message_card");
}

#[tokio::test]
async fn teams_legacy_webhook_refuses_message_card_without_summary_or_text() {
    let sb = default_sandbox().await;
    let card = json!({
        "@type": "MessageCard", "@context": "http://schema.org/extensions",
        "sections": [{"activityTitle": "no summary here"}]
    });
    let (status, body) = post_teams(&sb, "/teams/webhookb2/mc", &card).await;
    assert!(
        status.is_client_error(),
        "§8.1 'Summary or Text is required.': got {status} {body}"
    );
    assert!(cards(&sb).await.is_empty(), "a refused card is not listed");
}

#[tokio::test]
async fn teams_legacy_webhook_accepts_plain_text() {
    let sb = default_sandbox().await;
    let (status, body) =
        post_teams(&sb, "/teams/webhookb2/t", &json!({"text": "Hello World"})).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    let cards = cards(&sb).await;
    assert_eq!(cards.len(), 1);
    assert_eq!(cards[0]["kind"], "text");
    assert_eq!(cards[0]["body"]["text"], "Hello World");
}

#[tokio::test]
async fn teams_refuses_messages_over_28_kb_and_accepts_just_under() {
    let sb = default_sandbox().await;
    // 27,000 bytes is under 28 KB whether KB means 1,000 or 1,024 bytes; 30,000 is over both.
    let under = json!({"text": "a".repeat(27_000 - 12)});
    assert!(serde_json::to_vec(&under).unwrap().len() <= 27_000);
    let (status, body) = post_teams(&sb, "/teams/webhookb2/size", &under).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));

    let over = json!({"text": "b".repeat(30_000)});
    let (status, body) = post_teams(&sb, "/teams/webhookb2/size2", &over).await;
    assert!(
        !(status == StatusCode::OK && body == "1"),
        "§8.1: a message over 28 KB gets an error, got {status} {body:.100}"
    );
    assert_eq!(
        cards(&sb).await.len(),
        1,
        "only the small message is listed"
    );
}

#[tokio::test]
async fn teams_throttles_the_fifth_request_in_one_second_to_one_url() {
    let sb = default_sandbox().await;
    let mut answers = Vec::new();
    for i in 0..5 {
        answers.push(
            post_teams(
                &sb,
                "/teams/webhookb2/busy",
                &json!({"text": format!("n{i}")}),
            )
            .await,
        );
    }
    for (i, (status, body)) in answers[..4].iter().enumerate() {
        assert_eq!(
            (*status, body.as_str()),
            (StatusCode::OK, "1"),
            "request {i} is within 4/s"
        );
    }
    let (status, body) = &answers[4];
    // §8.1: "Connectors do not throw 429s"; the body names the throttling.
    assert!(
        body.contains("HTTP error 429"),
        "5th request in a second is throttled with `HTTP error 429` in the body, got {status} {body}"
    );
    // The limit is per URL: another webhook is still served.
    let (status, body) = post_teams(&sb, "/teams/webhookb2/quiet", &json!({"text": "x"})).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    assert_eq!(cards(&sb).await.len(), 5, "throttled message is not listed");
}

#[tokio::test]
async fn teams_throttle_clears_after_the_second_passes() {
    let sb = default_sandbox().await;
    for i in 0..5 {
        post_teams(
            &sb,
            "/teams/webhookb2/later",
            &json!({"text": format!("n{i}")}),
        )
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, body) = post_teams(&sb, "/teams/webhookb2/later", &json!({"text": "again"})).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
}

#[tokio::test]
async fn teams_workflows_trigger_answers_202_with_empty_body_and_lists_the_card() {
    let sb = default_sandbox().await;
    let (status, body) = post_teams(
        &sb,
        "/teams/workflows/abc123/triggers/manual/paths/invoke",
        &adaptive_card("From a workflow"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "§8.3: Workflows answer 202");
    assert!(body.is_empty(), "§8.3: empty body, got {body:?}");
    let cards = cards(&sb).await;
    assert_eq!(cards.len(), 1, "{cards:?}");
    assert_eq!(cards[0]["kind"], "adaptive_card");
    assert_eq!(cards[0]["rendered"], true);
}

#[tokio::test]
async fn teams_workflows_answer_202_even_for_a_message_card_but_do_not_render_it() {
    let sb = default_sandbox().await;
    let (status, body) =
        post_teams(&sb, "/teams/workflows/wf1", &message_card_with_summary()).await;
    // §8.3: Workflows only render Adaptive Cards; a bad payload still gets 202.
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(body.is_empty());
    let cards = cards(&sb).await;
    assert_eq!(cards.len(), 1, "the accepted request is listed: {cards:?}");
    assert_eq!(cards[0]["kind"], "message_card");
    assert_eq!(cards[0]["rendered"], false, "a MessageCard is not rendered");
}

// ---------------------------------------------------------------------------------------------
// SendGrid (§9)

const MAIL_SEND: &str = "/sendgrid/v3/mail/send";

fn plain_mail(to: &str) -> Value {
    json!({
        "personalizations": [{"to": [{"email": to, "name": "Dev Team"}]}],
        "from": {"email": "billing@ourmarket.example", "name": "Our API Marketplace"},
        "subject": "Your subscription is active",
        "content": [{"type": "text/plain", "value": "Welcome"}]
    })
}

async fn send_mail(sb: &TestSandbox, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = sb.http.post(sb.at(MAIL_SEND)).json(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.expect("sendgrid answers")
}

async fn mails(sb: &TestSandbox) -> Vec<Value> {
    let resp = sb
        .http
        .get(sb.at("/_sandbox/mails"))
        .send()
        .await
        .expect("mails route answers");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Vec<Value>>()
        .await
        .expect("mails are a JSON array")
}

/// The `field` of every entry of a SendGrid `{"errors":[…]}` body.
fn error_fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("errors array expected: {body}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn assert_rate_limit_headers(resp: &reqwest::Response) {
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        let value = resp
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("§9: every response carries {name}"));
        value
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{name} is a number: {value:?}"));
    }
}

#[tokio::test]
async fn sendgrid_accepts_mail_with_202_empty_body_message_id_and_rate_limit_headers() {
    let sb = default_sandbox().await;
    let resp = send_mail(
        &sb,
        Some("SG.test-key"),
        &plain_mail("dev@consumer.example"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_rate_limit_headers(&resp);
    let message_id = resp
        .headers()
        .get("x-message-id")
        .expect("§9: X-Message-Id header")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!message_id.is_empty());
    assert!(resp.text().await.unwrap().is_empty(), "§9: empty body");

    let second = send_mail(
        &sb,
        Some("SG.test-key"),
        &plain_mail("ops@consumer.example"),
    )
    .await;
    assert_ne!(
        second
            .headers()
            .get("x-message-id")
            .unwrap()
            .to_str()
            .unwrap(),
        message_id,
        "each mail has its own X-Message-Id"
    );

    let mails = mails(&sb).await;
    assert_eq!(mails.len(), 2);
    assert_eq!(mails[0]["message_id"], message_id);
    assert_eq!(mails[0]["recipients"], json!(["dev@consumer.example"]));
    assert_eq!(mails[0]["from"], "billing@ourmarket.example");
    assert_eq!(mails[0]["subject"], "Your subscription is active");
}

#[tokio::test]
async fn sendgrid_lists_every_recipient_of_to_cc_and_bcc() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("a@consumer.example");
    mail["personalizations"][0]["cc"] = json!([{"email": "b@consumer.example"}]);
    mail["personalizations"][0]["bcc"] = json!([{"email": "c@consumer.example"}]);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let mails = mails(&sb).await;
    let mut recipients: Vec<String> =
        serde_json::from_value(mails[0]["recipients"].clone()).unwrap();
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "a@consumer.example",
            "b@consumer.example",
            "c@consumer.example"
        ]
    );
}

#[tokio::test]
async fn sendgrid_accepts_dynamic_template_without_subject_or_content() {
    let sb = default_sandbox().await;
    let mail = json!({
        "personalizations": [{"to": [{"email": "dev@consumer.example"}],
                              "dynamic_template_data": {"plan_name": "Silver"}}],
        "from": {"email": "billing@ourmarket.example"},
        "template_id": "d-0123456789abcdef0123456789abcdef"
    });
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "§9: a template supplies content"
    );
    let mails = mails(&sb).await;
    assert_eq!(
        mails[0]["template_id"],
        "d-0123456789abcdef0123456789abcdef"
    );
}

#[tokio::test]
async fn sendgrid_refuses_missing_key_with_401_errors_body() {
    let sb = default_sandbox().await;
    let resp = send_mail(&sb, None, &plain_mail("dev@consumer.example")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_rate_limit_headers(&resp);
    let body: Value = resp.json().await.expect("JSON error body");
    assert!(
        body["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "§9 error body: {body}"
    );
    assert!(body["errors"][0]["message"].is_string());
    assert!(mails(&sb).await.is_empty());
}

#[tokio::test]
async fn sendgrid_with_configured_key_refuses_another_key_and_accepts_it() {
    let sb = spawn_sandbox(SandboxConfig {
        sendgrid: SendgridSettings {
            api_key: Some("SG.the-right-one".into()),
        },
        ..SandboxConfig::default()
    })
    .await;
    let resp = send_mail(&sb, Some("SG.wrong"), &plain_mail("dev@consumer.example")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert!(body["errors"].is_array(), "{body}");

    let resp = send_mail(
        &sb,
        Some("SG.the-right-one"),
        &plain_mail("dev@consumer.example"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(mails(&sb).await.len(), 1);
}

#[tokio::test]
async fn sendgrid_names_each_missing_required_field_in_a_400() {
    let sb = default_sandbox().await;
    let resp = send_mail(&sb, Some("SG.k"), &json!({"subject": "only a subject"})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    let fields = error_fields(&body);
    for field in ["personalizations", "from", "content"] {
        assert!(
            fields
                .iter()
                .any(|f| f == field || f.starts_with(&format!("{field}."))),
            "§9: `{field}` is named among {fields:?}"
        );
    }
    assert!(mails(&sb).await.is_empty());
}

#[tokio::test]
async fn sendgrid_refuses_missing_content_alone_and_names_only_it() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail.as_object_mut().unwrap().remove("content");
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let fields = error_fields(&resp.json().await.unwrap());
    assert!(
        fields.iter().any(|f| f.starts_with("content")),
        "{fields:?}"
    );
    assert!(
        !fields
            .iter()
            .any(|f| f.starts_with("personalizations") || f.starts_with("from")),
        "present fields are not reported: {fields:?}"
    );
}

#[tokio::test]
async fn sendgrid_refuses_a_duplicate_recipient() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail["personalizations"][0]["cc"] = json!([{"email": "dev@consumer.example"}]);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "§9: each address may appear only once"
    );
    let body: Value = resp.json().await.unwrap();
    assert!(body["errors"].as_array().is_some_and(|e| !e.is_empty()));
    assert!(mails(&sb).await.is_empty());
}

#[tokio::test]
async fn sendgrid_refuses_reply_to_together_with_reply_to_list() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail["reply_to"] = json!({"email": "support@ourmarket.example"});
    mail["reply_to_list"] = json!([{"email": "help@ourmarket.example"}]);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "§9: reply_to or reply_to_list, not both"
    );
    assert!(mails(&sb).await.is_empty());
}

#[tokio::test]
async fn sendgrid_sandbox_mode_answers_200_and_sends_nothing() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail["mail_settings"] = json!({"sandbox_mode": {"enable": true}});
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "§9: sandbox mode validates only (200)"
    );
    assert!(
        mails(&sb).await.is_empty(),
        "nothing is sent in sandbox mode"
    );
}

#[tokio::test]
async fn sendgrid_sandbox_mode_still_validates() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail.as_object_mut().unwrap().remove("from");
    mail["mail_settings"] = json!({"sandbox_mode": {"enable": true}});
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let fields = error_fields(&resp.json().await.unwrap());
    assert!(fields.iter().any(|f| f.starts_with("from")), "{fields:?}");
}

#[tokio::test]
async fn teams_refuses_an_adaptive_envelope_whose_type_is_not_message() {
    let sb = default_sandbox().await;
    let mut card = adaptive_card("wrong envelope");
    card["type"] = json!("note");
    let (status, body) = post_teams(&sb, "/teams/webhookb2/env", &card).await;
    assert!(
        !(status == StatusCode::OK && body == "1"),
        "§8.2 `type` must be \"message\": got {status} {body}"
    );
    assert!(cards(&sb).await.is_empty());
}

#[tokio::test]
async fn teams_refuses_an_attachment_that_is_not_an_adaptive_card() {
    let sb = default_sandbox().await;
    let mut card = adaptive_card("wrong content type");
    card["attachments"][0]["contentType"] = json!("application/json");
    let (status, body) = post_teams(&sb, "/teams/webhookb2/ct", &card).await;
    assert!(
        !(status == StatusCode::OK && body == "1"),
        "§8.2 contentType must be the adaptive card type: got {status} {body}"
    );
}

#[tokio::test]
async fn sendgrid_refuses_empty_personalizations() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail["personalizations"] = json!([]);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "§9 personalizations 1–1000"
    );
    let fields = error_fields(&resp.json().await.unwrap());
    assert!(
        fields.iter().any(|f| f.starts_with("personalizations")),
        "{fields:?}"
    );
}

#[tokio::test]
async fn sendgrid_refuses_a_personalization_without_to() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail["personalizations"] = json!([{"subject": "no recipients"}]);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "§9 `to` is required"
    );
    let fields = error_fields(&resp.json().await.unwrap());
    assert!(
        fields.iter().any(|f| f.starts_with("personalizations.0")),
        "the field names the personalization: {fields:?}"
    );
}

#[tokio::test]
async fn sendgrid_refuses_more_than_1000_recipients() {
    let sb = default_sandbox().await;
    let to: Vec<Value> = (0..1001)
        .map(|i| json!({"email": format!("r{i}@consumer.example")}))
        .collect();
    let mut mail = plain_mail("x@consumer.example");
    mail["personalizations"] = json!([{"to": to}]);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "§9 max 1000 recipients"
    );
    assert!(mails(&sb).await.is_empty());
}

#[tokio::test]
async fn sendgrid_accepts_exactly_1000_recipients() {
    let sb = default_sandbox().await;
    let to: Vec<Value> = (0..1000)
        .map(|i| json!({"email": format!("r{i}@consumer.example")}))
        .collect();
    let mut mail = plain_mail("x@consumer.example");
    mail["personalizations"] = json!([{"to": to}]);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn sendgrid_refuses_more_than_10_categories() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail["categories"] = json!((0..11).map(|i| format!("c{i}")).collect::<Vec<_>>());
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "§9 categories ≤ 10");
}

#[tokio::test]
async fn sendgrid_refuses_send_at_more_than_72_hours_ahead() {
    let sb = default_sandbox().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mail = plain_mail("dev@consumer.example");
    mail["send_at"] = json!(now + 73 * 3600);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "§9 send_at ≤ 72 h ahead"
    );

    mail["send_at"] = json!(now + 3600);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "an hour ahead is fine");
}

#[tokio::test]
async fn sendgrid_refuses_content_with_no_blocks() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail["content"] = json!([]);
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "§9 at least one content block"
    );
    let fields = error_fields(&resp.json().await.unwrap());
    assert!(
        fields.iter().any(|f| f.starts_with("content")),
        "{fields:?}"
    );
}

#[tokio::test]
async fn sendgrid_refuses_a_from_without_email() {
    let sb = default_sandbox().await;
    let mut mail = plain_mail("dev@consumer.example");
    mail["from"] = json!({"name": "Our API Marketplace"});
    let resp = send_mail(&sb, Some("SG.k"), &mail).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "§9 from{{email,name}}"
    );
    let fields = error_fields(&resp.json().await.unwrap());
    assert!(fields.iter().any(|f| f.starts_with("from")), "{fields:?}");
}
