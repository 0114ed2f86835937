//! Catalog resources (Product, ProductPlan, Quota, Subscription, §3) on `v1` and `v1alpha1`
//! (§2.1): create, get, list, update, delete, the §2.4 envelope, optimistic concurrency (§2.3),
//! errors, and subresource / extension writes (§2.3).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::client::{
    Amplify, assert_central_error, assert_envelope, names, owner, plan_body, product_body,
    quota_body, subscription_body,
};

/// One kind's collection on one version, with the body that creates `name` in it.
struct Case {
    version: &'static str,
    kind: &'static str,
    /// Collection path below `/apis`, e.g. `/catalog/v1/productplans/p/quotas`.
    collection: String,
    name: String,
    body: Value,
}

/// Creates what a resource of `kind` needs (product, plan) and returns its case.
async fn prepare(amp: &Amplify, version: &'static str, kind: &'static str) -> Case {
    let product = format!("prod-{version}");
    let plan = format!("plan-{version}");
    match kind {
        "Product" => Case {
            version,
            kind,
            collection: format!("/catalog/{version}/products"),
            name: product.clone(),
            body: product_body(version, &product, "recurly"),
        },
        "ProductPlan" => {
            amp.product(version, &product, "recurly").await;
            Case {
                version,
                kind,
                collection: format!("/catalog/{version}/productplans"),
                name: plan.clone(),
                body: plan_body(version, &plan, &product),
            }
        }
        "Quota" => {
            amp.product(version, &product, "recurly").await;
            amp.plan(version, &plan, &product).await;
            Case {
                version,
                kind,
                collection: format!("/catalog/{version}/productplans/{plan}/quotas"),
                name: "quota-0".into(),
                body: quota_body(version, "quota-0"),
            }
        }
        "Subscription" => {
            amp.product(version, &product, "recurly").await;
            amp.plan(version, &plan, &product).await;
            amp.activate_plan(version, &plan).await;
            let name = format!("sub-{version}");
            Case {
                version,
                kind,
                collection: format!("/catalog/{version}/subscriptions"),
                body: subscription_body(version, &name, &product, &plan),
                name,
            }
        }
        other => unreachable!("no case for {other}"),
    }
}

/// Waits (≤ 2 s) until GET of `path` is 404; deletion may pass through `metadata.state: DELETING`.
async fn assert_gone(amp: &Amplify, path: &str) {
    let started = Instant::now();
    loop {
        let resp = amp.get(path).await;
        if resp.status.as_u16() == 404 {
            assert_central_error(&resp, 404);
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} still there 2 s after DELETE: {} {}",
            resp.status,
            resp.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Create → get (also by selfLink) → list → update → stale update → delete, checking the
/// envelope at each step.
async fn crud_round_trip(version: &'static str, kind: &'static str) {
    let amp = Amplify::start().await;
    let case = prepare(&amp, version, kind).await;
    let item = format!("{}/{}", case.collection, case.name);
    let self_link = item.clone();

    // create
    let created = amp.create(&case.collection, &case.body).await;
    assert_envelope(&created, case.version, case.kind, &case.name, &self_link);
    let id = created["metadata"]["id"].clone();
    let first_version = created["metadata"]["resourceVersion"].clone();
    assert_eq!(created["title"], case.body["title"]);
    assert_eq!(
        created["spec"]["description"],
        case.body["spec"]["description"]
    );
    if kind == "Quota" {
        let scope = &created["metadata"]["scope"];
        assert_eq!(
            scope["kind"], "ProductPlan",
            "§2.4 scope of a quota: {created}"
        );
        assert_eq!(scope["name"], format!("plan-{version}"), "{created}");
    }

    // get, by path and by selfLink as the SDK does (§2.1)
    let got = amp.get(&item).await.expect(200, "get");
    assert_envelope(&got, case.version, case.kind, &case.name, &self_link);
    assert_eq!(got["metadata"]["id"], id, "id is stable");
    let by_link = amp
        .get(created["metadata"]["selfLink"].as_str().unwrap())
        .await
        .expect(200, "get by selfLink");
    assert_eq!(by_link["metadata"]["id"], id);

    // list
    let list = amp.get(&case.collection).await.expect(200, "list");
    assert_eq!(
        names(&list),
        vec![case.name.clone()],
        "list holds the resource once"
    );
    assert_eq!(list[0]["metadata"]["id"], id);

    // update with the current resourceVersion (§2.3)
    let mut changed = got.clone();
    changed["title"] = json!("Renamed");
    changed["attributes"] = json!({"recurlyCode": "amplify-x"});
    let updated = amp.put(&item, &changed).await.expect(200, "update");
    assert_envelope(&updated, case.version, case.kind, &case.name, &self_link);
    assert_eq!(updated["title"], "Renamed");
    assert_eq!(updated["attributes"]["recurlyCode"], "amplify-x");
    assert_eq!(updated["metadata"]["id"], id, "update keeps the id");
    assert_ne!(
        updated["metadata"]["resourceVersion"], first_version,
        "§2.4 resourceVersion changes on update"
    );
    assert_eq!(
        updated["metadata"]["audit"]["createTimestamp"],
        created["metadata"]["audit"]["createTimestamp"]
    );
    let reread = amp.get(&item).await.expect(200, "get after update");
    assert_eq!(reread["title"], "Renamed");
    assert_eq!(
        reread["metadata"]["resourceVersion"],
        updated["metadata"]["resourceVersion"]
    );

    // stale resourceVersion → 428 (§2.3)
    let mut stale = changed.clone();
    stale["metadata"]["resourceVersion"] = first_version;
    stale["title"] = json!("Lost update");
    let resp = amp.put(&item, &stale).await;
    assert_central_error(&resp, 428);
    assert_eq!(
        amp.get(&item).await.body["title"],
        "Renamed",
        "stale PUT not applied"
    );

    // delete
    let resp = amp.delete(&item).await;
    assert!(
        resp.status.is_success(),
        "delete: {} {}",
        resp.status,
        resp.text
    );
    assert_gone(&amp, &item).await;
    let list = amp
        .get(&case.collection)
        .await
        .expect(200, "list after delete");
    assert!(
        names(&list).is_empty(),
        "deleted resource not listed: {list}"
    );
}

#[tokio::test]
async fn product_crud_round_trip_v1() {
    crud_round_trip("v1", "Product").await;
}

#[tokio::test]
async fn product_crud_round_trip_v1alpha1() {
    crud_round_trip("v1alpha1", "Product").await;
}

#[tokio::test]
async fn product_plan_crud_round_trip_v1() {
    crud_round_trip("v1", "ProductPlan").await;
}

#[tokio::test]
async fn product_plan_crud_round_trip_v1alpha1() {
    crud_round_trip("v1alpha1", "ProductPlan").await;
}

#[tokio::test]
async fn quota_crud_round_trip_scoped_to_plan_v1() {
    crud_round_trip("v1", "Quota").await;
}

#[tokio::test]
async fn quota_crud_round_trip_scoped_to_plan_v1alpha1() {
    crud_round_trip("v1alpha1", "Quota").await;
}

#[tokio::test]
async fn subscription_crud_round_trip_v1() {
    crud_round_trip("v1", "Subscription").await;
}

#[tokio::test]
async fn subscription_crud_round_trip_v1alpha1() {
    crud_round_trip("v1alpha1", "Subscription").await;
}

#[tokio::test]
async fn put_without_resource_version_overwrites() {
    let amp = Amplify::start().await;
    amp.product("v1", "p", "recurly").await;
    let mut body = product_body("v1", "p", "recurly");
    body["title"] = json!("Overwritten");
    let updated = amp
        .put("/catalog/v1/products/p", &body)
        .await
        .expect(200, "§2.3 PUT without resourceVersion overwrites");
    assert_eq!(updated["title"], "Overwritten");
}

#[tokio::test]
async fn unknown_names_are_404_with_central_errors() {
    let amp = Amplify::start().await;
    for path in [
        "/catalog/v1/products/nope",
        "/catalog/v1/productplans/nope",
        "/catalog/v1/subscriptions/nope",
        "/catalog/v1alpha1/subscriptions/nope",
    ] {
        assert_central_error(&amp.get(path).await, 404);
        assert_central_error(&amp.put(path, &product_body("v1", "nope", "x")).await, 404);
        assert_central_error(&amp.delete(path).await, 404);
    }
}

#[tokio::test]
async fn quotas_of_an_unknown_plan_are_404() {
    let amp = Amplify::start().await;
    let resp = amp
        .post(
            "/catalog/v1/productplans/nope/quotas",
            &quota_body("v1", "quota-0"),
        )
        .await;
    assert_central_error(&resp, 404);
}

#[tokio::test]
async fn quotas_are_listed_per_plan_and_across_plans() {
    let amp = Amplify::start().await;
    amp.product("v1", "p", "recurly").await;
    amp.plan("v1", "gold", "p").await;
    amp.plan("v1", "silver", "p").await;
    amp.create(
        "/catalog/v1/productplans/gold/quotas",
        &quota_body("v1", "quota-0"),
    )
    .await;
    amp.create(
        "/catalog/v1/productplans/silver/quotas",
        &quota_body("v1", "quota-1"),
    )
    .await;
    let gold = amp
        .get("/catalog/v1/productplans/gold/quotas")
        .await
        .expect(200, "quotas of gold");
    assert_eq!(names(&gold), ["quota-0"]);
    let all = amp
        .get("/catalog/v1/quotas")
        .await
        .expect(200, "§2.2 unscoped list");
    let mut all = names(&all);
    all.sort();
    assert_eq!(all, ["quota-0", "quota-1"]);
}

#[tokio::test]
async fn attributes_with_non_string_values_are_refused() {
    let amp = Amplify::start().await;
    let mut body = product_body("v1", "p", "recurly");
    body["attributes"] = json!({"seats": 5});
    let resp = amp.post("/catalog/v1/products", &body).await;
    assert_central_error(&resp, 400);
}

#[tokio::test]
async fn new_plan_is_draft_and_state_subresource_activates_it() {
    let amp = Amplify::start().await;
    amp.product("v1", "p", "recurly").await;
    let plan = amp.plan("v1", "silver", "p").await;
    assert_eq!(
        plan["state"], "draft",
        "§3.2 lifecycle starts at draft: {plan}"
    );

    let activated = amp.activate_plan("v1", "silver").await;
    assert_eq!(
        activated["state"], "active",
        "§3.2 state is a string: {activated}"
    );
    assert_ne!(
        activated["metadata"]["resourceVersion"],
        plan["metadata"]["resourceVersion"]
    );
    let got = amp
        .get("/catalog/v1/productplans/silver")
        .await
        .expect(200, "get");
    assert_eq!(got["state"], "active");
}

#[tokio::test]
async fn subscription_is_pending_approval_and_approval_subresource_approves_it() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    let sub = amp.subscription("v1", "sub-1", "p", "silver").await;
    assert_eq!(
        sub["approval"]["state"], "pending",
        "§3.4 manual approval starts pending: {sub}"
    );
    assert_eq!(
        sub["marketplace"]["resource"]["owner"],
        owner(),
        "§3.4 marketplace owner kept: {sub}"
    );

    let approved = amp
        .put(
            "/catalog/v1/subscriptions/sub-1/approval",
            &json!({"approval": {"state": "approved", "reason": "Recurly subscription created"}}),
        )
        .await
        .expect(200, "§3.4 approve");
    assert_eq!(approved["approval"]["state"], "approved", "{approved}");
    let got = amp
        .get("/catalog/v1/subscriptions/sub-1")
        .await
        .expect(200, "get");
    assert_eq!(got["approval"]["state"], "approved");
    assert_eq!(got["approval"]["reason"], "Recurly subscription created");
}

#[tokio::test]
async fn subscription_references_its_product_and_plan() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    let plan = amp
        .get("/catalog/v1/productplans/silver")
        .await
        .expect(200, "plan");
    let sub = amp.subscription("v1", "sub-1", "p", "silver").await;
    let references = sub["metadata"]["references"]
        .as_array()
        .unwrap_or_else(|| panic!("§3.4 metadata.references: {sub}"));
    let plan_ref = references
        .iter()
        .find(|r| r["kind"] == "ProductPlan")
        .unwrap_or_else(|| panic!("§3.4 a ProductPlan reference: {sub}"));
    assert_eq!(plan_ref["name"], "silver");
    assert_eq!(
        plan_ref["id"], plan["metadata"]["id"],
        "§3.4 plan id from references"
    );
    assert!(
        references
            .iter()
            .any(|r| r["kind"] == "Product" && r["name"] == "p")
    );
}

#[tokio::test]
async fn extension_subresource_comes_back_as_a_top_level_key() {
    let amp = Amplify::start().await;
    amp.product("v1", "p", "recurly").await;
    let ext = json!({"recurlyPlanCode": "amplify-plan-1", "syncedAt": "2026-11-21"});
    let resp = amp
        .put(
            "/catalog/v1/products/p/x-billing",
            &json!({"x-billing": ext}),
        )
        .await;
    assert_eq!(
        resp.status.as_u16(),
        200,
        "§2.3 extension PUT: {}",
        resp.text
    );
    let got = amp.get("/catalog/v1/products/p").await.expect(200, "get");
    assert_eq!(
        got["x-billing"], ext,
        "§2.3 extension is a top-level key: {got}"
    );
}

#[tokio::test]
async fn main_put_does_not_change_subresources() {
    let amp = Amplify::start().await;
    amp.product("v1", "p", "recurly").await;
    let mut plan = amp.plan("v1", "silver", "p").await;
    plan["state"] = json!("active");
    plan["title"] = json!("Silver 2");
    plan["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let updated = amp
        .put("/catalog/v1/productplans/silver", &plan)
        .await
        .expect(200, "main PUT");
    assert_eq!(updated["title"], "Silver 2");
    assert_eq!(
        updated["state"], "draft",
        "§2.3 subresources change only via their own PUT"
    );
}

#[tokio::test]
async fn active_plan_takes_new_attributes_and_quotas_but_not_new_prices() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    let mut plan = amp
        .get("/catalog/v1/productplans/silver")
        .await
        .expect(200, "plan");
    plan["attributes"]["recurlyPlanCode"] = json!("amplify-plan-x");
    let updated = amp
        .put("/catalog/v1/productplans/silver", &plan)
        .await
        .expect(200, "§2.3/§6 the integration links plans by attributes");
    assert_eq!(updated["attributes"]["recurlyPlanCode"], "amplify-plan-x");
    amp.create(
        "/catalog/v1/productplans/silver/quotas",
        &quota_body("v1", "quota-late"),
    )
    .await;

    let mut repriced = updated.clone();
    repriced["spec"]["billing"]["price"] = json!(99.0);
    let resp = amp.put("/catalog/v1/productplans/silver", &repriced).await;
    assert!(
        resp.status.is_client_error(),
        "§3.2 'Editing an active plan is restricted to adding resources/quotas': {} {}",
        resp.status,
        resp.text
    );
}

#[tokio::test]
async fn a_pending_subscription_is_already_active_as_captured_and_stays_so_when_approved() {
    // §3.4 says the state is "not set until the subscription is approved", but the captured
    // pending event of §4.3 carries `"approval":{"state":"pending"},"state":{"name":"active"}`:
    // the captured payload is what the platform sends.
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    amp.subscription("v1", "sub-1", "p", "silver").await;
    let pending = amp
        .get("/catalog/v1/subscriptions/sub-1")
        .await
        .expect(200, "the subscription");
    assert_eq!(pending["approval"]["state"], "pending", "{pending}");
    assert_eq!(pending["state"]["name"], "active", "§4.3: {pending}");
    let approved = amp
        .put(
            "/catalog/v1/subscriptions/sub-1/approval",
            &json!({"approval": {"state": "approved", "reason": "ok"}}),
        )
        .await
        .expect(200, "approve");
    assert_eq!(approved["state"]["name"], "active", "§3.4: {approved}");
    assert_eq!(
        approved["approval"]["previousState"], "pending",
        "{approved}"
    );
}

#[tokio::test]
async fn rejecting_a_subscription_records_the_rejection_and_its_reason() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    amp.subscription("v1", "sub-1", "p", "silver").await;
    let rejected = amp
        .put(
            "/catalog/v1/subscriptions/sub-1/approval",
            &json!({"approval": {"state": "rejected", "reason": "No billing account amplify-team-x"}}),
        )
        .await
        .expect(200, "§3.4 reject");
    assert_eq!(rejected["approval"]["state"], "rejected");
    assert_eq!(
        rejected["approval"]["reason"],
        "No billing account amplify-team-x"
    );
    assert_eq!(rejected["approval"]["previousState"], "pending");
}

#[tokio::test]
async fn subscribing_to_a_deprecated_plan_is_refused() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    amp.put(
        "/catalog/v1/productplans/silver/state",
        &json!({"state": "deprecated"}),
    )
    .await
    .expect(200, "deprecate");
    let resp = amp
        .post(
            "/catalog/v1/subscriptions",
            &subscription_body("v1", "sub-late", "p", "silver"),
        )
        .await;
    assert!(
        resp.status.is_client_error(),
        "§3.2 deprecated = no new subscriptions: {} {}",
        resp.status,
        resp.text
    );
    assert!(resp.body["errors"].is_array(), "{}", resp.text);
}

#[tokio::test]
async fn subscription_references_resolve_through_their_self_links() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    let sub = amp.subscription("v1", "sub-1", "p", "silver").await;
    let references = sub["metadata"]["references"]
        .as_array()
        .expect("references");
    assert!(!references.is_empty());
    for reference in references {
        let link = reference["selfLink"]
            .as_str()
            .unwrap_or_else(|| panic!("§2.4 reference selfLink: {reference}"));
        let target = amp.get(link).await.expect(200, &format!("GET {link}"));
        assert_eq!(target["metadata"]["id"], reference["id"], "{reference}");
        assert_eq!(target["kind"], reference["kind"], "{reference}");
    }
}

#[tokio::test]
async fn quota_without_a_name_gets_one() {
    let amp = Amplify::start().await;
    amp.product("v1", "p", "recurly").await;
    amp.plan("v1", "silver", "p").await;
    let mut body = quota_body("v1", "unused");
    body.as_object_mut().unwrap().remove("name");
    let created = amp
        .create("/catalog/v1/productplans/silver/quotas", &body)
        .await;
    let name = created["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| panic!("§3.3 quota names are generated: {created}"));
    amp.get(&format!("/catalog/v1/productplans/silver/quotas/{name}"))
        .await
        .expect(200, "generated name resolves");
}

#[tokio::test]
async fn one_resource_is_served_in_both_versions() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    let created = amp.subscription("v1", "sub-1", "p", "silver").await;
    let legacy = amp
        .get("/catalog/v1alpha1/subscriptions/sub-1")
        .await
        .expect(200, "§2.1 v1alpha1 still works");
    assert_eq!(legacy["apiVersion"], "v1alpha1");
    assert_eq!(
        legacy["metadata"]["selfLink"],
        "/catalog/v1alpha1/subscriptions/sub-1"
    );
    assert_eq!(
        legacy["metadata"]["id"], created["metadata"]["id"],
        "same resource"
    );
}

#[tokio::test]
async fn quota_of_an_active_plan_takes_new_resources_but_not_new_pricing() {
    let amp = Amplify::start().await;
    amp.product("v1", "p", "recurly").await;
    amp.plan("v1", "silver", "p").await;
    amp.create(
        "/catalog/v1/productplans/silver/quotas",
        &quota_body("v1", "quota-0"),
    )
    .await;
    amp.activate_plan("v1", "silver").await;
    let path = "/catalog/v1/productplans/silver/quotas/quota-0";
    let mut quota = amp.get(path).await.expect(200, "quota");
    quota["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");

    let mut more = quota.clone();
    more["spec"]["resources"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "AssetResource", "name": "weather/forecast"}));
    let updated = amp
        .put(path, &more)
        .await
        .expect(200, "§3.2 adding resources to an active plan");
    assert_eq!(
        updated["spec"]["resources"].as_array().map(Vec::len),
        Some(2)
    );

    let mut repriced = updated.clone();
    repriced["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    repriced["spec"]["pricing"]["limit"]["tiers"][0]["cost"] = json!(0.5);
    let resp = amp.put(path, &repriced).await;
    assert!(
        resp.status.is_client_error(),
        "§3.2 active plan: only resources/quotas may be added: {} {}",
        resp.status,
        resp.text
    );
}
