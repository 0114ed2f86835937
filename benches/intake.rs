//! Webhook intake throughput (issue 3): the real bridge server and pipeline against a bare
//! actix-web handler that only answers 202, in one run, with the same client, connection count
//! and request bytes. Every request to the bridge carries the secret and a distinct event id of
//! a pending subscription approval, so each one goes the whole intake path: secret, body, envelope,
//! interest, dedupe claim, enqueue, done mark, 202.
//!
//! `cargo bench --bench intake` (env `LOAD_SECONDS`, `LOAD_ROUNDS`, `LOAD_CONNECTIONS` adjust the run:
//! each scenario gets `LOAD_SECONDS` in all, in `LOAD_ROUNDS` slices taken in turn).
//!
//! `LOAD_STORE=redis` puts the bridge on the Redis store: the bench starts its own
//! `redis-server` on a unix socket (`appendonly yes`, `appendfsync` from
//! `LOAD_REDIS_APPENDFSYNC`, default `always`, as the deployment guide asks), and afterwards runs
//! `redis-benchmark` against the same server for the commands one new webhook costs (the
//! processing mark, the enqueue script, the done mark), to print the ceiling Redis itself puts on
//! intake next to what the bridge reached.

mod support;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use billing_bridge_pipeline::Bridge;
use billing_bridge_pipeline::metrics::{WebhookLabels, WebhookOutcome};
use billing_bridge_server::{Application, Options, WEBHOOK_PATH};
use serde_json::json;
use support::{MakeRequest, Measured, env_or};

const SECRET: &str = "Bearer bench-webhook-secret";
/// Stands for the event id in the body template; every request writes its own over it.
const ID_SLOT: &str = "00000000-0000-4000-8000-000000000000";

/// A pending subscription approval as Amplify posts it (reference §4.3, the captured event, with
/// the references, attributes and marketplace blocks a real one carries): about 1.5 KB.
fn envelope() -> String {
    json!({
        "id": ID_SLOT,
        "time": "2026-11-21T16:26:41.703+0000",
        "version": "v1",
        "product": "AmplifyCentral",
        "correlationId": "e5316ff5-b8bb-430c-82f3-ed7124597f4a",
        "organization": {"id": "100000142"},
        "type": "SubResourceUpdated",
        "payload": {
            "group": "catalog", "apiVersion": "v1alpha1", "kind": "Subscription",
            "name": "finance-starter-silver", "title": "Finance Starter - Silver",
            "metadata": {
                "id": "8a2e8e598ba739cc018bcea8023e2aa4",
                "resourceVersion": "2",
                "references": [
                    {"id": "8a2e8e598ba739cc018bcea7f2b12a11", "kind": "Product", "name": "finance-starter", "type": "soft", "group": "catalog", "selfLink": "/catalog/v1alpha1/products/finance-starter"},
                    {"id": "8a2e8e598ba739cc018bcea7f3c22a12", "kind": "ProductPlan", "name": "silver", "type": "soft", "group": "catalog", "selfLink": "/catalog/v1alpha1/productplans/silver"}
                ],
                "selfLink": "/catalog/v1alpha1/subscriptions/finance-starter-silver"
            },
            "attributes": {"marketplaceId": "082a27eb-6e2f-4a5b-9c3d-2f1e0d9c8b7a", "tenantId": "100000142", "consumerTenantId": "650130132060094",
                           "ownerId": "e33e2081-9025-4939-9741-c1dddae11017", "userId": "281768f2-3b4c-4d5e-8f90-a1b2c3d4e5f6"},
            "spec": {"plan": {"name": "silver"}, "product": "finance-starter"},
            "marketplace": {"name": "082a27eb-6e2f-4a5b-9c3d-2f1e0d9c8b7a",
                            "resource": {"owner": {"id": "e33e2081-9025-4939-9741-c1dddae11017", "type": "team", "organization": {"id": "650130132060094"},
                                                   "user": {"id": "281768f2-3b4c-4d5e-8f90-a1b2c3d4e5f6"}}}},
            "approval": {"state": "pending"},
            "state": {"name": "active"},
            "status": {"level": "Success"},
            "finalizers": [],
            "tags": []
        },
        "metadata": {"subresource": "approval"}
    })
    .to_string()
}

/// The webhook request with the id slot at `id_at`; `event_id` maps (connection, request number)
/// to the id sent, as (group, number) so ids never repeat across scenarios.
fn webhook_requests(
    host: &str,
    scenario: u16,
    event_id: fn(u64, u64) -> (u64, u64),
) -> (MakeRequest, usize) {
    let body = envelope();
    let request = format!(
        "POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let id_at = request.find(ID_SLOT).expect("the id slot");
    let make: MakeRequest = Arc::new(move |connection, seq, buf: &mut Vec<u8>| {
        use std::io::Write;
        let (group, number) = event_id(connection, seq);
        buf.extend_from_slice(&request.as_bytes()[..id_at]);
        // Fixed width, so Content-Length holds: 8-4-4-4-12 hex digits like a UUID.
        write!(buf, "{group:08x}-{scenario:04x}-4000-8000-{number:012x}").expect("vec write");
        buf.extend_from_slice(&request.as_bytes()[id_at + ID_SLOT.len()..]);
    });
    (make, body.len())
}

/// Every request a new event.
fn distinct(connection: u64, seq: u64) -> (u64, u64) {
    (connection, seq)
}

/// Each event sent ten times in a row on its connection: one acceptance, nine duplicates.
fn resent_ten_times(connection: u64, seq: u64) -> (u64, u64) {
    (connection, seq / 10)
}

/// What the server thread hands to the client.
struct Servers {
    bare: std::net::SocketAddr,
    bridge: std::net::SocketAddr,
    state: Arc<Bridge>,
    stop: tokio::sync::oneshot::Sender<()>,
}

fn bridge_config(
    sandbox: &str,
    queue_capacity: u64,
    redis: Option<&str>,
) -> billing_bridge_config::BridgeConfig {
    let store = match redis {
        Some(url) => format!("redis_url = \"{url}\""),
        None => String::new(),
    };
    let toml = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        queue_capacity = {queue_capacity}
        [webhook]
        secret = "{SECRET}"
        [amplify]
        central_url = "{sandbox}/amplify"
        auth_url = "{sandbox}/auth"
        platform_url = "{sandbox}/platform"
        client_id = "bridge"
        client_secret = "bridge-secret"
        # The production limit: the router drains the queue at Amplify's pace, as in production.
        requests_per_minute = 25
        timeout = "5s"
        [recurly]
        base_url = "{sandbox}/recurly"
        api_key = "recurly-bench-key"
        site = "production"
        timeout = "5s"
        [provisioning]
        marketplace_url = "https://marketplace.example"
        [store]
        state_file = ""
        {store}
        [reporting]
        schedule = ""
        "#
    );
    billing_bridge_config::BridgeConfig::from_toml_layers(&[&toml]).expect("bench bridge config")
}

/// Sandbox, bridge (pipeline and server) and the bare server, in one actix system on this thread,
/// each HTTP server with one worker.
fn serve(queue_capacity: u64, redis: Option<String>, ready: mpsc::Sender<Servers>) {
    actix_rt::System::new().block_on(async move {
        let sandbox = billing_bridge_sandbox::start(support::unlimited_sandbox(), "127.0.0.1:0")
            .await
            .expect("sandbox starts");
        let retry = billing_bridge_upstream::RetryPolicy::new(
            3,
            Duration::from_millis(5),
            Duration::from_millis(200),
        );
        let app = Application::start(
            bridge_config(&sandbox.url(), queue_capacity, redis.as_deref()),
            std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener"),
            Options {
                retry,
                workers: Some(1),
            },
        )
        .expect("the bridge starts");
        let state = app.bridge().clone();
        let bare = HttpServer::new(|| {
            App::new().route(
                WEBHOOK_PATH,
                // Takes the body, as any handler must for the connection to be kept alive.
                web::post().to(|_body: web::Bytes| async { HttpResponse::Accepted().finish() }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bare server binds");
        let bare_addr = bare.addrs()[0];
        let bare = bare.run();
        let bare_handle = bare.handle();
        actix_rt::spawn(bare);

        let (stop, stopped) = tokio::sync::oneshot::channel();
        ready
            .send(Servers {
                bare: bare_addr,
                bridge: app.addr(),
                state,
                stop,
            })
            .expect("client waits");
        let _ = stopped.await;
        bare_handle.stop(false).await;
        app.stop(false).await;
        sandbox.stop().await;
    });
}

fn webhooks(state: &Bridge, outcome: WebhookOutcome) -> u64 {
    state
        .metrics
        .webhooks
        .get_or_create(&WebhookLabels { outcome })
        .get()
}

fn line(name: &str, m: &Measured) {
    println!(
        "{name:<40} {:>9} requests in {:>5.2} s = {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        m.requests,
        m.seconds,
        m.per_second(),
        m.p50_ms,
        m.p99_ms,
    );
}

/// Request numbers each round starts from, so ids never repeat across rounds.
const ROUND_STRIDE: u64 = 100_000_000;

fn main() {
    // LOAD_LOG=1: the log subscriber `serve` installs (text, info), writing nowhere, so the
    // webhook's span and log lines are paid for as in production.
    if std::env::var("LOAD_LOG").is_ok_and(|v| v == "1") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .init();
    }
    let seconds = env_or("LOAD_SECONDS", if support::benching() { 6 } else { 1 });
    let rounds = env_or("LOAD_ROUNDS", if support::benching() { 6 } else { 1 }).max(1);
    let connections = env_or("LOAD_CONNECTIONS", 32);
    // Room for every accepted event of the run: the router drains it at Amplify's 25/minute.
    let queue_capacity = env_or("LOAD_QUEUE", 1_000_000);

    let redis = (std::env::var("LOAD_STORE").as_deref() == Ok("redis")).then(redis::Server::start);
    let redis_url = redis.as_ref().map(|r| r.url());
    let (ready, servers) = mpsc::channel();
    let server_thread = std::thread::spawn(move || serve(queue_capacity, redis_url, ready));
    let servers = servers.recv().expect("servers start");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    let (bare_requests, body_len) = webhook_requests(&servers.bare.to_string(), 0, distinct);
    let (bridge_requests, _) = webhook_requests(&servers.bridge.to_string(), 1, distinct);
    let (resent_requests, _) = webhook_requests(&servers.bridge.to_string(), 2, resent_ten_times);
    let rounds_text = if rounds == 1 {
        "1 round".to_owned()
    } else {
        format!("{rounds} alternating rounds")
    };
    println!(
        "webhook intake: {connections} keep-alive connections, {seconds} s per scenario in {rounds_text}, {body_len}-byte envelope, one server worker"
    );
    let state = &servers.state;
    let slice = seconds as f64 / rounds as f64;
    client_rt.block_on(async {
        let (mut bare, mut bridge, mut resent) = Default::default();
        let (mut accepted, mut duplicates) = (0, 0);
        // Bare and bridge take turns, so load from elsewhere on the machine falls on both alike.
        for round in 0..rounds {
            let first = round * ROUND_STRIDE;
            let run = |addr, name, make, seconds| {
                support::run_from(addr, name, make, &[202], seconds, connections, first)
            };
            Measured::merge(&mut bare, run(servers.bare, "bare", bare_requests.clone(), slice).await);

            let before = webhooks(state, WebhookOutcome::Accepted);
            let measured = run(servers.bridge, "bridge", bridge_requests.clone(), slice).await;
            let now = webhooks(state, WebhookOutcome::Accepted) - before;
            // The warm-up's events are accepted too; every measured one must have been.
            assert!(
                now >= measured.requests as u64,
                "only {now} of {} requests were accepted and queued",
                measured.requests
            );
            accepted += now;
            Measured::merge(&mut bridge, measured);

            let before = webhooks(state, WebhookOutcome::Duplicate);
            let measured = run(servers.bridge, "resent", resent_requests.clone(), slice).await;
            duplicates += webhooks(state, WebhookOutcome::Duplicate) - before;
            Measured::merge(&mut resent, measured);
        }
        line("bare actix-web handler (202 only)", &bare);
        line("bridge intake, every event new", &bridge);
        line("bridge intake, each event sent 10 times", &resent);
        println!(
            "ratio bridge/bare: {:.2}   events queued: {accepted}   duplicates answered: {duplicates}   queue depth at end: {}",
            bridge.per_second() / bare.per_second(),
            state.store.queue_depth().await.unwrap_or(0),
        );
    });
    servers.stop.send(()).expect("server thread waits");
    server_thread.join().expect("server thread");
    if let Some(redis) = &redis {
        redis.ceiling(connections);
    }
}

/// A `redis-server` of the bench's own, and `redis-benchmark` against it.
mod redis {
    use std::process::{Child, Command};

    pub struct Server {
        child: Child,
        socket: std::path::PathBuf,
        dir: std::path::PathBuf,
    }

    impl Server {
        pub fn start() -> Server {
            let dir = std::env::temp_dir().join(format!("bb-intake-redis-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let fsync = std::env::var("LOAD_REDIS_APPENDFSYNC").unwrap_or_else(|_| "always".into());
            let (child, socket) = crate::support::spawn_redis(
                &dir,
                &["--save", "", "--appendonly", "yes", "--appendfsync", &fsync],
            );
            println!(
                "redis store: redis-server on {}, appendfsync {fsync}",
                socket.display()
            );
            Server { child, socket, dir }
        }

        pub fn url(&self) -> String {
            crate::support::redis_url(&self.socket)
        }

        fn cli(&self, args: &[&str]) -> String {
            let out = Command::new("redis-cli")
                .arg("-s")
                .arg(&self.socket)
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }

        /// requests/s `redis-benchmark` reaches for one command.
        fn bench(&self, connections: u64, command: &[&str]) -> f64 {
            let out = Command::new("redis-benchmark")
                .arg("-s")
                .arg(&self.socket)
                .args([
                    "-c",
                    &connections.to_string(),
                    "-n",
                    "100000",
                    "-r",
                    "1000000000",
                    "-q",
                ])
                .args(command)
                .output()
                .expect("redis-benchmark");
            let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
            text.lines()
                .rev()
                .find_map(|l| {
                    let (_, rest) = l.split_once(": ")?;
                    rest.split_whitespace().next()?.parse::<f64>().ok()
                })
                .unwrap_or_else(|| panic!("redis-benchmark printed: {text}"))
        }

        /// The commands one new webhook costs, each measured alone, and the webhooks/s they
        /// allow together (one after another on one Redis).
        pub fn ceiling(&self, connections: u64) {
            let enqueue = "if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end redis.call('XADD', KEYS[1], '*', 'e', ARGV[2]) return 1";
            let sha = self.cli(&["SCRIPT", "LOAD", enqueue]);
            let event = r#"{"event_id":"bench-__rand_int__","kind":"Subscription","name":"finance-starter-silver","resource_id":"8a2e8e598ba739cc018bcea8023e2aa4","self_link":"/catalog/v1alpha1/subscriptions/finance-starter-silver","deleted":false,"correlation_id":"e5316ff5-b8bb-430c-82f3-ed7124597f4a","billing_id":null,"attempt":0,"trace_parent":null}"#;
            let claim = self.bench(
                connections,
                &[
                    "SET",
                    "billing-bridge:mark:b-__rand_int__",
                    "processing",
                    "NX",
                    "PX",
                    "30000",
                ],
            );
            let queue = self.bench(
                connections,
                &[
                    "EVALSHA",
                    &sha,
                    "1",
                    "billing-bridge:bench-queue",
                    "100000000",
                    event,
                ],
            );
            let done = self.bench(
                connections,
                &[
                    "SET",
                    "billing-bridge:mark:b-__rand_int__",
                    "done",
                    "PX",
                    "86400000",
                ],
            );
            let ceiling = 1.0 / (1.0 / claim + 1.0 / queue + 1.0 / done);
            println!(
                "redis-benchmark, same server, {connections} connections: SET NX PX {claim:.0}/s, enqueue script {queue:.0}/s, SET PX {done:.0}/s => ceiling {ceiling:.0} webhooks/s"
            );
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
