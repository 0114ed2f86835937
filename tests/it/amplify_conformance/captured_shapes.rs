//! Shapes the platform is seen to send where the sandbox once differed or was untested: a
//! subscription awaiting approval as in the captured event of §4.3 (with `state` and the
//! platform's `attributes`), a Platform user as the agent SDK models it (`_id`, `guid`, integer
//! `user_id`), and a Standard quota with overage pricing (§3.3) kept as sent.

use std::time::Duration;

use serde_json::{Value, json};

use super::client::{Amplify, CONSUMER_ORG, MARKETPLACE, ORG_ID, Resp, TEAM_ID, plan_body};
use super::receiver::Receiver;
use super::webhooks::{register_billing_hook, subresource};

const WAIT: Duration = Duration::from_secs(2);
const SUBSCRIBER: &str = "281768f2-0000-4000-8000-00000000feed";

/// The subscription-level facts of the captured pending event (§4.3): `approval.state` pending,
/// `state.name` active, and the attributes `marketplaceId`, `tenantId` (provider org),
/// `consumerTenantId` (consumer org), `ownerId` (owning team) and `userId` (the subscriber, who
/// is also `marketplace.resource.metadata.createUserId` there).
fn assert_pending_as_captured(sub: &Value) {
    assert_eq!(sub["approval"]["state"], "pending", "{sub}");
    assert_eq!(sub["state"], json!({"name": "active"}), "§4.3: {sub}");
    let attributes = &sub["attributes"];
    assert_eq!(attributes["marketplaceId"], MARKETPLACE, "{sub}");
    assert_eq!(
        attributes["marketplaceId"], sub["marketplace"]["name"],
        "{sub}"
    );
    assert_eq!(attributes["tenantId"], ORG_ID, "{sub}");
    assert_eq!(attributes["consumerTenantId"], CONSUMER_ORG, "{sub}");
    assert_eq!(attributes["ownerId"], TEAM_ID, "{sub}");
    assert_eq!(attributes["userId"], SUBSCRIBER, "{sub}");
    assert_eq!(
        sub["marketplace"]["resource"]["metadata"]["createUserId"], SUBSCRIBER,
        "{sub}"
    );
}

#[tokio::test]
async fn a_pending_subscription_carries_state_and_the_platform_attributes_in_resource_and_event() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_billing_hook(&amp, &rx.url).await;

    // No attributes in the body: the platform writes them.
    amp.create(
        "/catalog/v1/subscriptions",
        &json!({"group": "catalog", "apiVersion": "v1", "kind": "Subscription", "name": "sub-1",
                "spec": {"product": "p", "plan": {"name": "silver"}},
                "marketplace": {"resource": {"owner": {"type": "team", "id": TEAM_ID,
                    "organization": {"id": CONSUMER_ORG}, "user": {"id": SUBSCRIBER}}}}}),
    )
    .await;
    let got = rx
        .wait_until(WAIT, |got| {
            got.iter().any(|d| subresource(&d.body) == Some("approval"))
        })
        .await
        .to_vec();
    let event = got
        .iter()
        .map(|d| &d.body)
        .find(|e| e["type"] == "SubResourceUpdated" && subresource(e) == Some("approval"))
        .expect("the approval event");
    assert_pending_as_captured(&event["payload"]);
    let resource = amp
        .get("/catalog/v1/subscriptions/sub-1")
        .await
        .expect(200, "the subscription");
    assert_pending_as_captured(&resource);
}

#[tokio::test]
async fn a_provider_org_subscription_has_no_consumer_tenant() {
    // §3.4: "`consumerTenantId` appears only for consumer-org subscribers".
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    let sub = amp
        .create(
            "/catalog/v1/subscriptions",
            &json!({"group": "catalog", "apiVersion": "v1", "kind": "Subscription", "name": "own",
                    "spec": {"product": "p", "plan": {"name": "silver"}},
                    "marketplace": {"resource": {"owner": {"type": "team", "id": TEAM_ID,
                        "organization": {"id": ORG_ID}}}}}),
        )
        .await;
    let resource = amp
        .get("/catalog/v1/subscriptions/own")
        .await
        .expect(200, "the subscription");
    assert_eq!(resource["attributes"]["tenantId"], ORG_ID, "{resource}");
    assert!(
        resource["attributes"].get("consumerTenantId").is_none(),
        "{resource}"
    );
    assert!(sub["attributes"]["userId"].is_string(), "{sub}");
}

#[tokio::test]
async fn a_platform_user_has_a_string_id_and_an_integer_user_id_as_the_sdk_models_it() {
    // Agent SDK `PlatformUserInfo`: `{"success", "result": {"_id": string, "guid": string,
    // "user_id": int64, "firstname", "lastname", "active": bool, "email"}}`.
    let amp = Amplify::start().await;
    let seeded = amp
        .sb
        .http
        .post(amp.sb.at("/_sandbox/seed"))
        .json(&json!({"amplify": {"users": [
            {"guid": SUBSCRIBER, "email": "dev@consumer.example", "firstname": "Dev", "lastname": "One"}]}}))
        .send()
        .await
        .unwrap();
    Resp::from(seeded).await.expect(201, "seed");
    let body = amp
        .send(
            amp.sb
                .http
                .get(amp.sb.at(&format!("/platform/api/v1/user/{SUBSCRIBER}"))),
        )
        .await
        .expect(200, "user lookup");
    assert_eq!(body["success"], true, "{body}");
    let user = &body["result"];
    assert!(
        user["_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    assert!(
        user["user_id"].is_i64() || user["user_id"].is_u64(),
        "an integer user_id: {body}"
    );
    assert_eq!(user["guid"], SUBSCRIBER, "{body}");
    assert_eq!(user["email"], "dev@consumer.example", "{body}");
    assert_eq!(user["firstname"], "Dev", "{body}");
    assert_eq!(user["lastname"], "One", "{body}");
    assert_eq!(user["active"], true, "{body}");
}

#[tokio::test]
async fn a_standard_quota_with_overage_pricing_is_stored_and_served_as_sent() {
    // §3.3: pricing `fixed` ("Standard") with `interval` and a `loose` limit whose
    // `overages.value` prices each unit over it (SDK `QuotaSpecLimitTypeLoose{Value, Overages}`).
    let amp = Amplify::start().await;
    amp.product("v1", "p", "recurly").await;
    amp.create("/catalog/v1/productplans", &plan_body("v1", "metered", "p"))
        .await;
    let pricing = json!({"type": "fixed", "interval": "monthly",
                         "limit": {"type": "loose", "value": 1000, "overages": {"value": 0.05}}});
    let created = amp
        .create(
            "/catalog/v1/productplans/metered/quotas",
            &json!({"group": "catalog", "apiVersion": "v1", "kind": "Quota", "name": "calls",
                    "title": "Calls",
                    "spec": {"unit": "transactions", "pricing": pricing,
                             "resources": [{"kind": "AssetResource", "name": "weather/current"}]}}),
        )
        .await;
    assert_eq!(created["spec"]["pricing"], pricing, "{created}");
    let read = amp
        .get("/catalog/v1/productplans/metered/quotas/calls")
        .await
        .expect(200, "the quota");
    assert_eq!(read["spec"]["pricing"], pricing, "{read}");
    let listed = amp
        .get("/catalog/v1/quotas")
        .await
        .expect(200, "quotas across plans");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "calls" && q["spec"]["pricing"] == pricing),
        "{listed}"
    );
    // Activating the plan keeps it (§3.2: an active plan's quotas may only gain resources).
    amp.activate_plan("v1", "metered").await;
    let after = amp
        .get("/catalog/v1/productplans/metered/quotas/calls")
        .await
        .expect(200, "the quota");
    assert_eq!(after["spec"]["pricing"], pricing, "{after}");
}
