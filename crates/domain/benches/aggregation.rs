//! The aggregation core alone (issue 7): transactions counted per (window, subscription, quota,
//! resource, success), each id once. `insert` starts from parsed transactions; `parse_insert`
//! starts from NDJSON lines in the agent-sdk LogEvent shape (reference §5.3), as push ingestion
//! and raw polling get them; `parse_only_insights` reads the same traffic as InsightsEvents v4
//! (§5.4).
//! Throughput is in transactions (criterion's "elements").
//!
//! `cargo bench -p billing-bridge-domain --bench aggregation`

use std::borrow::Cow;
use std::hint::black_box;

use billing_bridge_domain::transactions::{Aggregator, Group, Parsed, Transaction, parse_event};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// Transactions per measured pass; `cargo test --benches` (no `--bench` argument) runs a small
/// smoke pass instead.
fn n() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    }
}
const SUBS: usize = 1_000;
const HOUR: i64 = 3_600_000;
const START: i64 = 1_795_200_000_000;

/// A cheap deterministic mix (splitmix64), so the bench needs no RNG crate.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Workload {
    ids: Vec<String>,
    subs: Vec<String>,
    quotas: Vec<String>,
    picks: Vec<(usize, usize, bool, i64)>,
}

/// 2% of the transactions repeat an earlier id; subscriptions are skewed (squared uniform).
fn workload(n: usize) -> Workload {
    let subs = (0..SUBS).map(|s| format!("8a2e8c{s:026x}")).collect();
    let quotas = (0..SUBS * 2).map(|q| format!("8a2e9d{q:026x}")).collect();
    let mut ids: Vec<String> = Vec::with_capacity(n);
    let mut picks = Vec::with_capacity(n);
    for i in 0..n {
        let r = mix(i as u64);
        let id = if r.is_multiple_of(50) && i > 0 {
            ids[(r as usize / 50) % i].clone()
        } else {
            format!("{:016x}-{:08x}", mix(r), i)
        };
        ids.push(id);
        let u = (r >> 20) as f64 / (1u64 << 44) as f64;
        let sub = ((u * u) * SUBS as f64) as usize % SUBS;
        picks.push((
            sub,
            sub * 2 + (r as usize >> 8) % 2,
            !r.is_multiple_of(10),
            START + (r % HOUR as u64) as i64,
        ));
    }
    Workload {
        ids,
        subs,
        quotas,
        picks,
    }
}

fn ndjson(w: &Workload) -> Vec<String> {
    (0..w.ids.len())
        .map(|i| {
            let (sub, quota, ok, ts) = w.picks[i];
            format!(
                r#"{{"version":"1.0","timestamp":{ts},"transactionId":"{id}","environmentId":"env-1","tenantId":"100","type":"transactionSummary","transactionSummary":{{"status":"{status}","statusDetail":"200","duration":42,"team":{{"id":"team-1"}},"proxy":{{"id":"remoteApiId_pets","name":"pets","revision":1}},"entryPoint":{{"type":"http","method":"GET","path":"/v1/pets/7","host":"api.example.com"}},"product":{{"id":"prod-1","name":"weather","versionId":"v1","versionName":"1.0"}},"productPlan":{{"id":"plan-1"}},"quota":{{"id":"{quota}"}},"assetResource":{{"id":"ar-{q}","name":"pets-{q}"}},"consumerDetails":{{"subscription":{{"id":"{sub}","name":"sub"}},"application":{{"id":"app-1","name":"app","consumerOrgId":"org-1"}},"publishedProduct":{{"id":"pp-1","name":"weather"}},"marketplace":{{"guid":"mkt-1","consumerOrgId":"org-1"}}}}}}}}"#,
                id = w.ids[i],
                status = if ok { "Success" } else { "Failure" },
                quota = w.quotas[quota],
                q = quota % 2,
                sub = w.subs[sub],
            )
        })
        .collect()
}

/// The same traffic as `BuildTransactionV2Data` writes it.
fn ndjson_insights(w: &Workload) -> Vec<String> {
    (0..w.ids.len())
        .map(|i| {
            let (sub, quota, ok, ts) = w.picks[i];
            format!(
                r#"{{"id":"{fresh:032x}","org":"100","event":"api.transaction.summary","version":"4","timestamp":{ts},"distribution":{{"environment":"env-1"}},"data":{{"version":"2","apicDeployment":"prod","status":"{status}","statusDetail":"200","duration":42,"api":{{"id":"remoteApiId_pets","apiServiceId":"svc-1","name":"pets"}},"entryPoint":{{"method":"GET","path":"/v1/pets/7","host":"api.example.com"}},"assetResource":{{"id":"ar-{q}"}},"apiServiceRevision":{{"id":"rev-1"}},"product":{{"id":"prod-1","versionId":"v1"}},"productPlan":{{"id":"plan-1"}},"quota":{{"id":"{quota}"}},"consumerDetails":{{"consumerOrgId":"org-1","marketplace":{{"guid":"mkt-1"}},"application":{{"id":"app-1","consumerOrgId":"org-1"}},"publishedProduct":{{"id":"pp-1"}},"subscription":{{"id":"{sub}"}}}},"proxy":{{"id":"pets","name":"pets"}},"reporter":{{"version":"1.0","type":"traceability","agentSDKVersion":"1.1.152","agentName":"agent"}}}},"session":{{"id":"{id}"}}}}"#,
                fresh = mix(i as u64 ^ 0x5eed),
                id = w.ids[i],
                status = if ok { "Success" } else { "Failure" },
                quota = w.quotas[quota],
                q = quota % 2,
                sub = w.subs[sub],
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let n = n();
    let w = workload(n);
    let txs: Vec<Transaction<'_>> = (0..n)
        .map(|i| {
            let (sub, quota, ok, ts) = w.picks[i];
            Transaction {
                id: Cow::Borrowed(&w.ids[i]),
                timestamp_ms: ts,
                group: Group {
                    subscription: Cow::Borrowed(&w.subs[sub]),
                    quota: Cow::Borrowed(&w.quotas[quota]),
                    resource_id: Cow::Borrowed("ar-1"),
                    resource_name: Cow::Borrowed("pets"),
                    success: ok,
                },
            }
        })
        .collect();
    let mut group = c.benchmark_group("aggregation");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.bench_function("insert_1m_one_window", |b| {
        b.iter_batched(
            || Aggregator::new(HOUR),
            |mut agg| {
                let mut counted = 0u64;
                for tx in &txs {
                    counted += u64::from(agg.insert(tx));
                }
                black_box((counted, agg))
            },
            BatchSize::LargeInput,
        )
    });
    let lines = ndjson(&w);
    group.bench_function("parse_insert_1m_one_window", |b| {
        b.iter_batched(
            || Aggregator::new(HOUR),
            |mut agg| {
                let mut counted = 0u64;
                for line in &lines {
                    if let Ok(Parsed::Transaction(tx)) = parse_event(line.as_bytes()) {
                        counted += u64::from(agg.insert(&tx));
                    }
                }
                black_box((counted, agg))
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("parse_only_1m", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for line in &lines {
                if let Ok(Parsed::Transaction(tx)) = parse_event(line.as_bytes()) {
                    n += tx.timestamp_ms as u64 & 1;
                }
            }
            black_box(n)
        })
    });
    let insights = ndjson_insights(&w);
    group.bench_function("parse_only_insights_1m", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for line in &insights {
                if let Ok(Parsed::Transaction(tx)) = parse_event(line.as_bytes()) {
                    n += tx.timestamp_ms as u64 & 1;
                }
            }
            black_box(n)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
