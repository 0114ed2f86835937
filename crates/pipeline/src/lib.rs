//! billing-bridge's actor pipeline (design.md §2): a Provisioner per kind (plans, subscriptions)
//! takes accepted webhook events from its own queue in the store; the Reconciler
//! queues whatever webhooks were missed; the WatchReader queues the WatchTopic's events (the
//! webhooks' gaps, as they happen); the Notifier tells the provider and the subscriber.
//! Actors are thin shells: the work is in `plan`, `subscription` and `reconcile`, plain async
//! functions over the clients, which call the pure rules of `billing-bridge-domain`.

pub mod actors;
pub mod billing_state;
pub mod bridge;
pub mod dispatch;
pub mod hooks;
pub mod intake;
pub mod metrics;
pub mod notices;
pub mod periods;
pub mod plan;
pub mod provision;
pub mod reconcile;
pub mod settings;
pub mod subscription;
pub mod trace;
pub mod usage;
pub mod watch;

use std::sync::Arc;

use actix::{Actor, Addr};

pub use bridge::{Bridge, BuildError, Channels};
pub use metrics::Metrics;
pub use notices::{Notice, Notices, Notifier};

/// The running actors. Must be started inside an actix system (`actix_rt`).
pub struct Pipeline {
    pub bridge: Arc<Bridge>,
    pub reconciler: Addr<actors::Reconciler>,
    pub notifier: Addr<Notifier>,
    pub reporter: Addr<usage::actors::UsageReporter>,
    provisioners: [Addr<actors::Provisioner>; 2],
    _scheduler: Addr<usage::actors::ReportScheduler>,
    _watcher: Addr<billing_state::BillingWatcher>,
    _watch_reader: Option<Addr<watch::WatchReader>>,
}

impl Pipeline {
    pub fn start(bridge: Bridge, channels: Channels) -> Pipeline {
        let bridge = Arc::new(bridge);
        let notifier = Notifier::new(channels, bridge.clone()).start();
        let mailbox = Notices::new(bridge.clone());
        let watcher = billing_state::BillingWatcher {
            bridge: bridge.clone(),
            notices: mailbox.clone(),
        }
        .start();
        let provisioners = billing_bridge_store::EVENT_KINDS.map(|kind| {
            actors::Provisioner {
                bridge: bridge.clone(),
                notices: mailbox.clone(),
                kind,
            }
            .start()
        });
        let watch_topic = bridge.config.intake.watch_topic().map(str::to_owned);
        let reconciler = actors::Reconciler {
            bridge: bridge.clone(),
            every: bridge.config.reconcile_every(),
            start_pass: watch_topic.is_none(),
        }
        .start();
        let watch_reader = watch_topic.map(|topic| {
            watch::WatchReader::new(
                bridge.clone(),
                topic,
                bridge.config.intake.watch_every,
                reconciler.clone(),
            )
            .start()
        });
        bridge
            .metrics
            .usage_window
            .set(bridge.config.reporting.window.as_secs() as i64);
        let reporter = usage::actors::UsageReporter::new(bridge.clone(), mailbox.clone()).start();
        let schedule = if bridge.config.reporting.enabled {
            // Checked when the bridge was built.
            settings::parse_schedule(&bridge.config.reporting.schedule)
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
            provisioners,
            _scheduler: scheduler,
            _watcher: watcher,
            _watch_reader: watch_reader,
        }
    }

    /// Where new work puts its notices: the outbox the Notifier delivers.
    pub fn notices(&self) -> Notices {
        Notices::new(self.bridge.clone())
    }

    /// Whether the actors are still running (for readiness).
    pub fn is_running(&self) -> bool {
        self.provisioners.iter().all(Addr::connected) && self.reconciler.connected()
    }
}
