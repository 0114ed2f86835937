//! The parts of Recurly's objects billing-bridge reads. Unknown fields are ignored, so Recurly
//! may add fields without breaking us.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Plan {
    pub id: String,
    pub code: String,
    pub state: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub currencies: Vec<PlanPricing>,
    #[serde(default)]
    pub interval_unit: Option<String>,
    #[serde(default)]
    pub interval_length: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PlanPricing {
    pub currency: String,
    #[serde(default)]
    pub unit_amount: Option<f64>,
    #[serde(default)]
    pub setup_fee: Option<f64>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AddOn {
    pub id: String,
    pub code: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub add_on_type: Option<String>,
    #[serde(default)]
    pub usage_type: Option<String>,
    #[serde(default)]
    pub tier_type: Option<String>,
    #[serde(default)]
    pub tiers: Option<Vec<Tier>>,
    #[serde(default)]
    pub currencies: Option<Vec<AddOnPricing>>,
    #[serde(default)]
    pub measured_unit_id: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Tier {
    #[serde(default)]
    pub ending_quantity: Option<u64>,
    #[serde(default)]
    pub currencies: Vec<AddOnPricing>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AddOnPricing {
    pub currency: String,
    #[serde(default)]
    pub unit_amount: Option<f64>,
    #[serde(default)]
    pub unit_amount_decimal: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct MeasuredUnit {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Account {
    pub id: String,
    pub code: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Mini {
    pub id: String,
    #[serde(default)]
    pub code: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SubscriptionAddOn {
    pub id: String,
    pub add_on: Mini,
    #[serde(default)]
    pub quantity: Option<u64>,
    /// `flat`, `tiered`, `stairstep` or `volume`: what Recurly does with a back-dated record.
    #[serde(default)]
    pub tier_type: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub uuid: String,
    pub state: String,
    pub plan: Mini,
    pub account: Mini,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub add_ons: Vec<SubscriptionAddOn>,
    #[serde(default)]
    pub current_period_started_at: Option<String>,
    #[serde(default)]
    pub current_period_ends_at: Option<String>,
    #[serde(default)]
    pub trial_started_at: Option<String>,
    #[serde(default)]
    pub trial_ends_at: Option<String>,
    #[serde(default)]
    pub activated_at: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// An invoice, as far as the bridge reads it (a past-due one is told to the provider).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Invoice {
    pub id: String,
    #[serde(default)]
    pub number: Option<String>,
    pub state: String,
    #[serde(default)]
    pub account: Option<Mini>,
    #[serde(default)]
    pub subscription_ids: Vec<String>,
    #[serde(default)]
    pub total: Option<f64>,
    #[serde(default)]
    pub balance: Option<f64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub due_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Usage {
    pub id: String,
    #[serde(default)]
    pub amount: Option<f64>,
    #[serde(default)]
    pub merchant_tag: Option<String>,
    #[serde(default)]
    pub usage_timestamp: Option<String>,
}

/// One page of a list (reference §1.2).
#[derive(Debug, Deserialize)]
pub(crate) struct Page<T> {
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub next: Option<String>,
    pub data: Vec<T>,
}
