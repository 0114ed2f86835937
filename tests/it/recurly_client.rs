//! The bridge's Recurly client against the sandbox over HTTP: a mapped Amplify plan becomes a
//! Recurly plan with its tiers, subscriptions and usage land once, transient failures are
//! retried under the same idempotency key, and every request it sends keeps to Recurly's own
//! OpenAPI description.

use std::time::Duration;

use billing_bridge_billing::recurly::{
    NewSubscription, NewUsage, RecurlyClient, RecurlySettings, SiteKind,
};
use billing_bridge_contract::ExchangePolicy;
use billing_bridge_domain::amplify::{ProductPlan, Quota};
use billing_bridge_domain::codes::idempotency_key;
use billing_bridge_domain::plan::billing_plan;
use billing_bridge_sandbox::{RecurlySettings as SandboxRecurly, SandboxConfig};
use billing_bridge_upstream::{RetryPolicy, Transient};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::recurly_conformance::client::assert_recurly_traffic_conforms;
use crate::support::{TestSandbox, spawn_sandbox};

const API_KEY: &str = "recurly-private-key-123";
const PLAN_ID: &str = "8a2e89a1844076b20184436063bd2747";

async fn sandbox() -> TestSandbox {
    spawn_sandbox(SandboxConfig {
        recurly: SandboxRecurly {
            api_key: Some(API_KEY.into()),
            ..SandboxRecurly::default()
        },
        ..SandboxConfig::default()
    })
    .await
}

fn client(sb: &TestSandbox) -> RecurlyClient {
    RecurlyClient::new(
        sb.http.clone(),
        RecurlySettings {
            base_url: sb.at("/recurly"),
            api_key: SecretString::from(API_KEY),
            site: SiteKind::Sandbox,
            requests_per_minute: 400,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::new(6, Duration::from_millis(5), Duration::from_millis(50)),
        },
    )
}

fn amplify_plan() -> (ProductPlan, Vec<Quota>) {
    let plan = serde_json::from_value(json!({
        "name": "silver", "title": "Silver", "metadata": {"id": PLAN_ID},
        "spec": {"product": "weather", "type": "paid",
                 "billing": {"currency": "USD", "price": 10, "interval": "monthly"},
                 "subscription": {"approval": "manual"}},
        "state": "active"
    }))
    .unwrap();
    let quota = |id: &str, pricing: Value| -> Quota {
        serde_json::from_value(
            json!({"name": id, "title": format!("Quota {id}"), "metadata": {"id": id},
                                      "spec": {"unit": "transactions", "pricing": pricing}}),
        )
        .unwrap()
    };
    let quotas = vec![
        quota(
            "q-graduated",
            json!({"type": "graduated", "limit": {"type": "tiered", "tiers": [
            {"from": 1, "to": 500, "cost": 0}, {"from": 501, "to": 999999999, "cost": 0.002}]}}),
        ),
        quota(
            "q-volume",
            json!({"type": "volume", "limit": {"type": "tiered", "tiers": [
            {"from": 1, "to": 100, "cost": 1}, {"from": 101, "to": 999999999, "cost": 0.5}]}}),
        ),
        quota("q-ppu", json!({"type": "perunit", "cost": 0.01})),
    ];
    (plan, quotas)
}

async fn seed_account(sb: &TestSandbox, code: &str) {
    let status = sb
        .http
        .post(sb.at("/_sandbox/seed"))
        .json(&json!({"recurly": {"accounts": [{"code": code, "email": "dev@consumer.example"}]}}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201);
}

/// Creates the measured unit and the plan, as the plan provisioner will.
async fn provision(
    sb: &TestSandbox,
    recurly: &RecurlyClient,
) -> billing_bridge_domain::plan::BillingPlan {
    let (plan, quotas) = amplify_plan();
    let mapped = billing_plan(&plan, &quotas).unwrap();
    if recurly
        .measured_unit("transactions")
        .await
        .unwrap()
        .is_none()
    {
        recurly
            .create_measured_unit(
                "transactions",
                &idempotency_key("create-measured-unit", &["transactions"]),
            )
            .await
            .unwrap();
    }
    let created = recurly
        .create_plan(&mapped, &idempotency_key("create-plan", &[PLAN_ID]))
        .await
        .unwrap();
    assert_eq!(created.code, mapped.code);
    let _ = sb;
    mapped
}

#[tokio::test]
async fn a_mapped_plan_becomes_a_recurly_plan_with_exactly_its_tiers() {
    let sb = sandbox().await;
    let recurly = client(&sb);
    let mapped = provision(&sb, &recurly).await;
    let plan = recurly
        .plan(&mapped.code)
        .await
        .unwrap()
        .expect("plan exists");
    assert_eq!(plan.state, "active");
    assert_eq!(plan.currencies[0].unit_amount, Some(10.0));
    let add_ons = recurly.plan_add_ons(&mapped.code).await.unwrap();
    let by_code = |code: &str| {
        add_ons
            .iter()
            .find(|a| a.code == code)
            .unwrap_or_else(|| panic!("add-on {code}"))
    };
    let graduated = by_code("amplify-quota-q-graduated");
    assert_eq!(graduated.tier_type.as_deref(), Some("tiered"));
    let tiers = graduated.tiers.as_ref().unwrap();
    assert_eq!(tiers[0].ending_quantity, Some(500));
    assert_eq!(tiers[1].ending_quantity, Some(999_999_999));
    assert_eq!(
        tiers[1].currencies[0]
            .unit_amount_decimal
            .as_deref()
            .map(|d| d.parse::<f64>().unwrap()),
        Some(0.002)
    );
    assert_eq!(
        by_code("amplify-quota-q-volume").tier_type.as_deref(),
        Some("volume")
    );
    let ppu = by_code("amplify-quota-q-ppu");
    assert_eq!(ppu.tier_type.as_deref(), Some("flat"));
    assert_eq!(
        ppu.currencies.as_ref().unwrap()[0]
            .unit_amount_decimal
            .as_deref()
            .map(|d| d.parse::<f64>().unwrap()),
        Some(0.01)
    );
    assert!(recurly.plan("amplify-plan-none").await.unwrap().is_none());
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[tokio::test]
async fn a_repeated_create_replays_and_a_new_key_finds_the_code_taken() {
    let sb = sandbox().await;
    let recurly = client(&sb);
    let mapped = provision(&sb, &recurly).await;
    let again = recurly
        .create_plan(&mapped, &idempotency_key("create-plan", &[PLAN_ID]))
        .await
        .unwrap();
    assert_eq!(again.code, mapped.code);
    let err = recurly
        .create_plan(&mapped, "another-key")
        .await
        .unwrap_err();
    assert!(err.is_code_taken(), "{err}");
    assert!(!err.is_transient());
    let plans: Value = sb
        .http
        .get(sb.at("/_sandbox/requests?upstream=recurly"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replays = plans
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["response_headers"]["idempotency-prior"] == "true")
        .count();
    assert_eq!(replays, 1);
}

#[tokio::test]
async fn subscription_and_usage_land_once_despite_injected_failures() {
    let sb = sandbox().await;
    let recurly = client(&sb);
    let mapped = provision(&sb, &recurly).await;
    seed_account(&sb, "amplify-team-t1").await;
    assert!(recurly.account("amplify-team-t1").await.unwrap().is_some());
    assert!(
        recurly
            .account("amplify-team-missing")
            .await
            .unwrap()
            .is_none()
    );

    // Half of all Recurly answers fail from now on; retries under the same key must still
    // produce exactly one subscription and one usage record.
    let faults = json!({"error_rate": 0.3, "rate_limited_rate": 0.2, "seed": 7});
    sb.http
        .put(sb.at("/_sandbox/faults/recurly"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    let new = NewSubscription {
        plan_code: mapped.code.clone(),
        account_code: "amplify-team-t1".into(),
        currency: "USD".into(),
        add_on_codes: mapped.add_ons.iter().map(|a| a.code.clone()).collect(),
    };
    let subscription = recurly
        .create_subscription(&new, &idempotency_key("create-subscription", &["s1"]))
        .await
        .unwrap();
    assert_eq!(subscription.state, "active");
    assert_eq!(subscription.add_ons.len(), 3);
    let usage = NewUsage {
        amount: 1523,
        usage_timestamp: chrono::Utc::now() - chrono::Duration::minutes(5),
        merchant_tag: "window:2026-11-21T17:00Z sub:s1".into(),
    };
    let key = idempotency_key("usage", &["s1", "q-graduated", "1795280400"]);
    recurly
        .create_usage(&subscription.id, "amplify-quota-q-graduated", &usage, &key)
        .await
        .unwrap();
    recurly
        .create_usage(&subscription.id, "amplify-quota-q-graduated", &usage, &key)
        .await
        .unwrap();
    sb.http
        .delete(sb.at("/_sandbox/faults"))
        .send()
        .await
        .unwrap();

    let records = recurly
        .usage(&subscription.id, "amplify-quota-q-graduated")
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].amount, Some(1523.0));
    let live = recurly
        .account_subscriptions("amplify-team-t1", "live")
        .await
        .unwrap();
    assert_eq!(live.len(), 1);
    let canceled = recurly
        .cancel_subscription(
            &subscription.id,
            false,
            &idempotency_key("cancel-subscription", &["s1"]),
        )
        .await
        .unwrap();
    assert_eq!(canceled.state, "canceled");
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[tokio::test]
async fn errors_name_the_operation_and_never_the_api_key() {
    let sb = spawn_sandbox(SandboxConfig {
        recurly: SandboxRecurly {
            api_key: Some("the-right-key".into()),
            ..SandboxRecurly::default()
        },
        ..SandboxConfig::default()
    })
    .await;
    let err = client(&sb).account("amplify-team-t1").await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("get account") && text.contains("invalid_api_key"),
        "{text}"
    );
    assert!(
        !text.contains(API_KEY) && !text.contains("the-right-key"),
        "{text}"
    );
}
