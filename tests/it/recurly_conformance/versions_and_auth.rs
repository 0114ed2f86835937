//! The version `Accept` header and Basic-auth API key (reference §1.1) and the error body they
//! produce (§1.3).

use billing_bridge_sandbox::RecurlySettings;
use reqwest::Method;

use super::client::{ACCEPT_V2021, Recurly};

#[tokio::test]
async fn a_request_without_a_version_header_is_refused_with_406_invalid_api_version() {
    let r = Recurly::start().await;
    let reply = r
        .send(r.bare(Method::GET, "/plans").basic_auth(&r.key, Some("")))
        .await;
    let error = reply.expect_error(406, "invalid_api_version");
    // §1.1 and the spec's "Unsupported Versions": the 406 lists the acceptable headers.
    let acceptable = error["acceptable_accept_headers"]
        .as_array()
        .unwrap_or_else(|| panic!("406 lists acceptable_accept_headers: {error}"));
    assert!(
        acceptable.iter().any(|h| h == ACCEPT_V2021),
        "the current version is among the acceptable headers: {error}"
    );
    r.finish().await;
}

#[tokio::test]
async fn an_unsupported_version_or_plain_json_is_refused_with_406() {
    let r = Recurly::start().await;
    for accept in [
        "application/vnd.recurly.v2099-01-01",
        "application/json",
        "application/vnd.recurly.v2021-02-26",
    ] {
        let reply = r
            .send(
                r.bare(Method::GET, "/plans")
                    .basic_auth(&r.key, Some(""))
                    .header("Accept", accept),
            )
            .await;
        assert_eq!(reply.status, 406, "Accept: {accept} → {}", reply.body);
        reply.expect_error(406, "invalid_api_version");
    }
    r.finish().await;
}

#[tokio::test]
async fn both_spellings_of_the_current_version_are_accepted_and_echoed() {
    let r = Recurly::start().await;
    for accept in [ACCEPT_V2021, "application/vnd.recurly.v2021-02-25+json"] {
        let reply = r
            .send(
                r.bare(Method::GET, "/plans")
                    .basic_auth(&r.key, Some(""))
                    .header("Accept", accept),
            )
            .await;
        // §1.1: every answer names the version that served it.
        assert_eq!(
            reply.header("Recurly-Version"),
            Some("recurly.v2021-02-25"),
            "Accept: {accept}"
        );
        reply.expect(200);
    }
    r.finish().await;
}

#[tokio::test]
async fn a_request_without_credentials_is_refused_with_401_unauthorized() {
    let r = Recurly::start().await;
    let reply = r
        .send(r.bare(Method::GET, "/plans").header("Accept", ACCEPT_V2021))
        .await;
    reply.expect_error(401, "unauthorized");
    // An empty key is no key (README: empty credentials are always refused).
    let reply = r
        .send(
            r.bare(Method::GET, "/plans")
                .header("Accept", ACCEPT_V2021)
                .basic_auth("", Some("")),
        )
        .await;
    reply.expect_error(401, "unauthorized");
    r.finish().await;
}

#[tokio::test]
async fn the_configured_key_is_accepted_as_user_name_and_a_wrong_one_is_403_invalid_api_key() {
    let mut r = Recurly::start_with(RecurlySettings {
        api_key: Some("k".into()),
        ..RecurlySettings::default()
    })
    .await;
    r.key = "k".into();
    r.get("/plans").await.expect(200);

    let reply = r
        .send(
            r.bare(Method::GET, "/plans")
                .header("Accept", ACCEPT_V2021)
                .basic_auth("wrong", Some("")),
        )
        .await;
    reply.expect_error(403, "invalid_api_key");
    // The key goes in the user name; as a password it is not the key (§1.1).
    let reply = r
        .send(
            r.bare(Method::GET, "/plans")
                .header("Accept", ACCEPT_V2021)
                .basic_auth("wrong", Some("k")),
        )
        .await;
    reply.expect_error(403, "invalid_api_key");
    r.finish().await;
}

#[tokio::test]
async fn every_answer_carries_the_version_and_a_request_id() {
    // §1.1: `Recurly-Version: recurly.v2021-02-25` and `X-Request-Id` on responses, errors too.
    let r = Recurly::start().await;
    let ok = r.get("/plans").await;
    let missing = r.get("/plans/code-nope").await;
    let invalid = r.post("/accounts", &serde_json::json!({})).await;
    let mut request_ids = Vec::new();
    for reply in [&ok, &missing, &invalid] {
        assert_eq!(
            reply.header("Recurly-Version"),
            Some("recurly.v2021-02-25"),
            "{} → {}",
            reply.request,
            reply.status
        );
        let id = reply.header("X-Request-Id").unwrap_or_default().to_owned();
        assert!(
            !id.is_empty(),
            "{} → {}: X-Request-Id",
            reply.request,
            reply.status
        );
        request_ids.push(id);
    }
    request_ids.sort();
    request_ids.dedup();
    assert_eq!(request_ids.len(), 3, "a request id per request");
    r.finish().await;
}
