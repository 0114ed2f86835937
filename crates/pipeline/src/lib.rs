//! billing-bridge's actor pipeline (design.md §2): the Router takes accepted webhook events from
//! the store and hands them to the PlanProvisioner and SubscriptionProvisioner; the Reconciler
//! queues whatever webhooks were missed; the Notifier tells the provider and the subscriber.
//! Actors are thin shells: the work is in `plan`, `subscription` and `reconcile`, plain async
//! functions over the clients, which call the pure rules of `billing-bridge-domain`.

pub mod actors;
pub mod bridge;
pub mod hooks;
pub mod metrics;
pub mod notices;
pub mod plan;
pub mod provision;
pub mod reconcile;
pub mod subscription;
pub mod trace;
pub mod usage;

use std::sync::Arc;

use actix::{Actor, Addr};

pub use bridge::{Bridge, BuildError, Channels};
pub use metrics::Metrics;
pub use notices::{Notice, NoticeSink, Notifier, NotifierMailbox, TracedNotice};

/// The running actors. Must be started inside an actix system (`actix_rt`).
pub struct Pipeline {
    pub bridge: Arc<Bridge>,
    pub reconciler: Addr<actors::Reconciler>,
    pub notifier: Addr<Notifier>,
    pub reporter: Addr<usage::actors::UsageReporter>,
    router: Addr<actors::Router>,
    _scheduler: Addr<usage::actors::ReportScheduler>,
}

impl Pipeline {
    pub fn start(bridge: Bridge, channels: Channels) -> Pipeline {
        let bridge = Arc::new(bridge);
        let notifier = Notifier::new(channels, bridge.clone()).start();
        let mailbox = NotifierMailbox::new(notifier.clone(), &bridge);
        let plans = actors::PlanProvisioner {
            bridge: bridge.clone(),
            notifier: mailbox.clone(),
        }
        .start();
        let subscriptions = actors::SubscriptionProvisioner {
            bridge: bridge.clone(),
            notifier: mailbox,
        }
        .start();
        let router = actors::Router {
            bridge: bridge.clone(),
            plans,
            subscriptions,
        }
        .start();
        let reconciler = actors::Reconciler {
            bridge: bridge.clone(),
            every: bridge.config.provisioning.reconcile_every,
        }
        .start();
        bridge
            .metrics
            .usage_window
            .set(bridge.config.reporting.window.as_secs() as i64);
        let reporter = usage::actors::UsageReporter::new(bridge.clone(), notifier.clone()).start();
        let schedule = if bridge.config.reporting.enabled {
            // Checked when the bridge was built.
            usage::actors::parse_schedule(&bridge.config.reporting.schedule)
                .ok()
                .flatten()
        } else {
            None
        };
        let scheduler = usage::actors::ReportScheduler {
            bridge: bridge.clone(),
            reporter: reporter.clone(),
            schedule,
        }
        .start();
        Pipeline {
            bridge,
            reconciler,
            notifier,
            reporter,
            router,
            _scheduler: scheduler,
        }
    }

    /// Where new work puts its notices: the Notifier, its mailbox depth counted.
    pub fn notices(&self) -> NotifierMailbox {
        NotifierMailbox::new(self.notifier.clone(), &self.bridge)
    }

    /// Whether the actors are still running (for readiness).
    pub fn is_running(&self) -> bool {
        self.router.connected() && self.reconciler.connected()
    }
}
