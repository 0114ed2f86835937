//! The Reconciler's pass: Amplify never retries a webhook, so every so often the bridge lists
//! plans, quotas, pending subscriptions and the subscriptions it billed, and queues, through the
//! same path as webhooks, each resource whose billing side does not match (an ended or deleted
//! subscription still billed included). The decision is made locally from a few list
//! calls, so a pass costs a handful of Amplify requests however many plans there are.

use std::collections::{BTreeMap, BTreeSet};

use billing_bridge_amplify::Lane;
use billing_bridge_domain::amplify::{Resource, Subscription};
use billing_bridge_domain::codes::{billing_plan_code, usage_add_on_code};
use billing_bridge_domain::events::{ResourceEvent, ResourceKind, link_attributes};
use billing_bridge_domain::plan::{
    BILLING_SYSTEM_ATTRIBUTE, BILLING_SYSTEM_RECURLY, PlanAction, plan_action,
};
use billing_bridge_domain::trust::adopted_link;
use serde_json::Value;

use crate::Bridge;
use crate::provision::{ProvisionError, catalog_collection};
use crate::subscription::has_ended;

/// What one pass found and queued.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileSummary {
    pub plans_seen: usize,
    pub subscriptions_seen: usize,
    pub queued: usize,
    /// Subscriptions the bridge billed that Amplify lists as ended or no longer lists: queued
    /// to be confirmed one by one and their billing ended.
    pub ended: usize,
    /// Resources that needed work but found the queue full; the next pass picks them up.
    pub deferred: usize,
}

fn event(pass: &str, kind: ResourceKind, resource: &Resource) -> Option<ResourceEvent> {
    let id = resource.id()?;
    Some(ResourceEvent {
        event_id: format!("reconcile:{pass}:{id}"),
        kind,
        name: resource.name()?.to_owned(),
        resource_id: id.to_owned(),
        self_link: resource.self_link()?.to_owned(),
        deleted: false,
        correlation_id: Some(format!("reconcile:{pass}")),
        billing_id: None,
        attempt: 0,
        // The pass's span: its queued work continues the pass's trace.
        trace_parent: crate::trace::traceparent(&tracing::Span::current()),
    })
}

/// Whether a plan's billing side differs from what its state asks for.
async fn plan_needs_work(
    bridge: &Bridge,
    plan: &Resource,
    priced_quota_ids: &[String],
) -> Result<bool, ProvisionError> {
    let linked = plan.attribute(link_attributes::PLAN_CODE).is_some();
    let Some(id) = plan.id() else {
        return Ok(false);
    };
    let code = billing_plan_code(id).map_err(|e| ProvisionError::Data(e.to_string()))?;
    Ok(match plan_action(plan.state(), false) {
        PlanAction::Wait => false,
        PlanAction::Provision if !linked => true,
        PlanAction::Provision => {
            let existing: BTreeSet<String> = bridge
                .recurly
                .plan_add_ons(&code)
                .await?
                .into_iter()
                .map(|a| a.code)
                .collect();
            priced_quota_ids
                .iter()
                .filter_map(|q| usage_add_on_code(q).ok())
                .any(|code| !existing.contains(&code))
        }
        PlanAction::Deactivate => {
            linked
                && bridge
                    .recurly
                    .plan(&code)
                    .await?
                    .is_some_and(|p| p.state == "active")
        }
    })
}

/// Marks the first reconcile pass a store has seen: the one that adopts the links of
/// subscriptions billed by releases that kept no link of their own (`trust::adopted_link`).
const ADOPTION_MARK: &str = "subscription-links:adopted";

/// Queues each subscription the bridge linked (its own store) that Amplify lists as ended, or
/// lists no more (deleted while the bridge was down, or its webhook lost). One list call per
/// page; the provisioner confirms each candidate by its id before anything ends.
async fn ended_candidates(
    bridge: &Bridge,
    pass: &str,
    queue: &mut Vec<ResourceEvent>,
) -> Result<usize, ProvisionError> {
    // Whole resources: adoption reads them as typed Subscriptions.
    let listed: Vec<Value> = bridge
        .amplify
        .lane(Lane::Reconciliation)
        .list(
            &catalog_collection(bridge, "subscriptions"),
            Some(&format!(
                "attributes.{}==*",
                link_attributes::SUBSCRIPTION_ID
            )),
        )
        .await?;
    let mut links = bridge
        .store
        .subscription_links()
        .await
        .map_err(ProvisionError::Store)?;
    // After an upgrade: take up what the earlier release billed, once, while it is still live.
    if bridge
        .store
        .first_time(ADOPTION_MARK)
        .await
        .map_err(ProvisionError::Store)?
    {
        let known: BTreeSet<String> = links.iter().map(|l| l.amplify_id.clone()).collect();
        for subscription in listed.iter().filter(|s| !has_ended(&Resource::read(s))) {
            let adopted = serde_json::from_value::<Subscription>(subscription.clone())
                .ok()
                .and_then(|s| adopted_link(&s))
                .filter(|l| !known.contains(&l.amplify_id));
            if let Some(link) = adopted {
                bridge
                    .store
                    .link_subscription(&link)
                    .await
                    .map_err(ProvisionError::Store)?;
                links.push(link);
            }
        }
    }
    let live: BTreeSet<String> = listed
        .iter()
        .map(Resource::read)
        .filter(|s| !has_ended(s))
        .filter_map(|s| s.id().map(str::to_owned))
        .collect();
    let mut candidates = 0;
    for link in links
        .into_iter()
        .filter(|l| !live.contains(l.amplify_id.as_str()))
    {
        candidates += 1;
        queue.push(ResourceEvent {
            event_id: format!("reconcile:{pass}:{}", link.amplify_id),
            kind: ResourceKind::Subscription,
            name: link.amplify_name,
            resource_id: link.amplify_id,
            self_link: String::new(),
            deleted: false,
            correlation_id: Some(format!("reconcile:{pass}")),
            billing_id: None,
            attempt: 0,
            trace_parent: crate::trace::traceparent(&tracing::Span::current()),
        });
    }
    Ok(candidates)
}

pub async fn reconcile(bridge: &Bridge, pass: &str) -> Result<ReconcileSummary, ProvisionError> {
    let version = &bridge.config.amplify.api_version;
    let mut summary = ReconcileSummary::default();
    let mut queue = Vec::new();
    let plans: Vec<Resource> = bridge
        .amplify
        .lane(Lane::Reconciliation)
        .list_as(&format!("/catalog/{version}/productplans"), None)
        .await?;
    summary.plans_seen = plans.len();
    let linked_plans: BTreeSet<String> = plans
        .iter()
        .filter(|p| p.attribute(link_attributes::PLAN_CODE).is_some())
        .filter_map(|p| p.name().map(str::to_owned))
        .collect();
    if bridge.config.provisioning.plans {
        let billed_products: BTreeSet<String> = bridge
            .amplify
            .lane(Lane::Reconciliation)
            .lane(Lane::Reconciliation)
            .list_as::<Resource>(
                &format!("/catalog/{version}/products"),
                Some(&format!(
                    "attributes.{BILLING_SYSTEM_ATTRIBUTE}=={BILLING_SYSTEM_RECURLY}"
                )),
            )
            .await?
            .iter()
            .filter_map(|p| p.name().map(str::to_owned))
            .collect();
        let mut priced_quotas: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for quota in bridge
            .amplify
            .lane(Lane::Reconciliation)
            .lane(Lane::Reconciliation)
            .list_as::<Resource>(&format!("/catalog/{version}/quotas"), None)
            .await?
        {
            let priced = matches!(
                quota.pricing_type(),
                Some("graduated" | "volume" | "perunit" | "perUnit")
            );
            if let (true, Some(plan), Some(id)) = (priced, quota.scope_name(), quota.id()) {
                priced_quotas
                    .entry(plan.to_owned())
                    .or_default()
                    .push(id.to_owned());
            }
        }
        for plan in &plans {
            let billed = plan.product().is_some_and(|p| billed_products.contains(p))
                && plan.plan_type() == Some("paid");
            let name = plan.name().unwrap_or_default();
            let quotas = priced_quotas
                .get(name)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if billed && plan_needs_work(bridge, plan, quotas).await? {
                queue.extend(event(pass, ResourceKind::ProductPlan, plan));
            }
        }
    }
    if bridge.config.provisioning.subscriptions {
        let pending = bridge
            .amplify
            .lane(Lane::Reconciliation)
            .lane(Lane::Reconciliation)
            .list_as::<Resource>(
                &format!("/catalog/{version}/subscriptions"),
                Some("approval.state==pending"),
            )
            .await?;
        summary.subscriptions_seen = pending.len();
        for subscription in &pending {
            // A pending subscription of a plan the bridge does not bill is not ours.
            if subscription
                .plan_name()
                .is_some_and(|p| linked_plans.contains(p))
            {
                queue.extend(event(pass, ResourceKind::Subscription, subscription));
            }
        }
        summary.ended = ended_candidates(bridge, pass, &mut queue).await?;
    }
    for event in queue {
        match bridge.store.enqueue(event).await {
            Ok(()) => summary.queued += 1,
            Err(_) => summary.deferred += 1,
        }
    }
    Ok(summary)
}
