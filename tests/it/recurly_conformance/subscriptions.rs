//! Subscriptions (reference §5): creation on an existing account with explicit add-ons, look-up
//! by id and `uuid-`, listing by account and state, cancel and terminate.

use serde_json::json;

use super::client::{Recurly, field_of, list_data, subscription};

#[tokio::test]
async fn a_subscription_is_created_on_an_existing_account_with_its_usage_add_on() {
    let r = Recurly::start().await;
    r.create_usage_plan("acme-weather-basic").await;
    let account = r.create_account("consumer-7f3a").await;
    let sub = r
        .post(
            "/subscriptions",
            &subscription("consumer-7f3a", "acme-weather-basic"),
        )
        .await
        .expect(201);
    assert_eq!(sub["object"], "subscription");
    assert_eq!(sub["state"], "active");
    assert_eq!(sub["currency"], "USD");
    assert_eq!(sub["collection_method"], "manual");
    assert_eq!(sub["plan"]["code"], "acme-weather-basic");
    // §5: `{"account": {"code": existing}}` attaches to that account, it does not make a new one.
    assert_eq!(sub["account"]["code"], "consumer-7f3a");
    assert_eq!(sub["account"]["id"], account["id"]);
    let accounts = r.get("/accounts").await.expect(200);
    assert_eq!(list_data(&accounts).len(), 1, "{accounts}");
    let add_ons = sub["add_ons"].as_array().expect("subscription add-ons");
    assert_eq!(add_ons.len(), 1, "{sub}");
    assert_eq!(add_ons[0]["add_on"]["code"], "api_calls");
    assert_eq!(add_ons[0]["quantity"], 1);
    assert_eq!(add_ons[0]["tier_type"], "tiered");
    assert!(sub["uuid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(sub["current_period_started_at"].is_string());
    assert!(sub["current_period_ends_at"].is_string());
    r.finish().await;
}

#[tokio::test]
async fn a_usage_add_on_with_quantity_2_is_refused() {
    // §5: "Usage-based add-ons can only have a `quantity` of 1" [V RDOCS].
    let r = Recurly::start().await;
    r.create_usage_plan("gold").await;
    r.create_account("consumer-1").await;
    let mut body = subscription("consumer-1", "gold");
    body["add_ons"][0]["quantity"] = json!(2);
    r.post("/subscriptions", &body)
        .await
        .expect_error(422, "validation");
    let subs = r
        .get("/accounts/code-consumer-1/subscriptions")
        .await
        .expect(200);
    assert!(list_data(&subs).is_empty(), "{subs}");
    r.finish().await;
}

#[tokio::test]
async fn a_subscription_to_an_unknown_plan_is_refused() {
    let r = Recurly::start().await;
    r.create_account("consumer-1").await;
    let reply = r
        .post(
            "/subscriptions",
            &subscription("consumer-1", "no-such-plan"),
        )
        .await;
    assert!(
        matches!(reply.status, 404 | 422),
        "an unknown plan_code is refused: {} {}",
        reply.status,
        reply.body
    );
    r.finish().await;
}

#[tokio::test]
async fn a_subscription_is_found_by_id_and_by_uuid() {
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let id = sub["id"].as_str().unwrap();
    let uuid = sub["uuid"].as_str().unwrap();
    let by_id = r.get(&format!("/subscriptions/{id}")).await.expect(200);
    assert_eq!(by_id["uuid"], uuid);
    let by_uuid = r
        .get(&format!("/subscriptions/uuid-{uuid}"))
        .await
        .expect(200);
    assert_eq!(by_uuid["id"], id);
    r.get("/subscriptions/uuid-00000000000000000000000000000000")
        .await
        .expect_error(404, "not_found");
    r.finish().await;
}

#[tokio::test]
async fn subscriptions_are_listed_by_account_and_filtered_by_state() {
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let path = "/accounts/code-consumer-1/subscriptions";
    assert_eq!(
        field_of(&r.get(path).await.expect(200), "id"),
        [id.as_str()]
    );
    let active = r.get(&format!("{path}?state=active")).await.expect(200);
    assert_eq!(field_of(&active, "id"), [id.as_str()]);

    r.put(&format!("/subscriptions/{id}/cancel"), &json!({}))
        .await
        .expect(200);
    let active = r.get(&format!("{path}?state=active")).await.expect(200);
    assert!(
        list_data(&active).is_empty(),
        "canceled is not active: {active}"
    );
    let canceled = r.get(&format!("{path}?state=canceled")).await.expect(200);
    assert_eq!(field_of(&canceled, "id"), [id.as_str()]);
    // §5: `live` = active, canceled, future or in trial.
    let live = r.get(&format!("{path}?state=live")).await.expect(200);
    assert_eq!(field_of(&live, "id"), [id.as_str()]);
    let expired = r.get(&format!("{path}?state=expired")).await.expect(200);
    assert!(list_data(&expired).is_empty(), "{expired}");
    r.finish().await;
}

#[tokio::test]
async fn a_canceled_subscription_is_canceled_and_cannot_be_canceled_again() {
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let id = sub["id"].as_str().unwrap();
    let canceled = r
        .put(&format!("/subscriptions/{id}/cancel"), &json!({}))
        .await
        .expect(200);
    assert_eq!(canceled["state"], "canceled");
    assert!(canceled["canceled_at"].is_string(), "{canceled}");
    // §5: cancel at term end keeps the subscription until `expires_at`.
    assert!(canceled["expires_at"].is_string(), "{canceled}");
    // §5: "Only active and future subscriptions can be canceled".
    let reply = r
        .put(&format!("/subscriptions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(reply.status, 422, "second cancel: {}", reply.body);
    let fetched = r.get(&format!("/subscriptions/{id}")).await.expect(200);
    assert_eq!(fetched["state"], "canceled");
    r.finish().await;
}

#[tokio::test]
async fn terminating_a_subscription_expires_it_now() {
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let id = sub["id"].as_str().unwrap();
    // §5: DELETE terminates now (refund none, charge true by default) → `expired`.
    let expired = r
        .delete(&format!("/subscriptions/{id}?refund=none&charge=false"))
        .await
        .expect(200);
    assert_eq!(expired["state"], "expired");
    assert!(expired["expires_at"].is_string(), "{expired}");
    let fetched = r.get(&format!("/subscriptions/{id}")).await.expect(200);
    assert_eq!(fetched["state"], "expired");
    r.finish().await;
}

#[tokio::test]
async fn a_canceled_subscription_can_be_reactivated_but_an_active_one_cannot() {
    // §5: reactivate answers 200, only before expiry; the spec's 422 example is "Only canceled
    // subscriptions can be reactivated".
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let id = sub["id"].as_str().unwrap();
    let reply = r
        .put_empty(&format!("/subscriptions/{id}/reactivate"))
        .await;
    assert_eq!(
        reply.status, 422,
        "reactivating an active one: {}",
        reply.body
    );
    r.put(&format!("/subscriptions/{id}/cancel"), &json!({}))
        .await
        .expect(200);
    let reactivated = r
        .put_empty(&format!("/subscriptions/{id}/reactivate"))
        .await
        .expect(200);
    assert_eq!(reactivated["state"], "active");
    r.delete(&format!("/subscriptions/{id}")).await.expect(200);
    let reply = r
        .put_empty(&format!("/subscriptions/{id}/reactivate"))
        .await;
    assert_eq!(
        reply.status, 422,
        "reactivating an expired one: {}",
        reply.body
    );
    r.finish().await;
}

#[tokio::test]
async fn a_deleted_plan_takes_no_new_subscriptions() {
    // §2: deleting "prevents new customers from subscribing to it" [V RDOCS].
    let r = Recurly::start().await;
    r.create_usage_plan("gold").await;
    r.create_account("consumer-1").await;
    r.delete("/plans/code-gold").await.expect(200);
    let reply = r
        .post("/subscriptions", &subscription("consumer-1", "gold"))
        .await;
    assert!(
        matches!(reply.status, 404 | 422),
        "subscribing to a deleted plan: {} {}",
        reply.status,
        reply.body
    );
    let subs = r
        .get("/accounts/code-consumer-1/subscriptions")
        .await
        .expect(200);
    assert!(list_data(&subs).is_empty(), "{subs}");
    r.finish().await;
}

#[tokio::test]
async fn a_subscription_without_currency_or_with_an_unknown_add_on_is_refused() {
    // Spec `SubscriptionCreate` requires `plan_code`, `currency` and `account`; add-on codes
    // name the plan's add-ons (`add_on_source` defaults to `plan_add_on`).
    let r = Recurly::start().await;
    r.create_usage_plan("gold").await;
    r.create_account("consumer-1").await;
    let mut no_currency = subscription("consumer-1", "gold");
    no_currency.as_object_mut().unwrap().remove("currency");
    r.post("/subscriptions", &no_currency)
        .await
        .expect_error(422, "validation");
    let mut unknown_add_on = subscription("consumer-1", "gold");
    unknown_add_on["add_ons"][0]["code"] = json!("no_such_add_on");
    let reply = r.post("/subscriptions", &unknown_add_on).await;
    assert!(
        matches!(reply.status, 404 | 422),
        "unknown add-on: {} {}",
        reply.status,
        reply.body
    );
    let subs = r
        .get("/accounts/code-consumer-1/subscriptions")
        .await
        .expect(200);
    assert!(list_data(&subs).is_empty(), "{subs}");
    r.finish().await;
}
