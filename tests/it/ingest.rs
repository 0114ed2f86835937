//! Push ingestion end to end (docs/ingest.md, issue 7): `POST /ingest/transactions` with
//! `[reporting] source = "push"` takes raw `transactionSummary` events (Amplify reference §5.3)
//! from gateways and log pipelines; the usual reporting run bills each `transactionId` exactly
//! once. Written from the contract only: every expectation below is what the test sent, never
//! what the bridge says it did.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::provisioning::metrics;
use crate::reporting::{
    Billed, Expected, Quota, billed, billed_exactly, closed_windows, metric_sum, report,
    report_with, reporting_overrides, rfc3339, span, usage_posts, usage_totals, whole,
};
use crate::reporting_cli::{TempDir, binary_config, serve_with};
use crate::support::{ADMIN_TOKEN, Redis, TestSandbox, bridge_sandbox, spawn_bridge};

/// The `[ingest] token` of every push bridge here; it must never show anywhere.
pub const INGEST_TOKEN: &str = "ingest-token-5d1f0c-never-shown";

/// The configuration of a `serve` (see `reporting_cli::binary_config`) that bills pushed
/// transactions, its state in `state`.
pub fn push_binary_config(sb: &TestSandbox, listen: &str, state: &std::path::Path) -> String {
    crate::reporting_cli::binary_config(sb, listen, state, "source = \"push\"")
        + &format!("[ingest]\ntoken = \"{INGEST_TOKEN}\"\n")
}
pub const INGEST_PATH: &str = "/ingest/transactions";
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// Bridge overrides for push ingestion on top of `reporting_overrides` (on-demand runs,
/// one-minute windows, no delay, nothing on disk): `reporting` adds `[reporting]` lines,
/// `ingest` adds `[ingest]` lines after the token.
pub fn push_overrides(reporting: &str, ingest: &str) -> String {
    reporting_overrides(
        &format!("source = \"push\"\n{reporting}"),
        &format!("[ingest]\ntoken = \"{INGEST_TOKEN}\"\n{ingest}"),
    )
}

pub fn bearer() -> String {
    format!("Bearer {INGEST_TOKEN}")
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// One `transactionSummary` event in the reference §5.3 shape: transaction `id` at `at` (epoch
/// ms), of Amplify subscription `sub_id` (no `consumerDetails` at all when `None`), naming quota
/// `quota_id` and asset resource `resource` when given, with `status`.
pub fn event(
    id: &str,
    at: i64,
    sub_id: Option<&str>,
    quota_id: Option<&str>,
    resource: Option<&str>,
    status: &str,
) -> Value {
    let mut summary = json!({
        "status": status,
        "statusDetail": if status == "Success" { "200" } else { "500" },
        "duration": 37,
        "team": {"id": "provider-team"},
        "proxy": {"id": "remoteApiId_weather", "name": "weather", "revision": 1},
        "entryPoint": {"type": "http", "method": "GET", "path": "/v1/forecast", "host": "api.weather.example"},
        "application": {"id": "remoteAppId_app-1", "name": "app-1"}
    });
    if let Some(sub) = sub_id {
        summary["consumerDetails"] = json!({
            "subscription": {"id": sub, "name": format!("name-of-{sub}")},
            "application": {"id": "consumer-app", "name": "Consumer app", "consumerOrgId": "org-9"}
        });
    }
    if let Some(quota) = quota_id {
        summary["quota"] = json!({"id": quota});
    }
    if let Some(resource) = resource {
        summary["assetResource"] = json!({"id": format!("asset-{resource}"), "name": resource});
    }
    json!({"version": "1.0", "timestamp": at, "transactionId": id, "environmentId": "env-1",
           "tenantId": "100000142", "type": "transactionSummary", "transactionSummary": summary})
}

/// A successful call of billed `sub` on `quota`, naming both the quota id and its resource.
pub fn txn(id: &str, sub: &Billed, quota: &Quota, at: i64) -> Value {
    event(
        id,
        at,
        Some(sub.amplify_id.as_str()),
        Some(quota.id.as_str()),
        Some(quota.resource.as_str()),
        "Success",
    )
}

/// `n` successful calls of `sub` on `quota` spread over `window`, ids `{prefix}-{k}`.
pub fn txns(prefix: &str, sub: &Billed, quota: &Quota, window: (i64, i64), n: usize) -> Vec<Value> {
    (0..n)
        .map(|k| {
            let at = window.0 + (k as i64 * (window.1 - window.0)) / n.max(1) as i64;
            txn(&format!("{prefix}-{k}"), sub, quota, at)
        })
        .collect()
}

/// A `transactionEvent` (reference §5.2: the other event type Traceability holds).
pub fn transaction_event(id: &str, at: i64) -> Value {
    json!({"version": "1.0", "timestamp": at, "transactionId": id, "environmentId": "env-1",
           "type": "transactionEvent",
           "transactionEvent": {"id": format!("leg-{id}"), "parentId": null, "source": "gateway",
                                "destination": "backend", "direction": "outbound", "status": "Pass",
                                "protocol": {"type": "http", "uri": "/v1/forecast", "method": "GET",
                                             "status": 200}}})
}

pub fn array_body(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(events).unwrap()
}

/// NDJSON: one event a line, with a trailing newline.
pub fn ndjson_body(events: &[Value]) -> Vec<u8> {
    let mut body = Vec::new();
    for event in events {
        body.extend(serde_json::to_vec(event).unwrap());
        body.push(b'\n');
    }
    body
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// What the bridge answered a batch.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Answer {
    pub fn error(&self) -> String {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "a JSON {{\"error\": …}} body: {} {}",
                    self.status, self.text
                )
            })
            .to_owned()
    }
}

/// `POST {bridge}/ingest/transactions` with `Authorization: auth` (none when `None`), the
/// `Content-Encoding` and `Content-Type` given, and `body` as is.
pub async fn post_ingest(
    sb: &TestSandbox,
    bridge_url: &str,
    auth: Option<&str>,
    encoding: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut request = sb.http.post(format!("{bridge_url}{INGEST_PATH}"));
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    if let Some(encoding) = encoding {
        request = request.header("Content-Encoding", encoding);
    }
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    let response = request.body(body).send().await.expect("ingest request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        text,
        body,
    }
}

/// Posts `body` with the right token; it must be taken (200) and its counts add up to `received`.
pub async fn push_raw(
    sb: &TestSandbox,
    bridge_url: &str,
    encoding: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
    received: usize,
) -> Value {
    let answer = post_ingest(
        sb,
        bridge_url,
        Some(&bearer()),
        encoding,
        content_type,
        body,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_adds_up(&answer.body, received);
    answer.body
}

/// `events` as a JSON array from the authenticated sender, answered whatever its status.
pub async fn post_array(sb: &TestSandbox, bridge_url: &str, events: &[Value]) -> Answer {
    post_ingest(
        sb,
        bridge_url,
        Some(&bearer()),
        None,
        Some("application/json"),
        array_body(events),
    )
    .await
}

/// `events` as a JSON array, answered 200 with every event accounted for.
pub async fn push(sb: &TestSandbox, bridge_url: &str, events: &[Value]) -> Value {
    push_raw(
        sb,
        bridge_url,
        None,
        Some("application/json"),
        array_body(events),
        events.len(),
    )
    .await
}

/// `events` as NDJSON.
pub async fn push_ndjson(sb: &TestSandbox, bridge_url: &str, events: &[Value]) -> Value {
    push_raw(
        sb,
        bridge_url,
        None,
        Some("application/x-ndjson"),
        ndjson_body(events),
        events.len(),
    )
    .await
}

/// (received, accepted, duplicates, ignored, refused) of an answer.
pub fn counts(answer: &Value) -> (u64, u64, u64, u64, u64) {
    let field = |name: &str| {
        answer[name]
            .as_u64()
            .unwrap_or_else(|| panic!("a count `{name}` in the answer: {answer}"))
    };
    (
        field("received"),
        field("accepted"),
        field("duplicates"),
        field("ignored"),
        field("refused"),
    )
}

/// `received` is the batch's size and every event has exactly one outcome.
pub fn assert_adds_up(answer: &Value, received: usize) {
    let (r, a, d, i, f) = counts(answer);
    assert_eq!(r, received as u64, "received: {answer}");
    assert_eq!(
        a + d + i + f,
        r,
        "the outcomes add up to received: {answer}"
    );
    let listed = answer["refusals"]
        .as_array()
        .unwrap_or_else(|| panic!("a refusals list: {answer}"));
    assert_eq!(
        listed.len() as u64,
        f.min(100),
        "every refusal listed, at most 100: {answer}"
    );
}

/// (index, reason) of every listed refusal, in order of index.
pub fn refusals(answer: &Value) -> Vec<(u64, String)> {
    let mut listed: Vec<(u64, String)> = answer["refusals"]
        .as_array()
        .unwrap_or_else(|| panic!("a refusals list: {answer}"))
        .iter()
        .map(|r| {
            (
                r["index"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("an index: {r}")),
                r["reason"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a reason: {r}"))
                    .to_owned(),
            )
        })
        .collect();
    listed.sort();
    listed
}

/// Sends only the head of a POST announcing a 10 MB body (none follows) with the header line
/// `auth` ("" for none); the first bytes of the answer, which must come without the body.
pub async fn head_only(bridge_url: &str, auth: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = bridge_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {INGEST_PATH} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: 10000000\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer without the body (auth {auth:?})"))
        .expect("an answer");
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// Usage records the bridge created whose merchant tag ends with `suffix`.
pub async fn records_tagged(sb: &TestSandbox, suffix: &str) -> Vec<Value> {
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

/// The value of one sample, 0 when absent.
pub fn sample(text: &str, name: &str, labels: &str) -> f64 {
    metric_sum(text, name, labels)
}

pub const TRANSACTIONS: &str = "billing_bridge_ingest_transactions_total";
pub const REFUSED: &str = "billing_bridge_ingest_refused_transactions_total";
pub const BATCHES: &str = "billing_bridge_ingest_batches_total";
pub const DURATION: &str = "billing_bridge_ingest_batch_duration_seconds";

/// A small deterministic generator (splitmix64), so a failing workload can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication and the switch

#[actix_rt::test]
async fn ingest_takes_only_its_bearer_token_and_a_refused_batch_is_not_taken() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    let events = txns("auth", sub, quota, window, 3);
    let wrong = [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(INGEST_TOKEN.to_owned()),
        Some(format!("Basic {INGEST_TOKEN}")),
        Some(format!("Bearer {INGEST_TOKEN}x")),
        Some(format!(
            "Bearer {}",
            &INGEST_TOKEN[..INGEST_TOKEN.len() - 1]
        )),
        Some(format!("Bearer {ADMIN_TOKEN}")),
        Some("Bearer ".to_owned()),
    ];
    for auth in &wrong {
        let answer = post_ingest(
            &sb,
            &b.bridge.url,
            auth.as_deref(),
            None,
            Some("application/json"),
            array_body(&events),
        )
        .await;
        assert_eq!(
            answer.status, 401,
            "Authorization {auth:?}: {}",
            answer.text
        );
        answer.error();
        assert!(
            !answer.text.contains(INGEST_TOKEN),
            "a 401 shows the token: {}",
            answer.text
        );
    }
    // The body of an unauthorised request is not read: the answer comes without it.
    for auth in [
        "".to_owned(),
        "Authorization: Bearer wrong-token\r\n".to_owned(),
    ] {
        let answer = head_only(&b.bridge.url, &auth).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{auth:?}: {answer}");
    }
    let text = metrics(&sb, &b.bridge).await;
    assert_eq!(
        sample(&text, BATCHES, "status=\"unauthorized\""),
        wrong.len() as f64 + 2.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, TRANSACTIONS, ""),
        0.0,
        "nothing counted: {text}"
    );
    // Nothing of the refused batches was taken: the same ids are new to the right token.
    let answer = push(&sb, &b.bridge.url, &events).await;
    assert_eq!(counts(&answer), (3, 3, 0, 0, 0), "{answer}");
    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(summary["units"], 3, "{summary}");
    let mut expected = Expected::default();
    expected.add(sub, quota, window.0, 3);
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn with_another_source_ingest_is_off_and_takes_nothing() {
    let sb = bridge_sandbox().await;
    let ingest = format!("[ingest]\ntoken = \"{INGEST_TOKEN}\"");
    // The default source (summary) with a token configured all the same.
    let b = billed(&sb, &reporting_overrides("", &ingest), 1).await;
    let search = spawn_bridge(&sb, &reporting_overrides("source = \"search\"", &ingest)).await;
    let summary_explicit =
        spawn_bridge(&sb, &reporting_overrides("source = \"summary\"", &ingest)).await;
    let window = closed_windows(1)[0];
    let events = txns("off", &b.subs[0], &b.quotas[0], window, 4);
    for bridge in [&b.bridge, &search, &summary_explicit] {
        for body in [array_body(&events), ndjson_body(&events)] {
            let answer = post_ingest(
                &sb,
                &bridge.url,
                Some(&bearer()),
                None,
                Some("application/json"),
                body,
            )
            .await;
            assert_eq!(answer.status, 409, "{}", answer.text);
            assert!(
                answer.error().starts_with("push ingestion is off"),
                "{}",
                answer.text
            );
            assert!(!answer.text.contains(INGEST_TOKEN), "{}", answer.text);
        }
        let text = metrics(&sb, bridge).await;
        assert_eq!(sample(&text, BATCHES, "status=\"off\""), 2.0, "{text}");
        assert_eq!(sample(&text, TRANSACTIONS, ""), 0.0, "{text}");
    }
    // Nothing was taken: a report bills nothing (Traceability holds no traffic either).
    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(
        (&summary["records"], &summary["units"]),
        (&json!(0), &json!(0)),
        "{summary}"
    );
    assert!(usage_totals(&sb).await.is_empty());
}

/// `billing-bridge serve --config FILE` with `env`, its output in `log`.
fn serve_process(
    config: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    crate::reporting_cli::binary()
        .envs(env.iter().copied())
        .args(["serve", "--config"])
        .arg(config)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("serve starts")
}

#[actix_rt::test]
async fn push_needs_an_ingest_token_from_the_file_or_the_environment() {
    let sb = bridge_sandbox().await;
    let dir = TempDir::new();
    for (name, ingest) in [("none", ""), ("empty", "[ingest]\ntoken = \"\"\n")] {
        let config = dir.path(&format!("{name}.toml"));
        let text = binary_config(
            &sb,
            "127.0.0.1:0",
            &dir.path(&format!("{name}.state")),
            "source = \"push\"",
        );
        std::fs::write(&config, text + ingest).unwrap();
        let log = dir.path(&format!("{name}.log"));
        let mut child = serve_process(&config, &log, &[]);
        let exited = crate::support::wait_for(
            "serve to refuse a push configuration without a token",
            std::time::Duration::from_secs(15),
            || {
                let status = child.try_wait().expect("try_wait");
                async move { status }
            },
        )
        .await;
        assert!(!exited.success(), "{name}: {exited}");
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            output.contains("token"),
            "{name}: the refusal names the missing token:\n{output}"
        );
    }

    // The token from BRIDGE_INGEST__TOKEN.
    let mut served = crate::reporting_cli::serve_with_env(
        &sb,
        &dir,
        |listen| binary_config(&sb, listen, &dir.path("env.state"), "source = \"push\""),
        &[("BRIDGE_INGEST__TOKEN", INGEST_TOKEN)],
    )
    .await;
    let at = closed_windows(1)[0].0 + 1;
    let events = [event(
        "env-0",
        at,
        Some("sub-a"),
        None,
        Some("silver/calls"),
        "Success",
    )];
    let answer = push(&sb, &served.url, &events).await;
    assert_eq!(counts(&answer), (1, 1, 0, 0, 0), "{answer}");
    let answer = post_ingest(
        &sb,
        &served.url,
        Some("Bearer wrong"),
        None,
        None,
        array_body(&events),
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    served.kill();
}

// ---------------------------------------------------------------------------------------------
// Bodies and encodings

#[actix_rt::test]
async fn json_arrays_and_ndjson_are_both_taken_and_billed() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 2).await;
    let windows = closed_windows(2);
    let (s1, s2) = (&b.subs[0], &b.subs[1]);
    let (q0, q1) = (&b.quotas[0], &b.quotas[1]);
    let mut expected = Expected::default();

    // A JSON array, led by blank space: the first non-blank byte decides.
    let first = txns("array", s1, q0, windows[0], 5);
    let mut body = b" \r\n\t\n".to_vec();
    body.extend(array_body(&first));
    let answer = push_raw(&sb, &b.bridge.url, None, Some("application/json"), body, 5).await;
    assert_eq!(counts(&answer), (5, 5, 0, 0, 0), "{answer}");
    expected.add(s1, q0, windows[0].0, 5);

    // NDJSON with blank lines (skipped), CRLF line ends and no newline after the last line.
    let second = txns("ndjson", s2, q1, windows[1], 4);
    let lines: Vec<String> = second.iter().map(|e| e.to_string()).collect();
    let body = format!(
        "\n{}\r\n\r\n{}\n   \n{}\n\n{}",
        lines[0], lines[1], lines[2], lines[3]
    );
    let answer = push_raw(
        &sb,
        &b.bridge.url,
        None,
        Some("application/x-ndjson"),
        body.into_bytes(),
        4,
    )
    .await;
    assert_eq!(counts(&answer), (4, 4, 0, 0, 0), "{answer}");
    expected.add(s2, q1, windows[1].0, 4);

    // NDJSON sent without a Content-Type, and one with a single line.
    let third = txns("bare", s1, q1, windows[1], 3);
    let answer = push_raw(&sb, &b.bridge.url, None, None, ndjson_body(&third), 3).await;
    assert_eq!(counts(&answer), (3, 3, 0, 0, 0), "{answer}");
    expected.add(s1, q1, windows[1].0, 3);
    let single = txns("single", s2, q0, windows[0], 1);
    let answer = push_ndjson(&sb, &b.bridge.url, &single).await;
    assert_eq!(counts(&answer), (1, 1, 0, 0, 0), "{answer}");
    expected.add(s2, q0, windows[0].0, 1);

    // An empty array is a batch of nothing.
    let answer = push(&sb, &b.bridge.url, &[]).await;
    assert_eq!(counts(&answer), (0, 0, 0, 0, 0), "{answer}");

    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["units"], expected.units(), "{summary}");
    assert_eq!(summary["records"], expected.records(), "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn gzip_and_identity_are_taken_other_encodings_and_broken_gzip_are_refused_whole() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, q0, q1, q2) = (&b.subs[0], &b.quotas[0], &b.quotas[1], &b.quotas[2]);
    let mut expected = Expected::default();

    let zipped_array = txns("gz-array", sub, q0, window, 6);
    let answer = push_raw(
        &sb,
        &b.bridge.url,
        Some("gzip"),
        Some("application/json"),
        gzip(&array_body(&zipped_array)),
        6,
    )
    .await;
    assert_eq!(counts(&answer), (6, 6, 0, 0, 0), "{answer}");
    expected.add(sub, q0, window.0, 6);

    let zipped_lines = txns("gz-ndjson", sub, q1, window, 4);
    let answer = push_raw(
        &sb,
        &b.bridge.url,
        Some("gzip"),
        Some("application/x-ndjson"),
        gzip(&ndjson_body(&zipped_lines)),
        4,
    )
    .await;
    assert_eq!(counts(&answer), (4, 4, 0, 0, 0), "{answer}");
    expected.add(sub, q1, window.0, 4);

    let plain = txns("identity", sub, q2, window, 2);
    let answer = push_raw(
        &sb,
        &b.bridge.url,
        Some("identity"),
        Some("application/json"),
        array_body(&plain),
        2,
    )
    .await;
    assert_eq!(counts(&answer), (2, 2, 0, 0, 0), "{answer}");
    expected.add(sub, q2, window.0, 2);

    // Refused whole: these events are sent again properly at the end and must be new then.
    let refused = txns("refused", sub, q2, window, 3);
    for encoding in ["br", "deflate", "zstd", "compress"] {
        let answer = post_ingest(
            &sb,
            &b.bridge.url,
            Some(&bearer()),
            Some(encoding),
            Some("application/json"),
            array_body(&refused),
        )
        .await;
        assert_eq!(
            answer.status, 415,
            "Content-Encoding {encoding}: {}",
            answer.text
        );
    }
    let zipped = gzip(&array_body(&refused));
    let truncated = zipped[..zipped.len() / 2].to_vec();
    let mut bad_checksum = zipped.clone();
    let n = bad_checksum.len();
    // The trailer's CRC-32 (the 8 last bytes are CRC-32 and size).
    bad_checksum[n - 8] ^= 0xff;
    let mut garbage = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0xff];
    garbage.extend(b"this is not deflate data at all, not at all");
    for (what, body) in [
        ("not gzip at all", array_body(&refused)),
        ("truncated gzip", truncated),
        ("a wrong CRC-32", bad_checksum),
        ("a gzip header over garbage", garbage),
    ] {
        let answer = post_ingest(
            &sb,
            &b.bridge.url,
            Some(&bearer()),
            Some("gzip"),
            Some("application/json"),
            body,
        )
        .await;
        assert_eq!(answer.status, 400, "{what}: {}", answer.text);
        answer.error();
    }
    let answer = push(&sb, &b.bridge.url, &refused).await;
    assert_eq!(
        counts(&answer),
        (3, 3, 0, 0, 0),
        "nothing of the refused batches was taken: {answer}"
    );
    expected.add(sub, q2, window.0, 3);

    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(summary["units"], expected.units(), "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn a_body_that_is_not_a_whole_json_array_is_refused_whole() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &push_overrides("", "")).await;
    let at = closed_windows(1)[0].0 + 5;
    let events: Vec<Value> = (0..3)
        .map(|k| {
            event(
                &format!("whole-{k}"),
                at,
                Some("sub-a"),
                None,
                Some("silver/calls"),
                "Success",
            )
        })
        .collect();
    let array = String::from_utf8(array_body(&events)).unwrap();
    let bodies = [
        ("an opening bracket alone", "[".to_owned()),
        ("a truncated array", array[..array.len() - 20].to_owned()),
        (
            "an array without its closing bracket",
            array[..array.len() - 1].to_owned(),
        ),
        ("text after the array", format!("{array} trailing")),
        (
            "a second array after the first",
            format!("{array}\n{array}"),
        ),
        ("a bracket too many", format!("{array}]")),
        (
            "not JSON after the bracket",
            "[this is not json]".to_owned(),
        ),
    ];
    for (what, body) in &bodies {
        let answer = post_ingest(
            &sb,
            &bridge.url,
            Some(&bearer()),
            None,
            Some("application/json"),
            body.clone().into_bytes(),
        )
        .await;
        assert_eq!(answer.status, 400, "{what}: {}", answer.text);
        answer.error();
    }
    let text = metrics(&sb, &bridge).await;
    assert_eq!(
        sample(&text, BATCHES, "status=\"bad_request\""),
        bodies.len() as f64,
        "{text}"
    );
    assert_eq!(sample(&text, TRANSACTIONS, ""), 0.0, "{text}");
    // None of them took anything.
    let answer = push(&sb, &bridge.url, &events).await;
    assert_eq!(counts(&answer), (3, 3, 0, 0, 0), "{answer}");
}

#[actix_rt::test]
async fn a_batch_over_a_limit_is_refused_whole_with_413() {
    let sb = bridge_sandbox().await;
    let at = closed_windows(1)[0].0 + 5;
    let small = |prefix: &str, n: usize| -> Vec<Value> {
        (0..n)
            .map(|k| {
                event(
                    &format!("{prefix}-{k}"),
                    at,
                    Some("sub-a"),
                    None,
                    Some("silver/calls"),
                    "Success",
                )
            })
            .collect()
    };
    let mut rng = Rng(9);
    let padded = |prefix: &str, n: usize, pad: usize, rng: &mut Rng| -> Vec<Value> {
        small(prefix, n)
            .into_iter()
            .map(|mut e| {
                let noise: String = (0..pad).map(|_| format!("{:x}", rng.below(16))).collect();
                e["transactionSummary"]["entryPoint"]["path"] = json!(format!("/v1/{noise}"));
                e
            })
            .collect()
    };
    let too_many = small("many", 6);
    // 5 events of ~2.4 KB: over 8 KiB as received.
    let too_big = padded("big", 5, 2000, &mut rng);
    assert!(array_body(&too_big).len() > 8192);
    // Hex noise squeezes to about half: over 8 KiB zipped, under 24 KiB unzipped.
    let zipped_big = padded("zbig", 5, 3600, &mut rng);
    let zipped_big_body = gzip(&array_body(&zipped_big));
    assert!(zipped_big_body.len() > 8192 && array_body(&zipped_big).len() < 24576);
    // Two events and a lot of blank space: tiny zipped, over 24 KiB unzipped.
    let bomb = small("bomb", 2);
    let mut bomb_body = array_body(&bomb);
    bomb_body.splice(1..1, std::iter::repeat_n(b' ', 40_000));
    let bomb_zipped = gzip(&bomb_body);
    assert!(bomb_zipped.len() < 8192);
    let bridge = spawn_bridge(
        &sb,
        &push_overrides(
            "",
            "max_body_bytes = 8192\nmax_decoded_bytes = 24576\nmax_events = 5",
        ),
    )
    .await;
    let cases: [(&str, Option<&str>, Vec<u8>); 5] = [
        ("six events", None, array_body(&too_many)),
        ("six NDJSON lines", None, ndjson_body(&too_many)),
        ("over max_body_bytes", None, array_body(&too_big)),
        ("over max_body_bytes zipped", Some("gzip"), zipped_big_body),
        ("over max_decoded_bytes unzipped", Some("gzip"), bomb_zipped),
    ];
    let count = cases.len();
    for (what, encoding, body) in cases {
        let answer = post_ingest(
            &sb,
            &bridge.url,
            Some(&bearer()),
            encoding,
            Some("application/json"),
            body,
        )
        .await;
        assert_eq!(answer.status, 413, "{what}: {}", answer.text);
        answer.error();
    }
    let text = metrics(&sb, &bridge).await;
    assert_eq!(
        sample(&text, BATCHES, "status=\"too_large\""),
        count as f64,
        "{text}"
    );
    assert_eq!(sample(&text, TRANSACTIONS, ""), 0.0, "{text}");
    // Nothing of them was taken; within the limits the same events are new.
    let answer = push(&sb, &bridge.url, &too_many[..5]).await;
    assert_eq!(counts(&answer), (5, 5, 0, 0, 0), "{answer}");
    let answer = push(&sb, &bridge.url, &too_many[5..]).await;
    assert_eq!(counts(&answer), (1, 1, 0, 0, 0), "{answer}");
    let answer = push(&sb, &bridge.url, &too_big[..2]).await;
    assert_eq!(counts(&answer), (2, 2, 0, 0, 0), "{answer}");
    let answer = push(&sb, &bridge.url, &bomb).await;
    assert_eq!(counts(&answer), (2, 2, 0, 0, 0), "{answer}");
}

// ---------------------------------------------------------------------------------------------
// Each event on its own

#[actix_rt::test]
async fn each_event_is_judged_on_its_own_and_the_answer_adds_up() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, quota) = (&b.subs[0], &b.quotas[0]);
    let now = now_ms();
    let good = |id: &str, at: i64| txn(id, sub, quota, at);
    let mut no_id = good("x", window.0 + 1);
    no_id.as_object_mut().unwrap().remove("transactionId");
    let mut no_timestamp = good("no-timestamp", window.0 + 2);
    no_timestamp.as_object_mut().unwrap().remove("timestamp");
    let mut text_timestamp = good("text-timestamp", window.0 + 3);
    text_timestamp["timestamp"] = json!(format!("{}", window.0 + 3));
    let mut fraction_timestamp = good("fraction-timestamp", window.0 + 4);
    fraction_timestamp["timestamp"] = json!(window.0 as f64 + 4.5);
    let mut no_summary = good("no-summary", window.0 + 5);
    no_summary
        .as_object_mut()
        .unwrap()
        .remove("transactionSummary");
    let mut text_summary = good("text-summary", window.0 + 6);
    text_summary["transactionSummary"] = json!("Success");
    let mut numeric_id = good("x", window.0 + 7);
    numeric_id["transactionId"] = json!(12345);
    let batch = vec![
        good("ok-0", window.0 + 10),               // 0 accepted
        no_id,                                     // 1 invalid
        good("", window.0 + 11),                   // 2 invalid: empty id
        no_timestamp,                              // 3 invalid
        text_timestamp,                            // 4 invalid
        no_summary,                                // 5 invalid
        text_summary,                              // 6 invalid
        transaction_event("leg-1", window.0 + 12), // 7 ignored
        good("old", now - 13 * HOUR_MS),           // 8 too_old
        good("future", now + 10 * MINUTE_MS),      // 9 in_future
        good("ok-1", window.0 + 13),               // 10 accepted
        good("ok-0", window.0 + 10),               // 11 duplicate
        numeric_id,                                // 12 invalid
        json!(42),                                 // 13 invalid: not an object
        good("soon", now + MINUTE_MS),             // 14 accepted: within the 5m skew
        good("eleven-hours", now - 11 * HOUR_MS),  // 15 accepted: within the 12h horizon
        fraction_timestamp,                        // 16 invalid: not an integer
        good("ok-2", window.0 + 14),               // 17 accepted
    ];
    let answer = push(&sb, &b.bridge.url, &batch).await;
    assert_eq!(counts(&answer), (18, 5, 1, 1, 11), "{answer:#}");
    let expected_refusals: Vec<(u64, String)> = [
        (1, "invalid"),
        (2, "invalid"),
        (3, "invalid"),
        (4, "invalid"),
        (5, "invalid"),
        (6, "invalid"),
        (8, "too_old"),
        (9, "in_future"),
        (12, "invalid"),
        (13, "invalid"),
        (16, "invalid"),
    ]
    .into_iter()
    .map(|(i, r)| (i, r.to_owned()))
    .collect();
    assert_eq!(refusals(&answer), expected_refusals, "{answer:#}");
    for refusal in answer["refusals"].as_array().unwrap() {
        assert!(refusal["detail"].is_string(), "a detail: {refusal}");
        match refusal["index"].as_u64().unwrap() {
            8 => assert_eq!(refusal["transactionId"], "old", "{refusal}"),
            9 => assert_eq!(refusal["transactionId"], "future", "{refusal}"),
            _ => {}
        }
    }

    // The refused ones took nothing: fixed, they are accepted.
    let answer = push(
        &sb,
        &b.bridge.url,
        &[
            good("no-timestamp", window.0 + 2),
            good("text-summary", window.0 + 6),
        ],
    )
    .await;
    assert_eq!(counts(&answer), (2, 2, 0, 0, 0), "{answer}");

    // NDJSON: a line that is not JSON is an invalid event; blank lines are not counted.
    let lines = [
        good("nd-0", window.0 + 20).to_string(),
        "".to_owned(),
        "{\"transactionId\": \"nd-broken\", \"timestamp\": ".to_owned(),
        good("nd-1", window.0 + 21).to_string(),
        "   ".to_owned(),
        "not json at all".to_owned(),
        transaction_event("nd-leg", window.0 + 22).to_string(),
        good("nd-old", now - 20 * HOUR_MS).to_string(),
        good("nd-0", window.0 + 20).to_string(),
    ];
    let body = lines.join("\n") + "\n";
    let answer = push_raw(
        &sb,
        &b.bridge.url,
        None,
        Some("application/x-ndjson"),
        body.into_bytes(),
        7,
    )
    .await;
    assert_eq!(counts(&answer), (7, 2, 1, 1, 3), "{answer:#}");
    let expected_refusals: Vec<(u64, String)> = [(1, "invalid"), (3, "invalid"), (5, "too_old")]
        .into_iter()
        .map(|(i, r)| (i, r.to_owned()))
        .collect();
    assert_eq!(refusals(&answer), expected_refusals, "{answer:#}");

    // More than 100 refusals: all counted, the first 100 listed.
    let mut many: Vec<Value> = (0..150)
        .map(|k| good(&format!("ancient-{k}"), now - 24 * HOUR_MS - k))
        .collect();
    many.push(good("ok-3", window.0 + 30));
    let answer = push(&sb, &b.bridge.url, &many).await;
    assert_eq!(
        counts(&answer),
        (151, 1, 0, 0, 150),
        "{}",
        answer["refused"]
    );
    assert!(
        refusals(&answer)
            .iter()
            .all(|(i, r)| *i < 150 && r == "too_old"),
        "{answer}"
    );

    // Billed: what was accepted in the closed window, nothing else.
    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    let billed_ids = 3 + 2 + 2 + 1; // ok-0..2, the two fixed ones, nd-0/1, ok-3
    assert_eq!(summary["units"], billed_ids, "{summary}");
    let mut expected = Expected::default();
    expected.add(sub, quota, window.0, billed_ids);
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn horizon_and_future_skew_are_taken_from_the_settings() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(
        &sb,
        &push_overrides("", "horizon = \"1h\"\nfuture_skew = \"1m\""),
    )
    .await;
    let now = now_ms();
    let at = |id: &str, t: i64| event(id, t, Some("sub-a"), None, Some("silver/calls"), "Success");
    let batch = [
        at("two-hours-ago", now - 2 * HOUR_MS),
        at("half-an-hour-ago", now - 30 * MINUTE_MS),
        at("in-three-minutes", now + 3 * MINUTE_MS),
        at("in-twenty-seconds", now + 20_000),
        at("a-day-ago", now - 24 * HOUR_MS),
    ];
    let answer = push(&sb, &bridge.url, &batch).await;
    assert_eq!(counts(&answer), (5, 2, 0, 0, 3), "{answer:#}");
    let expected: Vec<(u64, String)> = [(0, "too_old"), (2, "in_future"), (4, "too_old")]
        .into_iter()
        .map(|(i, r)| (i, r.to_owned()))
        .collect();
    assert_eq!(refusals(&answer), expected, "{answer:#}");
}

// ---------------------------------------------------------------------------------------------
// Duplicates

#[actix_rt::test]
async fn a_transaction_id_is_counted_once_within_a_batch_across_batches_and_resends() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let windows = closed_windows(2);
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    let e = |id: &str| txn(id, sub, q0, windows[0].0 + 100);
    let batch_a = [e("a"), e("b"), e("c"), e("a"), e("b")];
    let answer = push(&sb, &b.bridge.url, &batch_a).await;
    assert_eq!(counts(&answer), (5, 3, 2, 0, 0), "{answer}");
    let batch_b = [e("c"), e("d"), e("e")];
    let answer = push(&sb, &b.bridge.url, &batch_b).await;
    assert_eq!(counts(&answer), (3, 2, 1, 0, 0), "{answer}");
    // The whole batch again, as a pipeline retrying would (and zipped NDJSON this time).
    let answer = push(&sb, &b.bridge.url, &batch_a).await;
    assert_eq!(counts(&answer), (5, 0, 5, 0, 0), "{answer}");
    let answer = push_raw(
        &sb,
        &b.bridge.url,
        Some("gzip"),
        Some("application/x-ndjson"),
        gzip(&ndjson_body(&batch_b)),
        3,
    )
    .await;
    assert_eq!(counts(&answer), (3, 0, 3, 0, 0), "{answer}");
    // Two copies of one batch at once: each id taken by exactly one of them.
    let batch_c: Vec<Value> = txns("c", sub, q1, windows[1], 20);
    let (one, two) = tokio::join!(
        push(&sb, &b.bridge.url, &batch_c),
        push(&sb, &b.bridge.url, &batch_c)
    );
    let (_, a1, d1, _, _) = counts(&one);
    let (_, a2, d2, _, _) = counts(&two);
    assert_eq!((a1 + a2, d1 + d2), (20, 20), "{one}\n{two}");

    let mut expected = Expected::default();
    expected.add(sub, q0, windows[0].0, 5);
    expected.add(sub, q1, windows[1].0, 20);
    billed_exactly(&sb, &b.bridge.url, &windows, &expected).await;
}

#[actix_rt::test]
async fn a_transaction_id_sent_again_with_another_time_is_still_a_duplicate() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let windows = closed_windows(2);
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    let first = [
        txn("t-1", sub, q0, windows[0].0 + 100),
        txn("t-2", sub, q0, windows[0].0 + 200),
    ];
    let answer = push(&sb, &b.bridge.url, &first).await;
    assert_eq!(counts(&answer), (2, 2, 0, 0, 0), "{answer}");
    // The same transaction ids, stamped in the next window (and naming another quota): the
    // contract keys a duplicate on the transactionId within the horizon, not on its window.
    let again = [
        txn("t-1", sub, q1, windows[1].0 + 100),
        txn("t-2", sub, q0, windows[1].0 + 300),
    ];
    let answer = push(&sb, &b.bridge.url, &again).await;
    assert_eq!(counts(&answer), (2, 0, 2, 0, 0), "{answer}");
    let mut expected = Expected::default();
    expected.add(sub, q0, windows[0].0, 2);
    billed_exactly(&sb, &b.bridge.url, &windows, &expected).await;
}

// ---------------------------------------------------------------------------------------------
// Billing

/// A random (seeded) workload over `subs`, `quotas` and `windows`: `unique` transactions (some of
/// unknown subscriptions, some naming only the quota or only the asset resource), a share of
/// them sent again (1 to 3 more copies), a few `transactionEvent`s, shuffled; what should be
/// billed and how many unique unmatched transactions there are.
pub struct Workload {
    pub stream: Vec<Value>,
    pub expected: Expected,
    pub unmatched: u64,
    pub ignored: u64,
}

pub fn workload(
    seed: u64,
    unique: usize,
    subs: &[Billed],
    quotas: &[Quota],
    windows: &[(i64, i64)],
    with_events: bool,
) -> Workload {
    let mut rng = Rng(seed);
    let mut expected = Expected::default();
    let mut stream = Vec::new();
    let mut unmatched = 0;
    let mut ignored = 0;
    for i in 0..unique {
        let window = windows[rng.below(windows.len() as u64) as usize];
        let at = window.0 + rng.below((window.1 - window.0) as u64) as i64;
        let id = format!("wl{seed}-{i:05}");
        let status = [
            "Success",
            "Success",
            "Success",
            "Failure",
            "Exception",
            "Unknown",
        ][rng.below(6) as usize];
        let event = if rng.chance(8) {
            unmatched += 1;
            let who = ["unknown", "0000aaaa1111bbbb2222cccc3333dddd"][rng.below(2) as usize];
            let quota = &quotas[rng.below(quotas.len() as u64) as usize];
            event(
                &id,
                at,
                Some(who),
                Some(quota.id.as_str()),
                Some(quota.resource.as_str()),
                status,
            )
        } else {
            let sub = &subs[rng.below(subs.len() as u64) as usize];
            let quota = &quotas[rng.below(quotas.len() as u64) as usize];
            let resource = &quota.resources[rng.below(quota.resources.len() as u64) as usize];
            expected.add(sub, quota, window.0, 1);
            match rng.below(3) {
                0 => event(
                    &id,
                    at,
                    Some(sub.amplify_id.as_str()),
                    Some(quota.id.as_str()),
                    Some(resource.as_str()),
                    status,
                ),
                1 => event(
                    &id,
                    at,
                    Some(sub.amplify_id.as_str()),
                    Some(quota.id.as_str()),
                    None,
                    status,
                ),
                _ => event(
                    &id,
                    at,
                    Some(sub.amplify_id.as_str()),
                    None,
                    Some(resource.as_str()),
                    status,
                ),
            }
        };
        let copies = if rng.chance(35) { 1 + rng.below(3) } else { 0 };
        for _ in 0..=copies {
            stream.push(event.clone());
        }
        if with_events && rng.chance(3) {
            ignored += 1;
            stream.push(transaction_event(&format!("leg-{id}"), at));
        }
    }
    rng.shuffle(&mut stream);
    Workload {
        stream,
        expected,
        unmatched,
        ignored,
    }
}

#[actix_rt::test]
async fn a_seeded_random_workload_with_repeats_is_billed_exactly_once() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 3).await;
    let windows = closed_windows(4);
    let w = workload(7001, 900, &b.subs, &b.quotas, &windows, true);
    assert_eq!(w.expected.totals().len(), 9, "every pair got traffic");
    let mut rng = Rng(7002);
    let mut seen = BTreeSet::new();
    let mut offset = 0;
    let (mut accepted, mut duplicates) = (0, 0);
    while offset < w.stream.len() {
        let size = (1 + rng.below(160) as usize).min(w.stream.len() - offset);
        let batch = &w.stream[offset..offset + size];
        offset += size;
        // What this batch must answer, from what was sent before it.
        let (mut want_accepted, mut want_duplicates, mut want_ignored) = (0, 0, 0);
        for event in batch {
            if event["type"] != "transactionSummary" {
                want_ignored += 1;
            } else if seen.insert(event["transactionId"].as_str().unwrap().to_owned()) {
                want_accepted += 1;
            } else {
                want_duplicates += 1;
            }
        }
        let (encoding, content_type, body) = match rng.below(4) {
            0 => (None, "application/json", array_body(batch)),
            1 => (None, "application/x-ndjson", ndjson_body(batch)),
            2 => (Some("gzip"), "application/json", gzip(&array_body(batch))),
            _ => (
                Some("gzip"),
                "application/x-ndjson",
                gzip(&ndjson_body(batch)),
            ),
        };
        let answer = push_raw(
            &sb,
            &b.bridge.url,
            encoding,
            Some(content_type),
            body,
            batch.len(),
        )
        .await;
        assert_eq!(
            counts(&answer),
            (size as u64, want_accepted, want_duplicates, want_ignored, 0),
            "batch ending at {offset} ({encoding:?}, {content_type}): {answer}"
        );
        accepted += want_accepted;
        duplicates += want_duplicates;
    }
    assert_eq!(accepted, w.expected.units() + w.unmatched);
    assert!(
        duplicates > 200,
        "the workload repeats itself: {duplicates}"
    );

    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["units"], w.expected.units(), "{summary}");
    assert_eq!(summary["records"], w.expected.records(), "{summary}");
    assert_eq!(summary["unmatched_units"], w.unmatched, "{summary}");
    assert_eq!(usage_totals(&sb).await, w.expected.totals());
    assert_eq!(usage_posts(&sb).await.len() as u64, w.expected.records());

    // Again, as a backfill and as a normal run: nothing more.
    let again = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(
        (&again["records"], &again["units"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    let normal = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&normal["records"], &normal["units"]),
        (&json!(0), &json!(0)),
        "{normal}"
    );
    assert_eq!(usage_totals(&sb).await, w.expected.totals());
    assert_eq!(usage_posts(&sb).await.len() as u64, w.expected.records());
    let text = metrics(&sb, &b.bridge).await;
    assert_eq!(
        sample(&text, TRANSACTIONS, "outcome=\"accepted\""),
        accepted as f64,
        "{text}"
    );
    assert_eq!(
        sample(&text, TRANSACTIONS, "outcome=\"duplicate\""),
        duplicates as f64,
        "{text}"
    );
    assert_eq!(
        sample(&text, TRANSACTIONS, "outcome=\"ignored\""),
        w.ignored as f64,
        "{text}"
    );
}

#[actix_rt::test]
async fn pushed_calls_map_to_a_quota_by_its_id_or_else_by_asset_resource() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let sub = &b.subs[0];
    let (q0, q1, q2) = (&b.quotas[0], &b.quotas[1], &b.quotas[2]);
    let at = window.0 + 500;
    let s = Some(sub.amplify_id.as_str());
    let batch = [
        // By quota id alone.
        event("m-0", at, s, Some(q1.id.as_str()), None, "Success"),
        event("m-1", at, s, Some(q1.id.as_str()), None, "Success"),
        // By asset resource alone, either of the first quota's resources.
        event(
            "m-2",
            at,
            s,
            None,
            Some(q0.resources[0].as_str()),
            "Success",
        ),
        event(
            "m-3",
            at,
            s,
            None,
            Some(q0.resources[1].as_str()),
            "Success",
        ),
        // The quota id wins over the resource.
        event(
            "m-4",
            at,
            s,
            Some(q2.id.as_str()),
            Some(q0.resource.as_str()),
            "Success",
        ),
        // A quota id of no quota of the plan ("unknown", another's): the resource decides.
        event(
            "m-5",
            at,
            s,
            Some("unknown"),
            Some(q1.resource.as_str()),
            "Success",
        ),
        event(
            "m-6",
            at,
            s,
            Some("ffffeeeeddddccccbbbbaaaa99998888"),
            Some(q2.resource.as_str()),
            "Success",
        ),
        // Matched by the asset resource's id (as the quota's references give it) with no name.
        {
            let mut e = event("m-7", at, s, None, None, "Success");
            e["transactionSummary"]["assetResource"] = json!({"id": q2.resource_ids[0]});
            e
        },
        // Neither: unmatched (resource), never billed.
        event("m-8", at, s, None, Some("silver/nowhere"), "Success"),
        event("m-9", at, s, Some("unknown"), None, "Success"),
    ];
    let answer = push(&sb, &b.bridge.url, &batch).await;
    assert_eq!(counts(&answer), (10, 10, 0, 0, 0), "{answer}");
    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    let mut expected = Expected::default();
    expected.add(sub, q1, window.0, 3);
    expected.add(sub, q0, window.0, 2);
    expected.add(sub, q2, window.0, 3);
    assert_eq!(summary["units"], expected.units(), "{summary}");
    assert_eq!(summary["unmatched_units"], 2, "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn with_billed_count_success_only_successful_pushed_calls_are_billed() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("billed_count = \"success\"", ""), 1).await;
    let window = closed_windows(1)[0];
    let sub = &b.subs[0];
    let (q0, q2) = (&b.quotas[0], &b.quotas[2]);
    let mut batch = Vec::new();
    for (status, n) in [
        ("Success", 5),
        ("Failure", 3),
        ("Exception", 2),
        ("Unknown", 1),
    ] {
        for k in 0..n {
            batch.push(event(
                &format!("{status}-{k}"),
                window.0 + k as i64 * 1000,
                Some(sub.amplify_id.as_str()),
                Some(q0.id.as_str()),
                Some(q0.resource.as_str()),
                status,
            ));
        }
    }
    // Only failures on another quota: nothing to bill there, no record.
    for k in 0..4 {
        batch.push(event(
            &format!("q2-failure-{k}"),
            window.0 + k,
            Some(sub.amplify_id.as_str()),
            Some(q2.id.as_str()),
            Some(q2.resource.as_str()),
            "Failure",
        ));
    }
    let answer = push(&sb, &b.bridge.url, &batch).await;
    assert_eq!(counts(&answer), (15, 15, 0, 0, 0), "{answer}");
    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(
        (&summary["records"], &summary["units"]),
        (&json!(1), &json!(5)),
        "{summary}"
    );
    let mut expected = Expected::default();
    expected.add(sub, q0, window.0, 5);
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn late_pushed_events_are_billed_at_the_next_run_as_a_late_delta_and_repeats_add_nothing() {
    let sb = bridge_sandbox().await;
    let windows = closed_windows(3);
    // No re-polling asked for: with push, every run reads every window the horizon reaches.
    let overrides = push_overrides(
        &format!(
            "repoll_windows = 0\nstart_at = \"{}\"",
            rfc3339(windows[0].0)
        ),
        "",
    );
    let b = billed(&sb, &overrides, 1).await;
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    let first_batch: Vec<Value> = txns("w0", sub, q0, windows[0], 4)
        .into_iter()
        .chain(txns("w2", sub, q0, windows[2], 2))
        .collect();
    push(&sb, &b.bridge.url, &first_batch).await;
    let first = report(&sb, &b.bridge.url, None).await;
    assert_eq!(first["complete"], true, "{first}");
    assert_eq!(
        (&first["records"], &first["units"]),
        (&json!(2), &json!(6)),
        "{first}"
    );
    let mut totals = BTreeMap::new();
    let pair0 = (sub.recurly_id.clone(), q0.add_on());
    totals.insert(pair0.clone(), (2u64, 6u64));
    assert_eq!(usage_totals(&sb).await, totals);

    // Three new calls of the oldest window, and two already billed ones sent again.
    let mut late = txns("w0-late", sub, q0, windows[0], 3);
    late.extend(first_batch[..2].iter().cloned());
    let answer = push(&sb, &b.bridge.url, &late).await;
    assert_eq!(counts(&answer), (5, 3, 2, 0, 0), "{answer}");
    let second = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&second["records"], &second["units"]),
        (&json!(1), &json!(3)),
        "{second}"
    );
    let tag = format!(
        "amplify:{} window:{}-{}",
        sub.amplify_id, windows[0].0, windows[0].1
    );
    let delta = records_tagged(&sb, " late#1").await;
    assert_eq!(delta.len(), 1, "{delta:#?}");
    assert_eq!(delta[0]["merchant_tag"], format!("{tag} late#1"));
    assert_eq!(whole(&delta[0]["amount"]), 3);
    let at: DateTime<Utc> = delta[0]["usage_timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        windows[0].0 <= at.timestamp_millis() && at.timestamp_millis() < windows[0].1,
        "the delta is dated inside its window: {at}"
    );
    totals.insert(pair0.clone(), (3, 9));
    assert_eq!(usage_totals(&sb).await, totals);

    // Nothing new: nothing billed; repeats only: nothing billed either.
    let third = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&third["records"], &third["units"]),
        (&json!(0), &json!(0)),
        "{third}"
    );
    let answer = push(&sb, &b.bridge.url, &late).await;
    assert_eq!(counts(&answer), (5, 0, 5, 0, 0), "{answer}");
    let fourth = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&fourth["records"], &fourth["units"]),
        (&json!(0), &json!(0)),
        "{fourth}"
    );

    // A second late arrival is a second delta; a late pair the window had none of, its record.
    let mut more = txns("w0-later", sub, q0, windows[0], 2);
    more.extend(txns("w2-bulk", sub, q1, windows[2], 4));
    push(&sb, &b.bridge.url, &more).await;
    let fifth = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&fifth["records"], &fifth["units"]),
        (&json!(2), &json!(6)),
        "{fifth}"
    );
    let delta = records_tagged(&sb, " late#2").await;
    assert_eq!(delta.len(), 1, "{delta:#?}");
    assert_eq!(delta[0]["merchant_tag"], format!("{tag} late#2"));
    assert_eq!(whole(&delta[0]["amount"]), 2);
    totals.insert(pair0, (4, 11));
    totals.insert((sub.recurly_id.clone(), q1.add_on()), (1, 4));
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
async fn pushed_traffic_of_unknown_subscriptions_is_never_billed_and_listed_by_a_dry_run() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, q0) = (&b.subs[0], &b.quotas[0]);
    let stranger = "0123456789abcdef0123456789abcdef";
    let at = window.0 + 700;
    let mut batch = txns("known", sub, q0, window, 4);
    for k in 0..2 {
        batch.push(event(
            &format!("unknown-{k}"),
            at,
            Some("unknown"),
            Some(q0.id.as_str()),
            Some(q0.resource.as_str()),
            "Success",
        ));
    }
    for k in 0..3 {
        batch.push(event(
            &format!("absent-{k}"),
            at,
            None,
            Some(q0.id.as_str()),
            Some(q0.resource.as_str()),
            "Success",
        ));
    }
    for k in 0..5 {
        batch.push(event(
            &format!("stranger-{k}"),
            at,
            Some(stranger),
            Some(q0.id.as_str()),
            Some(q0.resource.as_str()),
            "Failure",
        ));
    }
    let answer = push(&sb, &b.bridge.url, &batch).await;
    assert_eq!(counts(&answer), (14, 14, 0, 0, 0), "{answer}");

    let summary = report(&sb, &b.bridge.url, Some(&span(&[window]))).await;
    assert_eq!(
        (
            &summary["records"],
            &summary["units"],
            &summary["unmatched_units"]
        ),
        (&json!(1), &json!(4), &json!(10)),
        "{summary}"
    );
    let mut expected = Expected::default();
    expected.add(sub, q0, window.0, 4);
    assert_eq!(usage_totals(&sb).await, expected.totals());
    let text = metrics(&sb, &b.bridge).await;
    assert_eq!(
        sample(
            &text,
            "billing_bridge_usage_unmatched_units_total",
            "reason=\"subscription\""
        ),
        10.0,
        "{text}"
    );

    // A dry run afterwards lists what was not billed.
    let mut body = span(&[window]);
    body["dry_run"] = json!(true);
    let dry = report(&sb, &b.bridge.url, Some(&body)).await;
    assert_eq!(dry["unmatched_units"], 10, "{dry}");
    let rows = dry["windows"][0]["unmatched"]
        .as_array()
        .unwrap_or_else(|| panic!("unmatched rows in a dry run: {dry}"));
    let listed: u64 = rows.iter().map(|r| r["units"].as_u64().unwrap_or(0)).sum();
    assert_eq!(listed, 10, "{dry}");
    assert!(
        rows.iter().all(|r| r["reason"] == "subscription"),
        "unmatched for want of a subscription: {dry}"
    );
    let stranger_units: u64 = rows
        .iter()
        .filter(|r| r["subscription_id"] == stranger)
        .map(|r| r["units"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(stranger_units, 5, "{dry}");
    assert_eq!(
        usage_totals(&sb).await,
        expected.totals(),
        "a dry run bills nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics and secrets

#[actix_rt::test]
async fn ingest_metrics_count_outcomes_refusal_reasons_and_batches() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &push_overrides("", "max_events = 20")).await;
    let at = closed_windows(1)[0].0 + 1;
    let now = now_ms();
    let e = |id: &str, t: i64| event(id, t, Some("sub-a"), None, Some("silver/calls"), "Success");
    let mut invalid = e("bad", at);
    invalid
        .as_object_mut()
        .unwrap()
        .remove("transactionSummary");
    let batch = [
        e("one", at),
        e("two", at),
        e("three", at),
        e("one", at),
        transaction_event("leg", at),
        e("old", now - 13 * HOUR_MS),
        e("future-1", now + 10 * MINUTE_MS),
        e("future-2", now + 20 * MINUTE_MS),
        invalid.clone(),
        invalid,
        json!("not an event"),
    ];
    let answer = push(&sb, &bridge.url, &batch).await;
    assert_eq!(counts(&answer), (11, 3, 1, 1, 6), "{answer}");
    let answer = push_ndjson(&sb, &bridge.url, &[e("four", at), e("two", at)]).await;
    assert_eq!(counts(&answer), (2, 1, 1, 0, 0), "{answer}");
    // Refused batches: their events are not counted as transactions.
    for auth in [None, Some("Bearer nope")] {
        let answer = post_ingest(
            &sb,
            &bridge.url,
            auth,
            None,
            None,
            array_body(&[e("five", at)]),
        )
        .await;
        assert_eq!(answer.status, 401, "{}", answer.text);
    }
    let answer = post_ingest(
        &sb,
        &bridge.url,
        Some(&bearer()),
        None,
        None,
        b"[{".to_vec(),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    let many: Vec<Value> = (0..21).map(|k| e(&format!("many-{k}"), at)).collect();
    let answer = post_ingest(
        &sb,
        &bridge.url,
        Some(&bearer()),
        None,
        None,
        array_body(&many),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text);

    let text = metrics(&sb, &bridge).await;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("billing_bridge_ingest"))
        .collect();
    for (labels, value) in [
        ("outcome=\"accepted\"", 4.0),
        ("outcome=\"duplicate\"", 2.0),
        ("outcome=\"ignored\"", 1.0),
        ("outcome=\"refused\"", 6.0),
    ] {
        assert_eq!(
            sample(&text, TRANSACTIONS, labels),
            value,
            "{labels}: {lines:#?}"
        );
    }
    for (labels, value) in [
        ("reason=\"too_old\"", 1.0),
        ("reason=\"in_future\"", 2.0),
        ("reason=\"invalid\"", 3.0),
    ] {
        assert_eq!(
            sample(&text, REFUSED, labels),
            value,
            "{labels}: {lines:#?}"
        );
    }
    for (labels, value) in [
        ("status=\"ok\"", 2.0),
        ("status=\"unauthorized\"", 2.0),
        ("status=\"bad_request\"", 1.0),
        ("status=\"too_large\"", 1.0),
        ("status=\"unavailable\"", 0.0),
        ("status=\"off\"", 0.0),
    ] {
        assert_eq!(
            sample(&text, BATCHES, labels),
            value,
            "{labels}: {lines:#?}"
        );
    }
    let count = sample(&text, &format!("{DURATION}_count"), "");
    assert!(
        count >= 2.0,
        "accept latency of each batch taken: {lines:#?}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{DURATION}_bucket"))),
        "a histogram: {lines:#?}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("# TYPE {DURATION} histogram"))),
        "typed as a histogram: {lines:#?}"
    );
}

#[actix_rt::test]
async fn the_ingest_token_never_shows_in_metrics_or_any_answer() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &push_overrides("", "max_events = 3")).await;
    let at = closed_windows(1)[0].0 + 1;
    let e = |id: &str| event(id, at, Some("sub-a"), None, Some("silver/calls"), "Success");
    let mut answers = Vec::new();
    for (auth, encoding, body) in [
        (Some(bearer()), None, array_body(&[e("a"), e("b")])),
        (
            Some(bearer()),
            None,
            array_body(&[e("a"), json!({"nope": 1})]),
        ),
        (
            Some(format!("Bearer {INGEST_TOKEN}-wrong")),
            None,
            array_body(&[e("c")]),
        ),
        (
            Some(format!("Bearer x{INGEST_TOKEN}")),
            None,
            array_body(&[e("c")]),
        ),
        (Some(INGEST_TOKEN.to_owned()), None, array_body(&[e("c")])),
        (None, None, array_body(&[e("c")])),
        (Some(bearer()), None, b"[oops".to_vec()),
        (Some(bearer()), Some("gzip"), b"not gzip".to_vec()),
        (Some(bearer()), Some("br"), array_body(&[e("d")])),
        (
            Some(bearer()),
            None,
            array_body(&[e("1"), e("2"), e("3"), e("4")]),
        ),
    ] {
        let answer = post_ingest(&sb, &bridge.url, auth.as_deref(), encoding, None, body).await;
        answers.push(answer);
    }
    let summary = report(&sb, &bridge.url, Some(&span(&closed_windows(1)))).await;
    for answer in &answers {
        assert!(
            !answer.text.contains(INGEST_TOKEN),
            "an answer shows the token: {} {}",
            answer.status,
            answer.text
        );
        for (name, value) in &answer.headers {
            assert!(
                !value.to_str().unwrap_or_default().contains(INGEST_TOKEN),
                "header {name} shows the token"
            );
        }
    }
    assert!(!summary.to_string().contains(INGEST_TOKEN), "{summary}");
    let text = metrics(&sb, &bridge).await;
    assert!(
        !text.contains(INGEST_TOKEN),
        "metrics show the token:\n{text}"
    );
    for path in ["/healthz", "/readyz"] {
        let body = sb
            .http
            .get(format!("{}{path}", bridge.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default();
        assert!(!body.contains(INGEST_TOKEN), "{path}: {body}");
    }
}

// ---------------------------------------------------------------------------------------------
// Durability

#[actix_rt::test]
async fn accepted_events_are_in_the_ingest_log_and_survive_a_crash() {
    let sb = bridge_sandbox().await;
    // The in-process bridge provisions; a `serve` process with a state file takes the events.
    let b = billed(&sb, &reporting_overrides("", ""), 1).await;
    let windows = closed_windows(2);
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let push_config = |listen: &str| push_binary_config(&sb, listen, &state);
    let mut first = serve_with(&sb, &dir, push_config).await;
    let batch_a = txns("crash-a", sub, q0, windows[0], 10);
    let answer = push(&sb, &first.url, &batch_a).await;
    assert_eq!(
        counts(&answer),
        (10, 10, 0, 0, 0),
        "{answer}\n{}",
        first.log()
    );
    let log = dir.path("bridge.state.ingest");
    let files = std::fs::read_dir(&log)
        .unwrap_or_else(|e| panic!("the ingest log {}: {e}", log.display()))
        .count();
    assert!(
        files > 0,
        "the ingest log {} holds the batch",
        log.display()
    );
    first.kill();

    let second = serve_with(&sb, &dir, push_config).await;
    // Acknowledged before the crash: still known.
    let answer = push(&sb, &second.url, &batch_a).await;
    assert_eq!(
        counts(&answer),
        (10, 0, 10, 0, 0),
        "{answer}\n{}",
        second.log()
    );
    let batch_b = txns("crash-b", sub, q1, windows[1], 3);
    let answer = push(&sb, &second.url, &batch_b).await;
    assert_eq!(counts(&answer), (3, 3, 0, 0, 0), "{answer}");
    let (status, _, summary) =
        report_with(&sb, &second.url, Some(ADMIN_TOKEN), Some(&span(&windows))).await;
    assert_eq!(status, 200, "{summary}\n{}", second.log());
    let mut expected = Expected::default();
    expected.add(sub, q0, windows[0].0, 10);
    expected.add(sub, q1, windows[1].0, 3);
    assert_eq!(summary["units"], expected.units(), "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());

    // Late calls of the reported window, taken, then another crash: billed once, as a delta.
    let mut late = txns("crash-late", sub, q0, windows[0], 4);
    late.extend(batch_a[..3].iter().cloned());
    let answer = push(&sb, &second.url, &late).await;
    assert_eq!(counts(&answer), (7, 4, 3, 0, 0), "{answer}");
    let mut second = second;
    second.kill();
    let third = serve_with(&sb, &dir, push_config).await;
    let (status, _, summary) =
        report_with(&sb, &third.url, Some(ADMIN_TOKEN), Some(&span(&windows))).await;
    assert_eq!(status, 200, "{summary}\n{}", third.log());
    assert_eq!(
        (&summary["records"], &summary["units"]),
        (&json!(1), &json!(4)),
        "{summary}"
    );
    let delta = records_tagged(&sb, " late#1").await;
    assert_eq!(delta.len(), 1, "{delta:#?}");
    assert_eq!(whole(&delta[0]["amount"]), 4);
    let (status, _, again) =
        report_with(&sb, &third.url, Some(ADMIN_TOKEN), Some(&span(&windows))).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["records"], &again["units"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    let mut totals = expected.totals();
    let pair = (sub.recurly_id.clone(), q0.add_on());
    totals.get_mut(&pair).unwrap().0 += 1;
    totals.get_mut(&pair).unwrap().1 += 4;
    assert_eq!(usage_totals(&sb).await, totals);
}

/// Posts `body` to `url` with the right token; the answer when one came (None when the
/// connection broke).
async fn try_push(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Option<(u16, Value)> {
    let response = http
        .post(format!("{url}{INGEST_PATH}"))
        .header("Authorization", bearer())
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.ok()?;
    Some((status, body))
}

#[actix_rt::test]
async fn every_batch_acknowledged_before_a_crash_under_load_is_kept() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 2).await;
    let windows = closed_windows(2);
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let push_config = |listen: &str| push_binary_config(&sb, listen, &state);
    let mut first = serve_with(&sb, &dir, push_config).await;
    // Six senders, each with 40 batches of 50 new calls.
    let mut expected = Expected::default();
    let mut batches: Vec<Vec<Vec<Value>>> = Vec::new();
    for sender in 0..6 {
        let mut mine = Vec::new();
        for n in 0..40 {
            let sub = &b.subs[(sender + n) % 2];
            let quota = &b.quotas[n % 3];
            let window = windows[n % 2];
            mine.push(txns(&format!("load-{sender}-{n}"), sub, quota, window, 50));
            expected.add(sub, quota, window.0, 50);
        }
        batches.push(mine);
    }
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<Value>>::new()));
    let mut handles = Vec::new();
    for mine in batches.clone() {
        let (http, url, acknowledged) = (sb.http.clone(), first.url.clone(), acknowledged.clone());
        handles.push(actix_rt::spawn(async move {
            for batch in mine {
                match try_push(&http, &url, array_body(&batch)).await {
                    Some((200, body)) => {
                        assert_eq!(counts(&body).1, 50, "{body}");
                        acknowledged.lock().unwrap().push(batch);
                    }
                    Some((503, _)) | None => {}
                    Some((status, body)) => panic!("{status}: {body}"),
                }
            }
        }));
    }
    crate::support::wait_for(
        "some batches acknowledged",
        std::time::Duration::from_secs(20),
        || {
            let done = acknowledged.lock().unwrap().len();
            async move { (done >= 30).then_some(()) }
        },
    )
    .await;
    first.kill();
    for handle in handles {
        handle.await.expect("a sender");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    // (Had every batch been answered before the kill, the checks below still hold.)

    let second = serve_with(&sb, &dir, push_config).await;
    for batch in &acknowledged {
        let answer = push(&sb, &second.url, batch).await;
        assert_eq!(
            counts(&answer),
            (50, 0, 50, 0, 0),
            "acknowledged before the crash, kept: {answer}"
        );
    }
    // Every batch again, as the senders would retry what had no answer.
    for mine in &batches {
        for batch in mine {
            let answer = push(&sb, &second.url, batch).await;
            let (_, accepted, duplicates, _, _) = counts(&answer);
            assert_eq!(accepted + duplicates, 50, "{answer}");
        }
    }
    let (status, _, summary) =
        report_with(&sb, &second.url, Some(ADMIN_TOKEN), Some(&span(&windows))).await;
    assert_eq!(status, 200, "{summary}\n{}", second.log());
    assert_eq!(summary["units"], 6 * 40 * 50, "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

// ---------------------------------------------------------------------------------------------
// Redis: many instances, and a store that cannot take a batch

/// Push overrides with the shared store on `redis` for `instances` instances.
pub fn push_on_redis(redis: &Redis, instances: usize) -> String {
    format!(
        "[reporting]\nschedule = \"\"\nwindow = \"1m\"\ndelay = \"0s\"\nsource = \"push\"\n\
         [store]\nstate_file = \"\"\nredis_url = \"{}\"\ninstances = {instances}\n\
         [ingest]\ntoken = \"{INGEST_TOKEN}\"\n",
        redis.url()
    )
}

#[actix_rt::test]
async fn two_instances_on_one_redis_take_each_transaction_id_once() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let sb = bridge_sandbox().await;
    let overrides = push_on_redis(&redis, 2);
    let b = billed(&sb, &overrides, 1).await;
    let other = spawn_bridge(&sb, &overrides).await;
    let windows = closed_windows(2);
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    let batch: Vec<Value> = txns("both", sub, q0, windows[0], 30);
    // The same batch to both instances at once, then each half again to the other one.
    let (one, two) = tokio::join!(
        push(&sb, &b.bridge.url, &batch),
        push(&sb, &other.url, &batch)
    );
    let (_, a1, d1, _, _) = counts(&one);
    let (_, a2, d2, _, _) = counts(&two);
    assert_eq!((a1 + a2, d1 + d2), (30, 30), "{one}\n{two}");
    let answer = push(&sb, &other.url, &batch[..15]).await;
    assert_eq!(counts(&answer), (15, 0, 15, 0, 0), "{answer}");
    let answer = push(&sb, &b.bridge.url, &batch[15..]).await;
    assert_eq!(counts(&answer), (15, 0, 15, 0, 0), "{answer}");
    let more = txns("other", sub, q1, windows[1], 7);
    let answer = push(&sb, &other.url, &more).await;
    assert_eq!(counts(&answer), (7, 7, 0, 0, 0), "{answer}");

    // Reported by either instance, billed once.
    let mut expected = Expected::default();
    expected.add(sub, q0, windows[0].0, 30);
    expected.add(sub, q1, windows[1].0, 7);
    billed_exactly(&sb, &b.bridge.url, &windows, &expected).await;
    let again = report(&sb, &other.url, Some(&span(&windows))).await;
    assert_eq!(
        (&again["records"], &again["units"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    assert_eq!(usage_totals(&sb).await, expected.totals());

    // Late calls taken by one instance, billed once by whichever reports next.
    let mut late = txns("late", sub, q0, windows[0], 5);
    late.extend(batch[..4].iter().cloned());
    let (one, two) = tokio::join!(
        push(&sb, &other.url, &late),
        push(&sb, &b.bridge.url, &late)
    );
    assert_eq!(counts(&one).1 + counts(&two).1, 5, "{one}\n{two}");
    let whole_span = span(&windows);
    let (first, second) = tokio::join!(
        report_with(&sb, &b.bridge.url, Some(ADMIN_TOKEN), Some(&whole_span)),
        report_with(&sb, &other.url, Some(ADMIN_TOKEN), Some(&whole_span))
    );
    for (status, _, summary) in [&first, &second] {
        assert!(*status == 200 || *status == 409, "{status}: {summary}");
    }
    let late_units: u64 = [&first, &second]
        .iter()
        .filter(|(status, _, _)| *status == 200)
        .map(|(_, _, s)| s["units"].as_u64().unwrap_or(0))
        .sum();
    let last = report(&sb, &other.url, Some(&span(&windows))).await;
    assert_eq!(
        late_units + last["units"].as_u64().unwrap_or(0),
        5,
        "{first:?}\n{second:?}\n{last}"
    );
    let delta = records_tagged(&sb, " late#1").await;
    assert_eq!(delta.len(), 1, "{delta:#?}");
    assert_eq!(whole(&delta[0]["amount"]), 5);
    let mut totals = expected.totals();
    let pair = (sub.recurly_id.clone(), q0.add_on());
    totals.get_mut(&pair).unwrap().0 += 1;
    totals.get_mut(&pair).unwrap().1 += 5;
    assert_eq!(usage_totals(&sb).await, totals);
}

#[actix_rt::test]
async fn a_store_that_cannot_take_a_batch_answers_503_and_sending_it_again_is_safe() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_on_redis(&redis, 1), 1).await;
    let windows = closed_windows(2);
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    let first = txns("before", sub, q0, windows[0], 6);
    let answer = push(&sb, &b.bridge.url, &first).await;
    assert_eq!(counts(&answer), (6, 6, 0, 0, 0), "{answer}");

    redis.kill();
    let second = txns("during", sub, q1, windows[1], 9);
    let answer = post_array(&sb, &b.bridge.url, &second).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    answer.error();
    let retry_after = answer
        .headers
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("a Retry-After: {:?}", answer.headers));
    assert!(
        retry_after.parse::<u64>().is_ok() || DateTime::parse_from_rfc2822(retry_after).is_ok(),
        "Retry-After is seconds or an HTTP date: {retry_after}"
    );
    let text = metrics(&sb, &b.bridge).await;
    assert!(
        sample(&text, BATCHES, "status=\"unavailable\"") >= 1.0,
        "{text}"
    );

    redis.spawn().await;
    // Sent again until the store takes it: every event exactly once, taken now or before.
    let taken = crate::support::wait_for(
        "the batch taken once Redis is back",
        std::time::Duration::from_secs(20),
        || async {
            let answer = post_array(&sb, &b.bridge.url, &second).await;
            match answer.status {
                200 => Some(answer.body),
                503 => None,
                other => panic!("{other}: {}", answer.text),
            }
        },
    )
    .await;
    assert_adds_up(&taken, 9);
    let (_, accepted, duplicates, _, _) = counts(&taken);
    assert_eq!(accepted + duplicates, 9, "{taken}");
    // What was acknowledged before the outage is still known (persisted in Redis).
    let answer = push(&sb, &b.bridge.url, &first).await;
    assert_eq!(counts(&answer), (6, 0, 6, 0, 0), "{answer}");

    let mut expected = Expected::default();
    expected.add(sub, q0, windows[0].0, 6);
    expected.add(sub, q1, windows[1].0, 9);
    billed_exactly(&sb, &b.bridge.url, &windows, &expected).await;
}

// ---------------------------------------------------------------------------------------------
// Edges

#[actix_rt::test]
async fn a_gzip_body_of_several_members_is_read_whole() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    // A gzip stream is a series of members (RFC 1952 §2.2), as a pipeline appending compressed
    // chunks sends it.
    let first = txns("member-1", sub, q0, window, 5);
    let second = txns("member-2", sub, q1, window, 4);
    let mut body = gzip(&ndjson_body(&first));
    body.extend(gzip(&ndjson_body(&second)));
    let answer = push_raw(
        &sb,
        &b.bridge.url,
        Some("gzip"),
        Some("application/x-ndjson"),
        body,
        9,
    )
    .await;
    assert_eq!(counts(&answer), (9, 9, 0, 0, 0), "{answer}");
    // A JSON array cut across two members.
    let third = txns("member-3", sub, q1, window, 3);
    let text = String::from_utf8(array_body(&third)).unwrap();
    let (head, tail) = text.split_at(text.len() / 2);
    let mut body = gzip(head.as_bytes());
    body.extend(gzip(tail.as_bytes()));
    let answer = push_raw(
        &sb,
        &b.bridge.url,
        Some("gzip"),
        Some("application/json"),
        body,
        3,
    )
    .await;
    assert_eq!(counts(&answer), (3, 3, 0, 0, 0), "{answer}");
    let mut expected = Expected::default();
    expected.add(sub, q0, window.0, 5);
    expected.add(sub, q1, window.0, 7);
    billed_exactly(&sb, &b.bridge.url, &[window], &expected).await;
}

/// Calls on the first and last millisecond of each window and the ones next to them, each
/// window on its own quota, so a call counted in the wrong window shows as a wrong record.
pub fn boundary_calls(
    prefix: &str,
    sub: &Billed,
    quotas: &[Quota],
    windows: &[(i64, i64)],
) -> (Vec<Value>, Expected) {
    let mut events = Vec::new();
    let mut expected = Expected::default();
    for (k, window) in windows.iter().enumerate() {
        let quota = &quotas[k % quotas.len()];
        let stamps = [window.0, window.0 + 1, window.1 - 2, window.1 - 1];
        for (j, at) in stamps.iter().enumerate() {
            events.push(txn(&format!("{prefix}-{k}-{j}"), sub, quota, *at));
        }
        expected.add(sub, quota, window.0, stamps.len() as u64);
    }
    (events, expected)
}

#[actix_rt::test]
async fn a_pushed_call_falls_in_the_window_its_timestamp_names_start_inclusive_end_exclusive() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let windows = closed_windows(3);
    let (events, expected) = boundary_calls("edge", &b.subs[0], &b.quotas, &windows);
    let answer = push(&sb, &b.bridge.url, &events).await;
    assert_eq!(counts(&answer), (12, 12, 0, 0, 0), "{answer}");
    // Window by window, so a call read twice or in the wrong window shows.
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

#[actix_rt::test]
async fn a_big_batch_with_far_apart_repeats_and_concurrent_copies_is_counted_exactly() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 2).await;
    let windows = closed_windows(2);
    let mut rng = Rng(4242);
    let mut unique = Vec::new();
    let mut expected = Expected::default();
    for i in 0..6000 {
        let sub = &b.subs[i % 2];
        let quota = &b.quotas[(i / 2) % 3];
        let window = windows[(i / 6) % 2];
        let at = window.0 + rng.below(60_000) as i64;
        unique.push(txn(&format!("big-{i:05}"), sub, quota, at));
        expected.add(sub, quota, window.0, 1);
    }
    // Every event twice in one batch, the copy 6000 places later.
    let mut batch = unique.clone();
    batch.extend(unique.iter().cloned());
    // Sent over raw connections, so an early answer is read rather than lost to a broken pipe.
    let (answer, refused) = push_until_taken(
        &b.bridge.url,
        None,
        "application/json",
        array_body(&batch),
        batch.len(),
    )
    .await;
    let (_, accepted, duplicates, _, _) = counts(&answer);
    assert_eq!(accepted + duplicates, 12000, "{}", answer["accepted"]);
    if !refused {
        assert_eq!(
            (accepted, duplicates),
            (6000, 6000),
            "{}",
            answer["accepted"]
        );
    }
    // More: 3000 new ones, shuffled with 3000 old ones, sent as three copies at once.
    let mut more: Vec<Value> = Vec::new();
    for i in 6000..9000 {
        let sub = &b.subs[i % 2];
        let quota = &b.quotas[(i / 2) % 3];
        let window = windows[(i / 6) % 2];
        more.push(txn(&format!("big-{i:05}"), sub, quota, window.0 + 7));
        expected.add(sub, quota, window.0, 1);
    }
    more.extend(unique[..3000].iter().cloned());
    rng.shuffle(&mut more);
    let mut reversed = more.clone();
    reversed.reverse();
    let url = &b.bridge.url;
    let ((one, u1), (two, u2), (three, u3)) = tokio::join!(
        push_until_taken(
            url,
            None,
            "application/x-ndjson",
            ndjson_body(&more),
            more.len()
        ),
        push_until_taken(
            url,
            None,
            "application/json",
            array_body(&reversed),
            more.len()
        ),
        push_until_taken(
            url,
            Some("gzip"),
            "application/json",
            gzip(&array_body(&more)),
            more.len()
        )
    );
    let accepted: u64 = [&one, &two, &three].iter().map(|a| counts(a).1).sum();
    let duplicates: u64 = [&one, &two, &three].iter().map(|a| counts(a).2).sum();
    assert_eq!(accepted + duplicates, 3 * 6000, "{one}\n{two}\n{three}");
    if !(u1 || u2 || u3) {
        // No try refused: each new id accepted by exactly one copy.
        assert_eq!((accepted, duplicates), (3000, 3 * 6000 - 3000));
    }
    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["units"], 9000, "{summary}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

/// POSTs `body` (with its Content-Length) over a fresh connection, writing all of it even if the
/// server answers first; the status (0 when no answer came) and the answer's text.
pub async fn raw_full_post(
    bridge_url: &str,
    encoding: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = bridge_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let encoding = encoding
        .map(|e| format!("Content-Encoding: {e}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {INGEST_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: {content_type}\r\n{encoding}Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        bearer(),
        body.len()
    );
    let (mut reader, mut writer) = stream.split();
    let mut answer = Vec::new();
    let write = async {
        let _ = writer.write_all(head.as_bytes()).await;
        let written = writer.write_all(body).await;
        let _ = writer.flush().await;
        written
    };
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        reader.read_to_end(&mut answer),
    );
    let (written, _) = tokio::join!(write, read);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let text = text
        .split_once("\r\n\r\n")
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| format!("(no answer; body written: {written:?}) {text}"));
    (status, text)
}

/// Sends a batch until it is taken (a 503 is sent again, as the contract allows); the answer of
/// the try taken and whether any try was refused with 503.
pub async fn push_until_taken(
    bridge_url: &str,
    encoding: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
    received: usize,
) -> (Value, bool) {
    let mut unavailable = false;
    for _ in 0..20 {
        let (status, text) = raw_full_post(bridge_url, encoding, content_type, &body).await;
        match status {
            200 => {
                let start = text.find('{').unwrap_or(0);
                let answer: Value = serde_json::Deserializer::from_str(&text[start..])
                    .into_iter::<Value>()
                    .next()
                    .and_then(Result::ok)
                    .unwrap_or_else(|| panic!("a JSON answer: {text}"));
                assert_adds_up(&answer, received);
                return (answer, unavailable);
            }
            503 => {
                eprintln!("push_until_taken: 503 {text}");
                unavailable = true;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => panic!("a {} byte batch answered {other}: {text}", body.len()),
        }
    }
    panic!("a batch never taken");
}

/// `events` as a JSON array padded with blank space to exactly `length` bytes.
pub fn padded_array(events: &[Value], length: usize) -> Vec<u8> {
    let mut body = array_body(events);
    assert!(body.len() <= length, "{} > {length}", body.len());
    let pad = length - body.len();
    body.splice(1..1, std::iter::repeat_n(b' ', pad));
    assert_eq!(body.len(), length);
    body
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no Content-Length), `chunk` bytes a chunk,
/// over a fresh connection; the status and JSON answer.
pub async fn chunked_post(
    bridge_url: &str,
    encoding: Option<&str>,
    body: &[u8],
    chunk: usize,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = bridge_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let encoding = encoding
        .map(|e| format!("Content-Encoding: {e}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {INGEST_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\n{encoding}Transfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        bearer()
    );
    let mut wire = head.into_bytes();
    for piece in body.chunks(chunk) {
        wire.extend(format!("{:x}\r\n", piece.len()).into_bytes());
        wire.extend(piece);
        wire.extend(b"\r\n");
    }
    wire.extend(b"0\r\n\r\n");
    // The server may answer before it read everything; that is its right.
    let _ = stream.write_all(&wire).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, rest)| rest.find('{').map(|i| &rest[i..]))
        .and_then(|rest| {
            serde_json::Deserializer::from_str(rest)
                .into_iter::<Value>()
                .next()?
                .ok()
        })
        .unwrap_or(Value::Null);
    (status, json)
}

#[actix_rt::test]
async fn limits_are_exact_and_hold_for_chunked_bodies_too() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(
        &sb,
        &push_overrides(
            "",
            "max_body_bytes = 8192\nmax_decoded_bytes = 24576\nmax_events = 5",
        ),
    )
    .await;
    let at = closed_windows(1)[0].0 + 5;
    let two = |prefix: &str| -> Vec<Value> {
        (0..2)
            .map(|k| {
                event(
                    &format!("{prefix}-{k}"),
                    at,
                    Some("sub-a"),
                    None,
                    Some("silver/calls"),
                    "Success",
                )
            })
            .collect()
    };
    // As received: 8192 bytes are taken, 8193 are not.
    let answer = push_raw(
        &sb,
        &bridge.url,
        None,
        Some("application/json"),
        padded_array(&two("at-limit"), 8192),
        2,
    )
    .await;
    assert_eq!(counts(&answer), (2, 2, 0, 0, 0), "{answer}");
    let over = two("over-limit");
    let answer = post_ingest(
        &sb,
        &bridge.url,
        Some(&bearer()),
        None,
        Some("application/json"),
        padded_array(&over, 8193),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    // Unzipped: 24576 bytes are taken, 24577 are not.
    let answer = push_raw(
        &sb,
        &bridge.url,
        Some("gzip"),
        Some("application/json"),
        gzip(&padded_array(&two("unzipped-at-limit"), 24576)),
        2,
    )
    .await;
    assert_eq!(counts(&answer), (2, 2, 0, 0, 0), "{answer}");
    let zipped_over = two("unzipped-over-limit");
    let answer = post_ingest(
        &sb,
        &bridge.url,
        Some(&bearer()),
        Some("gzip"),
        Some("application/json"),
        gzip(&padded_array(&zipped_over, 24577)),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text);

    // Chunked, with no length announced: the same limits.
    let (status, body) = chunked_post(
        &bridge.url,
        None,
        &padded_array(&two("chunked-at-limit"), 8192),
        1000,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&body), (2, 2, 0, 0, 0), "{body}");
    let chunked_over = two("chunked-over-limit");
    let (status, body) = chunked_post(
        &bridge.url,
        None,
        &padded_array(&chunked_over, 20_000),
        1000,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let chunked_bomb = two("chunked-bomb");
    let (status, body) = chunked_post(
        &bridge.url,
        Some("gzip"),
        &gzip(&padded_array(&chunked_bomb, 100_000)),
        64,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = chunked_post(
        &bridge.url,
        Some("gzip"),
        &gzip(&ndjson_body(&two("chunked-zipped"))),
        16,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&body), (2, 2, 0, 0, 0), "{body}");

    // The refused ones took nothing.
    let mut refused = over;
    refused.extend(zipped_over);
    refused.extend(chunked_over);
    refused.extend(chunked_bomb);
    let answer = push(&sb, &bridge.url, &refused[..4]).await;
    assert_eq!(counts(&answer), (4, 4, 0, 0, 0), "{answer}");
    let answer = push(&sb, &bridge.url, &refused[4..]).await;
    assert_eq!(counts(&answer), (4, 4, 0, 0, 0), "{answer}");
    let text = metrics(&sb, &bridge).await;
    assert_eq!(
        sample(&text, BATCHES, "status=\"too_large\""),
        4.0,
        "{text}"
    );
}

#[actix_rt::test]
async fn after_a_backfill_a_normal_run_bills_late_pushed_calls_once() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let windows = closed_windows(3);
    let (sub, q0) = (&b.subs[0], &b.quotas[0]);
    let first = txns("bf", sub, q0, windows[0], 6);
    push(&sb, &b.bridge.url, &first).await;
    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["units"], 6, "{summary}");
    // Late calls of the oldest window; the next run is a normal one (no bounds, no start_at).
    let mut late = txns("bf-late", sub, q0, windows[0], 2);
    late.push(first[0].clone());
    let answer = push(&sb, &b.bridge.url, &late).await;
    assert_eq!(counts(&answer), (3, 2, 1, 0, 0), "{answer}");
    let normal = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&normal["records"], &normal["units"]),
        (&json!(1), &json!(2)),
        "{normal}"
    );
    let delta = records_tagged(&sb, " late#1").await;
    assert_eq!(delta.len(), 1, "{delta:#?}");
    assert_eq!(
        delta[0]["merchant_tag"],
        format!(
            "amplify:{} window:{}-{} late#1",
            sub.amplify_id, windows[0].0, windows[0].1
        )
    );
    let again = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&again["records"], &again["units"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    let mut totals = BTreeMap::new();
    totals.insert((sub.recurly_id.clone(), q0.add_on()), (2u64, 8u64));
    assert_eq!(usage_totals(&sb).await, totals);
}

#[actix_rt::test]
async fn a_dry_run_of_pushed_traffic_bills_nothing_and_takes_nothing_from_the_next_run() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 2).await;
    let windows = closed_windows(2);
    let mut expected = Expected::default();
    let mut events = Vec::new();
    for (i, sub) in b.subs.iter().enumerate() {
        for (j, quota) in b.quotas.iter().enumerate() {
            for (k, window) in windows.iter().enumerate() {
                let n = 1 + (i * 5 + j * 3 + k) % 4;
                events.extend(txns(&format!("dry-{i}-{j}-{k}"), sub, quota, *window, n));
                expected.add(sub, quota, window.0, n as u64);
            }
        }
    }
    push(&sb, &b.bridge.url, &events).await;
    let mut body = span(&windows);
    body["dry_run"] = json!(true);
    for _ in 0..2 {
        let dry = report(&sb, &b.bridge.url, Some(&body)).await;
        assert_eq!(dry["dry_run"], true, "{dry}");
        assert_eq!(dry["units"], expected.units(), "{dry}");
        assert_eq!(dry["records"], expected.records(), "{dry}");
    }
    assert!(
        usage_totals(&sb).await.is_empty(),
        "a dry run bills nothing"
    );
    let real = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(real["units"], expected.units(), "{real}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
    // A dry run now has nothing left to report.
    let dry = report(&sb, &b.bridge.url, Some(&body)).await;
    assert_eq!(
        (&dry["records"], &dry["units"]),
        (&json!(0), &json!(0)),
        "{dry}"
    );
}

#[actix_rt::test]
async fn with_billed_count_success_late_failures_add_no_record_and_late_successes_do() {
    let sb = bridge_sandbox().await;
    let windows = closed_windows(2);
    let b = billed(
        &sb,
        &push_overrides(
            &format!(
                "billed_count = \"success\"\nstart_at = \"{}\"",
                rfc3339(windows[0].0)
            ),
            "",
        ),
        1,
    )
    .await;
    let (sub, q0) = (&b.subs[0], &b.quotas[0]);
    let at = windows[1].0 + 10;
    let s = Some(sub.amplify_id.as_str());
    let q = Some(q0.id.as_str());
    push(
        &sb,
        &b.bridge.url,
        &[
            event("ok-1", at, s, q, None, "Success"),
            event("ok-2", at, s, q, None, "Success"),
            event("ko-1", at, s, q, None, "Failure"),
        ],
    )
    .await;
    let first = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&first["records"], &first["units"]),
        (&json!(1), &json!(2)),
        "{first}"
    );
    push(
        &sb,
        &b.bridge.url,
        &[
            event("ko-2", at, s, q, None, "Failure"),
            event("ko-3", at, s, q, None, "Exception"),
            event("ko-4", at, s, q, None, "Unknown"),
        ],
    )
    .await;
    let second = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&second["records"], &second["units"]),
        (&json!(0), &json!(0)),
        "late failures bill nothing: {second}"
    );
    push(
        &sb,
        &b.bridge.url,
        &[
            event("ok-3", at, s, q, None, "Success"),
            event("ko-5", at, s, q, None, "Failure"),
        ],
    )
    .await;
    let third = report(&sb, &b.bridge.url, None).await;
    assert_eq!(
        (&third["records"], &third["units"]),
        (&json!(1), &json!(1)),
        "{third}"
    );
    assert_eq!(records_tagged(&sb, " late#1").await.len(), 1);
    let mut totals = BTreeMap::new();
    totals.insert((sub.recurly_id.clone(), q0.add_on()), (2u64, 3u64));
    assert_eq!(usage_totals(&sb).await, totals);
}

#[actix_rt::test]
async fn transaction_ids_are_compared_as_json_strings() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &push_overrides("", "")).await;
    let at = closed_windows(1)[0].0 + 5;
    let line = |id_json: &str| {
        let mut e = event(
            "x",
            at,
            Some("sub-a"),
            None,
            Some("silver/calls"),
            "Success",
        );
        e["transactionId"] = json!("PLACEHOLDER");
        e.to_string().replace("\"PLACEHOLDER\"", id_json)
    };
    let lines = [
        line("\"abc\""),
        line("\"ABC\""),        // case matters
        line("\"\\u0061bc\""),  // "abc" escaped: the same id
        line("\"abc \""),       // a trailing space matters
        line("\"caf\u{e9}\""),  // UTF-8
        line("\"caf\\u00e9\""), // the same, escaped
        line("\"abcd\""),
        line("\"ab\""),
    ];
    let body = lines.join("\n").into_bytes();
    let answer = push_raw(
        &sb,
        &bridge.url,
        None,
        Some("application/x-ndjson"),
        body,
        8,
    )
    .await;
    assert_eq!(counts(&answer), (8, 6, 2, 0, 0), "{answer}");
}

#[actix_rt::test]
async fn the_first_non_blank_byte_decides_whatever_the_content_type_says() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &push_overrides("", "")).await;
    let at = closed_windows(1)[0].0 + 5;
    let three = |prefix: &str| -> Vec<Value> {
        (0..3)
            .map(|k| {
                event(
                    &format!("{prefix}-{k}"),
                    at,
                    Some("sub-a"),
                    None,
                    Some("silver/calls"),
                    "Success",
                )
            })
            .collect()
    };
    for (prefix, content_type, ndjson) in [
        ("ndjson-as-json", "application/json", true),
        ("array-as-ndjson", "application/x-ndjson", false),
        ("array-as-text", "text/plain", false),
        ("ndjson-as-octets", "application/octet-stream", true),
    ] {
        let events = three(prefix);
        let body = if ndjson {
            ndjson_body(&events)
        } else {
            array_body(&events)
        };
        let answer = push_raw(&sb, &bridge.url, None, Some(content_type), body, 3).await;
        assert_eq!(counts(&answer), (3, 3, 0, 0, 0), "{prefix}: {answer}");
    }
}

#[actix_rt::test]
async fn a_refused_copy_takes_nothing_so_a_later_good_copy_in_the_batch_is_accepted() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, &push_overrides("", "")).await;
    let at = closed_windows(1)[0].0 + 5;
    let now = now_ms();
    let e = |id: &str, t: i64| event(id, t, Some("sub-a"), None, Some("silver/calls"), "Success");
    let mut no_summary = e("z", at);
    no_summary
        .as_object_mut()
        .unwrap()
        .remove("transactionSummary");
    let batch = [
        e("x", now - 20 * HOUR_MS),
        e("x", at),
        e("y", now + HOUR_MS),
        e("y", at),
        no_summary,
        e("z", at),
    ];
    let answer = push(&sb, &bridge.url, &batch).await;
    assert_eq!(counts(&answer), (6, 3, 0, 0, 3), "{answer:#}");
    let expected: Vec<(u64, String)> = [(0, "too_old"), (2, "in_future"), (4, "invalid")]
        .into_iter()
        .map(|(i, r)| (i, r.to_owned()))
        .collect();
    assert_eq!(refusals(&answer), expected, "{answer:#}");
}

#[actix_rt::test]
async fn with_source_push_traceability_is_not_read_so_its_copies_are_not_billed() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &push_overrides("", ""), 1).await;
    let windows = closed_windows(2);
    let (sub, q0, q1) = (&b.subs[0], &b.quotas[0], &b.quotas[1]);
    let pushed = txns("both-ways", sub, q0, windows[0], 5);
    // The same calls (and more) as Amplify's agents would have recorded them.
    let mut recorded = pushed.clone();
    recorded.extend(txns("only-in-traceability", sub, q1, windows[1], 7));
    crate::reporting::inject(&sb, &recorded).await;
    push(&sb, &b.bridge.url, &pushed).await;
    let status = sb
        .http
        .delete(sb.at("/_sandbox/requests"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
    let summary = report(&sb, &b.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["units"], 5, "only what was pushed: {summary}");
    let mut expected = Expected::default();
    expected.add(sub, q0, windows[0].0, 5);
    assert_eq!(usage_totals(&sb).await, expected.totals());
    let reads: Vec<Value> =
        crate::provisioning::sandbox_json(&sb, "/_sandbox/requests?upstream=amplify")
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/traceability/"))
            })
            .cloned()
            .collect();
    assert!(
        reads.is_empty(),
        "no Traceability read with source = \"push\": {reads:#?}"
    );
}
