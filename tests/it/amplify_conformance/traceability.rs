//! Traceability summary (§5.1) and search (§5.2) over transaction summaries, §5.3 LogEvents and
//! §5.4 InsightsEvents v4, injected with `POST /_sandbox/traffic` or made by the seeded generator
//! (`POST /_sandbox/traffic/generate`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::client::{Amplify, CONSUMER_ORG, MARKETPLACE, ORG_ID, Resp, quota_body};

const SUMMARY: &str = "/amplify/api/traceability/v1/traceability/summary";
const FROM: u64 = 1_700_000_000_000;
const TO: u64 = FROM + 3_600_000;

/// A §5.3 transaction summary event for one subscription and asset resource.
fn event(ts: u64, sub: &str, asset: &str, status: &str, duration: u64) -> Value {
    json!({
        "version": "1.0", "timestamp": ts, "transactionId": uuid::Uuid::new_v4().to_string(),
        "environmentId": "env-1", "tenantId": ORG_ID, "type": "transactionSummary",
        "transactionSummary": {
            "status": status, "statusDetail": if status == "Success" { "200" } else { "500" },
            "duration": duration,
            "team": {"id": "provider-team"},
            "proxy": {"id": "remoteApiId_weather", "name": "weather", "revision": 1},
            "entryPoint": {"type": "http", "method": "GET", "path": "/v1/current", "host": "api.example.com"},
            "application": {"id": "app-1", "name": "Weather app"},
            "product": {"id": "prod-id-1", "name": "weather"},
            "productPlan": {"id": "plan-id-1"},
            "quota": {"id": "quota-id-1"},
            "assetResource": {"id": format!("{asset}-id"), "name": asset},
            "consumerDetails": {
                "subscription": {"id": format!("{sub}-id"), "name": sub},
                "application": {"id": "capp-1", "name": "Consumer app", "consumerOrgId": CONSUMER_ORG},
                "publishedProduct": {"id": "pp-1", "name": "weather"},
                "marketplace": {"guid": MARKETPLACE, "consumerOrgId": CONSUMER_ORG}
            }
        }
    })
}

async fn inject(amp: &Amplify, events: &[Value]) {
    let resp = amp
        .sb
        .http
        .post(amp.sb.at("/_sandbox/traffic"))
        .json(&events)
        .send()
        .await
        .unwrap();
    let body = Resp::from(resp).await.expect(200, "inject traffic");
    assert_eq!(
        body["accepted"].as_u64(),
        Some(events.len() as u64),
        "{body}"
    );
}

async fn summary(amp: &Amplify, params: &[(&str, String)]) -> Resp {
    let req = amp.sb.http.get(amp.sb.at(SUMMARY)).query(params);
    amp.send(req).await
}

fn window_params(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut params = vec![
        ("groupBy", "subscriptionId".to_owned()),
        ("groupBy", "assetResourceId".to_owned()),
        ("from", FROM.to_string()),
        ("to", TO.to_string()),
    ];
    params.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    params
}

/// Rows keyed by (subscriptionId, assetResourceId).
fn by_pair(rows: &Value) -> BTreeMap<(String, String), Value> {
    rows.as_array()
        .unwrap_or_else(|| panic!("§5.1 summary is a JSON array: {rows}"))
        .iter()
        .map(|r| {
            let key = (
                r["subscriptionId"].as_str().unwrap_or("").to_owned(),
                r["assetResourceId"].as_str().unwrap_or("").to_owned(),
            );
            (key, r.clone())
        })
        .collect()
}

fn key(sub: &str, asset: &str) -> (String, String) {
    (format!("{sub}-id"), format!("{asset}-id"))
}

/// A/X: 3 ok, 1 failure, 1 exception inside; 2 ok outside. A/Y: 2 ok. B/X: 1 failure.
fn sample_traffic() -> Vec<Value> {
    vec![
        event(FROM + 1_000, "sub-a", "assetx", "Success", 10),
        event(FROM + 2_000, "sub-a", "assetx", "Success", 20),
        event(FROM + 3_000, "sub-a", "assetx", "Success", 30),
        event(FROM + 4_000, "sub-a", "assetx", "Failure", 40),
        event(FROM + 5_000, "sub-a", "assetx", "Exception", 50),
        event(FROM - 1_000, "sub-a", "assetx", "Success", 10),
        event(TO + 1_000, "sub-a", "assetx", "Success", 10),
        event(FROM + 6_000, "sub-a", "assety", "Success", 100),
        event(FROM + 7_000, "sub-a", "assety", "Success", 200),
        event(TO - 1, "sub-b", "assetx", "Failure", 5),
    ]
}

#[tokio::test]
async fn summary_counts_injected_events_per_subscription_and_asset_inside_the_window() {
    let amp = Amplify::start().await;
    inject(&amp, &sample_traffic()).await;
    let rows = summary(&amp, &window_params(&[]))
        .await
        .expect(200, "summary");
    let rows = by_pair(&rows);
    assert_eq!(rows.len(), 3, "{rows:?}");

    let ax = &rows[&key("sub-a", "assetx")];
    assert_eq!(
        ax["totalCount"], 5,
        "events outside the window excluded: {ax}"
    );
    assert_eq!(ax["successCount"], 3, "{ax}");
    assert_eq!(ax["failureCount"], 1, "{ax}");
    assert_eq!(ax["exceptionCount"], 1, "{ax}");
    assert_eq!(ax["minDurationMs"].as_f64(), Some(10.0), "{ax}");
    assert_eq!(ax["maxDurationMs"].as_f64(), Some(50.0), "{ax}");
    assert_eq!(ax["avgDurationMs"].as_f64(), Some(30.0), "{ax}");
    assert_eq!(
        ax["subscriptionName"], "sub-a",
        "§5.1 row field names: {ax}"
    );
    assert_eq!(ax["assetResourceName"], "assetx", "{ax}");

    let ay = &rows[&key("sub-a", "assety")];
    assert_eq!(
        (ay["totalCount"].as_u64(), ay["successCount"].as_u64()),
        (Some(2), Some(2))
    );
    let bx = &rows[&key("sub-b", "assetx")];
    assert_eq!(
        (
            bx["totalCount"].as_u64(),
            bx["failureCount"].as_u64(),
            bx["successCount"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{bx}"
    );
}

#[tokio::test]
async fn summary_groups_by_a_single_field() {
    let amp = Amplify::start().await;
    inject(&amp, &sample_traffic()).await;
    let rows = summary(
        &amp,
        &[
            ("groupBy", "subscriptionId".into()),
            ("from", FROM.to_string()),
            ("to", TO.to_string()),
        ],
    )
    .await
    .expect(200, "summary");
    let rows = rows.as_array().unwrap();
    let totals: BTreeMap<&str, u64> = rows
        .iter()
        .map(|r| {
            (
                r["subscriptionId"].as_str().unwrap(),
                r["totalCount"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(totals, BTreeMap::from([("sub-a-id", 7), ("sub-b-id", 1)]));
}

#[tokio::test]
async fn summary_filters_with_query_on_subscription_id() {
    let amp = Amplify::start().await;
    inject(&amp, &sample_traffic()).await;
    let rows = summary(
        &amp,
        &window_params(&[("query", "subscriptionId==sub-b-id")]),
    )
    .await
    .expect(200, "summary");
    let rows = by_pair(&rows);
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        [key("sub-b", "assetx")]
    );
}

#[tokio::test]
async fn summary_pages_rows_with_count_and_offset() {
    let amp = Amplify::start().await;
    inject(&amp, &sample_traffic()).await;
    let mut seen = Vec::new();
    for offset in 0..3 {
        let offset = offset.to_string();
        let page = summary(&amp, &window_params(&[("count", "1"), ("offset", &offset)]))
            .await
            .expect(200, "page");
        let page = by_pair(&page);
        assert_eq!(page.len(), 1, "count=1 gives one row");
        seen.extend(page.into_keys());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "offsets 0..3 visit every row once: {seen:?}");
    let past = summary(&amp, &window_params(&[("count", "1"), ("offset", "3")]))
        .await
        .expect(200, "past the end");
    assert_eq!(past, json!([]));
}

#[tokio::test]
async fn summary_window_is_epoch_milliseconds_and_can_be_narrowed() {
    let amp = Amplify::start().await;
    inject(&amp, &sample_traffic()).await;
    // Only the first two A/X events fall in [FROM, FROM + 2500).
    let rows = summary(
        &amp,
        &[
            ("groupBy", "subscriptionId".into()),
            ("from", FROM.to_string()),
            ("to", (FROM + 2_500).to_string()),
        ],
    )
    .await
    .expect(200, "summary");
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["totalCount"], 2, "{rows}");
}

#[tokio::test]
async fn summary_requires_a_bearer_token() {
    let amp = Amplify::start().await;
    let resp = amp
        .sb
        .http
        .get(amp.sb.at(SUMMARY))
        .query(&window_params(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn unknown_status_counts_only_in_the_total() {
    let amp = Amplify::start().await;
    inject(
        &amp,
        &[
            event(FROM + 1, "sub-u", "assetx", "Unknown", 10),
            event(FROM + 2, "sub-u", "assetx", "Success", 10),
        ],
    )
    .await;
    let rows = summary(&amp, &window_params(&[]))
        .await
        .expect(200, "summary");
    let row = &by_pair(&rows)[&key("sub-u", "assetx")];
    assert_eq!(row["totalCount"], 2, "{row}");
    assert_eq!(row["successCount"], 1, "{row}");
    assert_eq!(row["failureCount"], 0, "{row}");
    assert_eq!(row["exceptionCount"], 0, "{row}");
}

#[tokio::test]
async fn malformed_traffic_is_refused_as_a_whole() {
    let amp = Amplify::start().await;
    let mut bad = event(FROM + 1, "sub-a", "assetx", "Success", 1);
    bad["transactionSummary"]["status"] = json!("Sideways");
    let resp = amp
        .sb
        .http
        .post(amp.sb.at("/_sandbox/traffic"))
        .json(&vec![event(FROM, "sub-a", "assetx", "Success", 1), bad])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400, "§5.3 status enum");
    let rows = summary(&amp, &window_params(&[]))
        .await
        .expect(200, "summary");
    assert_eq!(rows, json!([]), "all or nothing");
}

async fn generate(amp: &Amplify, request: &Value) -> Value {
    let resp = amp
        .sb
        .http
        .post(amp.sb.at("/_sandbox/traffic/generate"))
        .json(request)
        .send()
        .await
        .unwrap();
    Resp::from(resp).await.expect(200, "generate traffic")
}

fn generator_request(seed: u64) -> Value {
    json!({
        "seed": seed, "count": 300, "from": FROM, "to": TO,
        "subscriptions": [
            {"id": "gen-sub-1", "name": "gen one", "assetResources": [
                {"id": "asset-1", "name": "weather/current"}, {"id": "asset-2", "name": "weather/forecast"}]},
            {"id": "gen-sub-2", "name": "gen two", "assetResources": [{"id": "asset-1", "name": "weather/current"}]}
        ]
    })
}

/// Checks that each generator total equals the summary row of the same pair.
async fn assert_totals_match_summary(amp: &Amplify, totals: &Value) {
    let rows = summary(
        amp,
        &[
            ("groupBy", "subscriptionId".into()),
            ("groupBy", "assetResourceId".into()),
            ("from", FROM.to_string()),
            ("to", TO.to_string()),
            ("count", "1000".into()),
        ],
    )
    .await
    .expect(200, "summary");
    let rows = by_pair(&rows);
    let totals = totals.as_array().expect("totals array");
    assert!(!totals.is_empty());
    assert_eq!(rows.len(), totals.len(), "one row per pair with traffic");
    for total in totals {
        let pair = (
            total["subscriptionId"].as_str().unwrap().to_owned(),
            total["assetResourceId"].as_str().unwrap().to_owned(),
        );
        let row = rows
            .get(&pair)
            .unwrap_or_else(|| panic!("no summary row for {pair:?}"));
        for field in [
            "totalCount",
            "successCount",
            "failureCount",
            "exceptionCount",
        ] {
            assert_eq!(row[field], total[field], "{field} of {pair:?}");
        }
    }
}

#[tokio::test]
async fn generated_traffic_totals_equal_the_summary() {
    let amp = Amplify::start().await;
    let generated = generate(&amp, &generator_request(7)).await;
    assert_eq!(generated["generated"], 300, "{generated}");
    let sum: u64 = generated["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["totalCount"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 300, "every generated event counted once");
    assert_totals_match_summary(&amp, &generated["totals"]).await;
}

#[tokio::test]
async fn generator_with_the_same_seed_repeats_itself() {
    let first = generate(&Amplify::start().await, &generator_request(11)).await;
    let second = generate(&Amplify::start().await, &generator_request(11)).await;
    assert_eq!(first["totals"], second["totals"]);
    let other = generate(&Amplify::start().await, &generator_request(12)).await;
    assert_ne!(first["totals"], other["totals"], "the seed matters");
}

#[tokio::test]
async fn generator_without_subscriptions_uses_approved_catalog_subscriptions() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("weather", "silver").await;
    amp.create(
        "/catalog/v1/productplans/silver/quotas",
        &quota_body("v1", "quota-0"),
    )
    .await;
    let sub = amp
        .subscription("v1", "sub-approved", "weather", "silver")
        .await;
    amp.subscription("v1", "sub-pending", "weather", "silver")
        .await;
    amp.put(
        "/catalog/v1/subscriptions/sub-approved/approval",
        &json!({"approval": {"state": "approved", "reason": "ok"}}),
    )
    .await
    .expect(200, "approve");

    let generated = generate(
        &amp,
        &json!({"seed": 3, "count": 50, "from": FROM, "to": TO}),
    )
    .await;
    let totals = generated["totals"].as_array().unwrap();
    assert!(!totals.is_empty(), "{generated}");
    let sub_id = sub["metadata"]["id"].as_str().unwrap();
    for total in totals {
        assert_eq!(
            total["subscriptionId"], sub_id,
            "§5.3 subscription.id is Subscription.metadata.id; only approved ones get traffic"
        );
        assert_eq!(
            total["assetResourceName"], "current",
            "the resource's own name, as the SDK sends it (§5.4)"
        );
        assert_eq!(
            total["listedName"], "weather/current",
            "asset from the quota"
        );
    }
    let rows = summary(
        &amp,
        &[
            ("groupBy", "subscriptionId".into()),
            ("from", FROM.to_string()),
            ("to", TO.to_string()),
            ("query", format!("subscriptionId=={sub_id}")),
        ],
    )
    .await
    .expect(200, "summary");
    assert_eq!(rows[0]["totalCount"], 50, "{rows}");
    assert_eq!(rows[0]["subscriptionName"], "sub-approved", "{rows}");
}

const SEARCH: &str = "/amplify/api/traceability/v1/traceability/search";

async fn search(amp: &Amplify, body: Value) -> Value {
    let req = amp.sb.http.post(amp.sb.at(SEARCH)).json(&body);
    amp.send(req).await.expect(200, "search")
}

/// §5.2 filters: transaction summaries of `sub` (if given) within (FROM, TO).
fn search_filters(sub: Option<&str>) -> Value {
    let mut and = vec![json!({"$match": {"type": ["transactionSummary"]}})];
    if let Some(sub) = sub {
        and.push(json!({"$match": {"transactionSummary.consumerDetails.subscription.id": [sub]}}));
    }
    json!({"$and": and, "$range": {"@event_time": {"gt": FROM, "lt": TO}}})
}

#[tokio::test]
async fn search_counts_a_subscriptions_events_in_a_time_range() {
    let amp = Amplify::start().await;
    inject(&amp, &sample_traffic()).await;
    let body = search(
        &amp,
        json!({"filters": search_filters(Some("sub-a-id")),
               "invoke": {"field": "@event_time", "method": "count"}, "version": "0.2"}),
    )
    .await;
    assert_eq!(body["count"], 7, "§5.2 count inside the range: {body}");
}

#[tokio::test]
async fn search_groups_counts_by_subscription() {
    let amp = Amplify::start().await;
    inject(&amp, &sample_traffic()).await;
    let field = "transactionSummary.consumerDetails.subscription.id";
    let body = search(
        &amp,
        json!({"filters": search_filters(None),
               "invoke": {"field": "@event_time", "method": "count"},
               "group_by": [{"field": field, "type": "string"}], "version": "0.2"}),
    )
    .await;
    let counts: BTreeMap<&str, u64> = body
        .as_array()
        .unwrap_or_else(|| panic!("grouped answer is an array: {body}"))
        .iter()
        .map(|g| (g[field].as_str().unwrap(), g["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, BTreeMap::from([("sub-a-id", 7), ("sub-b-id", 1)]));
}

#[tokio::test]
async fn search_sums_durations_and_finds_events_in_time_order() {
    let amp = Amplify::start().await;
    inject(&amp, &sample_traffic()).await;
    let body = search(
        &amp,
        json!({"filters": search_filters(Some("sub-a-id")),
               "invoke": {"field": "transactionSummary.duration", "method": "sum"}, "version": "0.2"}),
    )
    .await;
    assert_eq!(
        body["sum"].as_f64(),
        Some(450.0),
        "10+20+30+40+50+100+200: {body}"
    );

    let found = search(
        &amp,
        json!({"filters": search_filters(Some("sub-a-id")),
               "invoke": {"field": "@event_time", "method": "find", "params": {"limit": 3}},
               "version": "0.2"}),
    )
    .await;
    let times: Vec<u64> = found
        .as_array()
        .unwrap_or_else(|| panic!("find answers events: {found}"))
        .iter()
        .map(|e| e["@event_time"].as_u64().unwrap())
        .collect();
    assert_eq!(times, [FROM + 1_000, FROM + 2_000, FROM + 3_000]);
}

#[tokio::test]
async fn summary_groups_by_proxy_filtered_by_environment() {
    let amp = Amplify::start().await;
    let mut traffic = sample_traffic();
    let mut elsewhere = event(FROM + 10, "sub-a", "assetx", "Success", 1);
    elsewhere["environmentId"] = json!("env-2");
    traffic.push(elsewhere);
    inject(&amp, &traffic).await;
    // The DOCS example of §5.1: groupBy proxyId & proxyRevision, query environmentId==<envId>.
    let rows = summary(
        &amp,
        &[
            ("groupBy", "proxyId".into()),
            ("groupBy", "proxyRevision".into()),
            ("from", FROM.to_string()),
            ("to", TO.to_string()),
            ("query", "environmentId==env-1".into()),
        ],
    )
    .await
    .expect(200, "summary");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["proxyId"], "remoteApiId_weather");
    assert_eq!(rows[0]["proxyRevision"].to_string().trim_matches('"'), "1");
    assert_eq!(
        rows[0]["totalCount"], 8,
        "env-2 and out-of-window events excluded"
    );
}

/// Generated traffic in both shapes (§5.3 LogEvent, §5.4 InsightsEvent v4), as a share of v4.
#[tokio::test]
async fn generated_traffic_in_both_shapes_is_searched_and_summarized_as_the_sdk_sends_it() {
    let amp = Amplify::start().await;
    let mut request = generator_request(21);
    request["v4_share"] = json!(0.4);
    let generated = generate(&amp, &request).await;
    assert_totals_match_summary(&amp, &generated["totals"]).await;
    let find = |filter: Value| {
        json!({"filters": {"$and": [filter], "$range": {"@event_time": {"gte": FROM, "lt": TO}}},
               "invoke": {"field": "@event_time", "method": "find", "params": {"limit": 1000}},
               "version": "0.2"})
    };
    let both = find(json!({"$or": [{"$match": {"type": ["transactionSummary"]}},
                                    {"$match": {"event": ["api.transaction.summary"]}}]}));
    let events = search(&amp, both.clone()).await;
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 300, "both shapes together are every event");
    let (v4, log): (Vec<&Value>, Vec<&Value>) =
        events.iter().partition(|e| e.get("event").is_some());
    assert!(
        (80..160).contains(&v4.len()),
        "about 40% are v4: {}",
        v4.len()
    );
    for e in &v4 {
        assert_eq!(
            (&e["event"], &e["version"]),
            (&json!("api.transaction.summary"), &json!("4"))
        );
        assert!(
            e.get("type").is_none() && e.get("transactionId").is_none(),
            "{e}"
        );
        assert!(
            e["session"]["id"].is_string(),
            "the transaction id is session.id: {e}"
        );
        assert!(e["id"].is_string() && e["id"] != e["session"]["id"], "{e}");
        let resource = e["data"]["assetResource"].as_object().unwrap();
        assert_eq!(
            resource.keys().collect::<Vec<_>>(),
            ["id"],
            "v4 names the resource by id: {e}"
        );
        assert!(e["data"]["reporter"]["agentSDKVersion"].is_string(), "{e}");
    }
    for e in &log {
        assert_eq!(e["type"], "transactionSummary", "{e}");
        assert!(e["transactionId"].is_string(), "{e}");
        assert!(
            e["transactionSummary"]["assetResource"]["name"].is_string(),
            "{e}"
        );
    }
    let only_v4 = search(
        &amp,
        find(json!({"$match": {"event": ["api.transaction.summary"]}})),
    )
    .await;
    assert_eq!(only_v4.as_array().unwrap().len(), v4.len());
    // The envelope id is new every time an event is built; the transaction id is not.
    let again = search(&amp, both).await;
    let by_session = |list: &[Value]| -> BTreeMap<String, String> {
        list.iter()
            .filter(|e| e.get("event").is_some())
            .map(|e| {
                (
                    e["session"]["id"].as_str().unwrap().to_owned(),
                    e["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (first, second) = (by_session(events), by_session(again.as_array().unwrap()));
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    assert!(first.iter().all(|(session, id)| second[session] != *id));
}
