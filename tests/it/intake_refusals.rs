//! Webhook intake refusals end to end: wrong or missing secret, oversized, malformed or
//! non-envelope bodies and a full queue are refused with a status and a message that says what
//! is wrong, and change nothing; plus health, readiness and the intake metrics.

use billing_bridge_contract::ExchangePolicy;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::provisioning::{
    Provider, WAIT, cards, delivered_envelope, hooks_elsewhere, metrics, paid_plan_spec, plan_code,
    post_webhook, priced_quotas, recurly, sandbox_json, startup_pass_done,
};
use crate::recurly_conformance::client::assert_recurly_traffic_conforms;
use crate::support::{TestBridge, WEBHOOK_SECRET, bridge_sandbox, spawn_bridge, wait_for};

const LIMIT: usize = 4096;

fn activation_of(event: &Value, plan: &str) -> bool {
    event["payload"]["kind"] == "ProductPlan"
        && event["payload"]["name"] == plan
        && event["metadata"]["subresource"] == "state"
}

/// Sends `head` (request line and headers, without the blank line) and `body` over a fresh
/// connection, exactly as given; answers the status and the JSON body.
async fn raw_post(bridge: &TestBridge, head: &str, body: &[u8]) -> (u16, Value) {
    raw_exchange(bridge, head, body, false).await
}

/// `raw_post`, optionally closing the sending side after the body (the body then ends early).
async fn raw_exchange(
    bridge: &TestBridge,
    head: &str,
    body: &[u8],
    close_after_body: bool,
) -> (u16, Value) {
    let addr = bridge.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nHost: {addr}\r\nAuthorization: {WEBHOOK_SECRET}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The server may answer and close before reading everything; that is its right.
    let _ = stream.write_all(body).await;
    if close_after_body {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    let json = answer
        .split_once("\r\n\r\n")
        // Only the first answer: bytes past a short Content-Length read as another request.
        .and_then(|(_, body)| {
            serde_json::Deserializer::from_str(body)
                .into_iter::<Value>()
                .next()?
                .ok()
        })
        .unwrap_or(Value::Null);
    (status, json)
}

fn error_of(body: &Value) -> String {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("a JSON {{\"error\": …}} body: {body}"))
        .to_owned()
}

/// The value of `billing_bridge_webhooks_received_total{outcome="…"}`, 0 when absent.
fn received(metrics: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("billing_bridge_webhooks_received_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn refused_webhooks_say_why_and_change_nothing_and_metrics_count_them() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &format!("[server]\nmax_body_bytes = {LIMIT}\n")).await;
    startup_pass_done(&sb, &bridge).await;
    hooks_elsewhere(&bridge, &sb).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    provider.activate("silver").await;
    let event = delivered_envelope(&sb, |e| activation_of(e, "silver")).await;
    let text = event.to_string();
    assert!(text.len() < LIMIT, "the real envelope fits: {}", text.len());

    let mut expect_unauthorized = 0;
    for secret in [Some("Bearer wrong-secret"), Some(""), None] {
        let (status, _, body) = post_webhook(&sb, &bridge, secret, text.clone()).await;
        assert_eq!(status, 401, "secret {secret:?}: {body}");
        assert!(error_of(&body).contains("Authorization"), "{body}");
        assert!(!body.to_string().contains("test-webhook-secret"), "{body}");
        expect_unauthorized += 1;
    }
    // The right secret in another header is still missing from the configured one.
    let response = sb
        .http
        .post(bridge.webhook_url())
        .header("X-Secret", WEBHOOK_SECRET)
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    expect_unauthorized += 1;

    let mut oversized = event.clone();
    oversized["payload"]["padding"] = json!("x".repeat(LIMIT + 1000));
    let oversized = oversized.to_string();
    let mut expect_too_large = 0;
    let (status, _, body) =
        post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), oversized.clone()).await;
    assert_eq!(status, 413, "{body}");
    assert!(error_of(&body).contains(&LIMIT.to_string()), "{body}");
    expect_too_large += 1;
    // No Content-Length: the body arrives in chunks and is cut off at the limit.
    let chunked: String = oversized
        .as_bytes()
        .chunks(1000)
        .map(|c| format!("{:x}\r\n{}\r\n", c.len(), String::from_utf8_lossy(c)))
        .chain(["0\r\n\r\n".to_owned()])
        .collect();
    let (status, body) = raw_post(
        &bridge,
        "POST /webhooks/amplify HTTP/1.1\r\nTransfer-Encoding: chunked",
        chunked.as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "chunked: {body}");
    assert!(error_of(&body).contains("limit"), "{body}");
    expect_too_large += 1;
    // A Content-Length over the limit is refused before the body is read.
    let (status, body) = raw_post(
        &bridge,
        &format!(
            "POST /webhooks/amplify HTTP/1.1\r\nContent-Length: {}",
            LIMIT * 10
        ),
        text.as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "announced too large: {body}");
    expect_too_large += 1;

    let mut expect_malformed = 0;
    // A Content-Length shorter than the body: only what it announces is read, which is not JSON.
    let (status, body) = raw_post(
        &bridge,
        &format!(
            "POST /webhooks/amplify HTTP/1.1\r\nContent-Length: {}",
            text.len() / 2
        ),
        text.as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "short Content-Length: {body}");
    error_of(&body);
    expect_malformed += 1;
    // A Content-Length longer than the body, which then ends: the body cannot be read whole.
    let (status, body) = raw_exchange(
        &bridge,
        &format!(
            "POST /webhooks/amplify HTTP/1.1\r\nContent-Length: {}",
            text.len() + 100
        ),
        text.as_bytes(),
        true,
    )
    .await;
    assert_eq!(status, 400, "long Content-Length: {body}");
    error_of(&body);
    expect_malformed += 1;
    let mut without_type = event.clone();
    without_type.as_object_mut().unwrap().remove("type");
    let mut path_trick = event.clone();
    path_trick["payload"]["name"] = json!("../../management/v1/integrations");
    let mut empty_id = event.clone();
    empty_id["id"] = json!("");
    let mut without_payload = event.clone();
    without_payload.as_object_mut().unwrap().remove("payload");
    let mut text_payload = event.clone();
    text_payload["payload"] = json!("silver");
    for (what, body, mentions) in [
        ("truncated JSON", text[..text.len() / 2].to_owned(), "EOF"),
        ("not JSON", "type=ResourceUpdated".to_owned(), "expected"),
        ("a JSON array", "[1, 2, 3]".to_owned(), "Amplify webhook"),
        ("no type", without_type.to_string(), "type"),
        (
            "a resource name that is a path",
            path_trick.to_string(),
            "not an Amplify name",
        ),
        ("an empty id", empty_id.to_string(), "id"),
        ("no payload", without_payload.to_string(), "payload"),
        (
            "a payload that is not a resource",
            text_payload.to_string(),
            "payload",
        ),
    ] {
        let (status, _, answer) = post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        let error = error_of(&answer);
        assert!(error.contains(mentions), "{what}: {error}");
        expect_malformed += 1;
    }

    // Nothing of the refused requests happened.
    let recurly_calls = sandbox_json(&sb, "/_sandbox/requests?upstream=recurly").await;
    assert_eq!(recurly_calls, json!([]), "no Recurly call");
    assert!(cards(&sb).await.is_empty());
    let plan = provider.get("/catalog/v1/productplans/silver").await;
    assert!(plan["attributes"].get("recurlyPlanCode").is_none());

    // The event id was not marked: the same event sent correctly is accepted, then a duplicate.
    let (status, _, body) = post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), text.clone()).await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("accepted")),
        "{body}"
    );
    let (status, _, body) = post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), text.clone()).await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("duplicate")),
        "{body}"
    );
    wait_for("the Recurly plan", WAIT, || async {
        (recurly(&sb, &format!("/plans/code-{code}")).await.0 == 200).then_some(())
    })
    .await;

    // An event about a resource the bridge does not provision is acknowledged and ignored.
    let mut product_event = event.clone();
    product_event["id"] = json!("a-product-event");
    product_event["payload"] = provider.get("/catalog/v1/products/weather").await;
    let (status, _, body) = post_webhook(
        &sb,
        &bridge,
        Some(WEBHOOK_SECRET),
        product_event.to_string(),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("ignored")),
        "{body}"
    );

    for path in ["/healthz", "/readyz"] {
        let response = sb
            .http
            .get(format!("{}{path}", bridge.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let text = metrics(&sb, &bridge).await;
    for (outcome, count) in [
        ("unauthorized", expect_unauthorized),
        ("too_large", expect_too_large),
        ("malformed", expect_malformed),
        ("accepted", 1),
        ("duplicate", 1),
        ("busy", 0),
        ("ignored", 1),
    ] {
        assert_eq!(received(&text, outcome), count, "{outcome}:\n{text}");
    }
    for secret in [
        "test-webhook-secret",
        "bridge-secret",
        "recurly-test-key",
        "SG.test",
    ] {
        assert!(!text.contains(secret), "metrics show a secret:\n{text}");
    }
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn a_full_queue_answers_503_with_retry_after_and_the_event_is_accepted_later() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "[server]\nqueue_capacity = 1\n").await;
    startup_pass_done(&sb, &bridge).await;
    hooks_elsewhere(&bridge, &sb).await;
    let provider = Provider::new(&sb).await;
    provider.catalog("silver").await;
    let gold = provider
        .plan("gold", "Gold", "weather", paid_plan_spec("weather"))
        .await;
    for (quota, pricing) in priced_quotas() {
        provider.quota("gold", quota, pricing).await;
    }
    provider.activate("silver").await;
    provider.activate("gold").await;
    let silver = delivered_envelope(&sb, |e| activation_of(e, "silver"))
        .await
        .to_string();
    let gold_event = delivered_envelope(&sb, |e| activation_of(e, "gold"))
        .await
        .to_string();

    // Amplify answers slowly, so the first event stays with its provisioner (and in the queue's
    // count) while the second arrives.
    let response = sb
        .http
        .put(sb.at("/_sandbox/faults/amplify"))
        .json(&json!({"latency_ms": 1500}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, _, body) = post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), silver).await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("accepted")),
        "{body}"
    );
    let (status, retry_after, body) =
        post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), gold_event.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        retry_after.is_some_and(|s| s.parse::<u32>().is_ok_and(|s| s > 0)),
        "Retry-After in seconds"
    );
    assert!(error_of(&body).contains("full"), "{body}");
    sb.http
        .delete(sb.at("/_sandbox/faults/amplify"))
        .send()
        .await
        .unwrap();

    // Refused means not taken: sent again once there is room, it is accepted and provisioned.
    let gold_code = plan_code(&gold);
    let mut accepted = false;
    let deadline = std::time::Instant::now() + WAIT;
    while !accepted && std::time::Instant::now() < deadline {
        let (status, _, body) =
            post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), gold_event.clone()).await;
        assert_ne!(body["status"], "duplicate", "{body}");
        accepted = status == 202 && body["status"] == "accepted";
        if !accepted {
            assert_eq!(status, 503, "{body}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert!(accepted, "the event is accepted once the queue has room");
    wait_for("the gold plan in Recurly", WAIT, || async {
        (recurly(&sb, &format!("/plans/code-{gold_code}")).await.0 == 200).then_some(())
    })
    .await;
    let text = metrics(&sb, &bridge).await;
    assert!(received(&text, "busy") >= 1, "{text}");
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}
