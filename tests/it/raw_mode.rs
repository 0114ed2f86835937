//! Raw transactions read from Traceability search (docs/ingest.md, `[reporting] source =
//! "search"`): the bridge pages `POST …/traceability/search` (Amplify reference §5.2) for the
//! window's `transactionSummary` events and bills each `transactionId` once, however many copies
//! Traceability holds.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::ingest::{Rng, boundary_calls, event, records_tagged, txns, workload};
use crate::provisioning::sandbox_json;
use crate::reporting::{
    Expected, billed, billed_exactly, closed_windows, inject, report, report_until_complete,
    reporting_overrides, rfc3339, span, usage_posts, usage_totals, whole,
};
use crate::support::TestSandbox;

/// Stores `events` in the sandbox's Traceability, a few hundred at a time.
async fn inject_all(sb: &TestSandbox, events: &[Value]) {
    for chunk in events.chunks(400) {
        inject(sb, chunk).await;
    }
}

async fn forget_requests(sb: &TestSandbox) {
    let status = sb
        .http
        .delete(sb.at("/_sandbox/requests"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "clearing the recording: {status}");
}

/// Traceability requests the sandbox recorded: (search POSTs, summary reads).
async fn traceability_requests(sb: &TestSandbox) -> (Vec<Value>, Vec<Value>) {
    let recorded = sandbox_json(sb, "/_sandbox/requests?upstream=amplify").await;
    let all = recorded.as_array().unwrap();
    let ends = |r: &Value, suffix: &str| r["path"].as_str().is_some_and(|p| p.ends_with(suffix));
    (
        all.iter()
            .filter(|r| ends(r, "/traceability/search"))
            .cloned()
            .collect(),
        all.iter()
            .filter(|r| ends(r, "/traceability/summary"))
            .cloned()
            .collect(),
    )
}

#[actix_rt::test]
async fn with_source_search_each_transaction_id_is_billed_once_however_many_copies() {
    let sb = bridge_sandbox_for_search().await;
    // Small pages, should the search pages follow `page_size`: many pages per window.
    let b = billed(
        &sb,
        &reporting_overrides("source = \"search\"\npage_size = 50", ""),
        3,
    )
    .await;
    let windows = closed_windows(3);
    let mut w = workload(8101, 1200, &b.subs, &b.quotas, &windows, false);
    // Some copies carry another time inside the same window (an agent re-sending later).
    let mut rng = Rng(8102);
    let mut seen = BTreeSet::new();
    let mut restamped = 0;
    for e in &mut w.stream {
        let id = e["transactionId"].as_str().unwrap().to_owned();
        if !seen.insert(id) && rng.chance(30) {
            let at = e["timestamp"].as_i64().unwrap();
            let start = at - at.rem_euclid(60_000);
            e["timestamp"] = json!(start + rng.below(60_000) as i64);
            restamped += 1;
        }
    }
    assert!(restamped > 20, "{restamped}");
    let copies = w.stream.len() as u64 - w.expected.units() - w.unmatched;
    assert!(copies > 300, "Traceability holds many copies: {copies}");
    inject_all(&sb, &w.stream).await;
    forget_requests(&sb).await;

    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["units"], w.expected.units(), "{summary}");
    assert_eq!(summary["records"], w.expected.records(), "{summary}");
    assert_eq!(summary["unmatched_units"], w.unmatched, "{summary}");
    assert_eq!(usage_totals(&sb).await, w.expected.totals());
    assert_eq!(usage_posts(&sb).await.len() as u64, w.expected.records());

    let (searches, summaries) = traceability_requests(&sb).await;
    assert!(!searches.is_empty(), "the bridge searched Traceability");
    for search in &searches {
        assert_eq!(search["method"], "POST", "{search}");
        assert_eq!(search["status"], 200, "a search the sandbox took: {search}");
        assert!(
            search["path"]
                .as_str()
                .unwrap()
                .ends_with("/api/traceability/v1/traceability/search"),
            "{search}"
        );
    }
    assert!(
        summaries.is_empty(),
        "no summary read with source = \"search\": {summaries:#?}"
    );

    let again = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(
        (&again["records"], &again["units"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    assert_eq!(usage_totals(&sb).await, w.expected.totals());
}

#[actix_rt::test]
async fn with_source_search_late_copies_add_nothing_and_late_transactions_a_delta() {
    let sb = bridge_sandbox_for_search().await;
    let windows = closed_windows(2);
    let overrides = reporting_overrides(
        &format!(
            "source = \"search\"\nrepoll_windows = 3\nstart_at = \"{}\"",
            rfc3339(windows[0].0)
        ),
        "",
    );
    let b = billed(&sb, &overrides, 1).await;
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    let first = txns("s", sub, quota, windows[1], 5);
    inject_all(&sb, &first).await;
    let run = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&run["records"], &run["units"]),
        (&json!(1), &json!(5)),
        "{run}"
    );

    // Copies of billed transactions (one re-stamped), and three new ones, all late.
    let mut late = vec![first[0].clone(), first[1].clone(), first[2].clone()];
    late[2]["timestamp"] = json!(windows[1].1 - 1);
    late.extend(txns("s-late", sub, quota, windows[1], 3));
    inject_all(&sb, &late).await;
    let run = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&run["records"], &run["units"]),
        (&json!(1), &json!(3)),
        "{run}"
    );
    let tag = format!(
        "amplify:{} window:{}-{} late#1",
        sub.amplify_id, windows[1].0, windows[1].1
    );
    let delta = records_tagged(&sb, " late#1").await;
    assert_eq!(delta.len(), 1, "{delta:#?}");
    assert_eq!(delta[0]["merchant_tag"], tag.as_str());
    assert_eq!(whole(&delta[0]["amount"]), 3);
    let at: DateTime<Utc> = delta[0]["usage_timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(windows[1].0 <= at.timestamp_millis() && at.timestamp_millis() < windows[1].1);

    // Only copies again: nothing.
    inject_all(&sb, &late).await;
    let run = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&run["records"], &run["units"]),
        (&json!(0), &json!(0)),
        "{run}"
    );
    let mut totals = BTreeMap::new();
    totals.insert((sub.recurly_id.clone(), quota.add_on()), (2u64, 8u64));
    assert_eq!(usage_totals(&sb).await, totals);
}

#[actix_rt::test]
async fn with_source_search_and_billed_count_success_only_unique_successes_are_billed() {
    let sb = bridge_sandbox_for_search().await;
    let b = billed(
        &sb,
        &reporting_overrides("source = \"search\"\nbilled_count = \"success\"", ""),
        1,
    )
    .await;
    let window = closed_windows(1)[0];
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    let mut events = Vec::new();
    for (status, n) in [
        ("Success", 6),
        ("Failure", 3),
        ("Exception", 2),
        ("Unknown", 2),
    ] {
        for k in 0..n {
            let e = event(
                &format!("{status}-{k}"),
                window.0 + 10 * k as i64,
                Some(&sub.amplify_id),
                Some(&q0.id),
                Some(&q0.resource),
                status,
            );
            // Every event twice.
            events.push(e.clone());
            events.push(e);
        }
    }
    // By asset resource only (no quota id), three successes, one of them three times.
    for k in 0..3 {
        let e = event(
            &format!("bulk-{k}"),
            window.0 + 1000 + k,
            Some(&sub.amplify_id),
            None,
            Some(&q1.resource),
            "Success",
        );
        if k == 0 {
            events.push(e.clone());
            events.push(e.clone());
        }
        events.push(e);
    }
    inject_all(&sb, &events).await;
    let mut expected = Expected::default();
    expected.add(sub, q0, window.0, 6);
    expected.add(sub, q1, window.0, 3);
    billed_exactly(&sb, &b.bridge.url, &[window], &expected).await;
}

/// The reporting sandbox (no Amplify request limit).
async fn bridge_sandbox_for_search() -> TestSandbox {
    crate::support::bridge_sandbox().await
}

#[actix_rt::test]
async fn with_source_search_a_call_falls_in_the_window_its_timestamp_names() {
    let sb = bridge_sandbox_for_search().await;
    let b = billed(&sb, &reporting_overrides("source = \"search\"", ""), 1).await;
    let windows = closed_windows(3);
    let (events, expected) = boundary_calls("edge", &b.subs[0], &b.quotas, &windows);
    inject_all(&sb, &events).await;
    for window in &windows {
        report(&sb, &b.bridge.url, Some(&span(&[*window]))).await;
    }
    assert_eq!(usage_totals(&sb).await, expected.totals());
    let amounts: Vec<u64> = usage_posts(&sb)
        .await
        .iter()
        .map(|p| whole(&p["body"]["amount"]))
        .collect();
    assert_eq!(amounts, [4, 4, 4], "one record of 4 per window");
}

/// Sets Amplify faults in the sandbox (README "Fault settings").
async fn amplify_faults(sb: &TestSandbox, settings: Value) {
    let status = sb
        .http
        .put(sb.at("/_sandbox/faults/amplify"))
        .json(&settings)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204, "faults {settings}");
}

#[actix_rt::test]
async fn with_source_search_failing_pages_are_read_again_and_the_count_stays_exact() {
    let sb = bridge_sandbox_for_search().await;
    let b = billed(
        &sb,
        &reporting_overrides("source = \"search\"\npage_size = 40", ""),
        2,
    )
    .await;
    let windows = closed_windows(2);
    let w = workload(9301, 700, &b.subs, &b.quotas, &windows, false);
    inject_all(&sb, &w.stream).await;
    // A third of the searches fail (503, time-outs, hang-ups), whatever page they ask for.
    amplify_faults(
        &sb,
        json!({"error_rate": 0.2, "error_status": 503, "hangup_rate": 0.1,
               "path_contains": "/traceability/search", "seed": 17}),
    )
    .await;
    let summaries = report_until_complete(&sb, &b.bridge.url, Some(&span(&windows)), 12).await;
    let units: u64 = summaries
        .iter()
        .map(|s| s["units"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(units, w.expected.units(), "{summaries:#?}");
    assert_eq!(usage_totals(&sb).await, w.expected.totals());
    assert_eq!(usage_posts(&sb).await.len() as u64, w.expected.records());
    let faults = sandbox_json(&sb, "/_sandbox/faults").await;
    let injected = &faults["amplify"]["injected"];
    let failed =
        injected["errors"].as_u64().unwrap_or(0) + injected["hangups"].as_u64().unwrap_or(0);
    assert!(failed > 0, "searches failed on the way: {faults}");
}

#[actix_rt::test]
async fn with_source_search_a_window_of_many_pages_is_read_whole_with_the_tenant_header() {
    let sb = bridge_sandbox_for_search().await;
    // The default page size; the tenant header the reference (§5.2) lists for search.
    let b = billed(
        &sb,
        &reporting_overrides(
            "source = \"search\"",
            "[amplify]\ntenant_id = \"100000142\"",
        ),
        2,
    )
    .await;
    let window = closed_windows(1)[0];
    let w = workload(9401, 3200, &b.subs, &b.quotas, &[window], false);
    assert!(w.stream.len() > 4000, "{}", w.stream.len());
    inject_all(&sb, &w.stream).await;
    forget_requests(&sb).await;
    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(summary["units"], w.expected.units(), "{summary}");
    assert_eq!(summary["unmatched_units"], w.unmatched, "{summary}");
    assert_eq!(usage_totals(&sb).await, w.expected.totals());
    let (searches, _) = traceability_requests(&sb).await;
    assert!(!searches.is_empty());
    for search in &searches {
        assert_eq!(
            search["headers"]["x-axway-tenant-id"], "100000142",
            "X-Axway-Tenant-Id on every search: {}",
            search["headers"]
        );
        assert!(
            search["headers"]["content-type"]
                .as_str()
                .is_some_and(|t| t.starts_with("application/json")),
            "{}",
            search["headers"]
        );
        assert!(search["body"].is_object(), "a JSON body: {search}");
    }
}

#[actix_rt::test]
async fn with_source_search_a_transaction_id_found_in_two_windows_is_counted_once() {
    let sb = bridge_sandbox_for_search().await;
    let b = billed(&sb, &reporting_overrides("source = \"search\"", ""), 1).await;
    let windows = closed_windows(2);
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    let first = txns("twice", sub, quota, windows[0], 4);
    // The same transactions stored again with a time in the next window (an agent's clock
    // corrected between two sends), plus two of that window's own.
    let mut events = first.clone();
    for e in &first[..2] {
        let mut copy = e.clone();
        copy["timestamp"] = json!(windows[1].0 + 123);
        events.push(copy);
    }
    events.extend(txns("own", sub, quota, windows[1], 2));
    inject_all(&sb, &events).await;
    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(
        summary["units"], 6,
        "each transactionId counted once: {summary}"
    );
    let mut totals = BTreeMap::new();
    totals.insert((sub.recurly_id.clone(), quota.add_on()), (2u64, 6u64));
    assert_eq!(usage_totals(&sb).await, totals);
}
