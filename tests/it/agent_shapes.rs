//! Issue 12, black box: the traffic today's Amplify agents send (reference §5.3 LogEvents and §5.4
//! InsightsEvents v4, mixed) billed exactly per (subscription, add-on) through push, search and
//! summary; resources named by id, own name or `asset/resource`; ambiguous own names unmatched.
//!
//! Written from the references (§5.3, §5.4) and docs/ingest.md only, never from the bridge's or
//! the sandbox's code: every expectation is computed here from what the test sent.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::ingest::{
    INGEST_PATH, REFUSED, Rng, TRANSACTIONS, array_body, bearer, counts, ndjson_body, post_array,
    post_ingest, push_overrides, sample,
};
use crate::provisioning::{Provider, hooks, metrics, paid_plan_spec};
use crate::reporting::{
    Billed, Expected, Quota, closed_windows, inject, metric_sum, report, reporting_overrides, span,
    subscribe_billed, usage_totals,
};
use crate::support::{TestBridge, TestSandbox, bridge_sandbox, spawn_bridge};

const UNMATCHED: &str = "billing_bridge_usage_unmatched_units_total";

/// One asset resource a quota lists: `asset/resource` as the quota lists it, the resource's own
/// name (what a §5.3 agent sends), and its id as Amplify gives it in the quota's references.
#[derive(Debug, Clone)]
struct Resource {
    full: String,
    own: String,
    id: String,
}

#[derive(Debug, Clone)]
struct PlanQuota {
    quota: Quota,
    resources: Vec<Resource>,
}

struct Setup<'a> {
    bridge: TestBridge,
    _provider: Provider<'a>,
    quotas: Vec<PlanQuota>,
    subs: Vec<Billed>,
}

impl Setup<'_> {
    /// Own names that more than one quota of the plan lists.
    fn ambiguous_own_names(&self) -> BTreeSet<String> {
        let mut quotas_per_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for q in &self.quotas {
            for r in &q.resources {
                quotas_per_name
                    .entry(r.own.as_str())
                    .or_default()
                    .insert(q.quota.id.as_str());
            }
        }
        quotas_per_name
            .into_iter()
            .filter(|(_, quotas)| quotas.len() > 1)
            .map(|(name, _)| name.to_owned())
            .collect()
    }
}

/// The quotas of the `gold` plan: their asset resources across three assets, the own name `list`
/// listed by two quotas (assets `weather` and `maps`), every other own name unique in the plan.
fn plan_quotas() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        (
            "calls",
            json!({"type":"graduated","limit":{"type":"tiered","tiers":[{"from":1,"to":1000,"cost":0,"flatFee":0},{"from":1001,"to":999999999,"cost":0.002,"flatFee":0}]}}),
            vec!["weather/forecast", "weather/list"],
        ),
        (
            "bulk",
            json!({"type":"volume","limit":{"type":"tiered","tiers":[{"from":1,"to":100,"cost":1,"flatFee":0},{"from":101,"to":999999999,"cost":0.5,"flatFee":0}]}}),
            vec!["maps/list", "maps/tiles"],
        ),
        (
            "alerts",
            json!({"type":"perunit","cost":0.01}),
            vec!["alerts/push"],
        ),
    ]
}

/// The AssetResource ids Amplify gives a quota's resources: its `metadata.references` entries of
/// kind `AssetResource` (`id`, own `name`, `scopeName` = the asset; docs/ingest.md).
fn resource_ids(quota: &Value, listed: &[&str]) -> Vec<Resource> {
    let references = quota["metadata"]["references"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    listed
        .iter()
        .map(|full| {
            let (asset, own) = full.split_once('/').unwrap();
            let reference = references
                .iter()
                .find(|r| {
                    r["kind"] == "AssetResource" && r["name"] == own && r["scopeName"] == asset
                })
                .unwrap_or_else(|| {
                    panic!(
                        "the quota's metadata.references name AssetResource {own} of asset {asset} \
                         with its id (docs/ingest.md): {quota}"
                    )
                });
            let id = reference["id"]
                .as_str()
                .expect("an AssetResource id")
                .to_owned();
            assert!(!id.is_empty() && id != "unknown", "{reference}");
            Resource {
                full: full.to_string(),
                own: own.to_owned(),
                id,
            }
        })
        .collect()
}

/// Starts a bridge with `overrides`, activates the billed `gold` plan of `plan_quotas` and has
/// `subscribers` teams subscribe, each on its own Recurly account; returns once all are linked.
async fn setup<'a>(sb: &'a TestSandbox, overrides: &str, subscribers: usize) -> Setup<'a> {
    let bridge = spawn_bridge(sb, overrides).await;
    hooks(&bridge).await;
    let provider = Provider::new(sb).await;
    provider.product("weather", true).await;
    provider
        .plan("gold", "Gold", "weather", paid_plan_spec("weather"))
        .await;
    let mut names = Vec::new();
    for (name, pricing, resources) in plan_quotas() {
        let listed: Vec<Value> = resources
            .iter()
            .map(|r| json!({"kind": "AssetResource", "name": r}))
            .collect();
        provider
            .create(
                "/catalog/v1/productplans/gold/quotas",
                json!({"group": "catalog", "apiVersion": "v1", "kind": "Quota", "name": name, "title": name,
                       "metadata": {"scope": {"kind": "ProductPlan", "name": "gold"}},
                       "spec": {"unit": "transactions", "pricing": pricing, "resources": listed}}),
            )
            .await;
        names.push((name, resources));
    }
    provider.activate("gold").await;
    provider.linked("gold").await;
    let mut quotas = Vec::new();
    for (name, resources) in names {
        // Read back as the bridge reads quotas, with their references.
        let read = provider
            .get(&format!("/catalog/v1/productplans/gold/quotas/{name}"))
            .await;
        let resources = resource_ids(&read, &resources);
        quotas.push(PlanQuota {
            quota: Quota {
                name: name.to_owned(),
                id: read["metadata"]["id"]
                    .as_str()
                    .expect("quota id")
                    .to_owned(),
                resource: resources[0].full.clone(),
                resources: resources.iter().map(|r| r.full.clone()).collect(),
                resource_ids: resources.iter().map(|r| r.id.clone()).collect(),
            },
            resources,
        });
    }
    let subs = subscribe_billed(sb, &provider, "gold", subscribers).await;
    Setup {
        bridge,
        _provider: provider,
        quotas,
        subs,
    }
}

// ---------------------------------------------------------------------------------------------
// The two shapes, as the references describe them

/// What a transaction names; `None` is an unresolved reference (§5.3: the literal `"unknown"`;
/// §5.4: absent).
#[derive(Debug, Clone, Default)]
struct Names {
    subscription: Option<String>,
    quota: Option<String>,
    resource_id: Option<String>,
    /// §5.3 only (v4 carries no name).
    resource_name: Option<String>,
}

/// A §5.3 `transactionSummary` LogEvent (SDK: every reference present, `"unknown"` when unresolved).
fn log_event(tx: &str, timestamp: i64, names: &Names, status: &str) -> Value {
    let known = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".to_owned());
    json!({"version": "1.0", "timestamp": timestamp, "transactionId": tx, "environmentId": "env-1",
           "tenantId": "100000142", "type": "transactionSummary",
           "transactionSummary": {
               "status": status, "statusDetail": if status == "Success" { "200" } else { "500" },
               "duration": 61, "team": {"id": "provider-team"},
               "proxy": {"id": "remoteApiId_weather", "name": "weather", "revision": 1},
               "entryPoint": {"type": "http", "method": "GET", "path": "/v1/forecast", "host": "api.example"},
               "application": {"id": "remoteAppId_app-1", "name": "app-1"},
               "product": {"id": "unknown", "name": "weather", "versionId": "unknown", "versionName": "1.0"},
               "productPlan": {"id": "unknown"},
               "quota": {"id": known(&names.quota)},
               "assetResource": {"id": known(&names.resource_id), "name": known(&names.resource_name)},
               "consumerDetails": {
                   "subscription": {"id": known(&names.subscription), "name": "unknown"},
                   "application": {"id": "consumer-app", "name": "Consumer app", "consumerOrgId": "org-9"},
                   "publishedProduct": {"id": "unknown", "name": "unknown"},
                   "marketplace": {"guid": "unknown", "consumerOrgId": "org-9"}}}})
}

/// A §5.4 InsightsEvent v4 `api.transaction.summary` (unresolved references absent), built with
/// top-level id `build`.
fn insights_event(tx: &str, build: &str, timestamp: i64, names: &Names, status: &str) -> Value {
    let mut data = json!({
        "version": "2", "apicDeployment": "prod", "status": status,
        "statusDetail": if status == "Success" { "200" } else { "500" }, "duration": 61,
        "api": {"id": "remoteApiId_weather", "apiServiceId": "svc-1", "name": "weather"},
        "entryPoint": {"method": "GET", "path": "/v1/forecast", "host": "api.example"},
        "apiServiceRevision": {"id": "rev-1"},
        "consumerDetails": {"consumerOrgId": "org-9",
                            "application": {"id": "consumer-app", "consumerOrgId": "org-9"}},
        "proxy": {"id": "remoteApiId_weather", "name": "weather"},
        "reporter": {"version": "1.0.0", "type": "traceability", "agentSDKVersion": "1.1.152",
                     "agentName": "gateway-agent"}
    });
    if let Some(sub) = &names.subscription {
        data["consumerDetails"]["subscription"] = json!({"id": sub});
    }
    if let Some(quota) = &names.quota {
        data["quota"] = json!({"id": quota});
    }
    if let Some(id) = &names.resource_id {
        data["assetResource"] = json!({"id": id});
    }
    json!({"id": build, "org": "100000142", "event": "api.transaction.summary", "version": "4",
           "timestamp": timestamp, "distribution": {"environment": "env-1"}, "data": data,
           "session": {"id": tx}})
}

/// A §5.4 leg (`api.transaction.event`) of transaction `tx`: not billable.
fn insights_leg(tx: &str, timestamp: i64) -> Value {
    json!({"id": uuid::Uuid::new_v4().to_string(), "org": "100000142",
           "event": "api.transaction.event", "version": "4", "timestamp": timestamp,
           "distribution": {"environment": "env-1"},
           "data": {"version": "2", "id": format!("leg-{tx}"), "parentId": null, "source": "gateway",
                    "destination": "backend", "direction": "outbound", "status": "Pass",
                    "protocol": {"type": "http", "uri": "/v1/forecast", "method": "GET", "status": 200}},
           "session": {"id": tx}})
}

/// A §5.3 leg (`transactionEvent`) of transaction `tx`: not billable.
fn log_leg(tx: &str, timestamp: i64) -> Value {
    json!({"version": "1.0", "timestamp": timestamp, "transactionId": tx, "environmentId": "env-1",
           "type": "transactionEvent",
           "transactionEvent": {"id": format!("leg-{tx}"), "parentId": null, "source": "gateway",
                                "destination": "backend", "direction": "outbound", "status": "Pass",
                                "protocol": {"type": "http", "uri": "/v1/forecast", "method": "GET",
                                             "status": 200}}})
}

// ---------------------------------------------------------------------------------------------
// A mixed workload and what it must bill

/// A stream of events in sending order, and what billing it must come to.
struct Mixed {
    /// Batches in sending order (the stream cut in three).
    batches: Vec<Vec<Value>>,
    expected: Expected,
    /// (accepted, duplicates, ignored) per batch, as push must answer.
    answers: Vec<(u64, u64, u64)>,
    /// Units of unique transactions of no known subscription.
    unmatched_subscription: u64,
    /// Units of unique transactions naming only an own name two quotas share.
    ambiguous: u64,
    /// Tallies, to be sure the workload exercises what it claims.
    v4: u64,
    seconds: u64,
    cross_shape_repeats: u64,
    own_name_only: u64,
    id_only: u64,
    full_name_only: u64,
    shared_build_ids: u64,
}

/// A transaction's time: epoch ms, or seconds (what an agent that never sets a timestamp sends).
fn stamp(ms: i64, seconds: bool) -> i64 {
    if seconds { ms / 1000 } else { ms }
}

fn mixed(seed: u64, unique: usize, s: &Setup<'_>, windows: &[(i64, i64)], legs: bool) -> Mixed {
    let mut rng = Rng(seed);
    let ambiguous_names = s.ambiguous_own_names();
    assert!(ambiguous_names.contains("list"), "{ambiguous_names:?}");
    let mut m = Mixed {
        batches: Vec::new(),
        expected: Expected::default(),
        answers: Vec::new(),
        unmatched_subscription: 0,
        ambiguous: 0,
        v4: 0,
        seconds: 0,
        cross_shape_repeats: 0,
        own_name_only: 0,
        id_only: 0,
        full_name_only: 0,
        shared_build_ids: 0,
    };
    // (position key, event, kind) where kind is 0 an original, 1 a copy, 2 a leg; copies and legs
    // are placed after their original so the original is the one taken (push) and the older one
    // (search) alike.
    let mut stream: Vec<(u64, Value, u8)> = Vec::new();
    for i in 0..unique {
        let tx = format!("tx{seed}-{i:05}");
        let w = rng.below(windows.len() as u64) as usize;
        let window = windows[w];
        // Whole seconds, so that a seconds timestamp falls where its milliseconds do.
        let ms = window.0 + 1000 * rng.below(((window.1 - window.0) / 1000) as u64) as i64;
        let status =
            ["Success", "Success", "Success", "Failure", "Exception"][rng.below(5) as usize];
        let q = &s.quotas[rng.below(s.quotas.len() as u64) as usize];
        let r = &q.resources[rng.below(q.resources.len() as u64) as usize];
        let sub = &s.subs[rng.below(s.subs.len() as u64) as usize];
        let mut names = Names {
            subscription: Some(sub.amplify_id.clone()),
            ..Names::default()
        };
        let mut billed = true;
        // The naming: 0 quota id + resource id + own name, 1 resource id (+ own name in §5.3),
        // 2 own name only, 3 `asset/resource` only, 4 an own name two quotas share, 5 no known
        // subscription.
        let naming = rng.below(100);
        let naming = match naming {
            0..=19 => 0,
            20..=44 => 1,
            45..=69 => 2,
            70..=89 => 3,
            90..=94 => 4,
            _ => 5,
        };
        // v4 carries no name: a transaction named by name only is a §5.3 one.
        let v4 = matches!(naming, 0 | 1 | 5) && rng.chance(55);
        match naming {
            0 => {
                names.quota = Some(q.quota.id.clone());
                names.resource_id = Some(r.id.clone());
                names.resource_name = Some(r.own.clone());
            }
            1 => {
                names.resource_id = Some(r.id.clone());
                names.resource_name = Some(r.own.clone());
                m.id_only += 1;
            }
            2 => {
                // An own name only: when it is shared, the id would have to decide; here it
                // is the unique `asset/resource` instead.
                names.resource_name = Some(if ambiguous_names.contains(&r.own) {
                    r.full.clone()
                } else {
                    m.own_name_only += 1;
                    r.own.clone()
                });
            }
            3 => {
                names.resource_name = Some(r.full.clone());
                m.full_name_only += 1;
            }
            4 => {
                names.resource_name = Some("list".to_owned());
                billed = false;
                m.ambiguous += 1;
            }
            _ => {
                names.subscription = None;
                names.quota = Some(q.quota.id.clone());
                names.resource_id = Some(r.id.clone());
                names.resource_name = Some(r.own.clone());
                billed = false;
                m.unmatched_subscription += 1;
            }
        }
        if billed {
            m.expected.add(sub, &q.quota, window.0, 1);
        }
        let seconds = rng.chance(40);
        m.seconds += seconds as u64;
        m.v4 += v4 as u64;
        let build = if v4 && rng.chance(25) {
            // The top-level id of a v4 event is no dedupe key: other transactions share it.
            m.shared_build_ids += 1;
            "shared-build-id".to_owned()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        let original = if v4 {
            insights_event(&tx, &build, stamp(ms, seconds), &names, status)
        } else {
            log_event(&tx, stamp(ms, seconds), &names, status)
        };
        let position = rng.below(1_000_000) * 8;
        if legs && rng.chance(10) {
            // A leg of the same transaction (same id) before the summary: ignored, and it must
            // not make the summary a repeat.
            let leg = if v4 {
                insights_leg(&tx, stamp(ms, seconds))
            } else {
                log_leg(&tx, stamp(ms, seconds))
            };
            stream.push((position, leg, 2));
        }
        stream.push((position + 1, original, 0));
        if rng.chance(35) {
            // The same transaction again, mostly in the other shape, same time or later.
            // An ambiguous one stays a §5.3 event: a v4 copy would name the resource by id.
            let other_shape = naming != 4 && rng.chance(70);
            let copy_v4 = if other_shape { !v4 } else { v4 };
            let later = if rng.chance(50) {
                ms
            } else {
                let last = windows[windows.len() - 1].1;
                ms + 1000 * rng.below(((last - ms) / 1000).max(1) as u64) as i64
            };
            let mut copy_names = names.clone();
            if copy_v4 && copy_names.resource_id.is_none() {
                // v4 has no name; its agent resolved the resource by id.
                copy_names.resource_id = Some(r.id.clone());
            }
            if !copy_v4 && copy_names.resource_name.is_none() {
                copy_names.resource_name = Some(r.own.clone());
            }
            let copy = if copy_v4 {
                insights_event(
                    &tx,
                    &uuid::Uuid::new_v4().to_string(),
                    stamp(later, rng.chance(40)),
                    &copy_names,
                    status,
                )
            } else {
                log_event(&tx, stamp(later, rng.chance(40)), &copy_names, status)
            };
            m.cross_shape_repeats += other_shape as u64;
            stream.push((position + 2 + rng.below(4_000_000) * 8, copy, 1));
        }
    }
    stream.sort_by_key(|(p, _, _)| *p);
    let cut1 = stream.len() / 3;
    let cut2 = 2 * stream.len() / 3;
    for range in [0..cut1, cut1..cut2, cut2..stream.len()] {
        let part = &stream[range];
        m.answers.push((
            part.iter().filter(|(_, _, k)| *k == 0).count() as u64,
            part.iter().filter(|(_, _, k)| *k == 1).count() as u64,
            part.iter().filter(|(_, _, k)| *k == 2).count() as u64,
        ));
        m.batches
            .push(part.iter().map(|(_, e, _)| e.clone()).collect());
    }
    m
}

fn assert_exercises(m: &Mixed) {
    for (what, n) in [
        ("v4 events", m.v4),
        ("seconds timestamps", m.seconds),
        ("repeats across shapes", m.cross_shape_repeats),
        ("own names only", m.own_name_only),
        ("ids only", m.id_only),
        ("asset/resource only", m.full_name_only),
        ("shared v4 build ids", m.shared_build_ids),
        ("ambiguous own names", m.ambiguous),
        ("unknown subscriptions", m.unmatched_subscription),
    ] {
        assert!(n >= 5, "the workload has {what}: {n}");
    }
}

/// The run's summary bills exactly `m` and Recurly holds exactly that.
async fn assert_billed_exactly(sb: &TestSandbox, summary: &Value, m: &Mixed) {
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(
        (&summary["units"], &summary["records"]),
        (&json!(m.expected.units()), &json!(m.expected.records())),
        "{summary}"
    );
    assert_eq!(
        summary["unmatched_units"],
        m.unmatched_subscription + m.ambiguous,
        "{summary}"
    );
    assert_eq!(usage_totals(sb).await, m.expected.totals());
}

/// `billing_bridge_usage_unmatched_units_total` per reason.
fn unmatched_metric(text: &str) -> (f64, f64, f64) {
    (
        metric_sum(text, UNMATCHED, "reason=\"subscription\""),
        metric_sum(text, UNMATCHED, "reason=\"resource\""),
        metric_sum(text, UNMATCHED, "reason=\"ambiguous_resource\""),
    )
}

// ---------------------------------------------------------------------------------------------
// Push

#[actix_rt::test]
async fn pushed_mixed_shapes_names_ids_and_seconds_with_repeats_are_billed_exactly() {
    let sb = bridge_sandbox().await;
    let s = setup(&sb, &push_overrides("", ""), 2).await;
    let windows = closed_windows(3);
    let m = mixed(1201, 700, &s, &windows, true);
    assert_exercises(&m);
    for (k, batch) in m.batches.iter().enumerate() {
        // Alternately a JSON array and NDJSON.
        let (body, content_type) = if k % 2 == 0 {
            (array_body(batch), "application/json")
        } else {
            (ndjson_body(batch), "application/x-ndjson")
        };
        let answer = post_ingest(
            &sb,
            &s.bridge.url,
            Some(&bearer()),
            None,
            Some(content_type),
            body,
        )
        .await;
        assert_eq!(answer.status, 200, "batch {k}: {}", answer.text);
        let (received, accepted, duplicates, ignored, refused) = counts(&answer.body);
        let (want_accepted, want_duplicates, want_ignored) = m.answers[k];
        assert_eq!(
            (received, accepted, duplicates, ignored, refused),
            (
                batch.len() as u64,
                want_accepted,
                want_duplicates,
                want_ignored,
                0
            ),
            "batch {k} to {INGEST_PATH}: {}",
            answer.text
        );
    }
    let text = metrics(&sb, &s.bridge).await;
    let total = |outcome: &str| sample(&text, TRANSACTIONS, &format!("outcome=\"{outcome}\""));
    let sum = |f: fn(&(u64, u64, u64)) -> u64| m.answers.iter().map(f).sum::<u64>() as f64;
    assert_eq!(total("accepted"), sum(|a| a.0));
    assert_eq!(total("duplicate"), sum(|a| a.1));
    assert_eq!(total("ignored"), sum(|a| a.2));
    assert_eq!(total("refused"), 0.0);

    let summary = report(&sb, &s.bridge.url, Some(&span(&windows))).await;
    assert_billed_exactly(&sb, &summary, &m).await;
    let text = metrics(&sb, &s.bridge).await;
    assert_eq!(
        unmatched_metric(&text),
        (m.unmatched_subscription as f64, 0.0, m.ambiguous as f64),
        "{}",
        text.lines()
            .filter(|l| l.starts_with(UNMATCHED))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Everything again in one batch: all repeats (legs still ignored).
    let mut again = Vec::new();
    for batch in &m.batches {
        again.extend(batch.iter().cloned());
    }
    let answer = post_array(&sb, &s.bridge.url, &again).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let (_, accepted, duplicates, ignored, refused) = counts(&answer.body);
    let legs: u64 = m.answers.iter().map(|a| a.2).sum();
    assert_eq!(
        (accepted, duplicates, ignored, refused),
        (0, again.len() as u64 - legs, legs, 0),
        "{}",
        answer.text
    );
    let rerun = report(&sb, &s.bridge.url, Some(&span(&windows))).await;
    assert_eq!(
        (&rerun["records"], &rerun["units"]),
        (&json!(0), &json!(0)),
        "{rerun}"
    );
    assert_eq!(usage_totals(&sb).await, m.expected.totals());
}

#[actix_rt::test]
async fn a_transaction_sent_in_both_shapes_counts_once_and_the_v4_top_level_id_is_no_key() {
    let sb = bridge_sandbox().await;
    let s = setup(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, q) = (&s.subs[0], &s.quotas[2]);
    let r = &q.resources[0];
    let names = Names {
        subscription: Some(sub.amplify_id.clone()),
        quota: None,
        resource_id: Some(r.id.clone()),
        resource_name: Some(r.own.clone()),
    };
    let at = window.0 + 5_000;
    // a: LogEvent then v4; b: v4 (seconds) then LogEvent; c and d: two v4 transactions built
    // with the same top-level id; e: a v4 leg of f before f itself.
    let batch = vec![
        log_event("a", at, &names, "Success"),
        insights_event("a", "build-1", at, &names, "Success"),
        insights_event("b", "build-2", at / 1000, &names, "Success"),
        log_event("b", at + 1000, &names, "Success"),
        insights_event("c", "same-build", at, &names, "Success"),
        insights_event("d", "same-build", at, &names, "Failure"),
        insights_leg("f", at),
        insights_event("f", "build-3", at, &names, "Success"),
    ];
    let answer = post_array(&sb, &s.bridge.url, &batch).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        counts(&answer.body),
        (8, 5, 2, 1, 0),
        "a, b, c, d, f accepted once; the second a and b duplicates; the leg ignored: {}",
        answer.text
    );
    // A later batch: c again as a LogEvent, d again as v4 with a new build id: duplicates.
    let later = vec![
        log_event("c", at + 2000, &names, "Success"),
        insights_event("d", "build-9", at, &names, "Failure"),
    ];
    let answer = post_array(&sb, &s.bridge.url, &later).await;
    assert_eq!(counts(&answer.body), (2, 0, 2, 0, 0), "{}", answer.text);
    report(&sb, &s.bridge.url, Some(&span(&[window]))).await;
    let mut expected = Expected::default();
    expected.add(sub, &q.quota, window.0, 5);
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

// ---------------------------------------------------------------------------------------------
// Search

#[actix_rt::test]
async fn searched_mixed_shapes_names_ids_and_seconds_with_repeats_are_billed_exactly() {
    let sb = bridge_sandbox().await;
    let s = setup(
        &sb,
        &reporting_overrides("source = \"search\"\npage_size = 100", ""),
        2,
    )
    .await;
    let windows = closed_windows(3);
    // No legs: the sandbox's Traceability takes only transaction summaries (README,
    // `POST /_sandbox/traffic`).
    let m = mixed(1202, 700, &s, &windows, false);
    assert_exercises(&m);
    for batch in &m.batches {
        for chunk in batch.chunks(400) {
            inject(&sb, chunk).await;
        }
    }
    let summary = report(&sb, &s.bridge.url, Some(&span(&windows))).await;
    assert_billed_exactly(&sb, &summary, &m).await;
    let text = metrics(&sb, &s.bridge).await;
    assert_eq!(
        unmatched_metric(&text),
        (m.unmatched_subscription as f64, 0.0, m.ambiguous as f64),
    );
    let rerun = report(&sb, &s.bridge.url, Some(&span(&windows))).await;
    assert_eq!(
        (&rerun["records"], &rerun["units"]),
        (&json!(0), &json!(0)),
        "{rerun}"
    );
    assert_eq!(usage_totals(&sb).await, m.expected.totals());
}

// ---------------------------------------------------------------------------------------------
// Summary

/// How summary traffic that must be matched by name carries its resource id.
#[derive(Clone, Copy)]
enum NameOnlyId {
    /// An id no quota of the plan lists (a resource of another release, say): distinct per name.
    Foreign,
    /// The SDK's unresolved reference, `"unknown"`, the same for every name.
    Unknown,
}

/// Traffic stored in Traceability for the summary source: every resource of the plan named by
/// its own name alone, by its id with its own name, and by `asset/resource` alone, per
/// subscription and window, plus traffic naming only `list`, the own name two quotas share. The
/// run bills exactly the first three, lists the `list` traffic as `ambiguous_resource` in its
/// dry run and counts it in the unmatched metric.
async fn summary_case(seed: u64, name_only_id: NameOnlyId) {
    let sb = bridge_sandbox().await;
    let s = setup(&sb, &reporting_overrides("", ""), 2).await;
    let windows = closed_windows(2);
    let id_for = |name: &str| match name_only_id {
        NameOnlyId::Foreign => Some(format!("retired-{name}")),
        NameOnlyId::Unknown => None,
    };
    let mut rng = Rng(seed);
    let mut events = Vec::new();
    let mut expected = Expected::default();
    let mut ambiguous: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut by_kind = [0u64; 4];
    for (w, window) in windows.iter().enumerate() {
        for sub in &s.subs {
            for q in &s.quotas {
                for r in &q.resources {
                    for kind in 0..3 {
                        let units = 1 + rng.below(4);
                        let names = match kind {
                            // `list` alone is the ambiguous case below.
                            0 if r.own == "list" => continue,
                            0 => Names {
                                resource_id: id_for(&r.own),
                                resource_name: Some(r.own.clone()),
                                ..Names::default()
                            },
                            1 => Names {
                                resource_id: Some(r.id.clone()),
                                resource_name: Some(r.own.clone()),
                                ..Names::default()
                            },
                            _ => Names {
                                resource_id: id_for(&r.full),
                                resource_name: Some(r.full.clone()),
                                ..Names::default()
                            },
                        };
                        let names = Names {
                            subscription: Some(sub.amplify_id.clone()),
                            ..names
                        };
                        for k in 0..units {
                            let at = window.0 + 1000 * (k as i64 + 7 * kind + 3 * w as i64);
                            events.push(log_event(
                                &uuid::Uuid::new_v4().to_string(),
                                at,
                                &names,
                                "Success",
                            ));
                        }
                        by_kind[kind as usize] += units;
                        expected.add(sub, &q.quota, window.0, units);
                    }
                }
            }
            // `list` alone, with no id a quota lists: two quotas list a resource of that name.
            let units = 2 + rng.below(3);
            let names = Names {
                subscription: Some(sub.amplify_id.clone()),
                resource_id: id_for("list"),
                resource_name: Some("list".to_owned()),
                ..Names::default()
            };
            for k in 0..units {
                events.push(log_event(
                    &uuid::Uuid::new_v4().to_string(),
                    window.0 + 500 + 1000 * k as i64,
                    &names,
                    "Success",
                ));
            }
            *ambiguous
                .entry((sub.amplify_id.clone(), window.0))
                .or_default() += units;
            by_kind[3] += units;
        }
    }
    assert!(by_kind.iter().all(|n| *n > 0), "{by_kind:?}");
    inject(&sb, &events).await;
    let ambiguous_units: u64 = ambiguous.values().sum();

    let summary = report(&sb, &s.bridge.url, Some(&span(&windows))).await;
    assert_eq!(summary["complete"], true, "{summary}");
    let billed = usage_totals(&sb).await;
    assert_eq!(
        (&summary["units"], &summary["unmatched_units"]),
        (&json!(expected.units()), &json!(ambiguous_units)),
        "billed per (Recurly subscription, add-on) {billed:?}, expected {:?}: {summary}",
        expected.totals()
    );
    assert_eq!(billed, expected.totals());
    let text = metrics(&sb, &s.bridge).await;
    assert_eq!(
        unmatched_metric(&text),
        (0.0, 0.0, ambiguous_units as f64),
        "{}",
        text.lines()
            .filter(|l| l.starts_with(UNMATCHED))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The dry run lists the ambiguous traffic per subscription and window, with its reason.
    let mut body = span(&windows);
    body["dry_run"] = json!(true);
    let dry = report(&sb, &s.bridge.url, Some(&body)).await;
    let mut listed: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for window in dry["windows"].as_array().expect("windows in a dry run") {
        for u in window["unmatched"]
            .as_array()
            .unwrap_or_else(|| panic!("unmatched rows in a dry run: {dry}"))
        {
            assert_eq!(u["reason"], "ambiguous_resource", "{u}");
            assert_eq!(u["asset_resource"], "list", "{u}");
            *listed
                .entry((
                    u["subscription_id"].as_str().unwrap().to_owned(),
                    window["start_ms"].as_i64().unwrap(),
                ))
                .or_default() += u["units"].as_u64().unwrap();
        }
    }
    assert_eq!(listed, ambiguous, "{dry}");
    assert_eq!(
        usage_totals(&sb).await,
        expected.totals(),
        "a dry run bills nothing"
    );
}

#[actix_rt::test]
async fn summary_rows_naming_resources_by_own_names_are_billed_and_an_ambiguous_name_is_unmatched()
{
    summary_case(1203, NameOnlyId::Foreign).await;
}

/// The same with the SDK's unresolved id, `"unknown"`, on every row matched by name: rows of
/// different names must not be merged under that one id.
#[actix_rt::test]
async fn summary_rows_with_an_unknown_resource_id_are_billed_by_their_names() {
    summary_case(1204, NameOnlyId::Unknown).await;
}

// ---------------------------------------------------------------------------------------------
// Field sizes

/// `n` bytes of `c` (a multi-byte character), plus single bytes to make up the rest.
fn bytes_of(c: char, n: usize) -> String {
    let mut s = c.to_string().repeat(n / c.len_utf8());
    s.push_str(&"x".repeat(n - s.len()));
    assert_eq!(s.len(), n);
    s
}

#[actix_rt::test]
async fn ids_and_names_over_512_bytes_are_refused_invalid_naming_the_field() {
    let sb = bridge_sandbox().await;
    let s = setup(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, q) = (&s.subs[0], &s.quotas[0]);
    let r = &q.resources[0];
    let at = window.0 + 1000;
    let good = Names {
        subscription: Some(sub.amplify_id.clone()),
        quota: Some(q.quota.id.clone()),
        resource_id: Some(r.id.clone()),
        resource_name: Some(r.own.clone()),
    };
    let huge = bytes_of('é', 70_000);
    assert_eq!(huge.chars().count(), 35_000);
    let with = |f: &dyn Fn(&mut Names)| {
        let mut n = good.clone();
        f(&mut n);
        n
    };
    // (event, the field its refusal must name)
    let refused: Vec<(Value, &str)> = vec![
        (log_event(&huge, at, &good, "Success"), "transactionId"),
        (
            insights_event(&bytes_of('€', 70_000), "b1", at, &good, "Success"),
            "session.id",
        ),
        (
            log_event(
                "big-name",
                at,
                &with(&|n| n.resource_name = Some(bytes_of('𝄞', 70_000))),
                "Success",
            ),
            "assetResource.name",
        ),
        (
            insights_event(
                "big-resource-id",
                "b2",
                at,
                &with(&|n| n.resource_id = Some(huge.clone())),
                "Success",
            ),
            "assetResource.id",
        ),
        (
            log_event(
                "big-subscription",
                at,
                &with(&|n| n.subscription = Some(huge.clone())),
                "Success",
            ),
            "subscription.id",
        ),
        (
            insights_event(
                "big-quota",
                "b3",
                at,
                &with(&|n| n.quota = Some(huge.clone())),
                "Success",
            ),
            "quota.id",
        ),
        // 257 two-byte characters: 514 bytes, though fewer than 512 characters.
        (
            log_event(
                "just-over",
                at,
                &with(&|n| n.resource_name = Some(bytes_of('é', 514))),
                "Success",
            ),
            "assetResource.name",
        ),
    ];
    // At the limit (512 bytes, 256 characters) is taken, and so are ordinary events around.
    let at_limit = bytes_of('é', 512);
    let mut batch = vec![log_event("ok-1", at, &good, "Success")];
    for (event, _) in &refused {
        batch.push(event.clone());
    }
    batch.push(insights_event(&at_limit, "b4", at, &good, "Success"));
    batch.push(log_event("ok-2", at + 1, &good, "Success"));
    let answer = post_array(&sb, &s.bridge.url, &batch).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        &answer.text[..answer.text.len().min(2000)]
    );
    assert_eq!(
        counts(&answer.body),
        (batch.len() as u64, 3, 0, 0, refused.len() as u64),
        "{}",
        &answer.text[..answer.text.len().min(2000)]
    );
    assert!(
        answer.text.len() < 70_000,
        "the answer does not echo a 70,000-byte id: {} bytes",
        answer.text.len()
    );
    let listed = answer.body["refusals"].as_array().unwrap();
    for (k, (_, field)) in refused.iter().enumerate() {
        let index = k as u64 + 1;
        let refusal = listed
            .iter()
            .find(|r| r["index"] == index)
            .unwrap_or_else(|| panic!("a refusal of event {index}"));
        assert_eq!(refusal["reason"], "invalid", "event {index}");
        let detail = refusal["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(field),
            "the detail of event {index} names {field}: {}",
            &detail[..detail.len().min(300)]
        );
    }
    let text = metrics(&sb, &s.bridge).await;
    assert_eq!(
        sample(&text, REFUSED, "reason=\"invalid\""),
        refused.len() as f64
    );
    report(&sb, &s.bridge.url, Some(&span(&[window]))).await;
    let mut expected = Expected::default();
    expected.add(sub, &q.quota, window.0, 3);
    assert_eq!(usage_totals(&sb).await, expected.totals());
}

#[actix_rt::test]
async fn a_refusal_for_an_oversized_field_names_the_transaction_id_it_could_read() {
    let sb = bridge_sandbox().await;
    let s = setup(&sb, &push_overrides("", ""), 1).await;
    let window = closed_windows(1)[0];
    let (sub, q) = (&s.subs[0], &s.quotas[0]);
    let names = Names {
        subscription: Some(sub.amplify_id.clone()),
        quota: Some(q.quota.id.clone()),
        resource_id: Some(q.resources[0].id.clone()),
        resource_name: Some(bytes_of('é', 600)),
    };
    let v4_names = Names {
        quota: Some(bytes_of('€', 600)),
        ..names.clone()
    };
    let batch = vec![
        log_event("readable-1", window.0 + 1000, &names, "Success"),
        insights_event("readable-2", "b1", window.0 + 1000, &v4_names, "Success"),
    ];
    let answer = post_array(&sb, &s.bridge.url, &batch).await;
    assert_eq!(counts(&answer.body), (2, 0, 0, 0, 2), "{}", answer.text);
    // docs/ingest.md: "`transactionId` in a refusal is the event's transaction id (`session.id`
    // for v4) when it could be read".
    let ids: Vec<(u64, Value)> = answer.body["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["transactionId"].clone()))
        .collect();
    assert_eq!(
        ids,
        vec![(0, json!("readable-1")), (1, json!("readable-2"))],
        "{}",
        answer.text
    );
}
