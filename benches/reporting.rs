//! One traffic-reporting run at scale (issue 4): `REPORT_SUBS` subscriptions (default 10,000)
//! × 3 quotas, each with traffic in one window, reported by the real `billing-bridge report`
//! binary (a child process, so its peak memory is its own) against the sandbox with production
//! limits: Amplify 25 requests/minute per client, a Recurly production site (1,000 GET/minute;
//! usage POSTs are not limited). Prints the Recurly calls against the non-zero (subscription,
//! add-on) pairs (the ratio must be 1.00), the Amplify calls, the wall time and the child's peak
//! RSS, for a cold run (the directory of billed subscriptions read from Amplify first) and a
//! second run of the same window (nothing left to report).
//!
//! `cargo bench --bench reporting`; env `REPORT_SUBS`, `REPORT_EVENTS` (traffic events, default
//! 20 per pair), `REPORT_AMPLIFY_RPM` (default 25; raise it to see the bridge's own speed).
//! Under `cargo test --benches` it runs a small smoke pass with the Amplify limit raised.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use billing_bridge_sandbox::{
    AmplifySettings, RecorderSettings, RecurlyMode, RecurlySettings, SandboxConfig,
};
use serde_json::{Value, json};
use support::{benching, env_or};

const HOUR_MS: i64 = 3_600_000;
const QUOTAS: usize = 3;

async fn post(http: &reqwest::Client, url: String, body: &Value) -> Value {
    let response = http.post(&url).json(body).send().await.expect("sandbox");
    let status = response.status();
    let text = response.text().await.expect("sandbox answer");
    assert!(
        status.is_success(),
        "{url}: {status} {}",
        &text[..text.len().min(500)]
    );
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn count(http: &reqwest::Client, sandbox: &str, upstream: &str) -> (usize, usize) {
    let requests: Value = http
        .get(format!("{sandbox}/_sandbox/requests?upstream={upstream}"))
        .send()
        .await
        .expect("recorder")
        .json()
        .await
        .expect("recorder answer");
    let all = requests.as_array().map(Vec::len).unwrap_or(0);
    let posts = requests
        .as_array()
        .map(|r| r.iter().filter(|r| r["method"] == "POST").count())
        .unwrap_or(0);
    (all, posts)
}

/// Runs `billing-bridge report` and samples its peak RSS (VmHWM) until it exits.
fn run_report(config: &std::path::Path, window: (i64, i64)) -> (Value, Duration, u64) {
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_billing-bridge"))
        .args(["report", "--json", "--config"])
        .arg(config)
        .args([
            "--from",
            &window.0.to_string(),
            "--to",
            &window.1.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("billing-bridge report starts");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(kb) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if child.try_wait().expect("child status").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let output = child.wait_with_output().expect("report output");
    assert!(
        output.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let summary = serde_json::from_slice(&output.stdout).expect("report --json prints JSON");
    (summary, elapsed, peak_kb)
}

fn main() {
    let full = benching();
    let subs = env_or("REPORT_SUBS", if full { 10_000 } else { 60 }) as usize;
    let events = env_or("REPORT_EVENTS", (subs * QUOTAS * 20) as u64);
    let amplify_rpm = env_or("REPORT_AMPLIFY_RPM", if full { 25 } else { 6_000 }) as u32;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let sandbox = billing_bridge_sandbox::start(
            SandboxConfig {
                recorder: RecorderSettings { limit: 1_000_000 },
                amplify: AmplifySettings {
                    requests_per_minute: amplify_rpm,
                    ..AmplifySettings::default()
                },
                recurly: RecurlySettings {
                    mode: RecurlyMode::Production,
                    ..RecurlySettings::default()
                },
                workers: Some(1),
                ..SandboxConfig::default()
            },
            "127.0.0.1:0",
        )
        .await
        .expect("sandbox");
        let sb = sandbox.url();
        let http = reqwest::Client::new();
        let seeding = Instant::now();
        // Amplify: the billed product, its plan and quotas (one asset resource each).
        let mut catalog = vec![
            json!({"kind": "Product", "name": "bench", "attributes": {"billingSystem": "recurly"}, "state": "active"}),
            json!({"kind": "ProductPlan", "name": "bench-plan", "spec": {"product": "bench", "type": "paid"}, "state": "active"}),
        ];
        for q in 0..QUOTAS {
            catalog.push(json!({"kind": "Quota", "name": format!("quota-{q}"), "metadata": {"scope": {"name": "bench-plan"}},
                "spec": {"unit": "transactions", "resources": [{"kind": "AssetResource", "name": format!("api/resource-{q}")}]}}));
        }
        let created = post(&http, format!("{sb}/_sandbox/seed"), &json!({"amplify": {"resources": catalog}})).await;
        let quota_ids: Vec<String> = created["resources"]
            .as_array()
            .or_else(|| created["amplify"]["resources"].as_array())
            .expect("seeded resources")
            .iter()
            .filter(|r| r["kind"] == "Quota")
            .map(|r| r["metadata"]["id"].as_str().expect("quota id").to_owned())
            .collect();
        assert_eq!(quota_ids.len(), QUOTAS);
        // Recurly: the plan with a usage add-on per quota, an account and a subscription per
        // consumer, as the provisioners leave them.
        let add_ons: Vec<Value> = quota_ids
            .iter()
            .enumerate()
            .map(|(i, q)| {
                json!({"code": format!("amplify-quota-{q}"), "name": format!("Quota {q}"),
                       "accounting_code": format!("bench-quota-{i}"),
                       "add_on_type": "usage", "usage_type": "price",
                       "measured_unit_name": "transactions",
                       "currencies": [{"currency": "USD", "unit_amount_decimal": "0.001"}]})
            })
            .collect();
        let accounts: Vec<Value> = (0..subs)
            .map(|i| json!({"code": format!("amplify-team-t{i}")}))
            .collect();
        let subscriptions: Vec<Value> = (0..subs)
            .map(|i| {
                json!({"plan_code": "amplify-plan-bench", "currency": "USD",
                       "account": {"code": format!("amplify-team-t{i}")},
                       "add_ons": quota_ids.iter().map(|q| json!({"code": format!("amplify-quota-{q}")})).collect::<Vec<_>>()})
            })
            .collect();
        let seeded = post(
            &http,
            format!("{sb}/_sandbox/seed"),
            &json!({"recurly": {
                "measured_units": [{"name": "transactions", "display_name": "Transactions"}],
                "accounts": accounts,
                "plans": [{"code": "amplify-plan-bench", "name": "Bench", "accounting_code": "bench-plan",
                           "currencies": [{"currency": "USD", "unit_amount": 0}],
                           "add_ons": add_ons}],
                "subscriptions": subscriptions}}),
        )
        .await;
        let recurly_ids: Vec<String> = seeded["recurly"]["subscriptions"]
            .as_array()
            .or_else(|| seeded["subscriptions"].as_array())
            .expect("seeded subscriptions")
            .iter()
            .map(|s| s["id"].as_str().expect("subscription id").to_owned())
            .collect();
        assert_eq!(recurly_ids.len(), subs);
        // Amplify: the subscriptions, approved and linked.
        let linked: Vec<Value> = recurly_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({"kind": "Subscription", "name": format!("sub-{i}"),
                       "spec": {"product": "bench", "plan": {"name": "bench-plan"}},
                       "attributes": {"recurlySubscriptionId": id},
                       "approval": {"state": "approved"}})
            })
            .collect();
        post(&http, format!("{sb}/_sandbox/seed"), &json!({"amplify": {"resources": linked}})).await;
        // Traffic in one closed window, spread uniformly over (subscription, resource) pairs.
        let now = chrono::Utc::now().timestamp_millis();
        let window = ((now / HOUR_MS - 2) * HOUR_MS, (now / HOUR_MS - 1) * HOUR_MS);
        let generated = post(
            &http,
            format!("{sb}/_sandbox/traffic/generate"),
            &json!({"seed": 4, "count": events, "from": window.0, "to": window.1}),
        )
        .await;
        let totals = generated["totals"].as_array().expect("generated totals");
        let traffic: u64 = totals.iter().filter_map(|t| t["totalCount"].as_u64()).sum();
        let pairs = totals.iter().filter(|t| t["totalCount"].as_u64() > Some(0)).count();
        let _ = http.delete(format!("{sb}/_sandbox/requests")).send().await;
        println!(
            "seeded {subs} subscriptions x {QUOTAS} quotas and {traffic} calls ({pairs} non-zero pairs) in {:.1} s",
            seeding.elapsed().as_secs_f64()
        );

        let dir = std::env::temp_dir().join(format!("bb-report-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("bridge.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[amplify]
central_url = "{sb}/amplify"
auth_url = "{sb}/auth"
platform_url = "{sb}/platform"
client_id = "bridge"
client_secret = "bench-secret"
requests_per_minute = {amplify_rpm}
[recurly]
base_url = "{sb}/recurly"
api_key = "recurly-bench-key"
site = "production"
requests_per_minute = 1000
[reporting]
schedule = ""
delay = "0s"
concurrency = 16
[store]
state_file = "{state}"
"#,
                state = dir.join("state").display()
            ),
        )
        .expect("bench config");

        for (label, expect_records) in [("cold run", pairs), ("same window again", 0)] {
            let (summary, elapsed, peak_kb) = run_report(&config, window);
            let (recurly_calls, recurly_posts) = count(&http, &sb, "recurly").await;
            let (amplify_calls, _) = count(&http, &sb, "amplify").await;
            let _ = http.delete(format!("{sb}/_sandbox/requests")).send().await;
            let records = summary["records"].as_u64().unwrap_or(0) as usize;
            assert_eq!(records, expect_records, "{label}: records {summary}");
            let ratio = if pairs > 0 && expect_records > 0 {
                format!("{:.2}", recurly_calls as f64 / pairs as f64)
            } else {
                "-".into()
            };
            println!(
                "{label}: {records} records, {} units | Recurly calls {recurly_calls} ({recurly_posts} POST) for {expect_records} non-zero pairs, ratio {ratio} | Amplify calls {amplify_calls} at {amplify_rpm}/min | wall {:.1} s | peak RSS {:.1} MB",
                summary["units"],
                elapsed.as_secs_f64(),
                peak_kb as f64 / 1024.0
            );
            if expect_records > 0 {
                assert_eq!(recurly_posts, pairs, "one usage record per non-zero pair");
                // Besides: the billed subscriptions' periods read once per process (the renewal
                // rule dates usage by them; docs/renewals.md): listed 200 a call from
                // `periods::LIST_FROM` subscriptions on, one call each below.
                let reads = recurly_calls - recurly_posts;
                let allowed = if subs >= billing_bridge_pipeline::periods::LIST_FROM {
                    subs.div_ceil(200)
                } else {
                    subs
                };
                assert!(
                    reads <= allowed,
                    "at most {allowed} period reads for {subs} subscriptions: {reads}"
                );
            }
        }
        let totals: Value = http
            .get(format!("{sb}/_sandbox/recurly/usage_totals"))
            .send()
            .await
            .expect("totals")
            .json()
            .await
            .expect("totals answer");
        let in_recurly: f64 = totals
            .as_array()
            .map(|t| t.iter().filter_map(|r| r["amount"].as_f64()).sum())
            .unwrap_or(0.0);
        assert_eq!(in_recurly as u64, traffic, "Recurly holds exactly the traffic");
        println!("Recurly holds {in_recurly} units for {traffic} calls: exact");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
