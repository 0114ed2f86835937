//! Push ingestion at scale (issue 7, docs/ingest.md): the real `billing-bridge serve` binary (a
//! child process, so its CPU and peak memory are its own) with `[reporting] source = "push"`,
//! fed `INGEST_TOTAL` raw `transactionSummary` events (reference §5.3, 400–600 bytes each) over
//! loopback through `POST /ingest/transactions`, then reported to the in-process sandbox's
//! Recurly with `POST /admin/report`, and the Recurly usage totals checked against the counts the
//! harness kept, per (subscription, add-on).
//!
//! The workload is seeded and known: `INGEST_SUBS` billed subscriptions × 2 quotas with skewed
//! (Zipf-like) traffic; every event has its own `transactionId`, except 2% of what is sent that
//! repeats an id sent in an earlier batch. All on-time traffic lies in one closed window (the
//! full hour before the previous one, so it is closed whatever the time of day), so the memory
//! figure is for N transactions in one window. 3% of the events are late: timestamped in the
//! same window but sent only after its first report, with some repeats of already-billed ids; a
//! second report bills them as delta records.
//!
//! Phase 1: on-time events and repeats → report. Phase 2: late events and repeats of billed ids
//! → report. Then Recurly must hold exactly the unique events per (subscription, add-on).
//!
//! `cargo bench --bench ingest_load`. Env:
//! - `INGEST_TOTAL` events sent in all (default 10,000,000), `INGEST_SUBS` (1000), `INGEST_SEED`
//! - `INGEST_BATCH` events per request (1000), `INGEST_CONCURRENCY` requests in flight (2),
//!   `INGEST_GZIP=1` gzips every body, `INGEST_GENERATORS` generator threads (1)
//! - `INGEST_STATE_FILE=0`: the memory store with no state file (default: a temporary one, so an
//!   answer means synced to disk)
//! - `LOAD_STORE=redis`: a `redis-server` of the harness's own on a unix socket,
//!   `INGEST_REDIS_APPENDFSYNC` (default `everysec`; `always` to sync every write)
//! - `INGEST_TIMEOUT_S` (default 900): past it the bridge (and redis) are killed and the run fails
//! - `INGEST_DIR`: where the state file or Redis's append-only file goes (default: the temp dir)
//! - `INGEST_GENERATE_ONLY=1`: no bridge; the workload generated, its ids checked, and the
//!   generators' rate printed. `INGEST_BRIDGE_BIN`: another build of the bridge to drive.
//!
//! Under `cargo test --benches` it runs a smoke pass: 20,000 events, 50 subscriptions.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ADMIN_TOKEN, INGEST_TOKEN, benching, disk_bytes, env_or, percentile, status_mb};

const HOUR_MS: i64 = 3_600_000;
const QUOTAS: usize = 2;
/// Shares of what is sent, in per mille.
const REPEATS_PERMILLE: u64 = 20;
const LATE_PERMILLE: u64 = 30;

// ---------------------------------------------------------------------------------------------
// Child processes: killed on every way out (drop, panic, time limit).

#[derive(Default)]
struct Children {
    bridge: Mutex<Option<Child>>,
    redis: Mutex<Option<Child>>,
    dirs: Mutex<Vec<PathBuf>>,
}

impl Children {
    fn kill_all(&self) {
        for slot in [&self.bridge, &self.redis] {
            if let Some(mut child) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for dir in self
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Kills the children when dropped, whoever else holds them.
struct KillOnDrop(Arc<Children>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

/// A `redis-server` on a unix socket, in the children's keeping; its URL.
fn start_redis(children: &Children, dir: &Path) -> String {
    let fsync = std::env::var("INGEST_REDIS_APPENDFSYNC").unwrap_or_else(|_| "everysec".into());
    let data = dir.join("redis");
    std::fs::create_dir_all(&data).expect("redis dir");
    let (child, socket) = support::spawn_redis(
        &data,
        &["--save", "", "--appendonly", "yes", "--appendfsync", &fsync],
    );
    *children.redis.lock().unwrap() = Some(child);
    println!(
        "store: redis-server on {}, appendonly, appendfsync {fsync}",
        socket.display()
    );
    support::redis_url(&socket)
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str, ticks: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / ticks
}

/// What the store holds on disk (the state file and its ingest log, or Redis's data directory),
/// and Redis's own peak RSS.
fn store_line(children: &Children, dir: &Path) -> String {
    let redis_pid = children
        .redis
        .lock()
        .unwrap()
        .as_ref()
        .map(|c| c.id().to_string());
    match redis_pid {
        Some(pid) => format!(
            "redis-server peak RSS (VmHWM) {:.1} MB, data directory {:.1} MB",
            status_mb(&pid, "VmHWM:"),
            disk_bytes(&dir.join("redis")) as f64 / 1e6
        ),
        None => {
            let on_disk: u64 = std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with("state"))
                        .map(|e| disk_bytes(&e.path()))
                        .sum()
                })
                .unwrap_or(0);
            format!(
                "state file and ingest log on disk {:.1} MB",
                on_disk as f64 / 1e6
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload: every event is a pure function of its unique number, so repeats are exact copies
// and generators need no shared state.

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What the catalog gave the harness to put in events.
struct Catalog {
    plan_id: String,
    quota_ids: Vec<String>,
    /// (Amplify subscription id, Recurly subscription id) per subscription.
    subs: Vec<(String, String)>,
}

/// The constant JSON of one (subscription, quota) after `"quota":`, and of the subscription's
/// consumer application; written once, copied into every event.
struct Fragments {
    /// Per quota, once named by id and once `"unknown"` (then the asset resource decides).
    quota: Vec<[Vec<u8>; 2]>,
    /// Per subscription: `"consumerDetails":{…}}}` to the end of the event.
    consumer: Vec<Vec<u8>>,
    product: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Event {
    sub: usize,
    quota: usize,
    by_quota_id: bool,
    timestamp: i64,
    status: u8,
    duration: u64,
    path_n: u64,
    method: u8,
    h: u64,
}

struct Workload {
    seed: u64,
    subs: usize,
    batch: u64,
    window_start: i64,
    /// Unique events sent on time (phase 1) and late (phase 2).
    on_time: u64,
    late: u64,
    repeats1: u64,
    repeats2: u64,
    /// Repeats in phase 1 pick ids from batches more than this many before their own (batches
    /// up to `lag` pick from any earlier position, whose batch may still be in flight).
    lag: u64,
    /// Cumulative Zipf weights over subscriptions.
    zipf: Vec<f64>,
    fragments: Fragments,
    id_prefix: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    OnTime,
    Late,
}

impl Workload {
    fn positions(&self, phase: Phase) -> u64 {
        match phase {
            Phase::OnTime => self.on_time + self.repeats1,
            Phase::Late => self.late + self.repeats2,
        }
    }

    fn repeats(&self, phase: Phase) -> u64 {
        match phase {
            Phase::OnTime => self.repeats1,
            Phase::Late => self.repeats2,
        }
    }

    fn batches(&self, phase: Phase) -> u64 {
        self.positions(phase).div_ceil(self.batch)
    }

    /// Repeats among the first `p` positions of the phase (spread evenly).
    fn repeats_before(&self, phase: Phase, p: u64) -> u64 {
        let total = self.positions(phase);
        if total == 0 {
            return 0;
        }
        ((p as u128 * self.repeats(phase) as u128) / total as u128) as u64
    }

    /// The unique number sent at position `p`, and whether it repeats an earlier one.
    fn at(&self, phase: Phase, p: u64) -> (u64, bool) {
        let before = self.repeats_before(phase, p);
        let repeat = self.repeats_before(phase, p + 1) > before;
        let first = match phase {
            Phase::OnTime => 0,
            Phase::Late => self.on_time,
        };
        if !repeat {
            return (first + p - before, false);
        }
        let h = splitmix(self.seed ^ 0x5EED_0000_0000 ^ (p << 1) ^ (phase as u64));
        match phase {
            Phase::Late => (h % self.on_time.max(1), true),
            Phase::OnTime => {
                // Ids of batches already answered when possible; early on, earlier in this one.
                let k = p / self.batch;
                let q = k.saturating_sub(self.lag) * self.batch;
                let mut pool = q - self.repeats_before(phase, q);
                if pool == 0 {
                    pool = p - before;
                }
                (h % pool, true)
            }
        }
    }

    fn event(&self, u: u64) -> Event {
        let h1 = splitmix(self.seed.wrapping_mul(0x1000_0001) ^ u);
        let h2 = splitmix(h1);
        let x = (h1 >> 11) as f64 / (1u64 << 53) as f64;
        let sub = self.zipf.partition_point(|&c| c < x).min(self.subs - 1);
        let status = match h2 % 1000 {
            0..970 => 0,
            970..990 => 1,
            990..997 => 2,
            _ => 3,
        };
        Event {
            sub,
            // Most traffic on the first quota's resource.
            quota: if (h2 >> 10) % 100 < 70 { 0 } else { 1 },
            by_quota_id: !(h2 >> 17).is_multiple_of(10),
            timestamp: self.window_start + ((h2 >> 24) % HOUR_MS as u64) as i64,
            status,
            duration: 3 + (h1 % 50) * (h1 % 13) + (h2 >> 50) % 9,
            path_n: (h1 >> 40) % 100_000,
            method: ((h2 >> 45) % 10) as u8,
            h: h1,
        }
    }

    /// Appends event `u` as one NDJSON line.
    fn write(&self, buf: &mut Vec<u8>, u: u64) -> Event {
        let e = self.event(u);
        let f = &self.fragments;
        let (status, detail) = [
            ("Success", "200"),
            ("Failure", "500"),
            ("Failure", "404"),
            ("Exception", "0"),
        ][e.status as usize];
        let method = [
            "GET", "GET", "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE",
        ][e.method as usize];
        let _ = write!(
            buf,
            r#"{{"timestamp":{},"transactionId":"{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}","environmentId":"env-prod-eu1","type":"transactionSummary","transactionSummary":{{"status":"{status}","statusDetail":"{detail}","duration":{},"#,
            e.timestamp,
            self.id_prefix,
            (e.h >> 48) & 0xffff,
            (e.h >> 36) & 0xfff,
            (e.h >> 24) & 0xfff,
            u,
            e.duration,
        );
        let _ = write!(
            buf,
            r#""proxy":{{"id":"remoteApiId_weather-v2","name":"weather"}},"entryPoint":{{"type":"http","method":"{method}","path":"/v2/forecast/{}"}},"#,
            e.path_n
        );
        buf.extend_from_slice(&f.product);
        buf.extend_from_slice(&f.quota[e.quota][usize::from(!e.by_quota_id)]);
        buf.extend_from_slice(&f.consumer[e.sub]);
        buf.push(b'\n');
        e
    }
}

fn fragments(catalog: &Catalog) -> Fragments {
    let quota = catalog
        .quota_ids
        .iter()
        .enumerate()
        .map(|(q, id)| {
            let resource = format!(r#""assetResource":{{"name":"api/resource-{q}"}},"#);
            [
                format!(r#""quota":{{"id":"{id}"}},{resource}"#).into_bytes(),
                format!(r#""quota":{{"id":"unknown"}},{resource}"#).into_bytes(),
            ]
        })
        .collect();
    let consumer = catalog
        .subs
        .iter()
        .enumerate()
        .map(|(i, (amplify_id, _))| {
            format!(
                r#""consumerDetails":{{"subscription":{{"id":"{amplify_id}","name":"sub-{i}"}}}}}}}}"#
            )
            .into_bytes()
        })
        .collect();
    let product = format!(r#""productPlan":{{"id":"{}"}},"#, catalog.plan_id).into_bytes();
    Fragments {
        quota,
        consumer,
        product,
    }
}

/// One request body and what the harness expects of its answer.
struct Batch {
    phase: Phase,
    index: u64,
    body: Vec<u8>,
    events: u64,
    repeats: u64,
    /// Whether every repeat's first copy was in a batch answered before this one is sent, so the
    /// answer must count exactly `repeats` duplicates (early batches repeat ids that may still be
    /// in flight: then only the phase's sums are exact).
    strict: bool,
}

/// Writes the batches of `phase` whose index is `g` modulo `generators` into `tx`, in order;
/// returns the unique events written per (subscription, quota).
fn generate(
    work: &Workload,
    phase: Phase,
    g: u64,
    generators: u64,
    gzip: bool,
    tx: tokio::sync::mpsc::Sender<Batch>,
) -> Vec<u64> {
    let mut counts = vec![0u64; work.subs * QUOTAS];
    let total = work.positions(phase);
    let mut k = g;
    let mut plain = Vec::new();
    while k < work.batches(phase) {
        let from = k * work.batch;
        let to = (from + work.batch).min(total);
        plain.clear();
        plain.reserve((to - from) as usize * 600);
        let mut repeats = 0;
        for p in from..to {
            let (u, repeat) = work.at(phase, p);
            let e = work.write(&mut plain, u);
            if repeat {
                repeats += 1;
            } else {
                counts[e.sub * QUOTAS + e.quota] += 1;
            }
        }
        let body = if gzip {
            gzip_bytes(&plain)
        } else {
            std::mem::take(&mut plain)
        };
        let batch = Batch {
            phase,
            index: k,
            body,
            events: to - from,
            repeats,
            strict: phase == Phase::Late || k > work.lag,
        };
        if tx.blocking_send(batch).is_err() {
            break;
        }
        k += generators;
    }
    counts
}

/// gzip, fast level, as a log shipper would send it.
fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

// ---------------------------------------------------------------------------------------------
// The sandbox catalog.

fn seeded<'a>(answer: &'a Value, section: &str, key: &str) -> &'a Vec<Value> {
    answer[key]
        .as_array()
        .or_else(|| answer[section][key].as_array())
        .unwrap_or_else(|| panic!("seeded {key}: {answer}"))
}

/// Amplify: a billed product, plan, `QUOTAS` quotas (one asset resource each) and `subs`
/// approved subscriptions linked to Recurly subscriptions with a usage add-on per quota.
async fn seed_catalog(http: &reqwest::Client, sb: &str, subs: usize) -> Catalog {
    let mut catalog = vec![
        json!({"kind": "Product", "name": "bench", "attributes": {"billingSystem": "recurly"}, "state": "active"}),
        json!({"kind": "ProductPlan", "name": "bench-plan", "spec": {"product": "bench", "type": "paid"}, "state": "active"}),
    ];
    for q in 0..QUOTAS {
        catalog.push(json!({"kind": "Quota", "name": format!("quota-{q}"), "metadata": {"scope": {"name": "bench-plan"}},
            "spec": {"unit": "transactions", "resources": [{"kind": "AssetResource", "name": format!("api/resource-{q}")}]}}));
    }
    let created = support::post_json(
        http,
        &format!("{sb}/_sandbox/seed"),
        &json!({"amplify": {"resources": catalog}}),
    )
    .await;
    let resources = seeded(&created, "amplify", "resources");
    let id_of = |kind: &str| -> Vec<String> {
        resources
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["metadata"]["id"].as_str().expect("an id").to_owned())
            .collect()
    };
    let quota_ids = id_of("Quota");
    assert_eq!(quota_ids.len(), QUOTAS);
    let plan_id = id_of("ProductPlan").remove(0);
    let add_ons: Vec<Value> = quota_ids
        .iter()
        .enumerate()
        .map(|(i, q)| {
            json!({"code": format!("amplify-quota-{q}"), "name": format!("Quota {q}"),
                   "accounting_code": format!("bench-quota-{i}"),
                   "add_on_type": "usage", "usage_type": "price",
                   "measured_unit_name": "transactions",
                   "currencies": [{"currency": "USD", "unit_amount_decimal": "0.001"}]})
        })
        .collect();
    let accounts: Vec<Value> = (0..subs)
        .map(|i| json!({"code": format!("amplify-team-t{i}")}))
        .collect();
    let subscriptions: Vec<Value> = (0..subs)
        .map(|i| {
            json!({"plan_code": "amplify-plan-bench", "currency": "USD",
                   "account": {"code": format!("amplify-team-t{i}")},
                   "add_ons": quota_ids.iter().map(|q| json!({"code": format!("amplify-quota-{q}")})).collect::<Vec<_>>()})
        })
        .collect();
    let answer = support::post_json(http, &format!("{sb}/_sandbox/seed"),
        &json!({"recurly": {
            "measured_units": [{"name": "transactions", "display_name": "Transactions"}],
            "accounts": accounts,
            "plans": [{"code": "amplify-plan-bench", "name": "Bench", "accounting_code": "bench-plan",
                       "currencies": [{"currency": "USD", "unit_amount": 0}],
                       "add_ons": add_ons}],
            "subscriptions": subscriptions}}),
    )
    .await;
    let recurly_ids: Vec<String> = seeded(&answer, "recurly", "subscriptions")
        .iter()
        .map(|s| s["id"].as_str().expect("subscription id").to_owned())
        .collect();
    assert_eq!(recurly_ids.len(), subs);
    let linked: Vec<Value> = recurly_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"kind": "Subscription", "name": format!("sub-{i}"),
                   "spec": {"product": "bench", "plan": {"name": "bench-plan"}},
                   "attributes": {"recurlySubscriptionId": id},
                   "approval": {"state": "approved"}})
        })
        .collect();
    let answer = support::post_json(
        http,
        &format!("{sb}/_sandbox/seed"),
        &json!({"amplify": {"resources": linked}}),
    )
    .await;
    let amplify_ids: Vec<String> = seeded(&answer, "amplify", "resources")
        .iter()
        .map(|s| {
            s["metadata"]["id"]
                .as_str()
                .expect("subscription id")
                .to_owned()
        })
        .collect();
    assert_eq!(amplify_ids.len(), subs);
    Catalog {
        plan_id,
        quota_ids,
        subs: amplify_ids.into_iter().zip(recurly_ids).collect(),
    }
}

/// Recurly's usage units per (Recurly subscription id, add-on code).
async fn usage_totals(http: &reqwest::Client, sb: &str) -> BTreeMap<(String, String), u64> {
    let rows: Value = http
        .get(format!("{sb}/_sandbox/recurly/usage_totals"))
        .send()
        .await
        .expect("usage totals")
        .json()
        .await
        .expect("usage totals answer");
    rows.as_array()
        .expect("usage totals are a list")
        .iter()
        .map(|r| {
            (
                (
                    r["subscription_id"].as_str().unwrap_or("").to_owned(),
                    r["add_on_code"].as_str().unwrap_or("").to_owned(),
                ),
                r["amount"].as_f64().unwrap_or(0.0).round() as u64,
            )
        })
        .filter(|(_, units)| *units > 0)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The bridge.

struct Bridge {
    url: String,
    pid: String,
    log: PathBuf,
    /// The harness's redis-server, whose CPU is the store's share of the work.
    redis_pid: Option<String>,
}

fn start_bridge(children: &Children, config: &Path, log: PathBuf) -> Bridge {
    let stderr = std::fs::File::create(&log).expect("bridge log file");
    // INGEST_BRIDGE_BIN: another build of the bridge (or a stand-in) taking the same arguments.
    let bin = std::env::var("INGEST_BRIDGE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_billing-bridge").to_owned());
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("INGEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("billing-bridge serve starts");
    let pid = child.id().to_string();
    let stdout = child.stdout.take().unwrap();
    *children.bridge.lock().unwrap() = Some(child);
    let Some(url) = support::serve_address(stdout) else {
        panic!(
            "billing-bridge serve printed no address; its log:\n{}",
            tail(&log)
        )
    };

    let redis_pid = children
        .redis
        .lock()
        .unwrap()
        .as_ref()
        .map(|c| c.id().to_string());
    Bridge {
        url,
        pid,
        log,
        redis_pid,
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `POST /admin/report` for the window; its summary and wall time.
async fn report(http: &reqwest::Client, bridge: &Bridge, window: (i64, i64)) -> (Value, Duration) {
    let started = Instant::now();
    for _ in 0..100 {
        let response = http
            .post(format!("{}/admin/report", bridge.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"from": window.0, "to": window.1}))
            .send()
            .await
            .expect("admin report request");
        let status = response.status().as_u16();
        let summary: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200 if summary["complete"] == true => return (summary, started.elapsed()),
            200 | 409 | 503 => {
                eprintln!("report: {status} {summary}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => panic!(
                "POST /admin/report: {status} {summary}; bridge log:\n{}",
                tail(&bridge.log)
            ),
        }
    }
    panic!("no complete report run in 100 tries")
}

// ---------------------------------------------------------------------------------------------
// Pushing.

#[derive(Default)]
struct Tally {
    received: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    ignored: AtomicU64,
    retries: AtomicU64,
    bytes: AtomicU64,
    /// Repeats pick ids from batches at least this many before their own.
    lag: AtomicU64,
    /// Batches answered: all below `.0`, and those above it in `.1`.
    answered: Mutex<(u64, std::collections::BTreeSet<u64>)>,
}

impl Tally {
    fn answered(&self, index: u64) {
        let mut answered = self.answered.lock().expect("answered");
        let (below, above) = &mut *answered;
        above.insert(index);
        while above.remove(below) {
            *below += 1;
        }
    }

    /// Whether every batch a repeat in `index` may pick from was answered (with several in
    /// flight, one slow request can hold an old batch while later ones go out).
    fn repeats_settled(&self, index: u64) -> bool {
        let lag = self.lag.load(Ordering::Relaxed);
        self.answered.lock().expect("answered").0 >= index.saturating_sub(lag)
    }
}

/// The batches of one phase, in order, from the generators' channels.
struct Feed {
    rx: Vec<tokio::sync::mpsc::Receiver<Batch>>,
    next: usize,
}

impl Feed {
    async fn next(&mut self) -> Option<Batch> {
        let n = self.rx.len();
        let batch = self.rx[self.next % n].recv().await;
        self.next += 1;
        batch
    }
}

fn num(answer: &Value, field: &str) -> u64 {
    answer[field]
        .as_u64()
        .unwrap_or_else(|| panic!("the answer has no {field}: {answer}"))
}

/// One request in flight at a time, batches taken from the feed until it runs dry; the accept
/// latency of every batch, in µs.
async fn sender(
    http: reqwest::Client,
    url: String,
    gzip: bool,
    feed: Arc<tokio::sync::Mutex<Feed>>,
    tally: Arc<Tally>,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    loop {
        let Some(batch) = feed.lock().await.next().await else {
            return latencies;
        };
        tally
            .bytes
            .fetch_add(batch.body.len() as u64, Ordering::Relaxed);
        let strict =
            batch.strict && (batch.phase == Phase::Late || tally.repeats_settled(batch.index));
        let mut request = http
            .post(&url)
            .bearer_auth(INGEST_TOKEN)
            .header("Content-Type", "application/x-ndjson")
            .body(batch.body);
        if gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        // From the first send to the 200, retries after a 503 included.
        let started = Instant::now();
        let (status, text, took) = loop {
            let response = request
                .try_clone()
                .expect("a byte body clones")
                .send()
                .await
                .unwrap_or_else(|e| panic!("POST /ingest/transactions: {e}"));
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let text = response.text().await.unwrap_or_default();
            let took = started.elapsed();
            if status == 503 {
                // Nothing of the batch was taken: the same batch again, as the contract allows.
                tally.retries.fetch_add(1, Ordering::Relaxed);
                let wait =
                    Duration::from_secs(retry_after.unwrap_or(1)).min(Duration::from_secs(2));
                tokio::time::sleep(wait).await;
                continue;
            }
            break (status, text, took);
        };
        let phase = match batch.phase {
            Phase::OnTime => "on-time",
            Phase::Late => "late",
        };
        assert_eq!(
            status,
            200,
            "{phase} batch {}: {status} {}",
            batch.index,
            &text[..text.len().min(1000)]
        );
        let answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{phase} batch {}: not JSON ({e}): {text}", batch.index));
        let (received, accepted, duplicates, ignored, refused) = (
            num(&answer, "received"),
            num(&answer, "accepted"),
            num(&answer, "duplicates"),
            num(&answer, "ignored"),
            num(&answer, "refused"),
        );
        assert_eq!(
            refused, 0,
            "{phase} batch {}: refusals {}",
            batch.index, answer["refusals"]
        );
        assert_eq!(
            received, batch.events,
            "{phase} batch {}: received {answer}",
            batch.index
        );
        assert_eq!(
            accepted + duplicates + ignored + refused,
            received,
            "{phase} batch {}: the outcomes do not add up: {answer}",
            batch.index
        );
        assert_eq!(ignored, 0, "{phase} batch {}: {answer}", batch.index);
        tally.answered(batch.index);
        if strict {
            assert_eq!(
                duplicates, batch.repeats,
                "{phase} batch {}: duplicates answered, against repeats sent: {answer}",
                batch.index
            );
        }
        tally.received.fetch_add(received, Ordering::Relaxed);
        tally.accepted.fetch_add(accepted, Ordering::Relaxed);
        tally.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        tally.ignored.fetch_add(ignored, Ordering::Relaxed);
        latencies.push(took.as_micros().min(u32::MAX as u128) as u32);
    }
}

struct PhaseResult {
    wall: Duration,
    batches: usize,
    latencies: Vec<u32>,
    counts: Vec<u64>,
    server_cpu: f64,
    redis_cpu: Option<f64>,
    harness_cpu: f64,
    retries: u64,
    bytes: u64,
}

async fn push(
    work: &Arc<Workload>,
    phase: Phase,
    http: &reqwest::Client,
    bridge: &Bridge,
    settings: &Settings,
    ticks: f64,
) -> PhaseResult {
    let tally = Arc::new(Tally::default());
    tally.lag.store(work.lag, Ordering::Relaxed);
    let generators = settings.generators;
    let mut rx = Vec::new();
    let mut threads = Vec::new();
    for g in 0..generators {
        let (tx, r) = tokio::sync::mpsc::channel(settings.concurrency as usize + 1);
        rx.push(r);
        let work = work.clone();
        let gzip = settings.gzip;
        threads.push(
            std::thread::Builder::new()
                .name(format!("generator-{g}"))
                .spawn(move || generate(&work, phase, g, generators, gzip, tx))
                .expect("generator thread"),
        );
    }
    let feed = Arc::new(tokio::sync::Mutex::new(Feed { rx, next: 0 }));
    let url = format!("{}/ingest/transactions", bridge.url);
    let cpu0 = cpu_seconds(&bridge.pid, ticks);
    let own0 = cpu_seconds("self", ticks);
    let redis0 = bridge.redis_pid.as_ref().map(|p| cpu_seconds(p, ticks));
    let started = Instant::now();
    let tasks: Vec<_> = (0..settings.concurrency)
        .map(|_| {
            tokio::spawn(sender(
                http.clone(),
                url.clone(),
                settings.gzip,
                feed.clone(),
                tally.clone(),
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        match task.await {
            Ok(mut l) => latencies.append(&mut l),
            Err(e) => {
                // Stop the generators (their channels close) before failing.
                drop(feed);
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
    let wall = started.elapsed();
    let server_cpu = cpu_seconds(&bridge.pid, ticks) - cpu0;
    let harness_cpu = cpu_seconds("self", ticks) - own0;
    let redis_cpu = bridge
        .redis_pid
        .as_ref()
        .zip(redis0)
        .map(|(p, c0)| cpu_seconds(p, ticks) - c0);
    let mut counts = vec![0u64; work.subs * QUOTAS];
    for t in threads {
        for (c, n) in counts.iter_mut().zip(t.join().expect("generator")) {
            *c += n;
        }
    }
    latencies.sort_unstable();
    let sent = work.positions(phase);
    let uniques = sent - work.repeats(phase);
    let (received, accepted, duplicates) = (
        tally.received.load(Ordering::Relaxed),
        tally.accepted.load(Ordering::Relaxed),
        tally.duplicates.load(Ordering::Relaxed),
    );
    assert_eq!(received, sent, "events received");
    assert_eq!(
        counts.iter().sum::<u64>(),
        uniques,
        "the generators' unique events"
    );
    let exact = accepted == uniques && duplicates == work.repeats(phase);
    println!(
        "  answers: received {received}, accepted {accepted} (expected {uniques}), duplicates {duplicates} (expected {}), ignored {}, refused 0: {}",
        work.repeats(phase),
        tally.ignored.load(Ordering::Relaxed),
        if exact { "exact" } else { "MISMATCH" }
    );
    assert!(
        exact,
        "the answers' accepted/duplicate sums are not the workload's"
    );
    PhaseResult {
        wall,
        batches: latencies.len(),
        latencies,
        counts,
        server_cpu,
        redis_cpu,
        harness_cpu,
        retries: tally.retries.load(Ordering::Relaxed),
        bytes: tally.bytes.load(Ordering::Relaxed),
    }
}

fn print_phase(name: &str, events: u64, r: &PhaseResult) {
    let l = &r.latencies;
    println!(
        "{name}: {events} transactions in {} batches in {:.2} s = {:.0} transactions/s ({:.1} MB/s of bodies as sent{})",
        r.batches,
        r.wall.as_secs_f64(),
        events as f64 / r.wall.as_secs_f64(),
        r.bytes as f64 / 1e6 / r.wall.as_secs_f64(),
        if r.retries > 0 {
            format!(", {} batches retried after 503", r.retries)
        } else {
            String::new()
        }
    );
    println!(
        "  accept latency per batch: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(l, 0.50),
        percentile(l, 0.90),
        percentile(l, 0.99),
        l.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "  server CPU {:.2} s ({:.2} s per million transactions, {:.0}% of one core){}; harness CPU {:.2} s (generation, client, in-process sandbox)",
        r.server_cpu,
        r.server_cpu / (events as f64 / 1e6),
        100.0 * r.server_cpu / r.wall.as_secs_f64(),
        match r.redis_cpu {
            Some(c) => format!(
                "; redis-server CPU {c:.2} s ({:.2} s per million)",
                c / (events as f64 / 1e6)
            ),
            None => String::new(),
        },
        r.harness_cpu
    );
}

// ---------------------------------------------------------------------------------------------

struct Settings {
    total: u64,
    subs: usize,
    seed: u64,
    batch: u64,
    concurrency: u64,
    generators: u64,
    gzip: bool,
    timeout: Duration,
    state_file: bool,
    redis: bool,
    generate_only: bool,
}

fn settings() -> Settings {
    let full = benching();
    let flag = |name: &str, default: bool| {
        std::env::var(name)
            .map(|v| !matches!(v.as_str(), "0" | "" | "false" | "no"))
            .unwrap_or(default)
    };
    Settings {
        total: env_or("INGEST_TOTAL", if full { 10_000_000 } else { 20_000 }),
        subs: env_or("INGEST_SUBS", if full { 1000 } else { 50 }).max(1) as usize,
        seed: env_or("INGEST_SEED", 7),
        batch: env_or("INGEST_BATCH", if full { 1000 } else { 500 }).max(1),
        concurrency: env_or("INGEST_CONCURRENCY", 2).max(1),
        generators: env_or("INGEST_GENERATORS", 1).max(1),
        gzip: flag("INGEST_GZIP", false),
        timeout: Duration::from_secs(env_or("INGEST_TIMEOUT_S", if full { 900 } else { 180 })),
        state_file: flag("INGEST_STATE_FILE", true),
        redis: std::env::var("LOAD_STORE").as_deref() == Ok("redis"),
        generate_only: flag("INGEST_GENERATE_ONLY", false),
    }
}

fn zipf(subs: usize) -> Vec<f64> {
    // s = 1.1: the busiest of 1,000 subscriptions takes ~18% of the traffic, the median one ~0.03%.
    let weights: Vec<f64> = (0..subs)
        .map(|i| 1.0 / ((i + 1) as f64).powf(1.1))
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / sum;
            acc
        })
        .collect()
}

fn main() {
    let s = settings();
    let children = Arc::new(Children::default());
    let _guard = KillOnDrop(children.clone());
    let done = Arc::new(AtomicBool::new(false));
    {
        let children = children.clone();
        support::watchdog(
            "ingest_load",
            "INGEST_TIMEOUT_S",
            s.timeout,
            done.clone(),
            move || children.kill_all(),
        );
    }
    let ticks = clock_ticks();
    // INGEST_DIR: where the state file (or Redis's append-only file) goes; it must be a real
    // disk for "synced" to mean anything.
    let parent = std::env::var_os("INGEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("bb-ingest-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    children.dirs.lock().unwrap().push(dir.clone());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // SIGINT or SIGTERM (from `timeout`, say) to the harness alone: the children go too.
        let on_signal = children.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("ingest_load: interrupted: killing the bridge");
            on_signal.kill_all();
            std::process::exit(130);
        });
        run(&s, &children, &dir, ticks).await
    });
    done.store(true, Ordering::Relaxed);
}

async fn run(s: &Settings, children: &Children, dir: &Path, ticks: f64) {
    let total_started = Instant::now();
    let sandbox = billing_bridge_sandbox::start(support::unlimited_sandbox(), "127.0.0.1:0")
        .await
        .expect("sandbox");
    let sb = sandbox.url();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(s.concurrency as usize + 2)
        .timeout(Duration::from_secs(600))
        .build()
        .expect("http client");
    let seeding = Instant::now();
    let catalog = seed_catalog(&http, &sb, s.subs).await;
    println!(
        "sandbox: {} billed subscriptions x {QUOTAS} quotas seeded in {:.1} s",
        s.subs,
        seeding.elapsed().as_secs_f64()
    );

    // The workload.
    // A window that closed at least an hour ago (past the report's delay whatever the time of
    // day, so a run starting just after the hour reports it too) and began at most three hours
    // ago (inside the 12 h ingest horizon for the whole run).
    let now = chrono::Utc::now().timestamp_millis();
    let window_start = (now.div_euclid(HOUR_MS) - 2) * HOUR_MS;
    let window = (window_start, window_start + HOUR_MS);
    let repeats = s.total * REPEATS_PERMILLE / 1000;
    let late = s.total * LATE_PERMILLE / 1000;
    let repeats2 = repeats / 4;
    let work = Arc::new(Workload {
        seed: s.seed,
        subs: s.subs,
        batch: s.batch,
        window_start,
        on_time: s.total - repeats - late,
        late,
        repeats1: repeats - repeats2,
        repeats2,
        lag: 2 * s.concurrency + 1,
        zipf: zipf(s.subs),
        fragments: fragments(&catalog),
        id_prefix: (splitmix(s.seed) >> 32) as u32,
    });
    assert!(
        work.on_time > work.repeats1,
        "too few events for the repeats"
    );
    let mut sample = Vec::new();
    for u in 0..1000 {
        work.write(&mut sample, u);
    }
    if std::env::var_os("INGEST_SHOW_EVENT").is_some() {
        let first = sample.split(|b| *b == b'\n').next().unwrap_or_default();
        println!("an event: {}", String::from_utf8_lossy(first));
    }
    println!(
        "workload: {} transactions (seed {}): {} on time + {} repeats, then {} late + {} repeats of billed ids; window {} – {}; events {:.0} bytes on average; batches of {}, {} in flight, NDJSON{}",
        s.total,
        s.seed,
        work.on_time,
        work.repeats1,
        work.late,
        work.repeats2,
        billing_bridge_pipeline::usage::rfc3339(window.0),
        billing_bridge_pipeline::usage::rfc3339(window.1),
        sample.len() as f64 / 1000.0,
        s.batch,
        s.concurrency,
        if s.gzip { " gzip" } else { "" }
    );

    if s.generate_only {
        generate_only(&work, s).await;
        sandbox.stop().await;
        return;
    }

    // The store.
    let redis_url = s.redis.then(|| start_redis(children, dir));
    let state_file = if s.state_file && redis_url.is_none() {
        dir.join("state").display().to_string()
    } else {
        String::new()
    };
    let store = match &redis_url {
        Some(url) => format!("redis_url = \"{url}\"\nstate_file = \"\""),
        None => format!("state_file = \"{state_file}\""),
    };
    if redis_url.is_none() {
        println!(
            "store: memory, {}",
            if state_file.is_empty() {
                "no state file (INGEST_STATE_FILE=0): nothing on disk".to_owned()
            } else {
                format!("state file {state_file} (ingest log synced before each answer)")
            }
        );
    }
    let config = dir.join("bridge.toml");
    support::write_push_config(
        &config,
        &sb,
        "window = \"1h\"\ndelay = \"1s\"\nbilled_count = \"total\"\nconcurrency = 16",
        "",
        &store,
    );
    let bridge = start_bridge(children, &config, dir.join("bridge.log"));
    let ready = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", bridge.url)).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "the bridge is not ready after 30 s; its log:\n{}",
            tail(&bridge.log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "bridge: {} (pid {}), RSS at start {:.1} MB",
        bridge.url,
        bridge.pid,
        status_mb(&bridge.pid, "VmRSS:")
    );

    // Phase 1: on time.
    let p1 = push(&work, Phase::OnTime, &http, &bridge, s, ticks).await;
    print_phase(
        "phase 1 (on time + repeats)",
        work.positions(Phase::OnTime),
        &p1,
    );
    let hwm1 = status_mb(&bridge.pid, "VmHWM:");
    println!(
        "  server peak RSS (VmHWM) after phase 1: {hwm1:.1} MB; RSS now {:.1} MB; {}",
        status_mb(&bridge.pid, "VmRSS:"),
        store_line(children, dir)
    );
    let cpu0 = cpu_seconds(&bridge.pid, ticks);
    let (summary1, took1) = report(&http, &bridge, window).await;
    println!(
        "report 1: {} records, {} units, unmatched {} in {:.2} s wall, server CPU {:.2} s",
        summary1["records"],
        summary1["units"],
        summary1["unmatched_units"],
        took1.as_secs_f64(),
        cpu_seconds(&bridge.pid, ticks) - cpu0
    );
    let recurly_ids: Vec<&String> = catalog.subs.iter().map(|(_, r)| r).collect();
    let expected = |counts: &[u64]| -> BTreeMap<(String, String), u64> {
        counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| {
                (
                    (
                        recurly_ids[i / QUOTAS].clone(),
                        format!("amplify-quota-{}", catalog.quota_ids[i % QUOTAS]),
                    ),
                    *n,
                )
            })
            .collect()
    };
    let mut failures = Vec::new();
    let want = expected(&p1.counts);
    let got = settled(&http, &sb, &want, Duration::from_secs(10)).await;
    check("after report 1", &want, &got, &mut failures);

    // Phase 2: late.
    let p2 = push(&work, Phase::Late, &http, &bridge, s, ticks).await;
    print_phase(
        "phase 2 (late + repeats of billed ids)",
        work.positions(Phase::Late),
        &p2,
    );
    let cpu0 = cpu_seconds(&bridge.pid, ticks);
    let (summary2, took2) = report(&http, &bridge, window).await;
    println!(
        "report 2: {} records, {} units, unmatched {} in {:.2} s wall, server CPU {:.2} s",
        summary2["records"],
        summary2["units"],
        summary2["unmatched_units"],
        took2.as_secs_f64(),
        cpu_seconds(&bridge.pid, ticks) - cpu0
    );
    let all: Vec<u64> = p1
        .counts
        .iter()
        .zip(&p2.counts)
        .map(|(a, b)| a + b)
        .collect();
    let want = expected(&all);
    let got = settled(&http, &sb, &want, Duration::from_secs(60)).await;
    check("at the end", &want, &got, &mut failures);
    let hwm = status_mb(&bridge.pid, "VmHWM:");
    println!(
        "server peak RSS (VmHWM): {hwm1:.1} MB after phase 1, {hwm:.1} MB at the end; server CPU in all {:.2} s; harness CPU in all {:.2} s; wall in all {:.1} s",
        cpu_seconds(&bridge.pid, ticks),
        cpu_seconds("self", ticks),
        total_started.elapsed().as_secs_f64()
    );
    println!("store at the end: {}", store_line(children, dir));
    println!(
        "machine load average (1, 5, 15 min) at the end: {} (other work on the machine slows every figure)",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let errors = std::fs::read_to_string(&bridge.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .count();
    if errors > 0 {
        println!(
            "bridge log: {errors} ERROR lines; the last ones:\n{}",
            tail(&bridge.log)
        );
    }
    sandbox.stop().await;
    assert!(failures.is_empty(), "Recurly totals mismatch: {failures:?}");
}

/// Recurly's totals once they equal `want`, or as they are after `bound`.
async fn settled(
    http: &reqwest::Client,
    sb: &str,
    want: &BTreeMap<(String, String), u64>,
    bound: Duration,
) -> BTreeMap<(String, String), u64> {
    let waited = Instant::now();
    loop {
        let got = usage_totals(http, sb).await;
        if &got == want || waited.elapsed() >= bound {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Compares Recurly's totals with the expected unique counts; prints "exact" or the mismatches.
fn check(
    when: &str,
    want: &BTreeMap<(String, String), u64>,
    got: &BTreeMap<(String, String), u64>,
    failures: &mut Vec<String>,
) {
    let units_want: u64 = want.values().sum();
    let units_got: u64 = got.values().sum();
    let mut mismatches = Vec::new();
    for (key, n) in want {
        let g = got.get(key).copied().unwrap_or(0);
        if g != *n {
            mismatches.push(format!("{} {}: expected {n}, Recurly {g}", key.0, key.1));
        }
    }
    for (key, g) in got {
        if !want.contains_key(key) {
            mismatches.push(format!("{} {}: expected 0, Recurly {g}", key.0, key.1));
        }
    }
    if mismatches.is_empty() {
        println!(
            "Recurly {when}: {units_got} units over {} (subscription, add-on) pairs: exact",
            want.len()
        );
    } else {
        println!(
            "Recurly {when}: MISMATCH: {units_got} units, expected {units_want}; {} of {} pairs differ:",
            mismatches.len(),
            want.len()
        );
        for m in mismatches.iter().take(20) {
            println!("  mismatch {m}");
        }
        failures.push(format!("{when}: {} pairs differ", mismatches.len()));
    }
}

/// `INGEST_GENERATE_ONLY=1`: the workload generated and checked without a bridge: every unique
/// id is new and every repeat repeats an id sent before (up to 5,000,000 events; beyond, only
/// the rate), and the rate the generators reach (the harness's own ceiling).
async fn generate_only(work: &Arc<Workload>, s: &Settings) {
    let check = s.total <= 5_000_000;
    let mut seen = std::collections::HashSet::new();
    for phase in [Phase::OnTime, Phase::Late] {
        let started = Instant::now();
        let mut rx = Vec::new();
        let mut threads = Vec::new();
        for g in 0..s.generators {
            let (tx, r) = tokio::sync::mpsc::channel(4);
            rx.push(r);
            let (work, generators, gzip) = (work.clone(), s.generators, s.gzip);
            threads.push(std::thread::spawn(move || {
                generate(&work, phase, g, generators, gzip, tx)
            }));
        }
        let mut feed = Feed { rx, next: 0 };
        let (mut bytes, mut events, mut repeats, mut dups, mut new) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut sizes = (usize::MAX, 0usize);
        while let Some(batch) = feed.next().await {
            bytes += batch.body.len() as u64;
            events += batch.events;
            repeats += batch.repeats;
            if check && !s.gzip {
                for line in batch.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    sizes = (sizes.0.min(line.len()), sizes.1.max(line.len()));
                    let v: Value = serde_json::from_slice(line).expect("an event is JSON");
                    let id = v["transactionId"]
                        .as_str()
                        .expect("transactionId")
                        .to_owned();
                    let ts = v["timestamp"].as_i64().expect("timestamp");
                    assert!(ts >= work.window_start && ts < work.window_start + HOUR_MS);
                    if seen.insert(id) {
                        new += 1;
                    } else {
                        dups += 1;
                    }
                }
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let counts: u64 = threads
            .into_iter()
            .map(|t| t.join().unwrap().iter().sum::<u64>())
            .sum();
        assert_eq!(events, work.positions(phase));
        assert_eq!(repeats, work.repeats(phase));
        assert_eq!(counts, events - repeats);
        if check && !s.gzip {
            assert_eq!(
                (new, dups),
                (events - repeats, repeats),
                "unique and repeated ids"
            );
        }
        println!(
            "generated {events} events ({repeats} repeats{}) in {wall:.2} s = {:.0} events/s, {:.0} bytes each{}",
            if check && !s.gzip {
                ", every id checked"
            } else {
                ""
            },
            events as f64 / wall,
            bytes as f64 / events.max(1) as f64,
            if sizes.1 > 0 {
                format!(" ({} to {} bytes)", sizes.0, sizes.1)
            } else {
                String::new()
            }
        );
    }
    let top = work.zipf[0];
    println!(
        "the busiest subscription takes {:.1}% of the traffic",
        top * 100.0
    );
}
