//! The `billing-bridge` binary reporting traffic: `report` as a process of its own (dry run,
//! JSON summary, the ledger kept in the state file between runs), and the plumbing to run
//! `serve` with a state file for the crash tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::reporting::{
    billed, clear_faults, closed_windows, grid, inject, recurly_faults, report_with,
    reporting_overrides, rfc3339, span, spread, usage_posts, usage_totals,
};
use crate::support::{ADMIN_TOKEN, TestSandbox, WEBHOOK_SECRET, bridge_sandbox};

/// A directory of its own under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("billing-bridge-it-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A complete configuration file for the binary against `sb`: `listen`, the state file, and
/// `reporting` lines added to `[reporting]` (on-demand, one-minute windows, no delay).
pub fn binary_config(sb: &TestSandbox, listen: &str, state_file: &Path, reporting: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
admin_token = "{ADMIN_TOKEN}"
[webhook]
secret = "{WEBHOOK_SECRET}"
[amplify]
central_url = "{sb}/amplify"
auth_url = "{sb}/auth"
platform_url = "{sb}/platform"
client_id = "bridge"
client_secret = "bridge-secret"
requests_per_minute = 600
timeout = "5s"
[recurly]
base_url = "{sb}/recurly"
api_key = "recurly-test-key"
site = "sandbox"
requests_per_minute = 400
timeout = "5s"
[provisioning]
marketplace_url = "https://marketplace.example"
reconcile_every = "1h"
[store]
state_file = "{state}"
[reporting]
schedule = ""
window = "1m"
delay = "0s"
{reporting}
"#,
        sb = sb.url,
        state = state_file.display(),
    )
}

/// The `billing-bridge` binary, without the `BRIDGE_` variables of the test's environment.
pub fn binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_billing-bridge"));
    command.env("RUST_BACKTRACE", "0").env("RUST_LOG", "warn");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("BRIDGE_")) {
        command.env_remove(key);
    }
    command
}

/// Runs the binary with `args` to the end, off the async threads.
pub async fn run_binary(args: Vec<String>) -> Output {
    run_binary_with(args, Vec::new()).await
}

/// Runs the binary with `args` and the `BRIDGE_` variables `env`.
pub async fn run_binary_with(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        binary()
            .args(&args)
            .envs(env)
            .output()
            .expect("the binary runs")
    })
    .await
    .expect("join")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `billing-bridge report --config FILE …`: the exit code and the summary JSON (`--json`).
pub async fn report_cli(config: &Path, args: &[&str]) -> (Option<i32>, Value, Output) {
    let mut all = vec![
        "report".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let output = run_binary(all).await;
    let summary = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code(), summary, output)
}

/// A `billing-bridge serve` process, killed (SIGKILL) on drop if still running.
pub struct Served {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Served {
    /// SIGKILL, as an OOM killer or a node failure would.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `billing-bridge serve --config FILE` (the file written into `dir`) with the state file
/// `state`; returns once `/healthz` answers.
pub async fn serve(sb: &TestSandbox, dir: &TempDir, state: &Path, reporting: &str) -> Served {
    serve_with(sb, dir, |listen| {
        binary_config(sb, listen, state, reporting)
    })
    .await
}

/// Starts `billing-bridge serve` with the configuration `config(listen address)`.
pub async fn serve_with(
    sb: &TestSandbox,
    dir: &TempDir,
    config: impl FnOnce(&str) -> String,
) -> Served {
    serve_with_env(sb, dir, config, &[]).await
}

/// Starts `billing-bridge serve` with the configuration `config(listen address)` and the
/// variables `env`. The process binds `127.0.0.1:0` itself and prints the address it got
/// (`billing-bridge: http://…`), which is read from its output: no port is picked here and
/// bound again there. Returns once `/healthz` answers.
pub async fn serve_with_env(
    sb: &TestSandbox,
    dir: &TempDir,
    config: impl FnOnce(&str) -> String,
    env: &[(&str, &str)],
) -> Served {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let config_file = dir.path(&format!("serve-{run}.toml"));
    std::fs::write(&config_file, config("127.0.0.1:0")).unwrap();
    let log = dir.path(&format!("serve-{run}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = binary()
        .envs(env.iter().copied())
        .args(["serve", "--config"])
        .arg(&config_file)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("serve starts");
    let mut served = Served {
        child,
        url: String::new(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = served.child.try_wait() {
            panic!("serve exited with {status}:\n{}", served.log());
        }
        if served.url.is_empty() {
            served.url = served
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("billing-bridge: "))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_default()
                .to_owned();
        }
        let healthy = !served.url.is_empty()
            && sb
                .http
                .get(format!("{}/healthz", served.url))
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
        if healthy {
            return served;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not come up:\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn the_report_command_dry_runs_bills_and_keeps_its_ledger_in_the_state_file() {
    let sb = bridge_sandbox().await;
    // The in-process bridge provisions; the command reports.
    let b = billed(&sb, &reporting_overrides("", ""), 2).await;
    let windows = closed_windows(2);
    let (mut events, expected) = grid(&b.subs, &b.quotas, &windows);
    let sub = &b.subs[0];
    events.extend(spread(
        &sub.amplify_id,
        &sub.name,
        "silver/nowhere",
        windows[1],
        2,
        "Success",
    ));
    inject(&sb, &events).await;
    let dir = TempDir::new();
    let config = dir.path("bridge.toml");
    std::fs::write(
        &config,
        binary_config(&sb, "127.0.0.1:0", &dir.path("bridge.state"), ""),
    )
    .unwrap();
    let (from, to) = (rfc3339(windows[0].0), rfc3339(windows[1].1));
    let bounds = ["--from", from.as_str(), "--to", to.as_str()];

    let mut dry_args = bounds.to_vec();
    dry_args.extend(["--dry-run", "--json"]);
    let (code, dry, output) = report_cli(&config, &dry_args).await;
    assert_eq!(
        dry["dry_run"],
        true,
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    // Exit 0 exactly when every window is complete.
    let complete = dry["complete"].as_bool().expect("complete");
    assert_eq!(code, Some(if complete { 0 } else { 1 }), "{dry}");
    assert_eq!(dry["units"], expected.units(), "{dry}");
    assert_eq!(dry["records"], expected.records(), "{dry}");
    assert_eq!(dry["unmatched_units"], 2, "{dry}");
    let windows_listed = dry["windows"].as_array().unwrap();
    assert_eq!(windows_listed.len(), 2, "{dry}");
    for window in windows_listed {
        assert_eq!(
            window["pairs"].as_array().map(Vec::len),
            Some(b.subs.len() * b.quotas.len()),
            "{window}"
        );
    }
    assert_eq!(
        windows_listed[1]["unmatched"][0]["reason"], "resource",
        "{dry}"
    );
    assert!(
        usage_totals(&sb).await.is_empty(),
        "a dry run bills nothing"
    );

    let mut json_args = bounds.to_vec();
    json_args.push("--json");
    let (code, real, output) = report_cli(&config, &json_args).await;
    assert_eq!(
        code,
        Some(0),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert_eq!(
        (&real["dry_run"], &real["complete"]),
        (&json!(false), &json!(true)),
        "{real}"
    );
    assert_eq!(real["records"], expected.records(), "{real}");
    assert_eq!(usage_totals(&sb).await, expected.totals());

    // A second process finds the ledger in the state file: nothing left to report.
    let (code, again, _) = report_cli(&config, &json_args).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        (&again["records"], &again["units"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    // Without --json: a table for people, exit 0.
    let (code, _, output) = report_cli(&config, &bounds).await;
    assert_eq!(code, Some(0), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(!table.trim().is_empty(), "a table is printed");
    assert!(
        serde_json::from_str::<Value>(&table).is_err(),
        "a table, not JSON: {table}"
    );
    assert_eq!(usage_totals(&sb).await, expected.totals());
    assert_eq!(usage_posts(&sb).await.len() as u64, expected.records());
}

#[actix_rt::test]
async fn without_an_admin_token_there_is_no_report_endpoint() {
    let sb = bridge_sandbox().await;
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let served = serve_with(&sb, &dir, |listen| {
        binary_config(&sb, listen, &state, "")
            .lines()
            .filter(|l| !l.starts_with("admin_token"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await;
    let body = span(&closed_windows(1));
    for token in [Some(ADMIN_TOKEN), None] {
        let (status, _, answer) = report_with(&sb, &served.url, token, Some(&body)).await;
        assert_eq!(status, 404, "token {token:?}: {answer}");
    }
}

#[actix_rt::test]
async fn the_report_command_exits_one_when_a_window_could_not_be_billed() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 1).await;
    let windows = closed_windows(1);
    let (events, expected) = grid(&b.subs, &b.quotas[..1], &windows);
    inject(&sb, &events).await;
    // Recurly refuses every usage record for now.
    recurly_faults(
        &sb,
        json!({"error_rate": 1.0, "error_status": 503, "path_contains": "/usage"}),
    )
    .await;
    let dir = TempDir::new();
    let config = dir.path("bridge.toml");
    std::fs::write(
        &config,
        binary_config(&sb, "127.0.0.1:0", &dir.path("bridge.state"), ""),
    )
    .unwrap();
    let (from, to) = (rfc3339(windows[0].0), rfc3339(windows[0].1));
    let args = ["--from", from.as_str(), "--to", to.as_str(), "--json"];
    let started = Instant::now();
    let (code, failed, output) = report_cli(&config, &args).await;
    assert_eq!(
        code,
        Some(1),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert_eq!(failed["complete"], false, "{failed}");
    assert_eq!(failed["windows"][0]["complete"], false, "{failed}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(usage_totals(&sb).await.is_empty());

    clear_faults(&sb).await;
    let (code, done, _) = report_cli(&config, &args).await;
    assert_eq!(code, Some(0), "{done}");
    assert_eq!(done["complete"], true, "{done}");
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn the_report_command_takes_reporting_settings_from_the_environment() {
    let sb = bridge_sandbox().await;
    let b = billed(&sb, &reporting_overrides("", ""), 1).await;
    let windows = closed_windows(1);
    let (sub, quota) = (&b.subs[0], &b.quotas[2]);
    let mut events = spread(
        &sub.amplify_id,
        &sub.name,
        &quota.resource,
        windows[0],
        6,
        "Success",
    );
    events.extend(spread(
        &sub.amplify_id,
        &sub.name,
        &quota.resource,
        windows[0],
        4,
        "Failure",
    ));
    inject(&sb, &events).await;
    let dir = TempDir::new();
    let config = dir.path("bridge.toml");
    std::fs::write(
        &config,
        binary_config(&sb, "127.0.0.1:0", &dir.path("bridge.state"), ""),
    )
    .unwrap();
    let (from, to) = (rfc3339(windows[0].0), rfc3339(windows[0].1));
    let args: Vec<String> = [
        "report",
        "--config",
        config.to_str().unwrap(),
        "--from",
        &from,
        "--to",
        &to,
        "--json",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let output = run_binary_with(
        args,
        vec![("BRIDGE_REPORTING__BILLED_COUNT".into(), "success".into())],
    )
    .await;
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{summary}\n{}",
        text(&output.stderr)
    );
    assert_eq!(summary["units"], 6, "successful calls only: {summary}");
    let totals = usage_totals(&sb).await;
    assert_eq!(
        totals.get(&(sub.recurly_id.clone(), quota.add_on())),
        Some(&(1, 6)),
        "{totals:?}"
    );
}
