//! Push ingestion sustained (issue 13, docs/ingest.md "Retention and sizing"): the real
//! `billing-bridge serve` (a child process, so its memory is its own) with the embedded store and
//! a state file, fed `SOAK_RATE` events a second stamped "now" over loopback for `SOAK_SECONDS`,
//! one-minute windows, a short horizon, and a reporting run after every window (which prunes what
//! can no longer change a bill). Every `SOAK_SAMPLE_S` it prints the bridge's RSS and what the
//! store holds on disk; at the end it checks both reached a plateau: the largest value of the
//! last third of the run is no more than `SOAK_PLATEAU_PCT`% above that of the middle third.
//! With a one-minute window, a two-minute horizon and 30 s of skew, a generation of ids lasts
//! 150 s, so the plateau shows after about three generations (the default run is 15 minutes).
//!
//! `cargo bench --bench ingest_soak`. Env: `SOAK_RATE` (default 5,000 events/s), `SOAK_SECONDS`
//! (900), `SOAK_BATCH` (1,000 events per request), `SOAK_SAMPLE_S` (15), `SOAK_PLATEAU_PCT`
//! (25), `SOAK_DIR` (where the state file goes; default the temp dir), `SOAK_STORE=redis` (a
//! `redis-server` of the harness's own on a unix socket, persistence off, whose RSS is then sampled
//! instead of the disk). Under
//! `cargo test --benches` it runs a 12-second smoke pass at 1,000 events/s and checks no
//! plateau.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{ADMIN_TOKEN, INGEST_TOKEN, benching, disk_bytes, env_or, status_mb};

const MINUTE_MS: i64 = 60_000;

/// The bridge process (and the harness's redis-server) and the temporary directory: killed and
/// removed however the run ends.
struct Bridge {
    child: Child,
    redis: Option<Child>,
    url: String,
    pid: String,
    dir: PathBuf,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.redis.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` on a unix socket in `dir`, nothing persisted (only its memory is measured);
/// the child and its URL.
fn start_redis(dir: &Path) -> (Child, String) {
    let (child, socket) = support::spawn_redis(dir, &["--save", "", "--appendonly", "no"]);
    (child, support::redis_url(&socket))
}

fn rfc3339(ms: i64) -> String {
    billing_bridge_pipeline::usage::rfc3339(ms)
}

fn start_bridge(dir: &Path, sandbox: &str, start_ms: i64, redis: bool) -> Bridge {
    let state = dir.join("state");
    let (redis, store) = if redis {
        let (child, url) = start_redis(dir);
        (Some(child), format!("redis_url = \"{url}\""))
    } else {
        (None, format!("state_file = \"{}\"", state.display()))
    };
    let config = dir.join("bridge.toml");
    support::write_push_config(
        &config,
        sandbox,
        &format!(
            "window = \"1m\"\ndelay = \"1s\"\nstart_at = \"{}\"",
            rfc3339(start_ms)
        ),
        "horizon = \"2m\"\nfuture_skew = \"30s\"",
        &store,
    );
    let log = std::fs::File::create(dir.join("bridge.log")).expect("bridge log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_billing-bridge"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("billing-bridge serve starts");
    let pid = child.id().to_string();
    let Some(url) = support::serve_address(child.stdout.take().unwrap()) else {
        let _ = child.kill();
        panic!(
            "billing-bridge serve printed no address: {}",
            std::fs::read_to_string(dir.join("bridge.log")).unwrap_or_default()
        )
    };
    Bridge {
        child,
        redis,
        url,
        pid,
        dir: dir.to_owned(),
    }
}

/// A batch of `n` events numbered from `first`, stamped `now_ms`, over 200 subscriptions and two
/// resources (400 groups a window), as NDJSON.
fn batch(first: u64, n: u64, now_ms: i64) -> Vec<u8> {
    let mut body = Vec::with_capacity(n as usize * 330);
    for u in first..first + n {
        let _ = writeln!(
            body,
            r#"{{"timestamp":{now_ms},"transactionId":"soak-{u:012x}-{:08x}","type":"transactionSummary","transactionSummary":{{"status":"Success","statusDetail":"200","duration":12,"quota":{{"id":"quota-{}"}},"assetResource":{{"name":"api/resource-{}"}},"consumerDetails":{{"subscription":{{"id":"subscription-{:04}","name":"s"}}}}}}}}"#,
            u.wrapping_mul(0x9E37_79B9) as u32,
            u % 2,
            u % 2,
            (u / 2) % 200,
        );
    }
    body
}

struct Sample {
    at_s: f64,
    sent: u64,
    rss_mb: f64,
    disk_mb: f64,
}

fn main() {
    let full = benching();
    let rate = env_or("SOAK_RATE", if full { 5_000 } else { 1_000 }).max(1);
    let seconds = env_or("SOAK_SECONDS", if full { 900 } else { 12 });
    let batch_n = env_or("SOAK_BATCH", 1_000).max(1);
    let sample_s = env_or("SOAK_SAMPLE_S", if full { 15 } else { 3 }).max(1);
    let plateau_pct = env_or("SOAK_PLATEAU_PCT", 25) as f64;
    let on_redis = std::env::var("SOAK_STORE").as_deref() == Ok("redis");
    let parent = std::env::var_os("SOAK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("bb-ingest-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("soak dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let sandbox = billing_bridge_sandbox::start(support::unlimited_sandbox(), "127.0.0.1:0")
            .await
            .expect("sandbox");
        let now = chrono::Utc::now().timestamp_millis();
        let bridge = Arc::new(start_bridge(
            &dir,
            &sandbox.url(),
            now - now.rem_euclid(MINUTE_MS),
            on_redis,
        ));
        let redis_pid = bridge.redis.as_ref().map(|c| c.id().to_string());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        println!(
            "soak: {rate} events/s for {seconds} s in batches of {batch_n}; 1m windows, 2m horizon, 30s skew (ids kept in generations of 150 s); {}",
            if on_redis {
                "Redis store (its RSS is the store column)".to_owned()
            } else {
                format!("state file in {}", dir.display())
            }
        );
        let started = Instant::now();
        let until = started + Duration::from_secs(seconds);
        let sent = Arc::new(AtomicU64::new(0));
        // Two senders, paced: batch k leaves no earlier than k * batch / rate seconds in.
        let next = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::new();
        for _ in 0..2 {
            let (http, bridge, sent, next) =
                (http.clone(), bridge.clone(), sent.clone(), next.clone());
            senders.push(tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let due = started + Duration::from_secs_f64((k * batch_n) as f64 / rate as f64);
                    if due >= until {
                        return;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let body = batch(k * batch_n, batch_n, chrono::Utc::now().timestamp_millis());
                    let answer = http
                        .post(format!("{}/ingest/transactions", bridge.url))
                        .bearer_auth(INGEST_TOKEN)
                        .body(body)
                        .send()
                        .await
                        .expect("ingest request");
                    let status = answer.status().as_u16();
                    let answer: Value = answer.json().await.unwrap_or(Value::Null);
                    assert_eq!(status, 200, "{answer}");
                    assert_eq!(answer["accepted"], batch_n, "{answer}");
                    sent.fetch_add(batch_n, Ordering::Relaxed);
                }
            }));
        }
        // A reporting run after every window (it prunes what can no longer change a bill), and a
        // sample of RSS and disk every `sample_s`.
        let mut samples = Vec::new();
        let mut next_report = Instant::now() + Duration::from_secs(61);
        let mut next_sample = Instant::now();
        let mut reports = 0;
        while Instant::now() < until {
            if Instant::now() >= next_sample {
                let sample = Sample {
                    at_s: started.elapsed().as_secs_f64(),
                    sent: sent.load(Ordering::Relaxed),
                    rss_mb: status_mb(&bridge.pid, "VmRSS:"),
                    disk_mb: match &redis_pid {
                        Some(pid) => status_mb(pid, "VmRSS:"),
                        None => {
                            disk_bytes(&dir.join("state.ingest")) as f64 / 1e6
                                + disk_bytes(&dir.join("state")) as f64 / 1e6
                        }
                    },
                };
                println!(
                    "  t {:>5.0} s  sent {:>10}  RSS {:>7.1} MB  {} {:>7.1} MB",
                    sample.at_s,
                    sample.sent,
                    sample.rss_mb,
                    if on_redis { "redis RSS" } else { "disk" },
                    sample.disk_mb
                );
                samples.push(sample);
                next_sample += Duration::from_secs(sample_s);
            }
            if Instant::now() >= next_report {
                let response = http
                    .post(format!("{}/admin/report", bridge.url))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .expect("admin report");
                let status = response.status().as_u16();
                let summary: Value = response.json().await.unwrap_or(Value::Null);
                assert!(matches!(status, 200 | 409), "report: {status} {summary}");
                reports += 1;
                next_report += Duration::from_secs(60);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for sender in senders {
            sender.await.expect("a sender");
        }
        let total = sent.load(Ordering::Relaxed);
        let wall = started.elapsed().as_secs_f64();
        println!(
            "soak: {total} events accepted in {wall:.0} s ({:.0} events/s), {reports} reporting runs",
            total as f64 / wall
        );
        assert!(
            total as f64 >= 0.9 * (rate * seconds) as f64,
            "the bridge kept up with {rate} events/s"
        );
        let third = samples.len() / 3;
        if full && third > 0 {
            let peak = |from: usize, to: usize, f: fn(&Sample) -> f64| {
                samples[from..to].iter().map(f).fold(0.0, f64::max)
            };
            let mut failures = Vec::new();
            let store = if on_redis { "redis RSS" } else { "disk" };
            for (what, f) in [
                ("RSS", (|s: &Sample| s.rss_mb) as fn(&Sample) -> f64),
                (store, |s: &Sample| s.disk_mb),
            ] {
                let (middle, last) = (peak(third, 2 * third, f), peak(2 * third, samples.len(), f));
                println!(
                    "plateau: {what} peak {middle:.1} MB in the middle third, {last:.1} MB in the last ({:+.0}%)",
                    (last / middle.max(0.001) - 1.0) * 100.0
                );
                if last > middle * (1.0 + plateau_pct / 100.0) {
                    failures.push(format!("{what} still grows: {middle:.1} → {last:.1} MB"));
                }
            }
            // Per event of sustained rate: what the last third holds over the rate.
            let (rss, disk) = (
                peak(2 * third, samples.len(), |s| s.rss_mb),
                peak(2 * third, samples.len(), |s| s.disk_mb),
            );
            println!(
                "at {rate} events/s: {store} {disk:.1} MB = {:.0} bytes per event/s; bridge RSS {rss:.1} MB = {:.0} bytes per event/s",
                disk * 1e6 / rate as f64,
                rss * 1e6 / rate as f64
            );
            assert!(failures.is_empty(), "{failures:?}");
        }
        sandbox.stop().await;
    });
}
