//! Webhooks (§4): Integration, Secret, Webhook and ResourceHook created through the API, and the
//! events a receiver gets for subscription and plan changes (§4.3).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::client::{Amplify, ORG_ID, is_amplify_timestamp, owner};
use super::receiver::{Delivery, Receiver};

const WAIT: Duration = Duration::from_secs(2);
const SECRET_VALUE: &str = "Bearer hook-s3cr3t";

/// A ResourceHook trigger for a catalog kind (§4.1).
fn trigger(kind: &str, name: &str, types: &[&str]) -> Value {
    json!({"group": "catalog", "kind": kind, "name": name, "type": types})
}

/// Creates Integration `integration`, its Secret, a Webhook to `url` and a ResourceHook with
/// `triggers` (§4.1), all through the API. `location` is the Webhook's `auth.location`.
async fn register_hook(
    amp: &Amplify,
    integration: &str,
    url: &str,
    location: Option<Value>,
    triggers: Vec<Value>,
) {
    let base = format!("/management/v1/integrations/{integration}");
    amp.create(
        "/management/v1/integrations",
        &json!({"group": "management", "apiVersion": "v1", "kind": "Integration",
                "name": integration, "spec": {"description": "billing-bridge events"}}),
    )
    .await;
    amp.create(
        &format!("{base}/secrets"),
        &json!({"group": "management", "apiVersion": "v1", "kind": "Secret",
                "name": format!("secret-{integration}"),
                "spec": {"data": {"Authorization": SECRET_VALUE}}}),
    )
    .await;
    let mut auth =
        json!({"secret": {"name": format!("secret-{integration}"), "key": "Authorization"}});
    if let Some(location) = location {
        auth["location"] = location;
    }
    amp.create(
        &format!("{base}/webhooks"),
        &json!({"group": "management", "apiVersion": "v1", "kind": "Webhook",
                "name": format!("wh-{integration}"),
                "spec": {"enabled": true, "url": url,
                         "headers": {"Content-Type": "application/json", "X-Source": "amplify-sandbox"},
                         "auth": auth}}),
    )
    .await;
    amp.create(
        &format!("{base}/resourcehooks"),
        &json!({"group": "management", "apiVersion": "v1", "kind": "ResourceHook",
                "name": format!("rh-{integration}"),
                "spec": {"triggers": triggers, "webhooks": [format!("wh-{integration}")]}}),
    )
    .await;
}

fn all_types() -> Vec<&'static str> {
    vec!["created", "updated", "deleted"]
}

/// The subscription and plan hook of the billing service, with the secret in `X-Billing-Auth`.
pub(super) async fn register_billing_hook(amp: &Amplify, url: &str) {
    register_hook(
        amp,
        "billing",
        url,
        Some(json!({"in": "header", "name": "X-Billing-Auth"})),
        vec![
            trigger("Subscription", "*", &all_types()),
            trigger("ProductPlan", "*", &all_types()),
        ],
    )
    .await;
}

pub(super) fn subresource(event: &Value) -> Option<&str> {
    event["metadata"]["subresource"].as_str()
}

fn has_update_of(events: &[Delivery], sub: &str, pred: impl Fn(&Value) -> bool) -> bool {
    events.iter().any(|d| {
        d.body["type"] == "SubResourceUpdated" && subresource(&d.body) == Some(sub) && pred(&d.body)
    })
}

/// Checks the §4.3 envelope of one delivered event.
fn assert_event_envelope(event: &Value) {
    for field in ["id", "version", "product", "correlationId"] {
        assert!(
            event[field].as_str().is_some_and(|v| !v.is_empty()),
            "§4.3 `{field}` in {event}"
        );
    }
    assert!(
        event["time"].as_str().is_some_and(is_amplify_timestamp),
        "§4.3 time like 2023-11-14T16:26:41.703+0000: {}",
        event["time"]
    );
    assert_eq!(event["organization"]["id"], ORG_ID, "§4.3 provider org id");
    let kind = event["type"].as_str().unwrap_or_default();
    assert!(
        [
            "ResourceCreated",
            "ResourceUpdated",
            "ResourceDeleted",
            "SubResourceUpdated"
        ]
        .contains(&kind),
        "§4.3 type: {event}"
    );
    assert!(
        event["payload"]["kind"].is_string(),
        "§4.3 payload is the resource: {event}"
    );
    if kind == "SubResourceUpdated" {
        assert!(
            subresource(event).is_some(),
            "§4.3 metadata.subresource: {event}"
        );
    }
}

#[tokio::test]
async fn subscription_creation_delivers_created_then_status_marketplace_and_pending_approval() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_billing_hook(&amp, &rx.url).await;

    amp.subscription("v1", "sub-1", "p", "silver").await;
    let got = rx
        .wait_until(WAIT, |got| has_update_of(got, "approval", |_| true))
        .await
        .to_vec();

    let events: Vec<&Value> = got.iter().map(|d| &d.body).collect();
    assert!(!events.is_empty(), "no event delivered");
    for event in &events {
        assert_event_envelope(event);
        assert_eq!(event["payload"]["kind"], "Subscription", "{event}");
        assert_eq!(event["payload"]["name"], "sub-1", "{event}");
    }
    assert_eq!(
        events[0]["type"], "ResourceCreated",
        "§4.3 created first: {events:?}"
    );

    let order: Vec<&str> = events.iter().filter_map(|e| subresource(e)).collect();
    let first = |sub: &str| {
        order
            .iter()
            .position(|s| *s == sub)
            .unwrap_or_else(|| panic!("§4.3 a `{sub}` update is delivered: {order:?}"))
    };
    assert!(
        first("status") < first("marketplace") && first("marketplace") < first("approval"),
        "§4.3 status, then marketplace, then approval: {order:?}"
    );
    let approval = events
        .iter()
        .find(|e| subresource(e) == Some("approval"))
        .unwrap();
    assert_eq!(
        approval["payload"]["approval"]["state"], "pending",
        "{approval}"
    );
    assert_eq!(
        approval["payload"]["marketplace"]["resource"]["owner"],
        owner(),
        "§3.4 the owner from the create body reaches the payload"
    );

    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "§4.3 each event has its own id");

    for delivery in &got {
        assert_eq!(delivery.method, "POST");
        assert_eq!(
            delivery.headers.get("x-billing-auth").map(String::as_str),
            Some(SECRET_VALUE),
            "§4.1 secret verbatim in the configured header"
        );
        assert_eq!(
            delivery.headers.get("x-source").map(String::as_str),
            Some("amplify-sandbox"),
            "§4.1 spec.headers are sent"
        );
        assert!(
            delivery
                .headers
                .get("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
        );
    }
}

#[tokio::test]
async fn subscription_creation_ends_with_status_success() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_billing_hook(&amp, &rx.url).await;
    amp.subscription("v1", "sub-1", "p", "silver").await;

    let got = rx
        .wait_until(WAIT, |got| {
            let approval = got
                .iter()
                .position(|d| subresource(&d.body) == Some("approval"));
            approval.is_some_and(|i| {
                got[i..]
                    .iter()
                    .any(|d| subresource(&d.body) == Some("status"))
            })
        })
        .await;
    let order: Vec<(String, Value)> = got
        .iter()
        .filter_map(|d| {
            subresource(&d.body)
                .map(|s| (s.to_owned(), d.body["payload"]["status"]["level"].clone()))
        })
        .collect();
    let approval = order
        .iter()
        .position(|(s, _)| s == "approval")
        .unwrap_or_else(|| panic!("approval update delivered: {order:?}"));
    let last_status = order[approval..]
        .iter()
        .find(|(s, _)| s == "status")
        .unwrap_or_else(|| panic!("§4.3 status → Success after approval pending: {order:?}"));
    assert_eq!(last_status.1, "Success", "{order:?}");
    let first_status = order.iter().find(|(s, _)| s == "status").unwrap();
    assert_eq!(
        first_status.1, "Pending",
        "§4.3 status → Pending first: {order:?}"
    );
}

#[tokio::test]
async fn hook_for_deleted_only_gets_nothing_on_create_and_resource_deleted_on_delete() {
    let amp = Amplify::start().await;
    let mut all = Receiver::start().await;
    let mut deleted_only = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_billing_hook(&amp, &all.url).await;
    register_hook(
        &amp,
        "cleanup",
        &deleted_only.url,
        None,
        vec![trigger("Subscription", "*", &["deleted"])],
    )
    .await;

    amp.subscription("v1", "sub-1", "p", "silver").await;
    all.wait_until(WAIT, |got| has_update_of(got, "approval", |_| true))
        .await;
    assert!(
        has_update_of(&all.got, "approval", |_| true),
        "the all-types hook saw the creation"
    );
    let early = deleted_only.settle(Duration::from_millis(300)).await;
    assert!(
        early.is_empty(),
        "§4.1 type [deleted] gets no create events: {early:?}"
    );

    let resp = amp.delete("/catalog/v1/subscriptions/sub-1").await;
    assert!(resp.status.is_success(), "{}", resp.text);
    let got = deleted_only
        .wait_until(WAIT, |got| !got.is_empty())
        .await
        .to_vec();
    assert_eq!(got.len(), 1, "{got:?}");
    let event = &got[0].body;
    assert_event_envelope(event);
    assert_eq!(event["type"], "ResourceDeleted");
    assert_eq!(
        event["payload"]["name"], "sub-1",
        "§4.3 payload is the deleted resource"
    );
    assert_eq!(
        got[0].headers.get("authorization").map(String::as_str),
        Some(SECRET_VALUE),
        "§4.1 without location the secret goes in Authorization"
    );

    let all_got = all
        .wait_until(WAIT, |got| {
            got.iter().any(|d| d.body["type"] == "ResourceDeleted")
        })
        .await;
    assert!(all_got.iter().any(|d| d.body["type"] == "ResourceDeleted"));
}

#[tokio::test]
async fn approving_a_subscription_delivers_an_approval_update() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_billing_hook(&amp, &rx.url).await;
    amp.subscription("v1", "sub-1", "p", "silver").await;
    rx.wait_until(WAIT, |got| has_update_of(got, "approval", |_| true))
        .await;

    let approved = amp
        .put(
            "/catalog/v1/subscriptions/sub-1/approval",
            &json!({"approval": {"state": "approved", "reason": "Recurly subscription created"}}),
        )
        .await
        .expect(200, "approve");
    assert_eq!(approved["approval"]["state"], "approved");

    let approved_state = |e: &Value| e["payload"]["approval"]["state"] == "approved";
    let got = rx
        .wait_until(WAIT, |got| has_update_of(got, "approval", approved_state))
        .await;
    let event = got
        .iter()
        .map(|d| &d.body)
        .find(|e| subresource(e) == Some("approval") && approved_state(e))
        .unwrap_or_else(|| panic!("§4.3 SubResourceUpdated approval=approved: {got:?}"));
    assert_event_envelope(event);
    assert_eq!(event["type"], "SubResourceUpdated");
    assert_eq!(
        event["payload"]["approval"]["reason"],
        "Recurly subscription created"
    );
}

#[tokio::test]
async fn updating_a_subscription_delivers_resource_updated() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_billing_hook(&amp, &rx.url).await;
    let mut sub = amp.subscription("v1", "sub-1", "p", "silver").await;
    sub["title"] = json!("Renamed subscription");
    sub["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    amp.put("/catalog/v1/subscriptions/sub-1", &sub)
        .await
        .expect(200, "update");
    let got = rx
        .wait_until(WAIT, |got| {
            got.iter().any(|d| d.body["type"] == "ResourceUpdated")
        })
        .await;
    let event = got
        .iter()
        .map(|d| &d.body)
        .find(|e| e["type"] == "ResourceUpdated")
        .unwrap_or_else(|| panic!("§4.3 ResourceUpdated: {got:?}"));
    assert_eq!(event["payload"]["title"], "Renamed subscription");
}

#[tokio::test]
async fn activating_a_plan_delivers_a_state_update() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    register_billing_hook(&amp, &rx.url).await;
    amp.product("v1", "p", "recurly").await;
    amp.plan("v1", "silver", "p").await;
    let created = rx
        .wait_until(WAIT, |got| {
            got.iter().any(|d| d.body["type"] == "ResourceCreated")
        })
        .await;
    let event = &created
        .iter()
        .find(|d| d.body["type"] == "ResourceCreated")
        .unwrap_or_else(|| panic!("§4.1 plan creation delivered: {created:?}"))
        .body;
    assert_eq!(event["payload"]["kind"], "ProductPlan");
    assert!(
        created
            .iter()
            .all(|d| d.body["payload"]["kind"] != "Product"),
        "no trigger for Product"
    );

    amp.activate_plan("v1", "silver").await;
    let active = |e: &Value| e["payload"]["state"] == "active";
    let got = rx
        .wait_until(WAIT, |got| has_update_of(got, "state", active))
        .await;
    let event = got
        .iter()
        .map(|d| &d.body)
        .find(|e| subresource(e) == Some("state") && active(e))
        .unwrap_or_else(|| panic!("§4.3 SubResourceUpdated state=active: {got:?}"));
    assert_event_envelope(event);
    assert_eq!(event["type"], "SubResourceUpdated");
    assert_eq!(event["payload"]["kind"], "ProductPlan");
    assert_eq!(event["payload"]["name"], "silver");
}

#[tokio::test]
async fn deleting_a_plan_delivers_resource_deleted() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product("v1", "p", "recurly").await;
    amp.plan("v1", "silver", "p").await;
    register_billing_hook(&amp, &rx.url).await;
    let resp = amp.delete("/catalog/v1/productplans/silver").await;
    assert!(resp.status.is_success(), "{}", resp.text);
    let got = rx
        .wait_until(WAIT, |got| {
            got.iter().any(|d| d.body["type"] == "ResourceDeleted")
        })
        .await;
    let event = got
        .iter()
        .map(|d| &d.body)
        .find(|e| e["type"] == "ResourceDeleted")
        .unwrap_or_else(|| panic!("§4.3 ResourceDeleted: {got:?}"));
    assert_eq!(event["payload"]["kind"], "ProductPlan");
    assert_eq!(event["payload"]["name"], "silver");
}

#[tokio::test]
async fn trigger_by_name_only_delivers_that_resource() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_hook(
        &amp,
        "one",
        &rx.url,
        None,
        vec![trigger("Subscription", "sub-wanted", &all_types())],
    )
    .await;
    amp.subscription("v1", "sub-other", "p", "silver").await;
    amp.subscription("v1", "sub-wanted", "p", "silver").await;
    let got = rx
        .wait_until(WAIT, |got| has_update_of(got, "approval", |_| true))
        .await;
    assert!(!got.is_empty(), "sub-wanted events delivered");
    let got = rx.settle(Duration::from_millis(300)).await;
    assert!(
        got.iter()
            .all(|d| d.body["payload"]["name"] == "sub-wanted"),
        "§4.1 trigger name filters: {got:?}"
    );
}

#[tokio::test]
async fn secret_can_be_sent_as_a_query_parameter() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product("v1", "p", "recurly").await;
    register_hook(
        &amp,
        "query",
        &rx.url,
        Some(json!({"in": "query", "name": "token"})),
        vec![trigger("ProductPlan", "*", &all_types())],
    )
    .await;
    amp.plan("v1", "silver", "p").await;
    let got = rx.wait_until(WAIT, |got| !got.is_empty()).await;
    assert!(!got.is_empty(), "plan creation delivered");
    let target = &got[0].target;
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let token = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .unwrap_or_else(|| panic!("§4.1 location in: query puts the secret in `token`: {target}"));
    assert!(
        token == "Bearer%20hook-s3cr3t" || token == "Bearer+hook-s3cr3t",
        "secret verbatim (URL-encoded): {token}"
    );
}

#[tokio::test]
async fn disabled_webhook_gets_nothing() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    let mut control = Receiver::start().await;
    amp.product("v1", "p", "recurly").await;
    register_hook(
        &amp,
        "off",
        &rx.url,
        None,
        vec![trigger("ProductPlan", "*", &all_types())],
    )
    .await;
    register_hook(
        &amp,
        "on",
        &control.url,
        None,
        vec![trigger("ProductPlan", "*", &all_types())],
    )
    .await;
    let mut webhook = amp
        .get("/management/v1/integrations/off/webhooks/wh-off")
        .await
        .expect(200, "webhook");
    webhook["spec"]["enabled"] = json!(false);
    webhook["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    amp.put("/management/v1/integrations/off/webhooks/wh-off", &webhook)
        .await
        .expect(200, "disable");
    amp.plan("v1", "silver", "p").await;
    control.wait_until(WAIT, |got| !got.is_empty()).await;
    assert!(!control.got.is_empty(), "the enabled hook fires");
    assert!(
        rx.settle(Duration::from_millis(300)).await.is_empty(),
        "§4.1 enabled: false"
    );
}

#[tokio::test]
async fn failed_delivery_is_not_retried() {
    let amp = Amplify::start().await;
    let mut failing = Receiver::start_answering(500).await;
    amp.product("v1", "p", "recurly").await;
    register_hook(
        &amp,
        "failing",
        &failing.url,
        None,
        vec![trigger("ProductPlan", "*", &["created"])],
    )
    .await;
    amp.plan("v1", "silver", "p").await;
    failing.wait_until(WAIT, |got| !got.is_empty()).await;
    let got = failing.settle(Duration::from_millis(1_500)).await;
    assert_eq!(
        got.len(),
        1,
        "§4.1 'there is no retry mechanism': one attempt for one event, got {got:?}"
    );
}

#[tokio::test]
async fn wildcard_kind_trigger_delivers_every_catalog_kind() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    register_hook(
        &amp,
        "everything",
        &rx.url,
        None,
        vec![trigger("*", "*", &["created"])],
    )
    .await;
    amp.product("v1", "p", "recurly").await;
    amp.plan("v1", "silver", "p").await;
    let kinds = |got: &[Delivery]| -> Vec<String> {
        got.iter()
            .filter(|d| d.body["type"] == "ResourceCreated")
            .map(|d| d.body["payload"]["kind"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let got = rx.wait_until(WAIT, |got| kinds(got).len() >= 2).await;
    let kinds = kinds(got);
    assert!(
        kinds.contains(&"Product".to_owned()) && kinds.contains(&"ProductPlan".to_owned()),
        "§4.1 kind \"*\": {kinds:?}"
    );
}

#[tokio::test]
async fn subscription_events_share_the_correlation_id_of_the_create_request() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_billing_hook(&amp, &rx.url).await;
    amp.subscription("v1", "sub-1", "p", "silver").await;
    let got = rx
        .wait_until(WAIT, |got| has_update_of(got, "approval", |_| true))
        .await;
    let ids: HashSet<&str> = got
        .iter()
        .map(|d| d.body["correlationId"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "§4.3 correlationId is the id of the originating API request: {ids:?}"
    );
}

async fn deliveries(amp: &Amplify) -> Vec<Value> {
    let resp = amp
        .sb
        .http
        .get(amp.sb.at("/_sandbox/deliveries"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("deliveries are a JSON array")
}

/// A loopback URL nobody listens on.
async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hooks")
}

#[tokio::test]
async fn deliveries_route_lists_each_attempt_with_its_outcome() {
    let amp = Amplify::start().await;
    let mut ok = Receiver::start().await;
    let failing = Receiver::start_answering(500).await;
    let nowhere = closed_url().await;
    amp.product("v1", "p", "recurly").await;
    let plans = || vec![trigger("ProductPlan", "*", &["created"])];
    register_hook(&amp, "ok", &ok.url, None, plans()).await;
    register_hook(&amp, "failing", &failing.url, None, plans()).await;
    register_hook(&amp, "nowhere", &nowhere, None, plans()).await;
    amp.plan("v1", "silver", "p").await;
    let got = ok.wait_until(WAIT, |got| !got.is_empty()).await.to_vec();

    let mut listed = Vec::new();
    for _ in 0..20 {
        listed = deliveries(&amp).await;
        if listed.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 3, "one attempt per webhook: {listed:?}");
    let by_url = |url: &str| {
        listed
            .iter()
            .find(|d| d["url"] == url)
            .unwrap_or_else(|| panic!("delivery to {url}: {listed:?}"))
    };
    let delivered = by_url(&ok.url);
    assert_eq!(delivered["status"], 200);
    assert_eq!(delivered["event_type"], "ResourceCreated");
    assert_eq!(
        delivered["event_id"], got[0].body["id"],
        "same event as received"
    );
    assert_eq!(delivered["event"], got[0].body);
    assert_eq!(by_url(&failing.url)["status"], 500);
    let refused = by_url(&nowhere);
    assert!(refused["status"].is_null(), "{refused}");
    assert!(refused["error"].is_string(), "{refused}");

    let resp = amp
        .sb
        .http
        .delete(amp.sb.at("/_sandbox/deliveries"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(deliveries(&amp).await.is_empty());
}

#[tokio::test]
async fn updated_only_hook_gets_subresource_updates_but_not_creation() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_hook(
        &amp,
        "updates",
        &rx.url,
        None,
        vec![trigger("Subscription", "*", &["updated"])],
    )
    .await;
    amp.subscription("v1", "sub-1", "p", "silver").await;
    let got = rx
        .wait_until(WAIT, |got| has_update_of(got, "approval", |_| true))
        .await;
    assert!(
        has_update_of(got, "approval", |_| true),
        "§4.3 type [updated] delivers SubResourceUpdated: {got:?}"
    );
    assert!(
        got.iter().all(|d| d.body["type"] != "ResourceCreated"),
        "no ResourceCreated for type [updated]"
    );
}

#[tokio::test]
async fn scoped_trigger_only_delivers_quotas_of_that_plan() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product("v1", "p", "recurly").await;
    amp.plan("v1", "gold", "p").await;
    amp.plan("v1", "bronze", "p").await;
    let mut scoped = trigger("Quota", "*", &["created"]);
    scoped["scope"] = json!({"kind": "ProductPlan", "name": "gold"});
    register_hook(&amp, "quotas", &rx.url, None, vec![scoped]).await;
    amp.create(
        "/catalog/v1/productplans/bronze/quotas",
        &super::client::quota_body("v1", "bronze-q"),
    )
    .await;
    amp.create(
        "/catalog/v1/productplans/gold/quotas",
        &super::client::quota_body("v1", "gold-q"),
    )
    .await;
    rx.wait_until(WAIT, |got| !got.is_empty()).await;
    let got = rx.settle(Duration::from_millis(300)).await;
    let names: Vec<&str> = got
        .iter()
        .map(|d| d.body["payload"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["gold-q"], "§4.1 trigger scope");
}

#[tokio::test]
async fn v1alpha1_writes_deliver_v1alpha1_payloads() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_billing_hook(&amp, &rx.url).await;
    amp.create(
        "/catalog/v1alpha1/subscriptions",
        &super::client::subscription_body("v1alpha1", "legacy", "p", "silver"),
    )
    .await;
    let got = rx
        .wait_until(WAIT, |got| has_update_of(got, "approval", |_| true))
        .await;
    let approval = got
        .iter()
        .map(|d| &d.body)
        .find(|e| subresource(e) == Some("approval"))
        .expect("approval event");
    assert_eq!(
        approval["version"], "v1",
        "envelope version stays v1 (§4.3 sample)"
    );
    assert_eq!(
        approval["payload"]["apiVersion"], "v1alpha1",
        "§4.3 LBU sample"
    );
    assert_eq!(
        approval["payload"]["metadata"]["selfLink"],
        "/catalog/v1alpha1/subscriptions/legacy"
    );
}

#[tokio::test]
async fn event_payload_is_the_resource_as_get_shows_it() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    register_billing_hook(&amp, &rx.url).await;
    amp.subscription("v1", "sub-1", "p", "silver").await;
    rx.wait_until(WAIT, |got| has_update_of(got, "approval", |_| true))
        .await;
    amp.put(
        "/catalog/v1/subscriptions/sub-1/approval",
        &json!({"approval": {"state": "approved", "reason": "ok"}}),
    )
    .await
    .expect(200, "approve");
    let approved = |e: &Value| e["payload"]["approval"]["state"] == "approved";
    let got = rx
        .wait_until(WAIT, |got| has_update_of(got, "approval", approved))
        .await
        .to_vec();
    let event = got
        .iter()
        .map(|d| &d.body)
        .find(|e| approved(e))
        .expect("approval event");
    let current = amp
        .get("/catalog/v1/subscriptions/sub-1")
        .await
        .expect(200, "get");
    assert_eq!(
        event["payload"], current,
        "§4.3 payload: the full resource after the change, same JSON as GET"
    );
}

#[tokio::test]
async fn webhook_sends_the_secret_value_under_the_named_key() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product("v1", "p", "recurly").await;
    let base = "/management/v1/integrations/keys";
    amp.create(
        "/management/v1/integrations",
        &json!({"name": "keys", "spec": {"description": "key lookup"}}),
    )
    .await;
    amp.create(
        &format!("{base}/secrets"),
        &json!({"name": "multi", "spec": {"data": {"Authorization": "Basic wrong", "Token": "Bearer right"}}}),
    )
    .await;
    amp.create(
        &format!("{base}/webhooks"),
        &json!({"name": "wh", "spec": {"enabled": true, "url": rx.url,
                "auth": {"secret": {"name": "multi", "key": "Token"}}}}),
    )
    .await;
    amp.create(
        &format!("{base}/resourcehooks"),
        &json!({"name": "rh", "spec": {"triggers": [trigger("ProductPlan", "*", &["created"])],
                "webhooks": ["wh"]}}),
    )
    .await;
    amp.plan("v1", "silver", "p").await;
    let got = rx.wait_until(WAIT, |got| !got.is_empty()).await;
    assert!(!got.is_empty(), "delivered");
    assert_eq!(
        got[0].headers.get("authorization").map(String::as_str),
        Some("Bearer right"),
        "§4.1 auth.secret.key picks the value"
    );
}

#[tokio::test]
async fn a_hanging_receiver_is_given_up_after_the_timeout_and_others_still_get_events() {
    let mut config = super::client::unlimited();
    config.amplify.webhook_timeout_ms = 300;
    let amp = Amplify::start_with(config).await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hooks", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let mut rx = Receiver::start().await;
    amp.product("v1", "p", "recurly").await;
    let plans = || vec![trigger("ProductPlan", "*", &["created"])];
    register_hook(&amp, "silent", &silent_url, None, plans()).await;
    register_hook(&amp, "live", &rx.url, None, plans()).await;
    amp.plan("v1", "silver", "p").await;
    amp.plan("v1", "gold", "p").await;
    let got = rx.wait_until(WAIT, |got| got.len() >= 2).await;
    assert_eq!(
        got.len(),
        2,
        "a silent receiver costs at most webhook_timeout_ms per event"
    );
    let resp = amp
        .sb
        .http
        .get(amp.sb.at("/_sandbox/deliveries"))
        .send()
        .await
        .unwrap();
    let listed: Vec<Value> = resp.json().await.unwrap();
    let silent_attempts: Vec<&Value> = listed.iter().filter(|d| d["url"] == silent_url).collect();
    assert!(!silent_attempts.is_empty(), "{listed:?}");
    for attempt in silent_attempts {
        assert!(attempt["status"].is_null(), "{attempt}");
        assert!(attempt["error"].is_string(), "{attempt}");
    }
    hold.abort();
}

#[tokio::test]
async fn deleting_the_integration_stops_its_deliveries() {
    let amp = Amplify::start().await;
    let mut rx = Receiver::start().await;
    amp.product("v1", "p", "recurly").await;
    register_hook(
        &amp,
        "gone",
        &rx.url,
        None,
        vec![trigger("ProductPlan", "*", &["created"])],
    )
    .await;
    amp.plan("v1", "before", "p").await;
    rx.wait_until(WAIT, |got| !got.is_empty()).await;
    assert_eq!(rx.got.len(), 1, "delivered while the integration exists");

    let resp = amp.delete("/management/v1/integrations/gone").await;
    assert!(resp.status.is_success(), "{}", resp.text);
    let webhooks = amp
        .get("/management/v1/integrations/gone/webhooks/wh-gone")
        .await;
    assert_eq!(
        webhooks.status.as_u16(),
        404,
        "scoped webhook goes with its integration"
    );
    amp.plan("v1", "after", "p").await;
    let got = rx.settle(Duration::from_millis(500)).await;
    assert_eq!(
        got.len(),
        1,
        "no delivery after the integration is deleted: {got:?}"
    );
}
