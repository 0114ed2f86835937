//! `serve` and `install-hooks`: the production commands.

use std::path::Path;

use anyhow::Context;
use billing_bridge_config::BridgeConfig;
use billing_bridge_pipeline::Bridge;
use billing_bridge_pipeline::hooks::{HookSpec, install_hooks as install};
use billing_bridge_server::{Application, Options, WEBHOOK_PATH};
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
    let no_tenant = config
        .amplify
        .tenant_id
        .as_deref()
        .is_none_or(|t| t.trim().is_empty());
    let reporting = reporting_line(&config);
    let listener = std::net::TcpListener::bind(listen.as_str())
        .with_context(|| format!("listening on {listen}"))?;
    let app = Application::start(config, listener, Options::default())?;
    tracing::info!(url = %app.url(), webhook = WEBHOOK_PATH, "billing-bridge serving");
    // The bound address (`listen = "127.0.0.1:0"` picks a free port): the line scripts and tests
    // read to find the bridge.
    println!("billing-bridge: {} (webhooks at {WEBHOOK_PATH})", app.url());
    // A log line, not stdout: stdout is the one address line that scripts and tests read, and a
    // reader that stops after it must not make a later write fail.
    tracing::info!("{reporting}");
    if no_tenant {
        tracing::warn!(
            "amplify.tenant_id is not set: webhooks of every organization are looked at (each is still re-read from Amplify before anything is done); set it to the provider organization's id to ignore the others"
        );
    }
    shutdown_signal().await;
    tracing::info!("stopping: finishing requests in flight");
    app.stop(true).await;
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
    println!(
        "and keeps them 7 days in a WatchTopic: set [intake] watch_topic = \"{}\" (BRIDGE_INTAKE__WATCH_TOPIC) so serve reads what it missed while down",
        billing_bridge_pipeline::hooks::watch_topic_name(name)
    );
    Ok(())
}
