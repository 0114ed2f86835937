//! Shared test plumbing: a sandbox on a free loopback port and an HTTP client for it.

#![allow(dead_code)]

use billing_bridge_sandbox::{SandboxConfig, SandboxHandle};

pub struct TestSandbox {
    pub handle: SandboxHandle,
    /// Base URL such as `http://127.0.0.1:41234`; upstream prefixes go after it.
    pub url: String,
    pub http: reqwest::Client,
}

impl TestSandbox {
    /// `url` + `path`, e.g. `sb.at("/recurly/plans")`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }
}

/// Starts a sandbox with `config` (one worker thread, so many tests can run side by side).
pub async fn spawn_sandbox(mut config: SandboxConfig) -> TestSandbox {
    config.workers.get_or_insert(1);
    let handle = billing_bridge_sandbox::start(config, "127.0.0.1:0")
        .await
        .expect("sandbox starts on a free loopback port");
    let url = handle.url();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("http client");
    TestSandbox { handle, url, http }
}

/// A sandbox with the default configuration.
pub async fn default_sandbox() -> TestSandbox {
    spawn_sandbox(SandboxConfig::default()).await
}

/// Polls `check` until it yields `Some`, for at most `timeout`; panics naming `what` otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub const WEBHOOK_SECRET: &str = "Bearer test-webhook-secret";
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const TEAMS_CHANNEL: &str = "/teams/webhookb2/provider-channel";

/// A sandbox whose Amplify limit leaves room for a test's bursts (the bridge still paces itself).
pub async fn bridge_sandbox() -> TestSandbox {
    spawn_sandbox(SandboxConfig {
        amplify: billing_bridge_sandbox::AmplifySettings {
            requests_per_minute: 0,
            ..Default::default()
        },
        ..SandboxConfig::default()
    })
    .await
}

/// A running bridge (pipeline and HTTP server on 127.0.0.1:0) whose upstreams are `sb`.
pub struct TestBridge {
    pub url: String,
    pub bridge: std::sync::Arc<billing_bridge_pipeline::Bridge>,
    pub server: billing_bridge_server::ServerHandle,
}

impl TestBridge {
    pub fn webhook_url(&self) -> String {
        format!("{}{}", self.url, billing_bridge_server::WEBHOOK_PATH)
    }
}

/// The bridge configuration pointing at `sb`, with `overrides` (TOML) on top.
pub fn bridge_config(sb: &TestSandbox, overrides: &str) -> billing_bridge_config::BridgeConfig {
    let base = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_token = "{ADMIN_TOKEN}"
        [webhook]
        secret = "{WEBHOOK_SECRET}"
        [amplify]
        central_url = "{sb}/amplify"
        auth_url = "{sb}/auth"
        platform_url = "{sb}/platform"
        client_id = "bridge"
        client_secret = "bridge-secret"
        requests_per_minute = 600
        timeout = "5s"
        [recurly]
        base_url = "{sb}/recurly"
        api_key = "recurly-test-key"
        site = "sandbox"
        requests_per_minute = 400
        timeout = "5s"
        [provisioning]
        marketplace_url = "https://marketplace.example"
        reconcile_every = "1h"
        [notify.teams]
        webhook_url = "{sb}{TEAMS_CHANNEL}"
        [notify.mail]
        backend = "sendgrid"
        from = "billing@market.example"
        [notify.mail.sendgrid]
        api_key = "SG.test"
        base_url = "{sb}/sendgrid"
        [store]
        state_file = ""
        [reporting]
        schedule = ""
        "#,
        sb = sb.url
    );
    billing_bridge_config::BridgeConfig::from_toml_layers(&[&base, overrides])
        .expect("test bridge config")
}

/// Starts the bridge; call inside an actix system (`#[actix_rt::test]`).
pub async fn spawn_bridge(sb: &TestSandbox, overrides: &str) -> TestBridge {
    let config = bridge_config(sb, overrides);
    let retry = billing_bridge_upstream::RetryPolicy::new(
        6,
        std::time::Duration::from_millis(5),
        std::time::Duration::from_millis(200),
    );
    let (bridge, channels) =
        billing_bridge_pipeline::Bridge::build(config, retry).expect("bridge builds");
    let pipeline = billing_bridge_pipeline::Pipeline::start(bridge, channels);
    let bridge = pipeline.bridge.clone();
    let (server, running) = billing_bridge_server::start(
        billing_bridge_server::AppState {
            bridge: bridge.clone(),
            pipeline,
        },
        "127.0.0.1:0",
        Some(1),
    )
    .expect("bridge server binds");
    actix_rt::spawn(running);
    TestBridge {
        url: server.url(),
        bridge,
        server,
    }
}

/// An Amplify access token from the sandbox, for setting up resources as a provider would.
pub async fn amplify_token(sb: &TestSandbox) -> String {
    let answer: serde_json::Value = sb
        .http
        .post(sb.at("/auth/realms/Broker/protocol/openid-connect/token"))
        .basic_auth("provider", Some("provider-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token answer");
    answer["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}
