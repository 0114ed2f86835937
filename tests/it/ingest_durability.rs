//! Push ingestion under crashes and hostile input (issue 13): a `serve` process SIGKILLed again
//! and again while batches are in flight still bills exactly what its senders were told it
//! took; a window refuses groups past `[ingest] max_groups_per_window` with `too_many_groups`;
//! no name is ever cut. Written from the contract only: expectations are what the test sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::ingest::{
    INGEST_PATH, REFUSED, array_body, assert_adds_up, bearer, counts, event, push,
    push_binary_config, push_overrides, refusals, sample, txns,
};
use crate::provisioning::metrics;
use crate::reporting::{
    Expected, billed, closed_windows, report_with, reporting_overrides, span, usage_totals,
};
use crate::reporting_cli::{Served, TempDir, serve_with};
use crate::support::{ADMIN_TOKEN, TestSandbox, bridge_sandbox, spawn_bridge, wait_for};

/// Posts one batch; its answer, or `None` when the connection broke (the process died).
async fn try_push(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Option<(u16, Value)> {
    let response = http
        .post(format!("{url}{INGEST_PATH}"))
        .header("Authorization", bearer())
        .header("Content-Type", "application/json")
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.ok()?;
    Some((status, body))
}

/// Batches still to be acknowledged (resent until they are), and those that were.
#[derive(Default)]
struct Ledger {
    pending: VecDeque<(usize, Vec<Value>)>,
    acknowledged: Vec<(usize, Vec<Value>)>,
}

/// Senders taking batches from `ledger` until the process stops answering: an acknowledged
/// batch is recorded, anything else goes back to be sent again (as a real sender would).
fn senders(
    sb: &TestSandbox,
    url: &str,
    ledger: &Arc<Mutex<Ledger>>,
    n: usize,
) -> Vec<actix_rt::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (http, url, ledger) = (sb.http.clone(), url.to_owned(), ledger.clone());
            actix_rt::spawn(async move {
                loop {
                    let Some((id, batch)) = ledger.lock().unwrap().pending.pop_front() else {
                        return;
                    };
                    match try_push(&http, &url, array_body(&batch)).await {
                        Some((200, answer)) => {
                            let (_, accepted, duplicates, _, refused) = counts(&answer);
                            assert_eq!(
                                (accepted + duplicates, refused),
                                (batch.len() as u64, 0),
                                "{answer}"
                            );
                            ledger.lock().unwrap().acknowledged.push((id, batch));
                        }
                        Some((503, _)) => ledger.lock().unwrap().pending.push_back((id, batch)),
                        None => {
                            ledger.lock().unwrap().pending.push_back((id, batch));
                            return;
                        }
                        Some((status, answer)) => panic!("{status}: {answer}"),
                    }
                }
            })
        })
        .collect()
}

#[actix_rt::test]
async fn a_sigkill_loop_during_pushes_bills_exactly_what_was_sent() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 2).await;
    let windows = closed_windows(2);
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let push_config = |listen: &str| push_binary_config(&sb, listen, &state);
    // 160 batches of 40 new calls over two subscriptions, three quotas and two windows.
    let mut expected = Expected::default();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for n in 0..160 {
        let (sub, quota, window) = (&b.subs[n % 2], &b.quotas[n % 3], windows[(n / 3) % 2]);
        let batch = txns(&format!("kill-loop-{n}"), sub, quota, window, 40);
        expected.add(sub, quota, window.0, 40);
        ledger.lock().unwrap().pending.push_back((n, batch));
    }
    const KILLS: usize = 6;
    for round in 0..KILLS {
        let mut served: Served = serve_with(&sb, &dir, push_config).await;
        let before = ledger.lock().unwrap().acknowledged.len();
        let handles = senders(&sb, &served.url, &ledger, 4);
        // Kill while batches are in flight: after a few more were acknowledged.
        wait_for(
            &format!("batches acknowledged in round {round}"),
            Duration::from_secs(30),
            || {
                let done = ledger.lock().unwrap().acknowledged.len();
                async move { (done >= before + 12).then_some(()) }
            },
        )
        .await;
        served.kill();
        for handle in handles {
            handle.await.expect("a sender");
        }
    }
    let last = serve_with(&sb, &dir, push_config).await;
    // Whatever was acknowledged before any of the kills is still held: all duplicates.
    let acknowledged = ledger.lock().unwrap().acknowledged.clone();
    assert!(acknowledged.len() >= KILLS * 12);
    for (id, batch) in &acknowledged {
        let answer = push(&sb, &last.url, batch).await;
        assert_eq!(
            counts(&answer),
            (40, 0, 40, 0, 0),
            "batch {id}, acknowledged before a kill, is kept: {answer}\n{}",
            last.log()
        );
    }
    // The rest is sent until taken.
    for handle in senders(&sb, &last.url, &ledger, 4) {
        handle.await.expect("a sender");
    }
    assert!(ledger.lock().unwrap().pending.is_empty(), "{}", last.log());
    let (status, _, summary) =
        report_with(&sb, &last.url, Some(ADMIN_TOKEN), Some(&span(&windows))).await;
    assert_eq!(status, 200, "{summary}\n{}", last.log());
    assert_eq!(summary["units"], 160 * 40, "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn a_window_past_its_group_limit_refuses_new_groups_as_too_many_groups() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &push_overrides("", "max_groups_per_window = 3")).await;
    let windows = closed_windows(2);
    let (at, other) = (windows[0].0 + 1, windows[1].0 + 1);
    let e = |id: &str, t: i64, resource: &str| {
        event(id, t, Some("sub-a"), None, Some(resource), "Success")
    };
    let batch = [
        e("g-1", at, "r1"),
        e("g-2", at, "r2"),
        e("g-3", at, "r3"),
        e("g-4", at, "r4"),
        e("g-5", at, "r1"),
        e("g-6", at, "r5"),
        e("g-7", other, "r4"),
    ];
    let answer = push(&sb, &bridge.url, &batch).await;
    assert_adds_up(&answer, batch.len());
    assert_eq!(counts(&answer), (7, 5, 0, 0, 2), "{answer}");
    assert_eq!(
        refusals(&answer),
        vec![(3, "too_many_groups".into()), (5, "too_many_groups".into())]
    );
    let listed = &answer["refusals"][0];
    assert_eq!(listed["transactionId"], "g-4", "{answer}");
    assert!(
        listed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("max_groups_per_window")),
        "{answer}"
    );
    // A refused event was not taken: sent again it is refused again, not a duplicate; a known
    // group still takes new calls.
    let again = push(&sb, &bridge.url, &[e("g-4", at, "r4"), e("g-8", at, "r2")]).await;
    assert_eq!(counts(&again), (2, 1, 0, 0, 1), "{again}");
    let text = metrics(&sb, &bridge).await;
    assert_eq!(sample(&text, REFUSED, "reason=\"too_many_groups\""), 3.0);
}

#[actix_rt::test]
async fn long_multibyte_names_are_billed_whole_after_a_crash() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 1).await;
    let windows = closed_windows(1);
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let push_config = |listen: &str| push_binary_config(&sb, listen, &state);
    let mut first = serve_with(&sb, &dir, push_config).await;
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    let billed_calls = txns("whole-name", sub, quota, windows[0], 5);
    let answer = push(&sb, &first.url, &billed_calls).await;
    assert_eq!(counts(&answer), (5, 5, 0, 0, 0), "{answer}");
    // Unmatched calls whose resource names are long and multi-byte: whatever the intake lets
    // in is kept whole, never cut inside a character (which once lost the whole batch).
    let long = "ü".repeat(200);
    let unmatched: Vec<Value> = (0..3)
        .map(|i| {
            event(
                &format!("long-{i}"),
                windows[0].0 + 10,
                Some(&sub.amplify_id),
                None,
                Some(&format!("{long}{i}")),
                "Success",
            )
        })
        .collect();
    let answer = push(&sb, &first.url, &unmatched).await;
    let (_, accepted, _, _, refused) = counts(&answer);
    assert_eq!(accepted + refused, 3, "{answer}");
    first.kill();
    let second = serve_with(&sb, &dir, push_config).await;
    let answer = push(&sb, &second.url, &billed_calls).await;
    assert_eq!(
        counts(&answer),
        (5, 0, 5, 0, 0),
        "{answer}\n{}",
        second.log()
    );
    let answer = push(&sb, &second.url, &unmatched).await;
    assert_eq!(counts(&answer).1, 0, "what was taken is kept: {answer}");
    let (status, _, summary) =
        report_with(&sb, &second.url, Some(ADMIN_TOKEN), Some(&span(&windows))).await;
    assert_eq!(status, 200, "{summary}\n{}", second.log());
    assert_eq!(summary["units"], 5, "{summary}");
    assert_eq!(summary["unmatched_units"], accepted, "{summary}");
    let mut expected = Expected::default();
    expected.add(sub, quota, windows[0].0, 5);
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn a_damaged_ingest_log_stops_serve_naming_the_file_and_offset_and_is_left_as_it_was() {
    let sb = bridge_sandbox().await;
    let windows = closed_windows(1);
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let push_config = |listen: &str| push_binary_config(&sb, listen, &state);
    let mut first = serve_with(&sb, &dir, push_config).await;
    let calls: Vec<Value> = (0..4)
        .map(|i| {
            let at = windows[0].0 + i;
            event(
                &format!("damaged-{i}"),
                at,
                Some("sub-x"),
                None,
                Some("r"),
                "Success",
            )
        })
        .collect();
    assert_eq!(counts(&push(&sb, &first.url, &calls).await).1, 4);
    first.kill();
    let log = dir
        .path("bridge.state.ingest")
        .join(format!("{}.log", windows[0].0));
    let mut bytes = std::fs::read(&log).unwrap();
    // Inside the first record's payload (after the 16-byte file header and 12-byte record
    // header): a bit no crash could have flipped.
    bytes[16 + 12 + 5] ^= 0x04;
    std::fs::write(&log, &bytes).unwrap();

    let config = dir.path("damaged.toml");
    std::fs::write(&config, push_config("127.0.0.1:0")).unwrap();
    let output = dir.path("damaged.out");
    let mut serve = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_billing-bridge"))
            .env("RUST_LOG", "warn")
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(std::fs::File::create(dir.path("damaged.err")).unwrap())
            .spawn()
            .expect("serve starts"),
    );
    let status = wait_for("serve to stop", Duration::from_secs(20), || {
        let exited = serve.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let said = std::fs::read_to_string(dir.path("damaged.err")).unwrap()
        + &std::fs::read_to_string(&output).unwrap();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains(&log.display().to_string()) && said.contains("damaged at byte 16"),
        "the error names the file and the offset: {said}"
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "the log is left as it was"
    );
}

/// A child process killed (and reaped) however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
