//! Plan and subscription provisioning end to end: the real bridge (pipeline and server on
//! 127.0.0.1:0) and the sandbox talking HTTP, with webhooks delivered by the sandbox's Amplify to
//! the hooks `install-hooks` creates.

use std::time::Duration;

use billing_bridge_pipeline::hooks::{HookSpec, install_hooks};
use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, TEAMS_CHANNEL, TestBridge, TestSandbox, WEBHOOK_SECRET, amplify_token,
    bridge_sandbox, spawn_bridge, wait_for,
};

pub const WAIT: Duration = Duration::from_secs(10);
/// For waits on the pipeline (a pass, a link, an approval): generous, as polling costs a
/// passing test nothing.
pub const LONG_WAIT: Duration = Duration::from_secs(60);

/// A provider acting on the sandbox's Amplify.
pub struct Provider<'a> {
    pub sb: &'a TestSandbox,
    pub token: String,
}

impl<'a> Provider<'a> {
    pub async fn new(sb: &'a TestSandbox) -> Provider<'a> {
        Provider {
            sb,
            token: amplify_token(sb).await,
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .sb
            .http
            .request(method, self.sb.at(&format!("/amplify/apis{path}")))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("amplify request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn create(&self, collection: &str, body: Value) -> Value {
        let (status, created) = self
            .send(reqwest::Method::POST, collection, Some(body))
            .await;
        assert_eq!(status, 201, "creating in {collection}: {created}");
        created
    }

    pub async fn get(&self, path: &str) -> Value {
        self.send(reqwest::Method::GET, path, None).await.1
    }

    /// A Recurly-billed product with a paid, manually approved plan and three priced quotas
    /// (graduated, volume, pay per use). Returns the plan.
    pub async fn catalog(&self, plan: &str) -> Value {
        self.product("weather", true).await;
        let plan = self
            .plan(plan, "Silver", "weather", paid_plan_spec("weather"))
            .await;
        let name = plan["name"].as_str().unwrap().to_owned();
        for (quota, pricing) in priced_quotas() {
            self.quota(&name, quota, pricing).await;
        }
        plan
    }

    /// A product, billed by Recurly when `billed` (attribute `billingSystem=recurly`).
    pub async fn product(&self, name: &str, billed: bool) -> Value {
        let attributes = if billed {
            json!({"billingSystem":"recurly"})
        } else {
            json!({})
        };
        self.create("/catalog/v1/products", json!({"group":"catalog","apiVersion":"v1","kind":"Product","name":name,"title":format!("{name} API"),
            "attributes":attributes,"spec":{"description":"Forecasts"}})).await
    }

    /// A draft plan of `product` with `spec` (see `paid_plan_spec`).
    pub async fn plan(&self, name: &str, title: &str, product: &str, mut spec: Value) -> Value {
        spec["product"] = json!(product);
        self.create(
            "/catalog/v1/productplans",
            json!({"group":"catalog","apiVersion":"v1","kind":"ProductPlan","name":name,"title":title,"spec":spec}),
        )
        .await
    }

    /// A quota of `plan` priced by `pricing` (Amplify reference §3.3), counting `transactions`.
    pub async fn quota(&self, plan: &str, quota: &str, pricing: Value) -> Value {
        self.create(&format!("/catalog/v1/productplans/{plan}/quotas"), json!({"group":"catalog","apiVersion":"v1","kind":"Quota","name":quota,"title":quota,
            "metadata":{"scope":{"kind":"ProductPlan","name":plan}},
            "spec":{"unit":"transactions","pricing":pricing,"resources":[{"kind":"AssetResource","name":format!("{plan}/{quota}")}]}})).await
    }

    pub async fn set_plan_state(&self, plan: &str, state: &str) {
        let (status, body) = self
            .send(
                reqwest::Method::PUT,
                &format!("/catalog/v1/productplans/{plan}/state"),
                Some(json!({"state":state})),
            )
            .await;
        assert_eq!(status, 200, "setting {plan} to {state}: {body}");
    }

    /// Waits until every event Amplify sent before this call has been through the bridge and
    /// every notice it caused has been delivered: activates a plan of `product` whose quota has a
    /// tier flat fee and waits for its failure card. Events are queued, provisioned and notified
    /// in order, so the sentinel's card comes after every earlier card and mail. Recurly is not
    /// called for the sentinel.
    pub async fn settle(&self, product: &str, sentinel: &str) {
        self.plan(sentinel, sentinel, product, paid_plan_spec(product))
            .await;
        self.quota(sentinel, "fee", flat_fee_pricing()).await;
        self.activate(sentinel).await;
        let title = format!("Plan not billed: {sentinel}");
        wait_for(&title, WAIT, || async {
            cards(self.sb)
                .await
                .iter()
                .any(|c| c.title == title)
                .then_some(())
        })
        .await;
    }

    pub async fn activate(&self, plan: &str) {
        let (status, body) = self
            .send(
                reqwest::Method::PUT,
                &format!("/catalog/v1/productplans/{plan}/state"),
                Some(json!({"state":"active"})),
            )
            .await;
        assert_eq!(status, 200, "activating {plan}: {body}");
    }

    /// Deletes a subscription as its consumer would (202: Amplify finalizes it).
    pub async fn delete_subscription(&self, name: &str) {
        let path = format!("/catalog/v1/subscriptions/{name}");
        let (status, body) = self.send(reqwest::Method::DELETE, &path, None).await;
        assert_eq!(status, 202, "deleting {name}: {body}");
    }

    /// Archives a subscription with `reason`, as its consumer would.
    pub async fn archive_subscription(&self, name: &str, reason: &str) {
        let path = format!("/catalog/v1/subscriptions/{name}/state");
        let state = json!({"state": {"name": "archived", "reason": reason}});
        let (status, body) = self.send(reqwest::Method::PUT, &path, Some(state)).await;
        assert_eq!(status, 200, "archiving {name}: {body}");
    }

    /// Waits until the bridge has linked `plan` to its Recurly plan; returns the plan.
    pub async fn linked(&self, plan: &str) -> Value {
        let path = format!("/catalog/v1/productplans/{plan}");
        wait_for(&format!("the link of {plan}"), LONG_WAIT, || async {
            let plan = self.get(&path).await;
            plan["attributes"]["recurlyPlanCode"]
                .is_string()
                .then_some(plan)
        })
        .await
    }

    /// Waits until `subscription`'s approval is in `state`; returns the subscription.
    pub async fn approval(&self, subscription: &str, state: &str) -> Value {
        let path = format!("/catalog/v1/subscriptions/{subscription}");
        wait_for(&format!("{subscription} {state}"), LONG_WAIT, || async {
            let sub = self.get(&path).await;
            (sub["approval"]["state"] == state).then_some(sub)
        })
        .await
    }

    /// A subscription owned by `user`'s team `team` in org 650130132060094 (the sandbox takes the
    /// consumer from `marketplace.resource.owner`; the real platform from the caller).
    pub async fn subscribe(&self, name: &str, plan: &str, team: &str, user: &str) -> Value {
        self.create("/catalog/v1/subscriptions", json!({"group":"catalog","apiVersion":"v1","kind":"Subscription","name":name,"title":format!("Weather {name}"),
            "spec":{"product":"weather","plan":{"name":plan}},
            "marketplace":{"resource":{"owner":{"type":"team","id":team,"organization":{"id":"650130132060094"},"user":{"id":user}}}}})).await
    }
}

/// A paid plan with manual approval, billed 10 USD monthly with a 5 USD setup fee.
pub fn paid_plan_spec(product: &str) -> Value {
    json!({"product":product,"type":"paid","billing":{"currency":"USD","price":10,"interval":"monthly","setup":{"price":5}},
           "subscription":{"approval":"manual","interval":{"type":"months","length":1},"renewal":"automatic"}})
}

/// The three priced quotas of `Provider::catalog`: graduated, volume and pay per use.
pub fn priced_quotas() -> [(&'static str, Value); 3] {
    [
        (
            "calls",
            json!({"type":"graduated","limit":{"type":"tiered","tiers":[{"from":1,"to":1000,"cost":0,"flatFee":0},{"from":1001,"to":999999999,"cost":0.002,"flatFee":0}]}}),
        ),
        (
            "bulk",
            json!({"type":"volume","limit":{"type":"tiered","tiers":[{"from":1,"to":100,"cost":1,"flatFee":0},{"from":101,"to":999999999,"cost":0.5,"flatFee":0}]}}),
        ),
        ("alerts", json!({"type":"perunit","cost":0.01})),
    ]
}

/// Graduated tiers whose second tier charges a flat fee, which Recurly tiers cannot express.
pub fn flat_fee_pricing() -> Value {
    json!({"type":"graduated","limit":{"type":"tiered","tiers":[{"from":1,"to":500,"cost":2,"flatFee":0},{"from":501,"to":999999999,"cost":1,"flatFee":10}]}})
}

/// A card the provider's channel received: its title and text.
#[derive(Debug, Clone)]
pub struct Card {
    pub title: String,
    pub text: String,
}

/// Every card the provider's Teams channel received, in order.
pub async fn cards(sb: &TestSandbox) -> Vec<Card> {
    let channel = TEAMS_CHANNEL.trim_start_matches("/teams/");
    sandbox_json(sb, "/_sandbox/cards")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["channel"] == channel)
        .map(|c| {
            let body = &c["body"]["attachments"][0]["content"]["body"];
            Card {
                title: body[0]["text"].as_str().unwrap_or_default().to_owned(),
                text: body.to_string(),
            }
        })
        .collect()
}

/// Waits until a card titled with `prefix` arrived; answers every such card.
pub async fn wait_cards_titled(sb: &TestSandbox, prefix: &str) -> Vec<Card> {
    wait_for(&format!("a card titled {prefix}"), WAIT, || async {
        let found = cards_titled(sb, prefix).await;
        (!found.is_empty()).then_some(found)
    })
    .await
}

/// Cards whose title starts with `prefix`.
pub async fn cards_titled(sb: &TestSandbox, prefix: &str) -> Vec<Card> {
    cards(sb)
        .await
        .into_iter()
        .filter(|c| c.title.starts_with(prefix))
        .collect()
}

/// Every mail SendGrid accepted.
pub async fn mails(sb: &TestSandbox) -> Vec<Value> {
    sandbox_json(sb, "/_sandbox/mails")
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// The `data` of a Recurly list (GET as a provider would), at most 200 items.
pub async fn recurly_list(sb: &TestSandbox, path: &str) -> Vec<Value> {
    let (status, body) = recurly(sb, path).await;
    assert_eq!(status, 200, "GET /recurly{path}: {body}");
    body["data"].as_array().unwrap().clone()
}

/// The requests the bridge sent to Recurly with `method` whose path ends with `suffix`.
pub async fn recurly_writes(sb: &TestSandbox, method: &str, suffix: &str) -> Vec<Value> {
    requests_to(sb, "recurly", method, suffix).await
}

/// The requests `upstream` received with `method` on a path ending in `suffix`, as recorded.
pub async fn requests_to(
    sb: &TestSandbox,
    upstream: &str,
    method: &str,
    suffix: &str,
) -> Vec<Value> {
    sandbox_json(sb, &format!("/_sandbox/requests?upstream={upstream}"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["method"] == method && r["path"].as_str().unwrap_or_default().ends_with(suffix)
        })
        .cloned()
        .collect()
}

/// Pairs of recorded requests that were being answered at the same time: one arrived before
/// the other was answered (the sandbox takes `arrived` and `seq` from one counter).
pub fn overlapping_pairs(requests: &[Value]) -> usize {
    let arrived = |r: &Value| r["arrived"].as_u64().expect("arrived");
    let answered = |r: &Value| r["seq"].as_u64().expect("seq");
    let mut pairs = 0;
    for (i, a) in requests.iter().enumerate() {
        pairs += requests[i + 1..]
            .iter()
            .filter(|b| arrived(a) < answered(b) && arrived(b) < answered(a))
            .count();
    }
    pairs
}

/// The bridge's `/metrics` text.
pub async fn metrics(sb: &TestSandbox, bridge: &TestBridge) -> String {
    crate::support::metrics_at(sb, &bridge.url).await
}

/// Waits for the reconciliation pass the bridge runs on start, so state a test creates later is
/// seen only through webhooks (or a pass the test asks for).
pub async fn startup_pass_done(sb: &TestSandbox, bridge: &TestBridge) {
    wait_for("the start-up reconciliation pass", WAIT, || async {
        metrics(sb, bridge)
            .await
            .lines()
            .any(|l| l.starts_with("billing_bridge_reconcile_passes_total ") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
}

/// `POST {bridge}/admin/reconcile` with the admin token; the pass's summary.
pub async fn reconcile_now(sb: &TestSandbox, bridge: &TestBridge) -> Value {
    let response = sb
        .http
        .post(format!("{}/admin/reconcile", bridge.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "reconcile");
    response.json().await.unwrap()
}

/// Posts `body` to the bridge's webhook route with `secret` in `Authorization` (none if `None`).
pub async fn post_webhook(
    sb: &TestSandbox,
    bridge: &TestBridge,
    secret: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Option<String>, Value) {
    let mut request = sb
        .http
        .post(bridge.webhook_url())
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(secret) = secret {
        request = request.header("Authorization", secret);
    }
    let response = request.send().await.expect("webhook post");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// Installs hooks whose Webhook points nowhere the bridge listens, so Amplify's envelopes are
/// recorded in `/_sandbox/deliveries` for the test to send itself.
pub async fn hooks_elsewhere(bridge: &TestBridge, sb: &TestSandbox) {
    let url = sb.at("/_sandbox/nowhere");
    install_hooks(
        &bridge.bridge.amplify,
        &HookSpec {
            name: "billing-bridge",
            url: &url,
            header: "Authorization",
            secret: WEBHOOK_SECRET,
        },
    )
    .await
    .expect("hooks installed");
}

/// The first envelope Amplify delivered that matches `pick`.
pub async fn delivered_envelope(sb: &TestSandbox, pick: impl Fn(&Value) -> bool) -> Value {
    wait_for("the webhook envelope", WAIT, || async {
        sandbox_json(sb, "/_sandbox/deliveries")
            .await
            .as_array()
            .unwrap()
            .iter()
            .find(|d| pick(&d["event"]))
            .map(|d| d["event"].clone())
    })
    .await
}

/// How many of `titles` start with `prefix`.
pub fn titled(titles: &[String], prefix: &str) -> usize {
    titles.iter().filter(|t| t.starts_with(prefix)).count()
}

/// `POST /_sandbox/seed`, answering what it created.
pub async fn seed(sb: &TestSandbox, body: Value) -> Value {
    let response = sb
        .http
        .post(sb.at("/_sandbox/seed"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{answer}");
    answer
}

pub async fn sandbox_json(sb: &TestSandbox, path: &str) -> Value {
    sb.http
        .get(sb.at(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What a Recurly client of the provider sees.
pub async fn recurly(sb: &TestSandbox, path: &str) -> (u16, Value) {
    let response = sb
        .http
        .get(sb.at(&format!("/recurly{path}")))
        .basic_auth("any-key", Some(""))
        .header("Accept", "application/vnd.recurly.v2021-02-25")
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

pub async fn hooks(bridge: &TestBridge) {
    install_hooks(
        &bridge.bridge.amplify,
        &HookSpec {
            name: "billing-bridge",
            url: &bridge.webhook_url(),
            header: "Authorization",
            secret: WEBHOOK_SECRET,
        },
    )
    .await
    .expect("hooks installed");
}

/// Installs the hooks (and WatchTopic) pointing at a bridge run as its own process (`serve_with`),
/// as `install-hooks --url` would, with a client of the test's own.
pub async fn hooks_at(sb: &TestSandbox, bridge_url: &str) {
    let (client, _) = billing_bridge_pipeline::Bridge::build(
        crate::support::bridge_config(sb, ""),
        billing_bridge_upstream::RetryPolicy::new(
            3,
            Duration::from_millis(5),
            Duration::from_millis(100),
        ),
    )
    .expect("a client for the hooks");
    install_hooks(
        &client.amplify,
        &HookSpec {
            name: "billing-bridge",
            url: &format!("{bridge_url}{}", billing_bridge_server::WEBHOOK_PATH),
            header: "Authorization",
            secret: WEBHOOK_SECRET,
        },
    )
    .await
    .expect("hooks installed");
}

pub fn plan_code(plan: &Value) -> String {
    format!("amplify-plan-{}", plan["metadata"]["id"].as_str().unwrap())
}

#[actix_rt::test]
async fn an_activated_plan_and_a_pending_subscription_are_billed_approved_and_announced() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    provider.activate("silver").await;

    let recurly_plan = wait_for("the Recurly plan", Duration::from_secs(10), || async {
        let (status, body) = recurly(&sb, &format!("/plans/code-{code}")).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(recurly_plan["name"], "Silver");
    assert_eq!(recurly_plan["currencies"][0]["unit_amount"], 10.0);
    assert_eq!(recurly_plan["currencies"][0]["setup_fee"], 5.0);
    let (_, add_ons) = recurly(&sb, &format!("/plans/code-{code}/add_ons?limit=200")).await;
    let add_ons = add_ons["data"].as_array().unwrap();
    assert_eq!(add_ons.len(), 3);
    let by_name = |n: &str| {
        add_ons
            .iter()
            .find(|a| a["name"] == n)
            .unwrap_or_else(|| panic!("add-on {n}"))
    };
    assert_eq!(by_name("calls")["tier_type"], "tiered");
    assert_eq!(by_name("calls")["tiers"][0]["ending_quantity"], 1000);
    assert_eq!(by_name("bulk")["tier_type"], "volume");
    assert_eq!(by_name("alerts")["tier_type"], "flat");
    let linked = wait_for("the link on the Amplify plan", WAIT, || async {
        let plan = provider.get("/catalog/v1/productplans/silver").await;
        (plan["attributes"]["recurlyPlanCode"] == code.as_str()).then_some(plan)
    })
    .await;
    assert_eq!(linked["attributes"]["recurlyPlanId"], recurly_plan["id"]);

    // A consumer with a billing account subscribes.
    seed(&sb, json!({
        "amplify": {"users": [{"guid": "user-1", "email": "dev@consumer.example", "firstname": "Dana", "lastname": "Dev"}]},
        "recurly": {"accounts": [{"code": "amplify-team-team-1", "email": "billing@consumer.example"}]}
    }))
    .await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let approved = provider.approval("sub-1", "approved").await;
    let billing_id = approved["attributes"]["recurlySubscriptionId"]
        .as_str()
        .expect("linked")
        .to_owned();
    let (status, billing) = recurly(&sb, &format!("/subscriptions/{billing_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(billing["plan"]["code"], code.as_str());
    assert_eq!(billing["account"]["code"], "amplify-team-team-1");
    assert_eq!(billing["add_ons"].as_array().unwrap().len(), 3);
    let mails = wait_for("the approval mail", WAIT, || async {
        let mails = sandbox_json(&sb, "/_sandbox/mails").await;
        (!mails.as_array().unwrap().is_empty()).then_some(mails)
    })
    .await;
    assert_eq!(mails.as_array().unwrap().len(), 1);
    assert_eq!(mails[0]["recipients"], json!(["dev@consumer.example"]));
    assert!(
        mails[0]["request"]["content"][0]["value"]
            .as_str()
            .unwrap()
            .contains("https://marketplace.example")
    );

    // A consumer without a billing account is rejected with a reason, and the provider told.
    provider
        .subscribe("sub-2", "silver", "team-2", "user-1")
        .await;
    let rejected = provider.approval("sub-2", "rejected").await;
    assert!(
        rejected["approval"]["reason"]
            .as_str()
            .unwrap()
            .contains("amplify-team-team-2"),
        "{rejected}"
    );
    let channel = TEAMS_CHANNEL.trim_start_matches("/teams/");
    let titles: Vec<String> = wait_for("the provider's cards", WAIT, || async {
        let cards = sandbox_json(&sb, "/_sandbox/cards").await;
        let titles: Vec<String> = cards
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["channel"] == channel)
            .map(|c| {
                c["body"]["attachments"][0]["content"]["body"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        titles
            .iter()
            .any(|t| t.starts_with("Subscription not billed"))
            .then_some(titles)
    })
    .await;
    assert_eq!(titled(&titles, "Plan billed in Recurly"), 1, "{titles:?}");
    assert_eq!(titled(&titles, "Subscription not billed"), 1, "{titles:?}");
    let (_, subs) = recurly(&sb, "/subscriptions?limit=200").await;
    assert_eq!(
        subs["data"].as_array().unwrap().len(),
        1,
        "one Recurly subscription in all"
    );
}

#[actix_rt::test]
async fn an_event_that_meets_an_outage_is_tried_again_without_waiting_for_the_reconciler() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    let code = plan_code(&plan);
    // Creating the plan and its three quotas queues a look at the draft plan per quota (the draft plan itself is
    // not of interest); let those three pass.
    wait_for("the draft plan's passes", WAIT, || async {
        let metrics = bridge.bridge.metrics.encode();
        metrics
            .lines()
            .any(|l| {
                l.starts_with(
                    "billing_bridge_provisioning_total{resource=\"plan\",outcome=\"waiting\"} 3",
                )
            })
            .then_some(())
    })
    .await;
    // Amplify fails every read of the plan: the first pass over the activation gives up.
    let outage = json!({"error_rate": 1.0, "error_status": 503, "path_contains": "/productplans/silver", "methods": ["GET"]});
    let status = sb
        .http
        .put(sb.at("/_sandbox/faults/amplify"))
        .json(&outage)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    provider.activate("silver").await;
    wait_for("the failed pass", WAIT, || async {
        let faults = sandbox_json(&sb, "/_sandbox/faults").await;
        (faults["amplify"]["injected"]["errors"].as_u64() >= Some(6)).then_some(())
    })
    .await;
    assert_eq!(recurly(&sb, &format!("/plans/code-{code}")).await.0, 404);
    sb.http
        .delete(sb.at("/_sandbox/faults/amplify"))
        .send()
        .await
        .unwrap();
    // The store hands the event back to the plan provisioner after a few seconds
    // ([provisioning] retry_first); no reconcile pass is run here.
    let cleared = std::time::Instant::now();
    let (status, _) = wait_for(
        "the Recurly plan after the outage",
        Duration::from_secs(15),
        || async {
            let found = recurly(&sb, &format!("/plans/code-{code}")).await;
            (found.0 == 200).then_some(found)
        },
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        cleared.elapsed() >= Duration::from_secs(3),
        "provisioned by the re-queued event, not another one"
    );
    let passes = bridge.bridge.metrics.encode();
    assert!(
        passes
            .lines()
            .any(|l| l.contains("outcome=\"retry\"") && l.contains("resource=\"plan\"")),
        "{passes}"
    );
}
