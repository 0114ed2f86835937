//! Which Amplify plans are billed, what their lifecycle state asks of the billing platform, and
//! how a plan and its quotas become a billing plan with one usage add-on per priced quota.

use thiserror::Error;

use crate::amplify::{Product, ProductPlan, Quota, QuotaLimit, QuotaPricing};
use crate::codes::{self, CodeError};
use crate::money::{Amount, AmountError};
use crate::tiers::{self, PriceTier, TierError, TierModel};

/// The product attribute that opts a product into billing, and the value that names Recurly
/// (Amplify reference §3.1, §6).
pub const BILLING_SYSTEM_ATTRIBUTE: &str = "billingSystem";
pub const BILLING_SYSTEM_RECURLY: &str = "recurly";
/// Recurly names are at most 255 characters.
const MAX_NAME_CHARS: usize = 255;
/// The unit a quota counts when it names none.
const DEFAULT_MEASURED_UNIT: &str = "transactions";

/// Why a plan is not billed. Not an error: such plans are simply not ours.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Ineligible {
    #[error("product '{product}' is not marked billingSystem=recurly")]
    NotRecurlyProduct { product: String },
    #[error("plan type is '{plan_type}', not 'paid'")]
    NotPaid { plan_type: String },
    #[error("plan approval is '{approval}', not 'manual'")]
    NotManualApproval { approval: String },
    #[error("plan has no graduated, volume, pay-per-use or overage-priced standard quota")]
    NoPricedQuota,
}

impl Ineligible {
    /// A short fixed label, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Ineligible::NotRecurlyProduct { .. } => "not_recurly_product",
            Ineligible::NotPaid { .. } => "not_paid",
            Ineligible::NotManualApproval { .. } => "not_manual_approval",
            Ineligible::NoPricedQuota => "no_priced_quota",
        }
    }
}

/// The overage terms of a Standard quota whose loose limit prices the units past it: the units
/// included and the price of each one over. `None` for a strict limit or a free overage, which
/// bill nothing.
fn overage_terms(limit: Option<&QuotaLimit>) -> Option<(i64, f64)> {
    match limit? {
        QuotaLimit::Loose {
            value,
            overages: Some(overages),
        } if overages.value != 0.0 => Some((*value, overages.value)),
        _ => None,
    }
}

fn is_priced(quota: &Quota) -> bool {
    match &quota.spec.pricing {
        Some(
            QuotaPricing::Graduated { .. }
            | QuotaPricing::Volume { .. }
            | QuotaPricing::PerUnit { .. },
        ) => true,
        Some(QuotaPricing::Fixed { limit, .. }) => overage_terms(limit.as_ref()).is_some(),
        _ => false,
    }
}

/// The seed's rules: the product is billed by Recurly, the plan is paid with manual approval,
/// and at least one quota is priced by usage (tiers, pay per use, or a Standard quota's
/// overage price).
pub fn plan_eligibility(
    product: &Product,
    plan: &ProductPlan,
    quotas: &[Quota],
) -> Result<(), Ineligible> {
    if product
        .attributes
        .get(BILLING_SYSTEM_ATTRIBUTE)
        .map(String::as_str)
        != Some(BILLING_SYSTEM_RECURLY)
    {
        return Err(Ineligible::NotRecurlyProduct {
            product: product.name.clone(),
        });
    }
    let plan_type = plan.spec.plan_type.as_deref().unwrap_or("");
    if plan_type != "paid" {
        return Err(Ineligible::NotPaid {
            plan_type: plan_type.to_owned(),
        });
    }
    let approval = plan
        .spec
        .subscription
        .as_ref()
        .and_then(|s| s.approval.as_deref())
        .unwrap_or("");
    if approval != "manual" {
        return Err(Ineligible::NotManualApproval {
            approval: approval.to_owned(),
        });
    }
    if !quotas.iter().any(is_priced) {
        return Err(Ineligible::NoPricedQuota);
    }
    Ok(())
}

/// What a plan's lifecycle state asks of the billing platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanAction {
    /// Active: the billing plan must exist with every priced quota as an add-on.
    Provision,
    /// Deprecated, archived or deleted: the billing plan must be inactive.
    Deactivate,
    /// Draft (or unknown): nothing to do yet.
    Wait,
}

pub fn plan_action(state: Option<&str>, deleted: bool) -> PlanAction {
    if deleted {
        return PlanAction::Deactivate;
    }
    match state {
        Some("active") => PlanAction::Provision,
        Some("deprecated" | "archived") => PlanAction::Deactivate,
        _ => PlanAction::Wait,
    }
}

/// A billing interval: `length` × `unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntervalUnit {
    Days,
    Months,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BillingInterval {
    pub unit: IntervalUnit,
    pub length: u32,
}

/// Amplify's `spec.billing.interval` as a billing interval. Only `monthly` is verified; the other
/// spellings are inferred from the UI labels (Amplify reference §3.2, open question 3).
pub fn billing_interval(interval: &str) -> Option<BillingInterval> {
    // Amplify's quota `interval` (reference §3.3) uses the same words as the plan's.
    let (unit, length) = match interval.to_ascii_lowercase().as_str() {
        "monthly" => (IntervalUnit::Months, 1),
        "quarterly" => (IntervalUnit::Months, 3),
        "annually" | "annual" | "yearly" => (IntervalUnit::Months, 12),
        "weekly" => (IntervalUnit::Days, 7),
        "daily" => (IntervalUnit::Days, 1),
        _ => return None,
    };
    Some(BillingInterval { unit, length })
}

impl BillingInterval {
    /// The interval as a price reads it: "month", "3 months", "year", "week", "2 days".
    pub fn describe(&self) -> String {
        match (self.unit, self.length) {
            (IntervalUnit::Months, 1) => "month".to_owned(),
            (IntervalUnit::Months, 12) => "year".to_owned(),
            (IntervalUnit::Months, n) if n % 12 == 0 => format!("{} years", n / 12),
            (IntervalUnit::Months, n) => format!("{n} months"),
            (IntervalUnit::Days, 1) => "day".to_owned(),
            (IntervalUnit::Days, 7) => "week".to_owned(),
            (IntervalUnit::Days, n) if n % 7 == 0 => format!("{} weeks", n / 7),
            (IntervalUnit::Days, n) => format!("{n} days"),
        }
    }
}

/// How a usage add-on prices each unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsagePricing {
    /// Pay per use: one price per unit.
    PerUnit { unit_amount: Amount },
    Tiered {
        model: TierModel,
        tiers: Vec<PriceTier>,
    },
}

/// A usage add-on for one priced quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageAddOn {
    pub code: String,
    pub name: String,
    pub accounting_code: String,
    pub measured_unit: String,
    pub pricing: UsagePricing,
    /// The Amplify quota it bills, for linking traffic to it.
    pub quota_id: String,
}

/// A billing plan, provider-neutral: the Recurly client turns it into a `PlanCreate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingPlan {
    pub code: String,
    pub name: String,
    pub description: String,
    pub accounting_code: String,
    pub currency: String,
    pub price: Amount,
    pub setup_fee: Amount,
    pub interval: BillingInterval,
    pub add_ons: Vec<UsageAddOn>,
}

impl BillingPlan {
    /// The recurring price as people read it: "49 USD per month", "10.99 EUR per 3 months".
    pub fn price_per_interval(&self) -> String {
        format!(
            "{} {} per {}",
            self.price,
            self.currency,
            self.interval.describe()
        )
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum PlanMappingError {
    #[error("plan {plan_id}: {source}")]
    Code { plan_id: String, source: CodeError },
    #[error("plan {plan_id} has no billing currency (spec.billing.currency)")]
    MissingCurrency { plan_id: String },
    #[error("plan {plan_id} currency '{currency}' is not a 3-letter ISO 4217 code")]
    BadCurrency { plan_id: String, currency: String },
    #[error(
        "plan {plan_id} billing interval '{interval}' is not one billing-bridge can map (monthly, quarterly, annually, weekly, daily)"
    )]
    UnsupportedInterval { plan_id: String, interval: String },
    #[error("plan {plan_id} price: {source}")]
    Price {
        plan_id: String,
        source: AmountError,
    },
    #[error("plan {plan_id} setup fee: {source}")]
    SetupFee {
        plan_id: String,
        source: AmountError,
    },
    #[error("quota {quota_id} ('{quota}'): {source}")]
    Quota {
        quota_id: String,
        quota: String,
        source: QuotaMappingError,
    },
}

#[derive(Debug, Error, PartialEq)]
pub enum QuotaMappingError {
    #[error("{0}")]
    Code(#[from] CodeError),
    #[error("{0}")]
    Tiers(#[from] TierError),
    #[error("pay-per-use cost: {0}")]
    Cost(#[from] AmountError),
    #[error(
        "its limit counts units per '{quota_interval}' but the plan bills per '{plan_interval}'; Recurly counts a usage add-on's tiers per billing period, so the free units and the overage price can only be billed when the quota's interval equals the plan's billing interval"
    )]
    OverageInterval {
        quota_interval: String,
        plan_interval: String,
    },
}

fn truncated(name: &str) -> String {
    name.chars().take(MAX_NAME_CHARS).collect()
}

/// The plan's billing interval, as Amplify wrote it and as parsed, which a Standard quota's
/// overage interval must equal.
struct PlanInterval<'a> {
    text: &'a str,
    interval: BillingInterval,
}

fn usage_add_on(
    quota: &Quota,
    plan_interval: &PlanInterval<'_>,
) -> Option<Result<UsageAddOn, QuotaMappingError>> {
    let pricing = match quota.spec.pricing.as_ref()? {
        QuotaPricing::PerUnit { cost } => Amount::from_f64(*cost, 9)
            .map(|unit_amount| UsagePricing::PerUnit { unit_amount })
            .map_err(QuotaMappingError::from),
        QuotaPricing::Graduated { limit } => tiers::billing_tiers(&limit.tiers)
            .map(|tiers| UsagePricing::Tiered {
                model: TierModel::Graduated,
                tiers,
            })
            .map_err(QuotaMappingError::from),
        QuotaPricing::Volume { limit } => tiers::billing_tiers(&limit.tiers)
            .map(|tiers| UsagePricing::Tiered {
                model: TierModel::Volume,
                tiers,
            })
            .map_err(QuotaMappingError::from),
        QuotaPricing::Fixed { interval, limit } => {
            let (included, overage) = overage_terms(limit.as_ref())?;
            let quota_interval = interval.as_deref().unwrap_or("");
            // Recurly resets a tiered add-on's count every billing period; a limit counted over
            // another period would put the free units in the wrong place.
            if billing_interval(quota_interval) != Some(plan_interval.interval) {
                Err(QuotaMappingError::OverageInterval {
                    quota_interval: quota_interval.to_owned(),
                    plan_interval: plan_interval.text.to_owned(),
                })
            } else {
                tiers::overage_tiers(included, overage)
                    .map(|tiers| UsagePricing::Tiered {
                        model: TierModel::Graduated,
                        tiers,
                    })
                    .map_err(QuotaMappingError::from)
            }
        }
        QuotaPricing::Unlimited {} | QuotaPricing::Unknown => return None,
    };
    Some((|| {
        Ok(UsageAddOn {
            code: codes::usage_add_on_code(&quota.metadata.id)?,
            name: truncated(quota.title.as_deref().unwrap_or(&quota.name)),
            accounting_code: codes::add_on_accounting_code(&quota.metadata.id),
            measured_unit: quota
                .spec
                .unit
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| DEFAULT_MEASURED_UNIT.to_owned()),
            pricing: pricing?,
            quota_id: quota.metadata.id.clone(),
        })
    })())
}

/// Maps a plan and its quotas to a billing plan: the whole plan or an error naming what cannot
/// be billed, never a partial plan.
pub fn billing_plan(plan: &ProductPlan, quotas: &[Quota]) -> Result<BillingPlan, PlanMappingError> {
    let plan_id = plan.metadata.id.clone();
    let code = codes::billing_plan_code(&plan_id).map_err(|source| PlanMappingError::Code {
        plan_id: plan_id.clone(),
        source,
    })?;
    let billing = plan.spec.billing.clone().unwrap_or_default();
    let currency = billing.currency.filter(|c| !c.is_empty()).ok_or_else(|| {
        PlanMappingError::MissingCurrency {
            plan_id: plan_id.clone(),
        }
    })?;
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(PlanMappingError::BadCurrency { plan_id, currency });
    }
    let interval_text = billing.interval.unwrap_or_else(|| "monthly".to_owned());
    let interval =
        billing_interval(&interval_text).ok_or_else(|| PlanMappingError::UnsupportedInterval {
            plan_id: plan_id.clone(),
            interval: interval_text.clone(),
        })?;
    let plan_interval = PlanInterval {
        text: &interval_text,
        interval,
    };
    let price = Amount::from_f64(billing.price.unwrap_or(0.0), 2).map_err(|source| {
        PlanMappingError::Price {
            plan_id: plan_id.clone(),
            source,
        }
    })?;
    let setup_fee = Amount::from_f64(billing.setup.and_then(|s| s.price).unwrap_or(0.0), 2)
        .map_err(|source| PlanMappingError::SetupFee {
            plan_id: plan_id.clone(),
            source,
        })?;
    let add_ons = quotas
        .iter()
        .filter_map(|quota| {
            usage_add_on(quota, &plan_interval).map(|r| {
                r.map_err(|source| PlanMappingError::Quota {
                    quota_id: quota.metadata.id.clone(),
                    quota: quota.title.clone().unwrap_or_else(|| quota.name.clone()),
                    source,
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BillingPlan {
        code,
        name: truncated(plan.title.as_deref().unwrap_or(&plan.name)),
        description: plan_id.clone(),
        accounting_code: codes::plan_accounting_code(&plan_id),
        currency: currency.to_ascii_uppercase(),
        price,
        setup_fee,
        interval,
        add_ons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn product(billing_system: Option<&str>) -> Product {
        let attributes = billing_system
            .map(|b| json!({"billingSystem": b}))
            .unwrap_or(json!({}));
        serde_json::from_value(
            json!({"name":"finance","metadata":{"id":"p1"},"attributes":attributes}),
        )
        .unwrap()
    }

    fn plan(plan_type: &str, approval: &str) -> ProductPlan {
        serde_json::from_value(json!({
            "name":"silver","title":"Silver","apiVersion":"v1",
            "metadata":{"id":"8a2e89a1844076b20184436063bd2747","selfLink":"/catalog/v1/productplans/silver"},
            "spec":{"product":"finance","type":plan_type,
                    "billing":{"currency":"USD","price":10.99,"interval":"monthly","setup":{"price":50}},
                    "subscription":{"approval":approval,"interval":{"type":"months","length":1}}},
            "state":"active"
        }))
        .unwrap()
    }

    fn quota(id: &str, pricing: serde_json::Value) -> Quota {
        serde_json::from_value(json!({
            "name":"quota-0","title":"Lining","metadata":{"id":id},
            "spec":{"unit":"transactions","pricing":pricing,"resources":[{"kind":"AssetResource","name":"weather/current"}]}
        }))
        .unwrap()
    }

    fn graduated() -> serde_json::Value {
        json!({"type":"graduated","limit":{"type":"tiered","tiers":[
            {"from":1,"to":500,"cost":0,"flatFee":0},{"from":501,"to":999999999,"cost":0.002,"flatFee":0}]}})
    }

    #[test]
    fn only_paid_manual_recurly_plans_with_a_priced_quota_are_billed() {
        let priced = [quota("q1", graduated())];
        assert_eq!(
            plan_eligibility(&product(Some("recurly")), &plan("paid", "manual"), &priced),
            Ok(())
        );
        assert!(matches!(
            plan_eligibility(&product(None), &plan("paid", "manual"), &priced),
            Err(Ineligible::NotRecurlyProduct { .. })
        ));
        assert!(matches!(
            plan_eligibility(&product(Some("stripe")), &plan("paid", "manual"), &priced),
            Err(Ineligible::NotRecurlyProduct { .. })
        ));
        assert!(matches!(
            plan_eligibility(&product(Some("recurly")), &plan("free", "manual"), &priced),
            Err(Ineligible::NotPaid { .. })
        ));
        assert!(matches!(
            plan_eligibility(
                &product(Some("recurly")),
                &plan("paid", "automatic"),
                &priced
            ),
            Err(Ineligible::NotManualApproval { .. })
        ));
        let standard = [quota(
            "q2",
            json!({"type":"fixed","interval":"monthly","limit":{"type":"strict","value":100}}),
        )];
        assert_eq!(
            plan_eligibility(
                &product(Some("recurly")),
                &plan("paid", "manual"),
                &standard
            ),
            Err(Ineligible::NoPricedQuota)
        );
    }

    fn overage(interval: &str, included: i64, price: f64) -> serde_json::Value {
        json!({"type":"fixed","interval":interval,
               "limit":{"type":"loose","value":included,"overages":{"value":price}}})
    }

    #[test]
    fn a_plan_whose_only_priced_quota_is_an_overage_is_billed() {
        let only_overage = [quota("q-over", overage("monthly", 1000, 0.05))];
        assert_eq!(
            plan_eligibility(
                &product(Some("recurly")),
                &plan("paid", "manual"),
                &only_overage
            ),
            Ok(())
        );
        // A loose limit without an overage price, or with a zero one, bills nothing.
        for limit in [
            json!({"type":"loose","value":1000}),
            json!({"type":"loose","value":1000,"overages":{"value":0}}),
        ] {
            let free = [quota(
                "q-free",
                json!({"type":"fixed","interval":"monthly","limit":limit}),
            )];
            assert_eq!(
                plan_eligibility(&product(Some("recurly")), &plan("paid", "manual"), &free),
                Err(Ineligible::NoPricedQuota)
            );
            assert!(
                billing_plan(&plan("paid", "manual"), &free)
                    .unwrap()
                    .add_ons
                    .is_empty()
            );
        }
    }

    #[test]
    fn an_overage_quota_becomes_a_free_tier_then_the_overage_price() {
        let mapped = billing_plan(
            &plan("paid", "manual"),
            &[quota("q-over", overage("monthly", 1000, 0.05))],
        )
        .unwrap();
        assert_eq!(mapped.add_ons.len(), 1);
        assert_eq!(mapped.add_ons[0].code, "amplify-quota-q-over");
        let UsagePricing::Tiered { model, tiers } = &mapped.add_ons[0].pricing else {
            panic!(
                "an overage quota is tiered: {:?}",
                mapped.add_ons[0].pricing
            );
        };
        assert_eq!(*model, TierModel::Graduated);
        assert_eq!(tiers.len(), 2);
        assert_eq!(tiers[0].ending_quantity, Some(1000));
        assert_eq!(tiers[0].unit_amount, Amount::ZERO);
        assert_eq!(tiers[1].ending_quantity, None);
        assert_eq!(tiers[1].unit_amount.to_string(), "0.05");
    }

    #[test]
    fn an_overage_counted_over_another_interval_fails_the_plan_naming_both() {
        for quota_interval in ["daily", "annually", "", "fortnightly"] {
            let err = billing_plan(
                &plan("paid", "manual"),
                &[
                    quota("q1", graduated()),
                    quota("q-over", overage(quota_interval, 1000, 0.05)),
                ],
            )
            .unwrap_err();
            assert!(
                matches!(&err, PlanMappingError::Quota { quota_id, source: QuotaMappingError::OverageInterval { quota_interval: q, plan_interval }, .. }
                    if quota_id == "q-over" && q == quota_interval && plan_interval == "monthly"),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.contains("billing interval"), "{text}");
        }
        // The same words are the same interval, whatever their case.
        let mut p = plan("paid", "manual");
        p.spec.billing.as_mut().unwrap().interval = Some("annually".into());
        assert!(billing_plan(&p, &[quota("q", overage("Annually", 10, 1.0))]).is_ok());
    }

    #[test]
    fn an_impossible_overage_limit_fails_the_plan() {
        let err = billing_plan(
            &plan("paid", "manual"),
            &[quota("q-over", overage("monthly", -5, 0.05))],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            PlanMappingError::Quota {
                source: QuotaMappingError::Tiers(TierError::IncludedUnits { value: -5 }),
                ..
            }
        ));
    }

    #[test]
    fn a_price_names_its_interval() {
        let mut mapped = billing_plan(&plan("paid", "manual"), &[]).unwrap();
        assert_eq!(mapped.price_per_interval(), "10.99 USD per month");
        for (text, want) in [
            ("annually", "year"),
            ("quarterly", "3 months"),
            ("weekly", "week"),
            ("daily", "day"),
        ] {
            mapped.interval = billing_interval(text).unwrap();
            assert_eq!(mapped.interval.describe(), want);
        }
        for (unit, length, want) in [
            (IntervalUnit::Months, 24, "2 years"),
            (IntervalUnit::Months, 6, "6 months"),
            (IntervalUnit::Days, 14, "2 weeks"),
            (IntervalUnit::Days, 3, "3 days"),
        ] {
            assert_eq!(BillingInterval { unit, length }.describe(), want);
        }
    }

    #[test]
    fn lifecycle_states_map_to_actions() {
        assert_eq!(plan_action(Some("active"), false), PlanAction::Provision);
        assert_eq!(
            plan_action(Some("deprecated"), false),
            PlanAction::Deactivate
        );
        assert_eq!(plan_action(Some("archived"), false), PlanAction::Deactivate);
        assert_eq!(plan_action(Some("draft"), false), PlanAction::Wait);
        assert_eq!(plan_action(Some("active"), true), PlanAction::Deactivate);
    }

    #[test]
    fn a_plan_maps_to_one_usage_add_on_per_priced_quota() {
        let quotas = [
            quota("8a2e89a1844076b20184436065262750", graduated()),
            quota(
                "q-volume",
                json!({"type":"volume","limit":{"type":"tiered","tiers":[{"from":1,"to":100,"cost":1},{"from":101,"to":999999999,"cost":0.5}]}}),
            ),
            quota("q-ppu", json!({"type":"perunit","cost":0.01})),
            quota(
                "q-standard",
                json!({"type":"fixed","limit":{"type":"strict","value":10}}),
            ),
        ];
        let mapped = billing_plan(&plan("paid", "manual"), &quotas).unwrap();
        assert_eq!(mapped.code, "amplify-plan-8a2e89a1844076b20184436063bd2747");
        assert_eq!(mapped.name, "Silver");
        assert_eq!(mapped.description, "8a2e89a1844076b20184436063bd2747");
        assert_eq!(mapped.currency, "USD");
        assert_eq!(mapped.price.to_string(), "10.99");
        assert_eq!(mapped.setup_fee.to_string(), "50");
        assert_eq!(
            mapped.interval,
            BillingInterval {
                unit: IntervalUnit::Months,
                length: 1
            }
        );
        let codes: Vec<_> = mapped.add_ons.iter().map(|a| a.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "amplify-quota-8a2e89a1844076b20184436065262750",
                "amplify-quota-q-volume",
                "amplify-quota-q-ppu"
            ]
        );
        assert!(
            matches!(&mapped.add_ons[0].pricing, UsagePricing::Tiered { model: TierModel::Graduated, tiers } if tiers.len() == 2 && tiers[1].ending_quantity.is_none())
        );
        assert!(matches!(
            &mapped.add_ons[1].pricing,
            UsagePricing::Tiered {
                model: TierModel::Volume,
                ..
            }
        ));
        assert!(
            matches!(&mapped.add_ons[2].pricing, UsagePricing::PerUnit { unit_amount } if unit_amount.to_string() == "0.01")
        );
        assert_eq!(mapped.add_ons[0].measured_unit, "transactions");
        assert_eq!(mapped.add_ons[0].name, "Lining");
    }

    #[test]
    fn a_quota_that_cannot_be_billed_fails_the_whole_plan_naming_the_quota() {
        let quotas = [
            quota("q1", graduated()),
            quota(
                "q-fee",
                json!({"type":"graduated","limit":{"type":"tiered","tiers":[{"from":1,"to":999999999,"cost":1,"flatFee":5}]}}),
            ),
        ];
        let err = billing_plan(&plan("paid", "manual"), &quotas).unwrap_err();
        assert!(
            matches!(&err, PlanMappingError::Quota { quota_id, source: QuotaMappingError::Tiers(TierError::FlatFee { .. }), .. } if quota_id == "q-fee")
        );
        assert!(err.to_string().contains("flat fee"), "{err}");
    }

    #[test]
    fn plan_level_problems_are_named() {
        let mut p = plan("paid", "manual");
        p.spec.billing.as_mut().unwrap().interval = Some("fortnightly".into());
        assert!(matches!(
            billing_plan(&p, &[]),
            Err(PlanMappingError::UnsupportedInterval { .. })
        ));
        let mut p = plan("paid", "manual");
        p.spec.billing.as_mut().unwrap().currency = None;
        assert!(matches!(
            billing_plan(&p, &[]),
            Err(PlanMappingError::MissingCurrency { .. })
        ));
        let mut p = plan("paid", "manual");
        p.spec.billing.as_mut().unwrap().price = Some(10.999);
        assert!(matches!(
            billing_plan(&p, &[]),
            Err(PlanMappingError::Price { .. })
        ));
    }

    #[test]
    fn v1alpha1_plans_and_unknown_pricing_types_parse() {
        let q = quota("q", json!({"type":"someFutureType","x":1}));
        assert_eq!(q.spec.pricing, Some(QuotaPricing::Unknown));
        let q = quota("q", json!({"type":"unlimited"}));
        assert_eq!(q.spec.pricing, Some(QuotaPricing::Unlimited {}));
    }
}
