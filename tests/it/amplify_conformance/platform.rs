//! Amplify Platform user and team lookups (§1.1 platform prefix, §6 "Amplify Platform Connector
//! … subscriber email") over users seeded with `POST /_sandbox/seed`.

use serde_json::{Value, json};

use super::client::{Amplify, Resp};

async fn seed(amp: &Amplify, amplify: Value) -> Value {
    let resp = amp
        .sb
        .http
        .post(amp.sb.at("/_sandbox/seed"))
        .json(&json!({ "amplify": amplify }))
        .send()
        .await
        .unwrap();
    Resp::from(resp).await.expect(201, "seed")
}

async fn platform_get(amp: &Amplify, path: &str) -> Resp {
    amp.send(
        amp.sb
            .http
            .get(amp.sb.at(&format!("/platform/api/v1{path}"))),
    )
    .await
}

#[tokio::test]
async fn user_lookup_gives_the_seeded_email() {
    let amp = Amplify::start().await;
    seed(
        &amp,
        json!({"users": [
            {"guid": "281768f2-user", "email": "dev@consumer.example", "firstname": "Dev", "lastname": "One"},
            {"guid": "other-user", "email": "ops@consumer.example", "firstname": "Ops", "lastname": "Two"}]}),
    )
    .await;
    let body = platform_get(&amp, "/user/281768f2-user")
        .await
        .expect(200, "user lookup");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["result"]["guid"], "281768f2-user", "{body}");
    assert_eq!(body["result"]["email"], "dev@consumer.example", "{body}");
    assert_eq!(body["result"]["firstname"], "Dev", "{body}");
}

#[tokio::test]
async fn unknown_user_is_404() {
    let amp = Amplify::start().await;
    seed(
        &amp,
        json!({"users": [{"guid": "u1", "email": "dev@consumer.example"}]}),
    )
    .await;
    let resp = platform_get(&amp, "/user/nobody").await;
    assert_eq!(resp.status.as_u16(), 404, "{}", resp.text);
    assert_eq!(resp.body["success"], false, "{}", resp.text);
}

#[tokio::test]
async fn platform_requires_a_bearer_token() {
    let amp = Amplify::start().await;
    seed(
        &amp,
        json!({"users": [{"guid": "u1", "email": "dev@consumer.example"}]}),
    )
    .await;
    let resp = amp
        .sb
        .http
        .get(amp.sb.at("/platform/api/v1/user/u1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn team_lookup_lists_its_members() {
    let amp = Amplify::start().await;
    seed(
        &amp,
        json!({"users": [{"guid": "u1", "email": "dev@consumer.example"},
                         {"guid": "u2", "email": "admin@consumer.example"}],
               "teams": [{"guid": "t1", "name": "Consumers",
                          "users": ["u1", {"guid": "u2", "roles": ["administrator"]}]}]}),
    )
    .await;
    let body = platform_get(&amp, "/team/t1")
        .await
        .expect(200, "team lookup");
    assert_eq!(body["result"]["name"], "Consumers", "{body}");
    let members: Vec<&str> = body["result"]["users"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|u| u["guid"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["u1", "u2"]);
}

#[tokio::test]
async fn seeded_catalog_is_served_by_the_api_with_its_subresources() {
    let amp = Amplify::start().await;
    let created = seed(
        &amp,
        json!({"resources": [
            {"kind": "Product", "name": "p", "attributes": {"billingSystem": "recurly"}, "state": "active"},
            {"kind": "ProductPlan", "name": "gold", "spec": {"product": "p", "type": "paid"}, "state": "active"},
            {"kind": "Quota", "name": "q0", "metadata": {"scope": {"name": "gold"}},
             "spec": {"unit": "transactions", "resources": [{"kind": "AssetResource", "name": "pets/v1"}]}},
            {"kind": "Subscription", "name": "s1", "spec": {"product": "p", "plan": {"name": "gold"}},
             "approval": {"state": "approved"}}]}),
    )
    .await;
    assert_eq!(
        created["amplify"]["resources"].as_array().map(Vec::len),
        Some(4),
        "{created}"
    );
    let plan = amp
        .get("/catalog/v1/productplans/gold")
        .await
        .expect(200, "seeded plan");
    assert_eq!(plan["state"], "active");
    let quotas = amp
        .get("/catalog/v1/productplans/gold/quotas")
        .await
        .expect(200, "seeded quota");
    assert_eq!(quotas[0]["name"], "q0");
    let sub = amp
        .get("/catalog/v1/subscriptions/s1")
        .await
        .expect(200, "seeded subscription");
    assert_eq!(sub["approval"]["state"], "approved", "{sub}");
    assert_eq!(
        sub["state"]["name"], "active",
        "§3.4 approved means active: {sub}"
    );
}

#[tokio::test]
async fn seed_stops_at_the_first_bad_resource_with_400() {
    let amp = Amplify::start().await;
    let resp = amp
        .sb
        .http
        .post(amp.sb.at("/_sandbox/seed"))
        .json(&json!({"amplify": {"resources": [
            {"kind": "ProductPlan", "name": "orphan", "spec": {"product": "missing", "type": "paid"}}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}
