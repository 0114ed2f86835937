//! The Traceability summary (`/amplify/api/traceability/v1/traceability/summary`, reference
//! §5.1): stored traffic aggregated per group of row fields over a time window, paged.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use super::resources::ApiError;
use super::rsql;
use super::traffic::{
    DIMENSIONS, EXCEPTION, FAILURE, INSIGHTS_SUMMARY, SUCCESS, TrafficStore, dimension_index,
};
use crate::SandboxState;

/// The window is `[from, to)`: an event stamped exactly `to` belongs to the next window, so
/// back-to-back windows never count an event twice [?: the real boundary is unknown, §7.1].
pub(crate) const TO_IS_EXCLUSIVE: bool = true;
/// Rows per answer when `count` is absent [?: the captured request sends count=10, §5.1].
const DEFAULT_SUMMARY_COUNT: usize = 10;
/// Largest `count` accepted; more is refused rather than silently cut [?].
const MAX_SUMMARY_COUNT: usize = 1000;

#[derive(Debug)]
pub(crate) struct SummaryQuery {
    pub group_by: Vec<usize>,
    pub from: i64,
    pub to: i64,
    pub count: usize,
    pub offset: usize,
    pub filter: Option<rsql::Filter>,
}

pub(crate) fn parse_summary_query(pairs: &[(String, String)]) -> Result<SummaryQuery, ApiError> {
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim());
    let millis = |name: &str| -> Result<i64, ApiError> {
        let text = get(name).ok_or_else(|| {
            ApiError::bad_request(format!("{name} (epoch milliseconds) is required"))
        })?;
        text.parse::<i64>().ok().filter(|t| *t >= 0).ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be epoch milliseconds, not '{text}'"))
        })
    };
    let from = millis("from")?;
    let to = millis("to")?;
    if from > to {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        match get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::bad_request(format!("{name} must be a non-negative integer, not '{v}'"))
            }),
        }
    };
    let count = number("count", DEFAULT_SUMMARY_COUNT)?;
    if count > MAX_SUMMARY_COUNT {
        return Err(ApiError::bad_request(format!(
            "count must be at most {MAX_SUMMARY_COUNT}"
        )));
    }
    let offset = number("offset", 0)?;
    let mut group_by = Vec::new();
    for (_, field) in pairs.iter().filter(|(k, _)| k == "groupBy") {
        for field in field.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let index = dimension_index(field).ok_or_else(|| {
                ApiError::bad_request(format!("groupBy field '{field}' is not known"))
            })?;
            if !group_by.contains(&index) {
                group_by.push(index);
            }
        }
    }
    let filter = match get("query").filter(|q| !q.is_empty()) {
        Some(q) => {
            Some(rsql::parse(q).map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?)
        }
        None => None,
    };
    Ok(SummaryQuery {
        group_by,
        from,
        to,
        count,
        offset,
        filter,
    })
}

/// `fooId` grouped rows also carry `fooName` (taken from the group's first event): rows are
/// read by people and by the bridge, which needs both [I].
fn companion_field(field: &str) -> Option<usize> {
    dimension_index(&format!("{}Name", field.strip_suffix("Id")?))
}

#[derive(Clone, Copy)]
struct Accumulator {
    total: u64,
    success: u64,
    failure: u64,
    exception: u64,
    duration_sum: u64,
    duration_min: u32,
    duration_max: u32,
}

impl Default for Accumulator {
    fn default() -> Self {
        Self {
            total: 0,
            success: 0,
            failure: 0,
            exception: 0,
            duration_sum: 0,
            duration_min: u32::MAX,
            duration_max: 0,
        }
    }
}

fn profile_row_fields(store: &TrafficStore, profile: &[u32]) -> Value {
    let fields: Map<String, Value> = DIMENSIONS
        .iter()
        .zip(profile)
        .filter_map(|(d, id)| Some((d.field?.to_owned(), json!(store.text(*id)?))))
        .collect();
    Value::Object(fields)
}

/// Aggregates the stored events of `[from, to)` (see [`TO_IS_EXCLUSIVE`]) into rows sorted by
/// their group values, then pages them with `offset`/`count`.
pub(crate) fn summarize(store: &TrafficStore, query: &SummaryQuery) -> Vec<Value> {
    const SKIP: u32 = u32::MAX;
    // Work per distinct profile first, so the per-event loop only adds numbers.
    let mut group_slots: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut slot_profiles: Vec<u32> = Vec::new();
    let slot_of_profile: Vec<u32> = (0..store.profile_count() as u32)
        .map(|p| {
            let profile = store.profile(p);
            if let Some(filter) = &query.filter
                && !rsql::matches(filter, &profile_row_fields(store, profile))
            {
                return SKIP;
            }
            let key: Vec<u32> = query.group_by.iter().map(|d| profile[*d]).collect();
            let next = group_slots.len() as u32;
            *group_slots.entry(key).or_insert_with(|| {
                slot_profiles.push(p);
                next
            })
        })
        .collect();
    let mut slots = vec![Accumulator::default(); slot_profiles.len()];
    let in_window = |t: i64| {
        t >= query.from
            && if TO_IS_EXCLUSIVE {
                t < query.to
            } else {
                t <= query.to
            }
    };
    for i in 0..store.len() {
        let slot = slot_of_profile[store.profile_of[i] as usize];
        if slot == SKIP || !in_window(store.timestamps[i]) {
            continue;
        }
        let acc = &mut slots[slot as usize];
        let duration = store.durations[i];
        acc.total += 1;
        match store.statuses[i] {
            SUCCESS => acc.success += 1,
            FAILURE => acc.failure += 1,
            EXCEPTION => acc.exception += 1,
            _ => {}
        }
        acc.duration_sum += u64::from(duration);
        acc.duration_min = acc.duration_min.min(duration);
        acc.duration_max = acc.duration_max.max(duration);
    }
    // Sort the groups by their values, page them, and only then build the page's rows.
    let mut groups: Vec<(Vec<&str>, usize)> = slots
        .iter()
        .enumerate()
        .filter(|(_, acc)| acc.total > 0)
        .map(|(slot, _)| {
            let profile = store.profile(slot_profiles[slot]);
            let key = query
                .group_by
                .iter()
                .map(|d| store.text(profile[*d]).unwrap_or_default())
                .collect();
            (key, slot)
        })
        .collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
        .into_iter()
        .skip(query.offset)
        .take(query.count)
        .map(|(_, slot)| {
            let acc = &slots[slot];
            let profile = store.profile(slot_profiles[slot]);
            let mut row = Map::new();
            for d in &query.group_by {
                // groupBy names only dimensions with a row field (`dimension_index`).
                let field = DIMENSIONS[*d].field.unwrap_or_default();
                row.insert(field.to_owned(), json!(store.text(profile[*d])));
                if let Some(companion) = companion_field(field)
                    && !query.group_by.contains(&companion)
                {
                    row.insert(
                        DIMENSIONS[companion].field.unwrap_or_default().to_owned(),
                        json!(store.text(profile[companion])),
                    );
                }
            }
            row.insert("totalCount".into(), json!(acc.total));
            row.insert("successCount".into(), json!(acc.success));
            row.insert("failureCount".into(), json!(acc.failure));
            row.insert("exceptionCount".into(), json!(acc.exception));
            row.insert(
                "avgDurationMs".into(),
                json!(acc.duration_sum as f64 / acc.total as f64),
            );
            row.insert("minDurationMs".into(), json!(acc.duration_min));
            row.insert("maxDurationMs".into(), json!(acc.duration_max));
            Value::Object(row)
        })
        .collect()
}

pub(crate) async fn summary(req: HttpRequest, state: web::Data<SandboxState>) -> HttpResponse {
    if let Err(resp) = super::auth::authorize(&req, &state) {
        return resp;
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let query = match parse_summary_query(&pairs) {
        Ok(q) => q,
        Err(e) => return e.response(),
    };
    let store = state.amplify.traffic.read();
    HttpResponse::Ok().json(summarize(&store, &query))
}

/// A field a search filter or `group_by` can name (reference §5.2: paths relative to the event
/// body; `@event_time` is the event's timestamp, in milliseconds). Each shape's paths match
/// only the events stored in that shape: `type`, `transactionId` and `transactionSummary.*` a
/// LogEvent (§5.3); `event`, `session.id` and `data.*` an InsightsEvent v4 (§5.4) [I: that
/// Lexus searches v4 events by these paths].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SearchField {
    Time,
    Type,
    Event,
    /// `transactionId` (false) or `session.id` (true).
    TransactionId(bool),
    Status(bool),
    Duration(bool),
    /// A stored dimension by its LogEvent (false) or v4 (true) path.
    Dimension(usize, bool),
}

fn search_field(name: &str) -> Result<SearchField, ApiError> {
    Ok(match name {
        "@event_time" | "timestamp" => SearchField::Time,
        "type" => SearchField::Type,
        "event" => SearchField::Event,
        "transactionId" => SearchField::TransactionId(false),
        "session.id" => SearchField::TransactionId(true),
        "transactionSummary.status" => SearchField::Status(false),
        "data.status" => SearchField::Status(true),
        "transactionSummary.duration" => SearchField::Duration(false),
        "data.duration" => SearchField::Duration(true),
        path => {
            let log = DIMENSIONS.iter().position(|d| d.path == Some(path));
            let v4 = DIMENSIONS.iter().position(|d| d.v4 == Some(path));
            match (log, v4) {
                (Some(d), _) => SearchField::Dimension(d, false),
                (None, Some(d)) => SearchField::Dimension(d, true),
                (None, None) => {
                    return Err(ApiError::bad_request(format!(
                        "search field '{path}' is not known"
                    )));
                }
            }
        }
    })
}

/// A compiled Lexus filter (`$and`, `$or`, `$match`, `$prefix`, `$range`).
#[derive(Debug)]
enum Predicate {
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Match(SearchField, Vec<String>),
    Prefix(SearchField, String),
    Range(SearchField, [Option<f64>; 4]),
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn compile_filter(filter: &Value) -> Result<Predicate, ApiError> {
    let object = filter
        .as_object()
        .ok_or_else(|| ApiError::bad_request("a search filter must be an object"))?;
    let mut parts = Vec::new();
    for (op, arg) in object {
        let fields = || {
            arg.as_object()
                .ok_or_else(|| ApiError::bad_request(format!("{op} takes an object of fields")))
        };
        match op.as_str() {
            "$and" | "$or" => {
                let list = arg.as_array().ok_or_else(|| {
                    ApiError::bad_request(format!("{op} takes an array of filters"))
                })?;
                let compiled = list
                    .iter()
                    .map(compile_filter)
                    .collect::<Result<Vec<_>, _>>()?;
                parts.push(if op == "$and" {
                    Predicate::And(compiled)
                } else {
                    Predicate::Or(compiled)
                });
            }
            "$match" => {
                for (field, values) in fields()? {
                    let values: Vec<String> = match values {
                        Value::Array(items) => items.iter().filter_map(scalar_text).collect(),
                        other => scalar_text(other).into_iter().collect(),
                    };
                    parts.push(Predicate::Match(search_field(field)?, values));
                }
            }
            "$prefix" => {
                for (field, prefix) in fields()? {
                    let prefix = scalar_text(prefix).ok_or_else(|| {
                        ApiError::bad_request(format!("$prefix of {field} must be a string"))
                    })?;
                    parts.push(Predicate::Prefix(search_field(field)?, prefix));
                }
            }
            "$range" => {
                for (field, bounds) in fields()? {
                    let bound = |name: &str| bounds.get(name).and_then(Value::as_f64);
                    parts.push(Predicate::Range(
                        search_field(field)?,
                        [bound("gt"), bound("gte"), bound("lt"), bound("lte")],
                    ));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "search operator '{other}' is not supported"
                )));
            }
        }
    }
    Ok(Predicate::And(parts))
}

fn field_text(store: &TrafficStore, index: usize, field: SearchField) -> Option<String> {
    let v4 = store.is_v4(index);
    let shaped = |of_v4: bool| (of_v4 == v4).then_some(());
    match field {
        SearchField::Time => Some(store.timestamps[index].to_string()),
        SearchField::Type => shaped(false).map(|_| "transactionSummary".to_owned()),
        SearchField::Event => shaped(true).map(|_| INSIGHTS_SUMMARY.to_owned()),
        SearchField::TransactionId(of_v4) => shaped(of_v4).map(|_| store.transaction_id(index)),
        SearchField::Status(of_v4) => shaped(of_v4)
            .map(|_| super::traffic::STATUSES[store.statuses[index] as usize].to_owned()),
        SearchField::Duration(of_v4) => shaped(of_v4).map(|_| store.durations[index].to_string()),
        SearchField::Dimension(d, of_v4) => {
            shaped(of_v4)?;
            store
                .text(store.profile(store.profile_of[index])[d])
                .map(str::to_owned)
        }
    }
}

fn field_number(store: &TrafficStore, index: usize, field: SearchField) -> Option<f64> {
    match field {
        SearchField::Time => Some(store.timestamps[index] as f64),
        SearchField::Duration(of_v4) if of_v4 == store.is_v4(index) => {
            Some(f64::from(store.durations[index]))
        }
        other => field_text(store, index, other)?.parse().ok(),
    }
}

fn holds(predicate: &Predicate, store: &TrafficStore, index: usize) -> bool {
    match predicate {
        Predicate::And(parts) => parts.iter().all(|p| holds(p, store, index)),
        Predicate::Or(parts) => parts.iter().any(|p| holds(p, store, index)),
        Predicate::Match(field, values) => {
            field_text(store, index, *field).is_some_and(|text| values.contains(&text))
        }
        Predicate::Prefix(field, prefix) => {
            field_text(store, index, *field).is_some_and(|text| text.starts_with(prefix.as_str()))
        }
        Predicate::Range(field, [gt, gte, lt, lte]) => field_number(store, index, *field)
            .is_some_and(|n| {
                gt.is_none_or(|b| n > b)
                    && gte.is_none_or(|b| n >= b)
                    && lt.is_none_or(|b| n < b)
                    && lte.is_none_or(|b| n <= b)
            }),
    }
}

/// Search rows per answer when `invoke.params.limit` is absent [?].
const DEFAULT_SEARCH_LIMIT: usize = 10;

/// Runs a search body. Answer shapes are [?] (reference §5.2 documents the request only) and
/// live here: `find` → array of events (each in the shape it was published in, §5.3 or §5.4,
/// plus `@event_time`); `count`/`sum` →
/// `{"count": n}` / `{"sum": x}`, or with `group_by` an array of `{<field>: value, count|sum}`.
pub(crate) fn search(store: &TrafficStore, body: &Value) -> Result<Value, ApiError> {
    let predicate = match body.get("filters") {
        None | Some(Value::Null) => Predicate::And(Vec::new()),
        Some(filters) => compile_filter(filters)?,
    };
    let invoke = body
        .get("invoke")
        .cloned()
        .unwrap_or_else(|| json!({"method": "find"}));
    let method = invoke["method"].as_str().unwrap_or("find");
    let matching = (0..store.len()).filter(|i| holds(&predicate, store, *i));
    match method {
        "find" => {
            let params = &invoke["params"];
            let limit = params["limit"]
                .as_u64()
                .map_or(DEFAULT_SEARCH_LIMIT, |l| l as usize);
            let offset = params["offset"].as_u64().unwrap_or(0) as usize;
            let mut indices: Vec<usize> = matching.collect();
            indices.sort_by_key(|i| (store.timestamps[*i], *i));
            let events: Vec<Value> = indices
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(|i| {
                    let mut event = store.event_json(i);
                    event["@event_time"] = json!(store.timestamps[i]);
                    event
                })
                .collect();
            Ok(Value::Array(events))
        }
        "count" | "sum" => {
            let sum_field = if method == "sum" {
                let name = invoke["field"]
                    .as_str()
                    .ok_or_else(|| ApiError::bad_request("invoke.field is required for sum"))?;
                Some(search_field(name)?)
            } else {
                None
            };
            let group_fields: Vec<(String, SearchField)> = body
                .get("group_by")
                .and_then(Value::as_array)
                .map(|groups| {
                    groups
                        .iter()
                        .map(|g| {
                            let name = g["field"].as_str().ok_or_else(|| {
                                ApiError::bad_request("group_by entries need a field")
                            })?;
                            Ok((name.to_owned(), search_field(name)?))
                        })
                        .collect::<Result<Vec<_>, ApiError>>()
                })
                .transpose()?
                .unwrap_or_default();
            let mut groups: std::collections::BTreeMap<Vec<Option<String>>, (u64, f64)> =
                Default::default();
            for i in matching {
                let key = group_fields
                    .iter()
                    .map(|(_, f)| field_text(store, i, *f))
                    .collect();
                let entry = groups.entry(key).or_default();
                entry.0 += 1;
                entry.1 += sum_field
                    .and_then(|f| field_number(store, i, f))
                    .unwrap_or(0.0);
            }
            let value_of = |(count, sum): (u64, f64)| {
                if method == "sum" {
                    json!(sum)
                } else {
                    json!(count)
                }
            };
            if group_fields.is_empty() {
                let totals = groups.into_values().next().unwrap_or_default();
                return Ok(json!({ method: value_of(totals) }));
            }
            let rows = groups
                .into_iter()
                .map(|(key, totals)| {
                    let mut row = Map::new();
                    for ((name, _), value) in group_fields.iter().zip(key) {
                        row.insert(name.clone(), json!(value));
                    }
                    row.insert(method.to_owned(), value_of(totals));
                    Value::Object(row)
                })
                .collect();
            Ok(Value::Array(rows))
        }
        other => Err(ApiError::bad_request(format!(
            "invoke.method '{other}' is not supported; use find, count or sum"
        ))),
    }
}

pub(crate) async fn search_route(
    req: HttpRequest,
    state: web::Data<SandboxState>,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(resp) = super::auth::authorize(&req, &state) {
        return resp;
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return ApiError::bad_request("the search body must be a JSON object").response(),
    };
    let store = state.amplify.traffic.read();
    match search(&store, &body) {
        Ok(answer) => HttpResponse::Ok().json(answer),
        Err(e) => e.response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    fn store_with(events: &[Value]) -> TrafficStore {
        let mut store = TrafficStore::default();
        for e in events {
            store.add_event(e).unwrap();
        }
        store
    }

    /// Event times are `T0 + ts` milliseconds (a `timestamp` below 10^11 would be seconds).
    const T0: i64 = 1_796_000_000_000;

    fn at(query: &str) -> Vec<(String, String)> {
        // `from=100` means T0 + 100.
        pairs(
            &query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k @ ("from" | "to"), v)) => {
                        format!("{k}={}", T0 + v.parse::<i64>().unwrap())
                    }
                    _ => p.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&"),
        )
    }

    fn event(ts: i64, sub: &str, asset: &str, status: &str, duration: u32) -> Value {
        json!({"timestamp": T0 + ts, "type": "transactionSummary", "environmentId": "env",
               "transactionSummary": {"status": status, "duration": duration,
                 "assetResource": {"id": asset, "name": format!("{asset}-name")},
                 "consumerDetails": {"subscription": {"id": sub, "name": format!("{sub}-name")}}}})
    }

    #[test]
    fn rows_aggregate_counts_and_durations_per_group_within_the_window() {
        let store = store_with(&[
            event(100, "s1", "a1", "Success", 10),
            event(150, "s1", "a1", "Failure", 30),
            event(199, "s1", "a2", "Exception", 5),
            event(200, "s1", "a1", "Success", 1000),
            event(120, "s2", "a1", "Success", 7),
            event(99, "s2", "a1", "Success", 7),
        ]);
        let q = parse_summary_query(&at(
            "from=100&to=200&groupBy=subscriptionId&groupBy=assetResourceId&count=100",
        ))
        .unwrap();
        let rows = summarize(&store, &q);
        assert_eq!(rows.len(), 3);
        let first = &rows[0];
        assert_eq!(first["subscriptionId"], "s1");
        assert_eq!(first["subscriptionName"], "s1-name");
        assert_eq!(first["assetResourceId"], "a1");
        assert_eq!(first["assetResourceName"], "a1-name");
        assert_eq!(
            (
                first["totalCount"].as_u64(),
                first["successCount"].as_u64(),
                first["failureCount"].as_u64()
            ),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(
            (
                first["minDurationMs"].as_u64(),
                first["maxDurationMs"].as_u64(),
                first["avgDurationMs"].as_f64()
            ),
            (Some(10), Some(30), Some(20.0))
        );
        assert_eq!(rows[1]["exceptionCount"], 1);
        assert_eq!(rows[2]["subscriptionId"], "s2");
        assert_eq!(rows[2]["totalCount"], 1);
    }

    #[test]
    fn query_filters_and_count_offset_page_the_rows() {
        let store = store_with(&[
            event(1, "s1", "a1", "Success", 1),
            event(1, "s2", "a1", "Success", 1),
            event(1, "s3", "a1", "Success", 1),
        ]);
        let q = parse_summary_query(&at("from=0&to=10&groupBy=subscriptionId&count=1&offset=1"))
            .unwrap();
        let rows = summarize(&store, &q);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["subscriptionId"], "s2");
        let q = parse_summary_query(&at(
            "from=0&to=10&groupBy=subscriptionId&query=subscriptionId==s3",
        ))
        .unwrap();
        let rows = summarize(&store, &q);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["subscriptionId"], "s3");
        let q = parse_summary_query(&at("from=0&to=10")).unwrap();
        assert_eq!(summarize(&store, &q)[0]["totalCount"], 3);
    }

    #[test]
    fn bad_windows_and_fields_are_refused() {
        for bad in [
            "to=10",
            "from=0",
            "from=a&to=1",
            "from=5&to=1",
            "from=0&to=1&groupBy=nope",
            "from=0&to=1&count=x",
            "from=0&to=1&query=a==",
        ] {
            assert!(parse_summary_query(&pairs(bad)).is_err(), "{bad}");
        }
    }
    #[test]
    fn search_filters_with_match_and_range_then_finds_or_counts() {
        let store = store_with(&[
            event(100, "s1", "a1", "Success", 10),
            event(150, "s1", "a2", "Failure", 30),
            event(250, "s2", "a1", "Success", 5),
        ]);
        let body = json!({"filters": {"$and": [{"$match": {"type": ["transactionSummary"]}},
                                               {"$match": {"transactionSummary.consumerDetails.subscription.id": ["s1"]}}],
                                      "$range": {"@event_time": {"gte": T0 + 100, "lt": T0 + 200}}},
                          "invoke": {"field": "@event_time", "method": "count"},
                          "group_by": [{"field": "transactionSummary.assetResource.id", "type": "string"}]});
        let rows = search(&store, &body).unwrap();
        assert_eq!(
            rows,
            json!([{"transactionSummary.assetResource.id": "a1", "count": 1},
                                {"transactionSummary.assetResource.id": "a2", "count": 1}])
        );
        let found = search(&store, &json!({"filters": {"$prefix": {"transactionSummary.consumerDetails.subscription.id": "s"}},
                                           "invoke": {"method": "find", "params": {"limit": 2, "offset": 1}}})).unwrap();
        assert_eq!(found.as_array().unwrap().len(), 2);
        assert_eq!(found[0]["@event_time"], T0 + 150);
        assert!(
            search(
                &store,
                &json!({"filters": {"$match": {"no.such.field": ["x"]}}})
            )
            .is_err()
        );
    }

    #[test]
    fn summary_dimensions_are_the_row_fields_of_5_1_only() {
        // §5.1's captured row fields group; event paths with no row field do not.
        for ok in [
            "assetResourceName",
            "environmentName",
            "consumerOrgName",
            "proxyRevision",
        ] {
            assert!(
                parse_summary_query(&pairs(&format!("from=0&to=1&groupBy={ok}"))).is_ok(),
                "{ok}"
            );
        }
        for no in [
            "quotaId",
            "tenantId",
            "productPlanId",
            "statusDetail",
            "publishedProductId",
        ] {
            assert!(
                parse_summary_query(&pairs(&format!("from=0&to=1&groupBy={no}"))).is_err(),
                "{no}"
            );
        }
        let store = store_with(&[event(1, "s1", "a1", "Success", 1)]);
        let q = parse_summary_query(&at(
            "from=0&to=10&groupBy=subscriptionId&groupBy=assetResourceId",
        ))
        .unwrap();
        let row = summarize(&store, &q)[0].clone();
        let known = [
            "totalCount",
            "successCount",
            "failureCount",
            "exceptionCount",
            "avgDurationMs",
            "minDurationMs",
            "maxDurationMs",
            "proxyId",
            "proxyRevision",
            "proxyName",
            "applicationId",
            "applicationName",
            "teamId",
            "teamName",
            "method",
            "virtualHost",
            "uri",
            "subscriptionId",
            "subscriptionName",
            "consumerTeamId",
            "consumerTeamName",
            "environmentId",
            "environmentName",
            "consumerOrgId",
            "consumerOrgName",
            "marketplaceId",
            "marketplaceName",
            "productId",
            "productName",
            "assetResourceId",
            "assetResourceName",
        ];
        for field in row.as_object().unwrap().keys() {
            assert!(
                known.contains(&field.as_str()),
                "{field} is not a §5.1 row field"
            );
        }
    }

    #[test]
    fn search_finds_both_shapes_each_by_its_own_paths() {
        let mut store = store_with(&[event(100, "s1", "a1", "Success", 10)]);
        store
            .add_event(
                &json!({"id": "u", "org": "1", "event": "api.transaction.summary", "version": "4",
                "timestamp": T0 + 150, "distribution": {"environment": "env"},
                "data": {"status": "Success", "duration": 4, "assetResource": {"id": "a1"},
                         "consumerDetails": {"subscription": {"id": "s1"}}},
                "session": {"id": "t-v4"}}),
            )
            .unwrap();
        let find = |filter: Value| {
            search(
                &store,
                &json!({"filters": filter, "invoke": {"method": "find", "params": {"limit": 10}}}),
            )
            .unwrap()
            .as_array()
            .unwrap()
            .len()
        };
        assert_eq!(
            find(json!({"$or": [{"$match": {"type": ["transactionSummary"]}},
                                        {"$match": {"event": ["api.transaction.summary"]}}]})),
            2
        );
        assert_eq!(find(json!({"$match": {"type": ["transactionSummary"]}})), 1);
        assert_eq!(
            find(json!({"$match": {"event": ["api.transaction.summary"]}})),
            1
        );
        assert_eq!(find(json!({"$match": {"session.id": ["t-v4"]}})), 1);
        assert_eq!(
            find(json!({"$match": {"data.consumerDetails.subscription.id": ["s1"]}})),
            1
        );
        assert_eq!(
            find(json!({"$match": {"transactionSummary.consumerDetails.subscription.id": ["s1"]}})),
            1
        );
        let found = search(
            &store,
            &json!({"filters": {"$match": {"event": ["api.transaction.summary"]}},
                                           "invoke": {"method": "find"}}),
        )
        .unwrap();
        assert_eq!(found[0]["session"]["id"], "t-v4");
        assert!(found[0].get("type").is_none());
    }
}
