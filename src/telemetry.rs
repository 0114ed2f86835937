//! Logs and traces for the process: a text or JSON log layer on stderr, and, when an OTLP
//! endpoint is configured, an OpenTelemetry layer exporting spans over OTLP/HTTP (protobuf).

use anyhow::Context;
use billing_bridge_config::{LogFormat, TelemetryConfig};
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the span exporter alive; `shutdown` sends what is still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter (a no-op when traces are off).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("billing-bridge: could not flush the last spans: {e}");
        }
    }
}

/// Installs the process-wide subscriber. `config` is `None` for commands that do not read the
/// `[telemetry]` section (text logs, no traces). `RUST_LOG` overrides `default_filter`.
pub fn init(config: Option<&TelemetryConfig>, default_filter: &str) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = config.is_some_and(|c| c.log_format == LogFormat::Json);
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let provider = match config.and_then(|c| c.traces_url().map(|url| (c, url))) {
        Some((config, url)) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url.as_str())
                .build()
                .with_context(|| format!("building the OTLP span exporter for {url}"))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(config.service_name.clone())
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("billing-bridge"))
            .with_threads(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .context("installing the log subscriber")?;
    if let (Some(config), Some(_)) = (config, &provider) {
        // The endpoint is not logged: a collector URL may carry credentials.
        tracing::info!(service = %config.service_name, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}
