//! Local emulator of every upstream billing-bridge talks to: Amplify (Central catalog and
//! management, auth, Platform, Traceability), Recurly v3, MS Teams and SendGrid, on one port.
//!
//! Each upstream lives under its own prefix with the real paths beneath it (`/amplify`, `/auth`,
//! `/platform`, `/recurly`, `/teams`, `/sendgrid`); sandbox-only control routes live under
//! `/_sandbox/`. The behaviour follows `shared/reference/`; where the reference marks a fact as
//! inferred, the guess sits in one named function or constant of the upstream's module.

pub mod config;
pub mod faults;
pub mod ratelimit;
pub mod record;

mod amplify;
mod control;
mod otlp;
mod recurly;
mod sendgrid;
mod teams;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, HttpServer, web};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub use config::{
    AmplifySettings, DunningSettings, RecorderSettings, RecurlyMode, RecurlySettings,
    SandboxConfig, SendgridSettings, TeamsSettings,
};
pub use faults::FaultSettings;
pub use record::RecordedRequest;

/// The upstream services the sandbox emulates, each under its own path prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upstream {
    /// Amplify Central (`/amplify/apis/...`) and Traceability (`/amplify/api/traceability/...`).
    Amplify,
    /// The Axway login token endpoint (`/auth/realms/Broker/...`).
    Auth,
    /// Amplify Platform (`/platform/api/v1/...`).
    Platform,
    /// Recurly API v3 (`/recurly/...`).
    Recurly,
    /// MS Teams incoming webhooks and Workflows (`/teams/...`).
    Teams,
    /// SendGrid v3 mail send (`/sendgrid/v3/mail/send`).
    Sendgrid,
}

impl Upstream {
    pub const ALL: [Upstream; 6] = [
        Upstream::Amplify,
        Upstream::Auth,
        Upstream::Platform,
        Upstream::Recurly,
        Upstream::Teams,
        Upstream::Sendgrid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Upstream::Amplify => "amplify",
            Upstream::Auth => "auth",
            Upstream::Platform => "platform",
            Upstream::Recurly => "recurly",
            Upstream::Teams => "teams",
            Upstream::Sendgrid => "sendgrid",
        }
    }

    pub fn parse(name: &str) -> Option<Upstream> {
        Upstream::ALL.into_iter().find(|u| u.name() == name)
    }

    /// The path prefix the upstream is served under.
    pub fn prefix(self) -> &'static str {
        match self {
            Upstream::Amplify => "/amplify",
            Upstream::Auth => "/auth",
            Upstream::Platform => "/platform",
            Upstream::Recurly => "/recurly",
            Upstream::Teams => "/teams",
            Upstream::Sendgrid => "/sendgrid",
        }
    }

    /// An injected error answer, in the error format of this upstream.
    fn injected_error(self, status: u16, state: &SandboxState) -> HttpResponse {
        match self {
            Upstream::Amplify | Upstream::Platform => amplify::injected_error(status),
            Upstream::Auth => amplify::injected_auth_error(status),
            Upstream::Recurly => recurly::injected_error(status),
            Upstream::Teams => teams::injected_error(status),
            Upstream::Sendgrid => sendgrid::injected_error(status, state),
        }
    }

    /// An injected 429, with the headers and body this upstream sends when it throttles.
    fn injected_rate_limit(
        self,
        state: &SandboxState,
        retry_after: std::time::Duration,
    ) -> HttpResponse {
        match self {
            Upstream::Amplify | Upstream::Platform | Upstream::Auth => {
                amplify::rate_limited_response(retry_after)
            }
            Upstream::Recurly => recurly::injected_rate_limit(state, retry_after),
            Upstream::Teams => teams::throttled_response(),
            Upstream::Sendgrid => sendgrid::rate_limited_response(retry_after),
        }
    }
}

/// Everything a running sandbox holds. Shared by all workers behind `web::Data`.
pub struct SandboxState {
    config: RwLock<Arc<SandboxConfig>>,
    pub(crate) recorder: record::Recorder,
    pub(crate) faults: faults::Faults,
    pub(crate) amplify: amplify::AmplifyState,
    pub(crate) recurly: recurly::RecurlyState,
    pub(crate) teams: teams::TeamsState,
    pub(crate) sendgrid: sendgrid::SendgridState,
    pub(crate) otlp: otlp::OtlpState,
}

impl SandboxState {
    pub fn new(config: SandboxConfig) -> Self {
        Self {
            amplify: amplify::AmplifyState::new(&config),
            recurly: recurly::RecurlyState::new(&config),
            teams: teams::TeamsState::default(),
            sendgrid: sendgrid::SendgridState::default(),
            otlp: otlp::OtlpState::default(),
            recorder: record::Recorder::default(),
            faults: faults::Faults::default(),
            config: RwLock::new(Arc::new(config)),
        }
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<SandboxConfig> {
        self.config.read().clone()
    }

    /// Replaces the configuration (credentials, limits); stored data is kept.
    pub fn set_config(&self, config: SandboxConfig) {
        self.amplify.configure(&config);
        self.recurly.configure(&config);
        *self.config.write() = Arc::new(config);
    }

    /// Forgets all data, recordings and faults; the configuration stays.
    pub fn reset(&self) {
        let config = self.config();
        self.amplify.reset(&config);
        self.recurly.reset(&config);
        self.teams.reset();
        self.sendgrid.reset();
        self.otlp.reset();
        self.recorder.clear();
        self.faults.clear(None);
    }
}

/// Mounts every upstream and the control routes on an app. Used by [`start`] and by anyone who
/// wants the sandbox inside their own actix-web server.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for upstream in Upstream::ALL {
        let scope = web::scope(upstream.prefix())
            .wrap(from_fn(move |req, next| faults::gate(upstream, req, next)));
        let scope = match upstream {
            Upstream::Amplify => scope.configure(amplify::central_routes),
            Upstream::Auth => scope.configure(amplify::auth_routes),
            Upstream::Platform => scope.configure(amplify::platform_routes),
            Upstream::Recurly => scope.configure(recurly::routes),
            Upstream::Teams => scope.configure(teams::routes),
            Upstream::Sendgrid => scope.configure(sendgrid::routes),
        };
        cfg.service(scope);
    }
    // A trace receiver for the bridge's own spans: not an upstream, so no faults and no recording.
    cfg.service(web::scope("/otlp").configure(otlp::routes));
    cfg.service(web::scope("/_sandbox").configure(control::routes));
}

/// Largest request body any upstream accepts (SendGrid allows 30 MB messages).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// A running sandbox server.
pub struct SandboxHandle {
    addr: SocketAddr,
    state: web::Data<SandboxState>,
    server: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SandboxHandle {
    /// Base URL, e.g. `http://127.0.0.1:41234`; upstream prefixes go after it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &SandboxState {
        &self.state
    }

    /// Stops accepting connections and waits for the server to finish (at most a few seconds:
    /// a test must not hang on a connection a client left open).
    pub async fn stop(self) {
        let graceful = async {
            self.server.stop(true).await;
            let _ = self.task.await;
        };
        if tokio::time::timeout(std::time::Duration::from_secs(5), graceful)
            .await
            .is_err()
        {
            tracing::warn!("sandbox did not stop within 5 s; abandoning it");
        }
    }

    /// Waits until the server ends (for the `sandbox` command).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// Starts the sandbox on `listen` (use `127.0.0.1:0` for a free port) inside the current tokio
/// runtime and returns once it accepts connections.
pub async fn start(config: SandboxConfig, listen: &str) -> std::io::Result<SandboxHandle> {
    let workers = config.workers;
    let state = web::Data::new(SandboxState::new(config));
    let app_state = state.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .app_data(web::JsonConfig::default().limit(MAX_BODY_BYTES))
            .configure(configure)
    })
    .disable_signals()
    .shutdown_timeout(1);
    if let Some(workers) = workers {
        server = server.workers(workers.max(1));
    }
    let server = server.bind(listen)?;
    let addr = *server
        .addrs()
        .first()
        .ok_or_else(|| std::io::Error::other("sandbox bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    amplify::spawn_background(state.clone().into_inner());
    recurly::spawn_background(state.clone().into_inner());
    let task = tokio::spawn(server);
    Ok(SandboxHandle {
        addr,
        state,
        server: handle,
        task,
    })
}
