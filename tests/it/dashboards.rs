//! The dashboards and alert rules against a real Prometheus (the Debian `prometheus` package):
//! Prometheus scrapes a bridge that provisions a plan and a subscription (with a duplicate
//! webhook, a Recurly 429 and a plan that fails) from the sandbox; every dashboard query and
//! every alert expression then evaluates without error, the queries that watch those flows
//! return data, the rules are healthy and the failure alert fires. `promtool` checks the rule
//! file and runs its unit tests.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::provisioning::{
    Provider, WAIT, delivered_envelope, hooks, plan_code, post_webhook, recurly, seed,
};
use crate::support::{WEBHOOK_SECRET, bridge_sandbox, spawn_bridge, wait_for};

/// The scrape job name the alert rules expect.
const JOB: &str = "billing-bridge";
/// Metric families only a traffic reporting run fills; this scenario runs none, so queries of
/// them may be empty (but must still evaluate).
const REPORTING_ONLY: [&str; 5] = [
    "billing_bridge_usage_records_total",
    "billing_bridge_usage_unmatched_units_total",
    "billing_bridge_usage_windows_reported_total",
    "billing_bridge_usage_runs_total",
    "billing_bridge_leases_held",
];

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Finds a program on PATH. Missing Prometheus fails the test under CI (which installs it) and
/// skips it, loudly, elsewhere.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed; .ci/run installs it with `apt-get install prometheus`"
        );
        // Written to the process's stderr, past the test harness's capture, so it is seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED: {name} is not installed (apt-get install prometheus); the dashboards and alert rules were NOT checked !!!\n"
        );
    }
    found
}

/// A Prometheus process with its own data directory; both go when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Prometheus on `127.0.0.1:0`: it binds a free port itself and logs the address it got
/// (`msg="Listening on" address=127.0.0.1:N`, at info level), which is read from its stderr.
/// Its warnings and errors are passed on to the test's stderr.
fn start_prometheus(binary: &Path, target: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(format!(
        "bridge-prometheus-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dashboards_dir().join("alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let mut child = Command::new(binary)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .arg("--log.level=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prometheus starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut address = None;
    for line in lines.by_ref() {
        let line = line.expect("prometheus's log");
        if line.contains("level=warn") || line.contains("level=error") {
            eprintln!("{line}");
        }
        if line.contains("msg=\"Listening on\"") {
            address = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("address="))
                .map(str::to_owned);
            break;
        }
    }
    let address = address.expect("prometheus logs the address it listens on");
    // Keep reading so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("level=warn") || line.contains("level=error") {
                eprintln!("{line}");
            }
        }
    });
    Prometheus {
        child,
        dir,
        url: format!("http://{address}"),
    }
}

/// `(status, result)` of an instant query; an error is returned, not panicked on.
async fn query(http: &reqwest::Client, prometheus: &str, expr: &str) -> Result<Vec<Value>, String> {
    let answer: Value = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if answer["status"] != "success" {
        return Err(format!("{}: {}", answer["errorType"], answer["error"]));
    }
    Ok(answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Every `expr` of a dashboard, with Grafana's variables replaced as Grafana would.
fn dashboard_queries(dashboard: &Value, out: &mut Vec<String>) {
    match dashboard {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => {
                        out.push(expr.replace("$__rate_interval", "1m").replace("$job", JOB))
                    }
                    _ => dashboard_queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

/// The `expr` of every rule in the alert rules file (a small YAML reader: `expr: x` on one line,
/// or `expr: |` followed by indented lines).
fn alert_expressions(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut alert = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            alert = name.trim().to_owned();
        } else if let Some(expr) = trimmed.strip_prefix("expr: ") {
            let expr = if expr.trim() == "|" {
                let indent = line.len() - trimmed.len();
                let mut block = Vec::new();
                while let Some(next) = lines.peek() {
                    if next.len() - next.trim_start().len() <= indent {
                        break;
                    }
                    block.push(next.trim());
                    lines.next();
                }
                block.join(" ")
            } else {
                expr.trim().to_owned()
            };
            found.push((alert.clone(), expr));
        }
    }
    found
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dashboards_dir())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[actix_rt::test]
async fn prometheus_evaluates_every_dashboard_query_and_alert_over_a_provisioning_run() {
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let started = Instant::now();
    assert!(promtool(&["check", "rules", "alerts.yml"]).contains("SUCCESS"));
    assert!(promtool(&["test", "rules", "alerts.test.yml"]).contains("SUCCESS"));

    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    let target = bridge.url.trim_start_matches("http://").to_owned();
    let prometheus = start_prometheus(&binary, &target);
    let http = sb.http.clone();
    wait_for("Prometheus ready", Duration::from_secs(15), || async {
        let ready = http.get(format!("{}/-/ready", prometheus.url)).send().await;
        ready.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;

    // Counters must be seen at 0 before the flows move them, or rate() sees no change.
    wait_for(
        "a first scrape of the bridge",
        Duration::from_secs(10),
        || async {
            let up = query(&http, &prometheus.url, &format!("up{{job=\"{JOB}\"}} == 1")).await;
            up.is_ok_and(|r| !r.is_empty()).then_some(())
        },
    )
    .await;

    // The scenario: a plan (the first Recurly write answered 429 three times, each waited out, so
    // scrapes see the count rise), a subscription, a duplicate webhook and a plan that cannot be
    // billed.
    let fault = http
        .put(sb.at("/_sandbox/faults/recurly"))
        .json(&json!({"rate_limited_next": 3, "retry_after_secs": 2, "methods": ["POST"]}))
        .send()
        .await
        .unwrap();
    assert!(fault.status().is_success());
    let provider = Provider::new(&sb).await;
    let plan = provider.catalog("silver").await;
    provider.activate("silver").await;
    let code = plan_code(&plan);
    wait_for("the Recurly plan", WAIT, || async {
        (recurly(&sb, &format!("/plans/code-{code}")).await.0 == 200).then_some(())
    })
    .await;
    seed(&sb, json!({
        "amplify": {"users": [{"guid": "user-1", "email": "dev@consumer.example"}]},
        "recurly": {"accounts": [{"code": "amplify-team-team-1", "email": "billing@consumer.example"}]}
    }))
    .await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    provider.approval("sub-1", "approved").await;
    let activation = delivered_envelope(&sb, |e| {
        e["payload"]["kind"] == "ProductPlan"
            && e["payload"]["name"] == "silver"
            && e["type"] == "SubResourceUpdated"
            && e["metadata"]["subresource"] == "state"
    })
    .await;
    let (status, _, body) =
        post_webhook(&sb, &bridge, Some(WEBHOOK_SECRET), activation.to_string()).await;
    assert_eq!((status, &body["status"]), (202, &json!("duplicate")));
    provider.settle("weather", "sentinel").await;

    let mut queries = Vec::new();
    for name in ["overview", "provisioning", "usage-reporting", "upstreams"] {
        let path = dashboards_dir().join(format!("{name}.json"));
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        assert!(
            variables
                .iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{name} has a Prometheus datasource variable"
        );
        for panel in dashboard["panels"].as_array().unwrap() {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: {panel}"
            );
        }
        let before = queries.len();
        dashboard_queries(&dashboard, &mut queries);
        assert!(queries.len() > before + 5, "{name} has panels with queries");
    }
    let rules_text = std::fs::read_to_string(dashboards_dir().join("alerts.yml")).unwrap();
    let alerts = alert_expressions(&rules_text);
    assert_eq!(alerts.len(), 17, "{alerts:?}");
    for expr in queries.iter().chain(alerts.iter().map(|(_, e)| e)) {
        assert!(!expr.contains('$'), "an unreplaced variable in {expr}");
    }

    // Wait until Prometheus has scraped what the scenario did: three 429s from Recurly, each
    // waited out; a duplicate webhook; a plan provisioned, one failed, a subscription approved.
    for condition in [
        r#"sum(billing_bridge_upstream_requests_total{upstream="recurly",status="429"}) == 3"#,
        r#"sum(billing_bridge_rate_limit_waits_total{upstream="recurly"}) == 3"#,
        r#"sum(billing_bridge_webhooks_received_total{outcome="duplicate"}) == 1"#,
        r#"sum(billing_bridge_provisioning_total{resource="plan",outcome="failed"}) >= 1"#,
        r#"sum(billing_bridge_provisioning_total{resource="subscription",outcome="approved"}) == 1"#,
        r#"sum(billing_bridge_notifications_total{channel="mail",outcome="sent"}) == 1"#,
    ] {
        wait_for(condition, Duration::from_secs(10), || async {
            let result = query(&http, &prometheus.url, condition).await.ok()?;
            (!result.is_empty()).then_some(())
        })
        .await;
    }

    // Poll until every flow-watching query has data (rates need two scrapes after a change).
    let expects_data = |expr: &str| {
        expr.contains("or vector(0)") || !REPORTING_ONLY.iter().any(|m| expr.contains(m))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let mut missing = Vec::new();
        for expr in &queries {
            match query(&http, &prometheus.url, expr).await {
                Err(e) => panic!("dashboard query fails in Prometheus: {expr}\n{e}"),
                Ok(result) if result.is_empty() && expects_data(expr) => missing.push(expr.clone()),
                Ok(_) => {}
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "queries without data:\n{}\n\nthe bridge's metrics:\n{}",
        missing.join("\n"),
        crate::provisioning::metrics(&sb, &bridge).await
    );
    for (alert, expr) in &alerts {
        if let Err(e) = query(&http, &prometheus.url, expr).await {
            panic!("alert {alert} does not evaluate: {expr}\n{e}");
        }
    }
    let jobs: Value = http
        .get(format!("{}/api/v1/label/job/values", prometheus.url))
        .query(&[("match[]", "billing_bridge_store_up")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        jobs["data"],
        json!([JOB]),
        "the dashboards' job variable query"
    );

    // Prometheus evaluates the rules itself: all healthy; the failed plan fires its alert, and
    // the 429 makes the throttling alert pending (it waits 15 minutes before firing).
    let states = wait_for("the alert states", Duration::from_secs(10), || async {
        let answer: Value = http
            .get(format!("{}/api/v1/rules", prometheus.url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let rules: Vec<Value> = answer["data"]["groups"][0]["rules"].as_array()?.clone();
        let unhealthy: Vec<&Value> = rules.iter().filter(|r| r["health"] != "ok").collect();
        assert!(
            unhealthy.iter().all(|r| r["health"] == "unknown"),
            "rules in error: {unhealthy:#?}"
        );
        let state = |name: &str| {
            rules
                .iter()
                .find(|r| r["name"] == name)
                .map(|r| r["state"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default()
        };
        let states = (
            state("BillingBridgeProvisioningFailures"),
            state("BillingBridgeUpstreamThrottled"),
        );
        (unhealthy.is_empty() && states.0 == "firing" && states.1 == "pending").then_some(states)
    })
    .await;
    assert_eq!(states, ("firing".into(), "pending".into()));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the check stays fast: {:?}",
        started.elapsed()
    );
}
