//! What intake queues: "look at resource X". Provisioning is level-triggered, so an event only
//! names the resource; the provisioner reads its current state (design.md §1).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds of resource the bridge acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    ProductPlan,
    Subscription,
}

impl ResourceKind {
    pub fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "ProductPlan" => Some(ResourceKind::ProductPlan),
            "Subscription" => Some(ResourceKind::Subscription),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ResourceKind::ProductPlan => "plan",
            ResourceKind::Subscription => "subscription",
        }
    }
}

/// One accepted event, as queued for a provisioner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceEvent {
    /// Amplify's event id (the dedupe key), or `reconcile:…` for the reconciler's own events.
    pub event_id: String,
    pub kind: ResourceKind,
    pub name: String,
    /// `metadata.id`: still known when the resource is gone.
    pub resource_id: String,
    /// `metadata.selfLink`, so the provisioner reads the same API version Amplify sent.
    pub self_link: String,
    /// The event said the resource was deleted.
    pub deleted: bool,
    /// Amplify's `correlationId`, carried into traces and logs.
    pub correlation_id: Option<String>,
    /// The billing id the resource was linked to when the event was sent (from its attributes),
    /// so a deleted resource can still be found in the billing platform.
    pub billing_id: Option<String>,
    /// How many passes over this event ended in "try again later" so far.
    #[serde(default)]
    pub attempt: u32,
}

/// The Amplify attributes that link a resource to its billing twin. The names the replaced
/// integration used are unknown (Amplify reference §6); these are ours, in one place.
pub mod link_attributes {
    pub const PLAN_CODE: &str = "recurlyPlanCode";
    pub const PLAN_ID: &str = "recurlyPlanId";
    pub const SUBSCRIPTION_ID: &str = "recurlySubscriptionId";
    pub const SUBSCRIPTION_UUID: &str = "recurlySubscriptionUuid";
    pub const ACCOUNT_CODE: &str = "recurlyAccountCode";
}

/// The webhook event types (reference §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
    SubResourceUpdated,
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// Which webhook events need a provisioner, and for which resource. Only the resource is named;
/// the provisioner reads its current state. Plans matter when their lifecycle state changes or
/// they are deleted; a quota change means its plan may need a new add-on; subscriptions matter
/// when their approval becomes pending, their state changes, or they are deleted (reference
/// §4.3, §4.4). `None`: not ours, nothing to do.
pub fn event_of_interest(
    event_id: &str,
    change: ChangeType,
    subresource: Option<&str>,
    payload: &Value,
    correlation_id: Option<&str>,
) -> Option<ResourceEvent> {
    let kind = text(payload, "/kind")?;
    let name = text(payload, "/name")?.to_owned();
    let resource_id = text(payload, "/metadata/id").unwrap_or_default().to_owned();
    let self_link = text(payload, "/metadata/selfLink")
        .unwrap_or_default()
        .to_owned();
    let deleted = change == ChangeType::Deleted;
    let event =
        |kind, name: String, resource_id: String, self_link: String, billing_id: Option<&str>| {
            ResourceEvent {
                event_id: event_id.to_owned(),
                kind,
                name,
                resource_id,
                self_link,
                deleted,
                correlation_id: correlation_id.map(str::to_owned),
                billing_id: billing_id.map(str::to_owned),
                attempt: 0,
            }
        };
    match kind {
        "ProductPlan" => {
            let relevant = deleted
                || (change == ChangeType::SubResourceUpdated && subresource == Some("state"))
                // A plan created or updated while already active (imports, `apply` of a whole
                // resource) carries its state in the payload.
                || (matches!(change, ChangeType::Created | ChangeType::Updated)
                    && text(payload, "/state").is_some_and(|s| s != "draft"));
            relevant.then(|| {
                let code = text(
                    payload,
                    &format!("/attributes/{}", link_attributes::PLAN_CODE),
                );
                event(
                    ResourceKind::ProductPlan,
                    name,
                    resource_id,
                    self_link,
                    code,
                )
            })
        }
        "Quota" => {
            // A quota added to (or removed from) a plan: look at the plan.
            if change == ChangeType::SubResourceUpdated {
                return None;
            }
            let plan = text(payload, "/metadata/scope/name")?.to_owned();
            let plan_id = text(payload, "/metadata/scope/id")
                .unwrap_or_default()
                .to_owned();
            let plan_link = text(payload, "/metadata/scope/selfLink")
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    self_link
                        .split("/quotas/")
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                });
            let mut e = event(ResourceKind::ProductPlan, plan, plan_id, plan_link, None);
            e.deleted = false;
            Some(e)
        }
        "Subscription" => {
            let billing_id = text(
                payload,
                &format!("/attributes/{}", link_attributes::SUBSCRIPTION_ID),
            );
            let relevant = deleted
                || (change == ChangeType::SubResourceUpdated
                    && match subresource {
                        Some("approval") => text(payload, "/approval/state") == Some("pending"),
                        Some("state") => true,
                        _ => false,
                    });
            relevant.then(|| {
                event(
                    ResourceKind::Subscription,
                    name,
                    resource_id,
                    self_link,
                    billing_id,
                )
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscription(approval: &str) -> Value {
        json!({"kind":"Subscription","name":"s1","metadata":{"id":"id-s1","selfLink":"/catalog/v1alpha1/subscriptions/s1"},
               "approval":{"state":approval},"attributes":{"recurlySubscriptionId":"rs1"}})
    }

    #[test]
    fn a_pending_approval_is_of_interest_and_the_rest_of_the_creation_sequence_is_not() {
        let pending = event_of_interest(
            "e1",
            ChangeType::SubResourceUpdated,
            Some("approval"),
            &subscription("pending"),
            Some("c1"),
        )
        .unwrap();
        assert_eq!(pending.kind, ResourceKind::Subscription);
        assert_eq!(pending.self_link, "/catalog/v1alpha1/subscriptions/s1");
        assert_eq!(pending.correlation_id.as_deref(), Some("c1"));
        assert_eq!(pending.billing_id.as_deref(), Some("rs1"));
        for (change, sub) in [
            (ChangeType::Created, None),
            (ChangeType::SubResourceUpdated, Some("status")),
            (ChangeType::SubResourceUpdated, Some("marketplace")),
        ] {
            assert!(
                event_of_interest("e", change, sub, &subscription("pending"), None).is_none(),
                "{change:?} {sub:?}"
            );
        }
        assert!(
            event_of_interest(
                "e",
                ChangeType::SubResourceUpdated,
                Some("approval"),
                &subscription("approved"),
                None
            )
            .is_none()
        );
        let gone = event_of_interest(
            "e",
            ChangeType::Deleted,
            None,
            &subscription("approved"),
            None,
        )
        .unwrap();
        assert!(gone.deleted);
    }

    #[test]
    fn plan_state_changes_and_quota_changes_name_the_plan() {
        let plan = json!({"kind":"ProductPlan","name":"silver","metadata":{"id":"p1","selfLink":"/catalog/v1/productplans/silver"},"state":"active"});
        let activated = event_of_interest(
            "e",
            ChangeType::SubResourceUpdated,
            Some("state"),
            &plan,
            None,
        )
        .unwrap();
        assert_eq!(
            (activated.kind, activated.name.as_str()),
            (ResourceKind::ProductPlan, "silver")
        );
        let draft = json!({"kind":"ProductPlan","name":"d","metadata":{"id":"p2"},"state":"draft"});
        assert!(event_of_interest("e", ChangeType::Created, None, &draft, None).is_none());
        let quota = json!({"kind":"Quota","name":"q","metadata":{"id":"q1","selfLink":"/catalog/v1/productplans/silver/quotas/q",
                           "scope":{"id":"p1","kind":"ProductPlan","name":"silver"}}});
        let added = event_of_interest("e", ChangeType::Created, None, &quota, None).unwrap();
        assert_eq!(
            (
                added.name.as_str(),
                added.self_link.as_str(),
                added.resource_id.as_str()
            ),
            ("silver", "/catalog/v1/productplans/silver", "p1")
        );
        assert!(
            event_of_interest(
                "e",
                ChangeType::Created,
                None,
                &json!({"kind":"Product","name":"x"}),
                None
            )
            .is_none()
        );
    }
}
