//! `serve` and `install-hooks`: the production commands.

use std::path::Path;

use anyhow::Context;
use billing_bridge_config::BridgeConfig;
use billing_bridge_pipeline::hooks::{HookSpec, install_hooks as install};
use billing_bridge_pipeline::{Bridge, Pipeline};
use billing_bridge_server::{AppState, WEBHOOK_PATH};
use billing_bridge_upstream::RetryPolicy;
use secrecy::ExposeSecret;

/// Ctrl-C, or SIGTERM from a process manager.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub fn load(config: Option<&Path>) -> anyhow::Result<BridgeConfig> {
    Ok(BridgeConfig::load(config)?)
}

/// Runs the bridge with a loaded configuration (loaded first, so logging follows its
/// `[telemetry]` section).
pub async fn serve(config: BridgeConfig) -> anyhow::Result<()> {
    config.validate()?;
    let listen = config.server.listen.clone();
    let (bridge, channels) = Bridge::build(config, RetryPolicy::default())?;
    let pipeline = Pipeline::start(bridge, channels);
    let bridge = pipeline.bridge.clone();
    let reporting = reporting_line(&bridge.config);
    let (handle, running) =
        billing_bridge_server::start(AppState { bridge, pipeline }, &listen, None)
            .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(url = %handle.url(), webhook = WEBHOOK_PATH, "billing-bridge serving");
    println!(
        "billing-bridge: {} (webhooks at {WEBHOOK_PATH})",
        handle.url()
    );
    // A log line, not stdout: stdout is the one address line that scripts and tests read, and a
    // reader that stops after it must not make a later write fail.
    tracing::info!("{reporting}");
    let server = actix_rt::spawn(running);
    shutdown_signal().await;
    tracing::info!("stopping: finishing requests in flight");
    handle.server.stop(true).await;
    let _ = server.await;
    Ok(())
}

/// One line saying when traffic is reported and where the ledger is kept.
fn reporting_line(config: &BridgeConfig) -> String {
    let r = &config.reporting;
    if !r.enabled {
        return "traffic reporting: off".into();
    }
    let schedule = if r.schedule.trim().is_empty() {
        "on demand only (POST /admin/report)".to_owned()
    } else {
        format!("cron \"{}\" (UTC)", r.schedule.trim())
    };
    let ledger = if config.store.state_file.trim().is_empty() {
        "in memory only: a restart starts afresh".to_owned()
    } else {
        format!("in {}", config.store.state_file.trim())
    };
    format!(
        "traffic reporting: {schedule}, {} windows read {} after they close; ledger {ledger}",
        humantime::format_duration(r.window),
        humantime::format_duration(r.delay)
    )
}

pub async fn install_hooks(config: Option<&Path>, url: &str, name: &str) -> anyhow::Result<()> {
    let config = load(config)?;
    let secret = config
        .webhook
        .secret
        .as_ref()
        .context("webhook.secret is not set (BRIDGE_WEBHOOK__SECRET): Amplify must send it with every event")?
        .expose_secret()
        .to_owned();
    let header = config.webhook.header.clone();
    let webhook_url = format!("{}{WEBHOOK_PATH}", url.trim_end_matches('/'));
    // Only Amplify is needed: the state file stays with a running `serve`.
    let mut config = config;
    config.store.state_file.clear();
    let (bridge, _channels) = Bridge::build(config, RetryPolicy::default())?;
    let done = install(
        &bridge.amplify,
        &HookSpec {
            name,
            url: &webhook_url,
            header: &header,
            secret: &secret,
        },
    )
    .await
    .context("creating the webhook resources in Amplify")?;
    for line in done {
        println!("{line}");
    }
    println!("Amplify now sends plan, quota and subscription events to {webhook_url}");
    Ok(())
}
