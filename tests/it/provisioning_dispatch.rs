//! Dispatch owned by the store's queue (issue 14): a pass that must be tried again is kept by the
//! store, so a `serve` killed (SIGKILL) between the failed pass and its retry still provisions
//! the resource once, after restart, without a reconcile pass; plans have a queue and a
//! provisioner of their own, so a slow Recurly (2 s a call) working through subscriptions does
//! not hold a plan up behind them; several passes of a kind are in flight at once, but never two
//! of one resource.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::provisioning::{
    Provider, WAIT, hooks, overlapping_pairs, paid_plan_spec, plan_code, priced_quotas,
    recurly_writes, requests_to, seed,
};
use crate::reporting_cli::{TempDir, binary_config, serve_with};
use crate::support::{TestSandbox, bridge_sandbox, metric_sum, metrics_at, spawn_bridge, wait_for};

async fn faults(sb: &TestSandbox, upstream: &str, settings: Option<Value>) {
    let url = sb.at(&format!("/_sandbox/faults/{upstream}"));
    let status = match settings {
        Some(settings) => sb.http.put(url).json(&settings).send().await,
        None => sb.http.delete(url).send().await,
    }
    .unwrap()
    .status();
    assert!(status.is_success(), "{upstream} faults: {status}");
}

#[actix_rt::test]
async fn a_serve_killed_between_a_failed_pass_and_its_retry_provisions_the_plan_once_after_restart_without_a_reconcile()
 {
    let sb = bridge_sandbox().await;
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    // The retry comes 3 s after the failed pass (then 6 s, 12 s): room to kill and restart.
    let config = |listen: &str| {
        binary_config(&sb, listen, &state, "").replace(
            "[provisioning]\n",
            "[provisioning]\nretry_first = \"3s\"\nretry_max = \"12s\"\n",
        )
    };
    let mut first = serve_with(&sb, &dir, config).await;
    crate::provisioning::hooks_at(&sb, &first.url).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    // The draft plan's passes (one per quota added) go by first.
    wait_for("the draft plan's passes", WAIT, || async {
        let text = metrics_at(&sb, &first.url).await;
        (metric_sum(
            &text,
            "billing_bridge_provisioning_total",
            r#"resource="plan",outcome="waiting""#,
        ) >= 3.0)
            .then_some(())
    })
    .await;

    // Amplify fails every read of plans: the activation's pass must be tried again.
    let outage = json!({"error_rate": 1.0, "error_status": 503, "path_contains": "/productplans", "methods": ["GET"]});
    faults(&sb, "amplify", Some(outage)).await;
    provider.activate("silver").await;
    wait_for("the failed pass", Duration::from_secs(30), || async {
        let text = metrics_at(&sb, &first.url).await;
        (metric_sum(
            &text,
            "billing_bridge_provisioning_total",
            r#"resource="plan",outcome="retry""#,
        ) >= 1.0)
            .then_some(())
    })
    .await;
    first.kill();
    let killed = Instant::now();

    // The restarted process's start-up reconcile pass fails too (Amplify still fails), so only
    // the retry the store kept can provision the plan.
    let second = serve_with(&sb, &dir, config).await;
    wait_for(
        "the start-up reconcile pass failing",
        Duration::from_secs(60),
        || async {
            second
                .log()
                .contains("reconciliation pass failed")
                .then_some(())
        },
    )
    .await;
    faults(&sb, "amplify", None).await;
    let created = wait_for(
        "the Recurly plan from the kept retry",
        Duration::from_secs(60),
        || async {
            let posts = recurly_writes(&sb, "POST", "/plans").await;
            (!posts.is_empty()).then_some(posts)
        },
    )
    .await;
    assert_eq!(created.len(), 1, "one plan created");
    assert_eq!(created[0]["body"]["code"], code.as_str());
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "provisioned after the restart"
    );
    // The pass goes on after the Recurly plan (the link written back, the card): its outcome is
    // counted when it ends.
    let text = wait_for("the pass counted as provisioned", WAIT, || async {
        let text = metrics_at(&sb, &second.url).await;
        (metric_sum(
            &text,
            "billing_bridge_provisioning_total",
            r#"resource="plan",outcome="provisioned""#,
        ) == 1.0)
            .then_some(text)
    })
    .await;
    assert_eq!(
        metric_sum(&text, "billing_bridge_reconcile_passes_total", ""),
        0.0,
        "no reconcile pass did it\n{}",
        second.log()
    );
    // Once: later passes over it change nothing.
    assert_eq!(recurly_writes(&sb, "POST", "/plans").await.len(), 1);
}

#[actix_rt::test]
async fn a_slow_recurly_does_not_hold_a_plan_up_behind_a_queue_of_subscriptions() {
    let sb = bridge_sandbox().await;
    // Two subscription passes at a time: the six subscriptions need three rounds of Recurly
    // calls, the plan one.
    let bridge = spawn_bridge(&sb, "[provisioning]\nconcurrency = 2\n").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    provider.catalog("silver").await;
    provider.activate("silver").await;
    provider.linked("silver").await;
    let subscriptions = 6;
    let accounts: Vec<Value> = (1..=subscriptions)
        .map(|i| json!({"code": format!("amplify-team-team-{i}")}))
        .collect();
    seed(&sb, json!({"recurly": {"accounts": accounts}})).await;
    // A draft plan whose quotas are in place before Recurly slows down.
    let gold = provider
        .plan("gold", "Gold", "weather", paid_plan_spec("weather"))
        .await;
    for (quota, pricing) in priced_quotas() {
        provider.quota("gold", quota, pricing).await;
    }

    // Every Recurly call now takes 2 s; the subscriptions queue up first, then the plan.
    faults(&sb, "recurly", Some(json!({"latency_ms": 2000}))).await;
    for i in 1..=subscriptions {
        provider
            .subscribe(
                &format!("sub-{i}"),
                "silver",
                &format!("team-{i}"),
                "user-1",
            )
            .await;
    }
    provider.activate("gold").await;
    let code = plan_code(&gold);
    wait_for(
        "the gold plan in Recurly",
        Duration::from_secs(60),
        || async {
            recurly_writes(&sb, "POST", "/plans")
                .await
                .iter()
                .any(|r| r["body"]["code"] == code.as_str())
                .then_some(())
        },
    )
    .await;
    let mut approved = 0;
    for i in 1..=subscriptions {
        let sub = provider
            .get(&format!("/catalog/v1/subscriptions/sub-{i}"))
            .await;
        approved += usize::from(sub["approval"]["state"] == "approved");
    }
    assert!(
        approved <= subscriptions / 2,
        "the plan waited behind the subscriptions: {approved} of {subscriptions} approved first"
    );
    // The subscriptions still get through, two at a time.
    wait_for(
        "every subscription approved",
        Duration::from_secs(120),
        || async {
            for i in 1..=subscriptions {
                let sub = provider
                    .get(&format!("/catalog/v1/subscriptions/sub-{i}"))
                    .await;
                if sub["approval"]["state"] != "approved" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Side by side: some two of the subscriptions' creations were in Recurly at once.
    let created = recurly_writes(&sb, "POST", "/subscriptions").await;
    assert_eq!(created.len(), subscriptions, "one creation each");
    assert!(
        overlapping_pairs(&created) > 0,
        "no two subscription passes were in flight at once"
    );
}

#[actix_rt::test]
async fn two_events_for_one_subscription_are_never_passed_at_once() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "[provisioning]\nconcurrency = 4\n").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    provider.catalog("silver").await;
    provider.activate("silver").await;
    provider.linked("silver").await;
    seed(
        &sb,
        json!({"recurly": {"accounts": [{"code": "amplify-team-team-1"}]}}),
    )
    .await;
    // Every read of the subscription takes a second: passes that ran side by side would read
    // it at the same time.
    faults(
        &sb,
        "amplify",
        Some(json!({"latency_ms": 1000, "path_contains": "/subscriptions/sub-1", "methods": ["GET"]})),
    )
    .await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    // The event Amplify sent when the subscription asked for approval, twice more under other
    // ids: three events of one subscription in the queue at once, four passes allowed in flight.
    let created = crate::provisioning::delivered_envelope(&sb, |e| {
        e["payload"]["kind"] == "Subscription"
            && e["payload"]["name"] == "sub-1"
            && e["metadata"]["subresource"] == "approval"
            && e["payload"]["approval"]["state"] == "pending"
    })
    .await;
    for copy in ["copy-1", "copy-2"] {
        let mut event = created.clone();
        event["id"] = json!(copy);
        let (status, _, body) = crate::provisioning::post_webhook(
            &sb,
            &bridge,
            Some(crate::support::WEBHOOK_SECRET),
            event.to_string(),
        )
        .await;
        assert_eq!(
            (status, &body["status"]),
            (202, &json!("accepted")),
            "{body}"
        );
    }
    wait_for("three passes of sub-1", Duration::from_secs(60), || async {
        let text = metrics_at(&sb, &bridge.url).await;
        (metric_sum(
            &text,
            "billing_bridge_provisioning_total",
            r#"resource="subscription""#,
        ) >= 3.0)
            .then_some(())
    })
    .await;
    let sub = provider.get("/catalog/v1/subscriptions/sub-1").await;
    assert_eq!(sub["approval"]["state"], "approved");
    let reads = requests_to(&sb, "amplify", "GET", "/subscriptions/sub-1").await;
    assert!(
        reads.len() >= 3,
        "one read per pass at least: {}",
        reads.len()
    );
    assert_eq!(
        overlapping_pairs(&reads),
        0,
        "two passes of sub-1 read it at once"
    );
    assert_eq!(
        recurly_writes(&sb, "POST", "/subscriptions").await.len(),
        1,
        "one Recurly subscription"
    );
}
