//! Standard quotas with overage pricing end to end (issue 12, point 6): a loose limit of N units
//! with an overage price P is billed in Recurly as a tiered add-on, N units free per billing
//! period and P for each one past them; a limit counted over another interval is refused.

use serde_json::{Value, json};

use crate::provisioning::{
    Provider, WAIT, hooks, paid_plan_spec, recurly_list, recurly_writes, seed, wait_cards_titled,
};
use crate::recurly_conformance::client::assert_recurly_traffic_conforms;
use crate::reporting::{
    closed_windows, inject, report, reporting_overrides, span, spread, usage_list, whole,
};
use crate::support::{bridge_sandbox, spawn_bridge, wait_for};
use billing_bridge_contract::ExchangePolicy;

/// Units included in the quota's limit, and the price of each unit past them.
const INCLUDED: u64 = 50;
const OVERAGE: f64 = 0.25;

/// A Standard quota (Amplify reference §3.3): `limit` units per `interval`, the units past it let
/// through and priced at `overage`.
fn overage_pricing(interval: &str, limit: u64, overage: f64) -> Value {
    json!({"type": "fixed", "interval": interval,
           "limit": {"type": "loose", "value": limit, "overages": {"value": overage}}})
}

/// A tier price as Recurly shows it on a subscription add-on or a usage record.
fn tier_price(tier: &Value) -> f64 {
    match &tier["unit_amount_decimal"] {
        Value::String(decimal) => decimal.parse().unwrap(),
        _ => tier["unit_amount"]
            .as_f64()
            .unwrap_or_else(|| panic!("no price in {tier}")),
    }
}

/// What Recurly's `tiered` model charges for `units` in one period under `tiers`
/// (`[{ending_quantity, unit_amount(_decimal)}]`, the last open-ended): each unit at the price
/// of the tier it falls in. Written from Recurly's reference (§3), not from the bridge's code.
fn tiered_charge(tiers: &[Value], units: u64) -> f64 {
    let mut charge = 0.0;
    let mut start = 1;
    for tier in tiers {
        let end = tier["ending_quantity"].as_u64().unwrap_or(999_999_999);
        if units >= start {
            charge += (end.min(units) - start + 1) as f64 * tier_price(tier);
        }
        start = end + 1;
    }
    charge
}

#[actix_rt::test]
async fn a_standard_quota_with_overages_bills_only_the_units_past_its_limit() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &reporting_overrides("", "")).await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    provider.product("weather", true).await;
    provider
        .plan("metered", "Metered", "weather", paid_plan_spec("weather"))
        .await;
    // The plan's only billable quota is the overage one: it is eligible on its own.
    let quota = provider
        .quota(
            "metered",
            "calls",
            overage_pricing("monthly", INCLUDED, OVERAGE),
        )
        .await;
    let quota_id = quota["metadata"]["id"].as_str().unwrap().to_owned();
    let add_on_code = format!("amplify-quota-{quota_id}");
    provider.activate("metered").await;

    let billed = wait_cards_titled(&sb, "Plan billed in Recurly: Metered").await;
    assert!(
        billed[0].text.contains("10 USD per month"),
        "the card names the plan's interval: {billed:?}"
    );
    let plan = provider.get("/catalog/v1/productplans/metered").await;
    let code = plan["attributes"]["recurlyPlanCode"]
        .as_str()
        .unwrap_or_else(|| panic!("the plan is linked: {plan}"))
        .to_owned();
    let add_ons = recurly_list(&sb, &format!("/plans/code-{code}/add_ons")).await;
    assert_eq!(add_ons.len(), 1, "{add_ons:?}");
    let add_on = &add_ons[0];
    assert_eq!(add_on["code"], add_on_code.as_str());
    assert_eq!(add_on["add_on_type"], "usage");
    assert_eq!(add_on["tier_type"], "tiered", "graduated: {add_on}");
    let tiers: Vec<(u64, f64)> = add_on["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["ending_quantity"].as_u64().unwrap_or(999_999_999),
                tier_price(&t["currencies"][0]),
            )
        })
        .collect();
    assert_eq!(tiers, [(INCLUDED, 0.0), (999_999_999, OVERAGE)]);

    seed(
        &sb,
        json!({"amplify": {"users": [{"guid": "user-1", "email": "dev@consumer.example"}],
                           "teams": [{"guid": "team-1", "name": "Consumers", "users": ["user-1"]}]},
               "recurly": {"accounts": [{"code": "amplify-team-team-1", "email": "billing@consumer.example"}]}}),
    )
    .await;
    provider
        .subscribe("sub-1", "metered", "team-1", "user-1")
        .await;
    let sub = wait_for("the subscription approved", WAIT, || async {
        let sub = provider.get("/catalog/v1/subscriptions/sub-1").await;
        (sub["approval"]["state"] == "approved"
            && sub["attributes"]["recurlySubscriptionId"].is_string())
        .then_some(sub)
    })
    .await;
    let amplify_id = sub["metadata"]["id"].as_str().unwrap();
    let recurly_id = sub["attributes"]["recurlySubscriptionId"].as_str().unwrap();

    // 30 calls in one window and 50 in the next: 80 in the billing period, 30 past the limit.
    let windows = closed_windows(2);
    let mut events = spread(
        amplify_id,
        "sub-1",
        "metered/calls",
        windows[0],
        30,
        "Success",
    );
    events.extend(spread(
        amplify_id,
        "sub-1",
        "metered/calls",
        windows[1],
        50,
        "Success",
    ));
    inject(&sb, &events).await;
    report(&sb, &bridge.url, Some(&span(&windows))).await;

    let records = usage_list(&sb, recurly_id, &add_on_code).await;
    assert_eq!(records.len(), 2, "one record per window: {records:?}");
    let units: u64 = records.iter().map(|r| whole(&r["amount"])).sum();
    assert_eq!(units, 80, "every call reported: {records:?}");
    // Recurly prices the period's usage with the tiers each record carries.
    for record in &records {
        assert_eq!(record["tier_type"], "tiered", "{record}");
    }
    let charge = tiered_charge(records[0]["tiers"].as_array().unwrap(), units);
    let expected = (units - INCLUDED) as f64 * OVERAGE;
    assert!(
        (charge - expected).abs() < 1e-9 && (expected - 7.5).abs() < 1e-9,
        "Recurly charges max(0, {units} - {INCLUDED}) × {OVERAGE} = {expected}, got {charge}"
    );
    // Within the limit nothing is charged.
    assert_eq!(
        tiered_charge(records[0]["tiers"].as_array().unwrap(), INCLUDED),
        0.0
    );
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn an_overage_counted_over_another_interval_than_the_plan_is_refused_with_a_card() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    provider.product("weather", true).await;
    provider
        .plan("daily", "Daily", "weather", paid_plan_spec("weather"))
        .await;
    provider
        .quota("daily", "calls", overage_pricing("daily", 100, 0.1))
        .await;
    provider.activate("daily").await;

    let failed = wait_cards_titled(&sb, "Plan not billed: Daily").await;
    let text = &failed[0].text;
    assert!(
        text.contains("'daily'") && text.contains("'monthly'") && text.contains("interval"),
        "the card names both intervals: {text}"
    );
    assert!(recurly_list(&sb, "/plans?limit=200").await.is_empty());
    assert!(recurly_writes(&sb, "POST", "").await.is_empty());
}
