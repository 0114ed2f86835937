//! Traffic as today's Amplify agents send it (docs/ingest.md, issue 12), for every source: the
//! LogEvent (reference §5.3) naming the asset resource by its own name, the InsightsEvent v4
//! (§5.4) naming it by id only, timestamps in seconds, one transaction sent in both shapes; each
//! billed to the right quota exactly once. An own name two quotas of the plan list is never
//! guessed: it is unmatched as `ambiguous_resource`, listed by a dry run and counted.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::ingest::{counts, event, push, push_overrides, sample};
use crate::provisioning::metrics;
use crate::reporting::{
    Billed, Billing, Expected, Quota, billed, closed_windows, inject, report, reporting_overrides,
    span, usage_totals,
};
use crate::support::{TestSandbox, bridge_sandbox};

const UNMATCHED: &str = "billing_bridge_usage_unmatched_units_total";

/// An InsightsEvent v4 summary as `BuildTransactionV2Data` writes it: transaction `id` in
/// `session.id`, a fresh envelope id, the resource by id only, unresolved references absent.
fn v4(id: &str, at: i64, sub: &str, quota: Option<&str>, resource_id: Option<&str>) -> Value {
    let mut data = json!({
        "version": "2", "apicDeployment": "prod", "status": "Success", "statusDetail": "200",
        "duration": 41, "api": {"id": "remoteApiId_weather", "name": "weather"},
        "entryPoint": {"method": "GET", "path": "/v1/forecast", "host": "api.weather.example"},
        "consumerDetails": {"consumerOrgId": "org-9", "application": {"id": "consumer-app"},
                            "subscription": {"id": sub}},
        "proxy": {"id": "weather", "name": "weather"},
        "reporter": {"version": "1.4.0", "type": "traceability", "agentSDKVersion": "1.1.152", "agentName": "gw-agent"}
    });
    if let Some(quota) = quota {
        data["quota"] = json!({"id": quota});
    }
    if let Some(resource) = resource_id {
        data["assetResource"] = json!({"id": resource});
    }
    json!({"id": format!("{id}-envelope-{at}"), "org": "100000142", "event": "api.transaction.summary",
           "version": "4", "timestamp": at, "distribution": {"environment": "env-1"},
           "data": data, "session": {"id": id}})
}

/// A LogEvent naming the resource as the SDK does: `name` its own name, `id` when resolved.
fn log_event(id: &str, at: i64, sub: &str, name: Option<&str>, resource_id: Option<&str>) -> Value {
    let mut e = event(id, at, Some(sub), None, None, "Success");
    let mut resource = json!({});
    if let Some(name) = name {
        resource["name"] = json!(name);
    }
    if let Some(resource_id) = resource_id {
        resource["id"] = json!(resource_id);
    }
    e["transactionSummary"]["assetResource"] = resource;
    e
}

/// Has quota `bulk` list `other/calls` as well: the own name `calls` is then listed by two
/// quotas of the plan (`silver/calls` in `calls`, `other/calls` in `bulk`). Editing an active
/// plan may add resources (reference §3.2).
async fn share_the_own_name_calls(b: &Billing<'_>) {
    let path = "/catalog/v1/productplans/silver/quotas/bulk";
    let mut quota = b.provider.get(path).await;
    quota["spec"]["resources"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "AssetResource", "name": "other/calls"}));
    let (status, body) = b
        .provider
        .send(reqwest::Method::PUT, path, Some(quota))
        .await;
    assert_eq!(status, 200, "{body}");
}

fn quota<'a>(b: &'a Billing<'_>, name: &str) -> &'a Quota {
    b.quotas.iter().find(|q| q.name == name).unwrap()
}

/// One window's traffic of `sub` in both shapes with every way of naming a resource, and what
/// it bills: (events, expected, ambiguous units, distinct transactions).
fn mixed_traffic(
    b: &Billing<'_>,
    sub: &Billed,
    window: (i64, i64),
) -> (Vec<Value>, Expected, u64, usize) {
    let (calls, bulk, alerts) = (quota(b, "calls"), quota(b, "bulk"), quota(b, "alerts"));
    let s = sub.amplify_id.as_str();
    let at = window.0 + 1_500;
    let seconds = at / 1_000;
    let mut events = vec![
        // v4, by id only: the first of `calls`' resources, and `calls-v2`.
        v4("t-v4-0", at, s, None, Some(&calls.resource_ids[0])),
        v4("t-v4-1", at + 10, s, None, Some(&calls.resource_ids[1])),
        // v4 from an agent that never sets a timestamp: seconds.
        v4("t-v4-2", seconds, s, None, Some(&alerts.resource_ids[0])),
        // LogEvents by own name alone (the id unresolved): unique own names.
        log_event("t-log-0", at, s, Some("bulk"), None),
        log_event("t-log-1", at + 20, s, Some("calls-v2"), Some("unknown")),
        // By the name the quota lists.
        log_event("t-log-2", at + 30, s, Some("silver/alerts"), None),
        // `calls` is listed by two quotas: the id decides...
        log_event(
            "t-log-3",
            seconds,
            s,
            Some("calls"),
            Some(&calls.resource_ids[0]),
        ),
        // ...and without one it is ambiguous, never guessed.
        log_event("t-amb-0", at + 40, s, Some("calls"), None),
        log_event("t-amb-1", at + 50, s, Some("calls"), None),
        // A quota id of the plan wins over an ambiguous name.
        {
            let mut e = log_event("t-log-4", at + 60, s, Some("calls"), None);
            e["transactionSummary"]["quota"] = json!({"id": bulk.id});
            e
        },
    ];
    let distinct = events.len();
    // Each sent again in the other shape (same transaction id): counted once.
    events.push(log_event(
        "t-v4-0",
        at,
        s,
        Some("calls"),
        Some(&calls.resource_ids[0]),
    ));
    events.push(v4("t-log-0", at, s, None, None));
    events.push(v4("t-amb-0", at + 40, s, None, None));
    let mut expected = Expected::default();
    expected.add(sub, calls, window.0, 4);
    expected.add(sub, bulk, window.0, 2);
    expected.add(sub, alerts, window.0, 2);
    (events, expected, 2, distinct)
}

/// The dry run's unmatched rows of the first window: (subscription, resource, units, reason).
async fn dry_run_unmatched(
    sb: &TestSandbox,
    bridge_url: &str,
    window: (i64, i64),
) -> BTreeSet<(String, String, u64, String)> {
    let mut body = span(&[window]);
    body["dry_run"] = json!(true);
    let dry = report(sb, bridge_url, Some(&body)).await;
    dry["windows"][0]["unmatched"]
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
        .collect()
}

fn ambiguous_row(sub: &Billed, units: u64) -> (String, String, u64, String) {
    (
        sub.amplify_id.clone(),
        "calls".to_owned(),
        units,
        "ambiguous_resource".to_owned(),
    )
}

/// Reports the window, then checks the bill, the ambiguous units in the metric and the dry run.
async fn billed_with_ambiguous(
    sb: &TestSandbox,
    b: &Billing<'_>,
    window: (i64, i64),
    expected: &Expected,
    ambiguous: u64,
) {
    let summary = report(sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["units"], expected.units(), "{summary}");
    assert_eq!(summary["unmatched_units"], ambiguous, "{summary}");
    assert_eq!(usage_totals(sb).await, expected.totals());
    let text = metrics(sb, &b.bridge).await;
    assert_eq!(
        sample(&text, UNMATCHED, "reason=\"ambiguous_resource\""),
        ambiguous as f64,
        "{text}"
    );
    assert_eq!(
        sample(&text, UNMATCHED, "reason=\"resource\""),
        0.0,
        "{text}"
    );
    let listed = dry_run_unmatched(sb, &b.bridge.url, window).await;
    assert_eq!(
        listed,
        BTreeSet::from([ambiguous_row(&b.subs[0], ambiguous)])
    );
}

#[actix_rt::test]
async fn pushed_traffic_in_both_shapes_is_billed_by_resource_id_or_name_and_an_ambiguous_name_is_not()
 {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    share_the_own_name_calls(&b).await;
    let window = closed_windows(1)[0];
    let (mut events, expected, ambiguous, distinct) = mixed_traffic(&b, &b.subs[0], window);
    let repeats = (events.len() - distinct) as u64;
    // A v4 leg (`api.transaction.event`) of a billed transaction: ignored, like LogEvent legs.
    let mut leg = v4(
        "t-v4-0",
        window.0 + 1_500,
        &b.subs[0].amplify_id,
        None,
        None,
    );
    leg["event"] = json!("api.transaction.event");
    leg["data"] = json!({"version": "2", "id": "leg0", "duration": 12, "direction": "outbound",
                         "protocol": {"type": "http", "uri": "/v1/forecast", "method": "GET", "status": 200}});
    events.push(leg);
    let answer = push(&sb, &b.bridge.url, &events).await;
    assert_eq!(
        counts(&answer),
        (events.len() as u64, distinct as u64, repeats, 1, 0),
        "{answer}"
    );
    billed_with_ambiguous(&sb, &b, window, &expected, ambiguous).await;
}

#[actix_rt::test]
async fn searched_traffic_in_both_shapes_is_billed_by_resource_id_or_name_and_an_ambiguous_name_is_not()
 {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("source = \"search\"", ""), 1).await;
    share_the_own_name_calls(&b).await;
    let window = closed_windows(1)[0];
    let (events, expected, ambiguous, _) = mixed_traffic(&b, &b.subs[0], window);
    inject(&sb, &events).await;
    billed_with_ambiguous(&sb, &b, window, &expected, ambiguous).await;
}

#[actix_rt::test]
async fn summary_rows_naming_resources_by_own_name_or_id_are_billed_and_an_ambiguous_name_is_not() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 1).await;
    share_the_own_name_calls(&b).await;
    let window = closed_windows(1)[0];
    let sub = &b.subs[0];
    let s = sub.amplify_id.as_str();
    let (calls, bulk, alerts) = (quota(&b, "calls"), quota(&b, "bulk"), quota(&b, "alerts"));
    let at = window.0 + 2_000;
    // The summary groups by (subscriptionId, assetResourceId); a row's assetResourceName is
    // the own name the events carry. Ids the quotas do not reference leave the name to decide.
    let mut events = Vec::new();
    for k in 0..3 {
        events.push(log_event(
            &format!("own-{k}"),
            at + k,
            s,
            Some("bulk"),
            Some("ar-not-referenced-1"),
        ));
    }
    for k in 0..2 {
        events.push(v4(
            &format!("id-{k}"),
            at + k,
            s,
            None,
            Some(&alerts.resource_ids[0]),
        ));
    }
    for k in 0..4 {
        events.push(log_event(
            &format!("both-{k}"),
            at + k,
            s,
            Some("calls"),
            Some(&calls.resource_ids[0]),
        ));
    }
    for k in 0..5 {
        events.push(log_event(
            &format!("amb-{k}"),
            at + k,
            s,
            Some("calls"),
            Some("ar-not-referenced-2"),
        ));
    }
    inject(&sb, &events).await;
    let mut expected = Expected::default();
    expected.add(sub, bulk, window.0, 3);
    expected.add(sub, alerts, window.0, 2);
    expected.add(sub, calls, window.0, 4);
    billed_with_ambiguous(&sb, &b, window, &expected, 5).await;
}

#[actix_rt::test]
async fn a_field_over_512_bytes_is_refused_at_intake_naming_the_field_and_never_cut() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let sub = &b.subs[0];
    let calls = quota(&b, "calls");
    let at = window.0 + 1_000;
    // 171 × "€" is 513 bytes in 171 characters; 170 of them (510 bytes) fit.
    let over = "€".repeat(171);
    let fits = "€".repeat(170);
    let s = sub.amplify_id.as_str();
    let batch = [
        log_event(&over, at, s, Some("calls"), None),
        log_event("long-sub", at, &over, Some("calls"), None),
        log_event("long-name", at, s, Some(&over), None),
        v4(&over, at, s, None, Some(&calls.resource_ids[0])),
        v4("long-quota", at, s, Some(&over), None),
        v4("long-resource", at, s, None, Some(&over)),
        // At the limit: taken whole, and billed by its resource id.
        log_event(&fits, at, s, Some(&fits), Some(&calls.resource_ids[0])),
    ];
    let answer = push(&sb, &b.bridge.url, &batch).await;
    assert_eq!(counts(&answer), (7, 1, 0, 0, 6), "{answer}");
    let details: Vec<(u64, String, String)> = answer["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
                r["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (index, field) in [
        (0, "transactionId"),
        (1, "transactionSummary.consumerDetails.subscription.id"),
        (2, "transactionSummary.assetResource.name"),
        (3, "session.id"),
        (4, "data.quota.id"),
        (5, "data.assetResource.id"),
    ] {
        let (_, reason, detail) = details
            .iter()
            .find(|(i, _, _)| *i == index)
            .unwrap_or_else(|| panic!("event {index} refused: {answer}"));
        assert_eq!(reason, "invalid", "{answer}");
        assert!(
            detail.contains(field) && detail.contains("513 bytes") && detail.contains("512"),
            "event {index}'s detail names {field}: {detail}"
        );
    }
    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    let mut expected = Expected::default();
    expected.add(sub, calls, window.0, 1);
    assert_eq!(
        summary["units"], 1,
        "the 510-byte id is one transaction: {summary}"
    );
    assert_eq!(usage_totals(&sb).await, expected.totals());
}
