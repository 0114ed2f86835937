//! Load harness for the sandbox: shows it is not what limits a load test. Starts the sandbox on
//! 127.0.0.1:0 (one worker), drives it over loopback with keep-alive HTTP/1.1
//! connections for a bounded time, and prints throughput and latency percentiles per scenario.
//!
//! `cargo bench --bench sandbox_load` (env `LOAD_SECONDS`, `LOAD_CONNECTIONS` adjust the run;
//! `LOAD_RECORDER=10000` measures with the request recorder on, as in the default configuration).

mod support;

use base64::Engine;
use support::{env_or, fixed};

struct Scenario {
    name: &'static str,
    /// A complete HTTP/1.1 request; sent again and again on each connection.
    request: String,
    /// Statuses that count as a correct answer (the first is the usual one).
    expect_status: &'static [u16],
}

async fn run(addr: std::net::SocketAddr, scenario: &Scenario, seconds: u64, connections: u64) {
    let measured = support::run(
        addr,
        scenario.name,
        fixed(scenario.request.clone()),
        scenario.expect_status,
        seconds as f64,
        connections,
    )
    .await;
    let refused = if measured.unusual > 0 {
        format!(
            "   ({} answered {:?})",
            measured.unusual,
            &scenario.expect_status[1..]
        )
    } else {
        String::new()
    };
    println!(
        "{:<34} {:>9} requests in {:>5.2} s = {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms{refused}",
        scenario.name,
        measured.requests,
        measured.seconds,
        measured.per_second(),
        measured.p50_ms,
        measured.p99_ms,
    );
}

const USAGE: &str = r#"{"amount":3,"merchant_tag":"bench"}"#;

/// A bearer token, a plan to read and a Recurly subscription to post usage to, created through
/// the emulators' own APIs. Returns (Amplify token, Recurly subscription id).
async fn setup(base: &str) -> (String, String) {
    let http = reqwest::Client::new();
    let token = support::amplify_token(&http, base, "bench").await;
    let created = |path: &'static str, body: serde_json::Value| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let status = http
                .post(format!("{base}/amplify/apis/catalog/v1/{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("create")
                .status();
            assert_eq!(status, 201, "creating {path}");
        }
    };
    created("products", serde_json::json!({"group":"catalog","apiVersion":"v1","kind":"Product","name":"weather","title":"Weather","spec":{}})).await;
    created("productplans", serde_json::json!({"group":"catalog","apiVersion":"v1","kind":"ProductPlan","name":"silver","title":"Silver","spec":{"product":"weather","type":"paid","billing":{"currency":"USD","price":10,"interval":"monthly"},"subscription":{"approval":"manual"}}})).await;
    let seed = serde_json::json!({"recurly": {
        "measured_units": [{"name": "calls", "display_name": "calls"}],
        "accounts": [{"code": "bench-account"}],
        "plans": [{"code": "bench", "name": "Bench", "currencies": [{"currency": "USD", "unit_amount": 0}],
                   "add_ons": [{"code": "calls", "name": "Calls", "add_on_type": "usage", "usage_type": "price",
                                "measured_unit_name": "calls", "currencies": [{"currency": "USD", "unit_amount_decimal": "0.001"}]}]}],
        "subscriptions": [{"plan_code": "bench", "currency": "USD", "account": {"code": "bench-account"}, "add_ons": [{"code": "calls"}]}]
    }});
    let seeded: serde_json::Value = http
        .post(format!("{base}/_sandbox/seed"))
        .json(&seed)
        .send()
        .await
        .expect("seed")
        .json()
        .await
        .expect("seed answer");
    let subscription = seeded["recurly"]["subscriptions"][0]["id"]
        .as_str()
        .expect("seeded subscription id")
        .to_owned();
    (token, subscription)
}

fn main() {
    let seconds = env_or("LOAD_SECONDS", if support::benching() { 5 } else { 1 });
    let connections = env_or("LOAD_CONNECTIONS", 32);

    // The server gets its own runtime thread and one actix worker; the load generator gets one
    // thread: on a 2-core machine each side then has a core.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let mut config = support::unlimited_sandbox();
    // Recording every request costs a copy of each body; off unless LOAD_RECORDER asks.
    config.recorder.limit = env_or("LOAD_RECORDER", 0) as usize;
    let handle = server_rt
        .block_on(billing_bridge_sandbox::start(config, "127.0.0.1:0"))
        .expect("sandbox starts");
    let addr = handle.addr();
    let host = addr.to_string();

    let recurly_auth = base64::engine::general_purpose::STANDARD.encode("bench-key:");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let amplify_token = client_rt.block_on(setup(&handle.url()));
    let mail = r#"{"personalizations":[{"to":[{"email":"dev@consumer.example"}]}],"from":{"email":"billing@market.example"},"subject":"Welcome","content":[{"type":"text/plain","value":"hello"}]}"#;
    let scenarios = [
        Scenario {
            name: "GET /_sandbox/health",
            request: format!("GET /_sandbox/health HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            expect_status: &[200],
        },
        Scenario {
            name: "GET /recurly/accounts/code-unknown",
            request: format!(
                "GET /recurly/accounts/code-unknown HTTP/1.1\r\nHost: {host}\r\nAccept: application/vnd.recurly.v2021-02-25\r\nAuthorization: Basic {recurly_auth}\r\n\r\n"
            ),
            expect_status: &[404],
        },
        Scenario {
            name: "GET /amplify/.../productplans/silver",
            request: format!(
                "GET /amplify/apis/catalog/v1/productplans/silver HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\r\n",
                amplify_token.0
            ),
            expect_status: &[200],
        },
        Scenario {
            name: "POST /recurly/.../usage",
            request: format!(
                "POST /recurly/subscriptions/{}/add_ons/code-calls/usage HTTP/1.1\r\nHost: {host}\r\nAccept: application/vnd.recurly.v2021-02-25\r\nAuthorization: Basic {recurly_auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{USAGE}",
                amplify_token.1,
                USAGE.len()
            ),
            expect_status: &[201],
        },
        Scenario {
            name: "POST /sendgrid/v3/mail/send",
            request: format!(
                "POST /sendgrid/v3/mail/send HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer SG.bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{mail}",
                mail.len()
            ),
            // SendGrid's own limit is 10,000 requests/s: past it the emulator answers 429.
            expect_status: &[202, 429],
        },
    ];

    let recorder = env_or("LOAD_RECORDER", 0);
    println!(
        "sandbox load: {connections} keep-alive connections, {seconds} s per scenario, recorder {}",
        if recorder == 0 {
            "off".to_owned()
        } else {
            format!("on (last {recorder} requests)")
        }
    );
    client_rt.block_on(async {
        for scenario in &scenarios {
            run(addr, scenario, seconds, connections).await;
        }
    });
    server_rt.block_on(handle.stop());
}
