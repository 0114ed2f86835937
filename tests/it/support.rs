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
