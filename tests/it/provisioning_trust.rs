//! Nothing ends on an event's word (issue 13, points 1 and 4; issue 12, point 5): forged and
//! stale webhooks, path tricks and other organizations' events change nothing in Recurly; only
//! billing the bridge made is ended, once Amplify confirms; the reconciler ends what Amplify
//! ended while the bridge was stopped, with one card; events of other types are acknowledged.

use serde_json::{Value, json};

use crate::provisioning::{
    Provider, WAIT, cards_titled, hooks, metrics, plan_code, post_webhook, reconcile_now, recurly,
    sandbox_json, seed, startup_pass_done,
};
use crate::reporting_cli::{TempDir, binary_config, serve_with};
use crate::support::{
    TEAMS_CHANNEL, TestBridge, TestSandbox, WEBHOOK_SECRET, bridge_sandbox, spawn_bridge, wait_for,
};

/// The sandbox's provider organization (`SandboxConfig::amplify.org_id`).
const ORG: &str = "100000142";
const WITH_TENANT: &str = "[amplify]\ntenant_id = \"100000142\"\n";

/// An envelope as Amplify posts it (reference §4.3) around `payload`.
fn envelope(kind: &str, payload: &Value, subresource: Option<&str>, org: &str) -> String {
    json!({"id": uuid::Uuid::new_v4().to_string(), "time": "2026-12-03T07:00:00.000+0000",
           "version": "v1", "product": "AmplifyCentral", "correlationId": "forged",
           "organization": {"id": org}, "type": kind, "payload": payload,
           "metadata": subresource.map(|s| json!({"subresource": s}))})
    .to_string()
}

/// The sequence number of the last request the sandbox recorded.
async fn last_seq(sb: &TestSandbox) -> u64 {
    sandbox_json(sb, "/_sandbox/requests")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Requests to `upstream` after `seq`.
async fn requests_after(sb: &TestSandbox, upstream: &str, seq: u64) -> Vec<Value> {
    sandbox_json(
        sb,
        &format!("/_sandbox/requests?upstream={upstream}&after={seq}"),
    )
    .await
    .as_array()
    .unwrap()
    .clone()
}

/// Recurly writes (anything but GET) after `seq`.
async fn recurly_writes_after(sb: &TestSandbox, seq: u64) -> Vec<String> {
    requests_after(sb, "recurly", seq)
        .await
        .iter()
        .filter(|r| r["method"] != "GET")
        .map(|r| format!("{} {}", r["method"], r["path"]))
        .collect()
}

fn counter(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{{labels}}} ")))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
}

/// Sends `body` as the webhook and answers (status, answer).
async fn send(sb: &TestSandbox, bridge: &TestBridge, body: String) -> (u16, Value) {
    let (status, _, answer) = post_webhook(sb, bridge, Some(WEBHOOK_SECRET), body).await;
    (status, answer)
}

/// A billed catalog (plan `silver`), an account for team-1 and `sub-1` approved by the bridge.
async fn billed_subscriber<'a>(
    sb: &'a TestSandbox,
    overrides: &str,
) -> (TestBridge, Provider<'a>, Value, String) {
    let bridge = spawn_bridge(sb, overrides).await;
    hooks(&bridge).await;
    let provider = Provider::new(sb).await;
    let plan = provider.catalog("silver").await;
    provider.activate("silver").await;
    seed(
        sb,
        json!({"recurly": {"accounts": [{"code": "amplify-team-team-1", "email": "b@consumer.example"}]}}),
    )
    .await;
    provider.linked("silver").await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let approved = provider.approval("sub-1", "approved").await;
    let recurly_id = approved["attributes"]["recurlySubscriptionId"]
        .as_str()
        .expect("linked")
        .to_owned();
    (bridge, provider, plan, recurly_id)
}

async fn recurly_state(sb: &TestSandbox, path: &str) -> String {
    let (status, body) = recurly(sb, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["state"].as_str().unwrap().to_owned()
}

#[actix_rt::test]
async fn forged_deletions_forged_404s_path_tricks_and_other_organizations_change_nothing() {
    let sb = bridge_sandbox().await;
    let (bridge, provider, plan, recurly_id) = billed_subscriber(&sb, WITH_TENANT).await;
    let code = plan_code(&plan);
    // A Recurly subscription the bridge never made, on an account of the same consumer.
    let foreign = seed_foreign(&sb, &[("gold", "amplify-team-team-1")]).await;
    let sub = provider.get("/catalog/v1/subscriptions/sub-1").await;
    let silver = provider.get("/catalog/v1/productplans/silver").await;
    let before = last_seq(&sb).await;

    let with = |resource: &Value, changes: Value| {
        let mut forged = resource.clone();
        json_patch(&mut forged, &changes);
        forged
    };
    let accepted = [
        // A deletion of a subscription that exists.
        envelope("ResourceDeleted", &sub, None, ORG),
        // Its state "archived" with a selfLink that answers 404, and one that climbs out.
        envelope(
            "SubResourceUpdated",
            &with(
                &sub,
                json!({"state": {"name": "archived"}, "metadata": {"selfLink": "/catalog/v1/subscriptions/gone-404"}}),
            ),
            Some("state"),
            ORG,
        ),
        envelope(
            "ResourceDeleted",
            &with(
                &sub,
                json!({"metadata": {"selfLink": "/catalog/v1/subscriptions/sub-1/../../../management/v1/integrations"}}),
            ),
            None,
            ORG,
        ),
        // A missing name carrying the real subscription's id: its id says it is alive.
        envelope(
            "ResourceDeleted",
            &with(
                &sub,
                json!({"name": "ghost", "metadata": {"selfLink": "/catalog/v1/subscriptions/ghost"}}),
            ),
            None,
            ORG,
        ),
        // A missing subscription naming a Recurly subscription the bridge never linked.
        envelope(
            "ResourceDeleted",
            &with(
                &sub,
                json!({"name": "ghost-2", "metadata": {"id": "8a2e000000000000000000000000dead"},
                       "attributes": {"recurlySubscriptionId": foreign[0]}}),
            ),
            None,
            ORG,
        ),
        // The plan: deleted, archived by its body, and a missing name with its id.
        envelope("ResourceDeleted", &silver, None, ORG),
        envelope(
            "SubResourceUpdated",
            &with(&silver, json!({"state": "archived"})),
            Some("state"),
            ORG,
        ),
        envelope(
            "ResourceDeleted",
            &with(
                &silver,
                json!({"name": "ghost-plan", "metadata": {"selfLink": "/catalog/v1/productplans/ghost-plan"}}),
            ),
            None,
            ORG,
        ),
    ];
    for body in accepted {
        let (status, answer) = send(&sb, &bridge, body.clone()).await;
        assert_eq!(
            (status, &answer["status"]),
            (202, &json!("accepted")),
            "{body}: {answer}"
        );
    }
    // Another organization's events are acknowledged and ignored.
    for payload in [&sub, &silver] {
        let (status, answer) = send(
            &sb,
            &bridge,
            envelope("ResourceDeleted", payload, None, "999999"),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(
            answer,
            json!({"status": "ignored", "reason": "other_organization"})
        );
    }
    // A name that is a path is refused before anything is queued.
    let (status, answer) = send(
        &sb,
        &bridge,
        envelope(
            "ResourceDeleted",
            &with(&sub, json!({"name": "../../management/v1/integrations"})),
            None,
            ORG,
        ),
    )
    .await;
    assert_eq!(status, 400, "{answer}");

    // Every accepted event has been through the bridge once the sentinel's card is out.
    provider.settle("weather", "sentinel").await;
    let writes = recurly_writes_after(&sb, before).await;
    assert!(writes.is_empty(), "no Recurly write: {writes:?}");
    assert_eq!(
        recurly_state(&sb, &format!("/subscriptions/{recurly_id}")).await,
        "active"
    );
    assert_eq!(
        recurly_state(&sb, &format!("/subscriptions/{}", foreign[0])).await,
        "active"
    );
    assert_eq!(
        recurly_state(&sb, &format!("/plans/code-{code}")).await,
        "active"
    );
    assert!(cards_titled(&sb, "Subscription ended").await.is_empty());
    assert!(cards_titled(&sb, "Plan off sale").await.is_empty());
    // No URL an event carried was followed.
    let followed: Vec<String> = requests_after(&sb, "amplify", before)
        .await
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .filter(|p| p.contains("integrations") || p.contains("gone-404") || p.contains(".."))
        .collect();
    assert!(followed.is_empty(), "{followed:?}");
    let text = metrics(&sb, &bridge).await;
    assert_eq!(
        counter(
            &text,
            "billing_bridge_webhooks_ignored_total",
            "reason=\"other_organization\""
        ),
        2
    );
    let sub = provider.get("/catalog/v1/subscriptions/sub-1").await;
    assert_eq!(sub["approval"]["state"], "approved");
}

/// Merges `changes` into `value` (objects key by key, anything else replaced).
fn json_patch(value: &mut Value, changes: &Value) {
    match (value, changes) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                json_patch(into.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// Recurly subscriptions the bridge did not make: (plan code, account code) each, on a `gold`
/// plan created here when named. Answers their ids.
async fn seed_foreign(sb: &TestSandbox, subscriptions: &[(&str, &str)]) -> Vec<String> {
    let accounts: Vec<Value> = subscriptions
        .iter()
        .filter(|(_, account)| !account.starts_with("amplify-team-team-1"))
        .map(|(_, account)| json!({"code": account}))
        .collect();
    let answer: Value = crate::provisioning::seed(sb, json!({"recurly": {
            "accounts": accounts,
            "plans": [{"code": "gold", "name": "Gold", "accounting_code": "gold",
                       "currencies": [{"currency": "USD", "unit_amount": 5}]}],
            "subscriptions": subscriptions.iter().map(|(plan, account)| json!({
                "plan_code": plan, "currency": "USD", "account": {"code": account}})).collect::<Vec<_>>()}}))
    .await;
    answer["recurly"]["subscriptions"]
        .as_array()
        .or_else(|| answer["subscriptions"].as_array())
        .unwrap_or_else(|| panic!("seed answer: {answer}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_rt::test]
async fn billing_the_bridge_did_not_make_is_never_ended() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, WITH_TENANT).await;
    startup_pass_done(&sb, &bridge).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    provider.activate("silver").await;
    // No hooks yet: the reconciler provisions the plan.
    reconcile_now(&sb, &bridge).await;
    wait_for("the Recurly plan", WAIT, || async {
        (recurly(&sb, &format!("/plans/code-{code}")).await.0 == 200).then_some(())
    })
    .await;
    seed(
        &sb,
        json!({"recurly": {"accounts": [{"code": "amplify-team-team-1"}]}}),
    )
    .await;
    // Another plan on the consumer's account, and the bridge's plan on an account not theirs.
    let foreign = seed_foreign(
        &sb,
        &[("gold", "amplify-team-team-1"), (&code, "acme-corp")],
    )
    .await;
    // Amplify subscriptions linked to them by attribute only (as someone with write access
    // could), approved, before any hook exists.
    let owner = json!({"resource": {"owner": {"type": "team", "id": "team-1", "organization": {"id": "650130132060094"}, "user": {"id": "user-1"}}}});
    let linked: Vec<Value> = ["sub-a", "sub-b"]
        .iter()
        .zip(&foreign)
        .map(|(name, id)| {
            json!({"kind": "Subscription", "name": name, "title": name,
                   "spec": {"product": "weather", "plan": {"name": "silver"}},
                   "attributes": {"recurlySubscriptionId": id}, "marketplace": owner,
                   "approval": {"state": "approved"}})
        })
        .collect();
    seed(&sb, json!({"amplify": {"resources": linked}})).await;
    hooks(&bridge).await;

    // One the bridge made, whose attribute is then pointed at the foreign subscription.
    provider
        .subscribe("sub-c", "silver", "team-1", "user-1")
        .await;
    let approved = provider.approval("sub-c", "approved").await;
    let made = approved["attributes"]["recurlySubscriptionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tampered = approved.clone();
    tampered["attributes"]["recurlySubscriptionId"] = json!(foreign[0]);
    let (status, body) = provider
        .send(
            reqwest::Method::PUT,
            "/catalog/v1/subscriptions/sub-c",
            Some(tampered),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let before = last_seq(&sb).await;

    // Amplify really ends all three: archived, deleted, archived.
    for (name, delete) in [("sub-a", false), ("sub-b", true), ("sub-c", false)] {
        let path = format!("/catalog/v1/subscriptions/{name}");
        let (status, body) = if delete {
            provider.send(reqwest::Method::DELETE, &path, None).await
        } else {
            provider
                .send(
                    reqwest::Method::PUT,
                    &format!("{path}/state"),
                    Some(json!({"state": {"name": "archived", "reason": "ended"}})),
                )
                .await
        };
        assert!(status == 200 || status == 202, "{name}: {status} {body}");
    }
    wait_for("the card about sub-c", WAIT, || async {
        (!cards_titled(&sb, "Subscription ended, billing left alone: sub-c")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    let summary = reconcile_now(&sb, &bridge).await;
    assert_eq!(summary["ended"], 0, "nothing left to end: {summary}");
    provider.settle("weather", "sentinel").await;

    let writes = recurly_writes_after(&sb, before).await;
    assert!(writes.is_empty(), "no Recurly write: {writes:?}");
    for id in foreign.iter().chain([&made]) {
        assert_eq!(
            recurly_state(&sb, &format!("/subscriptions/{id}")).await,
            "active",
            "{id}"
        );
    }
    assert!(cards_titled(&sb, "Subscription ended:").await.is_empty());
    assert_eq!(
        cards_titled(&sb, "Subscription ended, billing left alone")
            .await
            .len(),
        1
    );
}

#[actix_rt::test]
async fn subscriptions_ended_while_the_bridge_was_stopped_are_canceled_at_the_next_pass_with_one_card_each()
 {
    let sb = bridge_sandbox().await;
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let extra = format!(
        "\n[notify.teams]\nwebhook_url = \"{}{TEAMS_CHANNEL}\"\n",
        sb.url
    );
    let config = |listen: &str| binary_config(&sb, listen, &state, &extra);
    let mut first = serve_with(&sb, &dir, config).await;
    // Hooks pointing at the first process, as `install-hooks` would set them.
    crate::provisioning::hooks_at(&sb, &first.url).await;
    let provider = Provider::new(&sb).await;
    provider.catalog("silver").await;
    provider.activate("silver").await;
    seed(
        &sb,
        json!({"recurly": {"accounts": [{"code": "amplify-team-team-1"}, {"code": "amplify-team-team-2"}]}}),
    )
    .await;
    let mut billed = Vec::new();
    for (name, team) in [("sub-1", "team-1"), ("sub-2", "team-2")] {
        provider.linked("silver").await;
        provider.subscribe(name, "silver", team, "user-1").await;
        let approved = wait_for(&format!("{name} approved"), WAIT, || async {
            let sub = provider
                .get(&format!("/catalog/v1/subscriptions/{name}"))
                .await;
            (sub["approval"]["state"] == "approved").then_some(sub)
        })
        .await;
        billed.push((
            name,
            approved["attributes"]["recurlySubscriptionId"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    first.kill();

    // While it is down, Amplify ends both: one deleted, one archived. Nobody hears the events.
    provider.delete_subscription("sub-1").await;
    provider.archive_subscription("sub-2", "ended").await;
    for (_, id) in &billed {
        assert_eq!(
            recurly_state(&sb, &format!("/subscriptions/{id}")).await,
            "active"
        );
    }

    // The restarted bridge's start-up pass finds them in its own links and ends their billing.
    let second = serve_with(&sb, &dir, config).await;
    for (name, id) in &billed {
        wait_for(&format!("{name}'s billing canceled"), WAIT, || async {
            (recurly_state(&sb, &format!("/subscriptions/{id}")).await == "canceled").then_some(())
        })
        .await;
        wait_for(&format!("{name}'s card"), WAIT, || async {
            (!cards_titled(&sb, &format!("Subscription ended: {name}"))
                .await
                .is_empty())
            .then_some(())
        })
        .await;
    }
    // Later passes find nothing left to end, and send no second card.
    for _ in 0..2 {
        let answer: Value = sb
            .http
            .post(format!("{}/admin/reconcile", second.url))
            .bearer_auth(crate::support::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["ended"], 0, "{answer}\n{}", second.log());
    }
    for (name, _) in &billed {
        assert_eq!(
            cards_titled(&sb, &format!("Subscription ended: {name}"))
                .await
                .len(),
            1,
            "{name}"
        );
    }
    let cancels: Vec<Value> = sandbox_json(&sb, "/_sandbox/requests?upstream=recurly")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "PUT" && r["path"].as_str().unwrap_or("").ends_with("/cancel"))
        .cloned()
        .collect();
    assert_eq!(cancels.len(), billed.len(), "one cancel each");
}

#[actix_rt::test]
async fn events_of_other_types_are_acknowledged_ignored_and_counted() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    startup_pass_done(&sb, &bridge).await;
    let before = last_seq(&sb).await;
    let plan = json!({"kind": "ProductPlan", "name": "silver", "metadata": {"id": "p1"}, "state": "active"});
    let bodies = [
        envelope("TriggerAction", &plan, None, ORG),
        json!({"id": "ping-1", "type": "Ping"}).to_string(),
        envelope("ResourceExploded", &json!("not a resource"), None, ORG),
    ];
    for body in bodies {
        let (status, answer) = send(&sb, &bridge, body.clone()).await;
        assert_eq!(status, 202, "{body}: {answer}");
        assert_eq!(answer, json!({"status": "ignored", "reason": "event_type"}));
    }
    // A resource change without its payload is still malformed.
    let (status, _) = send(
        &sb,
        &bridge,
        json!({"id": "x", "time": "t", "type": "ResourceDeleted"}).to_string(),
    )
    .await;
    assert_eq!(status, 400);
    let text = metrics(&sb, &bridge).await;
    assert_eq!(
        counter(
            &text,
            "billing_bridge_webhooks_ignored_total",
            "reason=\"event_type\""
        ),
        3
    );
    assert_eq!(
        counter(
            &text,
            "billing_bridge_webhooks_received_total",
            "outcome=\"ignored\""
        ),
        3
    );
    let upstream_calls = requests_after(&sb, "amplify", before).await.len()
        + requests_after(&sb, "recurly", before).await.len();
    assert_eq!(upstream_calls, 0, "nothing was looked at");
}

#[actix_rt::test]
async fn billing_linked_by_an_earlier_release_is_taken_up_on_the_first_pass_and_ended_with_amplify()
{
    let sb = bridge_sandbox().await;
    let earlier = spawn_bridge(&sb, "").await;
    hooks(&earlier).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    provider.activate("silver").await;
    wait_for("the Recurly plan", WAIT, || async {
        (recurly(&sb, &format!("/plans/code-{code}")).await.0 == 200).then_some(())
    })
    .await;
    seed(
        &sb,
        json!({"recurly": {"accounts": [{"code": "amplify-team-team-1"}, {"code": "amplify-team-team-2"}]}}),
    )
    .await;
    // Billing as a release without links in its store left it: Recurly subscriptions on the
    // bridge's plan, and the link only in the Amplify attributes.
    let answer: Value = crate::provisioning::seed(
        &sb,
        json!({"recurly": {"subscriptions": [
            {"plan_code": code, "currency": "USD", "account": {"code": "amplify-team-team-1"}},
            {"plan_code": code, "currency": "USD", "account": {"code": "amplify-team-team-2"}}]}}),
    )
    .await;
    let ids: Vec<String> = answer["recurly"]["subscriptions"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    // The second names an account that is not its owner's: never taken up.
    let legacy: Vec<Value> = [("legacy-1", "team-1", &ids[0], "amplify-team-team-1"), ("legacy-2", "team-1", &ids[1], "amplify-team-team-2")]
        .iter()
        .map(|(name, team, id, account)| {
            json!({"kind": "Subscription", "name": name, "title": name,
                   "spec": {"product": "weather", "plan": {"name": "silver"}},
                   "attributes": {"recurlySubscriptionId": id, "recurlyAccountCode": account},
                   "marketplace": {"resource": {"owner": {"type": "team", "id": team, "organization": {"id": "650130132060094"}}}},
                   "approval": {"state": "approved"}})
        })
        .collect();
    seed(&sb, json!({"amplify": {"resources": legacy}})).await;

    // The upgraded bridge, on a store that has never run a pass.
    let upgraded = spawn_bridge(&sb, "").await;
    startup_pass_done(&sb, &upgraded).await;
    hooks(&upgraded).await;
    for name in ["legacy-1", "legacy-2"] {
        let (status, body) = provider
            .send(
                reqwest::Method::DELETE,
                &format!("/catalog/v1/subscriptions/{name}"),
                None,
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    wait_for("legacy-1's billing canceled", WAIT, || async {
        (recurly_state(&sb, &format!("/subscriptions/{}", ids[0])).await == "canceled")
            .then_some(())
    })
    .await;
    provider.settle("weather", "sentinel").await;
    assert_eq!(
        cards_titled(&sb, "Subscription ended: legacy-1")
            .await
            .len(),
        1
    );
    assert_eq!(
        recurly_state(&sb, &format!("/subscriptions/{}", ids[1])).await,
        "active",
        "an account that is not the owner's is not the bridge's"
    );
    assert!(
        cards_titled(&sb, "Subscription ended: legacy-2")
            .await
            .is_empty()
    );
}
