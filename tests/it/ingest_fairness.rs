//! Push ingestion shares fairly (issue 13, docs/ingest.md "Limits"): a spent in-flight byte budget
//! answers 503 with `Retry-After` and takes nothing, a body that does not arrive in time gets 408,
//! `/healthz` and webhooks are answered while big bodies are unzipped, the `bearer` scheme is
//! read in any case and a UTF-8 byte order mark before a body is skipped.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ingest::{
    BATCHES, INGEST_PATH, INGEST_TOKEN, array_body, assert_adds_up, bearer, counts, event, gzip,
    ndjson_body, now_ms, post_array, post_ingest, push, push_overrides, sample, txns,
};
use crate::provisioning::metrics;
use crate::reporting::{Expected, billed, billed_exactly, closed_windows};
use crate::support::{TestSandbox, WEBHOOK_SECRET, bridge_sandbox, spawn_bridge, wait_for};

const INFLIGHT: &str = "billing_bridge_ingest_inflight_bytes";

/// The bytes the batches in progress hold, as `/metrics` says.
async fn inflight(sb: &TestSandbox, bridge: &crate::support::TestBridge) -> f64 {
    sample(&metrics(sb, bridge).await, INFLIGHT, "")
}

/// Opens a connection and sends a request head announcing `length` body bytes, and no body: the
/// bridge reserves room for it and waits.
async fn announce_only(bridge_url: &str, length: usize) -> tokio::net::TcpStream {
    let addr = bridge_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {INGEST_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        bearer()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

fn retry_after(answer: &crate::ingest::Answer) -> u64 {
    answer
        .headers
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After in seconds: {:?}", answer.headers))
}

#[actix_rt::test]
async fn a_spent_budget_answers_503_with_retry_after_takes_nothing_and_a_resend_is_taken_exactly() {
    let sb = bridge_sandbox().await;
    // One batch at every limit needs 16384 + 49152 + 50 x 64 = 68736 bytes.
    let b = billed(
        &sb,
        &push_overrides(
            "",
            "max_body_bytes = 16384\nmax_decoded_bytes = 49152\nmax_events = 50\n\
             max_inflight_bytes = 70000\nbody_timeout = \"60s\"",
        ),
        1,
    )
    .await;
    let windows = closed_windows(2);
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    let plain = txns("budget-plain", sub, q0, windows[0], 12);
    let zipped_events = txns("budget-gzip", sub, q1, windows[1], 20);
    let zipped = gzip(&array_body(&zipped_events));
    assert!(array_body(&plain).len() > 70_000 - 4 * 16_384);
    assert!(zipped.len() < 70_000 - 4 * 16_384);

    // Four senders announce bodies at the size limit and send nothing more: they hold 65536.
    let mut hogs = Vec::new();
    for _ in 0..4 {
        hogs.push(announce_only(&b.bridge.url, 16_384).await);
    }
    wait_for(
        "the announced bodies' room reserved",
        Duration::from_secs(20),
        || async { (inflight(&sb, &b.bridge).await == 65_536.0).then_some(()) },
    )
    .await;

    // A body larger than what is left is refused before it is read...
    let answer = post_array(&sb, &b.bridge.url, &plain).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert!(retry_after(&answer) >= 1);
    assert!(
        answer.error().contains("max_inflight_bytes"),
        "{}",
        answer.text
    );
    // ...and so is a small gzip body, whose room for unzipping is reserved with it.
    let answer = post_ingest(
        &sb,
        &b.bridge.url,
        Some(&bearer()),
        Some("gzip"),
        Some("application/json"),
        zipped.clone(),
    )
    .await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert!(retry_after(&answer) >= 1);
    let text = metrics(&sb, &b.bridge).await;
    assert_eq!(
        sample(&text, BATCHES, "status=\"over_budget\""),
        2.0,
        "{text}"
    );
    assert_eq!(sample(&text, BATCHES, "status=\"ok\""), 0.0, "{text}");
    assert_eq!(
        sample(&text, INFLIGHT, ""),
        65_536.0,
        "the refused batches hold nothing: {text}"
    );

    // The senders go away mid-body: what they held is given back.
    drop(hogs);
    wait_for("the budget given back", Duration::from_secs(20), || async {
        (inflight(&sb, &b.bridge).await == 0.0).then_some(())
    })
    .await;

    // Nothing of the refused batches was taken: sent again, every event is new.
    let answer = push(&sb, &b.bridge.url, &plain).await;
    assert_eq!(counts(&answer), (12, 12, 0, 0, 0), "{answer}");
    let answer = post_ingest(
        &sb,
        &b.bridge.url,
        Some(&bearer()),
        Some("gzip"),
        Some("application/json"),
        zipped,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(counts(&answer.body), (20, 20, 0, 0, 0), "{}", answer.text);
    assert_eq!(inflight(&sb, &b.bridge).await, 0.0);

    let mut expected = Expected::default();
    expected.add(sub, q0, windows[0].0, 12);
    expected.add(sub, q1, windows[1].0, 20);
    billed_exactly(&sb, &b.bridge.url, &windows, &expected).await;
}

#[actix_rt::test]
async fn a_body_trickled_past_the_body_timeout_gets_408_and_nothing_is_taken() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &push_overrides("", "body_timeout = \"1s\"")).await;
    let at = now_ms() - 60_000;
    let events: Vec<Value> = (0..3)
        .map(|i| {
            event(
                &format!("trickle-{i}"),
                at,
                Some("sub-t"),
                None,
                Some("r"),
                "Success",
            )
        })
        .collect();
    let body = array_body(&events);

    // One byte every 100 ms: the whole body would take minutes.
    let addr = bridge.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {INGEST_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        bearer(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let waited = started.elapsed();
    trickle.abort();
    assert!(read.is_ok(), "no answer within 20 s to a trickled body");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(15),
        "408 after {waited:?} with a 1 s body_timeout"
    );

    let text = metrics(&sb, &bridge).await;
    assert_eq!(sample(&text, BATCHES, "status=\"timeout\""), 1.0, "{text}");
    assert_eq!(sample(&text, INFLIGHT, ""), 0.0, "{text}");
    // Nothing of it was taken: the same events sent at a normal pace are all new.
    let answer = push(&sb, &bridge.url, &events).await;
    assert_eq!(counts(&answer), (3, 3, 0, 0, 0), "{answer}");
}

#[actix_rt::test]
async fn the_bearer_scheme_is_read_in_any_letter_case_and_a_utf8_bom_is_skipped() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    let mut expected = Expected::default();
    let mut sent = 0;
    for (n, scheme) in ["bearer", "BEARER", "bEaReR", "Bearer  "]
        .iter()
        .enumerate()
    {
        let events = txns(&format!("case-{n}"), sub, quota, window, 2);
        let answer = post_ingest(
            &sb,
            &b.bridge.url,
            Some(&format!("{scheme} {INGEST_TOKEN}")),
            None,
            Some("application/json"),
            array_body(&events),
        )
        .await;
        assert_eq!(answer.status, 200, "{scheme:?}: {}", answer.text);
        assert_eq!(counts(&answer.body), (2, 2, 0, 0, 0), "{}", answer.text);
        sent += 2;
    }
    for auth in [
        format!("bearer{INGEST_TOKEN}"),
        format!("bearers {INGEST_TOKEN}"),
        format!("basic {INGEST_TOKEN}"),
    ] {
        let answer = post_ingest(
            &sb,
            &b.bridge.url,
            Some(&auth),
            None,
            Some("application/json"),
            array_body(&txns("never", sub, quota, window, 1)),
        )
        .await;
        assert_eq!(answer.status, 401, "{auth:?}: {}", answer.text);
    }

    // A byte order mark before an array, before NDJSON, and inside a gzip body.
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let array = txns("bom-array", sub, quota, window, 3);
    let lines = txns("bom-ndjson", sub, quota, window, 4);
    let zipped = txns("bom-gzip", sub, quota, window, 5);
    let bodies = [
        (None, [BOM, &array_body(&array)].concat(), 3),
        (None, [BOM, &ndjson_body(&lines)].concat(), 4),
        (
            Some("gzip"),
            gzip(&[BOM, &ndjson_body(&zipped)].concat()),
            5,
        ),
    ];
    for (encoding, body, n) in bodies {
        let answer = post_ingest(&sb, &b.bridge.url, Some(&bearer()), encoding, None, body).await;
        assert_eq!(answer.status, 200, "{encoding:?}: {}", answer.text);
        assert_adds_up(&answer.body, n);
        assert_eq!(counts(&answer.body).1, n as u64, "{}", answer.text);
        sent += n as u64;
    }
    // Only a mark at the very start is skipped: one after blank space is not JSON.
    let answer = post_ingest(
        &sb,
        &b.bridge.url,
        Some(&bearer()),
        None,
        None,
        [b" ", BOM, &array_body(&array)].concat(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(counts(&answer.body), (1, 0, 0, 0, 1), "{}", answer.text);

    expected.add(sub, quota, window.0, sent);
    billed_exactly(&sb, &b.bridge.url, &[window], &expected).await;
}

/// A gzip body of several members: `events` as NDJSON, then `blank_mb` members of a MiB of blank
/// lines each, which unzip to much and cost the sender little.
fn padded_gzip(events: &[Value], blank_mb: usize) -> Vec<u8> {
    let blank: Vec<u8> = (0..1 << 20)
        .map(|i| if i % 1024 == 1023 { b'\n' } else { b' ' })
        .collect();
    let blank = gzip(&blank);
    let mut body = gzip(&ndjson_body(events));
    for _ in 0..blank_mb {
        body.extend_from_slice(&blank);
    }
    body
}

#[actix_rt::test]
async fn healthz_and_webhooks_are_answered_while_big_bodies_are_unzipped() {
    let sb = bridge_sandbox().await;
    // One request thread (spawn_bridge) and one parse thread: were unzipping done on the request
    // thread, every probe below would wait for a whole body.
    let bridge = spawn_bridge(&sb, &push_overrides("", "parse_threads = 1")).await;
    let at = now_ms() - 60_000;
    let events: Vec<Value> = (0..50)
        .map(|i| {
            event(
                &format!("big-{i}"),
                at,
                Some("sub-big"),
                None,
                Some("r"),
                "Success",
            )
        })
        .collect();
    let body = padded_gzip(&events, 96);
    let url = format!("{}{INGEST_PATH}", bridge.url);

    let senders: Vec<_> = (0..3)
        .map(|_| {
            let (http, url, body) = (sb.http.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..2 {
                    let answer = http
                        .post(&url)
                        .header("Authorization", bearer())
                        .header("Content-Encoding", "gzip")
                        .timeout(Duration::from_secs(120))
                        .body(body.clone())
                        .send()
                        .await
                        .expect("a big batch answered");
                    statuses.push(answer.status().as_u16());
                }
                statuses
            })
        })
        .collect();

    // Probe until every sender has its answers; a probe that had to wait for a body would take
    // as long as unzipping it.
    let mut slowest = (Duration::ZERO, "");
    let mut probes_while_busy = 0;
    let webhook = json!({"id": "probe", "type": "ResourceUpdated"}).to_string();
    // A fresh connection per probe: accepting it is part of being responsive, and no kept-alive
    // connection can be closed under a probe.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    while !senders.iter().all(|s| s.is_finished()) {
        let busy = inflight(&sb, &bridge).await > 0.0;
        let started = Instant::now();
        let health = probe
            .get(format!("{}/healthz", bridge.url))
            .send()
            .await
            .expect("healthz answered");
        assert_eq!(health.status(), 200);
        let health_took = started.elapsed();
        let started = Instant::now();
        let hook = probe
            .post(bridge.webhook_url())
            .header("Authorization", WEBHOOK_SECRET)
            .header("Content-Type", "application/json")
            .body(webhook.clone())
            .send()
            .await
            .expect("webhook answered");
        assert!(hook.status().as_u16() < 500, "{}", hook.status());
        let hook_took = started.elapsed();
        if busy {
            probes_while_busy += 1;
            slowest = slowest
                .max((health_took, "healthz"))
                .max((hook_took, "webhook"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses = Vec::new();
    for sender in senders {
        statuses.extend(sender.await.unwrap());
    }
    eprintln!(
        "big bodies answered {statuses:?}; {probes_while_busy} probes while busy, the slowest {} in {:?}",
        slowest.1, slowest.0
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        probes_while_busy >= 3,
        "only {probes_while_busy} probes while bodies were in progress"
    );
    assert!(
        slowest.0 < Duration::from_secs(1),
        "{} took {:?} while bodies were unzipped",
        slowest.1,
        slowest.0
    );
    wait_for("the budget given back", Duration::from_secs(20), || async {
        (inflight(&sb, &bridge).await == 0.0).then_some(())
    })
    .await;
}
