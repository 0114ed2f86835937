//! Traffic reporting when things go wrong: two runs at once, a Recurly that fails, throttles and
//! dawdles, and a `serve` process killed (SIGKILL) in the middle of a run. Recurly must end up
//! holding exactly the injected traffic, one record per (subscription, add-on, window).

use std::collections::BTreeMap;
use std::time::Duration;

use billing_bridge_contract::ExchangePolicy;
use serde_json::json;

use crate::provisioning::sandbox_json;
use crate::recurly_conformance::client::assert_recurly_traffic_conforms;
use crate::reporting::{
    Billed, Expected, Quota, billed, clear_faults, closed_windows, grid, inject, record_count,
    recurly_faults, report_until_complete, report_with, reporting_overrides, rfc3339, span,
    usage_list, usage_posts, usage_totals, whole,
};
use crate::reporting_cli::{TempDir, binary_config, report_cli, serve, text};
use crate::support::{ADMIN_TOKEN, TestSandbox, bridge_sandbox, wait_for};

/// Asserts that Recurly lists, for every pair, exactly one record per window with traffic, with
/// the injected units, as a provider listing usage would see it.
async fn one_record_per_window(
    sb: &TestSandbox,
    subs: &[Billed],
    quotas: &[Quota],
    expected: &Expected,
) {
    for sub in subs {
        for quota in quotas {
            let listed = usage_list(sb, &sub.recurly_id, &quota.add_on()).await;
            let mut by_window: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for usage in &listed {
                let tag = usage["merchant_tag"].as_str().unwrap_or_default();
                by_window
                    .entry(tag.to_owned())
                    .or_default()
                    .push(whole(&usage["amount"]));
            }
            let wanted: BTreeMap<String, Vec<u64>> = expected
                .0
                .iter()
                .filter(|((s, a, _), units)| {
                    *s == sub.recurly_id && *a == quota.add_on() && **units > 0
                })
                .map(|((_, _, start), units)| {
                    (
                        format!(
                            "amplify:{} window:{}-{}",
                            sub.amplify_id,
                            start,
                            start + crate::reporting::WINDOW_MS
                        ),
                        vec![*units],
                    )
                })
                .collect();
            assert_eq!(by_window, wanted, "{} {}", sub.name, quota.name);
        }
    }
}

/// Asserts that every usage POST Recurly saw (answered or not) carries an Idempotency-Key, that a
/// key always goes with the same body (a retry repeats the request), and that there are exactly
/// `records` keys: one per record, whatever the retries and restarts.
async fn keys_are_deterministic(sb: &TestSandbox, records: u64) {
    let recorded = sandbox_json(sb, "/_sandbox/requests?upstream=recurly").await;
    let mut bodies: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for post in recorded.as_array().unwrap().iter().filter(|r| {
        r["method"] == "POST" && r["path"].as_str().unwrap_or_default().ends_with("/usage")
    }) {
        let key = post["headers"]["idempotency-key"]
            .as_str()
            .unwrap_or_else(|| panic!("an Idempotency-Key: {post}"));
        let sent = json!({"path": post["path"], "body": post["body"]});
        let first = bodies.entry(key.to_owned()).or_insert_with(|| sent.clone());
        assert_eq!(*first, sent, "one request per key {key}");
    }
    assert_eq!(bodies.len() as u64, records, "{:#?}", bodies.keys());
}

#[actix_rt::test]
async fn two_reports_at_once_bill_each_window_once() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 2).await;
    let windows = closed_windows(3);
    let (events, expected) = grid(&b.subs, &b.quotas, &windows);
    inject(&sb, &events).await;
    // Slow usage answers keep the first run going while the second arrives.
    recurly_faults(
        &sb,
        json!({"latency_ms": 150, "path_contains": "/usage", "methods": ["POST"]}),
    )
    .await;
    let body = span(&windows);
    let (one, two) = tokio::join!(
        report_with(&sb, &b.bridge.url, Some(ADMIN_TOKEN), Some(&body)),
        report_with(&sb, &b.bridge.url, Some(ADMIN_TOKEN), Some(&body)),
    );
    for (status, retry_after, answer) in [&one, &two] {
        match status {
            200 => assert!(answer["windows"].is_array(), "{answer}"),
            409 => {
                assert!(retry_after.is_some(), "409 with Retry-After: {answer}");
                assert!(answer["error"].is_string(), "{answer}");
            }
            other => panic!("a concurrent report answered {other}: {answer}"),
        }
    }
    assert!(
        one.0 == 200 || two.0 == 200,
        "one of the two runs: {one:?} {two:?}"
    );
    clear_faults(&sb).await;
    report_until_complete(&sb, &b.bridge.url, Some(&body), 5).await;
    assert_eq!(usage_totals(&sb).await, expected.totals());
    assert_eq!(usage_posts(&sb).await.len() as u64, expected.records());
    one_record_per_window(&sb, &b.subs, &b.quotas, &expected).await;
}

#[actix_rt::test]
async fn failing_throttling_and_slow_recurly_answers_still_converge_exactly() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("concurrency = 4", ""), 3).await;
    let windows = closed_windows(4);
    let (events, expected) = grid(&b.subs, &b.quotas, &windows);
    inject(&sb, &events).await;
    recurly_faults(
        &sb,
        json!({"error_rate": 0.2, "error_status": 503, "rate_limited_next": 4,
               "rate_limited_rate": 0.05, "retry_after_secs": 1,
               "latency_ms": 20, "latency_jitter_ms": 120, "seed": 11}),
    )
    .await;
    let summaries = report_until_complete(&sb, &b.bridge.url, Some(&span(&windows)), 12).await;
    let recorded = sandbox_json(&sb, "/_sandbox/requests?upstream=recurly").await;
    let answered = |status: u64| {
        recorded
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == status)
            .count()
    };
    assert!(
        answered(503) > 0 && answered(429) > 0,
        "faults were met: {} 503s, {} 429s",
        answered(503),
        answered(429)
    );
    clear_faults(&sb).await;
    let reported: u64 = summaries
        .iter()
        .map(|s| s["records"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(reported, expected.records(), "{summaries:#?}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
    one_record_per_window(&sb, &b.subs, &b.quotas, &expected).await;
    keys_are_deterministic(&sb, expected.records()).await;
    assert_recurly_traffic_conforms(&sb, ExchangePolicy::ClientMustConform).await;
}

/// Starts `serve` on `state`, has it run a normal report with slow usage answers (0.8 s, two at
/// a time) and kills it (SIGKILL) once the first records are in Recurly and the next ones are in
/// flight; returns once those had time to land, faults cleared.
async fn kill_serve_mid_run(
    sb: &TestSandbox,
    dir: &TempDir,
    state: &std::path::Path,
    reporting: &str,
    expected: &Expected,
) {
    let mut first = serve(sb, dir, state, reporting).await;
    recurly_faults(
        sb,
        json!({"latency_ms": 800, "path_contains": "/usage", "methods": ["POST"]}),
    )
    .await;
    // The scheduled kind of run: no bounds, from `start_at` on.
    let run = {
        let (http, url) = (sb.http.clone(), first.url.clone());
        tokio::spawn(async move {
            http.post(format!("{url}/admin/report"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
        })
    };
    wait_for(
        "the first usage records",
        Duration::from_secs(15),
        || async { (record_count(sb).await >= 2).then_some(()) },
    )
    .await;
    first.kill();
    let at_kill = record_count(sb).await;
    assert!(
        at_kill < expected.records(),
        "killed mid-run: {at_kill} of {} records\n{}",
        expected.records(),
        first.log()
    );
    assert!(run.await.unwrap().is_err(), "the run died with the process");
    // The slowed requests in flight at the kill usually still land (Recurly then holds records
    // the killed process never heard about); give them their latency to do so.
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while record_count(sb).await == at_kill && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clear_faults(sb).await;
}

#[actix_rt::test]
async fn a_serve_killed_mid_run_loses_no_window_and_doubles_no_record_after_restart() {
    let sb = bridge_sandbox().await;
    // The in-process bridge provisions (with nothing on disk); the binary reports.
    let b = billed(&sb, &reporting_overrides("", ""), 2).await;
    let windows = closed_windows(4);
    let (events, expected) = grid(&b.subs, &b.quotas, &windows);
    inject(&sb, &events).await;
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let reporting = format!(
        "concurrency = 2\nmax_windows_per_run = 24\nstart_at = \"{}\"",
        rfc3339(windows[0].0)
    );
    kill_serve_mid_run(&sb, &dir, &state, &reporting, &expected).await;

    let second = serve(&sb, &dir, &state, &reporting).await;
    // While `serve` holds the state file, the report command refuses and says where to go.
    let config = dir.path("cli.toml");
    std::fs::write(
        &config,
        binary_config(&sb, "127.0.0.1:0", &state, &reporting),
    )
    .unwrap();
    let (code, _, output) = report_cli(&config, &["--json"]).await;
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("/admin/report"), "{said}");

    let summaries = report_until_complete(&sb, &second.url, None, 5).await;
    assert_eq!(
        usage_totals(&sb).await,
        expected.totals(),
        "{summaries:#?}\n{}",
        second.log()
    );
    one_record_per_window(&sb, &b.subs, &b.quotas, &expected).await;
    // The restarted process sent what the killed one had in flight under the same keys.
    keys_are_deterministic(&sb, expected.records()).await;
    // Nothing is left for a later run.
    let (status, _, last) =
        report_with(&sb, &second.url, Some(ADMIN_TOKEN), Some(&span(&windows))).await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(
        (&last["records"], &last["units"]),
        (&json!(0), &json!(0)),
        "{last}"
    );
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

/// Sets Amplify faults in the sandbox.
async fn amplify_faults(sb: &TestSandbox, settings: serde_json::Value) {
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

/// The traffic summary pages Amplify has answered, by status.
async fn summary_pages(sb: &TestSandbox, status: u64) -> usize {
    sandbox_json(sb, "/_sandbox/requests?upstream=amplify")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["status"] == status
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/traceability/summary"))
        })
        .count()
}

#[actix_rt::test]
async fn a_summary_page_that_fails_never_leaves_part_of_a_window_billed() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("page_size = 1", ""), 1).await;
    let windows = closed_windows(1);
    let (sub, calls) = (&b.subs[0], &b.quotas[0]);
    // Four rows, one a page (alerts, bulk, calls, calls-v2 in group order): the quota `calls`
    // spans the last two pages.
    let (mut events, mut expected) = grid(&b.subs, &b.quotas, &windows);
    events.extend(crate::reporting::spread(
        &sub.amplify_id,
        &sub.name,
        &calls.resources[1],
        windows[0],
        5,
        "Success",
    ));
    expected.add(sub, calls, windows[0].0, 5);
    inject(&sb, &events).await;
    // Slow pages; once the first is in, Traceability fails every later one.
    amplify_faults(
        &sb,
        json!({"latency_ms": 300, "path_contains": "/traceability/summary"}),
    )
    .await;
    let body = span(&windows);
    let run = {
        let (http, url, body) = (sb.http.clone(), b.bridge.url.clone(), body.clone());
        tokio::spawn(async move {
            let answer = http
                .post(format!("{url}/admin/report"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                answer.status().as_u16(),
                answer.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    wait_for("the first page", Duration::from_secs(10), || async {
        (summary_pages(&sb, 200).await >= 1).then_some(())
    })
    .await;
    amplify_faults(
        &sb,
        json!({"error_rate": 1.0, "error_status": 503, "path_contains": "/traceability/summary"}),
    )
    .await;
    let (status, failed) = run.await.unwrap();
    assert_eq!(status, 200, "{failed}");
    let read = summary_pages(&sb, 200).await;
    assert!(
        read < 4 && summary_pages(&sb, 503).await > 0,
        "the run met the outage after {read} pages: {failed}"
    );
    assert_eq!(failed["complete"], false, "{failed}");
    clear_faults(&sb).await;
    report_until_complete(&sb, &b.bridge.url, Some(&body), 3).await;
    assert_eq!(usage_totals(&sb).await, expected.totals());
    one_record_per_window(&sb, &b.subs, &b.quotas, &expected).await;
}

#[actix_rt::test]
async fn after_a_killed_serve_the_report_command_finishes_the_job_exactly() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 2).await;
    let windows = closed_windows(4);
    let (events, expected) = grid(&b.subs, &b.quotas, &windows);
    inject(&sb, &events).await;
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let reporting = format!(
        "concurrency = 2\nmax_windows_per_run = 24\nstart_at = \"{}\"",
        rfc3339(windows[0].0)
    );
    kill_serve_mid_run(&sb, &dir, &state, &reporting, &expected).await;
    // No `serve` holds the state file any more: the command runs on it.
    let config = dir.path("cli.toml");
    std::fs::write(
        &config,
        binary_config(&sb, "127.0.0.1:0", &state, &reporting),
    )
    .unwrap();
    // Exit 1 (a window left incomplete, e.g. by a record still in progress at Recurly) asks for
    // another run; it must come to 0.
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (code, summary, output) = report_cli(&config, &["--json"]).await;
        assert!(
            code == Some(0) || (code == Some(1) && summary["complete"] == false),
            "{}\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        runs.push(summary);
        if code == Some(0) {
            break;
        }
    }
    let last = runs.last().unwrap();
    assert_eq!(last["complete"], true, "{runs:#?}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
    one_record_per_window(&sb, &b.subs, &b.quotas, &expected).await;
    keys_are_deterministic(&sb, expected.records()).await;
}
