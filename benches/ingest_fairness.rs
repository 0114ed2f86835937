//! Push ingestion under a flood of big bodies (issue 13, docs/ingest.md "Limits"): the real
//! `billing-bridge serve` binary (a child process, so its peak memory is its own) with the
//! default `[ingest]` limits, and `FAIRNESS_SENDERS` (32) senders posting gzip bodies of about
//! `FAIRNESS_BODY_BYTES` (16 MB) back to back over loopback for `FAIRNESS_SECONDS` (30). A
//! sender answered 503 waits what `Retry-After` says (with jitter) and sends again. Meanwhile a
//! prober asks `/healthz` every 10 ms and posts a webhook every 50 ms, each on a fresh
//! connection.
//!
//! Each body is NDJSON of valid `transactionSummary` events (accepted the first time, duplicates
//! after), every event carrying 600 random hex characters and 1,500 blanks, so 16 MB zipped
//! unzips to about 115 MB: near both `max_body_bytes` and `max_decoded_bytes`.
//!
//! Printed: the batches answered per status, `/healthz` and webhook latency p50/p99/max, the
//! server's RSS before the flood and its peak (VmHWM from /proc) and the bound it must stay
//! under: baseline + `max_inflight_bytes` x 1.25 (the budget counts bytes held; the allocator
//! keeps some freed room, and each connection and thread has its own buffers). Targets, checked
//! in a full run (exit 1 when missed): peak RSS under that bound, `/healthz` p99 under 50 ms.
//!
//! `cargo bench --bench ingest_fairness`. Env: `FAIRNESS_SENDERS`, `FAIRNESS_BODY_BYTES`,
//! `FAIRNESS_BODIES` (distinct bodies, 4), `FAIRNESS_SECONDS`, `FAIRNESS_TIMEOUT_S` (300: past it
//! the bridge is killed and the run fails), `FAIRNESS_BRIDGE_BIN` (another build to drive).
//! Under `cargo test --benches` a smoke pass: 4 senders of 400 kB bodies for 3 s.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{INGEST_TOKEN, WEBHOOK_SECRET, benching, env_or, percentile, status_mb};

/// The default `[ingest] max_inflight_bytes`, which the bound is derived from; the bridge runs
/// with the default, and the harness checks the default file says the same.
const MAX_INFLIGHT_BYTES: u64 = 268_435_456;
const MAX_BODY_BYTES: usize = 16_777_216;
/// Events of one body: under the default `max_events` (50,000).
const MAX_EVENTS: usize = 49_000;
/// Unzipped bytes of one body: under the default `max_decoded_bytes` (128 MiB).
const MAX_DECODED: usize = 125_000_000;
const NOTE_HEX: usize = 600;
const BLANKS: usize = 1_500;
const HEALTHZ_P99_TARGET_MS: f64 = 50.0;

struct Settings {
    full: bool,
    senders: u64,
    body_bytes: usize,
    bodies: u64,
    seconds: u64,
    timeout: Duration,
}

fn settings() -> Settings {
    let full = benching();
    Settings {
        full,
        senders: env_or("FAIRNESS_SENDERS", if full { 32 } else { 4 }).max(1),
        body_bytes: env_or(
            "FAIRNESS_BODY_BYTES",
            if full { 16_000_000 } else { 400_000 },
        ) as usize,
        bodies: env_or("FAIRNESS_BODIES", if full { 4 } else { 1 }).max(1),
        seconds: env_or("FAIRNESS_SECONDS", if full { 30 } else { 3 }).max(1),
        timeout: Duration::from_secs(env_or("FAIRNESS_TIMEOUT_S", if full { 300 } else { 120 })),
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One gzip body of about `target` bytes: (body, events, unzipped bytes).
fn make_body(index: u64, target: usize, at: i64) -> (Vec<u8>, usize, usize) {
    let mut zip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut line = Vec::with_capacity(4096);
    let (mut events, mut decoded) = (0usize, 0usize);
    let mut h = splitmix(index ^ 0xFA1E);
    // The encoder holds some compressed bytes it has not written out yet.
    let margin = (target / 8).min(256 * 1024);
    while zip.get_ref().len() + margin < target && events < MAX_EVENTS {
        line.clear();
        let _ = write!(
            line,
            r#"{{"timestamp":{at},"transactionId":"fair-{index}-{events}","type":"transactionSummary","transactionSummary":{{"status":"Success","duration":12,"proxy":{{"id":"remoteApiId_weather","name":"weather"}},"consumerDetails":{{"subscription":{{"id":"sub-{}","name":"s"}}}},"assetResource":{{"name":"api/resource-1"}},"note":""#,
            events % 50
        );
        for _ in 0..NOTE_HEX / 16 {
            h = splitmix(h);
            let _ = write!(line, "{h:016x}");
        }
        line.extend_from_slice(b"\"}}");
        line.resize(line.len() + BLANKS, b' ');
        line.push(b'\n');
        if decoded + line.len() > MAX_DECODED {
            break;
        }
        zip.write_all(&line).unwrap();
        decoded += line.len();
        events += 1;
    }
    let body = zip.finish().unwrap();
    assert!(
        body.len() <= MAX_BODY_BYTES,
        "a body of {} bytes",
        body.len()
    );
    (body, events, decoded)
}

// ---------------------------------------------------------------------------------------------
// The bridge, killed on every way out.

#[derive(Default)]
struct BridgeProcess(Mutex<Option<Child>>);

impl BridgeProcess {
    fn kill(&self) {
        if let Some(mut child) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct KillOnDrop(Arc<BridgeProcess>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// Starts `serve` with `config`; its pid and base URL (from the address line it prints).
fn start_bridge(
    process: &BridgeProcess,
    config: &std::path::Path,
    log: &std::path::Path,
) -> (u32, String) {
    let bin = std::env::var("FAIRNESS_BRIDGE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_billing-bridge").to_owned());
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("bridge log file"))
        .spawn()
        .expect("billing-bridge serve starts");
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    *process.0.lock().unwrap() = Some(child);
    let Some(url) = support::serve_address(stdout) else {
        panic!(
            "billing-bridge serve printed no address; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    };
    (pid, url)
}

// ---------------------------------------------------------------------------------------------
// Load.

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    over_budget: AtomicU64,
    other: AtomicU64,
    /// Connections closed before an answer came (a refusal sent before the body was read may
    /// reach the sender as a reset).
    resets: AtomicU64,
    ok_events: AtomicU64,
    last_other: Mutex<String>,
}

async fn sender(
    http: reqwest::Client,
    url: String,
    bodies: Arc<Vec<&'static [u8]>>,
    n: u64,
    deadline: Instant,
    tally: Arc<Tally>,
    events: Arc<Vec<usize>>,
) {
    let mut k = n;
    while Instant::now() < deadline {
        let which = (k % bodies.len() as u64) as usize;
        k += 1;
        let wait = match http
            .post(&url)
            .header("Authorization", format!("Bearer {INGEST_TOKEN}"))
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "application/x-ndjson")
            .body(bodies[which])
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<f64>().ok());
                let text = response.text().await.unwrap_or_default();
                match status {
                    200 => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        tally
                            .ok_events
                            .fetch_add(events[which] as u64, Ordering::Relaxed);
                        None
                    }
                    503 => {
                        tally.over_budget.fetch_add(1, Ordering::Relaxed);
                        Some(retry_after.unwrap_or(1.0))
                    }
                    _ => {
                        tally.other.fetch_add(1, Ordering::Relaxed);
                        *tally.last_other.lock().unwrap() = format!("{status} {text}");
                        Some(1.0)
                    }
                }
            }
            Err(_) => {
                tally.resets.fetch_add(1, Ordering::Relaxed);
                Some(1.0)
            }
        };
        if let Some(seconds) = wait {
            // 0.5 to 1.5 times what was asked, so the senders do not come back all at once.
            let jitter = 0.5 + (splitmix(k ^ (n << 32)) % 1000) as f64 / 1000.0;
            tokio::time::sleep(Duration::from_secs_f64(seconds * jitter)).await;
        }
    }
}

/// Latencies (µs) of `request` sent every `every` until `stop`; statuses other than 2xx/4xx
/// counted as failures.
async fn probe(
    every: Duration,
    stop: Arc<AtomicBool>,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> (Vec<u32>, u64) {
    let (mut latencies, mut failures) = (Vec::new(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match request().send().await {
            Ok(r) if r.status().as_u16() < 500 => {
                let _ = r.bytes().await;
                latencies.push(started.elapsed().as_micros() as u32);
            }
            _ => failures += 1,
        }
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
    latencies.sort_unstable();
    (latencies, failures)
}

fn line(name: &str, sorted: &[u32], failures: u64) -> String {
    format!(
        "{name}: {} answered, {failures} failed; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sorted.len(),
        percentile(sorted, 0.50),
        percentile(sorted, 0.99),
        sorted.last().copied().unwrap_or(0) as f64 / 1000.0
    )
}

fn main() {
    let s = settings();
    let process = Arc::new(BridgeProcess::default());
    let _guard = KillOnDrop(process.clone());
    let finished = Arc::new(AtomicBool::new(false));
    {
        let process = process.clone();
        support::watchdog(
            "ingest_fairness",
            "FAIRNESS_TIMEOUT_S",
            s.timeout,
            finished.clone(),
            move || process.kill(),
        );
    }
    let dir = std::env::temp_dir().join(format!("bb-ingest-fairness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let passed = runtime.block_on(run(&s, &process, &dir));
    finished.store(true, Ordering::Relaxed);
    process.kill();
    let _ = std::fs::remove_dir_all(&dir);
    if !passed {
        std::process::exit(1);
    }
}

async fn run(s: &Settings, process: &BridgeProcess, dir: &std::path::Path) -> bool {
    let defaults = billing_bridge_config::BridgeConfig::from_toml("").expect("defaults");
    assert_eq!(
        defaults.ingest.max_inflight_bytes as u64, MAX_INFLIGHT_BYTES,
        "the bound is derived from the default max_inflight_bytes"
    );
    let sandbox = billing_bridge_sandbox::start(support::unlimited_sandbox(), "127.0.0.1:0")
        .await
        .expect("sandbox");
    let sb = sandbox.url();

    // The bodies, made on every core.
    let at = chrono::Utc::now().timestamp_millis() - 60_000;
    let making = Instant::now();
    let target = s.body_bytes;
    let made: Vec<(Vec<u8>, usize, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..s.bodies)
            .map(|i| scope.spawn(move || make_body(i, target, at)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let events: Arc<Vec<usize>> = Arc::new(made.iter().map(|m| m.1).collect());
    println!(
        "bodies: {} distinct, {:.1} MB zipped, {} events, {:.1} MB unzipped each (made in {:.1} s)",
        made.len(),
        made[0].0.len() as f64 / 1e6,
        made[0].1,
        made[0].2 as f64 / 1e6,
        making.elapsed().as_secs_f64()
    );
    let bodies: Arc<Vec<&'static [u8]>> = Arc::new(
        made.into_iter()
            .map(|(body, _, _)| &*Box::leak(body.into_boxed_slice()))
            .collect(),
    );

    let config = dir.join("bridge.toml");
    support::write_push_config(&config, &sb, "", "", "state_file = \"\"");
    let log = dir.join("bridge.log");
    let (pid, url) = start_bridge(process, &config, &log);
    let probe_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Started: its baseline once it answers.
    for _ in 0..500 {
        if probe_client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let baseline = status_mb(pid, "VmRSS:");
    let bound = baseline + MAX_INFLIGHT_BYTES as f64 * 1.25 / (1024.0 * 1024.0);
    println!(
        "bridge: pid {pid}, RSS {baseline:.1} MB at rest; {} senders for {} s",
        s.senders, s.seconds
    );

    let stop = Arc::new(AtomicBool::new(false));
    let healthz = {
        let (client, url, stop) = (probe_client.clone(), url.clone(), stop.clone());
        tokio::spawn(async move {
            probe(Duration::from_millis(10), stop, || {
                client.get(format!("{url}/healthz"))
            })
            .await
        })
    };
    let webhooks = {
        let (client, url, stop) = (probe_client.clone(), url.clone(), stop.clone());
        let n = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            probe(Duration::from_millis(50), stop, move || {
                let id = n.fetch_add(1, Ordering::Relaxed);
                client
                    .post(format!("{url}/webhooks/amplify"))
                    .header("Authorization", WEBHOOK_SECRET)
                    .header("Content-Type", "application/json")
                    .body(format!(
                        r#"{{"id":"probe-{id}","time":"2026-01-01T00:00:00Z","type":"ResourceUpdated","payload":{{"kind":"Environment","name":"env-{id}"}}}}"#
                    ))
            })
            .await
        })
    };
    let tally = Arc::new(Tally::default());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(s.senders as usize)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(s.seconds);
    let senders: Vec<_> = (0..s.senders)
        .map(|n| {
            tokio::spawn(sender(
                http.clone(),
                format!("{url}/ingest/transactions"),
                bodies.clone(),
                n,
                deadline,
                tally.clone(),
                events.clone(),
            ))
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender");
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (healthz, healthz_failed) = healthz.await.unwrap();
    let (webhooks, webhooks_failed) = webhooks.await.unwrap();
    let peak = status_mb(pid, "VmHWM:");
    let after = status_mb(pid, "VmRSS:");
    let metrics = support::metrics_text(&probe_client, &url).await;
    let inflight_after: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("billing_bridge_ingest_inflight_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0);
    sandbox.stop().await;

    let ok = tally.ok.load(Ordering::Relaxed);
    let zipped_mb =
        bodies.iter().map(|b| b.len()).sum::<usize>() as f64 / bodies.len() as f64 / 1e6;
    println!(
        "batches in {elapsed:.1} s: {ok} taken (200, {:.0} MB zipped, {} events), {} over budget (503), {} reset before an answer, {} other{}",
        ok as f64 * zipped_mb,
        tally.ok_events.load(Ordering::Relaxed),
        tally.over_budget.load(Ordering::Relaxed),
        tally.resets.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        match tally.last_other.lock().unwrap().as_str() {
            "" => String::new(),
            last => format!(" (last: {last})"),
        }
    );
    println!("{}", line("/healthz", &healthz, healthz_failed));
    println!("{}", line("webhook", &webhooks, webhooks_failed));
    println!(
        "server RSS: {baseline:.1} MB at rest, peak (VmHWM) {peak:.1} MB, {after:.1} MB after; bound {bound:.1} MB (baseline + 1.25 x max_inflight_bytes); in-flight bytes after: {inflight_after}"
    );

    let healthz_p99 = percentile(&healthz, 0.99);
    let mut passed = true;
    let mut check = |what: String, ok: bool| {
        println!("{} {what}", if ok { "PASS" } else { "FAIL" });
        passed &= ok;
    };
    // Sanity, in every run.
    check(
        format!("{ok} batches taken"),
        ok > 0 && tally.ok_events.load(Ordering::Relaxed) > 0,
    );
    check(
        "no answer but 200 or 503".into(),
        tally.other.load(Ordering::Relaxed) == 0,
    );
    check(
        "every probe answered".into(),
        healthz_failed == 0 && webhooks_failed == 0 && !healthz.is_empty(),
    );
    check(
        format!("the budget given back ({inflight_after} bytes held after)"),
        inflight_after == 0.0,
    );
    if s.full {
        check(
            format!("peak RSS {peak:.1} MB under {bound:.1} MB"),
            peak < bound,
        );
        check(
            format!("/healthz p99 {healthz_p99:.1} ms under {HEALTHZ_P99_TARGET_MS} ms"),
            healthz_p99 < HEALTHZ_P99_TARGET_MS,
        );
    }
    passed
}
