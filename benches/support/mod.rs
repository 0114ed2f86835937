//! What the load harnesses share: raw keep-alive HTTP/1.1 connections driven back to back for a
//! bounded time from one client thread, and the percentiles of what they measured.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes request number `seq` of connection `connection` into the buffer (cleared beforehand).
/// Requests that never change copy the same bytes; the intake bench writes a fresh event id.
pub type MakeRequest = Arc<dyn Fn(u64, u64, &mut Vec<u8>) + Send + Sync>;

/// The same complete HTTP/1.1 request, again and again.
pub fn fixed(request: String) -> MakeRequest {
    Arc::new(move |_, _, buf: &mut Vec<u8>| buf.extend_from_slice(request.as_bytes()))
}

/// A sandbox that measures nothing but the bridge: its own rate limits and recorder off, one
/// worker. (What the sandbox enforces is tested elsewhere; here it must not be the bottleneck.)
pub fn unlimited_sandbox() -> billing_bridge_sandbox::SandboxConfig {
    use billing_bridge_sandbox::{
        AmplifySettings, RecorderSettings, RecurlySettings, SandboxConfig,
    };
    SandboxConfig {
        recorder: RecorderSettings { limit: 0 },
        amplify: AmplifySettings {
            requests_per_minute: 0,
            ..AmplifySettings::default()
        },
        recurly: RecurlySettings {
            requests_per_minute: Some(0),
            ..RecurlySettings::default()
        },
        workers: Some(1),
        ..SandboxConfig::default()
    }
}

/// An Amplify access token from the sandbox's token endpoint, for a client acting as `client_id`.
pub async fn amplify_token(http: &reqwest::Client, sandbox: &str, client_id: &str) -> String {
    let answer: serde_json::Value = http
        .post(format!(
            "{sandbox}/auth/realms/Broker/protocol/openid-connect/token"
        ))
        .basic_auth(client_id, Some("bench-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token answer");
    answer["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `cargo bench` passes `--bench`; `cargo test --benches` runs a bench with no flag: keep that
/// run a short smoke pass.
pub fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Reads one response (head plus Content-Length body) and returns its status.
pub async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..head_end])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other("bad status line"))?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = head_end + 4 + length;
            while buf.len() < total {
                read_more(stream, buf).await?;
            }
            buf.drain(..total);
            return Ok(status);
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::Error::other("connection closed"));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// What one connection measured.
struct Part {
    latencies: Vec<u32>,
    unusual: u64,
    next_seq: u64,
}

/// One connection sending requests back to back until `deadline`, numbering them from `first`.
async fn drive(
    addr: SocketAddr,
    connection: u64,
    first: u64,
    make: MakeRequest,
    expect: &'static [u16],
    deadline: Instant,
) -> std::io::Result<Part> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut request = Vec::with_capacity(4 * 1024);
    let mut latencies = Vec::new();
    let mut unusual = 0u64;
    let mut seq = first;
    while Instant::now() < deadline {
        request.clear();
        make(connection, seq, &mut request);
        seq += 1;
        let started = Instant::now();
        stream.write_all(&request).await?;
        let status = read_response(&mut stream, &mut buf).await?;
        if !expect.contains(&status) {
            return Err(std::io::Error::other(format!(
                "expected one of {expect:?}, got {status}"
            )));
        }
        if status != expect[0] {
            unusual += 1;
        }
        latencies.push(started.elapsed().as_micros() as u32);
    }
    Ok(Part {
        latencies,
        unusual,
        next_seq: seq,
    })
}

/// The value at fraction `p` of sorted microseconds, in milliseconds.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

/// One scenario's figures.
#[derive(Default)]
pub struct Measured {
    pub requests: usize,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers with one of the accepted statuses other than the first.
    pub unusual: u64,
    /// Every latency, in µs, sorted.
    pub latencies: Vec<u32>,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// Adds another slice of the same scenario: requests and seconds add up, percentiles are
    /// taken over all latencies together.
    pub fn merge(&mut self, mut other: Measured) {
        self.requests += other.requests;
        self.seconds += other.seconds;
        self.unusual += other.unusual;
        self.latencies.append(&mut other.latencies);
        self.latencies.sort_unstable();
        self.p50_ms = percentile(&self.latencies, 0.50);
        self.p99_ms = percentile(&self.latencies, 0.99);
    }
}

/// A load scenario: `connections` keep-alive connections to `addr` for `seconds`, after a 0.3 s
/// warm-up on one connection. Request numbers of every connection start at
/// `first` and never repeat within the call (the warm-up takes the first ones of connection 0), so
/// `make` can turn them into distinct ids; a later call with a larger `first` continues them.
pub async fn run(
    addr: SocketAddr,
    name: &str,
    make: MakeRequest,
    expect: &'static [u16],
    seconds: f64,
    connections: u64,
) -> Measured {
    run_from(addr, name, make, expect, seconds, connections, 0).await
}

/// [`run`], numbering requests from `first` on every connection.
pub async fn run_from(
    addr: SocketAddr,
    name: &str,
    make: MakeRequest,
    expect: &'static [u16],
    seconds: f64,
    connections: u64,
    first: u64,
) -> Measured {
    // Warm up so connection set-up and first-touch allocations are not measured.
    let warm = Instant::now() + Duration::from_millis(300);
    let warmed = drive(addr, 0, first, make.clone(), expect, warm)
        .await
        .unwrap_or_else(|e| panic!("{name}: warm-up failed: {e}"));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let first = if c == 0 { warmed.next_seq } else { first };
            tokio::spawn(drive(addr, c, first, make.clone(), expect, deadline))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut unusual = 0;
    for task in tasks {
        let mut part = task
            .await
            .expect("load task")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        latencies.append(&mut part.latencies);
        unusual += part.unusual;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Measured {
        requests: latencies.len(),
        seconds: elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        unusual,
        latencies,
    }
}

/// A `redis-server` of a harness's own listening on the unix socket `dir/redis.sock` and on no TCP
/// port (`--port 0`), so no port is picked for it; `settings` are its persistence flags, its
/// files go in `dir`. Returns once it answers: the child and the socket.
pub fn spawn_redis(
    dir: &std::path::Path,
    settings: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    let socket = dir.join("redis.sock");
    let mut child = std::process::Command::new("redis-server")
        .args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .args(settings)
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return (child, socket);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server did not start");
}

/// The store's URL for a Redis on `socket`.
pub fn redis_url(socket: &std::path::Path) -> String {
    format!("redis+unix://{}", socket.display())
}

/// A harness's time limit: once `timeout` has passed without `done` set, `kill` stops what the
/// harness started and the process fails (exit 2), whatever the harness is waiting on.
pub fn watchdog(
    harness: &'static str,
    setting: &'static str,
    timeout: Duration,
    done: Arc<AtomicBool>,
    kill: impl FnOnce() + Send + 'static,
) {
    std::thread::spawn(move || {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if done.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "{harness}: over the {} s time limit ({setting}): killing the bridge and failing",
            timeout.as_secs()
        );
        kill();
        std::process::exit(2);
    });
}

/// A `VmRSS:`-style line of /proc/<pid>/status (`field` with its colon), in MB; 0 when the
/// process is gone.
pub fn status_mb(pid: impl std::fmt::Display, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb as f64 / 1024.0)
        .unwrap_or(0.0)
}

/// Bytes under a path (a file, or a directory walked recursively).
pub fn disk_bytes(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| disk_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// The secrets of a bridge [`write_push_config`] configures.
pub const ADMIN_TOKEN: &str = "bench-admin-token-51c2e8";
pub const INGEST_TOKEN: &str = "bench-ingest-token-7f3a9c";
pub const WEBHOOK_SECRET: &str = "Bearer bench-webhook-secret";

/// Writes the configuration of a `serve` that takes pushed transactions only (provisioning off),
/// with `sandbox` as every upstream: `reporting`, `ingest` and `store` are lines added to those
/// tables.
pub fn write_push_config(
    path: &std::path::Path,
    sandbox: &str,
    reporting: &str,
    ingest: &str,
    store: &str,
) {
    std::fs::write(
        path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
[webhook]
secret = "{WEBHOOK_SECRET}"
[amplify]
central_url = "{sandbox}/amplify"
auth_url = "{sandbox}/auth"
platform_url = "{sandbox}/platform"
client_id = "bridge"
client_secret = "bench-secret"
requests_per_minute = 6000
timeout = "30s"
[recurly]
base_url = "{sandbox}/recurly"
api_key = "recurly-bench-key"
site = "production"
requests_per_minute = 1000
timeout = "30s"
[provisioning]
plans = false
subscriptions = false
reconcile_every = "24h"
[reporting]
source = "push"
schedule = ""
{reporting}
[ingest]
token = "{INGEST_TOKEN}"
{ingest}
[store]
{store}
"#
        ),
    )
    .expect("bridge config");
}

/// The address a `serve` prints on its stdout (`billing-bridge: http://…`); the rest of its
/// stdout is drained by a thread of its own, so the process never blocks on a full pipe. `None`
/// when it ended without printing one.
pub fn serve_address(stdout: std::process::ChildStdout) -> Option<String> {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next()?.ok()?;
        if let Some(rest) = line.strip_prefix("billing-bridge: ") {
            break rest.split_whitespace().next()?.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Some(url)
}

/// POSTs `body` as JSON and answers the JSON answer (`null` when there is none); panics on an
/// answer that is no success (a bench's setup must not fail silently).
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let response = http.post(url).json(body).send().await.expect("post");
    let status = response.status();
    let text = response.text().await.expect("answer");
    assert!(
        status.is_success(),
        "{url}: {status} {}",
        &text[..text.len().min(500)]
    );
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// A bridge's `/metrics` text.
pub async fn metrics_text(http: &reqwest::Client, bridge: &str) -> String {
    http.get(format!("{bridge}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}
