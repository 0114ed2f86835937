//! The Reconciler's pass: Amplify never retries a webhook, so every so often the bridge lists
//! plans, quotas and pending subscriptions and queues, through the same path as webhooks, each
//! resource whose billing side does not match. The decision is made locally from a few list
//! calls, so a pass costs a handful of Amplify requests however many plans there are.

use std::collections::{BTreeMap, BTreeSet};

use billing_bridge_domain::codes::{billing_plan_code, usage_add_on_code};
use billing_bridge_domain::events::{ResourceEvent, ResourceKind, link_attributes};
use billing_bridge_domain::plan::{
    BILLING_SYSTEM_ATTRIBUTE, BILLING_SYSTEM_RECURLY, PlanAction, plan_action,
};
use serde_json::Value;

use crate::Bridge;
use crate::provision::{ProvisionError, text};

/// What one pass found and queued.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileSummary {
    pub plans_seen: usize,
    pub subscriptions_seen: usize,
    pub queued: usize,
    /// Resources that needed work but found the queue full; the next pass picks them up.
    pub deferred: usize,
}

fn event(pass: &str, kind: ResourceKind, resource: &Value) -> Option<ResourceEvent> {
    let id = text(resource, "/metadata/id")?;
    Some(ResourceEvent {
        event_id: format!("reconcile:{pass}:{id}"),
        kind,
        name: text(resource, "/name")?.to_owned(),
        resource_id: id.to_owned(),
        self_link: text(resource, "/metadata/selfLink")?.to_owned(),
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
    plan: &Value,
    priced_quota_ids: &[String],
) -> Result<bool, ProvisionError> {
    let linked = text(plan, &format!("/attributes/{}", link_attributes::PLAN_CODE)).is_some();
    let Some(id) = text(plan, "/metadata/id") else {
        return Ok(false);
    };
    let code = billing_plan_code(id).map_err(|e| ProvisionError::Data(e.to_string()))?;
    Ok(match plan_action(text(plan, "/state"), false) {
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

pub async fn reconcile(bridge: &Bridge, pass: &str) -> Result<ReconcileSummary, ProvisionError> {
    let version = &bridge.config.amplify.api_version;
    let mut summary = ReconcileSummary::default();
    let mut queue = Vec::new();
    let plans = bridge
        .amplify
        .list(&format!("/catalog/{version}/productplans"), None)
        .await?;
    summary.plans_seen = plans.len();
    let linked_plans: BTreeSet<String> = plans
        .iter()
        .filter(|p| text(p, &format!("/attributes/{}", link_attributes::PLAN_CODE)).is_some())
        .filter_map(|p| text(p, "/name").map(str::to_owned))
        .collect();
    if bridge.config.provisioning.plans {
        let billed_products: BTreeSet<String> = bridge
            .amplify
            .list(
                &format!("/catalog/{version}/products"),
                Some(&format!(
                    "attributes.{BILLING_SYSTEM_ATTRIBUTE}=={BILLING_SYSTEM_RECURLY}"
                )),
            )
            .await?
            .iter()
            .filter_map(|p| text(p, "/name").map(str::to_owned))
            .collect();
        let mut priced_quotas: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for quota in bridge
            .amplify
            .list(&format!("/catalog/{version}/quotas"), None)
            .await?
        {
            let priced = matches!(
                text(&quota, "/spec/pricing/type"),
                Some("graduated" | "volume" | "perunit" | "perUnit")
            );
            if let (true, Some(plan), Some(id)) = (
                priced,
                text(&quota, "/metadata/scope/name"),
                text(&quota, "/metadata/id"),
            ) {
                priced_quotas
                    .entry(plan.to_owned())
                    .or_default()
                    .push(id.to_owned());
            }
        }
        for plan in &plans {
            let billed = text(plan, "/spec/product").is_some_and(|p| billed_products.contains(p))
                && text(plan, "/spec/type") == Some("paid");
            let name = text(plan, "/name").unwrap_or_default();
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
            .list(
                &format!("/catalog/{version}/subscriptions"),
                Some("approval.state==pending"),
            )
            .await?;
        summary.subscriptions_seen = pending.len();
        for subscription in &pending {
            // A pending subscription of a plan the bridge does not bill is not ours.
            if text(subscription, "/spec/plan/name").is_some_and(|p| linked_plans.contains(p)) {
                queue.extend(event(pass, ResourceKind::Subscription, subscription));
            }
        }
    }
    for event in queue {
        match bridge.store.enqueue(event).await {
            Ok(()) => summary.queued += 1,
            Err(_) => summary.deferred += 1,
        }
    }
    Ok(summary)
}
