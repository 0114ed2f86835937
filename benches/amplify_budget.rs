//! Amplify's 25 requests a minute spent by lane (issue 14): the sandbox (Amplify at its
//! production 25/minute per client, Recurly production) and the real bridge in one process on
//! loopback, hooks and WatchTopic installed. Prints the bridge's Amplify calls per plan
//! activation, per approval, per reporting run and per idle hour; times the approval of one
//! subscription created while a `BUDGET_REPORT_SUBS`-subscription reporting run (default 10,000)
//! is in progress (target: within 15 s); and times a burst of `BUDGET_BURST` subscriptions
//! (default 100) against the rate the limit allows for the calls each needs (target ≥ 0.9).
//!
//! `cargo bench --bench amplify_budget`. Under `cargo test --benches` a short smoke pass runs
//! with a small catalog, a raised limit and a short idle period.

mod support;

use std::time::{Duration, Instant};

use billing_bridge_pipeline::hooks::{HookSpec, install_hooks, watch_topic_name};
use billing_bridge_sandbox::{
    AmplifySettings, RecorderSettings, RecurlyMode, RecurlySettings, SandboxConfig,
};
use billing_bridge_server::{Application, Options, WEBHOOK_PATH};
use serde_json::{Value, json};
use support::{benching, env_or};

const SECRET: &str = "Bearer bench-webhook-secret";
const ADMIN: &str = "bench-admin";
const HOUR_MS: i64 = 3_600_000;
const QUOTAS: usize = 3;
const TEAM: &str = "bench-team";
const USER: &str = "bench-user";

struct Bench {
    http: reqwest::Client,
    sandbox: String,
    bridge: String,
}

impl Bench {
    async fn post(&self, url: String, body: &Value) -> Value {
        support::post_json(&self.http, &url, body).await
    }

    async fn seed(&self, body: Value) -> Value {
        self.post(format!("{}/_sandbox/seed", self.sandbox), &body)
            .await
    }

    /// The bridge's own counters, from its `/metrics`: `name{labels…}` lines whose labels contain
    /// every one of `with`, summed.
    async fn counter(&self, name: &str, with: &[&str], without: &[&str]) -> u64 {
        let text = support::metrics_text(&self.http, &self.bridge).await;
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| with.iter().all(|w| l.contains(w)))
            .filter(|l| !without.iter().any(|w| l.contains(w)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Amplify requests the bridge made so far for work (every exchange, retries included): the
    /// token endpoint, which Amplify does not count, and the periodic WatchTopic reads, which
    /// run whatever happens (counted by [`Bench::all_amplify_calls`]), left out.
    async fn amplify_calls(&self) -> u64 {
        self.counter(
            "billing_bridge_upstream_requests_total",
            &["upstream=\"amplify\""],
            &["operation=\"get_token\"", "operation=\"read_watch_topic\""],
        )
        .await
    }

    /// Every Amplify request Amplify counts, WatchTopic reads included.
    async fn all_amplify_calls(&self) -> u64 {
        self.counter(
            "billing_bridge_upstream_requests_total",
            &["upstream=\"amplify\""],
            &["operation=\"get_token\""],
        )
        .await
    }

    async fn provisioned(&self, resource: &str) -> u64 {
        self.counter(
            "billing_bridge_provisioning_total",
            &[
                &format!("resource=\"{resource}\""),
                // A plan's pass ends `provisioned`, a subscription's `approved`.
                if resource == "plan" {
                    "outcome=\"provisioned\""
                } else {
                    "outcome=\"approved\""
                },
            ],
            &[],
        )
        .await
    }

    /// Waits until the bridge's Amplify calls for work stop moving for `quiet` (at most `within`).
    async fn settle(&self, quiet: Duration, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        let mut last = self.amplify_calls().await;
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.amplify_calls().await;
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        last
    }

    async fn wait_provisioned(&self, resource: &str, count: u64, within: Duration) -> Duration {
        let started = Instant::now();
        while self.provisioned(resource).await < count {
            if started.elapsed() >= within {
                let metrics = support::metrics_text(&self.http, &self.bridge).await;
                let passes: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        l.starts_with("billing_bridge_provisioning_total")
                            || l.starts_with("billing_bridge_webhooks_")
                    })
                    .filter(|l| !l.ends_with(" 0"))
                    .collect();
                let cards = self
                    .http
                    .get(format!("{}/_sandbox/cards", self.sandbox))
                    .send()
                    .await
                    .expect("cards")
                    .text()
                    .await
                    .expect("cards text");
                panic!(
                    "{resource}: {count} provisioned not reached within {within:?}; {passes:#?}; cards: {cards}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    }
}

/// Each subscription is a different consumer's (Recurly allows one subscription to a plan per
/// account), all of them one Platform user's teams.
fn team_of(subscription: &str) -> String {
    format!("{TEAM}-{subscription}")
}

/// The names of the subscriptions the measurements create, in order.
fn measured_subscriptions(burst: usize) -> Vec<String> {
    let mut names = vec!["alone-1".to_owned(), "during-run-1".to_owned()];
    names.extend((0..burst).map(|i| format!("burst-{i}")));
    names
}

fn subscription(name: &str) -> Value {
    json!({"kind": "Subscription", "name": name, "title": name,
           "spec": {"product": "weather", "plan": {"name": "silver"}},
           "marketplace": {"resource": {"owner": {"type": "team", "id": team_of(name),
                                                  "organization": {"id": "650130132060094"},
                                                  "user": {"id": USER}}}}})
}

fn config(sandbox: &str, rpm: u32, watch_every: &str) -> billing_bridge_config::BridgeConfig {
    let toml = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_token = "{ADMIN}"
        [webhook]
        secret = "{SECRET}"
        [intake]
        watch_topic = "{topic}"
        watch_every = "{watch_every}"
        [amplify]
        central_url = "{sandbox}/amplify"
        auth_url = "{sandbox}/auth"
        platform_url = "{sandbox}/platform"
        client_id = "bridge"
        client_secret = "bridge-secret"
        requests_per_minute = {rpm}
        timeout = "10s"
        [recurly]
        base_url = "{sandbox}/recurly"
        api_key = "recurly-bench-key"
        site = "production"
        requests_per_minute = 1000000
        timeout = "10s"
        [provisioning]
        marketplace_url = "https://marketplace.example"
        [notify.teams]
        webhook_url = "{sandbox}/teams/webhookb2/provider-channel"
        [notify.mail]
        backend = "sendgrid"
        from = "billing@market.example"
        [notify.mail.sendgrid]
        api_key = "SG.bench"
        base_url = "{sandbox}/sendgrid"
        [store]
        state_file = ""
        [reporting]
        schedule = ""
        delay = "0s"
        concurrency = 16
        "#,
        topic = watch_topic_name("billing-bridge"),
    );
    billing_bridge_config::BridgeConfig::from_toml_layers(&[&toml]).expect("bench config")
}

fn main() {
    let full = benching();
    let report_subs = env_or("BUDGET_REPORT_SUBS", if full { 10_000 } else { 60 }) as usize;
    let burst = env_or("BUDGET_BURST", if full { 100 } else { 6 }) as usize;
    let rpm = env_or("BUDGET_AMPLIFY_RPM", if full { 25 } else { 600 }) as u32;
    let idle = Duration::from_secs(env_or("BUDGET_IDLE_SECS", if full { 130 } else { 3 }));
    let watch_every = if full { "1m" } else { "1s" };
    actix_rt::System::new().block_on(async move {
        let sandbox = billing_bridge_sandbox::start(
            SandboxConfig {
                recorder: RecorderSettings { limit: 0 },
                amplify: AmplifySettings {
                    requests_per_minute: rpm,
                    ..AmplifySettings::default()
                },
                // Recurly without its limit: its 1,000 requests a minute would make a
                // 10,000-subscription run last 40 minutes, and only Amplify's budget is measured.
                recurly: RecurlySettings {
                    mode: RecurlyMode::Production,
                    requests_per_minute: Some(0),
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
        // A fresh connection per request: a kept-alive one the server closed while idle (minutes
        // pass between some requests) would fail the next request sent on it.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(0)
            .build()
            .expect("http");
        let mut bench = Bench {
            http,
            sandbox: sb.clone(),
            bridge: String::new(),
        };

        // The reporting catalog first (no hooks yet, so its creation sends no webhooks): a
        // billed product `bench` whose subscriptions are billed in Recurly, with traffic.
        let seeding = Instant::now();
        let mut catalog = vec![
            json!({"kind": "Product", "name": "bench", "attributes": {"billingSystem": "recurly"}, "state": "active"}),
            json!({"kind": "ProductPlan", "name": "bench-plan", "spec": {"product": "bench", "type": "paid"}, "state": "active"}),
        ];
        for q in 0..QUOTAS {
            catalog.push(json!({"kind": "Quota", "name": format!("quota-{q}"), "metadata": {"scope": {"name": "bench-plan"}},
                "spec": {"unit": "transactions", "resources": [{"kind": "AssetResource", "name": format!("api/resource-{q}")}]}}));
        }
        let created = bench.seed(json!({"amplify": {"resources": catalog}})).await;
        let quota_ids: Vec<String> = created["amplify"]["resources"]
            .as_array()
            .or_else(|| created["resources"].as_array())
            .expect("seeded")
            .iter()
            .filter(|r| r["kind"] == "Quota")
            .map(|r| r["metadata"]["id"].as_str().unwrap().to_owned())
            .collect();
        let add_ons: Vec<Value> = quota_ids.iter().enumerate().map(|(i, q)| {
            json!({"code": format!("amplify-quota-{q}"), "name": format!("Quota {q}"), "accounting_code": format!("bench-quota-{i}"),
                   "add_on_type": "usage", "usage_type": "price", "measured_unit_name": "transactions",
                   "currencies": [{"currency": "USD", "unit_amount_decimal": "0.001"}]})
        }).collect();
        let mut accounts: Vec<Value> = (0..report_subs).map(|i| json!({"code": format!("amplify-team-t{i}")})).collect();
        for name in measured_subscriptions(burst) {
            accounts.push(json!({"code": format!("amplify-team-{}", team_of(&name)), "email": "bench@consumer.example"}));
        }
        let subscriptions: Vec<Value> = (0..report_subs).map(|i| {
            json!({"plan_code": "amplify-plan-bench", "currency": "USD", "account": {"code": format!("amplify-team-t{i}")},
                   "add_ons": quota_ids.iter().map(|q| json!({"code": format!("amplify-quota-{q}")})).collect::<Vec<_>>()})
        }).collect();
        // In parts of 1,000, so no one seed body takes the sandbox long to read on a busy machine.
        for part in accounts.chunks(1_000) {
            bench.seed(json!({"recurly": {"accounts": part}})).await;
        }
        bench.seed(json!({"recurly": {
            "measured_units": [{"name": "transactions", "display_name": "Transactions"}],
            "plans": [{"code": "amplify-plan-bench", "name": "Bench", "accounting_code": "bench-plan",
                       "currencies": [{"currency": "USD", "unit_amount": 0}], "add_ons": add_ons}]}})).await;
        let mut recurly_ids: Vec<String> = Vec::new();
        for part in subscriptions.chunks(1_000) {
            let seeded = bench.seed(json!({"recurly": {"subscriptions": part}})).await;
            recurly_ids.extend(
                seeded["recurly"]["subscriptions"]
                    .as_array()
                    .or_else(|| seeded["subscriptions"].as_array())
                    .expect("seeded subscriptions")
                    .iter()
                    .map(|s| s["id"].as_str().unwrap().to_owned()),
            );
        }
        let linked: Vec<Value> = recurly_ids.iter().enumerate().map(|(i, id)| {
            json!({"kind": "Subscription", "name": format!("sub-{i}"), "spec": {"product": "bench", "plan": {"name": "bench-plan"}},
                   "attributes": {"recurlySubscriptionId": id}, "approval": {"state": "approved"}})
        }).collect();
        for chunk in linked.chunks(2_000) {
            bench.seed(json!({"amplify": {"resources": chunk}})).await;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let window = ((now / HOUR_MS - 2) * HOUR_MS, (now / HOUR_MS - 1) * HOUR_MS);
        bench.post(format!("{sb}/_sandbox/traffic/generate"),
            &json!({"seed": 4, "count": report_subs * QUOTAS * 20, "from": window.0, "to": window.1})).await;
        // The subscriber of the provisioning measurements: a Platform user and their team.
        bench.seed(json!({"amplify": {
            "users": [{"guid": USER, "email": "bench@consumer.example", "firstname": "Bench", "lastname": "User"}],
            "teams": measured_subscriptions(burst).iter().map(|n| json!({"guid": team_of(n), "name": format!("Bench team {n}")})).collect::<Vec<_>>()}})).await;
        println!(
            "seeded {report_subs} billed subscriptions x {QUOTAS} quotas with traffic in {:.1} s; Amplify limit {rpm}/min",
            seeding.elapsed().as_secs_f64()
        );

        // The bridge, its hooks and WatchTopic.
        let retry = billing_bridge_upstream::RetryPolicy::new(6, Duration::from_millis(50), Duration::from_secs(5));
        let handle = Application::start(
            config(&sb, rpm, watch_every),
            std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener"),
            Options { retry, workers: Some(1) },
        )
        .expect("the bridge starts");
        let state = handle.bridge().clone();
        bench.bridge = handle.url();
        install_hooks(&state.amplify, &HookSpec {
            name: "billing-bridge", url: &format!("{}{WEBHOOK_PATH}", handle.url()), header: "Authorization", secret: SECRET,
        }).await.expect("hooks installed");
        // Start-up: the first WatchTopic read and the full pass it asks for.
        let started_calls = bench.settle(Duration::from_secs(if full { 70 } else { 3 }), Duration::from_secs(900)).await;
        println!("start-up (hooks and WatchTopic installed, first full pass): {started_calls} Amplify calls besides WatchTopic reads");

        // 1. One plan activation.
        let before = bench.amplify_calls().await;
        bench.seed(json!({"amplify": {"resources": [
            {"kind": "Product", "name": "weather", "attributes": {"billingSystem": "recurly"}},
            {"kind": "ProductPlan", "name": "silver", "title": "Silver",
             "spec": {"product": "weather", "type": "paid", "billing": {"currency": "USD", "price": 10, "interval": "monthly"},
                      "subscription": {"approval": "manual", "interval": {"type": "months", "length": 1}, "renewal": "automatic"}}},
            {"kind": "Quota", "name": "calls", "metadata": {"scope": {"name": "silver"}},
             "spec": {"unit": "transactions", "resources": [{"kind": "AssetResource", "name": "weather/calls"}],
                      "pricing": {"type": "graduated", "limit": {"type": "tiered", "tiers": [
                          {"from": 1, "to": 1000, "cost": 0, "flatFee": 0}, {"from": 1001, "to": 999999999, "cost": 0.002, "flatFee": 0}]}}}}]}})).await;
        let plans_before = bench.provisioned("plan").await;
        let activated = Instant::now();
        activate(&bench, &sb).await;
        bench.wait_provisioned("plan", plans_before + 1, Duration::from_secs(120)).await;
        let after = bench.settle(Duration::from_secs(3), Duration::from_secs(120)).await;
        let per_activation = after - before;
        println!("plan activation: {per_activation} Amplify calls ({:.1} s)", activated.elapsed().as_secs_f64());

        // 2. One approval, alone.
        let before = bench.amplify_calls().await;
        let subs_before = bench.provisioned("subscription").await;
        bench.seed(json!({"amplify": {"resources": [subscription("alone-1")]}})).await;
        let alone = bench.wait_provisioned("subscription", subs_before + 1, Duration::from_secs(120)).await;
        let after = bench.settle(Duration::from_secs(3), Duration::from_secs(120)).await;
        let per_approval = after - before;
        println!("approval: {per_approval} Amplify calls, approved in {:.1} s (idle bridge)", alone.as_secs_f64());

        // 3. A reporting run, and a subscription created while it is in progress.
        let before = bench.amplify_calls().await;
        let run_started = Instant::now();
        let report_url = format!("{}/admin/report", bench.bridge);
        let http = bench.http.clone();
        let run = actix_rt::spawn(async move {
            let answer = http.post(report_url).bearer_auth(ADMIN)
                .json(&json!({"from": window.0, "to": window.1})).send().await.expect("report");
            let status = answer.status();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "report: {status} {body}");
            body
        });
        // Let the run fill its share of the window and queue the rest.
        let reporting_waiting = Instant::now();
        while state.amplify.waiting()[2] == 0 && !run.is_finished() && reporting_waiting.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let queued = state.amplify.waiting();
        let subs_before = bench.provisioned("subscription").await;
        bench.seed(json!({"amplify": {"resources": [subscription("during-run-1")]}})).await;
        let during = bench.wait_provisioned("subscription", subs_before + 1, Duration::from_secs(120)).await;
        let in_progress = !run.is_finished();
        let summary = run.await.expect("report task");
        let run_time = run_started.elapsed();
        let after = bench.settle(Duration::from_secs(3), Duration::from_secs(120)).await;
        let run_calls = after - before - per_approval;
        println!(
            "reporting run of {report_subs} subscriptions: {run_calls} Amplify calls (approval's {per_approval} left out), {:.1} s, {} records",
            run_time.as_secs_f64(), summary["records"]
        );
        println!(
            "subscription created during the run (run still in progress: {in_progress}; calls waiting by lane then: {queued:?}): approved in {:.1} s (target 15 s)",
            during.as_secs_f64()
        );

        // 4. Idle.
        let before = bench.all_amplify_calls().await;
        tokio::time::sleep(idle).await;
        let idle_calls = bench.all_amplify_calls().await - before;
        let reads_per_hour = 3600.0 / humantime::parse_duration(watch_every).unwrap().as_secs_f64();
        let pass_before = bench.amplify_calls().await;
        let pass = bench.http.post(format!("{}/admin/reconcile", bench.bridge)).bearer_auth(ADMIN).send().await.expect("reconcile");
        assert!(pass.status().is_success());
        let pass_calls = bench.settle(Duration::from_secs(3), Duration::from_secs(300)).await - pass_before;
        let per_idle_hour = idle_calls as f64 * 3600.0 / idle.as_secs_f64() + pass_calls as f64 / 24.0;
        println!(
            "idle: {idle_calls} Amplify calls in {:.0} s (WatchTopic read every {watch_every}: {reads_per_hour:.0} reads/hour) + a daily reconcile pass of {pass_calls} calls = {per_idle_hour:.1} Amplify calls per idle hour",
            idle.as_secs_f64()
        );

        // 5. A burst of subscriptions.
        let before = bench.amplify_calls().await;
        let subs_before = bench.provisioned("subscription").await;
        let names: Vec<Value> = (0..burst).map(|i| subscription(&format!("burst-{i}"))).collect();
        bench.seed(json!({"amplify": {"resources": names}})).await;
        let took = bench.wait_provisioned("subscription", subs_before + burst as u64, Duration::from_secs(3600)).await;
        let after = bench.settle(Duration::from_secs(3), Duration::from_secs(120)).await;
        let calls = after - before;
        let per_sub = calls as f64 / burst as f64;
        let allowed_per_min = f64::from(rpm) / per_sub;
        let achieved_per_min = burst as f64 / took.as_secs_f64() * 60.0;
        println!(
            "burst of {burst} subscriptions: approved in {:.1} s, {calls} Amplify calls ({per_sub:.2} each); {achieved_per_min:.2} approvals/min against {allowed_per_min:.2} the limit allows = {:.2} (target 0.90)",
            took.as_secs_f64(), achieved_per_min / allowed_per_min
        );
        if full {
            assert!(during <= Duration::from_secs(15), "approval during the reporting run took {during:?}");
        }
        handle.stop(false).await;
        sandbox.stop().await;
    });
}

/// `PUT …/productplans/silver/state {"state":"active"}` as the provider.
async fn activate(bench: &Bench, sb: &str) {
    let token = support::amplify_token(&bench.http, sb, "provider").await;
    let answer = bench
        .http
        .put(format!(
            "{sb}/amplify/apis/catalog/v1/productplans/silver/state"
        ))
        .bearer_auth(token)
        .json(&json!({"state": "active"}))
        .send()
        .await
        .expect("activate");
    assert_eq!(answer.status().as_u16(), 200, "{:?}", answer.text().await);
}
