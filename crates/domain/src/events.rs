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
    /// `metadata.selfLink` as the event claimed it: for logs only. The provisioner builds every
    /// URL from `kind` and `name` (a checked Amplify name), never from this.
    pub self_link: String,
    /// The event said the resource was deleted: a hint; the provisioner re-reads and confirms.
    pub deleted: bool,
    /// Amplify's `correlationId`, carried into traces and logs.
    pub correlation_id: Option<String>,
    /// The billing id the event's body claimed (its link attribute): for logs only. What the
    /// bridge ends is what its own store linked (`trust::SubscriptionLink`), never this.
    pub billing_id: Option<String>,
    /// How many passes over this event ended in "try again later" so far.
    #[serde(default)]
    pub attempt: u32,
    /// W3C `traceparent` of the span that accepted the event, so the provisioning pass that
    /// takes it from the queue continues the same trace. `None` when traces are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
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

/// The parts of a webhook payload (the resource after the change) that [`event_of_interest`]
/// reads. Intake deserializes only these and skips the rest of the resource, instead of building
/// the whole resource as a `Value` tree for every webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EventPayload {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub metadata: Option<PayloadMetadata>,
    /// A plan's lifecycle state (`"active"`). A subscription's `state` is an object
    /// (`{"name": "active"}`), which the rules do not read: anything but text counts as absent.
    #[serde(deserialize_with = "text_or_absent")]
    pub state: Option<String>,
    pub approval: Option<PayloadApproval>,
    pub attributes: Option<PayloadAttributes>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PayloadMetadata {
    pub id: Option<String>,
    #[serde(rename = "selfLink")]
    pub self_link: Option<String>,
    /// The owning resource, for scoped kinds (a Quota's plan).
    pub scope: Option<PayloadScope>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PayloadScope {
    pub id: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "selfLink")]
    pub self_link: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PayloadApproval {
    pub state: Option<String>,
}

/// The link attributes a payload may already carry (see [`link_attributes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PayloadAttributes {
    #[serde(rename = "recurlyPlanCode")]
    pub plan_code: Option<String>,
    #[serde(rename = "recurlySubscriptionId")]
    pub subscription_id: Option<String>,
}

/// Text as itself; anything else (an object, a number, null) as absent, skipped without being
/// built.
fn text_or_absent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct TextOrAbsent;

    impl<'de> Visitor<'de> for TextOrAbsent {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }

        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    d.deserialize_any(TextOrAbsent)
}

impl EventPayload {
    /// The payload parts of a resource already parsed as JSON.
    pub fn from_value(value: &Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(value)
    }

    fn metadata(&self) -> Option<&PayloadMetadata> {
        self.metadata.as_ref()
    }

    fn attributes(&self) -> Option<&PayloadAttributes> {
        self.attributes.as_ref()
    }
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
    payload: &EventPayload,
    correlation_id: Option<&str>,
) -> Option<ResourceEvent> {
    let kind = payload.kind.as_deref()?;
    let name = payload.name.clone()?;
    let metadata = payload.metadata();
    let resource_id = metadata.and_then(|m| m.id.clone()).unwrap_or_default();
    let self_link = metadata
        .and_then(|m| m.self_link.clone())
        .unwrap_or_default();
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
                trace_parent: None,
            }
        };
    match kind {
        "ProductPlan" => {
            let relevant = deleted
                || (change == ChangeType::SubResourceUpdated && subresource == Some("state"))
                // A plan created or updated while already active (imports, `apply` of a whole
                // resource) carries its state in the payload.
                || (matches!(change, ChangeType::Created | ChangeType::Updated)
                    && payload.state.as_deref().is_some_and(|s| s != "draft"));
            relevant.then(|| {
                let code = payload.attributes().and_then(|a| a.plan_code.as_deref());
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
            let scope = metadata.and_then(|m| m.scope.as_ref());
            let plan = scope.and_then(|s| s.name.clone())?;
            let plan_id = scope.and_then(|s| s.id.clone()).unwrap_or_default();
            let plan_link = scope.and_then(|s| s.self_link.clone()).unwrap_or_else(|| {
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
            let billing_id = payload
                .attributes()
                .and_then(|a| a.subscription_id.as_deref());
            let relevant = deleted
                || (change == ChangeType::SubResourceUpdated
                    && match subresource {
                        Some("approval") => {
                            payload.approval.as_ref().and_then(|a| a.state.as_deref())
                                == Some("pending")
                        }
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

/// [`event_of_interest`] for an event read from a WatchTopic. Its payload is thin (reference
/// §4.5: identity, attributes, tags and metadata; no spec, no subresources), so a condition on
/// a subresource it lacks is taken as met: an approval change may be the pending one, a plan
/// created or updated may be active. The provisioner reads the resource and decides.
pub fn watch_event_of_interest(
    event_id: &str,
    change: ChangeType,
    subresource: Option<&str>,
    payload: &EventPayload,
    correlation_id: Option<&str>,
) -> Option<ResourceEvent> {
    let mut assumed = payload.clone();
    match payload.kind.as_deref() {
        Some("Subscription") if assumed.approval.is_none() => {
            assumed.approval = Some(PayloadApproval {
                state: Some("pending".into()),
            });
        }
        Some("ProductPlan") if assumed.state.is_none() => {
            assumed.state = Some("active".into());
        }
        _ => {}
    }
    event_of_interest(event_id, change, subresource, &assumed, correlation_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_thin_watch_event_is_of_interest_whenever_the_full_one_might_be() {
        let thin = |kind: &str| {
            payload(json!({"group": "catalog", "kind": kind, "name": "x",
                           "metadata": {"id": "i1", "selfLink": "/catalog/v1/x"}}))
        };
        let sub = thin("Subscription");
        for (change, subresource) in [
            (ChangeType::SubResourceUpdated, Some("approval")),
            (ChangeType::SubResourceUpdated, Some("state")),
            (ChangeType::Deleted, None),
        ] {
            let e = watch_event_of_interest("w1", change, subresource, &sub, None)
                .unwrap_or_else(|| panic!("{change:?} {subresource:?}"));
            assert_eq!((e.kind, e.name.as_str()), (ResourceKind::Subscription, "x"));
            assert_eq!(e.deleted, change == ChangeType::Deleted);
        }
        // What a full payload could not make interesting stays uninteresting.
        for (change, subresource) in [
            (ChangeType::Created, None),
            (ChangeType::SubResourceUpdated, Some("status")),
            (ChangeType::SubResourceUpdated, Some("marketplace")),
        ] {
            assert!(watch_event_of_interest("w", change, subresource, &sub, None).is_none());
        }
        let plan = thin("ProductPlan");
        for change in [
            ChangeType::Created,
            ChangeType::Updated,
            ChangeType::Deleted,
        ] {
            assert!(watch_event_of_interest("w", change, None, &plan, None).is_some());
        }
        assert!(
            watch_event_of_interest("w", ChangeType::Updated, None, &thin("Product"), None)
                .is_none()
        );
        // A full payload is read as the webhook rule reads it.
        assert!(
            watch_event_of_interest(
                "w",
                ChangeType::SubResourceUpdated,
                Some("approval"),
                &subscription("approved"),
                None
            )
            .is_none()
        );
    }

    fn payload(value: Value) -> EventPayload {
        EventPayload::from_value(&value).expect("a payload")
    }

    fn subscription(approval: &str) -> EventPayload {
        payload(
            json!({"kind":"Subscription","name":"s1","metadata":{"id":"id-s1","selfLink":"/catalog/v1alpha1/subscriptions/s1"},
               "approval":{"state":approval},"attributes":{"recurlySubscriptionId":"rs1"},
               "state":{"name":"active"}}),
        )
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
        let plan = payload(
            json!({"kind":"ProductPlan","name":"silver","metadata":{"id":"p1","selfLink":"/catalog/v1/productplans/silver"},"state":"active"}),
        );
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
        let draft = payload(
            json!({"kind":"ProductPlan","name":"d","metadata":{"id":"p2"},"state":"draft"}),
        );
        assert!(event_of_interest("e", ChangeType::Created, None, &draft, None).is_none());
        let quota = payload(
            json!({"kind":"Quota","name":"q","metadata":{"id":"q1","selfLink":"/catalog/v1/productplans/silver/quotas/q",
                           "scope":{"id":"p1","kind":"ProductPlan","name":"silver"}}}),
        );
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
                &payload(json!({"kind":"Product","name":"x"})),
                None
            )
            .is_none()
        );
    }

    #[test]
    fn a_payload_keeps_what_the_rules_read_and_tolerates_the_rest() {
        let captured = payload(
            json!({"group":"catalog","apiVersion":"v1alpha1","kind":"Subscription","name":"finance-starter-free",
            "metadata":{"id":"8a2e8e59","references":[{"kind":"ProductPlan","name":"free"}],"selfLink":"/catalog/v1alpha1/subscriptions/finance-starter-free"},
            "attributes":{"tenantId":"100000142","recurlySubscriptionId":"rs9"},
            "spec":{"plan":{"name":"free"}},"approval":{"state":"pending"},"state":{"name":"active"},
            "status":{"level":"Success"},"finalizers":[],"tags":[]}),
        );
        assert_eq!(
            captured.state, None,
            "a subscription's state object is not a plan state"
        );
        let event = event_of_interest(
            "e",
            ChangeType::SubResourceUpdated,
            Some("approval"),
            &captured,
            None,
        )
        .unwrap();
        assert_eq!(
            (event.resource_id.as_str(), event.billing_id.as_deref()),
            ("8a2e8e59", Some("rs9"))
        );
        let bare = payload(json!({"kind":"ProductPlan","name":"p","metadata":null,"state":null}));
        assert!(event_of_interest("e", ChangeType::Deleted, None, &bare, None).is_some());
    }
}
