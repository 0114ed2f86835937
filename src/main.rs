//! The `billing-bridge` command line: parses arguments, loads configuration and wires the crates
//! together; the behaviour lives in the crates.

mod check;
mod demo;
mod report;
mod serve;
mod telemetry;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "billing-bridge",
    version,
    about = "Bills API usage from Axway Amplify Engage in Recurly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the bridge: webhook intake, plan and subscription provisioning, reconciliation.
    Serve {
        /// Configuration file (TOML) over the built-in defaults; BRIDGE_* variables override both.
        #[arg(long, env = "BRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Runs the sandbox and the bridge in one process, seeds a catalog, runs every flow once and
    /// prints what happened.
    Demo {
        /// Keep both serving after the run, so they can be explored.
        #[arg(long)]
        keep_running: bool,
    },
    /// Validates the configuration and reaches every upstream; prints a table.
    Check {
        #[arg(long, env = "BRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Creates the Amplify Integration, Secret, Webhook and ResourceHook that send plan, quota and
    /// subscription events to this bridge.
    InstallHooks {
        #[arg(long, env = "BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// The bridge's public base URL, as Amplify will reach it (https, public CA).
        #[arg(long)]
        url: String,
        /// Name of the Integration (its Secret, Webhook and ResourceHook are named after it).
        #[arg(long, default_value = "billing-bridge")]
        name: String,
    },
    /// Reports traffic to Recurly now: the windows due (as a scheduled run would), or every
    /// window of a range (a backfill; already reported windows only get late traffic).
    Report {
        #[arg(long, env = "BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// Start of the range: RFC 3339 (2026-11-01T00:00:00Z) or epoch milliseconds.
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// End of the range (exclusive).
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// Print what would be reported, unmatched traffic included; send and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints the default configuration, every setting commented.
    Config,
    /// Runs the local emulator of Amplify, Traceability, Recurly, Teams and SendGrid.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// A JSON file with the sandbox configuration (credentials, limits, recorder).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own story; keep the library logs to warnings there unless asked.
    let default_filter = if matches!(
        cli.command,
        Command::Demo { .. } | Command::Check { .. } | Command::InstallHooks { .. }
    ) {
        "warn"
    } else {
        "info"
    };
    // `serve` reads its `[telemetry]` section (log format, trace export) before anything logs.
    let (served, telemetry) = match &cli.command {
        Command::Serve { config } => {
            let loaded = serve::load(config.as_deref())?;
            let telemetry = telemetry::init(Some(&loaded.telemetry), default_filter)?;
            (Some(loaded), telemetry)
        }
        _ => (None, telemetry::init(None, default_filter)?),
    };
    // The actors need an actix system; the sandbox and clients run on its tokio runtime.
    let result = actix_rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve { .. } => {
                serve::serve(served.context("serve's configuration is loaded first")?).await
            }
            Command::Demo { keep_running } => demo::run(keep_running).await,
            Command::Check { config } => check::run(config.as_deref()).await,
            Command::InstallHooks { config, url, name } => {
                serve::install_hooks(config.as_deref(), &url, &name).await
            }
            Command::Report {
                config,
                from,
                to,
                dry_run,
                json,
            } => {
                let code = report::run_report(report::Options {
                    config: config.as_deref(),
                    from: from.as_deref(),
                    to: to.as_deref(),
                    dry_run,
                    json,
                })
                .await?;
                if code != 0 {
                    std::process::exit(code);
                }
                Ok(())
            }
            Command::Config => {
                print!("{}", billing_bridge_config::DEFAULT_CONFIG);
                Ok(())
            }
            Command::Sandbox { listen, config } => run_sandbox(&listen, config.as_deref()).await,
        }
    });
    telemetry.shutdown();
    result
}

async fn run_sandbox(listen: &str, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading sandbox config {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing sandbox config {}", path.display()))?
        }
        None => billing_bridge_sandbox::SandboxConfig::default(),
    };
    let handle = billing_bridge_sandbox::start(config, listen)
        .await
        .with_context(|| format!("starting the sandbox on {listen}"))?;
    println!("sandbox: {}", handle.url());
    tokio::select! {
        result = handle.wait() => result.context("sandbox server failed"),
        _ = serve::shutdown_signal() => Ok(()),
    }
}
