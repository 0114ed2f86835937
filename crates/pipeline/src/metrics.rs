//! Every metric billing-bridge exports, defined in one place. Names follow
//! `billing_bridge_<name>_<unit>[_total]`; labels take values from small fixed sets.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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

/// What became of one usage record.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum UsageRecordOutcome {
    /// Recurly holds it (created now, or found from an earlier attempt).
    Created,
    /// Not sent: the Recurly subscription has ended.
    Skipped,
    /// Not acknowledged this run; the next run sends it again under the same key.
    Failed,
}

/// Why traffic could not be billed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum UnmatchedReason {
    /// Its subscription is not linked to a Recurly subscription.
    Subscription,
    /// No quota of the subscription's plan lists its asset resource.
    Resource,
}

/// First report of a window, or a later poll for late traffic.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum WindowKind {
    First,
    Repoll,
}

/// How a reporting run ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RunOutcome {
    /// Every window it took on is done.
    Complete,
    /// Some record was not acknowledged; the next run resumes.
    Incomplete,
    /// Traffic or subscriptions could not be read.
    Failed,
    /// Another run held the lease.
    Busy,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageRecordLabels {
    pub outcome: UsageRecordOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnmatchedLabels {
    pub reason: UnmatchedReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    pub kind: WindowKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub outcome: RunOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    pub lease: &'static str,
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
    /// Units Recurly acknowledged as usage.
    pub usage_units_reported: Counter,
    /// Units not reported because their Recurly subscription has ended.
    pub usage_skipped_units: Counter,
    pub usage_records: Family<UsageRecordLabels, Counter>,
    pub usage_unmatched_units: Family<UnmatchedLabels, Counter>,
    pub usage_windows_reported: Family<WindowLabels, Counter>,
    /// Now minus the end of the last reported window, set at every run.
    pub usage_reporting_lag: Gauge,
    pub usage_runs: Family<RunLabels, Counter>,
    pub usage_run_duration: Histogram,
    pub leases_held: Family<LeaseLabels, Gauge>,
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
        let usage_units_reported = Counter::default();
        registry.register(
            "usage_units_reported",
            "Units of traffic Recurly acknowledged as usage",
            usage_units_reported.clone(),
        );
        let usage_skipped_units = Counter::default();
        registry.register(
            "usage_skipped_units",
            "Units of traffic not reported because the Recurly subscription has ended",
            usage_skipped_units.clone(),
        );
        let usage_records = Family::<UsageRecordLabels, Counter>::default();
        registry.register(
            "usage_records",
            "Usage records, by what became of them",
            usage_records.clone(),
        );
        let usage_unmatched_units = Family::<UnmatchedLabels, Counter>::default();
        registry.register(
            "usage_unmatched_units",
            "Units of traffic that match no billed subscription or quota",
            usage_unmatched_units.clone(),
        );
        let usage_windows_reported = Family::<WindowLabels, Counter>::default();
        registry.register(
            "usage_windows_reported",
            "Windows whose usage is fully reported, first time or after a re-poll",
            usage_windows_reported.clone(),
        );
        let usage_reporting_lag = Gauge::default();
        registry.register_with_unit(
            "usage_reporting_lag",
            "Now minus the end of the last fully reported window",
            prometheus_client::registry::Unit::Seconds,
            usage_reporting_lag.clone(),
        );
        let usage_runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "usage_runs",
            "Reporting runs, by how they ended",
            usage_runs.clone(),
        );
        let usage_run_duration = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register_with_unit(
            "usage_run_duration",
            "Wall time of a reporting run",
            prometheus_client::registry::Unit::Seconds,
            usage_run_duration.clone(),
        );
        let leases_held = Family::<LeaseLabels, Gauge>::default();
        registry.register(
            "leases_held",
            "Leases this instance holds (1) or not (0)",
            leases_held.clone(),
        );
        Self {
            registry,
            webhooks,
            provisioning,
            notifications,
            queue_depth,
            reconcile_passes,
            usage_units_reported,
            usage_skipped_units,
            usage_records,
            usage_unmatched_units,
            usage_windows_reported,
            usage_reporting_lag,
            usage_runs,
            usage_run_duration,
            leases_held,
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

    pub fn usage_record(&self, outcome: UsageRecordOutcome) {
        self.usage_records
            .get_or_create(&UsageRecordLabels { outcome })
            .inc();
    }

    pub fn unmatched(&self, reason: UnmatchedReason, units: u64) {
        self.usage_unmatched_units
            .get_or_create(&UnmatchedLabels { reason })
            .inc_by(units);
    }

    pub fn window_reported(&self, kind: WindowKind) {
        self.usage_windows_reported
            .get_or_create(&WindowLabels { kind })
            .inc();
    }

    pub fn run_ended(&self, outcome: RunOutcome, seconds: f64) {
        self.usage_runs.get_or_create(&RunLabels { outcome }).inc();
        if outcome != RunOutcome::Busy {
            self.usage_run_duration.observe(seconds);
        }
    }

    pub fn lease(&self, lease: &'static str, held: bool) {
        self.leases_held
            .get_or_create(&LeaseLabels { lease })
            .set(i64::from(held));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
