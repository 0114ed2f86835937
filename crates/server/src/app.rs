//! The one way to run billing-bridge: the bridge built from a configuration, its actors started
//! and the HTTP server serving on a listener the caller bound (serve, demo, tests and benches).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::web;
use billing_bridge_config::BridgeConfig;
use billing_bridge_pipeline::{Bridge, BuildError, Pipeline};
use billing_bridge_upstream::RetryPolicy;

use crate::AppState;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("serving on the listener: {0}")]
    Listen(#[from] std::io::Error),
}

/// How the application runs, beyond its configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Bounds every upstream call.
    pub retry: RetryPolicy,
    /// HTTP worker threads; `None` = one per core.
    pub workers: Option<usize>,
}

/// A running application: the bridge, its actors and its HTTP server.
pub struct Application {
    addr: SocketAddr,
    state: web::Data<AppState>,
    server: actix_web::dev::ServerHandle,
    running: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
}

impl Application {
    /// Builds the bridge from `config`, starts its actors and serves on `listener`. The caller
    /// binds the listener (tests and benches on `127.0.0.1:0`, reading [`Application::addr`]),
    /// so no port is ever picked, released and bound again. Must run inside an actix system.
    pub fn start(
        config: BridgeConfig,
        listener: TcpListener,
        options: Options,
    ) -> Result<Application, StartError> {
        let addr = listener.local_addr()?;
        let (bridge, channels) = Bridge::build(config, options.retry)?;
        let pipeline = Pipeline::start(bridge, channels);
        let state = web::Data::new(AppState {
            bridge: pipeline.bridge.clone(),
            pipeline,
        });
        let server = crate::http_server(state.clone(), listener, options.workers)?;
        Ok(Application {
            addr,
            state,
            server: server.handle(),
            running: actix_web::rt::spawn(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn bridge(&self) -> &Arc<Bridge> {
        &self.state.bridge
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.state.pipeline
    }

    /// Stops the HTTP server (`graceful`: finishing the requests in flight, at most 5 s) and
    /// waits for it.
    pub async fn stop(self, graceful: bool) {
        self.server.stop(graceful).await;
        let _ = self.running.await;
    }

    /// A handle that stops the HTTP server from elsewhere (a signal handler, another task).
    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.clone()
    }
}
