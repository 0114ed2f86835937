//! Black-box tests of the sandbox's own control surface (`/_sandbox/...`): health, reset, the
//! request recorder, configuration and per-upstream fault injection, as `crates/sandbox/README.md`
//! describes them.

use std::time::{Duration, Instant};

use billing_bridge_sandbox::{
    AmplifySettings, RecorderSettings, RecurlySettings, SandboxConfig, SendgridSettings,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::amplify_conformance::client::{Amplify, token_basic};
use crate::support::{TestSandbox, default_sandbox, spawn_sandbox};

const MAIL_SEND: &str = "/sendgrid/v3/mail/send";

fn mail(to: &str) -> Value {
    json!({
        "personalizations": [{"to": [{"email": to}]}],
        "from": {"email": "billing@ourmarket.example"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi"}]
    })
}

async fn send_mail_with_key(sb: &TestSandbox, key: &str, to: &str) -> reqwest::Response {
    sb.http
        .post(sb.at(MAIL_SEND))
        .bearer_auth(key)
        .json(&mail(to))
        .send()
        .await
        .expect("sendgrid answers")
}

async fn send_mail(sb: &TestSandbox, to: &str) -> reqwest::Response {
    send_mail_with_key(sb, "SG.key", to).await
}

async fn post_card(sb: &TestSandbox, channel: &str, text: &str) -> (StatusCode, String) {
    let resp = sb
        .http
        .post(sb.at(&format!("/teams/webhookb2/{channel}")))
        .json(&json!({"text": text}))
        .send()
        .await
        .expect("teams answers");
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

async fn get_json(sb: &TestSandbox, path: &str) -> Value {
    let resp = sb
        .http
        .get(sb.at(path))
        .send()
        .await
        .expect("control route answers");
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    resp.json().await.expect("control route answers JSON")
}

async fn recorded(sb: &TestSandbox, query: &str) -> Vec<Value> {
    serde_json::from_value(get_json(sb, &format!("/_sandbox/requests{query}")).await)
        .expect("recorded requests are an array")
}

async fn put_faults(sb: &TestSandbox, upstream: &str, settings: Value) -> StatusCode {
    sb.http
        .put(sb.at(&format!("/_sandbox/faults/{upstream}")))
        .json(&settings)
        .send()
        .await
        .expect("faults route answers")
        .status()
}

async fn set_faults(sb: &TestSandbox, upstream: &str, settings: Value) {
    let status = put_faults(sb, upstream, settings).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "PUT faults/{upstream}");
}

// ---------------------------------------------------------------------------------------------
// health, recorder

#[tokio::test]
async fn health_reports_ok() {
    let sb = default_sandbox().await;
    assert_eq!(
        get_json(&sb, "/_sandbox/health").await,
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn recorder_keeps_each_upstream_request_with_body_and_answer_in_order() {
    let sb = default_sandbox().await;
    assert_eq!(
        send_mail(&sb, "a@consumer.example").await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(post_card(&sb, "rec", "hello").await.0, StatusCode::OK);

    let all = recorded(&sb, "").await;
    assert_eq!(all.len(), 2, "{all:?}");
    let (mail_req, card_req) = (&all[0], &all[1]);
    assert!(
        mail_req["seq"].as_u64() < card_req["seq"].as_u64(),
        "in order"
    );

    assert_eq!(mail_req["upstream"], "sendgrid");
    assert_eq!(mail_req["method"], "POST");
    assert_eq!(mail_req["path"], MAIL_SEND);
    assert_eq!(
        mail_req["body"],
        mail("a@consumer.example"),
        "body kept as JSON"
    );
    assert_eq!(mail_req["status"], 202);
    assert_eq!(mail_req["headers"]["authorization"], "Bearer SG.key");
    assert!(mail_req["response_headers"]["x-message-id"].is_string());
    assert!(mail_req["injected"].is_null(), "nothing was injected");

    assert_eq!(card_req["upstream"], "teams");
    assert_eq!(card_req["path"], "/teams/webhookb2/rec");
    assert_eq!(card_req["body"], json!({"text": "hello"}));
    assert_eq!(card_req["status"], 200);
}

#[tokio::test]
async fn recorder_filters_by_upstream_and_after_sequence() {
    let sb = default_sandbox().await;
    send_mail(&sb, "one@consumer.example").await;
    post_card(&sb, "f", "card").await;
    send_mail(&sb, "two@consumer.example").await;

    let mails = recorded(&sb, "?upstream=sendgrid").await;
    assert_eq!(mails.len(), 2);
    assert!(mails.iter().all(|r| r["upstream"] == "sendgrid"));

    let first_seq = mails[0]["seq"].as_u64().expect("seq is a number");
    let later = recorded(&sb, &format!("?upstream=sendgrid&after={first_seq}")).await;
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(
        later[0]["body"]["personalizations"][0]["to"][0]["email"],
        "two@consumer.example"
    );

    let after_all = recorded(&sb, &format!("?after={first_seq}")).await;
    assert_eq!(after_all.len(), 2, "the card and the second mail");
    assert!(
        after_all
            .iter()
            .all(|r| r["seq"].as_u64().unwrap() > first_seq)
    );
}

#[tokio::test]
async fn recorder_can_be_cleared() {
    let sb = default_sandbox().await;
    send_mail(&sb, "a@consumer.example").await;
    let resp = sb
        .http
        .delete(sb.at("/_sandbox/requests"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert!(recorded(&sb, "").await.is_empty());
    assert_eq!(
        get_json(&sb, "/_sandbox/mails")
            .await
            .as_array()
            .unwrap()
            .len(),
        1,
        "mails stay"
    );
}

#[tokio::test]
async fn recorder_keeps_only_the_newest_requests_up_to_its_limit() {
    let sb = spawn_sandbox(SandboxConfig {
        recorder: RecorderSettings { limit: 3 },
        ..SandboxConfig::default()
    })
    .await;
    for i in 0..5 {
        send_mail(&sb, &format!("r{i}@consumer.example")).await;
    }
    let kept = recorded(&sb, "").await;
    let to: Vec<&str> = kept
        .iter()
        .map(|r| {
            r["body"]["personalizations"][0]["to"][0]["email"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        to,
        [
            "r2@consumer.example",
            "r3@consumer.example",
            "r4@consumer.example"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// reset, config

#[tokio::test]
async fn reset_forgets_data_recordings_and_faults_but_keeps_config() {
    let sb = spawn_sandbox(SandboxConfig {
        sendgrid: SendgridSettings {
            api_key: Some("SG.kept".into()),
        },
        ..SandboxConfig::default()
    })
    .await;
    assert_eq!(
        send_mail_with_key(&sb, "SG.kept", "a@consumer.example")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    post_card(&sb, "reset", "x").await;
    set_faults(&sb, "teams", json!({"error_rate": 1, "error_status": 503})).await;

    let resp = sb.http.post(sb.at("/_sandbox/reset")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    assert_eq!(get_json(&sb, "/_sandbox/mails").await, json!([]));
    assert_eq!(get_json(&sb, "/_sandbox/cards").await, json!([]));
    assert!(recorded(&sb, "").await.is_empty());
    assert_eq!(
        post_card(&sb, "reset", "after").await,
        (StatusCode::OK, "1".to_owned()),
        "faults are gone"
    );
    assert_eq!(
        send_mail_with_key(&sb, "SG.other", "a@consumer.example")
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "the configured key still applies"
    );
}

#[tokio::test]
async fn config_route_hides_configured_secrets() {
    let sb = spawn_sandbox(SandboxConfig {
        amplify: AmplifySettings {
            client_id: Some("billing-bridge-sa".into()),
            client_secret: Some("amp-very-secret".into()),
            ..AmplifySettings::default()
        },
        recurly: RecurlySettings {
            api_key: Some("recurly-very-secret".into()),
            ..RecurlySettings::default()
        },
        sendgrid: SendgridSettings {
            api_key: Some("SG.very-secret".into()),
        },
        ..SandboxConfig::default()
    })
    .await;
    let resp = sb.http.get(sb.at("/_sandbox/config")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    for secret in ["amp-very-secret", "recurly-very-secret", "SG.very-secret"] {
        assert!(!text.contains(secret), "{secret} leaks in {text}");
    }
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["amplify"]["client_secret"], "<set>");
    assert_eq!(config["recurly"]["api_key"], "<set>");
    assert_eq!(config["sendgrid"]["api_key"], "<set>");
    assert_eq!(
        config["amplify"]["token_ttl_secs"], 1800,
        "other settings are shown"
    );
    assert_eq!(config["teams"]["requests_per_second"], 4);
}

#[tokio::test]
async fn config_route_shows_unset_credentials_as_null() {
    let sb = default_sandbox().await;
    let config = get_json(&sb, "/_sandbox/config").await;
    assert!(config["sendgrid"]["api_key"].is_null(), "{config}");
    assert!(config["amplify"]["client_secret"].is_null(), "{config}");
}

#[tokio::test]
async fn config_can_be_replaced_and_keeps_data() {
    let sb = spawn_sandbox(SandboxConfig {
        sendgrid: SendgridSettings {
            api_key: Some("SG.old".into()),
        },
        ..SandboxConfig::default()
    })
    .await;
    send_mail_with_key(&sb, "SG.old", "before@consumer.example").await;

    let resp = sb
        .http
        .put(sb.at("/_sandbox/config"))
        .json(&json!({"sendgrid": {"api_key": "SG.new"}}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "PUT config: {}", resp.status());

    assert_eq!(
        send_mail_with_key(&sb, "SG.old", "x@consumer.example")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send_mail_with_key(&sb, "SG.new", "y@consumer.example")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let mails = get_json(&sb, "/_sandbox/mails").await;
    assert_eq!(
        mails.as_array().unwrap().len(),
        2,
        "the mail sent before is kept: {mails}"
    );
    assert_eq!(
        get_json(&sb, "/_sandbox/config").await["sendgrid"]["api_key"],
        "<set>"
    );
}

// ---------------------------------------------------------------------------------------------
// faults

#[tokio::test]
async fn amplify_error_fault_answers_in_central_error_format_and_spares_other_upstreams() {
    let sb = default_sandbox().await;
    set_faults(
        &sb,
        "amplify",
        json!({"error_rate": 1, "error_status": 503}),
    )
    .await;

    let resp = sb
        .http
        .get(sb.at("/amplify/apis/catalog/v1/products"))
        .bearer_auth("whatever")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.expect("Central error body is JSON");
    assert_eq!(
        body["errors"][0]["status"], 503,
        "amplify-api.md §2.4 error shape: {body}"
    );
    assert!(body["errors"][0]["title"].is_string(), "{body}");

    assert_eq!(
        send_mail(&sb, "a@consumer.example").await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post_card(&sb, "spared", "x").await,
        (StatusCode::OK, "1".to_owned())
    );

    let injected = recorded(&sb, "?upstream=amplify").await;
    assert_eq!(injected.len(), 1);
    assert!(
        !injected[0]["injected"].is_null(),
        "recorded as injected: {}",
        injected[0]
    );
}

#[tokio::test]
async fn recurly_error_fault_500_answers_with_recurly_error_object() {
    let sb = default_sandbox().await;
    set_faults(
        &sb,
        "recurly",
        json!({"error_rate": 1, "error_status": 500}),
    )
    .await;
    let resp = sb
        .http
        .get(sb.at("/recurly/plans"))
        .basic_auth("rk", Some(""))
        .header("Accept", "application/vnd.recurly.v2021-02-25")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = resp.json().await.expect("Recurly error body is JSON");
    assert_eq!(
        body["error"]["type"], "internal_server_error",
        "recurly-teams-sendgrid.md §1.3: {body}"
    );
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn sendgrid_error_fault_answers_with_sendgrid_errors_body() {
    let sb = default_sandbox().await;
    set_faults(
        &sb,
        "sendgrid",
        json!({"error_rate": 1, "error_status": 500}),
    )
    .await;
    let resp = send_mail(&sb, "a@consumer.example").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = resp.json().await.expect("SendGrid error body is JSON");
    assert!(
        body["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "§9: {body}"
    );
    assert!(
        get_json(&sb, "/_sandbox/mails")
            .await
            .as_array()
            .unwrap()
            .is_empty(),
        "a failed send is not a sent mail"
    );
}

#[tokio::test]
async fn sendgrid_injected_error_still_carries_rate_limit_headers() {
    let sb = default_sandbox().await;
    set_faults(
        &sb,
        "sendgrid",
        json!({"error_rate": 1, "error_status": 503}),
    )
    .await;
    let resp = send_mail(&sb, "a@consumer.example").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(
            resp.headers().contains_key(name),
            "§9 every response carries {name}; README: injected answers have the upstream's headers"
        );
    }
}

#[tokio::test]
async fn latency_fault_delays_answers_by_at_least_the_latency() {
    let sb = default_sandbox().await;
    set_faults(&sb, "sendgrid", json!({"latency_ms": 200})).await;
    let started = Instant::now();
    let resp = send_mail(&sb, "slow@consumer.example").await;
    let took = started.elapsed();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "a delay is not an error"
    );
    assert!(took >= Duration::from_millis(200), "took {took:?}");
}

#[tokio::test]
async fn rate_limited_next_gives_exactly_that_many_429_then_normal_answers() {
    let sb = default_sandbox().await;
    set_faults(&sb, "sendgrid", json!({"rate_limited_next": 3})).await;
    let mut statuses = Vec::new();
    let mut throttled = Vec::new();
    for i in 0..5 {
        let resp = send_mail(&sb, &format!("r{i}@consumer.example")).await;
        statuses.push(resp.status().as_u16());
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            let has_reset = resp.headers().contains_key("x-ratelimit-reset");
            let body: Value = resp.json().await.expect("429 body is JSON");
            throttled.push((has_reset, body));
        }
    }
    assert_eq!(statuses, [429, 429, 429, 202, 202]);
    for (has_reset, body) in throttled {
        assert!(body["errors"].is_array(), "§9 429 body: {body}");
        assert!(has_reset, "§9: a 429 carries X-RateLimit-Reset to wait for");
    }
    let faults = get_json(&sb, "/_sandbox/faults").await;
    assert_eq!(
        faults["sendgrid"]["injected"]["rate_limited"], 3,
        "{faults}"
    );
}

#[tokio::test]
async fn hangup_fault_closes_the_connection_without_an_answer() {
    let sb = default_sandbox().await;
    set_faults(&sb, "sendgrid", json!({"hangup_rate": 1})).await;
    let result = sb
        .http
        .post(sb.at(MAIL_SEND))
        .bearer_auth("SG.key")
        .json(&mail("a@consumer.example"))
        .send()
        .await;
    let err = result.expect_err("a hang-up is a connection error, not a response");
    assert!(!err.is_status());
    assert_eq!(
        post_card(&sb, "other", "x").await.0,
        StatusCode::OK,
        "teams spared"
    );
}

#[tokio::test]
async fn timeout_fault_holds_the_request_then_closes_the_connection() {
    let sb = default_sandbox().await;
    set_faults(&sb, "teams", json!({"timeout_rate": 1, "hang_ms": 300})).await;
    let started = Instant::now();
    let result = sb
        .http
        .post(sb.at("/teams/webhookb2/t"))
        .json(&json!({"text": "x"}))
        .send()
        .await;
    let took = started.elapsed();
    assert!(result.is_err(), "no answer after a time-out: {result:?}");
    assert!(
        took >= Duration::from_millis(300),
        "held for hang_ms, took {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "closed after hang_ms, took {took:?}"
    );
}

#[tokio::test]
async fn path_contains_restricts_faults_to_matching_paths() {
    let sb = default_sandbox().await;
    set_faults(
        &sb,
        "teams",
        json!({"error_rate": 1, "error_status": 503, "path_contains": "alpha"}),
    )
    .await;
    assert_eq!(
        post_card(&sb, "alpha-channel", "x").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        post_card(&sb, "beta-channel", "x").await,
        (StatusCode::OK, "1".to_owned())
    );
}

#[tokio::test]
async fn methods_restrict_faults_to_those_methods() {
    let sb = default_sandbox().await;
    set_faults(
        &sb,
        "teams",
        json!({"error_rate": 1, "error_status": 503, "methods": ["GET"]}),
    )
    .await;
    assert_eq!(
        post_card(&sb, "m", "x").await,
        (StatusCode::OK, "1".to_owned())
    );
    let resp = sb
        .http
        .get(sb.at("/teams/webhookb2/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// Statuses of 16 mail sends under a 50 % error fault with `seed`.
async fn seeded_error_pattern(seed: u64) -> Vec<u16> {
    let sb = default_sandbox().await;
    set_faults(
        &sb,
        "sendgrid",
        json!({"error_rate": 0.5, "error_status": 503, "seed": seed}),
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..16 {
        statuses.push(
            send_mail(&sb, &format!("s{i}@consumer.example"))
                .await
                .status()
                .as_u16(),
        );
    }
    statuses
}

#[tokio::test]
async fn seeded_faults_repeat_the_same_pattern() {
    let first = seeded_error_pattern(42).await;
    let second = seeded_error_pattern(42).await;
    assert_eq!(first, second, "same seed, same pattern");
    assert!(
        first.contains(&503) && first.contains(&202),
        "a 50 % rate mixes: {first:?}"
    );
}

#[tokio::test]
async fn deleting_faults_restores_normal_answers() {
    let sb = default_sandbox().await;
    set_faults(&sb, "teams", json!({"error_rate": 1, "error_status": 503})).await;
    set_faults(
        &sb,
        "sendgrid",
        json!({"error_rate": 1, "error_status": 503}),
    )
    .await;
    assert_eq!(
        post_card(&sb, "d", "x").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let resp = sb
        .http
        .delete(sb.at("/_sandbox/faults/teams"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert_eq!(post_card(&sb, "d", "y").await.0, StatusCode::OK);
    assert_eq!(
        send_mail(&sb, "a@consumer.example").await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "only teams was cleared"
    );

    let resp = sb
        .http
        .delete(sb.at("/_sandbox/faults"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert_eq!(
        send_mail(&sb, "b@consumer.example").await.status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn faults_route_reports_settings_and_injected_counts() {
    let sb = default_sandbox().await;
    set_faults(&sb, "teams", json!({"error_rate": 1, "error_status": 502})).await;
    post_card(&sb, "c1", "x").await;
    post_card(&sb, "c2", "x").await;
    let faults = get_json(&sb, "/_sandbox/faults").await;
    assert_eq!(faults["teams"]["settings"]["error_status"], 502, "{faults}");
    assert_eq!(faults["teams"]["injected"]["errors"], 2, "{faults}");
}

#[tokio::test]
async fn invalid_fault_settings_are_refused_with_400() {
    let sb = default_sandbox().await;
    assert_eq!(
        put_faults(&sb, "sendgrid", json!({"error_rate": 1.5})).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        put_faults(&sb, "sendgrid", json!({"hangup_rate": -0.1})).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send_mail(&sb, "a@consumer.example").await.status(),
        StatusCode::ACCEPTED,
        "a refused setting is not applied"
    );
}

#[tokio::test]
async fn faults_for_an_unknown_upstream_are_404() {
    let sb = default_sandbox().await;
    assert_eq!(
        put_faults(&sb, "paypal", json!({"error_rate": 1})).await,
        StatusCode::NOT_FOUND
    );
}

// ---------------------------------------------------------------------------------------------
// control routes over Amplify

#[tokio::test]
async fn reset_forgets_amplify_resources() {
    let amp = Amplify::start().await;
    amp.product("v1", "p", "recurly").await;
    let resp = amp
        .sb
        .http
        .post(amp.sb.at("/_sandbox/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let token = token_basic(&amp.sb, "billing-bridge-sa", "sa-secret")
        .await
        .expect(200, "token after reset");
    let resp = amp
        .sb
        .http
        .get(amp.apis("/catalog/v1/products"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!([]),
        "no product after reset"
    );
}

#[tokio::test]
async fn auth_fault_spares_the_api_server() {
    let amp = Amplify::start().await;
    set_faults(
        &amp.sb,
        "auth",
        json!({"error_rate": 1, "error_status": 503}),
    )
    .await;
    let resp = token_basic(&amp.sb, "billing-bridge-sa", "sa-secret").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        amp.get("/catalog/v1/products").await.status,
        StatusCode::OK,
        "a token already issued still works"
    );
}

#[tokio::test]
async fn amplify_fault_restricted_to_a_path_spares_other_collections() {
    let amp = Amplify::start().await;
    set_faults(
        &amp.sb,
        "amplify",
        json!({"error_rate": 1, "error_status": 503, "path_contains": "/subscriptions"}),
    )
    .await;
    assert_eq!(amp.get("/catalog/v1/products").await.status, StatusCode::OK);
    let resp = amp.get("/catalog/v1/subscriptions").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.body["errors"].is_array(), "{}", resp.text);
}

#[tokio::test]
async fn amplify_rate_limited_next_gives_three_429_then_normal() {
    let amp = Amplify::start().await;
    set_faults(&amp.sb, "amplify", json!({"rate_limited_next": 3})).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(amp.get("/catalog/v1/products").await.status.as_u16());
    }
    assert_eq!(statuses, [429, 429, 429, 200]);
}

#[tokio::test]
async fn config_replacement_changes_the_accepted_amplify_secret() {
    let amp = Amplify::start_with(SandboxConfig {
        amplify: AmplifySettings {
            client_id: Some("sa".into()),
            client_secret: Some("old-secret".into()),
            requests_per_minute: 0,
            ..AmplifySettings::default()
        },
        ..SandboxConfig::default()
    })
    .await;
    amp.product("v1", "kept", "recurly").await;
    let resp = amp
        .sb
        .http
        .put(amp.sb.at("/_sandbox/config"))
        .json(&json!({"amplify": {"client_id": "sa", "client_secret": "new-secret", "requests_per_minute": 0}}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert_eq!(
        token_basic(&amp.sb, "sa", "old-secret").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        token_basic(&amp.sb, "sa", "new-secret").await.status,
        StatusCode::OK
    );
    let product = amp.get("/catalog/v1/products/kept").await;
    assert_eq!(
        product.status,
        StatusCode::OK,
        "data kept across config change"
    );
}

#[tokio::test]
async fn recorder_files_amplify_requests_under_their_upstream() {
    let amp = Amplify::start().await;
    amp.get("/catalog/v1/products").await;
    let auth = recorded(&amp.sb, "?upstream=auth").await;
    assert_eq!(auth.len(), 1, "the token request: {auth:?}");
    assert_eq!(auth[0]["status"], 200);
    let central = recorded(&amp.sb, "?upstream=amplify").await;
    assert_eq!(central.len(), 1, "{central:?}");
    assert_eq!(central[0]["path"], "/amplify/apis/catalog/v1/products");
    assert_eq!(central[0]["method"], "GET");
    assert_eq!(central[0]["response_body"], json!([]));
}

#[tokio::test]
async fn reset_forgets_traffic_and_deliveries() {
    let amp = Amplify::start().await;
    let resp = amp
        .sb
        .http
        .post(amp.sb.at("/_sandbox/traffic/generate"))
        .json(&json!({"seed": 1, "count": 10, "from": 1_700_000_000_000u64, "to": 1_700_000_100_000u64,
                      "subscriptions": [{"id": "s", "name": "s",
                                         "assetResources": [{"id": "a", "name": "a"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(get_json(&amp.sb, "/_sandbox/traffic").await["stored"], 10);
    amp.sb
        .http
        .post(amp.sb.at("/_sandbox/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(get_json(&amp.sb, "/_sandbox/traffic").await["stored"], 0);
    assert_eq!(get_json(&amp.sb, "/_sandbox/deliveries").await, json!([]));
}
