//! Everything the provisioners need, built once from the configuration and shared by the actors:
//! the upstream clients, the store and the metrics.

use std::time::Duration;

use billing_bridge_amplify::{AmplifyClient, AmplifySettings};
use billing_bridge_billing::recurly::{RecurlyClient, RecurlySettings, SiteKind};
use billing_bridge_config::{BridgeConfig, RecurlySite};
use billing_bridge_notify::{Mailer, ProviderChannel};
use billing_bridge_store::Store;
use billing_bridge_upstream::RetryPolicy;
use secrecy::{ExposeSecret, SecretString};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;

/// An upstream limit per client (Amplify) or per site (Recurly) shared by `instances` instances:
/// each keeps to its share, rounded down, at least 1.
pub fn per_instance(per_minute: u32, instances: u32) -> u32 {
    if per_minute == 0 {
        return 0;
    }
    (per_minute / instances.max(1)).max(1)
}

/// The bridge's clock: the system clock plus an offset that only moves forward. The offset is
/// 0 in production; the end-to-end tests move it with the sandbox's billing clock, so a month
/// of renewals is reported, dated and signed in the same time as Recurly's.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: std::sync::atomic::AtomicI64,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
            + self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves the clock forward to `at_ms` (epoch ms); an earlier time leaves it as it is.
    pub fn advance_to(&self, at_ms: i64) {
        let offset = at_ms - chrono::Utc::now().timestamp_millis();
        self.offset_ms
            .fetch_max(offset, std::sync::atomic::Ordering::Relaxed);
    }
}

pub struct Bridge {
    pub config: BridgeConfig,
    pub amplify: AmplifyClient,
    pub recurly: RecurlyClient,
    pub store: Store,
    pub metrics: Metrics,
    /// Pushed transaction ids of generations before this are forgotten (past the horizon).
    pub ingest_forgotten_before: std::sync::atomic::AtomicI64,
    pub clock: Clock,
    /// The billing periods of linked Recurly subscriptions, as last read.
    pub periods: crate::periods::Periods,
}

/// The notification channels, owned by the Notifier actor.
pub struct Channels {
    pub provider: ProviderChannel,
    pub mailer: Mailer,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

impl Bridge {
    /// Runs `work` while renewing `lease` for `ttl` every third of it, so work that outlasts the
    /// lease keeps it. A renewal that fails (the lease lost meanwhile) is logged; what the lease
    /// fences (the ledger's writes by its token) still stops the work's writes.
    pub async fn holding<F: std::future::Future>(
        &self,
        lease: &billing_bridge_store::Lease,
        ttl: Duration,
        work: F,
    ) -> F::Output {
        let (work, renew) = (std::pin::pin!(work), std::pin::pin!(self.renew(lease, ttl)));
        match futures_util::future::select(work, renew).await {
            futures_util::future::Either::Left((output, _)) => output,
            futures_util::future::Either::Right((never, _)) => match never {},
        }
    }

    /// Renews `lease` for `ttl` every third of it, for as long as it is polled.
    async fn renew(
        &self,
        lease: &billing_bridge_store::Lease,
        ttl: Duration,
    ) -> std::convert::Infallible {
        loop {
            actix_rt::time::sleep(ttl / 3).await;
            if let Err(e) = self.store.extend_lease(lease, ttl).await {
                tracing::warn!(error = %e, "a lease could not be renewed");
            }
        }
    }

    /// Sets the depth gauges from the store: events not finished (in all and per provisioner)
    /// and the notification outbox. The one place they move, called by each consumer after
    /// each item and by `/metrics`, so they count what the store holds, not what was sent.
    pub async fn refresh_depths(&self) {
        use billing_bridge_domain::events::ResourceKind;
        use billing_bridge_store::{EVENT_KINDS, event_queue};

        use crate::metrics::ActorLabel;
        let mut total = 0;
        for kind in EVENT_KINDS {
            let Ok(len) = self.store.queue_len(event_queue(kind)).await else {
                return;
            };
            total += len;
            let actor = match kind {
                ResourceKind::ProductPlan => ActorLabel::PlanProvisioner,
                ResourceKind::Subscription => ActorLabel::SubscriptionProvisioner,
            };
            self.metrics.mailbox(actor).set(len as i64);
        }
        self.metrics.queue_depth.set(total as i64);
        if let Ok(len) = self
            .store
            .queue_len(billing_bridge_store::NOTICES_QUEUE)
            .await
        {
            self.metrics.mailbox(ActorLabel::Notifier).set(len as i64);
        }
    }
}

impl Bridge {
    /// Builds the clients a configuration describes. `retry` bounds every upstream call.
    pub fn build(
        config: BridgeConfig,
        retry: RetryPolicy,
    ) -> Result<(Bridge, Channels), BuildError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("billing-bridge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BuildError(format!("HTTP client: {e}")))?;
        let metrics = Metrics::default();
        let observer = metrics.upstream_observer();
        let amplify = AmplifyClient::new(
            http.clone(),
            AmplifySettings {
                central_url: config.amplify.central_url.clone(),
                auth_url: config.amplify.auth_url.clone(),
                platform_url: config.amplify.platform_url.clone(),
                client_id: config.amplify.client_id.clone(),
                client_secret: config
                    .amplify
                    .client_secret
                    .clone()
                    .unwrap_or_else(|| SecretString::from("")),
                tenant_id: config.amplify.tenant_id.clone().filter(|t| !t.is_empty()),
                requests_per_minute: per_instance(
                    config.amplify.requests_per_minute,
                    config.store.instances,
                ),
                api_version: config.amplify.api_version.clone(),
                timeout: config.amplify.timeout,
                retry,
            },
        )
        .with_observer(observer.clone());
        let recurly = RecurlyClient::new(
            http.clone(),
            RecurlySettings {
                base_url: config.recurly.base_url.clone(),
                api_key: config
                    .recurly
                    .api_key
                    .clone()
                    .unwrap_or_else(|| SecretString::from("")),
                site: match config.recurly.site {
                    RecurlySite::Production => SiteKind::Production,
                    RecurlySite::Sandbox => SiteKind::Sandbox,
                },
                requests_per_minute: per_instance(
                    config.recurly.requests_per_minute,
                    config.store.instances,
                ),
                timeout: config.recurly.timeout,
                retry,
            },
        )
        .with_observer(observer.clone());
        let (provider, mailer) =
            billing_bridge_notify::channels_observed(&config.notify, &http, observer)
                .map_err(|e| BuildError(e.to_string()))?;
        if let Some(start) = &config.reporting.start_at {
            crate::settings::parse_instant(start)
                .map_err(|e| BuildError(format!("reporting.start_at: {e}")))?;
        }
        crate::settings::parse_schedule(&config.reporting.schedule).map_err(BuildError)?;
        let state_file = config.store.state_file.trim();
        let store = if let Some(url) = &config.store.redis_url {
            let consumer = format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "bridge".into()),
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
                    .unwrap_or_default()
            );
            Store::redis(
                url.expose_secret(),
                config.server.queue_capacity,
                consumer,
                config.store.reclaim_after,
            )
            .map_err(|e| BuildError(e.to_string()))?
        } else if state_file.is_empty() {
            Store::memory(config.server.queue_capacity)
        } else {
            Store::memory_with_journal(
                config.server.queue_capacity,
                std::path::Path::new(state_file),
            )
            .map_err(|e| BuildError(e.to_string()))?
        }
        .with_reclaim_after(config.store.reclaim_after);
        let bridge = Bridge {
            config,
            amplify,
            recurly,
            store,
            metrics,
            ingest_forgotten_before: std::sync::atomic::AtomicI64::new(i64::MIN),
            clock: Clock::default(),
            periods: Default::default(),
        };
        Ok((bridge, Channels { provider, mailer }))
    }
}
