//! `demo`: the sandbox and the bridge in one process. Seeds a catalog, billing accounts and
//! subscribers, installs the webhooks, then runs every flow once (plan activation, an approved
//! subscription, a rejected one) and prints each step and the Recurly objects that resulted.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use billing_bridge_amplify::{AmplifyClient, AmplifySettings};
use billing_bridge_config::BridgeConfig;
use billing_bridge_pipeline::hooks::{HookSpec, install_hooks};
use billing_bridge_sandbox::SandboxConfig;
use billing_bridge_server::{Application, Options, WEBHOOK_PATH};
use billing_bridge_upstream::RetryPolicy;
use secrecy::SecretString;
use serde_json::{Value, json};

/// The demo raises Amplify's per-client limit (25 requests/minute in production) so that every
/// flow runs in seconds; in production a burst of events simply queues.
const DEMO_AMPLIFY_PER_MINUTE: u32 = 600;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const ORG: &str = "650130132060094";
const ACME_TEAM: &str = "e33e2081-9025-4939-9741-c1dddae11017";
const ACME_USER: &str = "281768f2-5b1c-4c8e-9d3a-2f6e7a1b9c04";
const GLOBEX_TEAM: &str = "7a0c4f52-63d1-4e2b-8f7a-9b1d2c3e4f50";
const GLOBEX_USER: &str = "9c2b7e14-0f3a-4d5b-8e6c-1a2b3c4d5e6f";
const TEAMS_CHANNEL: &str = "/teams/webhookb2/demo-provider-channel";

struct Step(usize);

impl Step {
    fn next(&mut self, text: &str) {
        self.0 += 1;
        println!("\n[{}] {text}", self.0);
    }
}

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(found) = check().await? {
            return Ok((found, started.elapsed()));
        }
        if started.elapsed() > STEP_TIMEOUT {
            bail!("timed out after {STEP_TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("?")
}

fn tiers(add_on: &billing_bridge_billing::recurly::AddOn) -> String {
    let price = |c: &[billing_bridge_billing::recurly::AddOnPricing]| {
        c.first()
            .map(|p| {
                p.unit_amount_decimal
                    .clone()
                    .unwrap_or_else(|| p.unit_amount.unwrap_or(0.0).to_string())
            })
            .unwrap_or_default()
    };
    match &add_on.tiers {
        Some(tiers) if !tiers.is_empty() => {
            let mut start = 1u64;
            tiers
                .iter()
                .map(|t| {
                    let end = t.ending_quantity.unwrap_or(999_999_999);
                    let range = if end >= 999_999_999 {
                        format!("{start}+")
                    } else {
                        format!("{start}-{end}")
                    };
                    start = end.saturating_add(1);
                    format!("{range} @ {}", price(&t.currencies))
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
        _ => format!(
            "{} per unit",
            price(add_on.currencies.as_deref().unwrap_or_default())
        ),
    }
}

pub async fn run(keep_running: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut step = Step(0);
    println!(
        "billing-bridge demo: Amplify, Recurly, MS Teams and SendGrid are emulated by the sandbox on this machine."
    );

    step.next("Starting the sandbox and the bridge");
    let mut sandbox_config = SandboxConfig::default();
    sandbox_config.amplify.requests_per_minute = DEMO_AMPLIFY_PER_MINUTE;
    let sandbox = billing_bridge_sandbox::start(sandbox_config, "127.0.0.1:0")
        .await
        .context("starting the sandbox")?;
    let sb = sandbox.url();
    let webhook_secret = format!("Bearer {}", uuid::Uuid::new_v4().simple());
    let admin_token = uuid::Uuid::new_v4().simple().to_string();
    let config = BridgeConfig::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_token = "{admin}"
        [webhook]
        secret = "{webhook_secret}"
        [amplify]
        central_url = "{sb}/amplify"
        auth_url = "{sb}/auth"
        platform_url = "{sb}/platform"
        client_id = "billing-bridge"
        client_secret = "demo-secret"
        requests_per_minute = {DEMO_AMPLIFY_PER_MINUTE}
        [recurly]
        base_url = "{sb}/recurly"
        api_key = "demo-recurly-key"
        site = "sandbox"
        requests_per_minute = 400
        [provisioning]
        marketplace_url = "https://marketplace.example.com"
        [notify.teams]
        webhook_url = "{sb}{TEAMS_CHANNEL}"
        [notify.mail]
        backend = "sendgrid"
        from = "billing@marketplace.example.com"
        from_name = "Weather API Marketplace"
        [notify.mail.sendgrid]
        api_key = "SG.demo"
        base_url = "{sb}/sendgrid"
        [reporting]
        schedule = ""
        window = "1m"
        delay = "0s"
        [store]
        state_file = ""
        "#,
        admin = admin_token
    ))?;
    config.validate()?;
    let server = Application::start(
        config,
        std::net::TcpListener::bind("127.0.0.1:0")?,
        Options {
            workers: Some(1),
            ..Options::default()
        },
    )?;
    let bridge = server.bridge().clone();
    println!("sandbox: {sb}");
    println!("bridge: {}", server.url());
    println!(
        "      Amplify's limit is raised to {DEMO_AMPLIFY_PER_MINUTE} requests/minute for the demo (production: 25)."
    );

    let http = reqwest::Client::new();
    let provider = AmplifyClient::new(
        http.clone(),
        AmplifySettings {
            central_url: format!("{sb}/amplify"),
            auth_url: format!("{sb}/auth"),
            platform_url: format!("{sb}/platform"),
            client_id: "weather-provider".into(),
            client_secret: SecretString::from("provider-secret"),
            tenant_id: None,
            requests_per_minute: DEMO_AMPLIFY_PER_MINUTE,
            api_version: "v1".into(),
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        },
    );

    step.next("Seeding subscribers in Amplify and Acme's billing account in Recurly");
    let seeded = http
        .post(format!("{sb}/_sandbox/seed"))
        .json(&json!({
            "amplify": {"users": [
                {"guid": ACME_USER, "email": "dana@acme.example", "firstname": "Dana", "lastname": "Reyes"},
                {"guid": GLOBEX_USER, "email": "sam@globex.example", "firstname": "Sam", "lastname": "Okafor"}]},
            "recurly": {"accounts": [{"code": format!("amplify-team-{ACME_TEAM}"), "company": "Acme Corp", "email": "billing@acme.example"}]}
        }))
        .send()
        .await?;
    if !seeded.status().is_success() {
        bail!("seeding the sandbox failed: {}", seeded.text().await?);
    }
    println!(
        "      Amplify users: dana@acme.example (team Acme), sam@globex.example (team Globex)"
    );
    println!("      Recurly account: amplify-team-{ACME_TEAM} (Acme); Globex has none");

    step.next("Installing the webhooks in Amplify (billing-bridge install-hooks)");
    let secret_value = webhook_secret.clone();
    let webhook_url = format!("{}{WEBHOOK_PATH}", server.url());
    for line in install_hooks(
        &bridge.amplify,
        &HookSpec {
            name: "billing-bridge",
            url: &webhook_url,
            header: "Authorization",
            secret: &secret_value,
        },
    )
    .await?
    {
        println!("      {line}");
    }

    step.next("The provider publishes \"Weather API\" (billingSystem=recurly) with a paid plan and a free one");
    provider
        .create("/catalog/v1/products", &json!({"group":"catalog","apiVersion":"v1","kind":"Product","name":"weather-api","title":"Weather API",
            "attributes":{"billingSystem":"recurly"},"spec":{"description":"Forecasts, exports and severe-weather alerts"}}))
        .await?;
    let silver = provider
        .create("/catalog/v1/productplans", &json!({"group":"catalog","apiVersion":"v1","kind":"ProductPlan","name":"weather-silver","title":"Silver",
            "spec":{"product":"weather-api","type":"paid","billing":{"currency":"USD","price":49,"interval":"monthly","setup":{"price":0}},
                    "subscription":{"approval":"manual","interval":{"type":"months","length":1},"renewal":"automatic"}}}))
        .await?;
    for (name, title, pricing) in [
        (
            "forecast-calls",
            "Forecast calls",
            json!({"type":"graduated","limit":{"type":"tiered","tiers":[
            {"from":1,"to":10000,"cost":0,"flatFee":0},{"from":10001,"to":999999999,"cost":0.002,"flatFee":0}]}}),
        ),
        (
            "bulk-exports",
            "Bulk exports",
            json!({"type":"volume","limit":{"type":"tiered","tiers":[
            {"from":1,"to":100,"cost":1,"flatFee":0},{"from":101,"to":999999999,"cost":0.5,"flatFee":0}]}}),
        ),
        (
            "severe-alerts",
            "Severe weather alerts",
            json!({"type":"perunit","cost":0.05}),
        ),
    ] {
        provider
            .create("/catalog/v1/productplans/weather-silver/quotas", &json!({"group":"catalog","apiVersion":"v1","kind":"Quota","name":name,"title":title,
                "metadata":{"scope":{"kind":"ProductPlan","name":"weather-silver"}},
                "spec":{"unit":"transactions","pricing":pricing,"resources":[{"kind":"AssetResource","name":format!("weather/{name}")}]}}))
            .await?;
    }
    provider
        .create("/catalog/v1/productplans", &json!({"group":"catalog","apiVersion":"v1","kind":"ProductPlan","name":"weather-free","title":"Free",
            "spec":{"product":"weather-api","type":"free","subscription":{"approval":"automatic"}}}))
        .await?;
    println!(
        "      Silver: USD 49/month, quotas: Forecast calls (graduated), Bulk exports (volume), Severe weather alerts (pay per use)"
    );
    println!("      Free: a free plan, which billing-bridge leaves alone");

    step.next("The provider activates both plans; Amplify posts the state change to the bridge");
    provider
        .put_subresource(
            "/catalog/v1/productplans/weather-silver",
            "state",
            json!("active"),
        )
        .await?;
    provider
        .put_subresource(
            "/catalog/v1/productplans/weather-free",
            "state",
            json!("active"),
        )
        .await?;
    let code = format!("amplify-plan-{}", text(&silver, "/metadata/id"));
    let (plan, took) = wait_for("the Recurly plan", || async {
        Ok(bridge.recurly.plan(&code).await?)
    })
    .await?;
    println!(
        "      Recurly plan {} \"{}\" created {} ms after activation",
        plan.code,
        plan.name.clone().unwrap_or_default(),
        took.as_millis()
    );
    if let Some(price) = plan.currencies.first() {
        let unit = plan.interval_unit.clone().unwrap_or_default();
        let every = match plan.interval_length.unwrap_or(1) {
            1 => unit.trim_end_matches('s').to_owned(),
            n => format!("{n} {unit}"),
        };
        println!(
            "        {} {} per {every}, setup fee {}",
            price.currency,
            price.unit_amount.unwrap_or(0.0),
            price.setup_fee.unwrap_or(0.0)
        );
    }
    for add_on in bridge.recurly.plan_add_ons(&code).await? {
        println!(
            "        add-on {} ({}, {}): {}",
            add_on.code,
            add_on.usage_type.clone().unwrap_or_default(),
            add_on.tier_type.clone().unwrap_or_default(),
            tiers(&add_on)
        );
    }
    let (linked, _) = wait_for("the link on the Amplify plan", || async {
        let plan = provider
            .get("/catalog/v1/productplans/weather-silver")
            .await?
            .unwrap_or_default();
        Ok((text(&plan, "/attributes/recurlyPlanCode") == code).then_some(plan))
    })
    .await?;
    println!(
        "      Amplify plan attributes: recurlyPlanCode={}, recurlyPlanId={}",
        text(&linked, "/attributes/recurlyPlanCode"),
        text(&linked, "/attributes/recurlyPlanId")
    );
    let free_plans = bridge
        .recurly
        .plan(&format!(
            "amplify-plan-{}",
            text(
                &provider
                    .get("/catalog/v1/productplans/weather-free")
                    .await?
                    .unwrap_or_default(),
                "/metadata/id"
            )
        ))
        .await?;
    println!(
        "      Free plan in Recurly: {}",
        if free_plans.is_none() {
            "none (not a paid plan with manual approval)"
        } else {
            "UNEXPECTED"
        }
    );

    step.next("Acme subscribes to Silver; Amplify posts the pending approval to the bridge");
    subscribe(
        &provider,
        "acme-weather-silver",
        "Acme - Weather Silver",
        ACME_TEAM,
        ACME_USER,
    )
    .await?;
    let (acme, took) = wait_for("Acme's approval", || async {
        let sub = provider
            .get("/catalog/v1/subscriptions/acme-weather-silver")
            .await?
            .unwrap_or_default();
        Ok((text(&sub, "/approval/state") != "pending").then_some(sub))
    })
    .await?;
    println!(
        "      Amplify approval: {} ({}) {} ms after subscribing",
        text(&acme, "/approval/state"),
        text(&acme, "/approval/reason"),
        took.as_millis()
    );
    let billing_id = text(&acme, "/attributes/recurlySubscriptionId").to_owned();
    if let Some(sub) = bridge.recurly.subscription(&billing_id).await? {
        println!(
            "      Recurly subscription {} ({}): plan {}, account {}, usage add-ons {}",
            sub.id,
            sub.state,
            sub.plan.code.unwrap_or_default(),
            sub.account.code.unwrap_or_default(),
            sub.add_ons
                .iter()
                .map(|a| format!(
                    "{} x{}",
                    a.add_on.code.clone().unwrap_or_default(),
                    a.quantity.unwrap_or(1)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        bail!(
            "Acme's subscription was not created in Recurly: {}",
            text(&acme, "/approval/reason")
        );
    }
    let (mails, _) = wait_for("the approval mail", || async {
        let mails: Value = http
            .get(format!("{sb}/_sandbox/mails"))
            .send()
            .await?
            .json()
            .await?;
        Ok(mails.as_array().filter(|m| !m.is_empty()).cloned())
    })
    .await?;
    for mail in &mails {
        println!(
            "      Mail to {}: \"{}\"",
            text(mail, "/recipients/0"),
            text(mail, "/subject")
        );
    }

    step.next("Globex subscribes to Silver but has no billing account");
    subscribe(
        &provider,
        "globex-weather-silver",
        "Globex - Weather Silver",
        GLOBEX_TEAM,
        GLOBEX_USER,
    )
    .await?;
    let (globex, _) = wait_for("Globex's rejection", || async {
        let sub = provider
            .get("/catalog/v1/subscriptions/globex-weather-silver")
            .await?
            .unwrap_or_default();
        Ok((text(&sub, "/approval/state") != "pending").then_some(sub))
    })
    .await?;
    println!(
        "      Amplify approval: {}",
        text(&globex, "/approval/state")
    );
    println!(
        "      Reason shown to Globex: {}",
        text(&globex, "/approval/reason")
    );
    let channel = TEAMS_CHANNEL.trim_start_matches("/teams/");
    let (cards, _) = wait_for("the provider's cards", || async {
        let cards: Value = http
            .get(format!("{sb}/_sandbox/cards"))
            .send()
            .await?
            .json()
            .await?;
        let titles: Vec<String> = cards
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["channel"] == channel)
                    .map(|c| text(c, "/body/attachments/0/content/body/0/text").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        Ok(titles
            .iter()
            .any(|t| t.starts_with("Subscription not billed"))
            .then_some(titles))
    })
    .await?;
    for title in &cards {
        println!("      Teams card to the provider: {title}");
    }

    step.next("Acme calls the API; the bridge reports the traffic of the last minute to Recurly");
    let window_ms = 60_000i64;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (from, to) = (
        (now_ms / window_ms - 1) * window_ms,
        (now_ms / window_ms) * window_ms,
    );
    let generated: Value = http
        .post(format!("{sb}/_sandbox/traffic/generate"))
        .json(&json!({"seed": 42, "count": 2_500, "from": from, "to": to}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let traffic: u64 = generated["totals"]
        .as_array()
        .map(|t| t.iter().filter_map(|r| r["totalCount"].as_u64()).sum())
        .unwrap_or(0);
    println!("      Traceability holds {traffic} calls of Acme's in the window");
    let report = |dry_run: bool| {
        let (http, bridge_url, admin_token) = (&http, server.url(), &admin_token);
        async move {
            let summary: Value = http
                .post(format!("{bridge_url}/admin/report"))
                .bearer_auth(admin_token)
                .json(&json!({"from": from, "to": to, "dry_run": dry_run}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(summary)
        }
    };
    let first = report(false).await?;
    let totals: Value = http
        .get(format!("{sb}/_sandbox/recurly/usage_totals"))
        .send()
        .await?
        .json()
        .await?;
    let mut in_recurly = 0u64;
    for total in totals.as_array().into_iter().flatten() {
        let amount = total["amount"].as_f64().unwrap_or(0.0) as u64;
        in_recurly += amount;
        println!(
            "      Recurly usage on {}: {amount} in {} record(s)",
            text(total, "/add_on_code"),
            total["records"]
        );
    }
    if in_recurly != traffic {
        bail!("Recurly holds {in_recurly} units for {traffic} calls");
    }
    let again = report(false).await?;
    println!(
        "      {} record(s) sent; every call billed once ({in_recurly} of {traffic}). Reporting the window again sent {} more.",
        first["records"], again["records"]
    );

    step.next("Result");
    let metrics = bridge.metrics.encode();
    let accepted = metrics
        .lines()
        .find(|l| l.starts_with("billing_bridge_webhooks_received_total{outcome=\"accepted\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("0");
    println!(
        "      {accepted} webhook event(s) acted on; 1 Recurly plan with 3 usage add-ons; 1 Recurly subscription; 1 approval and 1 rejection in Amplify; {} mail(s); {} Teams card(s); {traffic} API calls billed as usage",
        mails.len(),
        cards.len()
    );
    println!(
        "      Every flow ran in {:.1} s.",
        started.elapsed().as_secs_f64()
    );

    if keep_running {
        println!("\nBoth keep serving; press Ctrl-C to stop.");
        println!("sandbox: {sb}");
        println!("bridge: {}", server.url());
        println!("Try: curl -s '{sb}/_sandbox/requests?upstream=recurly' | head -c 2000");
        crate::serve::shutdown_signal().await;
    }
    // Nothing is in flight any more: stop at once rather than wait out keep-alive connections.
    server.stop(false).await;
    drop(sandbox);
    Ok(())
}

async fn subscribe(
    provider: &AmplifyClient,
    name: &str,
    title: &str,
    team: &str,
    user: &str,
) -> anyhow::Result<Value> {
    // The real Marketplace takes the consumer from the caller; the sandbox takes it from here.
    Ok(provider
        .create("/catalog/v1/subscriptions", &json!({"group":"catalog","apiVersion":"v1","kind":"Subscription","name":name,"title":title,
            "spec":{"product":"weather-api","plan":{"name":"weather-silver"}},
            "marketplace":{"resource":{"owner":{"type":"team","id":team,"organization":{"id":ORG},"user":{"id":user}}}}}))
        .await?)
}
