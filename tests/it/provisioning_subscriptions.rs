//! Subscription provisioning end to end: a pending subscription of a billed plan becomes a Recurly
//! subscription on the subscriber's existing account, is approved and announced; without an
//! account it is rejected (or left pending); ended subscriptions end in Recurly.

use billing_bridge_contract::ExchangePolicy;
use serde_json::{Value, json};

use crate::provisioning::{
    Provider, WAIT, cards, cards_titled, hooks, mails, paid_plan_spec, plan_code, priced_quotas,
    reconcile_now, recurly, recurly_list, recurly_writes, seed, wait_cards_titled,
};
use crate::recurly_conformance::client::assert_recurly_traffic_conforms;
use crate::support::{TestBridge, TestSandbox, bridge_sandbox, spawn_bridge, wait_for};

/// A bridge with hooks, a provider, the `silver` catalog activated and billed, and a consumer
/// `user-1` (dev@consumer.example) in team `team-1`.
async fn billed_catalog<'a>(
    sb: &'a TestSandbox,
    overrides: &str,
) -> (TestBridge, Provider<'a>, String) {
    let bridge = spawn_bridge(sb, overrides).await;
    hooks(&bridge).await;
    let provider = Provider::new(sb).await;
    let plan = provider.catalog("silver").await;
    provider.activate("silver").await;
    provider.linked("silver").await;
    seed(
        sb,
        json!({"amplify": {"users": [{"guid": "user-1", "email": "dev@consumer.example", "firstname": "Dana", "lastname": "Dev"}],
                           "teams": [{"guid": "team-1", "name": "Consumers", "users": ["user-1"]}]}}),
    )
    .await;
    (bridge, provider, plan_code(&plan))
}

async fn accounts(sb: &TestSandbox, codes: &[&str]) {
    let accounts: Vec<Value> = codes
        .iter()
        .map(|code| json!({"code": code, "email": "billing@consumer.example"}))
        .collect();
    seed(sb, json!({"recurly": {"accounts": accounts}})).await;
}

async fn approval_of(provider: &Provider<'_>, name: &str, state: &str) -> Value {
    wait_for(&format!("{name} {state}"), WAIT, || async {
        let sub = provider
            .get(&format!("/catalog/v1/subscriptions/{name}"))
            .await;
        (sub["approval"]["state"] == state).then_some(sub)
    })
    .await
}

#[actix_rt::test]
async fn a_pending_subscription_is_billed_linked_approved_and_mailed_once() {
    let sb = bridge_sandbox().await;
    let (bridge, provider, code) = billed_catalog(
        &sb,
        "[notify.mail]\nreply_to = \"support@market.example\"\n",
    )
    .await;
    accounts(&sb, &["amplify-team-team-1"]).await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let approved = approval_of(&provider, "sub-1", "approved").await;
    let attributes = &approved["attributes"];
    let id = attributes["recurlySubscriptionId"]
        .as_str()
        .expect("linked");
    assert_eq!(attributes["recurlyAccountCode"], "amplify-team-team-1");

    let (status, billing) = recurly(&sb, &format!("/subscriptions/{id}")).await;
    assert_eq!(status, 200, "{billing}");
    assert_eq!(billing["state"], "active");
    assert_eq!(billing["plan"]["code"], code.as_str());
    assert_eq!(billing["account"]["code"], "amplify-team-team-1");
    assert_eq!(billing["uuid"], attributes["recurlySubscriptionUuid"]);
    let plan_add_ons: Vec<String> =
        recurly_list(&sb, &format!("/plans/code-{code}/add_ons?limit=200"))
            .await
            .iter()
            .map(|a| a["code"].as_str().unwrap().to_owned())
            .collect();
    let mut subscribed: Vec<String> = billing["add_ons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["quantity"], 1, "usage add-ons at quantity 1: {a}");
            a["add_on"]["code"].as_str().unwrap().to_owned()
        })
        .collect();
    subscribed.sort();
    let mut expected = plan_add_ons.clone();
    expected.sort();
    assert_eq!(subscribed, expected, "every usage add-on of the plan");
    assert_eq!(expected.len(), 3);

    // Another pass (the reconciler) finds nothing left to do.
    reconcile_now(&sb, &bridge).await;
    provider.settle("weather", "sentinel").await;
    let sent = mails(&sb).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["recipients"], json!(["dev@consumer.example"]));
    assert_eq!(sent[0]["from"], "billing@market.example");
    assert_eq!(
        sent[0]["request"]["reply_to"]["email"],
        "support@market.example"
    );
    let content = sent[0]["request"]["content"].to_string();
    assert!(content.contains("https://marketplace.example"), "{content}");
    assert_eq!(recurly_list(&sb, "/subscriptions?limit=200").await.len(), 1);
    assert_eq!(recurly_writes(&sb, "POST", "/subscriptions").await.len(), 1);
    assert!(
        cards_titled(&sb, "Subscription not billed")
            .await
            .is_empty()
    );
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn a_subscriber_without_a_billing_account_is_rejected_with_the_codes_to_create_and_one_card()
{
    let sb = bridge_sandbox().await;
    let (bridge, provider, _) = billed_catalog(&sb, "").await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let rejected = approval_of(&provider, "sub-1", "rejected").await;
    let reason = rejected["approval"]["reason"].as_str().unwrap();
    for code in [
        "amplify-user-user-1",
        "amplify-team-team-1",
        "amplify-org-650130132060094",
    ] {
        assert!(reason.contains(code), "the reason names {code}: {reason}");
    }
    reconcile_now(&sb, &bridge).await;
    provider.settle("weather", "sentinel").await;
    let refused = cards_titled(&sb, "Subscription not billed").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].text.contains("rejected"), "{refused:?}");
    assert!(mails(&sb).await.is_empty());
    assert!(
        recurly_list(&sb, "/subscriptions?limit=200")
            .await
            .is_empty()
    );
    assert!(
        recurly_writes(&sb, "POST", "/subscriptions")
            .await
            .is_empty()
    );
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn with_leave_pending_a_subscriber_without_an_account_stays_pending_and_the_provider_is_told()
{
    let sb = bridge_sandbox().await;
    let (bridge, provider, _) =
        billed_catalog(&sb, "[provisioning]\non_failure = \"leave_pending\"\n").await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let refused = wait_cards_titled(&sb, "Subscription not billed").await;
    assert!(refused[0].text.contains("left pending"), "{refused:?}");
    assert!(
        refused[0].text.contains("amplify-team-team-1"),
        "{refused:?}"
    );
    // The reconciler sees it pending again; the provider is not told twice.
    let summary = reconcile_now(&sb, &bridge).await;
    assert_eq!(summary["queued"], 1, "{summary}");
    provider.settle("weather", "sentinel").await;
    let sub = provider.get("/catalog/v1/subscriptions/sub-1").await;
    assert_eq!(sub["approval"]["state"], "pending", "{sub}");
    assert_eq!(cards_titled(&sb, "Subscription not billed").await.len(), 1);
    assert!(
        recurly_list(&sb, "/subscriptions?limit=200")
            .await
            .is_empty()
    );
}

/// The account a subscription of a subscriber with both a user and a team account lands on.
async fn account_chosen(overrides: &str) -> String {
    let sb = bridge_sandbox().await;
    let (_bridge, provider, _) = billed_catalog(&sb, overrides).await;
    accounts(&sb, &["amplify-team-team-1", "amplify-user-user-1"]).await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let approved = approval_of(&provider, "sub-1", "approved").await;
    let id = approved["attributes"]["recurlySubscriptionId"]
        .as_str()
        .unwrap();
    let (_, billing) = recurly(&sb, &format!("/subscriptions/{id}")).await;
    assert_eq!(
        billing["account"]["code"],
        approved["attributes"]["recurlyAccountCode"]
    );
    billing["account"]["code"].as_str().unwrap().to_owned()
}

#[actix_rt::test]
async fn the_configured_account_order_decides_between_user_and_team_accounts() {
    assert_eq!(account_chosen("").await, "amplify-user-user-1");
    assert_eq!(
        account_chosen("[provisioning]\naccount_order = [\"team\", \"user\", \"org\"]\n").await,
        "amplify-team-team-1"
    );
}

#[actix_rt::test]
async fn a_subscription_of_an_unlinked_plan_is_left_alone() {
    let sb = bridge_sandbox().await;
    let (_bridge, provider, _) = billed_catalog(&sb, "").await;
    accounts(&sb, &["amplify-team-team-1"]).await;
    // A manually approved plan of a product Recurly does not bill: never linked.
    provider.product("internal", false).await;
    provider
        .plan(
            "inhouse",
            "In-house",
            "internal",
            paid_plan_spec("internal"),
        )
        .await;
    let [(_, graduated), ..] = priced_quotas();
    provider.quota("inhouse", "calls", graduated).await;
    provider.activate("inhouse").await;
    provider
        .create("/catalog/v1/subscriptions", json!({"group":"catalog","apiVersion":"v1","kind":"Subscription","name":"sub-x",
            "spec":{"product":"internal","plan":{"name":"inhouse"}},
            "marketplace":{"resource":{"owner":{"type":"team","id":"team-1","organization":{"id":"650130132060094"},"user":{"id":"user-1"}}}}}))
        .await;
    provider.settle("weather", "sentinel").await;
    let sub = provider.get("/catalog/v1/subscriptions/sub-x").await;
    assert_eq!(sub["approval"]["state"], "pending", "{sub}");
    assert!(sub["attributes"].get("recurlySubscriptionId").is_none());
    assert!(
        recurly_list(&sb, "/subscriptions?limit=200")
            .await
            .is_empty()
    );
    assert!(cards_titled(&sb, "Subscription").await.is_empty());
    assert!(mails(&sb).await.is_empty());
}

/// Ends an approved subscription by deleting it (or, with `archive`, by archiving it) and
/// answers the Recurly state its billing ends in.
async fn state_after_deletion(overrides: &str) -> String {
    state_after_end(overrides, false).await
}

async fn state_after_end(overrides: &str, archive: bool) -> String {
    let sb = bridge_sandbox().await;
    let (_bridge, provider, _) = billed_catalog(&sb, overrides).await;
    accounts(&sb, &["amplify-team-team-1"]).await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let approved = approval_of(&provider, "sub-1", "approved").await;
    let id = approved["attributes"]["recurlySubscriptionId"]
        .as_str()
        .unwrap()
        .to_owned();
    if archive {
        provider
            .archive_subscription("sub-1", "ended by the consumer")
            .await;
    } else {
        provider.delete_subscription("sub-1").await;
    }
    let state = wait_for("the Recurly subscription ended", WAIT, || async {
        let (_, billing) = recurly(&sb, &format!("/subscriptions/{id}")).await;
        (billing["state"] != "active").then(|| billing["state"].as_str().unwrap().to_owned())
    })
    .await;
    wait_for("the provider's card", WAIT, || async {
        (!cards_titled(&sb, "Subscription ended: sub-1")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    assert_eq!(cards(&sb).await.len(), 2, "plan billed, subscription ended");
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
    state
}

#[actix_rt::test]
async fn deleting_an_approved_subscription_cancels_its_recurly_subscription() {
    assert_eq!(state_after_deletion("").await, "canceled");
}

#[actix_rt::test]
async fn with_on_end_terminate_a_deleted_subscription_expires_at_once() {
    assert_eq!(
        state_after_deletion("[provisioning]\non_end = \"terminate\"\n").await,
        "expired"
    );
}

#[actix_rt::test]
async fn a_subscription_recurly_refuses_is_rejected_with_its_reason_and_not_linked_to_another() {
    let sb = bridge_sandbox().await;
    let (_bridge, provider, _) = billed_catalog(&sb, "").await;
    // Two teams of one organization share the organization's account; Recurly takes one live
    // subscription of an account to a plan.
    accounts(&sb, &["amplify-org-650130132060094"]).await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let first = approval_of(&provider, "sub-1", "approved").await;
    provider
        .subscribe("sub-2", "silver", "team-2", "user-1")
        .await;
    let rejected = approval_of(&provider, "sub-2", "rejected").await;
    let reason = rejected["approval"]["reason"].as_str().unwrap();
    assert!(reason.contains("Contact the API provider"), "{reason}");
    assert!(
        rejected["attributes"]
            .get("recurlySubscriptionId")
            .is_none(),
        "not linked to sub-1's billing: {rejected}"
    );
    provider.settle("weather", "sentinel").await;
    let refused = cards_titled(&sb, "Subscription not billed").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let subscriptions = recurly_list(&sb, "/subscriptions?limit=200").await;
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(
        subscriptions[0]["id"],
        first["attributes"]["recurlySubscriptionId"]
    );
    assert_eq!(
        mails(&sb).await.len(),
        1,
        "only sub-1's subscriber is mailed"
    );
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn archiving_an_approved_subscription_cancels_its_recurly_subscription() {
    assert_eq!(state_after_end("", true).await, "canceled");
}

#[actix_rt::test]
async fn with_the_subscription_pipeline_off_a_pending_subscription_is_left_alone() {
    let sb = bridge_sandbox().await;
    let (bridge, provider, _) =
        billed_catalog(&sb, "[provisioning]\nsubscriptions = false\n").await;
    accounts(&sb, &["amplify-team-team-1"]).await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let summary = reconcile_now(&sb, &bridge).await;
    assert_eq!(summary["queued"], 0, "{summary}");
    provider.settle("weather", "sentinel").await;
    let sub = provider.get("/catalog/v1/subscriptions/sub-1").await;
    assert_eq!(sub["approval"]["state"], "pending", "{sub}");
    assert!(
        recurly_list(&sb, "/subscriptions?limit=200")
            .await
            .is_empty()
    );
    assert!(mails(&sb).await.is_empty());
}

#[actix_rt::test]
async fn the_approval_mail_shows_titles_as_text_not_markup() {
    let sb = bridge_sandbox().await;
    let (_bridge, provider, _) = billed_catalog(&sb, "").await;
    accounts(&sb, &["amplify-team-team-1"]).await;
    // The consumer names the subscription; the mail must not turn that name into markup.
    provider
        .create("/catalog/v1/subscriptions", json!({"group":"catalog","apiVersion":"v1","kind":"Subscription","name":"sub-1",
            "title":"Mine <a href=\"https://evil.example\">click</a> & co",
            "spec":{"product":"weather","plan":{"name":"silver"}},
            "marketplace":{"resource":{"owner":{"type":"team","id":"team-1","organization":{"id":"650130132060094"},"user":{"id":"user-1"}}}}}))
        .await;
    approval_of(&provider, "sub-1", "approved").await;
    let sent = wait_for("the approval mail", WAIT, || async {
        let sent = mails(&sb).await;
        (!sent.is_empty()).then_some(sent)
    })
    .await;
    let html = sent[0]["request"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "text/html")
        .map(|c| c["value"].as_str().unwrap().to_owned())
        .expect("an HTML part");
    assert!(!html.contains("evil.example\">"), "{html}");
    assert!(
        html.contains(
            "Mine &lt;a href=&quot;https://evil.example&quot;&gt;click&lt;/a&gt; &amp; co"
        ),
        "{html}"
    );
}
