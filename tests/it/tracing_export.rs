//! Traces as an operator's collector receives them: the real `billing-bridge serve` process,
//! configured through `BRIDGE_` variables to export spans over OTLP/HTTP to the sandbox's
//! receiver, provisions one plan from a real webhook delivery. One trace holds the webhook, the
//! provisioning pass and every upstream call, parent to child; and no configured secret appears
//! in any span, log line or metric.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_bridge_pipeline::hooks::{HookSpec, install_hooks};
use serde_json::Value;

use crate::provisioning::{Provider, plan_code, recurly, seed};

/// A separate process under a loaded machine (the whole suite runs at once on two cores) can take
/// longer than the in-process tests' 10 s; waiting longer costs nothing when it is quick.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
use crate::support::{TestSandbox, bridge_config, bridge_sandbox, wait_for};

const CLIENT_SECRET: &str = "otlp-amplify-client-secret";
const RECURLY_KEY: &str = "otlp-recurly-api-key";
const WEBHOOK_SECRET: &str = "Bearer otlp-webhook-secret";
const ADMIN_TOKEN: &str = "otlp-admin-token";
const SENDGRID_KEY: &str = "SG.otlp-sendgrid-key";
/// The secret part of the Teams URL: its path.
const TEAMS_SECRET: &str = "otlp-teams-channel-secret";

/// The bridge process; killed when dropped, its stderr kept for the secret check.
struct BridgeProcess {
    child: Child,
    url: String,
    logs: Arc<Mutex<String>>,
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_bridge(sb: &TestSandbox) -> BridgeProcess {
    let env = [
        ("BRIDGE_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("BRIDGE_SERVER__ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ("BRIDGE_WEBHOOK__SECRET", WEBHOOK_SECRET.into()),
        ("BRIDGE_AMPLIFY__CENTRAL_URL", sb.at("/amplify")),
        ("BRIDGE_AMPLIFY__AUTH_URL", sb.at("/auth")),
        ("BRIDGE_AMPLIFY__PLATFORM_URL", sb.at("/platform")),
        ("BRIDGE_AMPLIFY__CLIENT_ID", "bridge".into()),
        ("BRIDGE_AMPLIFY__CLIENT_SECRET", CLIENT_SECRET.into()),
        ("BRIDGE_AMPLIFY__REQUESTS_PER_MINUTE", "600".into()),
        ("BRIDGE_RECURLY__BASE_URL", sb.at("/recurly")),
        ("BRIDGE_RECURLY__API_KEY", RECURLY_KEY.into()),
        ("BRIDGE_RECURLY__SITE", "sandbox".into()),
        ("BRIDGE_RECURLY__REQUESTS_PER_MINUTE", "400".into()),
        (
            "BRIDGE_PROVISIONING__MARKETPLACE_URL",
            "https://marketplace.example".into(),
        ),
        ("BRIDGE_PROVISIONING__RECONCILE_EVERY", "1h".into()),
        (
            "BRIDGE_NOTIFY__TEAMS__WEBHOOK_URL",
            sb.at(&format!("/teams/webhookb2/{TEAMS_SECRET}")),
        ),
        ("BRIDGE_NOTIFY__MAIL__BACKEND", "sendgrid".into()),
        ("BRIDGE_NOTIFY__MAIL__FROM", "billing@market.example".into()),
        (
            "BRIDGE_NOTIFY__MAIL__SENDGRID__API_KEY",
            SENDGRID_KEY.into(),
        ),
        (
            "BRIDGE_NOTIFY__MAIL__SENDGRID__BASE_URL",
            sb.at("/sendgrid"),
        ),
        ("BRIDGE_TELEMETRY__OTLP_ENDPOINT", sb.at("/otlp")),
        ("BRIDGE_TELEMETRY__SERVICE_NAME", "bridge-under-test".into()),
        ("BRIDGE_TELEMETRY__LOG_FORMAT", "json".into()),
        // Nothing of this test is written into the working directory.
        ("BRIDGE_STORE__STATE_FILE", String::new()),
    ];
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing-bridge"));
    command
        .arg("serve")
        // Every level the bridge's own crates log at, so a secret in a debug line is caught too.
        .env("RUST_LOG", "info,billing_bridge=debug,billing_bridge_pipeline=debug,billing_bridge_server=debug,billing_bridge_amplify=debug,billing_bridge_billing=debug,billing_bridge_notify=debug,billing_bridge_upstream=debug")
        // Export spans within a tenth of a second instead of the default five.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("BRIDGE_")) {
        command.env_remove(key);
    }
    let mut child = command.envs(env).spawn().expect("the bridge starts");
    let logs = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("stderr");
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    // `serve` prints "billing-bridge: http://127.0.0.1:PORT (webhooks at …)" once it listens.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("the bridge says where it listens");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}; logs:\n{}", logs.lock().unwrap()))
        .to_owned();
    BridgeProcess { child, url, logs }
}

async fn spans(sb: &TestSandbox) -> Vec<Value> {
    sb.http
        .get(sb.at("/_sandbox/otlp/spans"))
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[actix_rt::test]
async fn one_webhook_is_one_trace_through_provisioning_and_no_secret_leaks() {
    let sb = bridge_sandbox().await;
    let bridge = start_bridge(&sb);
    // The hooks, as `install-hooks` creates them, pointing at the process.
    let (setup, _) = billing_bridge_pipeline::Bridge::build(
        bridge_config(&sb, ""),
        billing_bridge_upstream::RetryPolicy::default(),
    )
    .unwrap();
    install_hooks(
        &setup.amplify,
        &HookSpec {
            name: "billing-bridge",
            url: &format!("{}{}", bridge.url, billing_bridge_server::WEBHOOK_PATH),
            header: "Authorization",
            secret: WEBHOOK_SECRET,
        },
    )
    .await
    .expect("hooks installed");

    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("traced").await;
    let plan_name = plan["name"].as_str().unwrap().to_owned();
    provider.activate(&plan_name).await;
    let code = plan_code(&plan);
    wait_for("the Recurly plan", WAIT, || async {
        (recurly(&sb, &format!("/plans/code-{code}")).await.0 == 200).then_some(())
    })
    .await;

    // The provisioning span ends after its calls; its export follows within the batch delay.
    let (webhook, provisioning, all) = wait_for("the plan's spans", WAIT, || async {
        let all = spans(&sb).await;
        let provisioning = all
            .iter()
            .find(|s| {
                s["name"] == "provision_plan"
                    && attr(s, "resource") == plan_name.as_str()
                    && attr(s, "outcome") == "provisioned"
            })?
            .clone();
        let webhook = all
            .iter()
            .find(|s| s["span_id"] == provisioning["parent_span_id"])?
            .clone();
        Some((webhook, provisioning, all))
    })
    .await;

    // The webhook's span is the trace's root, and says which event it was.
    assert_eq!(webhook["name"], "webhook", "{webhook}");
    assert_eq!(webhook["parent_span_id"], "", "{webhook}");
    assert_eq!(webhook["service_name"], "bridge-under-test");
    assert_eq!(attr(&webhook, "outcome"), "accepted", "{webhook}");
    assert_eq!(attr(&webhook, "resource"), plan_name.as_str(), "{webhook}");
    assert_eq!(attr(&webhook, "kind"), "ProductPlan", "{webhook}");
    let correlation = attr(&webhook, "correlation_id")
        .as_str()
        .unwrap_or_else(|| panic!("Amplify's correlationId on {webhook}"));
    assert!(!correlation.is_empty());
    assert!(!attr(&webhook, "event_id").as_str().unwrap().is_empty());

    // The provisioning pass continues the same trace, carrying the same correlation id.
    assert_eq!(provisioning["trace_id"], webhook["trace_id"]);
    assert_eq!(attr(&provisioning, "correlation_id"), correlation);
    assert_eq!(attr(&provisioning, "event_id"), attr(&webhook, "event_id"));

    // Every upstream call of the pass is a child of it, in the same trace, named by upstream and
    // operation, with its answer's status. (Its other children are the notices it sent.)
    let calls: Vec<&Value> = all
        .iter()
        .filter(|s| s["parent_span_id"] == provisioning["span_id"] && s["name"] != "notify")
        .collect();
    assert!(
        calls.iter().all(|c| c["trace_id"] == webhook["trace_id"]
            && attr(c, "upstream").is_string()
            && attr(c, "operation").is_string()),
        "{calls:#?}"
    );
    let create = calls
        .iter()
        .find(|c| c["name"] == "recurly create plan")
        .unwrap_or_else(|| panic!("a Recurly create-plan call under the pass: {calls:#?}"));
    assert_eq!(attr(create, "http.request.method"), "POST");
    assert_eq!(attr(create, "http.response.status_code"), 201);
    assert_eq!(attr(create, "outcome"), "2xx");
    assert!(
        calls.iter().any(|c| attr(c, "upstream") == "amplify"),
        "the pass reads the plan from Amplify: {calls:#?}"
    );
    let (start, end) = (
        provisioning["start_time_unix_nano"].as_u64().unwrap(),
        provisioning["end_time_unix_nano"].as_u64().unwrap(),
    );
    for call in &calls {
        assert!(
            call["start_time_unix_nano"].as_u64().unwrap() >= start
                && call["end_time_unix_nano"].as_u64().unwrap() <= end,
            "a child lies within its parent: {call}"
        );
    }

    // The provider's card about the plan is delivered later by the Notifier, still in the trace.
    let (notify, post) = wait_for("the card's delivery spans", WAIT, || async {
        let all = spans(&sb).await;
        let notify = all
            .iter()
            .find(|s| s["name"] == "notify" && s["parent_span_id"] == provisioning["span_id"])?
            .clone();
        let post = all
            .iter()
            .find(|s| s["parent_span_id"] == notify["span_id"])?
            .clone();
        Some((notify, post))
    })
    .await;
    assert_eq!(notify["trace_id"], webhook["trace_id"]);
    assert_eq!(attr(&notify, "channel"), "teams");
    assert_eq!(attr(&notify, "outcome"), "sent");
    assert_eq!(post["name"], "teams post card", "{post}");
    assert_eq!(attr(&post, "http.response.status_code"), 200);

    // A subscription too, so the secret check below covers SendGrid and the account lookups: its
    // own trace, with the approval mail's delivery in it.
    seed(&sb, serde_json::json!({
        "amplify": {"users": [{"guid": "user-1", "email": "dev@consumer.example"}]},
        "recurly": {"accounts": [{"code": "amplify-team-team-1", "email": "billing@consumer.example"}]}
    }))
    .await;
    provider
        .subscribe("sub-1", &plan_name, "team-1", "user-1")
        .await;
    let (subscription, mail) = wait_for("the subscription's spans", WAIT, || async {
        let all = spans(&sb).await;
        let subscription = all
            .iter()
            .find(|s| s["name"] == "provision_subscription" && attr(s, "outcome") == "approved")?
            .clone();
        let notify = all.iter().find(|s| {
            s["name"] == "notify"
                && attr(s, "channel") == "mail"
                && s["parent_span_id"] == subscription["span_id"]
        })?;
        let mail = all
            .iter()
            .find(|s| s["parent_span_id"] == notify["span_id"])?
            .clone();
        Some((subscription, mail))
    })
    .await;
    assert_ne!(
        subscription["trace_id"], webhook["trace_id"],
        "one trace per webhook"
    );
    assert_eq!(mail["name"], "sendgrid send mail");
    assert_eq!(mail["trace_id"], subscription["trace_id"]);
    assert_eq!(attr(&mail, "http.response.status_code"), 202);

    // No secret anywhere an operator's tools look: spans, log lines, metrics.
    let metrics = sb
        .http
        .get(format!("{}/metrics", bridge.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spans_text = serde_json::to_string(&spans(&sb).await).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = bridge.logs.lock().unwrap().clone();
    assert!(
        logs.lines()
            .any(
                |l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("plan provisioning pass")))
            ),
        "JSON log lines, the pass among them:\n{logs}"
    );
    assert!(metrics.contains("billing_bridge_upstream_requests_total{upstream=\"recurly\",operation=\"create_plan\",status=\"2xx\"} 1"), "{metrics}");
    let webhook_secret = WEBHOOK_SECRET.trim_start_matches("Bearer ");
    for secret in [
        CLIENT_SECRET,
        RECURLY_KEY,
        webhook_secret,
        ADMIN_TOKEN,
        SENDGRID_KEY,
        TEAMS_SECRET,
    ] {
        for (what, text) in [("span", &spans_text), ("log", &logs), ("metric", &metrics)] {
            assert!(
                !text.contains(secret),
                "the secret {secret} appears in a {what}"
            );
        }
    }
    // The check above looks at real output: the bridge did log, export and count.
    assert!(logs.len() > 1_000 && spans_text.len() > 1_000 && metrics.len() > 1_000);
}

#[actix_rt::test]
async fn the_sandbox_trace_receiver_takes_otlp_json_and_refuses_what_does_not_decode() {
    let sb = crate::support::default_sandbox().await;
    let request = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "4BF92F3577B34DA6A3CE929D0E0E4736", "spanId": "00f067aa0ba902b7",
            "parentSpanId": "", "name": "root",
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000100000000",
            "attributes": [
                {"key": "count", "value": {"intValue": "3"}},
                {"key": "ok", "value": {"boolValue": true}}
            ]
        }]}]
    }]});
    let answer = sb
        .http
        .post(sb.at("/otlp/v1/traces"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let received = spans(&sb).await;
    assert_eq!(received.len(), 1, "{received:?}");
    let span = &received[0];
    assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["span_id"], "00f067aa0ba902b7");
    assert_eq!(span["parent_span_id"], "");
    assert_eq!(span["service_name"], "svc");
    assert_eq!(attr(span, "count"), 3);
    assert_eq!(attr(span, "ok"), true);
    assert_eq!(span["end_time_unix_nano"], 1_700_000_000_100_000_000u64);

    let garbage = sb
        .http
        .post(sb.at("/otlp/v1/traces"))
        .header("Content-Type", "application/x-protobuf")
        .body(vec![0xff_u8; 16])
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let cleared = sb
        .http
        .delete(sb.at("/_sandbox/otlp/spans"))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    assert!(spans(&sb).await.is_empty());
}
