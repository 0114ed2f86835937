//! Typed views of the Amplify resources the rules read (Product, ProductPlan, Quota,
//! Subscription). Tolerant: unknown fields are ignored, both `v1` and `v1alpha1` shapes parse.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Metadata {
    pub id: String,
    #[serde(rename = "selfLink", default)]
    pub self_link: Option<String>,
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub references: Vec<Reference>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Reference {
    #[serde(default)]
    pub id: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Product {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub metadata: Metadata,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ProductPlan {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub metadata: Metadata,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub spec: PlanSpec,
    /// Lifecycle subresource: `draft | active | deprecated | archived` (reference §3.2).
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PlanSpec {
    #[serde(default)]
    pub product: String,
    /// `free | paid | custom`.
    #[serde(rename = "type", default)]
    pub plan_type: Option<String>,
    #[serde(default)]
    pub billing: Option<PlanBilling>,
    #[serde(default)]
    pub subscription: Option<PlanSubscription>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PlanBilling {
    #[serde(default)]
    pub currency: Option<String>,
    /// Base price per billing interval.
    #[serde(default)]
    pub price: Option<f64>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub setup: Option<SetupFee>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SetupFee {
    #[serde(default)]
    pub price: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PlanSubscription {
    /// `manual | automatic`.
    #[serde(default)]
    pub approval: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Quota {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: QuotaSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct QuotaSpec {
    /// `transactions`, or the name of a custom ProductPlanUnit.
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub pricing: Option<QuotaPricing>,
    /// Asset resources whose traffic this quota counts.
    #[serde(default)]
    pub resources: Vec<ResourceRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ResourceRef {
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
}

/// How a quota is priced (reference §3.3), discriminated by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum QuotaPricing {
    /// "Standard": a fixed limit per interval, no usage price.
    #[serde(rename = "fixed")]
    Fixed {},
    #[serde(rename = "unlimited")]
    Unlimited {},
    /// "Pay Per Use". The spelling `perunit` is seen only in an Axway employee's generator
    /// (reference §3.3, open question 4); `perUnit` is accepted too in case the API follows the
    /// SDK's type name.
    #[serde(rename = "perunit", alias = "perUnit")]
    PerUnit { cost: f64 },
    /// "Tiered – Graduated": each unit priced at its own tier.
    #[serde(rename = "graduated")]
    Graduated { limit: TierLimit },
    /// "Tiered – Volume": all units priced at the tier the total reaches.
    #[serde(rename = "volume")]
    Volume { limit: TierLimit },
    /// A pricing type this version does not know; never billed.
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TierLimit {
    #[serde(default)]
    pub tiers: Vec<AmplifyTier>,
}

/// One tier as Amplify states it: units `from..=to` cost `cost` each, plus `flatFee` once when
/// the tier is reached.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct AmplifyTier {
    pub from: i64,
    pub to: i64,
    #[serde(default)]
    pub cost: f64,
    #[serde(rename = "flatFee", default)]
    pub flat_fee: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Subscription {
    pub name: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: SubscriptionSpec,
    #[serde(default)]
    pub marketplace: Option<SubscriptionMarketplace>,
    #[serde(default)]
    pub approval: Option<Approval>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SubscriptionSpec {
    #[serde(default)]
    pub product: String,
    #[serde(default)]
    pub plan: Option<NamedRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct NamedRef {
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Approval {
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SubscriptionMarketplace {
    #[serde(default)]
    pub resource: Option<MarketplaceResource>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct MarketplaceResource {
    #[serde(default)]
    pub owner: Option<Owner>,
}

/// Who owns a subscription (reference §3.4): a team, in an organization, and a user when the
/// team is the user's private one.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Owner {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub organization: Option<IdRef>,
    #[serde(default)]
    pub user: Option<IdRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct IdRef {
    pub id: String,
}
