//! Issue 15 end to end, on the sandbox's billing clock: traffic right up to a renewal is billed
//! to the unit on the invoices (volume units moved to the open period, fixed and tiered ones sent
//! as corrections, none refused), a trial's traffic is not billed, and what Recurly knows flows
//! back (dunning ends in an archived Amplify subscription and one card; forged, repeated and lost
//! notifications). Every check reads the sandbox (invoices, records, cards, Amplify), never
//! what the bridge says it did, except for the metrics that count its choices.

use std::collections::BTreeMap;

use billing_bridge_domain::usage::Pricing;
use billing_bridge_sandbox::{AmplifySettings, DunningSettings, RecurlySettings, SandboxConfig};
use chrono::{DateTime, Months, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::provisioning::{
    Provider, WAIT, cards, hooks, metrics, paid_plan_spec, priced_quotas, recurly, sandbox_json,
    seed,
};
use crate::reporting::{
    Billed, Quota, call, inject, listed_resource_ids, metric_sum, report, reporting_overrides,
    rfc3339, usage_list, wait_billed,
};
use crate::support::{
    TestBridge, TestSandbox, bridge_sandbox, spawn_bridge, spawn_sandbox, wait_for,
};

const MINUTE: i64 = 60_000;
const SECOND: i64 = 1_000;
/// The Recurly webhook endpoint's secret, in the sandbox and in the bridge.
const ENDPOINT_SECRET: &str = "recurly-endpoint-secret";

fn ms(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .unwrap_or_else(|| panic!("a date-time: {value}"))
        .timestamp_millis()
}

/// `reporting.start_at` for a renewal `months` ahead (or a trial `days` ahead): ten minutes
/// before, aligned to the one-minute window, so a run reports a handful of windows.
fn start_before(at: DateTime<Utc>) -> String {
    let at = at.timestamp_millis() - 10 * MINUTE;
    rfc3339(at - at.rem_euclid(MINUTE))
}

/// Moves the bridge's clock, then the sandbox's, to `at_ms` (the bridge first, so anything the
/// sandbox makes on the way is not ahead of the bridge). Answers what the sandbox did.
async fn move_to(sb: &TestSandbox, bridge: &TestBridge, at_ms: i64) -> Value {
    bridge.bridge.clock.advance_to(at_ms);
    let reply = sb
        .http
        .post(sb.at("/_sandbox/clock"))
        .json(&json!({"to": rfc3339(at_ms)}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "moving the sandbox clock");
    reply.json().await.unwrap()
}

/// The billed catalog (`silver`: a tiered `calls`, a volume `bulk` and a per-unit `alerts`
/// quota) and one approved subscription on its own Recurly account. With `trial_days`, the
/// Recurly plan gets a trial before the subscription is made (the bridge does not map trials).
async fn one_subscription(
    provider: &Provider<'_>,
    trial_days: Option<u32>,
) -> (Vec<Quota>, Billed) {
    let sb = provider.sb;
    provider.product("weather", true).await;
    provider
        .plan("silver", "Silver", "weather", paid_plan_spec("weather"))
        .await;
    let mut quotas = Vec::new();
    for (name, pricing) in priced_quotas() {
        let resource = format!("silver/{name}");
        let created = provider
            .create(
                "/catalog/v1/productplans/silver/quotas",
                json!({"group": "catalog", "apiVersion": "v1", "kind": "Quota", "name": name, "title": name,
                       "metadata": {"scope": {"kind": "ProductPlan", "name": "silver"}},
                       "spec": {"unit": "transactions", "pricing": pricing,
                                "resources": [{"kind": "AssetResource", "name": resource}]}}),
            )
            .await;
        quotas.push(Quota {
            name: name.to_owned(),
            id: created["metadata"]["id"].as_str().unwrap().to_owned(),
            resource: resource.clone(),
            resource_ids: listed_resource_ids(&created, std::slice::from_ref(&resource)),
            resources: vec![resource],
        });
    }
    provider.activate("silver").await;
    let plan_code = wait_for("the plan link", WAIT, || async {
        let plan = provider.get("/catalog/v1/productplans/silver").await;
        plan["attributes"]["recurlyPlanCode"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    if let Some(days) = trial_days {
        let reply = sb
            .http
            .put(sb.at(&format!("/recurly/plans/code-{plan_code}")))
            .basic_auth("provider-key", Some(""))
            .header("Accept", "application/vnd.recurly.v2021-02-25")
            .json(&json!({"trial_unit": "days", "trial_length": days}))
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success(), "a trial on the Recurly plan");
    }
    seed(
        sb,
        json!({"amplify": {"users": [{"guid": "user-1", "email": "dev@consumer.example", "firstname": "Dana", "lastname": "Dev"}],
                           "teams": [{"guid": "team-1", "name": "Consumers 1", "users": ["user-1"]}]},
               "recurly": {"accounts": [{"code": "amplify-team-team-1", "email": "billing@consumer.example"}]}}),
    )
    .await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let billed = wait_billed(provider, "sub-1").await;
    (quotas, billed)
}

async fn recurly_subscription(sb: &TestSandbox, id: &str) -> Value {
    let (status, body) = recurly(sb, &format!("/subscriptions/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Traffic of `quota` spread evenly over `[from, to)` (`units` calls), plus one call at each of
/// `exact`; the calls' times, which the test sums per period.
fn traffic(
    sub: &Billed,
    quota: &Quota,
    from: i64,
    to: i64,
    units: i64,
    exact: &[i64],
) -> (Vec<Value>, Vec<i64>) {
    let mut times: Vec<i64> = (0..units).map(|k| from + k * (to - from) / units).collect();
    times.extend_from_slice(exact);
    let events = times
        .iter()
        .map(|at| call(&sub.amplify_id, &sub.name, &quota.resource, *at, "Success"))
        .collect();
    (events, times)
}

/// An invoice's usage line: add-on code, units, period start and end (ms), whether a correction.
type UsageLine = (String, u64, i64, i64, bool);

/// Usage lines of every invoice of `sub`.
async fn usage_lines(sb: &TestSandbox, sub: &str) -> Vec<UsageLine> {
    let (status, body) = recurly(sb, &format!("/subscriptions/{sub}/invoices?limit=200")).await;
    assert_eq!(status, 200, "{body}");
    let mut lines = Vec::new();
    for invoice in body["data"].as_array().unwrap() {
        for line in invoice["line_items"].as_array().expect("line items") {
            let Some(code) = line["add_on_code"].as_str() else {
                continue;
            };
            lines.push((
                code.to_owned(),
                line["quantity"].as_u64().expect("a whole quantity"),
                ms(&line["start_date"]),
                ms(&line["end_date"]),
                line["description"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Usage correction"),
            ));
        }
    }
    lines
}

/// Every usage POST the bridge made that Recurly refused.
async fn refused_usage(sb: &TestSandbox) -> Vec<Value> {
    sandbox_json(sb, "/_sandbox/requests?upstream=recurly")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["method"] == "POST"
                && r["path"].as_str().unwrap_or_default().ends_with("/usage")
                && r["status"].as_u64().is_some_and(|s| s >= 400)
        })
        .cloned()
        .collect()
}

/// The dry run's parts of `add_on`: their `how`.
fn dry_run_hows(summary: &Value, add_on: &str) -> Vec<String> {
    summary["windows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["pairs"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["add_on"] == add_on)
        .flat_map(|p| p["parts"].as_array().cloned().unwrap_or_default())
        .map(|part| part["how"].as_str().unwrap().to_owned())
        .collect()
}

/// A bridge reporting from before the first renewal, and one billed subscription with no trial.
async fn billed_for_a_month(sb: &TestSandbox) -> (TestBridge, Vec<Quota>, Billed) {
    let renewal_guess = Utc::now() + Months::new(1);
    let bridge = spawn_bridge(
        sb,
        &reporting_overrides(
            &format!("start_at = \"{}\"", start_before(renewal_guess)),
            "",
        ),
    )
    .await;
    hooks(&bridge).await;
    let provider = Provider::new(sb).await;
    let (quotas, sub) = one_subscription(&provider, None).await;
    (bridge, quotas, sub)
}

#[actix_rt::test]
async fn traffic_up_to_a_renewal_is_billed_to_the_unit_and_nothing_is_refused() {
    let sb = bridge_sandbox().await;
    let (bridge, quotas, sub) = billed_for_a_month(&sb).await;
    let recurly_sub = recurly_subscription(&sb, &sub.recurly_id).await;
    let p0 = ms(&recurly_sub["current_period_started_at"]);
    let p1 = ms(&recurly_sub["current_period_ends_at"]);

    // Each quota's traffic runs from five minutes before the renewal to five after, with calls
    // in the last moments of the ended period.
    let mut period_one: BTreeMap<String, u64> = BTreeMap::new();
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    let mut events = Vec::new();
    for (j, quota) in quotas.iter().enumerate() {
        let (mut more, times) = traffic(
            &sub,
            quota,
            p1 - 5 * MINUTE,
            p1 + 5 * MINUTE,
            60 + 25 * j as i64,
            &[p1 - 1, p1 - 250, p1 - 7 * SECOND, p1, p1 + 1],
        );
        events.append(&mut more);
        period_one.insert(
            quota.add_on(),
            times.iter().filter(|t| **t < p1).count() as u64,
        );
        total.insert(quota.add_on(), times.len() as u64);
    }
    inject(&sb, &events).await;

    // Just before the renewal: every closed window is reported inside the period.
    move_to(&sb, &bridge, p1 - 20 * SECOND).await;
    let first = report(&sb, &bridge.url, None).await;
    assert_eq!(first["complete"], true, "{first}");
    assert!(first["units"].as_u64().unwrap() > 0, "{first}");

    // The renewal invoices the period; the rest of the period's traffic is now late.
    let moved = move_to(&sb, &bridge, p1 + 30 * SECOND).await;
    assert!(
        moved["processed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["what"] == "renewal" && p["subscription_id"] == sub.recurly_id.as_str()),
        "{moved}"
    );
    let dry = report(&sb, &bridge.url, Some(&json!({"dry_run": true}))).await;
    let [calls, bulk, alerts] = [&quotas[0], &quotas[1], &quotas[2]];
    assert!(
        dry_run_hows(&dry, &bulk.add_on()).contains(&"moved_to_open_period".to_owned()),
        "the volume quota's late units move to the open period: {dry:#}"
    );
    for fixed_or_tiered in [calls, alerts] {
        let hows = dry_run_hows(&dry, &fixed_or_tiered.add_on());
        assert!(
            hows.contains(&"correction".to_owned()),
            "{hows:?} in {dry:#}"
        );
        assert!(
            !hows.contains(&"moved_to_open_period".to_owned()),
            "{hows:?}"
        );
    }
    let late = report(&sb, &bridge.url, None).await;
    assert_eq!(late["complete"], true, "{late}");

    // The rest of the straddling window and the next minutes, in the new period.
    move_to(&sb, &bridge, p1 + 6 * MINUTE).await;
    let after = report(&sb, &bridge.url, None).await;
    assert_eq!(after["complete"], true, "{after}");

    // The next renewal bills the new period, the corrections and the moved units.
    let p2 = ms(&recurly_subscription(&sb, &sub.recurly_id).await["current_period_ends_at"]);
    assert!(p2 > p1 + 27 * 24 * 3600 * SECOND);
    move_to(&sb, &bridge, p2 + SECOND).await;

    // Reporting again adds nothing: every part has its ledger entry and key.
    let records = crate::reporting::record_count(&sb).await;
    let again = report(&sb, &bridge.url, None).await;
    assert_eq!(
        (again["records"].as_u64(), again["complete"].as_bool()),
        (Some(0), Some(true)),
        "{again}"
    );
    assert_eq!(crate::reporting::record_count(&sb).await, records);

    let lines = usage_lines(&sb, &sub.recurly_id).await;
    for quota in &quotas {
        let add_on = quota.add_on();
        let of = |pick: &dyn Fn(&UsageLine) -> bool| -> u64 {
            lines
                .iter()
                .filter(|l| l.0 == add_on && pick(l))
                .map(|l| l.1)
                .sum()
        };
        assert_eq!(
            of(&|_| true),
            total[&add_on],
            "{}: the invoices bill exactly the traffic: {lines:?}",
            quota.name
        );
        if quota.name != "bulk" {
            // Fixed and tiered: the ended period is billed exactly, its late part as a
            // correction grouped under that period.
            assert_eq!(
                of(&|l| l.2 == p0 && l.3 == p1),
                period_one[&add_on],
                "{}: {lines:?}",
                quota.name
            );
            assert!(
                of(&|l| l.4) > 0,
                "{}: a correction line: {lines:?}",
                quota.name
            );
        } else {
            assert!(
                !lines.iter().any(|l| l.0 == add_on && l.4),
                "no volume correction"
            );
            assert!(
                of(&|l| l.2 == p0) < period_one[&add_on],
                "the volume quota's late units were billed with the next period: {lines:?}"
            );
        }
    }
    assert!(
        refused_usage(&sb).await.is_empty(),
        "{:#?}",
        refused_usage(&sb).await
    );
    let text = metrics(&sb, &bridge).await;
    let dated = |how: &str| {
        metric_sum(
            &text,
            "billing_bridge_usage_dated_units_total",
            &format!("how=\"{how}\""),
        )
    };
    assert!(
        dated("moved_to_open_period") > 0.0 && dated("correction") > 0.0,
        "{text}"
    );
    assert_eq!(
        dated("in_period") + dated("split") + dated("moved_to_open_period") + dated("correction"),
        total.values().sum::<u64>() as f64
    );
    assert_eq!(
        metric_sum(&text, "billing_bridge_usage_refused_units_total", ""),
        0.0
    );
    assert!(
        cards(&sb)
            .await
            .iter()
            .all(|c| !c.title.starts_with("Usage refused")),
        "no refusal card"
    );
}

#[actix_rt::test]
async fn a_volume_record_sent_as_the_period_renews_is_redated_into_the_open_period() {
    let sb = bridge_sandbox().await;
    let (bridge, quotas, sub) = billed_for_a_month(&sb).await;
    let p1 = ms(&recurly_subscription(&sb, &sub.recurly_id).await["current_period_ends_at"]);
    let bulk = &quotas[1];
    // Traffic in a window that closed two minutes before the renewal at the latest.
    let boundary = (p1 - 1) - (p1 - 1).rem_euclid(MINUTE);
    let window = (boundary - 2 * MINUTE, boundary - MINUTE);
    let (events, _) = traffic(&sub, bulk, window.0, window.1, 17, &[]);
    inject(&sb, &events).await;

    // A dry run just before the renewal reads the period; then Recurly renews while the bridge's
    // clock is still a moment before it, so the record goes out dated in the ended period.
    move_to(&sb, &bridge, p1 - 30 * SECOND).await;
    report(&sb, &bridge.url, Some(&json!({"dry_run": true}))).await;
    let reply = sb
        .http
        .post(sb.at("/_sandbox/clock"))
        .json(&json!({"to": rfc3339(p1 + SECOND)}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    bridge.bridge.clock.advance_to(p1 - 5 * SECOND);
    let run = report(&sb, &bridge.url, None).await;
    assert_eq!(run["complete"], true, "{run}");

    // Recurly refused the first try; the record it holds is dated at the renewal.
    assert_eq!(
        refused_usage(&sb).await.len(),
        1,
        "the first try, dated before the renewal"
    );
    let records = usage_list(&sb, &sub.recurly_id, &bulk.add_on()).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let renewed = recurly_subscription(&sb, &sub.recurly_id).await;
    assert_eq!(
        ms(&renewed["current_period_started_at"]),
        p1,
        "periods follow each other"
    );
    assert_eq!(
        ms(&records[0]["usage_timestamp"]),
        ms(&renewed["current_period_started_at"])
    );
    assert_eq!(crate::reporting::whole(&records[0]["amount"]), 17);
    let text = metrics(&sb, &bridge).await;
    assert_eq!(
        metric_sum(&text, "billing_bridge_usage_refused_units_total", ""),
        0.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "billing_bridge_usage_dated_units_total",
            "how=\"moved_to_open_period\""
        ),
        17.0
    );
    // Reported again: nothing more (the ledger settled it).
    move_to(&sb, &bridge, p1 + 2 * MINUTE).await;
    report(&sb, &bridge.url, None).await;
    assert_eq!(
        usage_list(&sb, &sub.recurly_id, &bulk.add_on()).await.len(),
        1
    );
    assert!(
        cards(&sb)
            .await
            .iter()
            .all(|c| !c.title.starts_with("Usage refused"))
    );
}

#[actix_rt::test]
async fn a_trials_traffic_is_not_billed_and_what_follows_it_is() {
    let sb = bridge_sandbox().await;
    let trial_guess = Utc::now() + chrono::Duration::days(7);
    let bridge = spawn_bridge(
        &sb,
        &reporting_overrides(&format!("start_at = \"{}\"", start_before(trial_guess)), ""),
    )
    .await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    let (quotas, sub) = one_subscription(&provider, Some(7)).await;
    let recurly_sub = recurly_subscription(&sb, &sub.recurly_id).await;
    let trial_end = ms(&recurly_sub["trial_ends_at"]);
    assert_eq!(
        ms(&recurly_sub["current_period_ends_at"]),
        trial_end,
        "{recurly_sub}"
    );

    let mut in_trial = 0u64;
    let mut billed: BTreeMap<String, u64> = BTreeMap::new();
    let mut events = Vec::new();
    for (j, quota) in quotas.iter().enumerate() {
        let (mut more, times) = traffic(
            &sub,
            quota,
            trial_end - 4 * MINUTE,
            trial_end + 4 * MINUTE,
            40 + 10 * j as i64,
            &[trial_end - 1, trial_end],
        );
        events.append(&mut more);
        in_trial += times.iter().filter(|t| **t < trial_end).count() as u64;
        billed.insert(
            quota.add_on(),
            times.iter().filter(|t| **t >= trial_end).count() as u64,
        );
    }
    inject(&sb, &events).await;

    move_to(&sb, &bridge, trial_end - 20 * SECOND).await;
    let dry = report(&sb, &bridge.url, Some(&json!({"dry_run": true}))).await;
    assert!(
        dry_run_hows(&dry, &quotas[0].add_on())
            .iter()
            .all(|h| h == "trial"),
        "{dry:#}"
    );
    assert!(dry["trial_units"].as_u64().unwrap() > 0, "{dry}");
    report(&sb, &bridge.url, None).await;
    move_to(&sb, &bridge, trial_end + 30 * SECOND).await;
    report(&sb, &bridge.url, None).await;
    move_to(&sb, &bridge, trial_end + 6 * MINUTE).await;
    let last = report(&sb, &bridge.url, None).await;
    assert_eq!(last["complete"], true, "{last}");
    let next = ms(&recurly_subscription(&sb, &sub.recurly_id).await["current_period_ends_at"]);
    move_to(&sb, &bridge, next + SECOND).await;

    let lines = usage_lines(&sb, &sub.recurly_id).await;
    for quota in &quotas {
        let add_on = quota.add_on();
        let sum: u64 = lines.iter().filter(|l| l.0 == add_on).map(|l| l.1).sum();
        assert_eq!(
            sum, billed[&add_on],
            "{}: only what followed the trial: {lines:?}",
            quota.name
        );
        for record in usage_list(&sb, &sub.recurly_id, &add_on).await {
            assert!(
                ms(&record["usage_timestamp"]) >= trial_end,
                "no record dated in the trial: {record}"
            );
        }
    }
    let text = metrics(&sb, &bridge).await;
    assert_eq!(
        metric_sum(
            &text,
            "billing_bridge_usage_dated_units_total",
            "how=\"trial\""
        ),
        in_trial as f64,
        "the trial's units are counted, not sent"
    );
    assert!(refused_usage(&sb).await.is_empty());
}

// ---- notifications ---------------------------------------------------------------------------

fn signed(secret: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{ts},{hex}")
}

async fn post_notification(
    sb: &TestSandbox,
    bridge: &TestBridge,
    id: &str,
    signature: &str,
    body: &str,
) -> u16 {
    sb.http
        .post(format!("{}/webhooks/recurly", bridge.url))
        .header("recurly-signature", signature)
        .header("recurly-notification-id", id)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn register_endpoint(sb: &TestSandbox, bridge: &TestBridge) {
    let reply = sb
        .http
        .post(sb.at("/_sandbox/recurly/webhook_endpoints"))
        .json(
            &json!({"url": format!("{}/webhooks/recurly", bridge.url), "secret": ENDPOINT_SECRET}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
}

fn notify_overrides(check_every: &str) -> String {
    format!(
        "[recurly]\nwebhook_secret = \"{ENDPOINT_SECRET}\"\n\
         [provisioning]\non_billing_end = \"archive\"\nbilling_check_every = \"{check_every}\"\n"
    )
}

/// Waits until every notification the sandbox made was delivered (or dropped), so the bridge
/// is quiet before a test counts what it reads.
async fn notifications_settled(sb: &TestSandbox) {
    wait_for("every notification delivered", WAIT, || async {
        let all = sandbox_json(sb, "/_sandbox/recurly/notifications").await;
        all.as_array()
            .unwrap()
            .iter()
            .all(|n| n["delivered"] == true || n["status"] == "dropped")
            .then_some(())
    })
    .await;
}

async fn recurly_gets(sb: &TestSandbox, path: &str) -> usize {
    sandbox_json(sb, "/_sandbox/requests?upstream=recurly")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "GET" && r["path"] == path)
        .count()
}

#[actix_rt::test]
async fn a_subscription_that_fails_dunning_is_archived_with_one_card_and_forged_or_repeated_notifications_change_nothing()
 {
    let sb = spawn_sandbox(SandboxConfig {
        amplify: AmplifySettings {
            requests_per_minute: 0,
            ..Default::default()
        },
        recurly: RecurlySettings {
            dunning: DunningSettings {
                attempts: 2,
                retry_interval_secs: 3600,
            },
            ..RecurlySettings::default()
        },
        ..SandboxConfig::default()
    })
    .await;
    let bridge = spawn_bridge(&sb, &notify_overrides("0s")).await;
    hooks(&bridge).await;
    register_endpoint(&sb, &bridge).await;
    let provider = Provider::new(&sb).await;
    let (_, sub) = one_subscription(&provider, None).await;
    let recurly_sub = recurly_subscription(&sb, &sub.recurly_id).await;
    let p1 = ms(&recurly_sub["current_period_ends_at"]);
    let sub_path = format!("/recurly/subscriptions/{}", sub.recurly_id);

    // A forged "expired" with a wrong signature: refused, nothing read, nothing done.
    let body = json!({"id": sub.recurly_id, "object_type": "subscription", "site_id": "x",
                      "event_type": "expired", "event_time": rfc3339(Utc::now().timestamp_millis()),
                      "uuid": recurly_sub["uuid"]})
    .to_string();
    // Signatures carry the wall-clock time of sending (the billing clock may be months ahead).
    let now = Utc::now().timestamp_millis();
    notifications_settled(&sb).await;
    let reads = recurly_gets(&sb, &sub_path).await;
    assert_eq!(
        post_notification(
            &sb,
            &bridge,
            "forged-1",
            &signed("not-the-secret", now, &body),
            &body
        )
        .await,
        401
    );
    assert_eq!(
        post_notification(&sb, &bridge, "forged-2", "", &body).await,
        401
    );
    let stale = now - 10 * MINUTE;
    assert_eq!(
        post_notification(
            &sb,
            &bridge,
            "forged-3",
            &signed(ENDPOINT_SECRET, stale, &body),
            &body
        )
        .await,
        401
    );
    assert_eq!(
        recurly_gets(&sb, &sub_path).await,
        reads,
        "a forged notification reads nothing"
    );

    // A genuine notification delivered three times is acted on once: Recurly is read once,
    // and, the subscription being active, nothing more is done (the body is only a hint).
    let genuine = signed(ENDPOINT_SECRET, now, &body);
    for _ in 0..3 {
        assert_eq!(
            post_notification(&sb, &bridge, "genuine-1", &genuine, &body).await,
            200
        );
    }
    assert_eq!(
        recurly_gets(&sb, &sub_path).await,
        reads + 1,
        "re-read once, for the first copy"
    );
    let text = metrics(&sb, &bridge).await;
    let outcome = |o: &str| {
        metric_sum(
            &text,
            "billing_bridge_recurly_notifications_total",
            &format!("outcome=\"{o}\""),
        )
    };
    assert_eq!(outcome("unauthorized"), 3.0);
    assert!(outcome("duplicate") >= 2.0, "{text}");
    assert!(
        cards(&sb)
            .await
            .iter()
            .all(|c| !c.title.starts_with("Billing ended"))
    );
    let amplify = provider.get("/catalog/v1/subscriptions/sub-1").await;
    assert_eq!(amplify["state"]["name"], "active", "{amplify}");

    // Payments fail: the renewal invoice is past due (one card), then the subscription expires.
    let reply = sb
        .http
        .put(sb.at("/_sandbox/recurly/accounts/amplify-team-team-1/payments"))
        .json(&json!({"fail": true}))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success());
    move_to(&sb, &bridge, p1 + SECOND).await;
    wait_for("the past-due card", WAIT, || async {
        let got = cards(&sb).await;
        got.iter()
            .any(|c| c.title.starts_with("Invoice past due"))
            .then_some(())
    })
    .await;
    move_to(&sb, &bridge, p1 + 3601 * SECOND).await;
    let archived = wait_for("the Amplify subscription archived", WAIT, || async {
        let amplify = provider.get("/catalog/v1/subscriptions/sub-1").await;
        (amplify["state"]["name"] == "archived").then_some(amplify)
    })
    .await;
    let reason = archived["state"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("could not be paid"),
        "a reason the consumer can act on: {reason}"
    );
    let jobs = provider
        .get("/catalog/v1/subscriptions/sub-1/subscriptionjobs")
        .await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
    assert_eq!(jobs[0]["spec"]["action"]["type"], "archive");
    assert_eq!(jobs[0]["status"]["level"], "Success", "{jobs}");
    // The sandbox's Central refuses an action it does not know (reference §3.4).
    let (status, refused) = provider
        .send(
            reqwest::Method::POST,
            "/catalog/v1/subscriptions/sub-1/subscriptionjobs",
            Some(
                json!({"group": "catalog", "kind": "SubscriptionJob", "name": "odd",
                        "spec": {"action": {"type": "explode"}}}),
            ),
        )
        .await;
    assert_eq!(status, 400, "{refused}");

    // Every notification reached the bridge (the expiry and the failed invoice, then the
    // archive's Amplify webhook): one card each, counted once all is quiet.
    notifications_settled(&sb).await;
    wait_for("the billing-ended card", WAIT, || async {
        let got = cards(&sb).await;
        got.iter()
            .any(|c| c.title.starts_with("Billing ended"))
            .then_some(())
    })
    .await;
    provider.settle("weather", "sentinel").await;
    let all = cards(&sb).await;
    let count = |prefix: &str| all.iter().filter(|c| c.title.starts_with(prefix)).count();
    assert_eq!(count("Billing ended"), 1, "{all:?}");
    assert_eq!(count("Invoice past due"), 1, "{all:?}");
    // The archive reached the bridge as an Amplify webhook too: no card of its own, since the
    // Recurly subscription has already ended.
    assert_eq!(count("Subscription ended"), 0, "{all:?}");
}

#[actix_rt::test]
async fn a_notification_lost_entirely_is_caught_by_the_periodic_pass() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &notify_overrides("300ms")).await;
    hooks(&bridge).await;
    register_endpoint(&sb, &bridge).await;
    let provider = Provider::new(&sb).await;
    let (_, sub) = one_subscription(&provider, None).await;
    notifications_settled(&sb).await;
    let accepted = |text: &str| {
        metric_sum(
            text,
            "billing_bridge_recurly_notifications_total",
            "outcome=\"accepted\"",
        )
    };
    let before = accepted(&metrics(&sb, &bridge).await);
    // Whatever Recurly says from now on never arrives.
    let reply = sb
        .http
        .put(sb.at("/_sandbox/recurly/notifications/drop_next"))
        .json(&json!({"count": 100}))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success());
    crate::reporting::terminate_in_recurly(&sb, &sub.recurly_id).await;

    let archived = wait_for("the periodic pass archives it", WAIT, || async {
        let amplify = provider.get("/catalog/v1/subscriptions/sub-1").await;
        (amplify["state"]["name"] == "archived").then_some(amplify)
    })
    .await;
    assert!(
        archived["state"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let dropped = sandbox_json(&sb, "/_sandbox/recurly/notifications").await;
    assert!(
        dropped
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["body"]["object_type"] == "subscription"
                && n["body"]["event_type"] == "expired"
                && n["status"] == "dropped"),
        "the expiry notification was lost: {dropped:#}"
    );
    let text = metrics(&sb, &bridge).await;
    assert_eq!(accepted(&text), before, "nothing more came by webhook");
    // Later passes find it done: still one card.
    wait_for("two more passes", WAIT, || async {
        let text = metrics(&sb, &bridge).await;
        (metric_sum(&text, "billing_bridge_billing_checks_total", "") >= 3.0).then_some(())
    })
    .await;
    let ended = cards(&sb)
        .await
        .into_iter()
        .filter(|c| c.title.starts_with("Billing ended"))
        .count();
    assert_eq!(ended, 1);
}

#[actix_rt::test]
async fn the_recurly_endpoint_is_off_without_a_secret_and_refuses_what_it_cannot_read() {
    let sb = bridge_sandbox().await;
    let off = spawn_bridge(&sb, "").await;
    let body = r#"{"id":"x","object_type":"subscription","event_type":"expired"}"#;
    let now = Utc::now().timestamp_millis();
    let sig = signed(ENDPOINT_SECRET, now, body);
    assert_eq!(post_notification(&sb, &off, "n-1", &sig, body).await, 401);

    let on = spawn_bridge(&sb, &notify_overrides("0s")).await;
    let no_id = sb
        .http
        .post(format!("{}/webhooks/recurly", on.url))
        .header("recurly-signature", sig.clone())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_id.status(), 400);
    let junk = "not json";
    let junk_sig = signed(ENDPOINT_SECRET, now, junk);
    assert_eq!(
        post_notification(&sb, &on, "n-2", &junk_sig, junk).await,
        400
    );
    // Recurly does not know the subscription: nothing to do, and it is not asked again.
    assert_eq!(post_notification(&sb, &on, "n-3", &sig, body).await, 200);
    assert_eq!(post_notification(&sb, &on, "n-3", &sig, body).await, 200);
    assert_eq!(recurly_gets(&sb, "/recurly/subscriptions/x").await, 1);
    let text = metrics(&sb, &on).await;
    for (outcome, n) in [("malformed", 2.0), ("accepted", 1.0), ("duplicate", 1.0)] {
        assert_eq!(
            metric_sum(
                &text,
                "billing_bridge_recurly_notifications_total",
                &format!("outcome=\"{outcome}\"")
            ),
            n,
            "{outcome}"
        );
    }
}

#[actix_rt::test]
async fn a_fresh_process_lists_many_billing_periods_a_page_at_a_time() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    let subs = 250;
    let add_on = "amplify-quota-calls";
    let seeded = seed(
        &sb,
        json!({"recurly": {
            "measured_units": [{"name": "transactions", "display_name": "Transactions"}],
            "accounts": (0..subs).map(|i| json!({"code": format!("amplify-team-p{i}")})).collect::<Vec<_>>(),
            "plans": [{"code": "amplify-plan-paged", "name": "Paged", "accounting_code": "paged",
                       "currencies": [{"currency": "USD", "unit_amount": 0}],
                       "add_ons": [{"code": add_on, "name": "Calls", "accounting_code": "calls",
                                    "add_on_type": "usage", "usage_type": "price", "tier_type": "volume",
                                    "measured_unit_name": "transactions",
                                    "tiers": [{"ending_quantity": 999999999,
                                               "currencies": [{"currency": "USD", "unit_amount": 0.01}]}]}]}],
            "subscriptions": (0..subs).map(|i| json!({"plan_code": "amplify-plan-paged", "currency": "USD",
                "account": {"code": format!("amplify-team-p{i}")}, "add_ons": [{"code": add_on}]})).collect::<Vec<_>>()}}),
    )
    .await;
    let ids: Vec<String> = seeded["recurly"]["subscriptions"]
        .as_array()
        .unwrap_or_else(|| panic!("{seeded}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), subs);
    let cleared = sb.http.delete(sb.at("/_sandbox/requests")).send().await;
    assert!(cleared.unwrap().status().is_success());

    // A reporting run of a fresh process asks for every one of them, and for one Recurly does
    // not have.
    let (b, now) = (&bridge.bridge, bridge.bridge.clock.now_ms());
    let mut wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    wanted.push("nosuchsubscription");
    b.periods
        .prefetch(&b.recurly, &wanted, now, now)
        .await
        .expect("listed");
    let lists = crate::provisioning::requests_to(&sb, "recurly", "GET", "/subscriptions").await;
    assert_eq!(
        lists.len(),
        2,
        "250 subscriptions in pages of 200, read to the end for the one it lacks"
    );
    assert!(
        lists
            .iter()
            .all(|r| r["query"].as_str().unwrap().contains("state=live")),
        "{lists:?}"
    );
    for id in &ids {
        let billing = b
            .periods
            .get(&b.recurly, id, now, now)
            .await
            .expect("read")
            .expect("known");
        assert_eq!(billing.state, "active");
        assert_eq!(billing.pricing_of(add_on), Pricing::Volume);
    }
    let reads = |requests: &[Value]| {
        requests
            .iter()
            .filter(|r| r["path"].as_str().unwrap().contains("/subscriptions/"))
            .count()
    };
    let requests = sandbox_json(&sb, "/_sandbox/requests?upstream=recurly").await;
    assert_eq!(
        reads(requests.as_array().unwrap()),
        0,
        "no subscription read on its own"
    );
    // The one the list lacks is read on its own, and is none.
    let missing = b
        .periods
        .get(&b.recurly, "nosuchsubscription", now, now)
        .await
        .expect("read");
    assert!(missing.is_none());
    let requests = sandbox_json(&sb, "/_sandbox/requests?upstream=recurly").await;
    assert_eq!(reads(requests.as_array().unwrap()), 1);
    // Every request as Recurly's OpenAPI describes it.
    crate::recurly_conformance::client::assert_recurly_traffic_conforms(
        &sb,
        billing_bridge_contract::ExchangePolicy::ClientMustConform,
    )
    .await;
}
