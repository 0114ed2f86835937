//! Normal runs (no bounds): the cron schedule, catch-up from the watermark bounded by
//! `max_windows_per_run`, and late traffic, i.e. calls that reach Traceability after their window
//! was reported: with `repoll_windows > 0` a normal run reports them once, as a delta record;
//! with 0 only a backfill does.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use std::time::Duration;

use crate::provisioning::sandbox_json;
use crate::reporting::{
    Expected, billed, calls, closed_windows, grid, inject, report, reporting_overrides, rfc3339,
    span, usage_posts, usage_totals, whole,
};
use crate::support::{TestSandbox, bridge_sandbox, spawn_bridge, wait_for};

/// The usage record created last with a merchant tag ending in `suffix`.
async fn record_tagged(sb: &crate::support::TestSandbox, suffix: &str) -> Vec<Value> {
    usage_posts(sb)
        .await
        .into_iter()
        .filter(|p| {
            p["body"]["merchant_tag"]
                .as_str()
                .is_some_and(|t| t.ends_with(suffix))
        })
        .map(|p| p["body"].clone())
        .collect()
}

#[actix_rt::test]
async fn late_traffic_into_a_reported_window_is_billed_once_as_a_delta_when_repolled() {
    let sb = bridge_sandbox().await;
    let windows = closed_windows(3);
    let overrides = reporting_overrides(
        &format!(
            "repoll_windows = 3\nstart_at = \"{}\"",
            rfc3339(windows[0].0)
        ),
        "",
    );
    let b = billed(&sb, &overrides, 1).await;
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    let mut expected = Expected::default();
    let mut events = calls(sub, quota, windows[1], 4);
    events.extend(calls(sub, quota, windows[2], 2));
    expected.add(sub, quota, windows[1].0, 4);
    expected.add(sub, quota, windows[2].0, 2);
    inject(&sb, &events).await;

    let first = report(&sb, &b.bridge.url, None).await;
    assert_eq!(first["complete"], true, "{first}");
    assert_eq!(first["records"], 2, "{first}");
    assert_eq!(usage_totals(&sb).await, expected.totals());

    // Three calls of the last reported window arrive late.
    inject(&sb, &calls(sub, quota, windows[2], 3)).await;
    let second = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&second["records"], &second["units"]),
        (&json!(1), &json!(3)),
        "{second}"
    );
    let repolled = second["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["start_ms"] == windows[2].0)
        .unwrap_or_else(|| panic!("the late window is polled again: {second}"));
    assert_eq!(repolled["repoll"], true, "{repolled}");
    let tag = format!(
        "amplify:{} window:{}-{}",
        sub.amplify_id, windows[2].0, windows[2].1
    );
    let delta = record_tagged(&sb, " late#1").await;
    assert_eq!(delta.len(), 1, "{delta:#?}");
    assert_eq!(delta[0]["merchant_tag"], format!("{tag} late#1"));
    assert_eq!(whole(&delta[0]["amount"]), 3);
    let at: DateTime<Utc> = delta[0]["usage_timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        windows[2].0 <= at.timestamp_millis() && at.timestamp_millis() < windows[2].1,
        "the delta is dated inside its window: {at}"
    );
    // The delta is its own record: one more record for the pair.
    let mut totals = expected.totals();
    let pair = (sub.recurly_id.clone(), quota.add_on());
    totals.get_mut(&pair).unwrap().0 += 1;
    totals.get_mut(&pair).unwrap().1 += 3;
    assert_eq!(usage_totals(&sb).await, totals);

    // Polled again with nothing new: nothing added.
    let third = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&third["records"], &third["units"]),
        (&json!(0), &json!(0)),
        "{third}"
    );
    // A second late arrival is a second delta.
    inject(&sb, &calls(sub, quota, windows[2], 2)).await;
    let fourth = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&fourth["records"], &fourth["units"]),
        (&json!(1), &json!(2)),
        "{fourth}"
    );
    let delta = record_tagged(&sb, " late#2").await;
    assert_eq!(delta.len(), 1, "{delta:#?}");
    assert_eq!(delta[0]["merchant_tag"], format!("{tag} late#2"));
    totals.get_mut(&pair).unwrap().0 += 1;
    totals.get_mut(&pair).unwrap().1 += 2;
    assert_eq!(usage_totals(&sb).await, totals);
    // Late traffic of a pair the window had none of: one record for it.
    let bulk = &b.quotas[1];
    inject(&sb, &calls(sub, bulk, windows[2], 4)).await;
    let fifth = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&fifth["records"], &fifth["units"]),
        (&json!(1), &json!(4)),
        "{fifth}"
    );
    totals.insert((sub.recurly_id.clone(), bulk.add_on()), (1, 4));
    assert_eq!(usage_totals(&sb).await, totals);
    // Nor does a backfill over the same windows add anything.
    let backfill = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(
        (&backfill["records"], &backfill["units"]),
        (&json!(0), &json!(0)),
        "{backfill}"
    );
    assert_eq!(usage_totals(&sb).await, totals);
}

#[actix_rt::test]
async fn without_repoll_late_traffic_waits_for_a_backfill_which_bills_it_once() {
    let sb = bridge_sandbox().await;
    let windows = closed_windows(2);
    let overrides = reporting_overrides(
        &format!(
            "repoll_windows = 0\nstart_at = \"{}\"",
            rfc3339(windows[0].0)
        ),
        "",
    );
    let b = billed(&sb, &overrides, 1).await;
    let (sub, quota) = (&b.subs[0], &b.quotas[1]);
    let mut expected = Expected::default();
    inject(&sb, &calls(sub, quota, windows[1], 5)).await;
    expected.add(sub, quota, windows[1].0, 5);
    let first = report(&sb, &b.bridge.url, None).await;
    assert_eq!(first["records"], 1, "{first}");
    assert_eq!(usage_totals(&sb).await, expected.totals());

    inject(&sb, &calls(sub, quota, windows[1], 3)).await;
    let second = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&second["records"], &second["units"]),
        (&json!(0), &json!(0)),
        "a normal run does not look back: {second}"
    );
    assert_eq!(usage_totals(&sb).await, expected.totals());

    let backfill = span(&windows[1..]);
    let third = report(&sb, &b.bridge.url, Some(&backfill)).await;
    assert_eq!(
        (&third["records"], &third["units"]),
        (&json!(1), &json!(3)),
        "{third}"
    );
    let delta = record_tagged(&sb, " late#1").await;
    assert_eq!(delta.len(), 1, "{delta:#?}");
    let pair = (sub.recurly_id.clone(), quota.add_on());
    let mut totals = expected.totals();
    totals.get_mut(&pair).unwrap().0 += 1;
    totals.get_mut(&pair).unwrap().1 += 3;
    assert_eq!(usage_totals(&sb).await, totals);
    let again = report(&sb, &b.bridge.url, Some(&backfill)).await;
    assert_eq!(
        (&again["records"], &again["units"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    assert_eq!(usage_totals(&sb).await, totals);
}

/// How many traffic summary pages the bridge has read from Traceability so far.
async fn summary_reads(sb: &TestSandbox) -> usize {
    sandbox_json(sb, "/_sandbox/requests?upstream=amplify")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/traceability/summary"))
        })
        .count()
}

#[actix_rt::test]
async fn the_schedule_bills_closed_windows_unasked_and_later_runs_add_nothing() {
    let sb = bridge_sandbox().await;
    let windows = closed_windows(2);
    // Every two seconds (six fields, seconds first); the last window is polled again each run,
    // so every run reads Traceability.
    let overrides = format!(
        "[reporting]\nschedule = \"*/2 * * * * *\"\nwindow = \"1m\"\ndelay = \"0s\"\n\
         repoll_windows = 1\nstart_at = \"{}\"\n[store]\nstate_file = \"\"\n",
        rfc3339(windows[0].0)
    );
    // Provisioned by a bridge that never reports; the traffic is in before the scheduled bridge
    // starts, so its first run already sees it.
    let b = billed(&sb, &reporting_overrides("", ""), 1).await;
    let (events, expected) = grid(&b.subs, &b.quotas[..2], &windows);
    inject(&sb, &events).await;
    let _scheduled = spawn_bridge(&sb, &overrides).await;
    wait_for(
        "the scheduled runs to bill the traffic",
        Duration::from_secs(12),
        || async { (usage_totals(&sb).await == expected.totals()).then_some(()) },
    )
    .await;
    let reads = summary_reads(&sb).await;
    wait_for(
        "two more scheduled runs",
        Duration::from_secs(8),
        || async { (summary_reads(&sb).await >= reads + 2).then_some(()) },
    )
    .await;
    assert_eq!(usage_totals(&sb).await, expected.totals());
    assert_eq!(usage_posts(&sb).await.len() as u64, expected.records());
}

#[actix_rt::test]
async fn catch_up_takes_at_most_max_windows_per_run_oldest_first() {
    let sb = bridge_sandbox().await;
    let windows = closed_windows(5);
    let overrides = reporting_overrides(
        &format!(
            "max_windows_per_run = 2\nstart_at = \"{}\"",
            rfc3339(windows[0].0)
        ),
        "",
    );
    let b = billed(&sb, &overrides, 1).await;
    let (events, expected) = grid(&b.subs, &b.quotas[..1], &windows);
    inject(&sb, &events).await;
    let reported_by = |summary: &serde_json::Value| -> Vec<i64> {
        summary["windows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["repoll"] != true)
            .map(|w| w["start_ms"].as_i64().unwrap())
            .collect()
    };
    let first = report(&sb, &b.bridge.url, None).await;
    assert_eq!(reported_by(&first), [windows[0].0, windows[1].0], "{first}");
    assert_eq!(first["records"], 2, "{first}");
    let second = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        reported_by(&second),
        [windows[2].0, windows[3].0],
        "{second}"
    );
    let third = report(&sb, &b.bridge.url, None).await;
    let third_windows = reported_by(&third);
    assert_eq!(third_windows.first(), Some(&windows[4].0), "{third}");
    assert!(third_windows.len() <= 2, "{third}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
    assert_eq!(
        third["watermark"]
            .as_str()
            .and_then(|w| w.parse::<DateTime<Utc>>().ok())
            .map(|w| w.timestamp_millis()),
        third["windows"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w["end_ms"].as_i64())
            .max(),
        "the watermark is the end of the last window reported: {third}"
    );
}

#[actix_rt::test]
async fn a_normal_run_leaves_windows_younger_than_the_delay_for_later() {
    let sb = bridge_sandbox().await;
    let windows = closed_windows(8);
    let overrides = format!(
        "[reporting]\nschedule = \"\"\nwindow = \"1m\"\ndelay = \"5m\"\nstart_at = \"{}\"\n\
         [store]\nstate_file = \"\"\n",
        rfc3339(windows[0].0)
    );
    let b = billed(&sb, &overrides, 1).await;
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    // Ended six minutes ago: due. Ended a minute ago: not before another four minutes.
    let (events, expected) = grid(&b.subs[..1], &b.quotas[..1], &windows[1..2]);
    inject(&sb, &events).await;
    inject(&sb, &calls(sub, quota, windows[6], 9)).await;
    let summary = report(&sb, &b.bridge.url, None).await;
    let due = Utc::now().timestamp_millis() - 5 * 60_000;
    let ends: Vec<i64> = summary["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["end_ms"].as_i64().unwrap())
        .collect();
    assert!(ends.contains(&windows[1].1), "{summary}");
    assert!(ends.iter().all(|end| *end <= due), "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
}
