//! Rate limits (reference §1.4), idempotent replays (§1.5) and the sandbox's injected faults,
//! which must look like Recurly's own answers (README "Fault settings", reference §1.3).

use billing_bridge_sandbox::{RecurlyMode, RecurlySettings};
use reqwest::Method;
use serde_json::json;

use super::client::{Recurly, Reply, list_data};

/// The rate-limit headers of a reply (§1.4), as numbers.
#[track_caller]
fn rate_headers(reply: &Reply) -> (u64, u64, u64) {
    let number = |name: &str| {
        reply
            .header(name)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{} {}: header {name} missing or not a number: {:?}",
                    reply.request, reply.status, reply.headers
                )
            })
    };
    (
        number("X-RateLimit-Limit"),
        number("X-RateLimit-Remaining"),
        number("X-RateLimit-Reset"),
    )
}

fn now_epoch() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

#[tokio::test]
async fn the_limit_allows_five_minutes_worth_of_requests_then_answers_429_rate_limited() {
    // §1.4: the per-minute figure counts over a sliding 5-minute window, so N per minute allows
    // 5N requests in a burst and refuses the next one.
    const PER_MINUTE: u64 = 3;
    let budget = PER_MINUTE * 5;
    let r = Recurly::start_with(RecurlySettings {
        requests_per_minute: Some(PER_MINUTE as u32),
        ..RecurlySettings::default()
    })
    .await;
    let started = now_epoch();
    let mut last_remaining = None;
    for n in 1..=budget {
        // Sandbox mode: every method counts.
        let reply = if n % 3 == 0 {
            r.post("/accounts", &json!({"code": format!("c{n}")})).await
        } else {
            r.get("/plans").await
        };
        assert!(
            reply.status < 400,
            "request {n} of {budget} is within the limit: {} {}",
            reply.status,
            reply.body
        );
        let (limit, remaining, reset) = rate_headers(&reply);
        assert_eq!(limit, budget, "X-RateLimit-Limit is the 5-minute budget");
        assert_eq!(remaining, budget - n, "X-RateLimit-Remaining after {n}");
        if let Some(before) = last_remaining {
            assert!(remaining < before, "Remaining decreases");
        }
        last_remaining = Some(remaining);
        assert!(
            reset >= started && reset <= started + 5 * 60 + 5,
            "X-RateLimit-Reset {reset} is epoch seconds within the window (now {started})"
        );
    }
    let refused = r.get("/plans").await;
    let (limit, remaining, reset) = rate_headers(&refused);
    assert_eq!((limit, remaining), (budget, 0), "headers on the 429");
    assert!(reset >= started, "Reset on the 429 lies ahead");
    refused.expect_error(429, "rate_limited");
    let refused_post = r.post("/accounts", &json!({"code": "late"})).await;
    refused_post.expect_error(429, "rate_limited");
    r.get("/accounts/code-late")
        .await
        .expect_error(429, "rate_limited");
    r.finish().await;
}

#[tokio::test]
async fn in_production_mode_writes_are_not_limited_but_gets_are() {
    // §1.4: production sites count only GET requests.
    const PER_MINUTE: u64 = 1;
    let budget = PER_MINUTE * 5;
    let r = Recurly::start_with(RecurlySettings {
        mode: RecurlyMode::Production,
        requests_per_minute: Some(PER_MINUTE as u32),
        ..RecurlySettings::default()
    })
    .await;
    for n in 0..budget * 2 {
        r.post("/accounts", &json!({"code": format!("c{n}")}))
            .await
            .expect(201);
    }
    for n in 1..=budget {
        let reply = r.get(&format!("/accounts/code-c{n}")).await;
        let (limit, remaining, _) = rate_headers(&reply);
        assert_eq!((limit, remaining), (budget, budget - n));
        reply.expect(200);
    }
    r.get("/accounts").await.expect_error(429, "rate_limited");
    // Writes still go through once GETs are exhausted.
    r.post("/accounts", &json!({"code": "after"}))
        .await
        .expect(201);
    r.finish().await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_replays_the_first_answer_without_a_second_object() {
    // §1.5: `Idempotency-Key` on POST; the replay carries `Idempotency-Prior: true`.
    let r = Recurly::start().await;
    let body = json!({"code": "consumer-1", "email": "one@consumer.example"});
    let send = || {
        r.send(
            r.request(Method::POST, "/accounts")
                .header("Idempotency-Key", "acct:consumer-1")
                .json(&body),
        )
    };
    let first = send().await;
    let second = send().await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_ne!(first.header("Idempotency-Prior"), Some("true"));
    assert_eq!(second.status, first.status);
    assert_eq!(second.body, first.body, "the replay is the same answer");
    assert_eq!(second.header("Idempotency-Prior"), Some("true"));
    let list = r.get("/accounts").await.expect(200);
    assert_eq!(list_data(&list).len(), 1, "one account: {list}");

    // Without the key, the same body is a second attempt and a duplicate (§4: 422).
    r.post("/accounts", &body)
        .await
        .expect_error(422, "validation");
    // A different key is a different operation.
    let other = r
        .send(
            r.request(Method::POST, "/accounts")
                .header("Idempotency-Key", "acct:consumer-2")
                .json(&json!({"code": "consumer-2"})),
        )
        .await;
    assert_ne!(other.header("Idempotency-Prior"), Some("true"));
    other.expect(201);
    r.finish().await;
}

#[tokio::test]
async fn an_injected_500_carries_recurlys_error_body() {
    let r = Recurly::start().await;
    r.inject_faults(json!({"error_rate": 1.0, "error_status": 500}))
        .await;
    // §1.3: 500 is `internal_server_error`.
    r.get("/plans")
        .await
        .expect_error(500, "internal_server_error");
    r.post("/accounts", &json!({"code": "consumer-1"}))
        .await
        .expect_error(500, "internal_server_error");
    let cleared =
        r.sb.http
            .delete(r.sb.at("/_sandbox/faults/recurly"))
            .send()
            .await
            .unwrap();
    assert!(cleared.status().is_success());
    let list = r.get("/accounts").await.expect(200);
    assert!(
        list_data(&list).is_empty(),
        "the failed POST created nothing: {list}"
    );
    r.finish().await;
}

#[tokio::test]
async fn rate_limited_next_gives_two_429s_then_success() {
    let r = Recurly::start().await;
    r.inject_faults(json!({"rate_limited_next": 2})).await;
    for n in 1..=2 {
        let reply = r.get("/plans").await;
        assert_eq!(reply.status, 429, "injected 429 #{n}: {}", reply.body);
        // §1.4: a throttled answer tells when to come back.
        rate_headers(&reply);
        reply.expect_error(429, "rate_limited");
    }
    r.get("/plans").await.expect(200);
    r.finish().await;
}

#[tokio::test]
async fn every_answer_carries_rate_limit_headers_of_the_sandbox_site() {
    // §1.4: sandbox sites get 400/min over a sliding 5 minutes, a budget of 2,000 (the Go
    // client's fixture shows `X-RateLimit-Limit: 2000`); the headers come with every answer,
    // errors included.
    let r = Recurly::start().await;
    let replies = [
        r.get("/plans").await,
        r.post("/accounts", &json!({"code": "consumer-1"})).await,
        r.get("/accounts/code-nobody").await,
        r.post("/accounts", &json!({"code": "consumer-1"})).await,
    ];
    let started = now_epoch();
    for (n, reply) in replies.iter().enumerate() {
        let (limit, remaining, reset) = rate_headers(reply);
        assert_eq!(limit, 2000, "{} → {}", reply.request, reply.status);
        assert_eq!(
            remaining,
            2000 - 1 - n as u64,
            "{} → {}",
            reply.request,
            reply.status
        );
        assert!(
            reset + 5 >= started && reset <= started + 305,
            "reset {reset}"
        );
    }
    r.finish().await;
}

#[tokio::test]
async fn an_idempotent_cancel_replays_instead_of_failing_the_second_time() {
    // §1.5: `Idempotency-Key` covers PUT too; without it a second cancel is a 422 (§5).
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let path = format!("/subscriptions/{}/cancel", sub["id"].as_str().unwrap());
    let cancel = || {
        r.send(
            r.request(Method::PUT, &path)
                .header("Idempotency-Key", "cancel:consumer-1:gold")
                .json(&json!({"timeframe": "term_end"})),
        )
    };
    let first = cancel().await;
    let second = cancel().await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(second.status, 200, "the replay, not a 422: {}", second.body);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("Idempotency-Prior"), Some("true"));
    r.finish().await;
}

#[tokio::test]
async fn an_injected_503_is_a_bare_gateway_error() {
    // §1.3: 502/503/504 carry no error type, status only; the contract check accepts no body or
    // a Recurly error body here.
    let r = Recurly::start().await;
    r.inject_faults(json!({"error_rate": 1.0, "error_status": 503}))
        .await;
    let reply = r.get("/plans").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    r.finish().await;
}
