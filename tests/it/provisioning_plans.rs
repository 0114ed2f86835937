//! Plan provisioning end to end: which Amplify plans become Recurly plans, with exactly which
//! add-ons, tiers and prices; which are left alone or refused; and what later changes do.

use billing_bridge_contract::ExchangePolicy;
use serde_json::{Value, json};

use crate::provisioning::{
    Provider, WAIT, cards, cards_titled, flat_fee_pricing, hooks, metrics, paid_plan_spec,
    plan_code, priced_quotas, reconcile_now, recurly, recurly_list, recurly_writes,
    startup_pass_done, wait_cards_titled,
};
use crate::recurly_conformance::client::assert_recurly_traffic_conforms;
use crate::support::{TestSandbox, bridge_sandbox, spawn_bridge, wait_for};

/// The Recurly plan `code` once it exists.
async fn recurly_plan(sb: &TestSandbox, code: &str) -> Value {
    wait_for(&format!("Recurly plan {code}"), WAIT, || async {
        let (status, body) = recurly(sb, &format!("/plans/code-{code}")).await;
        (status == 200).then_some(body)
    })
    .await
}

/// A price as Recurly shows it: `unit_amount_decimal` (string) or `unit_amount` (number).
fn price(pricing: &Value) -> f64 {
    match &pricing["unit_amount_decimal"] {
        Value::String(decimal) => decimal.parse().unwrap(),
        _ => pricing["unit_amount"]
            .as_f64()
            .unwrap_or_else(|| panic!("no price in {pricing}")),
    }
}

/// `(ending_quantity, USD unit price)` of every tier of an add-on.
fn tiers(add_on: &Value) -> Vec<(u64, f64)> {
    add_on["tiers"]
        .as_array()
        .unwrap_or_else(|| panic!("no tiers in {add_on}"))
        .iter()
        .map(|tier| {
            let currencies = tier["currencies"].as_array().unwrap();
            assert_eq!(currencies.len(), 1, "{tier}");
            assert_eq!(currencies[0]["currency"], "USD", "{tier}");
            (
                tier["ending_quantity"].as_u64().unwrap_or(999_999_999),
                price(&currencies[0]),
            )
        })
        .collect()
}

/// The quota ids of an Amplify plan, by quota name.
async fn quota_ids(provider: &Provider<'_>, plan: &str) -> Vec<(String, String)> {
    provider
        .get(&format!("/catalog/v1/productplans/{plan}/quotas"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["name"].as_str().unwrap().to_owned(),
                q["metadata"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn add_on_for<'a>(add_ons: &'a [Value], quota_id: &str) -> &'a Value {
    let code = format!("amplify-quota-{quota_id}");
    add_ons
        .iter()
        .find(|a| a["code"] == code.as_str())
        .unwrap_or_else(|| panic!("add-on {code} in {add_ons:?}"))
}

#[actix_rt::test]
async fn an_activated_eligible_plan_becomes_a_recurly_plan_with_exactly_the_tiers_and_prices_of_its_quotas()
 {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    provider.activate("silver").await;

    let billed = recurly_plan(&sb, &code).await;
    assert_eq!(billed["name"], "Silver");
    assert_eq!(billed["state"], "active");
    assert_eq!(billed["interval_unit"], "months");
    assert_eq!(billed["interval_length"], 1);
    let currencies = billed["currencies"].as_array().unwrap();
    assert_eq!(currencies.len(), 1, "{billed}");
    assert_eq!(currencies[0]["currency"], "USD");
    assert_eq!(currencies[0]["unit_amount"].as_f64(), Some(10.0));
    assert_eq!(currencies[0]["setup_fee"].as_f64(), Some(5.0));
    let accounting = billed["accounting_code"].as_str().unwrap_or_default();
    assert!(
        !accounting.is_empty()
            && accounting.len() <= 20
            && accounting
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_+-".contains(c)),
        "plan accounting code within Recurly's limits: {accounting:?}"
    );

    let add_ons = recurly_list(&sb, &format!("/plans/code-{code}/add_ons?limit=200")).await;
    assert_eq!(add_ons.len(), 3, "one add-on per priced quota: {add_ons:?}");
    let ids = quota_ids(&provider, "silver").await;
    let id = |name: &str| ids.iter().find(|(n, _)| n == name).unwrap().1.clone();
    for add_on in &add_ons {
        assert_eq!(add_on["add_on_type"], "usage", "{add_on}");
        assert_eq!(add_on["usage_type"], "price", "{add_on}");
        assert_eq!(add_on["state"], "active", "{add_on}");
        let accounting = add_on["accounting_code"].as_str().unwrap_or_default();
        assert!(
            !accounting.is_empty() && accounting.len() <= 20,
            "add-on accounting code within Recurly's limits: {add_on}"
        );
        assert!(
            add_on["measured_unit_id"]
                .as_str()
                .is_some_and(|u| !u.is_empty()),
            "{add_on}"
        );
    }
    let calls = add_on_for(&add_ons, &id("calls"));
    assert_eq!(calls["name"], "calls");
    assert_eq!(calls["tier_type"], "tiered");
    assert_eq!(tiers(calls), vec![(1000, 0.0), (999_999_999, 0.002)]);
    let bulk = add_on_for(&add_ons, &id("bulk"));
    assert_eq!(bulk["tier_type"], "volume");
    assert_eq!(tiers(bulk), vec![(100, 1.0), (999_999_999, 0.5)]);
    let alerts = add_on_for(&add_ons, &id("alerts"));
    assert_eq!(alerts["tier_type"], "flat");
    assert!(
        alerts["tiers"].as_array().is_none_or(Vec::is_empty),
        "{alerts}"
    );
    let alert_prices = alerts["currencies"].as_array().unwrap();
    assert_eq!(alert_prices.len(), 1, "{alerts}");
    assert_eq!(alert_prices[0]["currency"], "USD");
    assert_eq!(price(&alert_prices[0]), 0.01);
    let (status, unit) = recurly(
        &sb,
        &format!(
            "/measured_units/{}",
            calls["measured_unit_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(status, 200, "the measured unit exists: {unit}");
    assert_eq!(unit["name"], "transactions");

    let linked = wait_for("the link on the Amplify plan", WAIT, || async {
        let plan = provider.get("/catalog/v1/productplans/silver").await;
        (plan["attributes"]["recurlyPlanCode"] == code.as_str()).then_some(plan)
    })
    .await;
    assert_eq!(linked["attributes"]["recurlyPlanId"], billed["id"]);
    provider.settle("weather", "sentinel").await;
    let announced = cards_titled(&sb, "Plan billed in Recurly").await;
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert!(announced[0].title.contains("Silver"), "{announced:?}");
    assert_eq!(recurly_list(&sb, "/plans?limit=200").await.len(), 1);
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn ineligible_plans_yield_no_recurly_plan_and_no_card() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    // The start-up reconciliation would pass over the plans a second time if it ran after they
    // exist (as it can on a loaded machine), doubling the counts checked below.
    startup_pass_done(&sb, &bridge).await;
    let provider = Provider::new(&sb).await;
    let [(_, graduated), ..] = priced_quotas();
    // A priced plan of a product not billed by Recurly.
    provider.product("internal", false).await;
    provider
        .plan(
            "unbilled",
            "Unbilled",
            "internal",
            paid_plan_spec("internal"),
        )
        .await;
    provider.quota("unbilled", "calls", graduated.clone()).await;
    // Plans of a Recurly product: free; automatically approved; only a Standard (fixed) quota.
    provider.product("weather", true).await;
    provider
        .plan(
            "free",
            "Free",
            "weather",
            json!({"type":"free","subscription":{"approval":"manual"}}),
        )
        .await;
    provider.quota("free", "calls", graduated.clone()).await;
    let mut automatic = paid_plan_spec("weather");
    automatic["subscription"]["approval"] = json!("automatic");
    provider
        .plan("automatic", "Automatic", "weather", automatic)
        .await;
    provider.quota("automatic", "calls", graduated).await;
    provider
        .plan("standard", "Standard", "weather", paid_plan_spec("weather"))
        .await;
    provider
        .quota(
            "standard",
            "calls",
            json!({"type":"fixed","interval":"monthly","limit":{"type":"strict","value":100}}),
        )
        .await;
    for plan in ["unbilled", "free", "automatic", "standard"] {
        provider.activate(plan).await;
    }
    provider.settle("weather", "sentinel").await;

    assert!(recurly_list(&sb, "/plans?limit=200").await.is_empty());
    assert!(recurly_writes(&sb, "POST", "").await.is_empty());
    let all = cards(&sb).await;
    assert_eq!(all.len(), 1, "only the sentinel's card: {all:?}");
    for plan in ["unbilled", "free", "automatic", "standard"] {
        let plan = provider
            .get(&format!("/catalog/v1/productplans/{plan}"))
            .await;
        assert!(
            plan["attributes"].get("recurlyPlanCode").is_none(),
            "{plan}"
        );
    }
    let text = metrics(&sb, &bridge).await;
    // At least one ineligible pass per plan: its activation's. A creation event whose pass runs
    // after the activation (a loaded machine) reads the plan active too and counts again.
    let ineligible = text
        .lines()
        .find(|l| {
            l.starts_with("billing_bridge_provisioning_total")
                && l.contains("resource=\"plan\"")
                && l.contains("outcome=\"ineligible\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        (4.0..=8.0).contains(&ineligible),
        "an ineligible pass per plan event of interest:\n{text}"
    );
}

#[actix_rt::test]
async fn a_quota_with_a_tier_flat_fee_is_not_billed_and_the_provider_is_told_why_once() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    provider.product("weather", true).await;
    provider
        .plan("fees", "Fees", "weather", paid_plan_spec("weather"))
        .await;
    let [(_, graduated), ..] = priced_quotas();
    provider.quota("fees", "calls", graduated).await;
    provider.quota("fees", "setup", flat_fee_pricing()).await;
    provider.activate("fees").await;
    let failed = wait_cards_titled(&sb, "Plan not billed: Fees").await;
    assert!(
        failed[0].text.contains("flat fee"),
        "the card names the reason: {failed:?}"
    );
    // Another pass over the same plan (the reconciler) does not tell the provider again.
    let summary = reconcile_now(&sb, &bridge).await;
    assert_eq!(summary["queued"], 1, "{summary}");
    provider.settle("weather", "sentinel").await;
    assert_eq!(cards_titled(&sb, "Plan not billed: Fees").await.len(), 1);
    assert_eq!(cards(&sb).await.len(), 2, "{:?}", cards(&sb).await);
    assert!(recurly_list(&sb, "/plans?limit=200").await.is_empty());
    assert!(recurly_writes(&sb, "POST", "").await.is_empty());
    let plan = provider.get("/catalog/v1/productplans/fees").await;
    assert!(
        plan["attributes"].get("recurlyPlanCode").is_none(),
        "{plan}"
    );
}

#[actix_rt::test]
async fn a_quota_added_to_an_active_plan_becomes_a_new_add_on_and_deprecation_takes_the_plan_off_sale()
 {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    provider.activate("silver").await;
    recurly_plan(&sb, &code).await;
    provider.linked("silver").await;

    let quota = provider
        .quota(
            "silver",
            "storage",
            json!({"type":"volume","limit":{"type":"tiered","tiers":[{"from":0,"to":50,"cost":0.25,"flatFee":0},{"from":51,"to":999999999,"cost":0.1,"flatFee":0}]}}),
        )
        .await;
    let quota_id = quota["metadata"]["id"].as_str().unwrap().to_owned();
    let add_ons = wait_for("the new add-on", WAIT, || async {
        let add_ons = recurly_list(&sb, &format!("/plans/code-{code}/add_ons?limit=200")).await;
        (add_ons.len() == 4).then_some(add_ons)
    })
    .await;
    let storage = add_on_for(&add_ons, &quota_id);
    assert_eq!(storage["tier_type"], "volume");
    assert_eq!(tiers(storage), vec![(50, 0.25), (999_999_999, 0.1)]);
    assert_eq!(
        recurly_writes(&sb, "POST", "/plans").await.len(),
        1,
        "the plan itself is created once"
    );
    assert_eq!(
        recurly_writes(&sb, "POST", "/add_ons").await.len(),
        1,
        "only the new quota is added"
    );

    provider.set_plan_state("silver", "deprecated").await;
    wait_for("the Recurly plan off sale", WAIT, || async {
        let (_, plan) = recurly(&sb, &format!("/plans/code-{code}")).await;
        (plan["state"] == "inactive").then_some(())
    })
    .await;
    provider.settle("weather", "sentinel").await;
    let titles: Vec<String> = cards(&sb).await.into_iter().map(|c| c.title).collect();
    assert_eq!(
        titles,
        vec![
            "Plan billed in Recurly: Silver".to_owned(),
            "Plan billed in Recurly: Silver".to_owned(),
            "Plan off sale in Recurly: Silver".to_owned(),
            "Plan not billed: sentinel".to_owned(),
        ],
        "created, quota added, off sale"
    );
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn a_deleted_plan_is_taken_off_sale_in_recurly() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    startup_pass_done(&sb, &bridge).await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    provider.activate("silver").await;
    recurly_plan(&sb, &code).await;
    let (status, body) = provider
        .send(
            reqwest::Method::DELETE,
            "/catalog/v1/productplans/silver",
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait_for("the Recurly plan off sale", WAIT, || async {
        let (_, plan) = recurly(&sb, &format!("/plans/code-{code}")).await;
        (plan["state"] == "inactive").then_some(())
    })
    .await;
    provider.settle("weather", "sentinel").await;
    let kinds: Vec<String> = cards(&sb)
        .await
        .into_iter()
        .map(|c| c.title.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "Plan billed in Recurly",
            "Plan off sale in Recurly",
            "Plan not billed",
        ],
        "the deletion (and its quotas' deletions) only take the plan off sale: {:?}",
        cards(&sb).await
    );
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn a_yearly_euro_plan_managed_through_v1alpha1_is_billed_in_its_currency_and_interval() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    provider.create("/catalog/v1alpha1/products", json!({"group":"catalog","apiVersion":"v1alpha1","kind":"Product","name":"maps","title":"Maps",
        "attributes":{"billingSystem":"recurly"}})).await;
    let plan = provider.create("/catalog/v1alpha1/productplans", json!({"group":"catalog","apiVersion":"v1alpha1","kind":"ProductPlan","name":"yearly","title":"Yearly",
        "spec":{"product":"maps","type":"paid","billing":{"currency":"EUR","price":99.5,"interval":"annually"},
                "subscription":{"approval":"manual"}}})).await;
    let quota = provider.create("/catalog/v1alpha1/productplans/yearly/quotas", json!({"group":"catalog","apiVersion":"v1alpha1","kind":"Quota","name":"tiles",
        "metadata":{"scope":{"kind":"ProductPlan","name":"yearly"}},
        "spec":{"unit":"tiles","pricing":{"type":"perunit","cost":0.000125},"resources":[{"kind":"AssetResource","name":"maps/tiles"}]}})).await;
    let (status, body) = provider
        .send(
            reqwest::Method::PUT,
            "/catalog/v1alpha1/productplans/yearly/state",
            Some(json!({"state":"active"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let code = plan_code(&plan);
    let billed = recurly_plan(&sb, &code).await;
    assert_eq!(billed["interval_unit"], "months");
    assert_eq!(billed["interval_length"], 12);
    assert_eq!(billed["currencies"][0]["currency"], "EUR");
    assert_eq!(billed["currencies"][0]["unit_amount"].as_f64(), Some(99.5));
    assert_eq!(
        billed["currencies"][0]["setup_fee"].as_f64().unwrap_or(0.0),
        0.0
    );
    let add_ons = recurly_list(&sb, &format!("/plans/code-{code}/add_ons")).await;
    let tiles = add_on_for(&add_ons, quota["metadata"]["id"].as_str().unwrap());
    assert_eq!(tiles["tier_type"], "flat");
    assert_eq!(tiles["currencies"][0]["currency"], "EUR");
    assert_eq!(price(&tiles["currencies"][0]), 0.000125);
    let (_, unit) = recurly(
        &sb,
        &format!(
            "/measured_units/{}",
            tiles["measured_unit_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        unit["name"], "tiles",
        "the quota's unit, created when missing"
    );
    wait_for("the link on the v1alpha1 plan", WAIT, || async {
        let plan = provider.get("/catalog/v1alpha1/productplans/yearly").await;
        (plan["attributes"]["recurlyPlanCode"] == code.as_str()).then_some(())
    })
    .await;
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}
