//! Gap-free intake (issue 14): with `[intake] watch_topic` set, events made while `serve` was
//! stopped (a deletion, a new subscription) are read from the WatchTopic at start and processed
//! in order, one Amplify call per read, without the full reconcile scan.

use billing_bridge_pipeline::hooks::watch_topic_name;
use serde_json::{Value, json};

use crate::provisioning::{Provider, WAIT, recurly, sandbox_json, seed};
use crate::reporting_cli::{TempDir, binary_config, serve_with};
use crate::support::{bridge_sandbox, wait_for};

const TOPIC_READS: &str = "/amplify/events/management/v1/watchtopics/billing-bridge-watch";

async fn amplify_requests(sb: &crate::support::TestSandbox) -> Vec<Value> {
    sandbox_json(sb, "/_sandbox/requests?upstream=amplify")
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn recurly_state(sb: &crate::support::TestSandbox, id: &str) -> String {
    let (status, body) = recurly(sb, &format!("/subscriptions/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body["state"].as_str().unwrap().to_owned()
}

/// A GET of a whole catalog collection (`/catalog/v1/subscriptions`, `…/productplans`, …) that
/// is not the by-id confirmation of one resource: what a full reconcile scan does.
fn is_full_list(request: &Value) -> bool {
    let path = request["path"].as_str().unwrap_or_default();
    let query = request["query"].as_str().unwrap_or_default();
    let collection = path
        .strip_prefix("/amplify/apis/catalog/v1/")
        .is_some_and(|rest| !rest.contains('/'));
    request["method"] == "GET" && collection && !query.contains("metadata.id")
}

#[actix_rt::test]
async fn events_deleted_and_created_while_serve_was_stopped_are_processed_at_start_in_order_without_a_full_scan()
 {
    let sb = bridge_sandbox().await;
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let topic = watch_topic_name("billing-bridge");
    // The first process reads the topic often (it is created after the process starts); the
    // second only at start, so what it does at start is the start read's doing.
    let intake =
        |every: &str| format!("\n[intake]\nwatch_topic = \"{topic}\"\nwatch_every = \"{every}\"\n");
    let first_intake = intake("1s");
    let mut first = serve_with(&sb, &dir, |listen| {
        binary_config(&sb, listen, &state, &first_intake)
    })
    .await;
    crate::provisioning::hooks_at(&sb, &first.url).await;
    let provider = Provider::new(&sb).await;
    provider.catalog("silver").await;
    provider.activate("silver").await;
    seed(
        &sb,
        json!({"recurly": {"accounts": [{"code": "amplify-team-team-1"}, {"code": "amplify-team-team-2"}]}}),
    )
    .await;
    provider.linked("silver").await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    let approved = provider.approval("sub-1", "approved").await;
    let billed_1 = approved["attributes"]["recurlySubscriptionId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The first process has stored a sequence id: it reads with `sequenceID>N` now.
    wait_for("a read from a stored sequence id", WAIT, || async {
        amplify_requests(&sb)
            .await
            .iter()
            .any(|r| {
                r["path"] == TOPIC_READS
                    && r["query"].as_str().unwrap_or("").contains("sequenceID%3E")
            })
            .then_some(())
    })
    .await;
    first.kill();

    // While it is down: sub-1 is deleted, then sub-2 asks for approval. No webhook is heard.
    provider.delete_subscription("sub-1").await;
    provider
        .subscribe("sub-2", "silver", "team-2", "user-2")
        .await;
    assert_eq!(recurly_state(&sb, &billed_1).await, "active");
    let amplify_mark = amplify_requests(&sb)
        .await
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let recurly_mark = sandbox_json(&sb, "/_sandbox/requests?upstream=recurly")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0);

    let second_intake = intake("1h");
    let second = serve_with(&sb, &dir, |listen| {
        binary_config(&sb, listen, &state, &second_intake)
    })
    .await;
    wait_for("sub-1's billing canceled", WAIT, || async {
        (recurly_state(&sb, &billed_1).await == "canceled").then_some(())
    })
    .await;
    let approved_2 = provider.approval("sub-2", "approved").await;
    let billed_2 = approved_2["attributes"]["recurlySubscriptionId"]
        .as_str()
        .expect("sub-2 linked")
        .to_owned();
    assert_eq!(recurly_state(&sb, &billed_2).await, "active");

    // In order: sub-1's cancel (deleted first) before sub-2's creation, each once.
    let recurly_writes: Vec<String> = sandbox_json(
        &sb,
        &format!("/_sandbox/requests?upstream=recurly&after={recurly_mark}"),
    )
    .await
    .as_array()
    .unwrap()
    .iter()
    .filter(|r| r["method"] != "GET")
    .map(|r| {
        format!(
            "{} {}",
            r["method"].as_str().unwrap(),
            r["path"].as_str().unwrap()
        )
    })
    .collect();
    let cancel = recurly_writes
        .iter()
        .position(|w| w.starts_with("PUT") && w.ends_with(&format!("{billed_1}/cancel")))
        .unwrap_or_else(|| panic!("sub-1 canceled: {recurly_writes:?}"));
    let creates: Vec<usize> = recurly_writes
        .iter()
        .enumerate()
        .filter(|(_, w)| *w == "POST /recurly/subscriptions")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(creates.len(), 1, "sub-2 billed once: {recurly_writes:?}");
    assert!(
        cancel < creates[0],
        "the deletion came first: {recurly_writes:?}"
    );

    // One read at start (the watch interval is an hour), and no full scan.
    let after_restart: Vec<Value> = amplify_requests(&sb)
        .await
        .into_iter()
        .filter(|r| r["seq"].as_u64().unwrap_or(0) > amplify_mark)
        .collect();
    let reads: Vec<&Value> = after_restart
        .iter()
        .filter(|r| r["path"] == TOPIC_READS)
        .collect();
    assert_eq!(
        reads.len(),
        1,
        "one call per read: {reads:?}\n{}",
        second.log()
    );
    let query = reads[0]["query"].as_str().unwrap();
    assert!(
        query.contains("query=sequenceID%3E") && query.contains("sort=sequenceID%2CASC"),
        "{query}"
    );
    let full: Vec<String> = after_restart
        .iter()
        .filter(|r| is_full_list(r))
        .map(|r| format!("{} ?{}", r["path"], r["query"]))
        .collect();
    assert!(full.is_empty(), "no full scan at start: {full:?}");
    let subscription_reads = after_restart
        .iter()
        .filter(|r| {
            r["method"] == "GET" && r["path"].as_str().unwrap_or("").contains("/subscriptions")
        })
        .count();
    assert!(
        subscription_reads >= 2,
        "the provisioners re-read each resource"
    );
}
