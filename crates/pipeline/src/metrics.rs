//! Every metric billing-bridge exports, defined in one place. Names follow
//! `billing_bridge_<name>_<unit>[_total]`; labels take values from small fixed sets.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What intake did with a webhook.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum WebhookOutcome {
    Accepted,
    Duplicate,
    Ignored,
    Unauthorized,
    TooLarge,
    Malformed,
    Busy,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ResourceLabel {
    Plan,
    Subscription,
}

/// What a provisioner concluded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ProvisioningOutcome {
    Provisioned,
    Unchanged,
    Ineligible,
    Waiting,
    Deactivated,
    Approved,
    Rejected,
    Canceled,
    NotOurs,
    Failed,
    Retry,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Channel {
    Teams,
    Mail,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum NotificationOutcome {
    Sent,
    Failed,
    Skipped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub outcome: WebhookOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProvisioningLabels {
    pub resource: ResourceLabel,
    pub outcome: ProvisioningOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub channel: Channel,
    pub outcome: NotificationOutcome,
}

pub struct Metrics {
    pub registry: Registry,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub provisioning: Family<ProvisioningLabels, Counter>,
    pub notifications: Family<NotificationLabels, Counter>,
    pub queue_depth: Gauge,
    pub reconcile_passes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("billing_bridge");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks_received",
            "Amplify webhooks received, by what intake did with them",
            webhooks.clone(),
        );
        let provisioning = Family::<ProvisioningLabels, Counter>::default();
        registry.register(
            "provisioning",
            "Provisioning passes over a plan or subscription, by outcome",
            provisioning.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "notifications",
            "Teams cards and subscriber mails, by outcome",
            notifications.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth_events",
            "Accepted events waiting for a provisioner",
            queue_depth.clone(),
        );
        let reconcile_passes = Counter::default();
        registry.register(
            "reconcile_passes",
            "Full reconciliation passes run",
            reconcile_passes.clone(),
        );
        Self {
            registry,
            webhooks,
            provisioning,
            notifications,
            queue_depth,
            reconcile_passes,
        }
    }
}

impl Metrics {
    pub fn webhook(&self, outcome: WebhookOutcome) {
        self.webhooks
            .get_or_create(&WebhookLabels { outcome })
            .inc();
    }

    pub fn provisioned(&self, resource: ResourceLabel, outcome: ProvisioningOutcome) {
        self.provisioning
            .get_or_create(&ProvisioningLabels { resource, outcome })
            .inc();
    }

    pub fn notified(&self, channel: Channel, outcome: NotificationOutcome) {
        self.notifications
            .get_or_create(&NotificationLabels { channel, outcome })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
