//! Plans and their add-ons (reference §2, §3, §3.1): creation with inline usage add-ons, look-up
//! by id and `code-`, update, delete, and the validation rules Recurly applies.

use serde_json::{Value, json};

use super::client::{Recurly, field_of, list_data, usage_add_on, usage_plan};

fn add_on_by_code<'a>(list: &'a Value, code: &str) -> &'a Value {
    list_data(list)
        .iter()
        .find(|a| a["code"] == code)
        .unwrap_or_else(|| panic!("add-on {code} listed: {list}"))
}

#[tokio::test]
async fn a_plan_with_tiered_volume_and_flat_usage_add_ons_is_created_with_201() {
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let mut plan = usage_plan("acme-weather-basic");
    plan["add_ons"] = json!([
        usage_add_on("calls_tiered", "tiered"),
        usage_add_on("calls_volume", "volume"),
        usage_add_on("calls_flat", "flat"),
    ]);
    let created = r.post("/plans", &plan).await.expect(201);
    assert_eq!(created["object"], "plan");
    assert_eq!(created["code"], "acme-weather-basic");
    assert_eq!(created["state"], "active");
    assert_eq!(created["interval_unit"], "months");
    assert_eq!(created["interval_length"], 1);
    assert!(created["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(created["currencies"][0]["currency"], "USD");

    let add_ons = r
        .get("/plans/code-acme-weather-basic/add_ons")
        .await
        .expect(200);
    assert_eq!(list_data(&add_ons).len(), 3, "{add_ons}");
    let tiered = add_on_by_code(&add_ons, "calls_tiered");
    assert_eq!(tiered["add_on_type"], "usage");
    assert_eq!(tiered["usage_type"], "price");
    assert_eq!(tiered["tier_type"], "tiered");
    assert_eq!(tiered["tiers"][0]["ending_quantity"], 1000);
    assert_eq!(tiered["tiers"][1]["ending_quantity"], 999_999_999);
    assert_eq!(
        tiered["tiers"][1]["currencies"][0]["unit_amount_decimal"],
        "0.002"
    );
    assert_eq!(tiered["plan_id"], created["id"]);
    assert!(
        tiered["measured_unit_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "the measured unit name was resolved to an id: {tiered}"
    );
    assert_eq!(
        add_on_by_code(&add_ons, "calls_volume")["tier_type"],
        "volume"
    );
    let flat = add_on_by_code(&add_ons, "calls_flat");
    assert_eq!(flat["tier_type"], "flat");
    assert_eq!(flat["currencies"][0]["unit_amount_decimal"], "0.001");
    r.finish().await;
}

#[tokio::test]
async fn the_last_tier_without_ending_quantity_defaults_to_999999999() {
    // §3: "If omitted, ending_quantity will default to 999999999" [V RDOCS].
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let mut plan = usage_plan("open-ended");
    plan["add_ons"][0]["tiers"][1]
        .as_object_mut()
        .unwrap()
        .remove("ending_quantity");
    r.create_plan(&plan).await;
    let add_on = r
        .get("/plans/code-open-ended/add_ons/code-api_calls")
        .await
        .expect(200);
    assert_eq!(
        add_on["tiers"][1]["ending_quantity"], 999_999_999,
        "{add_on}"
    );
    r.finish().await;
}

#[tokio::test]
async fn a_plan_is_found_by_id_and_by_code_and_listed() {
    let r = Recurly::start().await;
    let created = r.create_usage_plan("gold").await;
    let id = created["id"].as_str().unwrap();
    let by_id = r.get(&format!("/plans/{id}")).await.expect(200);
    let by_code = r.get("/plans/code-gold").await.expect(200);
    assert_eq!(by_id["code"], "gold");
    assert_eq!(by_code["id"], created["id"]);

    r.create_plan(&usage_plan("silver")).await;
    let list = r.get("/plans").await.expect(200);
    let mut codes = field_of(&list, "code");
    codes.sort();
    assert_eq!(codes, ["gold", "silver"]);
    r.finish().await;
}

#[tokio::test]
async fn a_plan_update_changes_its_name_and_accounting_code() {
    let r = Recurly::start().await;
    let created = r.create_usage_plan("gold").await;
    let id = created["id"].as_str().unwrap();
    // §2: update answers 201 in the spec; any 2xx is accepted.
    let updated = r
        .put(
            &format!("/plans/{id}"),
            &json!({"name": "Gold v2", "accounting_code": "gold_acct"}),
        )
        .await
        .expect_success();
    assert_eq!(updated["name"], "Gold v2");
    let fetched = r.get("/plans/code-gold").await.expect(200);
    assert_eq!(fetched["name"], "Gold v2");
    assert_eq!(fetched["accounting_code"], "gold_acct");
    assert_eq!(fetched["interval_unit"], "months", "the interval stays");
    r.finish().await;
}

#[tokio::test]
async fn a_deleted_plan_is_inactive() {
    let r = Recurly::start().await;
    let created = r.create_usage_plan("gold").await;
    r.create_plan(&usage_plan("silver")).await;
    let id = created["id"].as_str().unwrap();
    // §2: remove answers 200 with the plan, now `inactive` [I].
    let deleted = r.delete(&format!("/plans/{id}")).await.expect(200);
    assert_eq!(deleted["code"], "gold");
    assert_eq!(deleted["state"], "inactive");
    let active = r.get("/plans?state=active").await.expect(200);
    assert_eq!(field_of(&active, "code"), ["silver"]);
    let inactive = r.get("/plans?state=inactive").await.expect(200);
    assert_eq!(field_of(&inactive, "code"), ["gold"]);
    r.finish().await;
}

#[tokio::test]
async fn an_unknown_plan_is_404_not_found() {
    let r = Recurly::start().await;
    r.get("/plans/code-nope")
        .await
        .expect_error(404, "not_found");
    r.get("/plans/zzzzzzzzzzzz")
        .await
        .expect_error(404, "not_found");
    r.put("/plans/code-nope", &json!({"name": "x"}))
        .await
        .expect_error(404, "not_found");
    r.finish().await;
}

#[tokio::test]
async fn a_duplicate_plan_code_is_422_code_has_already_been_taken() {
    let r = Recurly::start().await;
    r.create_usage_plan("gold").await;
    let error = r
        .post("/plans", &usage_plan("gold"))
        .await
        .expect_error(422, "validation");
    // §1.3: the spec's own example message for this case.
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Code has already been taken"),
        "{error}"
    );
    let list = r.get("/plans").await.expect(200);
    assert_eq!(list_data(&list).len(), 1, "no second plan: {list}");
    r.finish().await;
}

/// Posts `plan` and asserts a 422 `validation` that names a parameter, and that no plan exists.
async fn assert_plan_refused(r: &Recurly, plan: &Value, why: &str) {
    let reply = r.post("/plans", plan).await;
    assert_eq!(reply.status, 422, "{why}: {plan} → {}", reply.body);
    let error = reply.expect_error(422, "validation");
    assert!(
        error["params"]
            .as_array()
            .is_some_and(|p| !p.is_empty() && p.iter().all(|p| p["param"].is_string())),
        "{why}: a validation error names the parameter (§1.3): {error}"
    );
    let code = plan["code"].as_str().unwrap_or_default();
    if !code.is_empty() && !code.contains(' ') && !code.contains('@') {
        r.get(&format!("/plans/code-{code}"))
            .await
            .expect_error(404, "not_found");
    }
}

#[tokio::test]
async fn plan_codes_outside_the_pattern_or_over_50_characters_are_refused() {
    // §3.1: plan code `/^[a-z0-9_+-]+$/i`, maxLength 50.
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    for (code, why) in [
        ("has space", "a space"),
        ("at@sign", "an @"),
        ("dot.code", "a dot"),
        ("", "an empty code"),
    ] {
        assert_plan_refused(&r, &usage_plan(code), why).await;
    }
    let long = "a".repeat(51);
    assert_plan_refused(&r, &usage_plan(&long), "51 characters").await;

    // The boundary itself is fine (with an explicit accounting code, see §3.1).
    let mut fifty = usage_plan(&"b".repeat(50));
    fifty["accounting_code"] = json!("fifty");
    r.create_plan(&fifty).await;
    let mut mixed = usage_plan("Mixed-Case_1+x");
    mixed["accounting_code"] = json!("mixed");
    r.create_plan(&mixed).await;
    r.finish().await;
}

#[tokio::test]
async fn accounting_codes_over_20_characters_or_in_upper_case_are_refused() {
    // §3.1: accounting_code `/^[a-z0-9_+-]+$/` (case-sensitive), maxLength 20.
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    for (accounting_code, why) in [
        ("a".repeat(21), "21 characters"),
        ("UPPER".to_owned(), "upper case"),
        ("with space".to_owned(), "a space"),
    ] {
        let mut plan = usage_plan("acct-test");
        plan["accounting_code"] = json!(accounting_code);
        assert_plan_refused(&r, &plan, why).await;
    }
    let mut plan = usage_plan("acct-add-on");
    plan["add_ons"][0]["accounting_code"] = json!("CALLS");
    assert_plan_refused(&r, &plan, "an upper-case add-on accounting code").await;

    let mut plan = usage_plan("acct-ok");
    plan["accounting_code"] = json!("a".repeat(20));
    r.create_plan(&plan).await;
    r.finish().await;
}

#[tokio::test]
async fn add_on_tier_rules_are_enforced() {
    // §3 pricing rules: flat takes `currencies` and no `tiers`; tiered, volume and stairstep take
    // `tiers` and no `currencies`; ending_quantity is 1–999,999,999.
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let tiers = usage_add_on("x", "tiered")["tiers"].clone();
    let currencies = usage_add_on("x", "flat")["currencies"].clone();

    let mut flat_with_tiers = usage_add_on("calls", "flat");
    flat_with_tiers["tiers"] = tiers.clone();
    let mut tiered_without_tiers = usage_add_on("calls", "tiered");
    tiered_without_tiers
        .as_object_mut()
        .unwrap()
        .remove("tiers");
    let mut tiered_with_currencies = usage_add_on("calls", "tiered");
    tiered_with_currencies["currencies"] = currencies.clone();
    let mut volume_without_tiers = usage_add_on("calls", "volume");
    volume_without_tiers
        .as_object_mut()
        .unwrap()
        .remove("tiers");
    let mut ending_zero = usage_add_on("calls", "tiered");
    ending_zero["tiers"][0]["ending_quantity"] = json!(0);
    let mut ending_too_big = usage_add_on("calls", "tiered");
    ending_too_big["tiers"][1]["ending_quantity"] = json!(1_000_000_000);

    for (add_on, why) in [
        (flat_with_tiers, "flat with tiers"),
        (tiered_without_tiers, "tiered without tiers"),
        (tiered_with_currencies, "tiered with currencies"),
        (volume_without_tiers, "volume without tiers"),
        (ending_zero, "ending_quantity 0"),
        (ending_too_big, "ending_quantity 1,000,000,000"),
    ] {
        let mut plan = usage_plan("tier-rules");
        plan["add_ons"] = json!([add_on]);
        assert_plan_refused(&r, &plan, why).await;
    }
    r.finish().await;
}

#[tokio::test]
async fn a_usage_add_on_without_a_measured_unit_is_refused() {
    // §3: measured_unit_id or measured_unit_name is required for usage add-ons.
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let mut plan = usage_plan("no-unit");
    plan["add_ons"][0]
        .as_object_mut()
        .unwrap()
        .remove("measured_unit_name");
    assert_plan_refused(&r, &plan, "no measured unit").await;
    r.finish().await;
}

#[tokio::test]
async fn a_unit_amount_with_more_than_2_decimals_is_refused() {
    // §3: `unit_amount` ≤ 2 dp (spec `AddOnPricing.unit_amount`: "Supports up to 2 decimal
    // places."); 9 dp only through `unit_amount_decimal`.
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let mut add_on = usage_add_on("calls", "flat");
    add_on["currencies"] = json!([{"currency": "USD", "unit_amount": 0.005}]);
    let mut plan = usage_plan("three-dp");
    plan["add_ons"] = json!([add_on]);
    assert_plan_refused(&r, &plan, "unit_amount 0.005").await;

    let mut add_on = usage_add_on("calls", "flat");
    add_on["currencies"] = json!([{"currency": "USD", "unit_amount": 0.05}]);
    let mut plan = usage_plan("two-dp");
    plan["add_ons"] = json!([add_on]);
    r.create_plan(&plan).await;
    r.finish().await;
}

#[tokio::test]
async fn add_ons_are_created_read_updated_and_removed_under_their_plan() {
    let r = Recurly::start().await;
    r.create_usage_plan("gold").await;
    let created = r
        .post(
            "/plans/code-gold/add_ons",
            &usage_add_on("storage", "volume"),
        )
        .await
        .expect(201);
    assert_eq!(created["object"], "add_on");
    assert_eq!(created["code"], "storage");
    assert_eq!(created["state"], "active");

    let error = r
        .post("/plans/code-gold/add_ons", &usage_add_on("storage", "flat"))
        .await
        .expect_error(422, "validation");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Code has already been taken"),
        "§3: duplicate add-on code: {error}"
    );

    let by_code = r
        .get("/plans/code-gold/add_ons/code-storage")
        .await
        .expect(200);
    assert_eq!(by_code["id"], created["id"]);
    let add_on_id = created["id"].as_str().unwrap();
    let by_id = r
        .get(&format!("/plans/code-gold/add_ons/{add_on_id}"))
        .await
        .expect(200);
    assert_eq!(by_id["code"], "storage");

    // §3: update answers 201 in the spec; any 2xx is accepted.
    let updated = r
        .put(
            "/plans/code-gold/add_ons/code-storage",
            &json!({"name": "Storage GB"}),
        )
        .await
        .expect_success();
    assert_eq!(updated["name"], "Storage GB");
    assert_eq!(updated["tier_type"], "volume", "tier_type cannot change");

    let list = r.get("/plans/code-gold/add_ons").await.expect(200);
    let mut codes = field_of(&list, "code");
    codes.sort();
    assert_eq!(codes, ["api_calls", "storage"]);

    let removed = r
        .delete("/plans/code-gold/add_ons/code-storage")
        .await
        .expect(200);
    assert_eq!(removed["code"], "storage");
    r.get("/plans/code-nope/add_ons")
        .await
        .expect_error(404, "not_found");
    r.get("/plans/code-gold/add_ons/code-nope")
        .await
        .expect_error(404, "not_found");
    r.finish().await;
}

#[tokio::test]
async fn a_percentage_add_on_takes_a_usage_percentage_and_no_currencies() {
    // §3: `percentage` + `flat` needs `usage_percentage` (0–100) and no `currencies`.
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let percentage = json!({
        "code": "revenue_share", "name": "Revenue share",
        "add_on_type": "usage", "usage_type": "percentage", "tier_type": "flat",
        "usage_percentage": 2.5, "measured_unit_name": "api_calls"
    });
    let mut with_currencies = percentage.clone();
    with_currencies["currencies"] = json!([{"currency": "USD", "unit_amount": 1}]);
    let mut over_100 = percentage.clone();
    over_100["usage_percentage"] = json!(100.5);
    let mut missing = percentage.clone();
    missing.as_object_mut().unwrap().remove("usage_percentage");
    for (add_on, why) in [
        (with_currencies, "percentage with currencies"),
        (over_100, "usage_percentage over 100"),
        (missing, "percentage without usage_percentage"),
    ] {
        let mut plan = usage_plan("share");
        plan["add_ons"] = json!([add_on]);
        assert_plan_refused(&r, &plan, why).await;
    }
    let mut plan = usage_plan("share");
    plan["add_ons"] = json!([percentage]);
    r.create_plan(&plan).await;
    let add_on = r
        .get("/plans/code-share/add_ons/code-revenue_share")
        .await
        .expect(200);
    assert_eq!(add_on["usage_type"], "percentage");
    assert_eq!(add_on["usage_percentage"].as_f64(), Some(2.5));
    r.finish().await;
}

#[tokio::test]
async fn add_ons_of_every_plan_are_listed_site_wide() {
    // §3: `GET /add_ons` and `GET /add_ons/{add_on_id}`.
    let r = Recurly::start().await;
    r.create_usage_plan("gold").await;
    r.create_plan(&usage_plan("silver")).await;
    let list = r.get("/add_ons").await.expect(200);
    let data = list_data(&list);
    assert_eq!(data.len(), 2, "{list}");
    let plan_ids: std::collections::BTreeSet<_> =
        data.iter().map(|a| a["plan_id"].to_string()).collect();
    assert_eq!(plan_ids.len(), 2, "one add-on per plan: {list}");
    let id = data[0]["id"].as_str().unwrap();
    let one = r.get(&format!("/add_ons/{id}")).await.expect(200);
    assert_eq!(one["id"], data[0]["id"]);
    r.finish().await;
}

#[tokio::test]
async fn prices_outside_the_schema_bounds_are_refused() {
    // Spec `PlanCreate`/`PlanPricing`/`AddOnCreate`/`TierPricing`: currencies minItems 1,
    // currency maxLength 3, unit_amount 0–1,000,000, interval_length ≥ 1, add-on code ≤ 50;
    // §3: `unit_amount_decimal` ≤ 9 dp and for usage add-ons only.
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut plan = usage_plan("bounds");
    plan["currencies"] = json!([]);
    cases.push((plan, "no currencies"));
    let mut plan = usage_plan("bounds");
    plan["currencies"][0]["currency"] = json!("USDX");
    cases.push((plan, "a 4-letter currency"));
    let mut plan = usage_plan("bounds");
    plan["currencies"][0]["unit_amount"] = json!(-1);
    cases.push((plan, "a negative unit_amount"));
    let mut plan = usage_plan("bounds");
    plan["currencies"][0]["unit_amount"] = json!(1_000_001);
    cases.push((plan, "unit_amount over 1,000,000"));
    let mut plan = usage_plan("bounds");
    plan["interval_length"] = json!(0);
    cases.push((plan, "interval_length 0"));
    let mut plan = usage_plan("bounds");
    plan.as_object_mut().unwrap().remove("name");
    cases.push((plan, "no name"));
    let mut plan = usage_plan("bounds");
    plan["add_ons"][0]["code"] = json!("c".repeat(51));
    plan["add_ons"][0]["accounting_code"] = json!("calls");
    cases.push((plan, "an add-on code of 51"));
    let mut plan = usage_plan("bounds");
    plan["add_ons"][0]["tiers"][1]["currencies"][0]["unit_amount_decimal"] = json!("0.0000000001");
    cases.push((plan, "unit_amount_decimal with 10 places"));
    let mut plan = usage_plan("bounds");
    plan["add_ons"] = json!([{"code": "support", "name": "Support", "add_on_type": "fixed",
                              "currencies": [{"currency": "USD", "unit_amount_decimal": "1.5"}]}]);
    cases.push((plan, "unit_amount_decimal on a fixed add-on"));
    for (plan, why) in cases {
        assert_plan_refused(&r, &plan, why).await;
    }
    // Nine places are fine.
    let mut plan = usage_plan("nine-places");
    plan["add_ons"][0]["tiers"][1]["currencies"][0]["unit_amount_decimal"] = json!("0.000000001");
    r.create_plan(&plan).await;
    r.finish().await;
}

#[tokio::test]
async fn codes_are_percent_decoded_in_paths() {
    // §1.1: "Percent-encode codes in paths"; the plan code pattern allows `+` (§3.1).
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let mut plan = usage_plan("gold+plus");
    plan["accounting_code"] = json!("goldplus");
    let created = r.create_plan(&plan).await;
    let fetched = r.get("/plans/code-gold%2Bplus").await.expect(200);
    assert_eq!(fetched["id"], created["id"]);
    r.finish().await;
}
