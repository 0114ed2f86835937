//! What intake queues: "look at resource X". Provisioning is level-triggered, so an event only
//! names the resource; the provisioner reads its current state (design.md §1).

use serde::{Deserialize, Serialize};

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
}
