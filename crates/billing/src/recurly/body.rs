//! The request bodies a provider-neutral billing plan becomes in Recurly: `PlanCreate` with
//! inline usage add-ons, `AddOnCreate`, `MeasuredUnitCreate` (reference §2, §3).

use billing_bridge_domain::plan::{BillingPlan, IntervalUnit, UsageAddOn, UsagePricing};
use billing_bridge_domain::tiers::TierModel;
use serde_json::{Value, json};

/// Recurly's `display_name` rule for measured units: word characters and spaces, at most 50.
pub fn measured_unit_display_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(50)
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        "units".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// A usage add-on: price per unit (`flat` with `unit_amount_decimal`), or tiers (`tiered` for
/// graduated, `volume`), in the plan's currency. Usage add-ons are not optional, so every
/// subscription must list them (reference §5).
pub fn add_on_create(add_on: &UsageAddOn, currency: &str) -> Value {
    let mut body = json!({
        "code": add_on.code,
        "name": add_on.name,
        "accounting_code": add_on.accounting_code,
        "add_on_type": "usage",
        "usage_type": "price",
        "usage_calculation_type": "cumulative",
        "measured_unit_name": add_on.measured_unit,
        "optional": false,
    });
    match &add_on.pricing {
        UsagePricing::PerUnit { unit_amount } => {
            body["tier_type"] = json!("flat");
            body["currencies"] =
                json!([{"currency": currency, "unit_amount_decimal": unit_amount.to_string()}]);
        }
        UsagePricing::Tiered { model, tiers } => {
            body["tier_type"] = json!(match model {
                TierModel::Graduated => "tiered",
                TierModel::Volume => "volume",
            });
            let tiers: Vec<Value> = tiers
                .iter()
                .map(|tier| {
                    let mut t = json!({"currencies": [{"currency": currency, "unit_amount_decimal": tier.unit_amount.to_string()}]});
                    // The last tier leaves `ending_quantity` out: Recurly then uses its maximum.
                    if let Some(end) = tier.ending_quantity {
                        t["ending_quantity"] = json!(end);
                    }
                    t
                })
                .collect();
            body["tiers"] = json!(tiers);
        }
    }
    body
}

/// The whole plan with its add-ons inline, so Recurly creates it in one call or not at all.
pub fn plan_create(plan: &BillingPlan) -> Value {
    json!({
        "code": plan.code,
        "name": plan.name,
        "description": plan.description,
        "accounting_code": plan.accounting_code,
        "interval_unit": match plan.interval.unit {
            IntervalUnit::Days => "days",
            IntervalUnit::Months => "months",
        },
        "interval_length": plan.interval.length,
        "auto_renew": true,
        "currencies": [{
            "currency": plan.currency,
            "unit_amount": plan.price.as_f64(),
            "setup_fee": plan.setup_fee.as_f64(),
        }],
        "add_ons": plan.add_ons.iter().map(|a| add_on_create(a, &plan.currency)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_bridge_domain::money::Amount;
    use billing_bridge_domain::plan::BillingInterval;
    use billing_bridge_domain::tiers::PriceTier;

    fn plan() -> BillingPlan {
        BillingPlan {
            code: "amplify-plan-p1".into(),
            name: "Silver".into(),
            description: "p1".into(),
            accounting_code: "ap-p1".into(),
            currency: "USD".into(),
            price: Amount::from_f64(10.99, 2).unwrap(),
            setup_fee: Amount::ZERO,
            interval: BillingInterval {
                unit: IntervalUnit::Months,
                length: 1,
            },
            add_ons: vec![
                UsageAddOn {
                    code: "amplify-quota-q1".into(),
                    name: "Calls".into(),
                    accounting_code: "aq-q1".into(),
                    measured_unit: "transactions".into(),
                    pricing: UsagePricing::Tiered {
                        model: TierModel::Graduated,
                        tiers: vec![
                            PriceTier {
                                ending_quantity: Some(500),
                                unit_amount: Amount::ZERO,
                            },
                            PriceTier {
                                ending_quantity: None,
                                unit_amount: Amount::from_f64(0.002, 9).unwrap(),
                            },
                        ],
                    },
                    quota_id: "q1".into(),
                },
                UsageAddOn {
                    code: "amplify-quota-q2".into(),
                    name: "Pay per use".into(),
                    accounting_code: "aq-q2".into(),
                    measured_unit: "transactions".into(),
                    pricing: UsagePricing::PerUnit {
                        unit_amount: Amount::from_f64(0.01, 9).unwrap(),
                    },
                    quota_id: "q2".into(),
                },
            ],
        }
    }

    #[test]
    fn a_plan_becomes_one_plan_create_with_its_usage_add_ons_inline() {
        let body = plan_create(&plan());
        assert_eq!(body["code"], "amplify-plan-p1");
        assert_eq!(body["interval_unit"], "months");
        assert_eq!(body["currencies"][0]["unit_amount"], 10.99);
        let graduated = &body["add_ons"][0];
        assert_eq!(graduated["tier_type"], "tiered");
        assert_eq!(graduated["add_on_type"], "usage");
        assert_eq!(graduated["tiers"][0]["ending_quantity"], 500);
        assert!(graduated["tiers"][1].get("ending_quantity").is_none());
        assert_eq!(
            graduated["tiers"][1]["currencies"][0]["unit_amount_decimal"],
            "0.002"
        );
        assert!(
            graduated.get("currencies").is_none(),
            "tiered add-ons carry no currencies"
        );
        let flat = &body["add_ons"][1];
        assert_eq!(flat["tier_type"], "flat");
        assert_eq!(flat["currencies"][0]["unit_amount_decimal"], "0.01");
        assert!(flat.get("tiers").is_none(), "flat add-ons carry no tiers");
    }

    /// A Standard quota with a loose limit and an overage price reaches Recurly as a `tiered`
    /// add-on: the included units in a free first tier, the overage price on the open last one.
    #[test]
    fn an_overage_quota_becomes_a_tiered_add_on_with_a_free_first_tier() {
        use billing_bridge_domain::amplify::{ProductPlan, Quota};
        let plan: ProductPlan = serde_json::from_value(json!({
            "name": "gold", "metadata": {"id": "p9"},
            "spec": {"product": "p", "type": "paid",
                     "billing": {"currency": "EUR", "price": 49, "interval": "monthly"}}
        }))
        .unwrap();
        let quota: Quota = serde_json::from_value(json!({
            "name": "quota-0", "title": "Calls", "metadata": {"id": "q9"},
            "spec": {"unit": "transactions", "pricing": {"type": "fixed", "interval": "monthly",
                     "limit": {"type": "loose", "value": 1000, "overages": {"value": 0.05}}}}
        }))
        .unwrap();
        let mapped = billing_bridge_domain::plan::billing_plan(&plan, &[quota]).unwrap();
        let body = plan_create(&mapped);
        let add_on = &body["add_ons"][0];
        assert_eq!(add_on["code"], "amplify-quota-q9");
        assert_eq!(add_on["tier_type"], "tiered");
        assert_eq!(
            add_on["tiers"],
            json!([
                {"ending_quantity": 1000, "currencies": [{"currency": "EUR", "unit_amount_decimal": "0"}]},
                {"currencies": [{"currency": "EUR", "unit_amount_decimal": "0.05"}]}
            ])
        );
    }

    #[test]
    fn display_names_fit_recurlys_pattern() {
        assert_eq!(measured_unit_display_name("api-calls/v2"), "api calls v2");
        assert_eq!(measured_unit_display_name("---"), "units");
        assert_eq!(measured_unit_display_name(&"x".repeat(80)).len(), 50);
    }
}
