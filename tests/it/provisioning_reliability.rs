//! Provisioning when delivery is unreliable: the same webhook many times, a webhook that never
//! arrived, and a Recurly that fails and throttles. Each resource is still provisioned once.

use billing_bridge_contract::ExchangePolicy;
use serde_json::{Value, json};

use crate::provisioning::{
    Provider, WAIT, cards, cards_titled, delivered_envelope, flat_fee_pricing, hooks,
    hooks_elsewhere, mails, paid_plan_spec, plan_code, post_webhook, priced_quotas, reconcile_now,
    recurly, recurly_list, recurly_writes, sandbox_json, seed, startup_pass_done,
};
use crate::recurly_conformance::client::assert_recurly_traffic_conforms;
use crate::support::{TestBridge, WEBHOOK_SECRET, bridge_sandbox, spawn_bridge, wait_for};

fn is_state_change_of(event: &Value, plan: &str) -> bool {
    event["payload"]["kind"] == "ProductPlan"
        && event["payload"]["name"] == plan
        && event["type"] == "SubResourceUpdated"
        && event["metadata"]["subresource"] == "state"
}

fn is_pending_approval_of(event: &Value, subscription: &str) -> bool {
    event["payload"]["kind"] == "Subscription"
        && event["payload"]["name"] == subscription
        && event["metadata"]["subresource"] == "approval"
        && event["payload"]["approval"]["state"] == "pending"
}

/// Like `Provider::settle`, for a bridge whose hooks point elsewhere: the test delivers the
/// sentinel's activation itself and waits for its card.
async fn settle_by_hand(provider: &Provider<'_>, bridge: &TestBridge, product: &str) {
    let sb = provider.sb;
    provider
        .plan("sentinel", "sentinel", product, paid_plan_spec(product))
        .await;
    provider.quota("sentinel", "fee", flat_fee_pricing()).await;
    provider.activate("sentinel").await;
    let event = delivered_envelope(sb, |e| is_state_change_of(e, "sentinel")).await;
    let (status, _, body) = post_webhook(sb, bridge, Some(WEBHOOK_SECRET), event.to_string()).await;
    assert_eq!((status, &body["status"]), (202, &json!("accepted")));
    wait_for("the sentinel's card", WAIT, || async {
        (!cards_titled(sb, "Plan not billed: sentinel")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn the_same_webhook_delivered_five_times_has_one_effect() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    startup_pass_done(&sb, &bridge).await;
    hooks_elsewhere(&bridge, &sb).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    provider.activate("silver").await;
    let activation = delivered_envelope(&sb, |e| is_state_change_of(e, "silver"))
        .await
        .to_string();

    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, _, body) =
            post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), activation.clone()).await;
        answers.push((
            status,
            body["status"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    let expected: Vec<(u16, String)> = [(202, "accepted")]
        .into_iter()
        .chain([(202, "duplicate"); 4])
        .map(|(s, b)| (s, b.to_owned()))
        .collect();
    assert_eq!(answers, expected);
    provider.linked("silver").await;

    seed(&sb, json!({
        "amplify": {"users": [{"guid": "user-1", "email": "dev@consumer.example", "firstname": "Dana", "lastname": "Dev"}]},
        "recurly": {"accounts": [{"code": "amplify-team-team-1", "email": "billing@consumer.example"}]}
    }))
    .await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let pending = delivered_envelope(&sb, |e| is_pending_approval_of(e, "sub-1"))
        .await
        .to_string();
    let send = || post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), pending.clone());
    let concurrent = tokio::join!(send(), send(), send(), send(), send());
    let concurrent = [
        concurrent.0,
        concurrent.1,
        concurrent.2,
        concurrent.3,
        concurrent.4,
    ];
    let accepted = concurrent
        .iter()
        .filter(|(status, _, body)| *status == 202 && body["status"] == "accepted")
        .count();
    assert_eq!(accepted, 1, "{concurrent:?}");
    for (status, retry_after, body) in &concurrent {
        // A copy that arrives while the first is being queued waits up to 250 ms for it and is
        // then a duplicate; only if the first takes longer is it refused for now (503), which
        // changes nothing.
        let duplicate = *status == 202 && body["status"] == "duplicate";
        let in_flight = *status == 503 && retry_after.is_some() && body["error"].is_string();
        assert!(
            duplicate || in_flight || body["status"] == "accepted",
            "{concurrent:?}"
        );
    }
    let (status, _, body) = send().await;
    assert_eq!((status, &body["status"]), (202, &json!("duplicate")));

    let approved = provider.approval("sub-1", "approved").await;
    settle_by_hand(&provider, &bridge, "weather").await;
    assert_eq!(recurly_list(&sb, "/plans?limit=200").await.len(), 1);
    assert_eq!(recurly_writes(&sb, "POST", "/plans").await.len(), 1);
    let subscriptions = recurly_list(&sb, "/subscriptions?limit=200").await;
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(
        subscriptions[0]["id"],
        approved["attributes"]["recurlySubscriptionId"]
    );
    assert_eq!(subscriptions[0]["plan"]["code"], code.as_str());
    assert_eq!(recurly_writes(&sb, "POST", "/subscriptions").await.len(), 1);
    assert_eq!(cards_titled(&sb, "Plan billed in Recurly").await.len(), 1);
    assert_eq!(cards(&sb).await.len(), 2, "plan billed, sentinel");
    assert_eq!(mails(&sb).await.len(), 1);
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn the_reconciler_repairs_webhooks_that_never_arrived() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    startup_pass_done(&sb, &bridge).await;
    // No hooks: Amplify tells the bridge nothing.
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    provider.activate("silver").await;
    seed(&sb, json!({
        "amplify": {"users": [{"guid": "user-1", "email": "dev@consumer.example", "firstname": "Dana", "lastname": "Dev"}]},
        "recurly": {"accounts": [{"code": "amplify-team-team-1", "email": "billing@consumer.example"}]}
    }))
    .await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;

    for token in [None, Some("wrong")] {
        let mut request = sb.http.post(format!("{}/admin/reconcile", bridge.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "admin token {token:?}");
    }
    assert!(recurly_list(&sb, "/plans?limit=200").await.is_empty());

    let first = reconcile_now(&sb, &bridge).await;
    assert_eq!(first["queued"], 1, "the unlinked plan: {first}");
    let (_, billed) = wait_for("the Recurly plan", WAIT, || async {
        let found = recurly(&sb, &format!("/plans/code-{code}")).await;
        (found.0 == 200).then_some(found)
    })
    .await;
    assert_eq!(billed["name"], "Silver");
    provider.linked("silver").await;
    // With the plan linked, the next pass takes its pending subscription.
    let second = reconcile_now(&sb, &bridge).await;
    assert_eq!(second["queued"], 1, "the pending subscription: {second}");
    let approved = provider.approval("sub-1", "approved").await;
    let id = approved["attributes"]["recurlySubscriptionId"]
        .as_str()
        .unwrap();
    let (status, billing) = recurly(&sb, &format!("/subscriptions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(billing["plan"]["code"], code.as_str());
    wait_for("the approval mail", WAIT, || async {
        (mails(&sb).await.len() == 1).then_some(())
    })
    .await;
    // Everything matches now: a third pass queues nothing.
    let third = reconcile_now(&sb, &bridge).await;
    assert_eq!(third["queued"], 0, "{third}");

    // A quota added later and a deprecation, both unannounced, are repaired the same way.
    let [(_, graduated), ..] = priced_quotas();
    provider.quota("silver", "extra", graduated).await;
    let fourth = reconcile_now(&sb, &bridge).await;
    assert_eq!(fourth["queued"], 1, "the plan missing an add-on: {fourth}");
    wait_for("the new add-on", WAIT, || async {
        let add_ons = recurly_list(&sb, &format!("/plans/code-{code}/add_ons?limit=200")).await;
        (add_ons.len() == 4).then_some(())
    })
    .await;
    provider.set_plan_state("silver", "deprecated").await;
    let fifth = reconcile_now(&sb, &bridge).await;
    assert_eq!(
        fifth["queued"], 1,
        "the deprecated plan still on sale: {fifth}"
    );
    wait_for("the Recurly plan off sale", WAIT, || async {
        let (_, plan) = recurly(&sb, &format!("/plans/code-{code}")).await;
        (plan["state"] == "inactive").then_some(())
    })
    .await;
    let sixth = reconcile_now(&sb, &bridge).await;
    assert_eq!(sixth["queued"], 0, "{sixth}");
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn with_recurly_failing_and_throttling_every_plan_and_subscription_is_provisioned_once() {
    const PLANS: usize = 3;
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    startup_pass_done(&sb, &bridge).await;
    hooks(&bridge).await;
    let response = sb
        .http
        .put(sb.at("/_sandbox/faults/recurly"))
        .json(&json!({"error_rate": 0.2, "rate_limited_rate": 0.1, "seed": 20261121}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let provider = Provider::new(&sb).await;
    provider.product("weather", true).await;
    let mut codes = Vec::new();
    for n in 1..=PLANS {
        let name = format!("plan-{n}");
        let plan = provider
            .plan(
                &name,
                &format!("Plan {n}"),
                "weather",
                paid_plan_spec("weather"),
            )
            .await;
        codes.push(plan_code(&plan));
        for (quota, pricing) in priced_quotas() {
            provider.quota(&name, quota, pricing).await;
        }
        provider.activate(&name).await;
    }
    for n in 1..=PLANS {
        wait_for(&format!("plan-{n} linked"), WAIT, || async {
            let plan = provider
                .get(&format!("/catalog/v1/productplans/plan-{n}"))
                .await;
            plan["attributes"]["recurlyPlanCode"]
                .is_string()
                .then_some(())
        })
        .await;
    }
    let users: Vec<Value> = (1..=PLANS)
        .map(|n| json!({"guid": format!("user-{n}"), "email": format!("dev{n}@consumer.example")}))
        .collect();
    let accounts: Vec<Value> = (1..=PLANS)
        .map(|n| json!({"code": format!("amplify-team-team-{n}")}))
        .collect();
    seed(
        &sb,
        json!({"amplify": {"users": users}, "recurly": {"accounts": accounts}}),
    )
    .await;
    for n in 1..=PLANS {
        provider
            .subscribe(
                &format!("sub-{n}"),
                &format!("plan-{n}"),
                &format!("team-{n}"),
                &format!("user-{n}"),
            )
            .await;
    }
    for n in 1..=PLANS {
        wait_for(&format!("sub-{n} approved"), WAIT, || async {
            let sub = provider
                .get(&format!("/catalog/v1/subscriptions/sub-{n}"))
                .await;
            (sub["approval"]["state"] == "approved").then_some(())
        })
        .await;
    }
    provider.settle("weather", "sentinel").await;

    let faults = sandbox_json(&sb, "/_sandbox/faults").await;
    // The test's own look at Recurly is not under test: no faults for it.
    let response = sb
        .http
        .delete(sb.at("/_sandbox/faults/recurly"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let recorded = sandbox_json(&sb, "/_sandbox/requests?upstream=recurly").await;
    let injected = recorded
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["injected"].as_bool() == Some(true) || r["injected"].is_string())
        .count();
    assert!(injected > 0, "faults were injected: {faults}");
    // Every write carries an Idempotency-Key, and a retried write reuses its key.
    let mut keys = std::collections::BTreeMap::<String, Vec<String>>::new();
    for request in recorded.as_array().unwrap() {
        if request["method"] == "GET" {
            continue;
        }
        let headers = request["headers"].as_object().unwrap();
        let key = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"))
            .map(|(_, v)| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("a write without Idempotency-Key: {request}"));
        keys.entry(key).or_default().push(format!(
            "{} {} {}",
            request["method"], request["path"], request["body"]
        ));
    }
    for (key, writes) in &keys {
        let first = &writes[0];
        assert!(
            writes.iter().all(|w| w == first),
            "key {key} used for different writes: {writes:?}"
        );
    }
    let plans = recurly_list(&sb, "/plans?limit=200").await;
    assert_eq!(plans.len(), PLANS, "{plans:?}");
    for code in &codes {
        let add_ons = recurly_list(&sb, &format!("/plans/code-{code}/add_ons?limit=200")).await;
        assert_eq!(add_ons.len(), 3, "{code}: {add_ons:?}");
    }
    let subscriptions = recurly_list(&sb, "/subscriptions?limit=200").await;
    assert_eq!(subscriptions.len(), PLANS, "{subscriptions:?}");
    for n in 1..=PLANS {
        let code = format!("amplify-team-team-{n}");
        assert_eq!(
            subscriptions
                .iter()
                .filter(|s| s["account"]["code"] == code.as_str())
                .count(),
            1,
            "{code}"
        );
    }
    assert_eq!(
        cards_titled(&sb, "Plan billed in Recurly").await.len(),
        PLANS
    );
    assert_eq!(cards(&sb).await.len(), PLANS + 1, "{:?}", cards(&sb).await);
    let sent = mails(&sb).await;
    assert_eq!(sent.len(), PLANS, "{sent:?}");
    let mut recipients: Vec<String> = sent
        .iter()
        .map(|m| m["recipients"][0].as_str().unwrap().to_owned())
        .collect();
    recipients.sort();
    assert_eq!(
        recipients,
        (1..=PLANS)
            .map(|n| format!("dev{n}@consumer.example"))
            .collect::<Vec<_>>()
    );
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn with_amplify_writes_failing_each_subscription_is_billed_approved_and_mailed_once() {
    const SUBSCRIPTIONS: usize = 3;
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    startup_pass_done(&sb, &bridge).await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    provider.catalog("silver").await;
    provider.activate("silver").await;
    provider.linked("silver").await;
    let users: Vec<Value> = (1..=SUBSCRIPTIONS)
        .map(|n| json!({"guid": format!("user-{n}"), "email": format!("dev{n}@consumer.example")}))
        .collect();
    let accounts: Vec<Value> = (1..=SUBSCRIPTIONS)
        .map(|n| json!({"code": format!("amplify-team-team-{n}")}))
        .collect();
    seed(
        &sb,
        json!({"amplify": {"users": users}, "recurly": {"accounts": accounts}}),
    )
    .await;
    // The bridge's attribute and approval writes fail or are throttled now and then.
    let response = sb
        .http
        .put(sb.at("/_sandbox/faults/amplify"))
        .json(&json!({"error_rate": 0.3, "rate_limited_rate": 0.1, "methods": ["PUT"], "seed": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    for n in 1..=SUBSCRIPTIONS {
        provider
            .subscribe(
                &format!("sub-{n}"),
                "silver",
                &format!("team-{n}"),
                &format!("user-{n}"),
            )
            .await;
    }
    for n in 1..=SUBSCRIPTIONS {
        wait_for(&format!("sub-{n} approved"), WAIT, || async {
            let sub = provider
                .get(&format!("/catalog/v1/subscriptions/sub-{n}"))
                .await;
            (sub["approval"]["state"] == "approved").then_some(())
        })
        .await;
    }
    let faults = sandbox_json(&sb, "/_sandbox/faults").await;
    sb.http
        .delete(sb.at("/_sandbox/faults/amplify"))
        .send()
        .await
        .unwrap();
    provider.settle("weather", "sentinel").await;
    let injected = &faults["amplify"]["injected"];
    assert!(
        injected["errors"].as_u64().unwrap() + injected["rate_limited"].as_u64().unwrap() > 0,
        "{faults}"
    );
    assert_eq!(
        recurly_list(&sb, "/subscriptions?limit=200").await.len(),
        SUBSCRIPTIONS
    );
    assert_eq!(mails(&sb).await.len(), SUBSCRIPTIONS);
    assert!(cards_titled(&sb, "Subscription").await.is_empty());
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn the_pass_on_start_provisions_what_changed_while_the_bridge_was_down() {
    let sb = bridge_sandbox().await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    provider.activate("silver").await;
    let bridge = spawn_bridge(&sb, "").await;
    let code = plan_code(&plan);
    wait_for("the Recurly plan", WAIT, || async {
        (recurly(&sb, &format!("/plans/code-{code}")).await.0 == 200).then_some(())
    })
    .await;
    startup_pass_done(&sb, &bridge).await;
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}
