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
    pub app: billing_bridge_server::Application,
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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let app = billing_bridge_server::Application::start(
        config,
        listener,
        billing_bridge_server::Options {
            retry,
            workers: Some(1),
        },
    )
    .expect("the bridge starts");
    TestBridge {
        url: app.url(),
        bridge: app.bridge().clone(),
        app,
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

/// Whether `program` can be run (`program -v`): a tool a test starts itself. Missing, the test
/// fails under CI (`.ci/run` installs it) and is skipped elsewhere.
pub fn installed(program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("-v")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}

/// A `redis-server` of the test's own, persistence on (appendfsync always), killed on drop. It
/// listens on a unix socket in a directory of its own and on no TCP port (`--port 0`), so no
/// port is ever picked for it; the store reaches it at `redis+unix://`. `start` answers `None`
/// (skipped) where redis-server is not installed, except under CI.
pub struct Redis {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
}

impl Redis {
    pub async fn start() -> Option<Redis> {
        if !installed("redis-server") {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("bb-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Redis { child: None, dir };
        redis.spawn().await;
        Some(redis)
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.join("redis.sock")
    }

    /// Starts the server (again) on the same socket and data directory; returns once it answers.
    pub async fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let socket = self.socket();
        wait_for(
            "redis listening",
            std::time::Duration::from_secs(10),
            || {
                let ready = std::os::unix::net::UnixStream::connect(&socket).is_ok();
                async move { ready.then_some(()) }
            },
        )
        .await;
    }

    /// SIGKILL; the data directory stays for `spawn`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL, then a new server on the same socket and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sum of the samples of metric `name` whose labels include `labels` (e.g. `reason="x"`).
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest),
                None => (series, ""),
            };
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |sum, value| sum + value)
}

/// A bridge's `/metrics` text.
pub async fn metrics_at(sb: &TestSandbox, bridge_url: &str) -> String {
    sb.http
        .get(format!("{bridge_url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}
