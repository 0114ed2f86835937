//! Service-account tokens (§1.2), bearer checks on the API server (§1.3) and the per-client rate
//! limit (§1.4).

use std::time::Duration;

use billing_bridge_sandbox::{AmplifySettings, SandboxConfig};

use super::client::{Amplify, Resp, token_basic, token_form, unlimited};
use crate::support::spawn_sandbox;

fn configured_client() -> SandboxConfig {
    SandboxConfig {
        amplify: AmplifySettings {
            client_id: Some("billing-bridge-sa".into()),
            client_secret: Some("right-secret".into()),
            requests_per_minute: 0,
            ..AmplifySettings::default()
        },
        ..SandboxConfig::default()
    }
}

fn assert_token_answer(resp: Resp, expires_in: u64) {
    let body = resp.expect(200, "token");
    assert!(
        body["access_token"].as_str().is_some_and(|t| !t.is_empty()),
        "§1.2 access_token: {body}"
    );
    assert_eq!(
        body["expires_in"].as_u64(),
        Some(expires_in),
        "§1.2 expires_in: {body}"
    );
    assert!(
        body["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "§1.2 token_type bearer: {body}"
    );
}

#[tokio::test]
async fn token_with_basic_client_credentials_is_issued() {
    let sb = spawn_sandbox(configured_client()).await;
    assert_token_answer(
        token_basic(&sb, "billing-bridge-sa", "right-secret").await,
        1800,
    );
}

#[tokio::test]
async fn token_with_form_client_credentials_is_issued() {
    let sb = spawn_sandbox(configured_client()).await;
    assert_token_answer(
        token_form(&sb, "billing-bridge-sa", "right-secret").await,
        1800,
    );
}

#[tokio::test]
async fn token_lifetime_follows_configuration() {
    let mut config = configured_client();
    config.amplify.token_ttl_secs = 600;
    let sb = spawn_sandbox(config).await;
    assert_token_answer(
        token_basic(&sb, "billing-bridge-sa", "right-secret").await,
        600,
    );
}

#[tokio::test]
async fn token_with_wrong_secret_is_refused_401() {
    let sb = spawn_sandbox(configured_client()).await;
    let resp = token_basic(&sb, "billing-bridge-sa", "wrong-secret").await;
    assert_eq!(resp.status.as_u16(), 401, "{}", resp.text);
    assert!(resp.body["access_token"].is_null());
    let resp = token_form(&sb, "billing-bridge-sa", "wrong-secret").await;
    assert_eq!(resp.status.as_u16(), 401, "{}", resp.text);
}

#[tokio::test]
async fn issued_token_opens_the_api_server() {
    let amp = Amplify::start_with(configured_client()).await;
    let resp = amp.get("/catalog/v1/products").await;
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text);
    assert!(resp.body.is_array(), "{}", resp.text);
}

#[tokio::test]
async fn api_server_refuses_requests_without_bearer_token() {
    let sb = spawn_sandbox(unlimited()).await;
    let resp = sb
        .http
        .get(sb.at("/amplify/apis/catalog/v1/products"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn api_server_refuses_a_token_it_did_not_issue() {
    let sb = spawn_sandbox(unlimited()).await;
    let resp = sb
        .http
        .get(sb.at("/amplify/apis/catalog/v1/products"))
        .bearer_auth("eyJhbGciOiJSUzI1NiJ9.forged.token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn expired_token_is_refused_401() {
    let mut config = unlimited();
    config.amplify.token_ttl_secs = 1;
    let amp = Amplify::start_with(config).await;
    assert_eq!(
        amp.get("/catalog/v1/products").await.status.as_u16(),
        200,
        "fresh token works"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let resp = amp.get("/catalog/v1/products").await;
    assert_eq!(
        resp.status.as_u16(),
        401,
        "§1.2 token expired after expires_in: {}",
        resp.text
    );
}

#[tokio::test]
async fn sixth_request_in_a_minute_is_rate_limited_429() {
    let mut config = unlimited();
    config.amplify.requests_per_minute = 5;
    let amp = Amplify::start_with(config).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(amp.get("/catalog/v1/products").await.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429],
        "§1.4 per-client limit"
    );
}

#[tokio::test]
async fn rate_limit_is_counted_per_client() {
    let mut config = unlimited();
    config.amplify.requests_per_minute = 2;
    let amp = Amplify::start_with(config).await;
    for _ in 0..2 {
        assert_eq!(amp.get("/catalog/v1/products").await.status.as_u16(), 200);
    }
    assert_eq!(amp.get("/catalog/v1/products").await.status.as_u16(), 429);

    let other = token_basic(&amp.sb, "another-client", "its-secret")
        .await
        .expect(200, "token for a second client");
    let resp = amp
        .sb
        .http
        .get(amp.sb.at("/amplify/apis/catalog/v1/products"))
        .bearer_auth(other["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "§1.4 the limit is per client");
}

#[tokio::test]
async fn token_request_without_client_credentials_grant_is_400() {
    let sb = spawn_sandbox(configured_client()).await;
    let resp = sb
        .http
        .post(sb.at(super::client::TOKEN_PATH))
        .basic_auth("billing-bridge-sa", Some("right-secret"))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        400,
        "README: unsupported_grant_type"
    );
    let resp = sb
        .http
        .post(sb.at(super::client::TOKEN_PATH))
        .basic_auth("billing-bridge-sa", Some("right-secret"))
        .form(&[("scope", "email")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400, "README: invalid_request");
}

#[tokio::test]
async fn unauthorized_api_answers_use_the_central_error_body() {
    let sb = spawn_sandbox(unlimited()).await;
    let resp = sb
        .http
        .get(sb.at("/amplify/apis/catalog/v1/products"))
        .send()
        .await
        .unwrap();
    let resp = Resp::from(resp).await;
    super::client::assert_central_error(&resp, 401);
}

#[tokio::test]
async fn platform_requests_count_against_the_same_limit() {
    let mut config = unlimited();
    config.amplify.requests_per_minute = 2;
    let amp = Amplify::start_with(config).await;
    assert_eq!(amp.get("/catalog/v1/products").await.status.as_u16(), 200);
    let platform = amp
        .send(amp.sb.http.get(amp.sb.at("/platform/api/v1/user/nobody")))
        .await;
    assert_eq!(platform.status.as_u16(), 404, "{}", platform.text);
    assert_eq!(
        amp.get("/catalog/v1/products").await.status.as_u16(),
        429,
        "§1.4 one budget for all listed Amplify APIs"
    );
}

#[tokio::test]
async fn tenant_header_is_not_required_with_a_service_account_token() {
    let amp = Amplify::start().await;
    let resp = amp
        .sb
        .http
        .get(amp.apis("/catalog/v1/products"))
        .bearer_auth(&amp.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "§1.3 X-Axway-Tenant-Id optional"
    );
}
