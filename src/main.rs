//! The `billing-bridge` command line.

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
    /// Runs the local emulator of Amplify, Traceability, Recurly, Teams and SendGrid.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// A JSON file with the sandbox configuration (credentials, limits, recorder).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Sandbox { listen, config } => run_sandbox(&listen, config.as_deref()).await,
        }
    })
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
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
