//! Every metric billing-bridge exports, defined in one place. Names follow
//! `billing_bridge_<name>_<unit>[_total]`; labels take values from small fixed sets, printed in
//! snake_case (`outcome="too_large"`). `dashboards/` reads these names: change both together.

use std::sync::Arc;
use std::time::Duration;

use billing_bridge_upstream::{CallStatus, Observer, Upstream, UpstreamObserver};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Label value enums print their variants in snake_case (prometheus-client's derive prints the
/// variant name as written, and has no renaming).
macro_rules! snake_case_labels {
    ($($ty:ty { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),+ }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )+};
}

/// What intake did with a webhook.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WebhookOutcome {
    Accepted,
    Duplicate,
    Ignored,
    Unauthorized,
    TooLarge,
    Malformed,
    Busy,
}

/// Why intake acknowledged a webhook and did nothing with it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WebhookIgnored {
    /// Not one of the four change types of reference §4.3 (`TriggerAction`, `Ping`, unknown).
    EventType,
    /// Sent for another organization than `amplify.tenant_id`.
    OtherOrganization,
    /// A change no provisioner needs to look at (another kind, a draft plan, ...).
    NotOfInterest,
    /// Its pipeline (plans or subscriptions) is switched off.
    PipelineOff,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResourceLabel {
    Plan,
    Subscription,
}

/// What a provisioner concluded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
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

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Channel {
    Teams,
    Mail,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum NotificationOutcome {
    /// The channel took it.
    Sent,
    /// The channel refused it for good (a 4xx other than 429, an invalid mail): dropped.
    Failed,
    /// The channel is switched off.
    Skipped,
    /// The channel could not take it now (throttling, 5xx, network, time-out): scheduled again.
    Retried,
    /// Still not taken after `[notify] max_age`: given up.
    Expired,
    /// The store could not keep it (unavailable): never queued.
    Lost,
}

/// What became of one usage record.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UsageRecordOutcome {
    /// Recurly holds it (created now, or found from an earlier attempt).
    Created,
    /// Not sent: the Recurly subscription has ended.
    Skipped,
    /// Not acknowledged this run; the next run sends it again under the same key.
    Failed,
}

/// How units were dated around a renewal (`domain::usage::Dated`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DatedHow {
    InPeriod,
    Split,
    MovedToOpenPeriod,
    Correction,
    Trial,
}

impl From<billing_bridge_domain::usage::Dated> for DatedHow {
    fn from(dated: billing_bridge_domain::usage::Dated) -> Self {
        use billing_bridge_domain::usage::Dated;
        match dated {
            Dated::InPeriod => DatedHow::InPeriod,
            Dated::Split => DatedHow::Split,
            Dated::MovedToOpenPeriod => DatedHow::MovedToOpenPeriod,
            Dated::Correction => DatedHow::Correction,
            Dated::Trial => DatedHow::Trial,
        }
    }
}

/// What `POST /webhooks/recurly` did with a notification.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RecurlyNotificationOutcome {
    /// Verified, and acted on (or found nothing to do) after re-reading Recurly.
    Accepted,
    /// A notification id already handled (Recurly resends until it hears 2xx).
    Duplicate,
    /// Missing, bad or stale signature: nothing read, nothing done.
    Unauthorized,
    Malformed,
    /// Recurly or Amplify could not be read: answered 503 so Recurly sends it again.
    Failed,
}

/// What the bridge did about a linked subscription whose billing ended outside it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BillingEndAction {
    Notified,
    Archived,
}

/// Why traffic could not be billed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UnmatchedReason {
    /// Its subscription is not linked to a Recurly subscription.
    Subscription,
    /// No quota of the subscription's plan lists its asset resource.
    Resource,
    /// Its resource is named only by an own name two quotas of the plan list.
    AmbiguousResource,
}

/// First report of a window, or a later poll for late traffic.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WindowKind {
    First,
    Repoll,
}

/// How a reporting run ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
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

/// What push ingestion did with a transaction.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum IngestOutcomeLabel {
    Accepted,
    Duplicate,
    Ignored,
    Refused,
}

/// Why push ingestion refused a transaction.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum IngestRefusal {
    TooOld,
    InFuture,
    Invalid,
    /// Its window already holds `[ingest] max_groups_per_window` groups and its group is new.
    TooManyGroups,
}

/// How a pushed batch was answered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum IngestBatchStatus {
    Ok,
    Unauthorized,
    TooLarge,
    BadRequest,
    Unavailable,
    Off,
    /// The in-flight byte budget (`[ingest] max_inflight_bytes`) was spent: 503.
    OverBudget,
    /// The body did not arrive within `[ingest] body_timeout`: 408.
    Timeout,
}

/// The actors whose mailboxes are watched.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ActorLabel {
    PlanProvisioner,
    SubscriptionProvisioner,
    Notifier,
}

impl From<billing_bridge_domain::usage::Unmatched> for UnmatchedReason {
    fn from(reason: billing_bridge_domain::usage::Unmatched) -> Self {
        match reason {
            billing_bridge_domain::usage::Unmatched::Subscription => UnmatchedReason::Subscription,
            billing_bridge_domain::usage::Unmatched::Resource => UnmatchedReason::Resource,
            billing_bridge_domain::usage::Unmatched::AmbiguousResource => {
                UnmatchedReason::AmbiguousResource
            }
        }
    }
}

snake_case_labels! {
    WebhookOutcome {
        Accepted => "accepted", Duplicate => "duplicate", Ignored => "ignored",
        Unauthorized => "unauthorized", TooLarge => "too_large", Malformed => "malformed",
        Busy => "busy",
    }
    WebhookIgnored {
        EventType => "event_type", OtherOrganization => "other_organization",
        NotOfInterest => "not_of_interest", PipelineOff => "pipeline_off",
    }
    ResourceLabel { Plan => "plan", Subscription => "subscription" }
    ProvisioningOutcome {
        Provisioned => "provisioned", Unchanged => "unchanged", Ineligible => "ineligible",
        Waiting => "waiting", Deactivated => "deactivated", Approved => "approved",
        Rejected => "rejected", Canceled => "canceled", NotOurs => "not_ours",
        Failed => "failed", Retry => "retry",
    }
    Channel { Teams => "teams", Mail => "mail" }
    NotificationOutcome {
        Sent => "sent", Failed => "failed", Skipped => "skipped", Retried => "retried",
        Expired => "expired", Lost => "lost",
    }
    UsageRecordOutcome { Created => "created", Skipped => "skipped", Failed => "failed" }
    UnmatchedReason {
        Subscription => "subscription", Resource => "resource",
        AmbiguousResource => "ambiguous_resource",
    }
    DatedHow {
        InPeriod => "in_period", Split => "split", MovedToOpenPeriod => "moved_to_open_period",
        Correction => "correction", Trial => "trial",
    }
    RecurlyNotificationOutcome {
        Accepted => "accepted", Duplicate => "duplicate", Unauthorized => "unauthorized",
        Malformed => "malformed", Failed => "failed",
    }
    BillingEndAction { Notified => "notified", Archived => "archived" }
    WindowKind { First => "first", Repoll => "repoll" }
    RunOutcome {
        Complete => "complete", Incomplete => "incomplete", Failed => "failed", Busy => "busy",
    }
    IngestOutcomeLabel {
        Accepted => "accepted", Duplicate => "duplicate", Ignored => "ignored",
        Refused => "refused",
    }
    IngestRefusal {
        TooOld => "too_old", InFuture => "in_future", Invalid => "invalid",
        TooManyGroups => "too_many_groups",
    }
    IngestBatchStatus {
        Ok => "ok", Unauthorized => "unauthorized", TooLarge => "too_large",
        BadRequest => "bad_request", Unavailable => "unavailable", Off => "off",
        OverBudget => "over_budget", Timeout => "timeout",
    }
    ActorLabel {
        PlanProvisioner => "plan_provisioner",
        SubscriptionProvisioner => "subscription_provisioner",
        Notifier => "notifier",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageRecordLabels {
    pub outcome: UsageRecordOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatedLabels {
    pub how: DatedHow,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecurlyNotificationLabels {
    pub outcome: RecurlyNotificationOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BillingEndLabels {
    pub action: BillingEndAction,
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
pub struct WebhookIgnoredLabels {
    pub reason: WebhookIgnored,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: ResourceLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestOutcomeLabels {
    pub outcome: IngestOutcomeLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestRefusalLabels {
    pub reason: IngestRefusal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestBatchLabels {
    pub status: IngestBatchStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabels {
    pub actor: ActorLabel,
}

/// `upstream` and `status` are fixed sets; `operation` is one of the clients' own fixed names
/// (`create_plan`), never a URL or an id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamRequestLabels {
    pub upstream: &'static str,
    pub operation: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOperationLabels {
    pub upstream: &'static str,
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: &'static str,
}

fn upstream_latency() -> Histogram {
    // 5 ms to about 40 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn provisioning_latency() -> Histogram {
    // 10 ms to about 80 s: a pass may wait out Amplify's limiter.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

pub struct Metrics {
    pub registry: Registry,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub webhooks_ignored: Family<WebhookIgnoredLabels, Counter>,
    pub provisioning: Family<ProvisioningLabels, Counter>,
    pub provisioning_duration: Family<ResourceLabels, Histogram, fn() -> Histogram>,
    pub notifications: Family<NotificationLabels, Counter>,
    pub queue_depth: Gauge,
    pub mailbox_depth: Family<ActorLabels, Gauge>,
    pub reconcile_passes: Counter,
    pub upstream_requests: Family<UpstreamRequestLabels, Counter>,
    pub upstream_duration: Family<UpstreamOperationLabels, Histogram, fn() -> Histogram>,
    pub rate_limit_waits: Family<UpstreamLabels, Counter>,
    pub rate_limit_wait_seconds: Family<UpstreamLabels, Counter<f64>>,
    /// 1 while the store answers, 0 when it does not (the memory store always answers).
    pub store_up: Gauge,
    /// Units Recurly acknowledged as usage.
    pub usage_units_reported: Counter,
    /// Units not reported because their Recurly subscription has ended.
    pub usage_skipped_units: Counter,
    pub usage_records: Family<UsageRecordLabels, Counter>,
    /// Units by how they were dated around renewals (sent or, for trials, not).
    pub usage_dated_units: Family<DatedLabels, Counter>,
    /// Units of records Recurly refused (left pending and sent again every run).
    pub usage_refused_units: Counter,
    pub recurly_notifications: Family<RecurlyNotificationLabels, Counter>,
    /// Linked subscriptions whose billing ended outside the bridge, by what was done.
    pub billing_ended: Family<BillingEndLabels, Counter>,
    /// Past-due invoices of linked subscriptions told to the provider.
    pub past_due_invoices: Counter,
    /// Passes over every linked Recurly subscription (catching undelivered notifications).
    pub billing_checks: Counter,
    pub usage_unmatched_units: Family<UnmatchedLabels, Counter>,
    pub usage_windows_reported: Family<WindowLabels, Counter>,
    /// Now minus the end of the last reported window, set at every run.
    pub usage_reporting_lag: Gauge,
    /// The configured reporting window, so alerts can compare the lag with it.
    pub usage_window: Gauge,
    pub usage_runs: Family<RunLabels, Counter>,
    pub usage_run_duration: Histogram,
    pub leases_held: Family<LeaseLabels, Gauge>,
    pub ingest_transactions: Family<IngestOutcomeLabels, Counter>,
    pub ingest_refused: Family<IngestRefusalLabels, Counter>,
    pub ingest_batches: Family<IngestBatchLabels, Counter>,
    pub ingest_batch_duration: Histogram,
    /// Bytes batches in progress hold of `[ingest] max_inflight_bytes`.
    pub ingest_inflight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("billing_bridge");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks_received",
            "Amplify webhooks received, by what intake did with them (duplicate: a replay of an accepted event)",
            webhooks.clone(),
        );
        let webhooks_ignored = Family::<WebhookIgnoredLabels, Counter>::default();
        registry.register(
            "webhooks_ignored",
            "Amplify webhooks acknowledged (202 ignored) and not acted on, by why",
            webhooks_ignored.clone(),
        );
        let provisioning = Family::<ProvisioningLabels, Counter>::default();
        registry.register(
            "provisioning",
            "Provisioning passes over a plan or subscription, by outcome",
            provisioning.clone(),
        );
        let provisioning_duration =
            Family::<ResourceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                provisioning_latency,
            );
        registry.register_with_unit(
            "provisioning_duration",
            "Wall time of a provisioning pass, upstream calls and limiter waits included",
            Unit::Seconds,
            provisioning_duration.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "notifications",
            "Teams cards and subscriber mails, by outcome (each delivery try that is scheduled again counts as retried)",
            notifications.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth_events",
            "Accepted events not yet finished: waiting, in a pass, or scheduled for a retry",
            queue_depth.clone(),
        );
        let mailbox_depth = Family::<ActorLabels, Gauge>::default();
        registry.register(
            "mailbox_depth_messages",
            "Messages sent to an actor and not yet handled",
            mailbox_depth.clone(),
        );
        for actor in [
            ActorLabel::PlanProvisioner,
            ActorLabel::SubscriptionProvisioner,
            ActorLabel::Notifier,
        ] {
            let _ = mailbox_depth.get_or_create(&ActorLabels { actor });
        }
        let reconcile_passes = Counter::default();
        registry.register(
            "reconcile_passes",
            "Full reconciliation passes run",
            reconcile_passes.clone(),
        );
        let upstream_requests = Family::<UpstreamRequestLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "HTTP exchanges with an upstream (each retry counts), by operation and status class (2xx, 4xx, 429, 5xx, network_error)",
            upstream_requests.clone(),
        );
        let upstream_duration =
            Family::<UpstreamOperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                upstream_latency,
            );
        registry.register_with_unit(
            "upstream_request_duration",
            "Latency of one HTTP exchange with an upstream, until its answer's headers",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let rate_limit_waits = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "rate_limit_waits",
            "Waits for a rate limit: the client's own limiter, an upstream's reset time, a 429's Retry-After",
            rate_limit_waits.clone(),
        );
        let rate_limit_wait_seconds = Family::<UpstreamLabels, Counter<f64>>::default();
        registry.register_with_unit(
            "rate_limit_wait",
            "Time spent waiting for rate limits",
            Unit::Seconds,
            rate_limit_wait_seconds.clone(),
        );
        for upstream in [
            Upstream::Amplify,
            Upstream::Recurly,
            Upstream::Teams,
            Upstream::Sendgrid,
        ] {
            let labels = UpstreamLabels {
                upstream: upstream.as_str(),
            };
            let _ = rate_limit_waits.get_or_create(&labels);
            let _ = rate_limit_wait_seconds.get_or_create(&labels);
        }
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the state store (memory or Redis) answers, 0 when it does not",
            store_up.clone(),
        );
        store_up.set(1);
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
        let usage_dated_units = Family::<DatedLabels, Counter>::default();
        registry.register(
            "usage_dated_units",
            "Units of traffic by how they were dated around renewals: in_period, split (a window cut at a period boundary), moved_to_open_period (a closed period's units of a volume or stairstep add-on, billed one period late), correction (a closed period's units of a fixed or tiered add-on), trial (never billed, not sent)",
            usage_dated_units.clone(),
        );
        let usage_refused_units = Counter::default();
        registry.register(
            "usage_refused_units",
            "Units of usage records Recurly refused; they stay pending and are sent again every run",
            usage_refused_units.clone(),
        );
        let recurly_notifications = Family::<RecurlyNotificationLabels, Counter>::default();
        registry.register(
            "recurly_notifications",
            "Recurly webhook notifications received, by what the bridge did with them",
            recurly_notifications.clone(),
        );
        let billing_ended = Family::<BillingEndLabels, Counter>::default();
        registry.register(
            "billing_ended",
            "Linked Recurly subscriptions that expired or were canceled outside the bridge, by what was done (notified, archived)",
            billing_ended.clone(),
        );
        let past_due_invoices = Counter::default();
        registry.register(
            "past_due_invoices",
            "Past-due invoices of linked subscriptions told to the provider",
            past_due_invoices.clone(),
        );
        let billing_checks = Counter::default();
        registry.register(
            "billing_checks",
            "Passes over every linked Recurly subscription",
            billing_checks.clone(),
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
        let usage_window = Gauge::default();
        registry.register_with_unit(
            "usage_window",
            "Length of a reporting window ([reporting] window)",
            prometheus_client::registry::Unit::Seconds,
            usage_window.clone(),
        );
        let usage_reporting_lag = Gauge::default();
        registry.register_with_unit(
            "usage_reporting_lag",
            "Now minus the end of the last fully reported window",
            Unit::Seconds,
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
            Unit::Seconds,
            usage_run_duration.clone(),
        );
        let leases_held = Family::<LeaseLabels, Gauge>::default();
        registry.register(
            "leases_held",
            "Leases this instance holds (1) or not (0)",
            leases_held.clone(),
        );
        let ingest_transactions = Family::<IngestOutcomeLabels, Counter>::default();
        registry.register(
            "ingest_transactions",
            "Pushed transactions, by what ingestion did with them (duplicate: a transactionId taken before)",
            ingest_transactions.clone(),
        );
        let ingest_refused = Family::<IngestRefusalLabels, Counter>::default();
        registry.register(
            "ingest_refused_transactions",
            "Pushed transactions refused, by reason",
            ingest_refused.clone(),
        );
        let ingest_batches = Family::<IngestBatchLabels, Counter>::default();
        registry.register(
            "ingest_batches",
            "Batches posted to /ingest/transactions, by how they were answered",
            ingest_batches.clone(),
        );
        // 0.5 ms to about 4 s.
        let ingest_batch_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "ingest_batch_duration",
            "Time from a batch's arrival to its answer (durable when accepted)",
            Unit::Seconds,
            ingest_batch_duration.clone(),
        );
        let ingest_inflight = Gauge::default();
        registry.register_with_unit(
            "ingest_inflight",
            "Bytes the batches in progress hold (as received, unzipped and parsed), of [ingest] max_inflight_bytes",
            Unit::Bytes,
            ingest_inflight.clone(),
        );
        for &outcome in IngestOutcomeLabel::ALL {
            let _ = ingest_transactions.get_or_create(&IngestOutcomeLabels { outcome });
        }
        for &reason in IngestRefusal::ALL {
            let _ = ingest_refused.get_or_create(&IngestRefusalLabels { reason });
        }
        for &status in IngestBatchStatus::ALL {
            let _ = ingest_batches.get_or_create(&IngestBatchLabels { status });
        }
        // Every series of a fixed label set starts at 0: a counter that first appears at 1 shows
        // no increase() in Prometheus, and an alert on the first failure would never fire.
        for &outcome in WebhookOutcome::ALL {
            let _ = webhooks.get_or_create(&WebhookLabels { outcome });
        }
        for &reason in WebhookIgnored::ALL {
            let _ = webhooks_ignored.get_or_create(&WebhookIgnoredLabels { reason });
        }
        for resource in [ResourceLabel::Plan, ResourceLabel::Subscription] {
            for &outcome in ProvisioningOutcome::ALL {
                let _ = provisioning.get_or_create(&ProvisioningLabels { resource, outcome });
            }
        }
        for channel in [Channel::Teams, Channel::Mail] {
            for &outcome in NotificationOutcome::ALL {
                let _ = notifications.get_or_create(&NotificationLabels { channel, outcome });
            }
        }
        for &outcome in UsageRecordOutcome::ALL {
            let _ = usage_records.get_or_create(&UsageRecordLabels { outcome });
        }
        for &how in DatedHow::ALL {
            let _ = usage_dated_units.get_or_create(&DatedLabels { how });
        }
        for &outcome in RecurlyNotificationOutcome::ALL {
            let _ = recurly_notifications.get_or_create(&RecurlyNotificationLabels { outcome });
        }
        for &action in BillingEndAction::ALL {
            let _ = billing_ended.get_or_create(&BillingEndLabels { action });
        }
        for &reason in UnmatchedReason::ALL {
            let _ = usage_unmatched_units.get_or_create(&UnmatchedLabels { reason });
        }
        for &kind in WindowKind::ALL {
            let _ = usage_windows_reported.get_or_create(&WindowLabels { kind });
        }
        for &outcome in RunOutcome::ALL {
            let _ = usage_runs.get_or_create(&RunLabels { outcome });
        }
        Self {
            registry,
            webhooks,
            webhooks_ignored,
            provisioning,
            provisioning_duration,
            notifications,
            queue_depth,
            mailbox_depth,
            reconcile_passes,
            upstream_requests,
            upstream_duration,
            rate_limit_waits,
            rate_limit_wait_seconds,
            store_up,
            usage_units_reported,
            usage_skipped_units,
            usage_records,
            usage_dated_units,
            usage_refused_units,
            recurly_notifications,
            billing_ended,
            past_due_invoices,
            billing_checks,
            usage_unmatched_units,
            usage_windows_reported,
            usage_reporting_lag,
            usage_window,
            usage_runs,
            usage_run_duration,
            leases_held,
            ingest_transactions,
            ingest_refused,
            ingest_batches,
            ingest_batch_duration,
            ingest_inflight,
        }
    }
}

impl Metrics {
    pub fn ingested(&self, outcome: IngestOutcomeLabel, n: u64) {
        if n > 0 {
            self.ingest_transactions
                .get_or_create(&IngestOutcomeLabels { outcome })
                .inc_by(n);
        }
    }

    pub fn ingest_refused(&self, reason: IngestRefusal, n: u64) {
        if n > 0 {
            self.ingest_refused
                .get_or_create(&IngestRefusalLabels { reason })
                .inc_by(n);
        }
    }

    pub fn ingest_batch(&self, status: IngestBatchStatus, seconds: f64) {
        self.ingest_batches
            .get_or_create(&IngestBatchLabels { status })
            .inc();
        if status == IngestBatchStatus::Ok {
            self.ingest_batch_duration.observe(seconds);
        }
    }

    pub fn webhook(&self, outcome: WebhookOutcome) {
        self.webhooks
            .get_or_create(&WebhookLabels { outcome })
            .inc();
    }

    /// A webhook answered 202 `ignored`: counted once as received and once by why.
    pub fn webhook_ignored(&self, reason: WebhookIgnored) {
        self.webhook(WebhookOutcome::Ignored);
        self.webhooks_ignored
            .get_or_create(&WebhookIgnoredLabels { reason })
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

    pub fn dated(&self, how: impl Into<DatedHow>, units: u64) {
        self.usage_dated_units
            .get_or_create(&DatedLabels { how: how.into() })
            .inc_by(units);
    }

    pub fn recurly_notification(&self, outcome: RecurlyNotificationOutcome) {
        self.recurly_notifications
            .get_or_create(&RecurlyNotificationLabels { outcome })
            .inc();
    }

    pub fn billing_end(&self, action: BillingEndAction) {
        self.billing_ended
            .get_or_create(&BillingEndLabels { action })
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

    /// A pass over a plan or subscription took `elapsed`.
    pub fn provisioning_took(&self, resource: ResourceLabel, elapsed: Duration) {
        self.provisioning_duration
            .get_or_create(&ResourceLabels { resource })
            .observe(elapsed.as_secs_f64());
    }

    /// The mailbox gauge of `actor`.
    pub fn mailbox(&self, actor: ActorLabel) -> Gauge {
        self.mailbox_depth
            .get_or_create(&ActorLabels { actor })
            .clone()
    }

    /// What the upstream clients report to: these metrics' upstream families.
    pub fn upstream_observer(&self) -> Observer {
        Arc::new(UpstreamMetrics {
            requests: self.upstream_requests.clone(),
            duration: self.upstream_duration.clone(),
            waits: self.rate_limit_waits.clone(),
            waited: self.rate_limit_wait_seconds.clone(),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The upstream families, as the clients' observer.
struct UpstreamMetrics {
    requests: Family<UpstreamRequestLabels, Counter>,
    duration: Family<UpstreamOperationLabels, Histogram, fn() -> Histogram>,
    waits: Family<UpstreamLabels, Counter>,
    waited: Family<UpstreamLabels, Counter<f64>>,
}

/// `create plan` → `create_plan`, `list add-ons` → `list_add_ons`.
fn operation_label(operation: &str) -> String {
    operation
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl UpstreamObserver for UpstreamMetrics {
    fn exchanged(
        &self,
        upstream: Upstream,
        operation: &'static str,
        status: CallStatus,
        elapsed: Duration,
    ) {
        let operation = operation_label(operation);
        self.requests
            .get_or_create(&UpstreamRequestLabels {
                upstream: upstream.as_str(),
                operation: operation.clone(),
                status: status.as_str(),
            })
            .inc();
        self.duration
            .get_or_create(&UpstreamOperationLabels {
                upstream: upstream.as_str(),
                operation,
            })
            .observe(elapsed.as_secs_f64());
    }

    fn rate_limit_waited(&self, upstream: Upstream, waited: Duration) {
        let labels = UpstreamLabels {
            upstream: upstream.as_str(),
        };
        self.waits.get_or_create(&labels).inc();
        self.waited
            .get_or_create(&labels)
            .inc_by(waited.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_snake_case_and_names_carry_units() {
        let metrics = Metrics::default();
        metrics.webhook(WebhookOutcome::TooLarge);
        metrics.provisioned(ResourceLabel::Plan, ProvisioningOutcome::NotOurs);
        metrics.upstream_observer().exchanged(
            Upstream::Recurly,
            "list add-ons",
            CallStatus::Throttled,
            Duration::from_millis(12),
        );
        let text = metrics.encode();
        for expected in [
            r#"billing_bridge_webhooks_received_total{outcome="too_large"} 1"#,
            r#"billing_bridge_provisioning_total{resource="plan",outcome="not_ours"} 1"#,
            r#"billing_bridge_upstream_requests_total{upstream="recurly",operation="list_add_ons",status="429"} 1"#,
            r#"billing_bridge_upstream_request_duration_seconds_count{upstream="recurly",operation="list_add_ons"} 1"#,
            r#"billing_bridge_mailbox_depth_messages{actor="plan_provisioner"} 0"#,
            r#"billing_bridge_rate_limit_wait_seconds_total{upstream="amplify"} 0"#,
            "billing_bridge_store_up 1",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(name.starts_with("billing_bridge_"), "{name}");
            let values = line.split('"').skip(1).step_by(2);
            for value in values.filter(|v| *v != "+Inf") {
                assert!(!value.contains(char::is_uppercase), "{line}");
            }
        }
    }
}
