//! The `billing-bridge` binary as a user runs it: `config`, `check`, `install-hooks`, `demo`,
//! configured through `BRIDGE_` environment variables against a sandbox on 127.0.0.1:0.

use std::process::Output;
use std::time::{Duration, Instant};

use billing_bridge_sandbox::{RecurlySettings, SandboxConfig};
use serde_json::Value;

use crate::support::{TestSandbox, amplify_token, spawn_sandbox};

fn bridge_env(sb: &TestSandbox) -> Vec<(String, String)> {
    [
        ("BRIDGE_AMPLIFY__CENTRAL_URL", format!("{}/amplify", sb.url)),
        ("BRIDGE_AMPLIFY__AUTH_URL", format!("{}/auth", sb.url)),
        (
            "BRIDGE_AMPLIFY__PLATFORM_URL",
            format!("{}/platform", sb.url),
        ),
        ("BRIDGE_AMPLIFY__CLIENT_ID", "bridge".into()),
        ("BRIDGE_AMPLIFY__CLIENT_SECRET", "cli-client-secret".into()),
        ("BRIDGE_RECURLY__BASE_URL", format!("{}/recurly", sb.url)),
        ("BRIDGE_RECURLY__API_KEY", "cli-recurly-key".into()),
        ("BRIDGE_WEBHOOK__SECRET", "Bearer cli-webhook-secret".into()),
        (
            "BRIDGE_PROVISIONING__MARKETPLACE_URL",
            "https://marketplace.example".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs the binary off the async threads, with only the given BRIDGE_ variables.
async fn run(args: &[&str], env: Vec<(String, String)>) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_billing-bridge"));
        command
            .args(&args)
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LOG", "warn");
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("BRIDGE_")) {
            command.env_remove(key);
        }
        command.envs(env).output().expect("the binary runs")
    })
    .await
    .expect("join")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn config_prints_the_commented_defaults() {
    let output = run(&["config"], Vec::new()).await;
    assert!(output.status.success());
    let text = stdout(&output);
    for section in [
        "[server]",
        "[webhook]",
        "[amplify]",
        "[recurly]",
        "[provisioning]",
        "[notify.teams]",
        "[store]",
    ] {
        assert!(text.contains(section), "missing {section}");
    }
    assert!(
        text.lines().filter(|l| l.starts_with('#')).count() > 20,
        "every setting is commented"
    );
}

#[tokio::test]
async fn check_reports_every_upstream_and_fails_when_one_refuses() {
    let sb = spawn_sandbox(SandboxConfig {
        recurly: RecurlySettings {
            api_key: Some("cli-recurly-key".into()),
            ..RecurlySettings::default()
        },
        ..SandboxConfig::default()
    })
    .await;
    let output = run(&["check"], bridge_env(&sb)).await;
    let table = stdout(&output);
    assert!(
        output.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for row in [
        "configuration            ok",
        "Amplify token            ok",
        "Amplify catalog          ok",
        "Recurly                  ok",
        "Teams channel            off",
    ] {
        assert!(table.contains(row), "missing '{row}' in\n{table}");
    }

    let mut wrong_key = bridge_env(&sb);
    wrong_key.retain(|(k, _)| k != "BRIDGE_RECURLY__API_KEY");
    wrong_key.push(("BRIDGE_RECURLY__API_KEY".into(), "not-the-key".into()));
    let output = run(&["check"], wrong_key).await;
    let table = stdout(&output);
    assert!(!output.status.success());
    let recurly_row = table
        .lines()
        .find(|l| l.starts_with("Recurly"))
        .expect("a Recurly row");
    assert!(
        recurly_row.contains("FAIL") && recurly_row.contains("invalid_api_key"),
        "{recurly_row}"
    );
    assert!(
        !table.contains("not-the-key")
            && !String::from_utf8_lossy(&output.stderr).contains("not-the-key")
    );
}

#[tokio::test]
async fn install_hooks_creates_the_webhook_resources_and_can_run_again() {
    let sb = spawn_sandbox(SandboxConfig::default()).await;
    let output = run(
        &["install-hooks", "--url", "https://bridge.example.com/"],
        bridge_env(&sb),
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).contains("https://bridge.example.com/webhooks/amplify"));
    let again = run(
        &["install-hooks", "--url", "https://bridge.example.com"],
        bridge_env(&sb),
    )
    .await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(stdout(&again).contains("updated Webhook billing-bridge-webhook"));

    let token = amplify_token(&sb).await;
    let get = |path: String| {
        let (http, token) = (sb.http.clone(), token.clone());
        async move {
            http.get(path)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let base = sb.at("/amplify/apis/management/v1/integrations/billing-bridge");
    let webhook = get(format!("{base}/webhooks/billing-bridge-webhook")).await;
    assert_eq!(
        webhook["spec"]["url"],
        "https://bridge.example.com/webhooks/amplify"
    );
    assert_eq!(webhook["spec"]["auth"]["location"]["name"], "Authorization");
    let secret = get(format!("{base}/secrets/billing-bridge-secret")).await;
    assert_eq!(
        secret["spec"]["data"]["Authorization"],
        "Bearer cli-webhook-secret"
    );
    let hook = get(format!("{base}/resourcehooks/billing-bridge-events")).await;
    let kinds: Vec<&str> = hook["spec"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ProductPlan", "Quota", "Subscription"]);
    // The WatchTopic (§4.5) with the same triggers as filters, and the setting to read it.
    let topic = get(sb.at("/amplify/apis/management/v1/watchtopics/billing-bridge-watch")).await;
    assert_eq!(topic["spec"]["filters"], hook["spec"]["triggers"]);
    assert!(stdout(&output).contains("created WatchTopic billing-bridge-watch"));
    assert!(stdout(&again).contains("updated WatchTopic billing-bridge-watch"));
    assert!(stdout(&output).contains("watch_topic = \"billing-bridge-watch\""));
}

#[tokio::test]
async fn the_demo_runs_every_flow_and_exits_zero_quickly() {
    let started = Instant::now();
    let output = run(&["demo"], Vec::new()).await;
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        text.lines()
            .any(|l| l.starts_with("sandbox: http://127.0.0.1:"))
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("bridge: http://127.0.0.1:"))
    );
    for shown in [
        "Recurly plan amplify-plan-",
        "add-on amplify-quota-",
        "Amplify approval: approved",
        "Amplify approval: rejected",
        "Mail to dana@acme.example",
        "Teams card to the provider",
    ] {
        assert!(
            text.contains(shown),
            "the demo did not show '{shown}':\n{text}"
        );
    }
}
