//! Traffic reporting end to end (issue 4): traffic stored in the sandbox's Traceability is billed
//! in Recurly as usage records, one per (subscription, add-on, window), checked against what the
//! test injected, never against what the bridge says it did.

use std::collections::{BTreeMap, BTreeSet};

use billing_bridge_contract::ExchangePolicy;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::provisioning::{
    Provider, WAIT, cards, hooks, metrics, paid_plan_spec, priced_quotas, recurly, sandbox_json,
    seed,
};
use crate::recurly_conformance::client::assert_recurly_traffic_conforms;
use crate::support::{
    ADMIN_TOKEN, TestBridge, TestSandbox, WEBHOOK_SECRET, bridge_sandbox, spawn_bridge, wait_for,
};

/// The window every reporting test configures (`window = "1m"`), in milliseconds.
pub const WINDOW_MS: i64 = 60_000;

/// Bridge overrides for reporting tests: on-demand runs only, one-minute windows reported as soon
/// as they close, nothing kept on disk; `reporting` adds lines to `[reporting]` (not `schedule`,
/// `window` or `delay`), `rest` adds other sections (not `[reporting]` or `[store]`).
pub fn reporting_overrides(reporting: &str, rest: &str) -> String {
    format!(
        "[reporting]\nschedule = \"\"\nwindow = \"1m\"\ndelay = \"0s\"\n{reporting}\n\
         [store]\nstate_file = \"\"\n{rest}\n"
    )
}

/// A quota of the billed plan: the add-on it becomes and the asset resource its traffic names.
#[derive(Debug, Clone)]
pub struct Quota {
    pub name: String,
    pub id: String,
    /// The first asset resource the quota lists.
    pub resource: String,
    /// Every asset resource it lists.
    pub resources: Vec<String>,
    /// The AssetResource id of each of `resources`, as Amplify gives it in the quota's
    /// `metadata.references` (agents send these ids).
    pub resource_ids: Vec<String>,
}

/// The ids of `listed` (`<asset>/<resource>`) among a quota's `AssetResource` references.
pub fn listed_resource_ids(quota: &Value, listed: &[String]) -> Vec<String> {
    let references = quota["metadata"]["references"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    listed
        .iter()
        .map(|name| {
            references
                .iter()
                .find(|r| {
                    r["kind"] == "AssetResource"
                        && format!(
                            "{}/{}",
                            r["scopeName"].as_str().unwrap_or_default(),
                            r["name"].as_str().unwrap_or_default()
                        ) == *name
                })
                .and_then(|r| r["id"].as_str())
                .unwrap_or_else(|| panic!("the quota references {name}: {quota}"))
                .to_owned()
        })
        .collect()
}

impl Quota {
    pub fn add_on(&self) -> String {
        format!("amplify-quota-{}", self.id)
    }
}

/// An approved Amplify subscription and the Recurly subscription it is billed on.
#[derive(Debug, Clone)]
pub struct Billed {
    pub name: String,
    pub amplify_id: String,
    pub recurly_id: String,
}

/// Waits until the subscription `name` is approved and linked in Amplify; its billing ids.
pub async fn wait_billed(provider: &Provider<'_>, name: &str) -> Billed {
    let approved = wait_for(&format!("{name} approved"), WAIT, || async {
        let sub = provider
            .get(&format!("/catalog/v1/subscriptions/{name}"))
            .await;
        (sub["approval"]["state"] == "approved"
            && sub["attributes"]["recurlySubscriptionId"].is_string())
        .then_some(sub)
    })
    .await;
    Billed {
        name: name.to_owned(),
        amplify_id: approved["metadata"]["id"].as_str().unwrap().to_owned(),
        recurly_id: approved["attributes"]["recurlySubscriptionId"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

/// A running bridge with the `silver` plan billed and `subs` approved, billed subscriptions.
pub struct Billing<'a> {
    pub bridge: TestBridge,
    pub provider: Provider<'a>,
    pub quotas: Vec<Quota>,
    pub subs: Vec<Billed>,
}

/// Starts a bridge with `overrides`, activates a billed plan with three quotas (asset resources
/// `silver/calls` and `silver/calls-v2`, `silver/bulk`, `silver/alerts`) and has `subscribers`
/// teams subscribe, each
/// on its own Recurly account; returns once every subscription is approved and linked.
pub async fn billed<'a>(sb: &'a TestSandbox, overrides: &str, subscribers: usize) -> Billing<'a> {
    let bridge = spawn_bridge(sb, overrides).await;
    hooks(&bridge).await;
    let provider = Provider::new(sb).await;
    let (quotas, subs) = billed_subscriptions(&provider, subscribers).await;
    Billing {
        bridge,
        provider,
        quotas,
        subs,
    }
}

/// The catalog and subscriptions of `billed`, provisioned by whichever bridge the hooks reach.
pub async fn billed_subscriptions(
    provider: &Provider<'_>,
    subscribers: usize,
) -> (Vec<Quota>, Vec<Billed>) {
    let sb = provider.sb;
    provider.product("weather", true).await;
    provider
        .plan("silver", "Silver", "weather", paid_plan_spec("weather"))
        .await;
    let mut quotas = Vec::new();
    for (name, pricing) in priced_quotas() {
        // The first quota covers two asset resources; their traffic is billed as one add-on.
        let mut resources = vec![format!("silver/{name}")];
        if quotas.is_empty() {
            resources.push(format!("silver/{name}-v2"));
        }
        let listed: Vec<Value> = resources
            .iter()
            .map(|r| json!({"kind": "AssetResource", "name": r}))
            .collect();
        let created = provider
            .create(
                "/catalog/v1/productplans/silver/quotas",
                json!({"group": "catalog", "apiVersion": "v1", "kind": "Quota", "name": name, "title": name,
                       "metadata": {"scope": {"kind": "ProductPlan", "name": "silver"}},
                       "spec": {"unit": "transactions", "pricing": pricing, "resources": listed}}),
            )
            .await;
        quotas.push(Quota {
            name: name.to_owned(),
            id: created["metadata"]["id"]
                .as_str()
                .expect("quota id")
                .to_owned(),
            resource: resources[0].clone(),
            resource_ids: listed_resource_ids(&created, &resources),
            resources,
        });
    }
    provider.activate("silver").await;
    provider.linked("silver").await;
    let subs = subscribe_billed(sb, provider, "silver", subscribers).await;
    (quotas, subs)
}

/// `subscribers` subscriptions to `plan` (`sub-1`…, each of its own team, whose Recurly account
/// exists), each waited for until it is billed.
pub async fn subscribe_billed(
    sb: &TestSandbox,
    provider: &Provider<'_>,
    plan: &str,
    subscribers: usize,
) -> Vec<Billed> {
    let teams: Vec<Value> = (1..=subscribers)
        .map(|i| json!({"guid": format!("team-{i}"), "name": format!("Consumers {i}"), "users": ["user-1"]}))
        .collect();
    let accounts: Vec<Value> = (1..=subscribers)
        .map(|i| json!({"code": format!("amplify-team-team-{i}"), "email": "billing@consumer.example"}))
        .collect();
    seed(
        sb,
        json!({"amplify": {"users": [{"guid": "user-1", "email": "dev@consumer.example", "firstname": "Dana", "lastname": "Dev"}],
                           "teams": teams},
               "recurly": {"accounts": accounts}}),
    )
    .await;
    for i in 1..=subscribers {
        provider
            .subscribe(&format!("sub-{i}"), plan, &format!("team-{i}"), "user-1")
            .await;
    }
    let mut subs = Vec::new();
    for i in 1..=subscribers {
        subs.push(wait_billed(provider, &format!("sub-{i}")).await);
    }
    subs
}

/// `n` consecutive closed windows, aligned to the epoch, the last one ending where the current
/// window starts.
pub fn closed_windows(n: usize) -> Vec<(i64, i64)> {
    let now = Utc::now().timestamp_millis();
    let current = now - now.rem_euclid(WINDOW_MS);
    (0..n as i64)
        .map(|i| {
            let start = current - (n as i64 - i) * WINDOW_MS;
            (start, start + WINDOW_MS)
        })
        .collect()
}

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .expect("a valid instant")
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The backfill body covering `windows` (RFC 3339 bounds).
pub fn span(windows: &[(i64, i64)]) -> Value {
    json!({"from": rfc3339(windows[0].0), "to": rfc3339(windows[windows.len() - 1].1)})
}

/// One `transactionSummary` event (Amplify reference §5.3) of subscription `(id, name)` on
/// asset resource `resource`, at `at` ms.
pub fn call(sub_id: &str, sub_name: &str, resource: &str, at: i64, status: &str) -> Value {
    json!({"version": "1.0", "type": "transactionSummary", "timestamp": at,
           "transactionId": uuid::Uuid::new_v4().to_string(),
           "transactionSummary": {"status": status, "statusDetail": "200", "duration": 40,
               "assetResource": {"id": format!("asset-{resource}"), "name": resource},
               "consumerDetails": {"subscription": {"id": sub_id, "name": sub_name}}}})
}

/// `units` successful calls of `sub` on `quota`'s resource, spread over `window`.
pub fn calls(sub: &Billed, quota: &Quota, window: (i64, i64), units: u64) -> Vec<Value> {
    spread(
        &sub.amplify_id,
        &sub.name,
        &quota.resource,
        window,
        units,
        "Success",
    )
}

pub fn spread(
    sub_id: &str,
    sub_name: &str,
    resource: &str,
    window: (i64, i64),
    units: u64,
    status: &str,
) -> Vec<Value> {
    let length = (window.1 - window.0) as u64;
    (0..units)
        .map(|k| {
            // Evenly spread, first at the window's start, none at its (exclusive) end.
            let at = window.0 + (k * length / units.max(1)) as i64;
            call(sub_id, sub_name, resource, at, status)
        })
        .collect()
}

/// Stores `events` in the sandbox's Traceability.
pub async fn inject(sb: &TestSandbox, events: &[Value]) {
    let response = sb
        .http
        .post(sb.at("/_sandbox/traffic"))
        .json(&events)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "injecting traffic: {body}");
    assert_eq!(body["accepted"], events.len(), "{body}");
}

/// What the test expects Recurly to hold: units per (Recurly subscription, add-on, window start).
#[derive(Debug, Default, Clone)]
pub struct Expected(pub BTreeMap<(String, String, i64), u64>);

impl Expected {
    pub fn add(&mut self, sub: &Billed, quota: &Quota, window_start: i64, units: u64) {
        *self
            .0
            .entry((sub.recurly_id.clone(), quota.add_on(), window_start))
            .or_default() += units;
    }

    /// (records, units) per (Recurly subscription, add-on): one record per window with units.
    pub fn totals(&self) -> BTreeMap<(String, String), (u64, u64)> {
        let mut totals: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for ((sub, add_on, _), units) in &self.0 {
            if *units > 0 {
                let entry = totals.entry((sub.clone(), add_on.clone())).or_default();
                entry.0 += 1;
                entry.1 += units;
            }
        }
        totals
    }

    pub fn units(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn records(&self) -> u64 {
        self.0.values().filter(|u| **u > 0).count() as u64
    }
}

/// A usage amount as a whole number of units.
pub fn whole(amount: &Value) -> u64 {
    let amount = amount.as_f64().unwrap_or_else(|| panic!("amount {amount}"));
    assert!(
        amount >= 0.0 && amount.fract() == 0.0,
        "a whole, non-negative amount: {amount}"
    );
    amount as u64
}

/// `GET /_sandbox/recurly/usage_totals` as (records, units) per (subscription id, add-on code).
pub async fn usage_totals(sb: &TestSandbox) -> BTreeMap<(String, String), (u64, u64)> {
    let rows = sandbox_json(sb, "/_sandbox/recurly/usage_totals").await;
    let mut totals = BTreeMap::new();
    for row in rows.as_array().expect("usage totals are a list") {
        let key = (
            row["subscription_id"].as_str().unwrap().to_owned(),
            row["add_on_code"].as_str().unwrap().to_owned(),
        );
        let value = (row["records"].as_u64().unwrap(), whole(&row["amount"]));
        assert!(
            totals.insert(key.clone(), value).is_none(),
            "one row per pair: {key:?}"
        );
    }
    totals
}

/// The number of usage records Recurly holds in all.
pub async fn record_count(sb: &TestSandbox) -> u64 {
    usage_totals(sb).await.values().map(|(r, _)| r).sum()
}

/// The usage records of one (subscription, add-on) as a provider lists them in Recurly.
pub async fn usage_list(sb: &TestSandbox, recurly_id: &str, add_on: &str) -> Vec<Value> {
    let (status, body) = recurly(
        sb,
        &format!(
            "/subscriptions/{recurly_id}/add_ons/code-{add_on}/usage?billing_status=all&limit=200&order=asc"
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["has_more"], false, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// Every usage record the bridge created (POST …/usage answered 201, not an idempotent replay).
pub async fn usage_posts(sb: &TestSandbox) -> Vec<Value> {
    sandbox_json(sb, "/_sandbox/requests?upstream=recurly")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["method"] == "POST"
                && r["path"].as_str().unwrap_or_default().ends_with("/usage")
                && r["status"] == 201
                && r["response_headers"]["idempotency-prior"] != "true"
        })
        .cloned()
        .collect()
}

/// `POST /admin/report` with the admin token (or `token`), `body` as JSON when given.
pub async fn report_with(
    sb: &TestSandbox,
    bridge_url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Option<String>, Value) {
    let mut request = sb.http.post(format!("{bridge_url}/admin/report"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("admin report request");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// A report run that must succeed (200); its summary.
/// Reports `windows` and checks the run's units and Recurly's totals are exactly `expected`.
pub async fn billed_exactly(
    sb: &TestSandbox,
    bridge_url: &str,
    windows: &[(i64, i64)],
    expected: &Expected,
) {
    let summary = report(sb, bridge_url, Some(&span(windows))).await;
    assert_eq!(summary["units"], expected.units(), "{summary}");
    assert_eq!(usage_totals(sb).await, expected.totals());
}

pub async fn report(sb: &TestSandbox, bridge_url: &str, body: Option<&Value>) -> Value {
    let (status, _, summary) = report_with(sb, bridge_url, Some(ADMIN_TOKEN), body).await;
    assert_eq!(status, 200, "POST /admin/report {body:?}: {summary}");
    summary
}

/// Runs reports until one says `complete` (at most `tries`); every summary, the last complete.
pub async fn report_until_complete(
    sb: &TestSandbox,
    bridge_url: &str,
    body: Option<&Value>,
    tries: usize,
) -> Vec<Value> {
    let mut summaries = Vec::new();
    for _ in 0..tries {
        let (status, _, summary) = report_with(sb, bridge_url, Some(ADMIN_TOKEN), body).await;
        assert!(
            status == 200 || status == 409,
            "POST /admin/report: {status} {summary}"
        );
        let complete = status == 200 && summary["complete"] == true;
        summaries.push(summary);
        if complete {
            return summaries;
        }
        if status == 409 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    panic!("no complete run in {tries} tries: {summaries:#?}");
}

pub use crate::support::metric_sum;

/// Sets Recurly faults in the sandbox (README "Fault settings").
pub async fn recurly_faults(sb: &TestSandbox, settings: Value) {
    let status = sb
        .http
        .put(sb.at("/_sandbox/faults/recurly"))
        .json(&settings)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204, "faults {settings}");
}

pub async fn clear_faults(sb: &TestSandbox) {
    let status = sb
        .http
        .delete(sb.at("/_sandbox/faults"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "clearing faults: {status}");
}

/// Traffic on every (subscription, quota, window) with a varying, non-zero count.
pub fn grid(
    billing_subs: &[Billed],
    quotas: &[Quota],
    windows: &[(i64, i64)],
) -> (Vec<Value>, Expected) {
    let mut events = Vec::new();
    let mut expected = Expected::default();
    for (i, sub) in billing_subs.iter().enumerate() {
        for (j, quota) in quotas.iter().enumerate() {
            for (k, window) in windows.iter().enumerate() {
                let units = 1 + ((i * 7 + j * 3 + k * 5) % 6) as u64;
                events.extend(calls(sub, quota, *window, units));
                expected.add(sub, quota, window.0, units);
            }
        }
    }
    (events, expected)
}

#[actix_rt::test]
async fn random_traffic_over_many_subscriptions_quotas_and_windows_is_billed_exactly() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 4).await;
    let windows = closed_windows(6);
    // Seeded traffic per window over every approved subscription and its plan's resources.
    let mut expected = Expected::default();
    let mut generated_names = BTreeSet::new();
    for (k, window) in windows.iter().enumerate() {
        let response = sb
            .http
            .post(sb.at("/_sandbox/traffic/generate"))
            .json(&json!({"seed": 4000 + k as u64, "count": 300, "from": window.0, "to": window.1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let generated: Value = response.json().await.unwrap();
        for total in generated["totals"].as_array().unwrap() {
            // Events name the resource by its own name (§5.4); the quota lists `asset/resource`.
            let listed = total["listedName"].as_str().unwrap();
            assert_eq!(
                total["assetResourceName"].as_str(),
                listed.rsplit_once('/').map(|(_, own)| own),
                "{total}"
            );
            generated_names.insert(listed.to_owned());
            let sub = b
                .subs
                .iter()
                .find(|s| total["subscriptionId"] == s.amplify_id.as_str())
                .unwrap_or_else(|| panic!("traffic of a billed subscription: {total}"));
            let quota = b
                .quotas
                .iter()
                .find(|q| {
                    q.resources
                        .iter()
                        .any(|r| total["listedName"] == r.as_str())
                })
                .unwrap_or_else(|| panic!("traffic on a quota's resource: {total}"));
            expected.add(sub, quota, window.0, total["totalCount"].as_u64().unwrap());
        }
    }
    assert_eq!(
        expected.units(),
        6 * 300,
        "every generated call is counted once"
    );
    assert_eq!(
        expected.totals().len(),
        b.subs.len() * b.quotas.len(),
        "every pair got traffic"
    );
    assert!(
        generated_names.contains("silver/calls-v2"),
        "traffic on the quota's second resource too"
    );

    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["dry_run"], false, "{summary}");
    assert_eq!(summary["units"], expected.units(), "{summary}");
    assert_eq!(summary["records"], expected.records(), "{summary}");
    assert_eq!(summary["unmatched_units"], 0, "{summary}");
    let reported: Vec<(i64, i64)> = summary["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["start_ms"].as_i64().unwrap(),
                w["end_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(reported, windows, "every window of the span, in order");

    assert_eq!(usage_totals(&sb).await, expected.totals());
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn with_billed_count_success_only_successful_calls_are_billed() {
    let sb = bridge_sandbox().await;
    let b = billed(
        &sb,
        &reporting_overrides("billed_count = \"success\"", ""),
        1,
    )
    .await;
    let window = closed_windows(1)[0];
    let (sub, calls_quota) = (&b.subs[0], &b.quotas[0]);
    let mut events = Vec::new();
    for (status, units) in [
        ("Success", 5),
        ("Failure", 3),
        ("Exception", 2),
        ("Unknown", 1),
    ] {
        events.extend(spread(
            &sub.amplify_id,
            &sub.name,
            &calls_quota.resource,
            window,
            units,
            status,
        ));
    }
    // Only failures on another quota: nothing to bill there, so no record (not a zero one).
    events.extend(spread(
        &sub.amplify_id,
        &sub.name,
        &b.quotas[2].resource,
        window,
        4,
        "Failure",
    ));
    inject(&sb, &events).await;
    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(
        (&summary["records"], &summary["units"]),
        (&json!(1), &json!(5)),
        "{summary}"
    );
    let mut expected = Expected::default();
    expected.add(sub, calls_quota, window.0, 5);
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn traffic_on_every_resource_of_a_quota_is_one_record_with_their_sum() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 1).await;
    let windows = closed_windows(2);
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    assert_eq!(quota.resources.len(), 2);
    let mut events = Vec::new();
    // Two resources of the quota, and one resource seen under two asset ids (two gateways).
    events.extend(spread(
        &sub.amplify_id,
        &sub.name,
        &quota.resources[0],
        windows[0],
        4,
        "Success",
    ));
    events.extend(spread(
        &sub.amplify_id,
        &sub.name,
        &quota.resources[1],
        windows[0],
        3,
        "Success",
    ));
    let mut other_gateway = spread(
        &sub.amplify_id,
        &sub.name,
        &quota.resources[1],
        windows[1],
        2,
        "Success",
    );
    for event in &mut other_gateway {
        event["transactionSummary"]["assetResource"]["id"] = json!("asset-elsewhere");
    }
    events.extend(other_gateway);
    events.extend(spread(
        &sub.amplify_id,
        &sub.name,
        &quota.resources[1],
        windows[1],
        6,
        "Success",
    ));
    inject(&sb, &events).await;
    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    let mut expected = Expected::default();
    expected.add(sub, quota, windows[0].0, 7);
    expected.add(sub, quota, windows[1].0, 8);
    assert_eq!(usage_totals(&sb).await, expected.totals());
    let amounts: Vec<u64> = usage_list(&sb, &sub.recurly_id, &quota.add_on())
        .await
        .iter()
        .map(|u| whole(&u["amount"]))
        .collect();
    assert_eq!(amounts, [7, 8], "one record per window");
}

#[actix_rt::test]
async fn usage_records_are_dated_inside_their_window_tagged_and_keyed() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 2).await;
    let windows = closed_windows(2);
    let (s1, s2) = (&b.subs[0], &b.subs[1]);
    let (q_calls, q_bulk, q_alerts) = (&b.quotas[0], &b.quotas[1], &b.quotas[2]);
    let mut events = Vec::new();
    let mut expected = Expected::default();
    for (sub, quota, window, units) in [
        (s1, q_calls, windows[0], 3),
        (s1, q_calls, windows[1], 5),
        (s1, q_bulk, windows[0], 2),
        (s2, q_alerts, windows[1], 4),
    ] {
        events.extend(calls(sub, quota, window, units));
        expected.add(sub, quota, window.0, units);
    }
    // A failed call counts too (billed_count = "total" by default).
    events.extend(spread(
        &s2.amplify_id,
        &s2.name,
        &q_alerts.resource,
        windows[1],
        1,
        "Failure",
    ));
    expected.add(s2, q_alerts, windows[1].0, 1);
    inject(&sb, &events).await;

    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    let checked_at = Utc::now();

    let posts = usage_posts(&sb).await;
    assert_eq!(posts.len() as u64, expected.records(), "{posts:#?}");
    let mut keys = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for post in &posts {
        let body = &post["body"];
        let tag = body["merchant_tag"].as_str().expect("a merchant_tag");
        // `amplify:{amplify subscription id} window:{start_ms}-{end_ms}`.
        let (sub, window) = [s1, s2]
            .iter()
            .flat_map(|s| windows.iter().map(move |w| (*s, *w)))
            .find(|(s, w)| tag == format!("amplify:{} window:{}-{}", s.amplify_id, w.0, w.1))
            .unwrap_or_else(|| panic!("merchant_tag names a subscription and window: {tag}"));
        let quota = b
            .quotas
            .iter()
            .find(|q| {
                post["path"]
                    == format!(
                        "/recurly/subscriptions/{}/add_ons/code-{}/usage",
                        sub.recurly_id,
                        q.add_on()
                    )
                    .as_str()
            })
            .unwrap_or_else(|| {
                panic!(
                    "posted under {}'s Recurly subscription and a quota add-on: {}",
                    sub.name, post["path"]
                )
            });
        let key = (sub.recurly_id.clone(), quota.add_on(), window.0);
        assert!(
            seen.insert(key.clone()),
            "one record per pair and window: {key:?}"
        );
        assert_eq!(
            whole(&body["amount"]),
            expected.0[&key],
            "amount of {key:?}"
        );
        let at: DateTime<Utc> = body["usage_timestamp"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("a usage_timestamp: {body}"));
        let at_ms = at.timestamp_millis();
        assert!(
            window.0 <= at_ms && at_ms < window.1,
            "usage_timestamp {at} inside [{}, {})",
            rfc3339(window.0),
            rfc3339(window.1)
        );
        assert!(at <= checked_at, "usage_timestamp {at} not in the future");
        let key_header = post["headers"]["idempotency-key"]
            .as_str()
            .unwrap_or_else(|| panic!("an Idempotency-Key: {}", post["headers"]));
        assert!(
            !key_header.is_empty() && key_header.len() <= 64,
            "Idempotency-Key of at most 64 characters: {key_header}"
        );
        assert!(keys.insert(key_header.to_owned()), "one key per record");
    }
    assert_eq!(usage_totals(&sb).await, expected.totals());
    // What a provider sees listing usage in Recurly.
    let listed = usage_list(&sb, &s1.recurly_id, &q_calls.add_on()).await;
    let amounts: Vec<u64> = listed.iter().map(|u| whole(&u["amount"])).collect();
    assert_eq!(amounts, [3, 5], "{listed:#?}");
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

#[actix_rt::test]
async fn a_window_reported_twice_adds_nothing() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 2).await;
    let windows = closed_windows(3);
    let (events, expected) = grid(&b.subs, &b.quotas[..2], &windows);
    inject(&sb, &events).await;
    let body = span(&windows);
    let first = report(&sb, &b.bridge.url, Some(&body)).await;
    assert_eq!(first["complete"], true, "{first}");
    assert_eq!(first["records"], expected.records(), "{first}");
    assert_eq!(usage_totals(&sb).await, expected.totals());

    // The same span again, then only its middle window (epoch ms bounds this time).
    let again = report(&sb, &b.bridge.url, Some(&body)).await;
    assert_eq!(again["complete"], true, "{again}");
    assert_eq!(
        (&again["records"], &again["units"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    let middle = json!({"from": windows[1].0, "to": windows[1].1});
    let third = report(&sb, &b.bridge.url, Some(&middle)).await;
    assert_eq!(
        (&third["records"], &third["units"]),
        (&json!(0), &json!(0)),
        "{third}"
    );
    assert_eq!(third["windows"].as_array().unwrap().len(), 1, "{third}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
    assert_eq!(usage_posts(&sb).await.len() as u64, expected.records());
}

#[actix_rt::test]
async fn a_dry_run_says_what_would_be_billed_and_writes_nothing() {
    let sb = bridge_sandbox().await;
    let windows = closed_windows(2);
    let overrides = reporting_overrides(&format!("start_at = \"{}\"", rfc3339(windows[0].0)), "");
    let b = billed(&sb, &overrides, 2).await;
    let (events, expected) = grid(&b.subs, &b.quotas, &windows);
    inject(&sb, &events).await;
    let mut body = span(&windows);
    body["dry_run"] = json!(true);

    let dry = report(&sb, &b.bridge.url, Some(&body)).await;
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["records"], expected.records(), "{dry}");
    assert_eq!(dry["units"], expected.units(), "{dry}");
    let observed = |summary: &Value, field: &str| -> BTreeMap<(String, String, i64), u64> {
        let mut found = BTreeMap::new();
        for window in summary["windows"].as_array().unwrap() {
            for pair in window["pairs"].as_array().expect("pairs in a dry run") {
                let sub = b
                    .subs
                    .iter()
                    .find(|s| {
                        pair["amplify_subscription"] == s.amplify_id.as_str()
                            || pair["amplify_subscription"] == s.name.as_str()
                    })
                    .unwrap_or_else(|| panic!("a billed subscription: {pair}"));
                assert_eq!(pair["recurly_subscription"], sub.recurly_id.as_str());
                found.insert(
                    (
                        sub.recurly_id.clone(),
                        pair["add_on"].as_str().unwrap().to_owned(),
                        window["start_ms"].as_i64().unwrap(),
                    ),
                    pair[field].as_u64().unwrap(),
                );
            }
        }
        found
    };
    assert_eq!(observed(&dry, "observed"), expected.0);
    assert_eq!(observed(&dry, "to_report"), expected.0);
    assert!(observed(&dry, "reported").values().all(|r| *r == 0));
    assert!(usage_totals(&sb).await.is_empty(), "nothing billed");
    assert!(usage_posts(&sb).await.is_empty());
    let writes: Vec<Value> = sandbox_json(&sb, "/_sandbox/requests?upstream=recurly")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] != "GET" && r["path"].as_str().unwrap().contains("/usage"))
        .cloned()
        .collect();
    assert!(writes.is_empty(), "no usage write at all: {writes:#?}");

    // A dry normal run (from `start_at`, as the schedule would) moves no watermark either.
    let dry_normal = report(&sb, &b.bridge.url, Some(&json!({"dry_run": true}))).await;
    assert_eq!(dry_normal["records"], expected.records(), "{dry_normal}");
    assert!(usage_totals(&sb).await.is_empty(), "nothing billed");

    // The dry runs left no ledger or watermark behind: the real run still bills everything.
    let real = report(&sb, &b.bridge.url, None).await;
    assert_eq!(real["dry_run"], false, "{real}");
    assert_eq!(real["records"], expected.records(), "{real}");
    assert_eq!(real["windows"][0]["start_ms"], windows[0].0, "{real}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
    let after = report(&sb, &b.bridge.url, Some(&body)).await;
    assert_eq!(observed(&after, "observed"), expected.0);
    assert_eq!(observed(&after, "reported"), expected.0);
    assert!(observed(&after, "to_report").values().all(|r| *r == 0));
    assert_eq!(
        (&after["records"], &after["units"]),
        (&json!(0), &json!(0)),
        "{after}"
    );
}

#[actix_rt::test]
async fn unmatched_traffic_is_counted_listed_and_never_billed() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 1).await;
    // A subscriber without a billing account: rejected, so never linked to Recurly.
    b.provider
        .subscribe("sub-x", "silver", "team-x", "user-1")
        .await;
    let rejected = wait_for("sub-x rejected", WAIT, || async {
        let sub = b.provider.get("/catalog/v1/subscriptions/sub-x").await;
        (sub["approval"]["state"] == "rejected").then_some(sub)
    })
    .await;
    let rejected_id = rejected["metadata"]["id"].as_str().unwrap();
    let window = closed_windows(1)[0];
    let (sub, q_calls) = (&b.subs[0], &b.quotas[0]);
    let unknown_id = "0123456789abcdef0123456789abcdef";
    let mut events = calls(sub, q_calls, window, 4);
    events.extend(spread(
        &sub.amplify_id,
        &sub.name,
        "silver/nowhere",
        window,
        3,
        "Success",
    ));
    events.extend(spread(
        unknown_id,
        "ghost",
        &q_calls.resource,
        window,
        2,
        "Success",
    ));
    events.extend(spread(
        rejected_id,
        "sub-x",
        &q_calls.resource,
        window,
        5,
        "Failure",
    ));
    inject(&sb, &events).await;

    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["units"], 4, "{summary}");
    assert_eq!(summary["records"], 1, "{summary}");
    assert_eq!(summary["unmatched_units"], 10, "{summary}");
    let mut expected = Expected::default();
    expected.add(sub, q_calls, window.0, 4);
    assert_eq!(usage_totals(&sb).await, expected.totals());
    let posts = usage_posts(&sb).await;
    assert_eq!(posts.len(), 1, "{posts:#?}");
    // Counted once, by reason (before any dry run).
    let text = metrics(&sb, &b.bridge).await;

    // A dry run lists each unmatched row with its reason.
    let mut body = span(&[window]);
    body["dry_run"] = json!(true);
    let dry = report(&sb, &b.bridge.url, Some(&body)).await;
    let listed: BTreeSet<(String, String, u64, String)> = dry["windows"][0]["unmatched"]
        .as_array()
        .unwrap_or_else(|| panic!("unmatched rows in a dry run: {dry}"))
        .iter()
        .map(|u| {
            (
                u["subscription_id"].as_str().unwrap().to_owned(),
                u["asset_resource"].as_str().unwrap().to_owned(),
                u["units"].as_u64().unwrap(),
                u["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let wanted: BTreeSet<(String, String, u64, String)> = [
        (sub.amplify_id.as_str(), "silver/nowhere", 3, "resource"),
        (unknown_id, q_calls.resource.as_str(), 2, "subscription"),
        (rejected_id, q_calls.resource.as_str(), 5, "subscription"),
    ]
    .into_iter()
    .map(|(s, r, u, why)| (s.to_owned(), r.to_owned(), u, why.to_owned()))
    .collect();
    assert_eq!(listed, wanted, "{dry}");
    assert_eq!(dry["unmatched_units"], 10, "{dry}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
    let unmatched = "billing_bridge_usage_unmatched_units_total";
    let counted: Vec<&str> = text.lines().filter(|l| l.starts_with(unmatched)).collect();
    assert_eq!(
        metric_sum(&text, unmatched, "reason=\"subscription\""),
        7.0,
        "{counted:#?}"
    );
    assert_eq!(
        metric_sum(&text, unmatched, "reason=\"resource\""),
        3.0,
        "{counted:#?}"
    );
}

/// A write to Recurly as the provider would make it (no body); the status and answer.
pub async fn recurly_write(sb: &TestSandbox, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = sb
        .http
        .request(method, sb.at(&format!("/recurly{path}")))
        .basic_auth("provider-key", Some(""))
        .header("Accept", "application/vnd.recurly.v2021-02-25")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `DELETE /recurly/subscriptions/{id}`: terminated now, `expired` (Recurly reference §5).
pub async fn terminate_in_recurly(sb: &TestSandbox, recurly_id: &str) {
    let (status, body) = recurly_write(
        sb,
        reqwest::Method::DELETE,
        &format!("/subscriptions/{recurly_id}"),
    )
    .await;
    assert_eq!(status, 200, "terminating {recurly_id}: {body}");
    assert_eq!(body["state"], "expired", "{body}");
}

#[actix_rt::test]
async fn usage_of_an_expired_recurly_subscription_is_skipped_and_the_provider_told_once() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 3).await;
    let (live, ended, canceled) = (&b.subs[0], &b.subs[1], &b.subs[2]);
    terminate_in_recurly(&sb, &ended.recurly_id).await;
    // Canceled at the end of its term: still running, still billed.
    let (status, body) = recurly_write(
        &sb,
        reqwest::Method::PUT,
        &format!("/subscriptions/{}/cancel", canceled.recurly_id),
    )
    .await;
    assert_eq!(
        (status, &body["state"]),
        (200, &json!("canceled")),
        "{body}"
    );
    let windows = closed_windows(2);
    let (q_calls, q_bulk) = (&b.quotas[0], &b.quotas[1]);
    let mut expected = Expected::default();
    let mut events = Vec::new();
    for (sub, quota, window, units) in [
        (live, q_calls, windows[0], 3),
        (live, q_calls, windows[1], 2),
        (ended, q_calls, windows[0], 4),
        (ended, q_bulk, windows[1], 1),
        (canceled, q_bulk, windows[0], 6),
        (canceled, q_bulk, windows[1], 7),
    ] {
        events.extend(calls(sub, quota, window, units));
        if sub.name != ended.name {
            expected.add(sub, quota, window.0, units);
        }
    }
    inject(&sb, &events).await;

    let first = report(&sb, &b.bridge.url, Some(&span(&windows[..1]))).await;
    assert_eq!(first["skipped_units"], 4, "{first}");
    assert_eq!(first["units"], 3 + 6, "{first}");
    let second = report(&sb, &b.bridge.url, Some(&span(&windows[1..]))).await;
    assert_eq!(second["skipped_units"], 1, "{second}");
    assert_eq!(second["units"], 2 + 7, "{second}");

    // Cards are sent in order: once the sentinel's card is in, every earlier one is.
    b.provider.settle("weather", "sentinel").await;
    let titles: Vec<String> = cards(&sb).await.into_iter().map(|c| c.title).collect();
    let told: Vec<&String> = titles
        .iter()
        .filter(|t| t.starts_with("Usage not billed"))
        .collect();
    assert_eq!(
        told.len(),
        1,
        "one card for the subscription, not per window or run; all cards: {titles:?}"
    );
    assert_eq!(usage_totals(&sb).await, expected.totals());
    let text = metrics(&sb, &b.bridge).await;
    assert_eq!(
        metric_sum(&text, "billing_bridge_usage_skipped_units_total", ""),
        5.0,
        "{text}"
    );
    let ended_posts = usage_posts(&sb)
        .await
        .into_iter()
        .filter(|p| p["path"].as_str().unwrap().contains(&ended.recurly_id))
        .count();
    assert_eq!(
        ended_posts, 0,
        "no usage record on the expired subscription"
    );
    // Titled with the Amplify subscription's name (its `name`, not its display title).
    assert_eq!(told[0], &format!("Usage not billed: {}", ended.name));
}

#[actix_rt::test]
async fn the_report_endpoint_takes_only_the_admin_token_and_only_closed_windows() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &reporting_overrides("", "")).await;
    let windows = closed_windows(3);
    let body = span(&windows);
    for token in [None, Some("wrong-token"), Some(WEBHOOK_SECRET)] {
        let (status, _, answer) = report_with(&sb, &bridge.url, token, Some(&body)).await;
        assert_eq!(status, 401, "token {token:?}: {answer}");
    }

    // A window that has not closed yet is refused.
    let now = Utc::now().timestamp_millis();
    let open = json!({"from": windows[2].0, "to": now + WINDOW_MS});
    let (status, _, answer) = report_with(&sb, &bridge.url, Some(ADMIN_TOKEN), Some(&open)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");

    // Unaligned bounds, as epoch ms: every window overlapping [from, to).
    let unaligned = json!({"from": windows[0].0 + 10_000, "to": windows[2].0 + 10_000});
    let summary = report(&sb, &bridge.url, Some(&unaligned)).await;
    let reported: Vec<(i64, i64)> = summary["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["start_ms"].as_i64().unwrap(),
                w["end_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(reported, windows, "{summary}");
    for window in summary["windows"].as_array().unwrap() {
        let start: DateTime<Utc> = window["start"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            start.timestamp_millis(),
            window["start_ms"].as_i64().unwrap()
        );
        assert_eq!(window["repoll"], false, "{window}");
    }
    assert_eq!(
        (&summary["complete"], &summary["records"]),
        (&json!(true), &json!(0))
    );

    // RFC 3339 with a UTC offset names the same instants.
    let east = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
    let at = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .unwrap()
            .with_timezone(&east)
            .to_rfc3339()
    };
    let offset = json!({"from": at(windows[1].0), "to": at(windows[2].1)});
    let summary = report(&sb, &bridge.url, Some(&offset)).await;
    let starts: Vec<i64> = summary["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["start_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(starts, [windows[1].0, windows[2].0], "{offset}: {summary}");

    // A window is closed only once `delay` has passed after its end.
    let delayed = spawn_bridge(
        &sb,
        "[reporting]\nschedule = \"\"\nwindow = \"1m\"\ndelay = \"10m\"\n[store]\nstate_file = \"\"\n",
    )
    .await;
    let recent = span(&windows[2..]);
    let (status, _, answer) =
        report_with(&sb, &delayed.url, Some(ADMIN_TOKEN), Some(&recent)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
    let old = span(&closed_windows(12)[..1]);
    let (status, _, answer) = report_with(&sb, &delayed.url, Some(ADMIN_TOKEN), Some(&old)).await;
    assert_eq!(status, 200, "a window closed 11 minutes ago: {answer}");

    // With reporting off, a report is refused.
    let off = spawn_bridge(&sb, &reporting_overrides("enabled = false", "")).await;
    let (status, _, answer) = report_with(&sb, &off.url, Some(ADMIN_TOKEN), Some(&body)).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
}

#[actix_rt::test]
async fn traffic_spread_over_many_summary_pages_is_read_whole() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("page_size = 4", ""), 4).await;
    let windows = closed_windows(2);
    // 12 rows in the first window (three full pages), 10 in the second (a partial last page).
    let (mut events, mut expected) = grid(&b.subs, &b.quotas, &windows[..1]);
    let (more, more_expected) = grid(&b.subs, &b.quotas[..2], &windows[1..]);
    events.extend(more);
    expected.0.extend(more_expected.0);
    let (extra, extra_expected) = grid(&b.subs[..2], &b.quotas[2..], &windows[1..]);
    events.extend(extra);
    expected.0.extend(extra_expected.0);
    assert_eq!(expected.records(), 22);
    inject(&sb, &events).await;
    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
    let pages: Vec<Value> = sandbox_json(&sb, "/_sandbox/requests?upstream=amplify")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/traceability/summary"))
        })
        .cloned()
        .collect();
    assert!(pages.len() >= 6, "pages of at most 4 rows: {}", pages.len());
    for page in &pages {
        let query = page["query"].as_str().unwrap_or_default();
        assert!(query.contains("count=4"), "{query}");
        assert!(
            page["response_body"]
                .as_array()
                .is_some_and(|rows| rows.len() <= 4)
        );
    }
}

#[actix_rt::test]
async fn billed_subscriptions_beyond_a_page_of_the_amplify_list_are_all_billed() {
    let sb = bridge_sandbox().await;
    // Subscriptions linked elsewhere (the provisioner is off): 26 of them, more than a page of
    // Amplify's default list size.
    let b = billed(
        &sb,
        &reporting_overrides("", "[provisioning]\nsubscriptions = false"),
        0,
    )
    .await;
    let plan = b.provider.get("/catalog/v1/productplans/silver").await;
    let plan_code = format!("amplify-plan-{}", plan["metadata"]["id"].as_str().unwrap());
    let count = 26;
    let add_ons: Vec<Value> = b
        .quotas
        .iter()
        .map(|q| json!({"code": q.add_on()}))
        .collect();
    let accounts: Vec<Value> = (0..count)
        .map(|i| json!({"code": format!("amplify-team-many-{i}"), "email": "billing@consumer.example"}))
        .collect();
    let subscriptions: Vec<Value> = (0..count)
        .map(|i| {
            json!({"plan_code": plan_code, "currency": "USD",
                        "account": {"code": format!("amplify-team-many-{i}")}, "add_ons": add_ons})
        })
        .collect();
    let seeded = seed(
        &sb,
        json!({"recurly": {"accounts": accounts, "subscriptions": subscriptions}}),
    )
    .await;
    let recurly_ids: Vec<String> = seeded["recurly"]["subscriptions"]
        .as_array()
        .or_else(|| seeded["subscriptions"].as_array())
        .unwrap_or_else(|| panic!("the seeded subscriptions: {seeded}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recurly_ids.len(), count);
    let resources: Vec<Value> = recurly_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"kind": "Subscription", "name": format!("many-{i:02}"),
                              "spec": {"product": "weather", "plan": {"name": "silver"}},
                              "attributes": {"recurlySubscriptionId": id},
                              "approval": {"state": "approved"}})
        })
        .collect();
    let seeded = seed(&sb, json!({"amplify": {"resources": resources}})).await;
    let subs: Vec<Billed> = seeded["amplify"]["resources"]
        .as_array()
        .expect("the seeded resources")
        .iter()
        .zip(&recurly_ids)
        .map(|(s, id)| Billed {
            name: s["name"].as_str().unwrap().to_owned(),
            amplify_id: s["metadata"]["id"].as_str().unwrap().to_owned(),
            recurly_id: id.clone(),
        })
        .collect();
    let window = closed_windows(1)[0];
    let response = sb
        .http
        .post(sb.at("/_sandbox/traffic/generate"))
        .json(&json!({"seed": 77, "count": 2000, "from": window.0, "to": window.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let generated: Value = response.json().await.unwrap();
    let mut expected = Expected::default();
    for total in generated["totals"].as_array().unwrap() {
        let sub = subs
            .iter()
            .find(|s| total["subscriptionId"] == s.amplify_id.as_str())
            .unwrap_or_else(|| panic!("traffic of a seeded subscription: {total}"));
        let quota = b
            .quotas
            .iter()
            .find(|q| {
                q.resources
                    .iter()
                    .any(|r| total["listedName"] == r.as_str())
            })
            .unwrap();
        expected.add(sub, quota, window.0, total["totalCount"].as_u64().unwrap());
    }
    let billed_subs: BTreeSet<&String> = expected.0.keys().map(|(s, _, _)| s).collect();
    assert_eq!(billed_subs.len(), count, "every subscription got traffic");

    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["unmatched_units"], 0, "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn a_run_longer_than_its_lease_keeps_the_lease_and_completes() {
    let sb = bridge_sandbox().await;
    // A 1 s lease, and Amplify answering in 1.5 s: the window's traffic read alone outlasts the
    // lease, which the run must renew as it goes (a large run waiting for Amplify's reporting
    // lane does the same at production scale).
    let b = billed(&sb, &reporting_overrides("lease_ttl = \"1s\"", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    inject(
        &sb,
        &spread(
            &sub.amplify_id,
            &sub.name,
            &quota.resource,
            window,
            7,
            "Success",
        ),
    )
    .await;
    let response = sb
        .http
        .put(sb.at("/_sandbox/faults/amplify"))
        .json(&json!({"latency_ms": 1500}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(
        (&summary["records"], &summary["units"]),
        (&json!(1), &json!(7)),
        "{summary}"
    );
    let mut expected = Expected::default();
    expected.add(sub, quota, window.0, 7);
    assert_eq!(usage_totals(&sb).await, expected.totals());
}
