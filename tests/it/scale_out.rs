//! Many instances on one Redis behind a load balancer (issue 5): a real `redis-server`
//! (appendfsync always), three `billing-bridge serve` processes sharing it, and nginx as a
//! round-robin load balancer, all on loopback, with the sandbox as every upstream. These need
//! `redis-server` and `nginx` (`.ci/run` installs both); without them the tests fail under CI
//! and are skipped elsewhere.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::provisioning::{Provider, cards, recurly_writes, sandbox_json};
use crate::support::{
    ADMIN_TOKEN, Redis, TEAMS_CHANNEL, TestSandbox, WEBHOOK_SECRET, bridge_sandbox, installed,
    wait_for,
};

const WAIT: Duration = Duration::from_secs(30);

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("bb-scale-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One `billing-bridge serve` process.
struct Instance {
    child: Child,
    url: String,
}

impl Instance {
    fn start(config: &Path) -> Instance {
        let mut child = Command::new(env!("CARGO_BIN_EXE_billing-bridge"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("billing-bridge serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("serve prints its address")
                .expect("stdout");
            if let Some(rest) = line.strip_prefix("billing-bridge: ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep reading so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Instance { child, url }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nginx listens on a unix socket in its directory: it refuses `listen 127.0.0.1:0` ("invalid
/// port"), and a socket on a path needs no port to be picked for it. The test reaches it with a
/// client bound to that socket ([`Nginx::client`]).
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    async fn start(backends: &[&Instance]) -> Nginx {
        let dir = temp_dir("nginx");
        let servers: String = backends
            .iter()
            .map(|b| format!("server {};\n", b.url.trim_start_matches("http://")))
            .collect();
        let conf = format!(
            r#"
worker_processes 1;
# One process: a SIGKILL from the test leaves no worker behind.
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream bridges {{
    {servers}
    keepalive 16;
  }}
  server {{
    listen unix:{dir}/nginx.sock;
    location / {{
      proxy_pass http://bridges;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream off;
    }}
  }}
}}
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let socket = dir.join("nginx.sock");
        wait_for("nginx listening", WAIT, || {
            let ready = std::os::unix::net::UnixStream::connect(&socket).is_ok();
            async move { ready.then_some(()) }
        })
        .await;
        Nginx { child, dir }
    }

    /// The load balancer's base URL, for requests sent with [`Nginx::client`].
    fn url(&self) -> String {
        "http://load-balancer".into()
    }

    /// A client whose every connection goes to nginx's socket.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .unix_socket(self.dir.join("nginx.sock"))
            .build()
            .expect("http client")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The configuration every instance shares.
fn write_config(sb: &TestSandbox, redis: &Redis, extra: &str) -> PathBuf {
    let dir = temp_dir("config");
    let path = dir.join("bridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
[webhook]
secret = "{WEBHOOK_SECRET}"
[amplify]
central_url = "{sb}/amplify"
auth_url = "{sb}/auth"
platform_url = "{sb}/platform"
client_id = "bridge"
client_secret = "bridge-secret"
requests_per_minute = 1800
timeout = "5s"
[recurly]
base_url = "{sb}/recurly"
api_key = "recurly-test-key"
site = "sandbox"
requests_per_minute = 1200
timeout = "5s"
[provisioning]
reconcile_every = "1h"
[notify.teams]
webhook_url = "{sb}{TEAMS_CHANNEL}"
[reporting]
schedule = ""
delay = "0s"
lease_ttl = "3s"
[store]
redis_url = "{redis}"
instances = 3
reclaim_after = "2s"
state_file = ""
{extra}
"#,
            sb = sb.url,
            redis = redis.url()
        ),
    )
    .unwrap();
    path
}

async fn three_instances(config: &Path) -> Vec<Instance> {
    let instances: Vec<Instance> = (0..3).map(|_| Instance::start(config)).collect();
    for instance in &instances {
        let url = format!("{}/readyz", instance.url);
        wait_for("an instance ready", WAIT, || async {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await;
    }
    instances
}

fn tools_present() -> bool {
    installed("redis-server") && installed("nginx")
}

/// Posts an envelope through the load balancer until it is acknowledged (a sender that keeps an
/// event it could not deliver). Returns how many tries it took.
async fn deliver(http: &reqwest::Client, url: &str, envelope: &Value) -> usize {
    for attempt in 1..=200 {
        let response = http
            .post(url)
            .header("Authorization", WEBHOOK_SECRET)
            .json(envelope)
            .send()
            .await;
        if let Ok(r) = response {
            if r.status() == 202 {
                return attempt;
            }
            assert!(
                r.status() == 503 || r.status() == 502,
                "unexpected refusal {}",
                r.status()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("an event was never acknowledged");
}

/// Plans made eligible and activated with the hooks pointing nowhere, so their envelopes wait in
/// the sandbox's deliveries for the test to send.
async fn activation_envelopes(
    sb: &TestSandbox,
    provider: &Provider<'_>,
    plans: usize,
) -> Vec<Value> {
    provider.product("weather", true).await;
    let mut names = Vec::new();
    for i in 0..plans {
        let plan = provider
            .plan(
                &format!("plan-{i}"),
                &format!("Plan {i}"),
                "weather",
                crate::provisioning::paid_plan_spec("weather"),
            )
            .await;
        let name = plan["name"].as_str().unwrap().to_owned();
        provider
            .quota(&name, "calls", json!({"type":"perunit","cost":0.01}))
            .await;
        provider.activate(&name).await;
        names.push(name);
    }
    wait_for("the activation envelopes", WAIT, || async {
        let deliveries = sandbox_json(sb, "/_sandbox/deliveries").await;
        let envelopes: Vec<Value> = names
            .iter()
            .filter_map(|name| {
                deliveries.as_array()?.iter().rev().find_map(|d| {
                    let e = &d["event"];
                    (e["payload"]["name"] == name.as_str()
                        && e["payload"]["kind"] == "ProductPlan"
                        && e["metadata"]["subresource"] == "state")
                        .then(|| e.clone())
                })
            })
            .collect();
        (envelopes.len() == names.len()).then_some(envelopes)
    })
    .await
}

async fn install_hooks_nowhere(sb: &TestSandbox, config: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_billing-bridge"))
        .arg("install-hooks")
        .arg("--config")
        .arg(config)
        .arg("--url")
        .arg(sb.at("/_sandbox/nowhere"))
        .output()
        .expect("install-hooks runs");
    assert!(
        output.status.success(),
        "install-hooks: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn billed_cards(sb: &TestSandbox) -> usize {
    cards(sb)
        .await
        .iter()
        .filter(|c| c.title.starts_with("Plan billed in Recurly"))
        .count()
}

#[actix_rt::test]
async fn duplicated_webhooks_through_the_load_balancer_have_one_effect_each() {
    if !tools_present() {
        return;
    }
    let sb = bridge_sandbox().await;
    let redis = Redis::start().await.expect("redis-server is installed");
    let config = write_config(&sb, &redis, "");
    let instances = three_instances(&config).await;
    let nginx = Nginx::start(&instances.iter().collect::<Vec<_>>()).await;
    install_hooks_nowhere(&sb, &config).await;
    let provider = Provider::new(&sb).await;
    let plans = 6;
    let envelopes = activation_envelopes(&sb, &provider, plans).await;
    // Every envelope five times, all at once, through the load balancer.
    let webhook = format!("{}/webhooks/amplify", nginx.url());
    let http = nginx.client();
    let mut sends = tokio::task::JoinSet::new();
    for envelope in envelopes
        .iter()
        .flat_map(|e| std::iter::repeat_n(e.clone(), 5))
    {
        let (http, webhook) = (http.clone(), webhook.clone());
        sends.spawn(async move { deliver(&http, &webhook, &envelope).await });
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap();
    }
    wait_for("every plan billed", WAIT, || async {
        (billed_cards(&sb).await >= plans).then_some(())
    })
    .await;
    // Whatever was still in flight has landed by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(billed_cards(&sb).await, plans, "one card per plan");
    let created = recurly_writes(&sb, "POST", "/plans").await;
    let created_ok = created.iter().filter(|r| r["status"] == 201).count();
    assert_eq!(created_ok, plans, "one Recurly plan created per plan");
    // Each instance took a share: the load balancer spread the deliveries.
    let per_instance: Vec<u64> = {
        let mut counts = Vec::new();
        for i in &instances {
            let text = reqwest::get(format!("{}/metrics", i.url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let accepted: u64 = text
                .lines()
                .filter(|l| l.starts_with("billing_bridge_webhooks_received_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|v| v as u64)
                .sum();
            counts.push(accepted);
        }
        counts
    };
    assert!(
        per_instance.iter().all(|c| *c > 0),
        "every instance received webhooks: {per_instance:?}"
    );
}

#[actix_rt::test]
async fn one_plan_s_events_at_three_instances_are_passed_one_at_a_time() {
    if !tools_present() {
        return;
    }
    let sb = bridge_sandbox().await;
    let redis = Redis::start().await.expect("redis-server is installed");
    let config = write_config(&sb, &redis, "");
    let instances = three_instances(&config).await;
    install_hooks_nowhere(&sb, &config).await;
    let provider = Provider::new(&sb).await;
    let envelope = activation_envelopes(&sb, &provider, 1).await.remove(0);
    // Every read of the plan takes a second: passes at two instances side by side would read
    // it at the same time.
    let slow =
        json!({"latency_ms": 1000, "path_contains": "/productplans/plan-0", "methods": ["GET"]});
    let status = sb
        .http
        .put(sb.at("/_sandbox/faults/amplify"))
        .json(&slow)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
    // The activation under three ids, one to each instance: three events of one plan in the
    // shared queue at once.
    let http = reqwest::Client::new();
    for (i, instance) in instances.iter().enumerate() {
        let mut event = envelope.clone();
        event["id"] = json!(format!("copy-{i}"));
        deliver(&http, &format!("{}/webhooks/amplify", instance.url), &event).await;
    }
    let passes = || async {
        let mut passes = 0.0;
        for instance in &instances {
            let text = reqwest::get(format!("{}/metrics", instance.url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            passes += crate::support::metric_sum(
                &text,
                "billing_bridge_provisioning_total",
                r#"resource="plan""#,
            );
        }
        passes
    };
    wait_for(
        "three passes of the plan",
        Duration::from_secs(60),
        || async { (passes().await >= 3.0).then_some(()) },
    )
    .await;
    assert_eq!(billed_cards(&sb).await, 1, "one card");
    let reads =
        crate::provisioning::requests_to(&sb, "amplify", "GET", "/productplans/plan-0").await;
    assert!(
        reads.len() >= 3,
        "a read per pass at least: {}",
        reads.len()
    );
    assert_eq!(
        crate::provisioning::overlapping_pairs(&reads),
        0,
        "two instances passed the plan at once"
    );
    let created = recurly_writes(&sb, "POST", "/plans").await;
    assert_eq!(created.len(), 1, "one Recurly plan");
}

#[actix_rt::test]
async fn redis_restarted_under_load_loses_no_acknowledged_event() {
    if !tools_present() {
        return;
    }
    let sb = bridge_sandbox().await;
    let mut redis = Redis::start().await.expect("redis-server is installed");
    let config = write_config(&sb, &redis, "");
    let instances = three_instances(&config).await;
    let nginx = Nginx::start(&instances.iter().collect::<Vec<_>>()).await;
    install_hooks_nowhere(&sb, &config).await;
    let provider = Provider::new(&sb).await;
    let plans = 12;
    let envelopes = activation_envelopes(&sb, &provider, plans).await;
    let webhook = format!("{}/webhooks/amplify", nginx.url());
    let http = nginx.client();
    // Send them one after another while Redis is killed and restarted half way.
    let mut retried = 0;
    for (i, envelope) in envelopes.iter().enumerate() {
        if i == plans / 2 {
            redis.restart().await;
        }
        retried += deliver(&http, &webhook, envelope).await - 1;
    }
    wait_for("every acknowledged plan billed", WAIT, || async {
        (billed_cards(&sb).await >= plans).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(billed_cards(&sb).await, plans);
    eprintln!("events sent again after a 503 while Redis restarted: {retried}");
}

/// Seeds `subs` linked subscriptions (one quota, on `api/r0`) and traffic in two closed hours;
/// returns (from, to, injected units, records due: one per subscription and hour with traffic).
async fn seed_reporting(sb: &TestSandbox, subs: usize) -> (i64, i64, u64, u64) {
    let http = &sb.http;
    let created: Value = crate::provisioning::seed(sb, json!({"amplify": {"resources": [
            {"kind": "Product", "name": "metered", "attributes": {"billingSystem": "recurly"}, "state": "active"},
            {"kind": "ProductPlan", "name": "metered-plan", "spec": {"product": "metered", "type": "paid"}, "state": "active"},
            {"kind": "Quota", "name": "calls", "metadata": {"scope": {"name": "metered-plan"}},
             "spec": {"unit": "transactions", "resources": [{"kind": "AssetResource", "name": "api/r0"}]}}]}}))
    .await;
    let quota = created["resources"]
        .as_array()
        .or_else(|| created["amplify"]["resources"].as_array())
        .unwrap_or_else(|| panic!("seed answer: {created}"))
        .iter()
        .find(|r| r["kind"] == "Quota")
        .unwrap()["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let add_on = format!("amplify-quota-{quota}");
    let seeded: Value = crate::provisioning::seed(sb, json!({"recurly": {
            "measured_units": [{"name": "transactions", "display_name": "Transactions"}],
            "accounts": (0..subs).map(|i| json!({"code": format!("amplify-team-r{i}")})).collect::<Vec<_>>(),
            "plans": [{"code": "amplify-plan-metered", "name": "Metered", "accounting_code": "metered",
                       "currencies": [{"currency": "USD", "unit_amount": 0}],
                       "add_ons": [{"code": add_on, "name": "Calls", "accounting_code": "calls",
                                    "add_on_type": "usage", "usage_type": "price", "measured_unit_name": "transactions",
                                    "currencies": [{"currency": "USD", "unit_amount_decimal": "0.01"}]}]}],
            "subscriptions": (0..subs).map(|i| json!({"plan_code": "amplify-plan-metered", "currency": "USD",
                "account": {"code": format!("amplify-team-r{i}")}, "add_ons": [{"code": add_on}]})).collect::<Vec<_>>()}}))
    .await;
    let ids: Vec<String> = seeded["recurly"]["subscriptions"]
        .as_array()
        .or_else(|| seeded["subscriptions"].as_array())
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let linked: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"kind": "Subscription", "name": format!("metered-{i}"),
                   "spec": {"product": "metered", "plan": {"name": "metered-plan"}},
                   "attributes": {"recurlySubscriptionId": id}, "approval": {"state": "approved"}})
        })
        .collect();
    let response = http
        .post(sb.at("/_sandbox/seed"))
        .json(&json!({"amplify": {"resources": linked}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let hour = 3_600_000i64;
    let now = chrono::Utc::now().timestamp_millis();
    let (from, to) = ((now / hour - 3) * hour, (now / hour - 1) * hour);
    // Each window on its own, so the records each subscription must get are known.
    let mut units = 0;
    let mut records = 0;
    for (seed, start) in [(11, from), (12, from + hour)] {
        let generated: Value = http
            .post(sb.at("/_sandbox/traffic/generate"))
            .json(&json!({"seed": seed, "count": subs * 20, "from": start, "to": start + hour}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for total in generated["totals"].as_array().unwrap() {
            let n = total["totalCount"].as_u64().unwrap_or(0);
            units += n;
            records += u64::from(n > 0);
        }
    }
    (from, to, units, records)
}

async fn report(http: &reqwest::Client, instance: &str, from: i64, to: i64) -> (u16, Value) {
    let response = http
        .post(format!("{instance}/admin/report"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"from": from, "to": to}))
        .send()
        .await;
    match response {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        // The instance was killed while answering.
        Err(_) => (0, Value::Null),
    }
}

async fn usage_totals(sb: &TestSandbox) -> (u64, u64) {
    let totals = sandbox_json(sb, "/_sandbox/recurly/usage_totals").await;
    totals
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(records, amount), t| {
            (
                records + t["records"].as_u64().unwrap_or(0),
                amount + t["amount"].as_f64().unwrap_or(0.0) as u64,
            )
        })
}

#[actix_rt::test]
async fn reporting_runs_once_across_instances_and_survives_a_killed_one() {
    if !tools_present() {
        return;
    }
    let sb = bridge_sandbox().await;
    let redis = Redis::start().await.expect("redis-server is installed");
    let subs = 40;
    let (from, to, injected, due) = seed_reporting(&sb, subs).await;
    // Slow usage answers, so the run is still going when an instance is killed.
    let fault = sb
        .http
        .put(sb.at("/_sandbox/faults/recurly"))
        .json(&json!({"latency_ms": 60}))
        .send()
        .await
        .unwrap();
    assert!(fault.status().is_success());
    let config = write_config(&sb, &redis, "");
    let mut instances = three_instances(&config).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // All three are asked at once: one runs, the others are told a run is in progress.
    let first = instances[0].url.clone();
    let running = {
        let http = http.clone();
        tokio::spawn(async move { report(&http, &first, from, to).await })
    };
    wait_for("the first usage records", WAIT, || async {
        (usage_totals(&sb).await.0 > 0).then_some(())
    })
    .await;
    for other in &instances[1..] {
        let (status, body) = report(&http, &other.url, from, to).await;
        assert_eq!(
            status, 409,
            "a second run while one holds the lease: {body}"
        );
    }
    // The running instance dies mid-run.
    let before_kill = usage_totals(&sb).await.0;
    instances[0].kill();
    let _ = running.await;
    assert!(
        before_kill < due,
        "killed mid-run ({before_kill} of {due} records)"
    );
    // After its lease expires, another instance finishes the work.
    let started = Instant::now();
    let summary = wait_for("a run on a surviving instance", WAIT, || async {
        let (status, body) = report(&http, &instances[1].url, from, to).await;
        (status == 200 && body["complete"] == true).then_some(body)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(summary["windows"].as_array().unwrap().len(), 2);
    let (records, amount) = usage_totals(&sb).await;
    assert_eq!(amount, injected, "every unit reported once");
    assert_eq!(records, due, "one record per subscription and hour");
    // And a third instance running the same range adds nothing.
    let (status, again) = report(&http, &instances[2].url, from, to).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["records"], 0);
    assert_eq!(usage_totals(&sb).await, (records, amount));
}
