//! What every Amplify event goes through before a provisioner sees it, whichever way it came (a
//! webhook, or a WatchTopic read): the organization, the interest, the name, the pipeline, then
//! the dedupe claim and the queue. The two callers differ only in what they answer.

use std::time::Duration;

use billing_bridge_amplify::{EventType, WebhookEnvelope};
use billing_bridge_config::BridgeConfig;
use billing_bridge_domain::events::{
    ChangeType, EventPayload, ResourceEvent, ResourceKind, event_of_interest,
    watch_event_of_interest,
};
use billing_bridge_domain::trust::amplify_name;
use billing_bridge_store::{Claim, Store, StoreError};

use crate::metrics::WebhookIgnored;

/// How long an event is held as "processing" while it is being queued.
const CLAIM_HOLD: Duration = Duration::from_secs(30);
/// How long a copy waits for the caller accepting the same event right now, and how often it
/// looks: the outcome usually comes within milliseconds.
const IN_FLIGHT_WAIT: Duration = Duration::from_millis(250);
const IN_FLIGHT_POLL: Duration = Duration::from_millis(2);
/// How long an accepted event id is remembered, so replays (a webhook and the WatchTopic's copy
/// of the same event among them) are recognised.
const DONE_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// What brought the event: its payload is read by that source's rule (a WatchTopic's payload
/// is thin, reference §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Webhook,
    WatchTopic,
}

/// Why an event is not queued.
#[derive(Debug)]
pub enum NotAdmitted {
    /// Looked at and left alone (counted by reason).
    Ignored(WebhookIgnored),
    /// Its resource name is no Amplify name (`../../management`): it would become a URL path
    /// segment of the provisioner's reads.
    BadName(String),
}

/// The rules, in order: only the configured organization's events (reference §4.3:
/// `organization.id` is the provider organization the event was sent for), only changes a
/// provisioner needs, only Amplify names, only pipelines that are on.
pub fn admit(
    config: &BridgeConfig,
    envelope: &WebhookEnvelope<EventPayload>,
    source: Source,
) -> Result<ResourceEvent, NotAdmitted> {
    if let Some(tenant) = config
        .amplify
        .tenant_id
        .as_deref()
        .filter(|t| !t.is_empty())
        && envelope.organization.as_ref().map(|o| o.id.as_str()) != Some(tenant)
    {
        return Err(NotAdmitted::Ignored(WebhookIgnored::OtherOrganization));
    }
    let change = match envelope.event_type {
        EventType::ResourceCreated => ChangeType::Created,
        EventType::ResourceUpdated => ChangeType::Updated,
        EventType::ResourceDeleted => ChangeType::Deleted,
        EventType::SubResourceUpdated => ChangeType::SubResourceUpdated,
    };
    let rule = match source {
        Source::Webhook => event_of_interest,
        Source::WatchTopic => watch_event_of_interest,
    };
    let event = rule(
        &envelope.id,
        change,
        envelope.subresource(),
        &envelope.payload,
        envelope.correlation_id.as_deref(),
    )
    .ok_or(NotAdmitted::Ignored(WebhookIgnored::NotOfInterest))?;
    amplify_name(&event.name).map_err(|e| NotAdmitted::BadName(e.to_string()))?;
    let enabled = match event.kind {
        ResourceKind::ProductPlan => config.provisioning.plans,
        ResourceKind::Subscription => config.provisioning.subscriptions,
    };
    if !enabled {
        return Err(NotAdmitted::Ignored(WebhookIgnored::PipelineOff));
    }
    Ok(event)
}

/// What became of an admitted event.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    /// In its kind's queue, its id remembered.
    Queued,
    /// Queued before (by this or another caller).
    Duplicate,
}

/// Why an admitted event is not queued yet; the sender (or the next read) tries again.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the same event is being accepted right now")]
    InFlight,
    #[error("{0}")]
    Store(StoreError),
}

/// Queues `event` once per event id: claims the id (waiting a little for a copy being accepted
/// right now), queues it, then remembers the id. A claim whose queueing failed is released, so
/// the resend is taken.
pub async fn queue_once(store: &Store, event: ResourceEvent) -> Result<Queued, QueueError> {
    let id = event.event_id.clone();
    let waited_until = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    loop {
        match store.claim_event(&id, CLAIM_HOLD).await {
            Ok(Claim::Done) => return Ok(Queued::Duplicate),
            Ok(Claim::InFlight) if tokio::time::Instant::now() < waited_until => {
                tokio::time::sleep(IN_FLIGHT_POLL).await;
            }
            Ok(Claim::InFlight) => return Err(QueueError::InFlight),
            Ok(Claim::Claimed) => break,
            Err(e) => return Err(QueueError::Store(e)),
        }
    }
    if let Err(e) = store.enqueue(event).await {
        let _ = store.abandon_event(&id).await;
        return Err(QueueError::Store(e));
    }
    // Queued: a replay from here on is a duplicate. If marking fails, the worst case is a replay
    // processed twice, which level-triggered provisioning absorbs.
    let _ = store.finish_event(&id, DONE_KEEP).await;
    Ok(Queued::Queued)
}
