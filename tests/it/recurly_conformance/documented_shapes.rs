//! What Recurly's OpenAPI says where the sandbox once disagreed: closing an account cancels its
//! subscriptions to the end of their period (`deactivate_account`), answers carry every documented
//! field (`null` or `[]` when unset), and a defaulted `accounting_code` refuses nothing.

use billing_bridge_contract::RecurlyContract;
use serde_json::{Value, json};

use super::client::{Recurly, list_data, subscription, usage_add_on};

#[tokio::test]
async fn closing_an_account_cancels_its_subscriptions_which_stay_until_their_period_ends() {
    // OpenAPI `deactivate_account`: "cancels any active subscriptions (canceled subscriptions
    // will remain active until the end of the current billing cycle before expiring)".
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let id = sub["id"].as_str().unwrap();

    let closed = r.delete("/accounts/code-consumer-1").await.expect(200);
    assert_eq!(closed["state"], "inactive");
    let after = r.get(&format!("/subscriptions/{id}")).await.expect(200);
    assert_eq!(after["state"], "canceled", "canceled, not expired: {after}");
    assert!(after["canceled_at"].is_string(), "{after}");
    assert_eq!(
        after["expires_at"], sub["current_period_ends_at"],
        "it expires when its current billing cycle ends: {after}"
    );
    assert_eq!(
        after["current_period_ends_at"],
        sub["current_period_ends_at"]
    );
    // `SubscriptionStateEnum` has `canceled`; the account's list filters on it.
    let canceled = r
        .get("/accounts/code-consumer-1/subscriptions?state=canceled")
        .await
        .expect(200);
    assert_eq!(list_data(&canceled).len(), 1, "{canceled}");
    let expired = r
        .get("/accounts/code-consumer-1/subscriptions?state=expired")
        .await
        .expect(200);
    assert!(list_data(&expired).is_empty(), "{expired}");
    // Until then it is still billed: usage is taken.
    r.post(
        &format!("/subscriptions/{id}/add_ons/code-api_calls/usage"),
        &json!({"amount": 3}),
    )
    .await
    .expect(201);
    r.finish().await;
}

#[tokio::test]
async fn every_answer_carries_each_documented_field_null_or_empty_when_unset() {
    // Recurly answers `null` for unset fields (reference §6: `"billed_at": null`); checked
    // against the spec's own property lists by `finish`, and here on the fields clients read.
    let r = Recurly::start().await;
    let plan = json!({
        "code": "mixed", "name": "Mixed",
        "currencies": [{"currency": "USD", "unit_amount": 0}],
        "add_ons": [usage_add_on("api_calls", "tiered"), usage_add_on("flat_calls", "flat")]
    });
    r.create_measured_unit("api_calls").await;
    let created = r.post("/plans", &plan).await.expect(201);
    for key in [
        "description",
        "trial_unit",
        "dunning_campaign_id",
        "deleted_at",
    ] {
        assert!(
            created.get(key).is_some(),
            "a plan answer has `{key}`: {created}"
        );
    }
    assert_eq!(created["ramp_intervals"], json!([]));
    assert_eq!(created["custom_fields"], json!([]));

    let add_ons = r.get("/plans/code-mixed/add_ons").await.expect(200);
    let flat = list_data(&add_ons)
        .iter()
        .find(|a| a["code"] == "flat_calls")
        .unwrap();
    assert_eq!(
        flat["tiers"],
        json!([]),
        "a flat add-on has no tiers: {flat}"
    );
    assert_eq!(flat["percentage_tiers"], json!([]));
    assert!(
        flat.get("item").is_some() && flat["item"].is_null(),
        "{flat}"
    );

    r.create_account("consumer-1").await;
    let mut body = subscription("consumer-1", "mixed");
    body["add_ons"] = json!([{"code": "api_calls"}, {"code": "flat_calls"}]);
    let sub = r.post("/subscriptions", &body).await.expect(201);
    for key in [
        "pending_change",
        "shipping",
        "canceled_at",
        "expires_at",
        "tax_info",
    ] {
        assert!(
            sub.get(key).is_some_and(Value::is_null),
            "a new subscription has `{key}: null`: {sub}"
        );
    }
    let id = sub["id"].as_str().unwrap();
    let flat_usage = r
        .post(
            &format!("/subscriptions/{id}/add_ons/code-flat_calls/usage"),
            &json!({"amount": 4}),
        )
        .await
        .expect(201);
    assert_eq!(
        flat_usage["tiers"],
        json!([]),
        "a flat usage has `tiers: []`: {flat_usage}"
    );
    assert!(flat_usage["billed_at"].is_null(), "{flat_usage}");
    let tiered_usage = r
        .post(
            &format!("/subscriptions/{id}/add_ons/code-api_calls/usage"),
            &json!({"amount": 4}),
        )
        .await
        .expect(201);
    assert_eq!(
        tiered_usage["tiers"].as_array().map(Vec::len),
        Some(2),
        "{tiered_usage}"
    );
    let account = r.get("/accounts/code-consumer-1").await.expect(200);
    for key in ["company", "address", "billing_info", "preferred_time_zone"] {
        assert!(
            account.get(key).is_some(),
            "an account answer has `{key}`: {account}"
        );
    }
    // Every answer above, and the lists, against the spec's property lists.
    let contract = RecurlyContract::get();
    for (path, answer) in [
        ("/plans/code-mixed", &created),
        ("/subscriptions/x", &sub),
        ("/usage/x", &flat_usage),
        ("/accounts/code-consumer-1", &account),
        ("/plans/code-mixed/add_ons", &add_ons),
    ] {
        if let Err(missing) = contract.missing_response_fields("GET", path, 200, answer) {
            panic!("{path}: {missing}");
        }
    }
    r.finish().await;
}

#[tokio::test]
async fn a_long_code_without_an_accounting_code_is_taken() {
    // Recurly §3.1: `accounting_code` "defaults to the plan's (add-on's) code"; whether that
    // default is held to its 20-character rule is undocumented, and a code may be 50 long.
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let long = "amplify-plan-8a2e89a1844076b20184436063bd2747";
    let mut add_on = usage_add_on("amplify-quota-8a2e89a1844076b20184436065262750", "tiered");
    add_on.as_object_mut().unwrap().remove("accounting_code");
    let plan = json!({
        "code": long, "name": "Silver",
        "currencies": [{"currency": "USD", "unit_amount": 10}],
        "add_ons": [add_on]
    });
    let created = r.post("/plans", &plan).await.expect(201);
    assert_eq!(created["code"], long);
    let add_ons = r
        .get(&format!("/plans/code-{long}/add_ons"))
        .await
        .expect(200);
    assert_eq!(list_data(&add_ons).len(), 1, "{add_ons}");
    // A short code still becomes the accounting code, and an explicit one still obeys the rule.
    let short = json!({"code": "basic", "name": "Basic",
                       "currencies": [{"currency": "USD", "unit_amount": 0}]});
    let created = r.post("/plans", &short).await.expect(201);
    assert_eq!(created["accounting_code"], "basic");
    let explicit = json!({"code": "basic2", "name": "Basic", "accounting_code": long,
                          "currencies": [{"currency": "USD", "unit_amount": 0}]});
    r.post("/plans", &explicit)
        .await
        .expect_error(422, "validation");
    r.finish().await;
}
