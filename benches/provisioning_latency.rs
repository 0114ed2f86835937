//! Webhook → Recurly plan visible (issue 3): the sandbox and the real bridge in-process, hooks
//! installed so the sandbox's Amplify posts its webhooks to the bridge. Eligible plans are created
//! beforehand; each is then activated on its own, and the time from the activation write
//! (`PUT …/productplans/{name}/state`) until `GET /recurly/plans/code-amplify-plan-{id}` answers
//! 200 is measured, polling every millisecond.
//!
//! `cargo bench --bench provisioning_latency` (env `LOAD_PLANS` sets how many plans).
//!
//! The bridge's Amplify limit (25 requests/minute in production) and Recurly limit are raised for
//! the run: activations one after another are far over Amplify's limit, which in production makes
//! a burst of activations queue by design. What is measured is one webhook's path.

mod support;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use billing_bridge_pipeline::Bridge;
use billing_bridge_pipeline::hooks::{HookSpec, install_hooks};
use billing_bridge_pipeline::metrics::{
    ProvisioningLabels, ProvisioningOutcome, ResourceLabel, WebhookLabels, WebhookOutcome,
};
use billing_bridge_server::{Application, Options, WEBHOOK_PATH};
use serde_json::{Value, json};
use support::{env_or, percentile};

const SECRET: &str = "Bearer bench-webhook-secret";
/// Longest wait for one plan to appear; a plan that takes longer fails the run.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);
/// How often Recurly is asked whether the plan is there yet.
const POLL: Duration = Duration::from_millis(1);

/// What the server thread hands to the client.
struct Servers {
    sandbox: String,
    state: Arc<Bridge>,
    stop: tokio::sync::oneshot::Sender<()>,
}

fn bridge_config(sandbox: &str) -> billing_bridge_config::BridgeConfig {
    let toml = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [webhook]
        secret = "{SECRET}"
        [amplify]
        central_url = "{sandbox}/amplify"
        auth_url = "{sandbox}/auth"
        platform_url = "{sandbox}/platform"
        client_id = "bridge"
        client_secret = "bridge-secret"
        # Raised from the production 25 (see the module comment).
        requests_per_minute = 60000
        timeout = "5s"
        [recurly]
        base_url = "{sandbox}/recurly"
        api_key = "recurly-bench-key"
        site = "production"
        # Raised from the production 1,000 GET/minute for the same reason.
        requests_per_minute = 60000
        timeout = "5s"
        [provisioning]
        marketplace_url = "https://marketplace.example"
        [notify.teams]
        webhook_url = "{sandbox}/teams/webhookb2/provider-channel"
        [store]
        state_file = ""
        [reporting]
        schedule = ""
        "#
    );
    billing_bridge_config::BridgeConfig::from_toml_layers(&[&toml]).expect("bench bridge config")
}

/// Sandbox and bridge (pipeline and server, one worker each) in one actix system on this thread,
/// with the bridge's hooks installed in the sandbox's Amplify.
fn serve(ready: mpsc::Sender<Servers>) {
    actix_rt::System::new().block_on(async move {
        let sandbox = billing_bridge_sandbox::start(support::unlimited_sandbox(), "127.0.0.1:0")
            .await
            .expect("sandbox starts");
        let retry = billing_bridge_upstream::RetryPolicy::new(
            6,
            Duration::from_millis(5),
            Duration::from_millis(200),
        );
        let handle = Application::start(
            bridge_config(&sandbox.url()),
            std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener"),
            Options {
                retry,
                workers: Some(1),
            },
        )
        .expect("the bridge starts");
        let state = handle.bridge().clone();
        install_hooks(
            &state.amplify,
            &HookSpec {
                name: "billing-bridge",
                url: &format!("{}{WEBHOOK_PATH}", handle.url()),
                header: "Authorization",
                secret: SECRET,
            },
        )
        .await
        .expect("hooks installed");

        let (stop, stopped) = tokio::sync::oneshot::channel();
        ready
            .send(Servers {
                sandbox: sandbox.url(),
                state,
                stop,
            })
            .expect("client waits");
        let _ = stopped.await;
        handle.stop(false).await;
        sandbox.stop().await;
    });
}

/// A provider acting on the sandbox's Amplify, and a Recurly user looking at the site.
struct Client {
    http: reqwest::Client,
    sandbox: String,
    token: String,
}

impl Client {
    async fn new(sandbox: String) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let token = support::amplify_token(&http, &sandbox, "provider").await;
        Client {
            http,
            sandbox,
            token,
        }
    }

    async fn amplify(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}/amplify/apis{path}", self.sandbox))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("amplify request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, collection: &str, body: Value) -> Value {
        let (status, created) = self.amplify(reqwest::Method::POST, collection, body).await;
        assert_eq!(status, 201, "creating in {collection}: {created}");
        created
    }

    async fn recurly_status(&self, path: &str) -> u16 {
        self.http
            .get(format!("{}/recurly{path}", self.sandbox))
            .basic_auth("provider-key", Some(""))
            .header("Accept", "application/vnd.recurly.v2021-02-25")
            .send()
            .await
            .expect("recurly request")
            .status()
            .as_u16()
    }
}

/// An eligible draft plan with two or three priced quotas (graduated, volume, and on every
/// other plan pay per use). Returns its Recurly plan code.
async fn eligible_plan(client: &Client, index: usize) -> (String, String) {
    let name = format!("bench-plan-{index:03}");
    let plan = client.create("/catalog/v1/productplans", json!({"group":"catalog","apiVersion":"v1","kind":"ProductPlan","name":name,"title":format!("Bench {index}"),
        "spec":{"product":"weather","type":"paid","billing":{"currency":"USD","price":10,"interval":"monthly"},
                "subscription":{"approval":"manual","interval":{"type":"months","length":1},"renewal":"automatic"}}})).await;
    let mut quotas = vec![
        (
            "calls",
            json!({"type":"graduated","limit":{"type":"tiered","tiers":[{"from":1,"to":1000,"cost":0,"flatFee":0},{"from":1001,"to":999999999,"cost":0.002,"flatFee":0}]}}),
        ),
        (
            "bulk",
            json!({"type":"volume","limit":{"type":"tiered","tiers":[{"from":1,"to":100,"cost":1,"flatFee":0},{"from":101,"to":999999999,"cost":0.5,"flatFee":0}]}}),
        ),
    ];
    if index.is_multiple_of(2) {
        quotas.push(("alerts", json!({"type":"perunit","cost":0.01})));
    }
    for (quota, pricing) in quotas {
        client.create(&format!("/catalog/v1/productplans/{name}/quotas"), json!({"group":"catalog","apiVersion":"v1","kind":"Quota","name":quota,"title":quota,
            "metadata":{"scope":{"kind":"ProductPlan","name":name}},
            "spec":{"unit":"transactions","pricing":pricing,"resources":[{"kind":"AssetResource","name":format!("weather/{quota}")}]}})).await;
    }
    let id = plan["metadata"]["id"].as_str().expect("plan id");
    (name, format!("amplify-plan-{id}"))
}

/// Webhooks received plus plan passes finished: stops moving once the bridge is idle.
fn activity(state: &Bridge) -> u64 {
    use ProvisioningOutcome::*;
    let webhooks: u64 = [
        WebhookOutcome::Accepted,
        WebhookOutcome::Duplicate,
        WebhookOutcome::Ignored,
    ]
    .into_iter()
    .map(|outcome| {
        state
            .metrics
            .webhooks
            .get_or_create(&WebhookLabels { outcome })
            .get()
    })
    .sum();
    let passes: u64 = [
        Provisioned,
        Unchanged,
        Ineligible,
        Waiting,
        Deactivated,
        Failed,
        Retry,
    ]
    .into_iter()
    .map(|outcome| {
        state
            .metrics
            .provisioning
            .get_or_create(&ProvisioningLabels {
                resource: ResourceLabel::Plan,
                outcome,
            })
            .get()
    })
    .sum();
    webhooks + passes
}

/// Waits (at most `within`) until the bridge has nothing queued and has received and finished
/// nothing for 50 ms, so the next activation is measured alone.
async fn settle(state: &Bridge, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = activity(state);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = activity(state);
        if now == last && state.store.queue_depth().await.unwrap_or(1) == 0 {
            return;
        }
        last = now;
    }
}

fn main() {
    let plans = env_or("LOAD_PLANS", if support::benching() { 100 } else { 5 }) as usize;
    let (ready, servers) = mpsc::channel();
    let server_thread = std::thread::spawn(move || serve(ready));
    let servers = servers.recv().expect("servers start");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let state = servers.state.clone();
    client_rt.block_on(async {
        let client = Client::new(servers.sandbox.clone()).await;
        client.create("/catalog/v1/products", json!({"group":"catalog","apiVersion":"v1","kind":"Product","name":"weather","title":"Weather API",
            "attributes":{"billingSystem":"recurly"},"spec":{"description":"Forecasts"}})).await;
        let mut catalog = Vec::with_capacity(plans);
        for index in 0..plans {
            catalog.push(eligible_plan(&client, index).await);
        }
        // Quota creations are webhooks too (each looks at its draft plan): let them pass.
        settle(&state, Duration::from_secs(30)).await;

        let mut latencies = Vec::with_capacity(plans);
        for (name, code) in &catalog {
            let started = Instant::now();
            let (status, body) = client
                .amplify(
                    reqwest::Method::PUT,
                    &format!("/catalog/v1/productplans/{name}/state"),
                    json!({"state": "active"}),
                )
                .await;
            assert_eq!(status, 200, "activating {name}: {body}");
            loop {
                if client.recurly_status(&format!("/plans/code-{code}")).await == 200 {
                    break;
                }
                assert!(
                    started.elapsed() < VISIBLE_WITHIN,
                    "{name}: no Recurly plan {code} after {VISIBLE_WITHIN:?}"
                );
                tokio::time::sleep(POLL).await;
            }
            latencies.push(started.elapsed().as_micros() as u32);
            // The write-back of the link is a webhook too: let it pass before the next plan.
            settle(&state, Duration::from_secs(5)).await;
        }
        latencies.sort_unstable();
        let mean = latencies.iter().map(|&l| f64::from(l)).sum::<f64>() / plans as f64 / 1000.0;
        println!(
            "webhook -> Recurly plan visible: {plans} plans (2-3 priced quotas each), activated one at a time, polled every {} ms",
            POLL.as_millis()
        );
        println!(
            "p50 {:.2} ms   p95 {:.2} ms   p99 {:.2} ms   max {:.2} ms   mean {mean:.2} ms",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
    });
    servers.stop.send(()).expect("server thread waits");
    server_thread.join().expect("server thread");
}
