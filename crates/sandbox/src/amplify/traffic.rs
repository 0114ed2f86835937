//! Stored API traffic for the Traceability emulator: agent-sdk `transactionSummary` events
//! (reference §5.3) kept compactly (interned dimension profiles, one row of plain numbers per
//! event), their validation, deterministic generation, and the `/_sandbox/traffic` routes.

use std::collections::{BTreeMap, HashMap};

use actix_web::{HttpResponse, web};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

use super::store::Catalog;
use crate::SandboxState;

/// A field of a summary row and where it comes from in an event (reference §5.1 row names,
/// §5.3 event paths). Fields without a path (names the events do not carry) group as absent.
#[derive(Debug)]
pub(crate) struct Dimension {
    pub field: &'static str,
    pub path: Option<&'static str>,
}

const fn dim(field: &'static str, path: &'static str) -> Dimension {
    Dimension {
        field,
        path: Some(path),
    }
}

/// The one table mapping event paths to summary row fields. The pairing of row names with
/// event paths is [I] (reference §5.1 lists row fields, §5.3 event fields; no spec links them).
pub(crate) const DIMENSIONS: &[Dimension] = &[
    dim("environmentId", "environmentId"),
    Dimension {
        field: "environmentName",
        path: None,
    },
    dim("tenantId", "tenantId"),
    dim("statusDetail", "transactionSummary.statusDetail"),
    dim("teamId", "transactionSummary.team.id"),
    dim("teamName", "transactionSummary.team.name"),
    dim("proxyId", "transactionSummary.proxy.id"),
    dim("proxyName", "transactionSummary.proxy.name"),
    dim("proxyRevision", "transactionSummary.proxy.revision"),
    dim("method", "transactionSummary.entryPoint.method"),
    dim("virtualHost", "transactionSummary.entryPoint.host"),
    dim("uri", "transactionSummary.entryPoint.path"),
    dim("entryPointType", "transactionSummary.entryPoint.type"),
    dim("applicationId", "transactionSummary.application.id"),
    dim("applicationName", "transactionSummary.application.name"),
    dim("productId", "transactionSummary.product.id"),
    dim("productName", "transactionSummary.product.name"),
    dim("productVersionId", "transactionSummary.product.versionId"),
    dim(
        "productVersionName",
        "transactionSummary.product.versionName",
    ),
    dim("productPlanId", "transactionSummary.productPlan.id"),
    dim("quotaId", "transactionSummary.quota.id"),
    dim("assetResourceId", "transactionSummary.assetResource.id"),
    dim("assetResourceName", "transactionSummary.assetResource.name"),
    dim(
        "subscriptionId",
        "transactionSummary.consumerDetails.subscription.id",
    ),
    dim(
        "subscriptionName",
        "transactionSummary.consumerDetails.subscription.name",
    ),
    dim(
        "consumerApplicationId",
        "transactionSummary.consumerDetails.application.id",
    ),
    dim(
        "consumerApplicationName",
        "transactionSummary.consumerDetails.application.name",
    ),
    dim(
        "consumerOrgId",
        "transactionSummary.consumerDetails.application.consumerOrgId",
    ),
    Dimension {
        field: "consumerOrgName",
        path: None,
    },
    Dimension {
        field: "consumerTeamId",
        path: None,
    },
    Dimension {
        field: "consumerTeamName",
        path: None,
    },
    dim(
        "publishedProductId",
        "transactionSummary.consumerDetails.publishedProduct.id",
    ),
    dim(
        "publishedProductName",
        "transactionSummary.consumerDetails.publishedProduct.name",
    ),
    dim(
        "marketplaceId",
        "transactionSummary.consumerDetails.marketplace.guid",
    ),
    dim(
        "marketplaceName",
        "transactionSummary.consumerDetails.marketplace.name",
    ),
    dim(
        "marketplaceConsumerOrgId",
        "transactionSummary.consumerDetails.marketplace.consumerOrgId",
    ),
];

pub(crate) fn dimension_index(field: &str) -> Option<usize> {
    DIMENSIONS.iter().position(|d| d.field == field)
}

/// `transactionSummary.status` values, in the order they are stored (reference §5.3).
pub(crate) const STATUSES: &[&str] = &["Success", "Failure", "Exception", "Unknown"];
pub(crate) const SUCCESS: u8 = 0;
pub(crate) const FAILURE: u8 = 1;
pub(crate) const EXCEPTION: u8 = 2;

/// String id 0 stands for "absent".
const ABSENT: u32 = 0;

/// All stored events, column by column.
#[derive(Debug)]
pub(crate) struct TrafficStore {
    strings: Vec<Box<str>>,
    string_ids: HashMap<Box<str>, u32>,
    /// Each distinct combination of dimension values, as string ids in [`DIMENSIONS`] order.
    profiles: Vec<Box<[u32]>>,
    profile_ids: HashMap<Box<[u32]>, u32>,
    pub timestamps: Vec<i64>,
    pub profile_of: Vec<u32>,
    pub durations: Vec<u32>,
    pub statuses: Vec<u8>,
    /// Transaction ids of injected events, by event index; generated ones are derived.
    transaction_ids: HashMap<usize, Box<str>>,
}

impl Default for TrafficStore {
    fn default() -> Self {
        Self {
            strings: vec!["".into()],
            string_ids: HashMap::new(),
            profiles: Vec::new(),
            profile_ids: HashMap::new(),
            timestamps: Vec::new(),
            profile_of: Vec::new(),
            durations: Vec::new(),
            statuses: Vec::new(),
            transaction_ids: HashMap::new(),
        }
    }
}

impl TrafficStore {
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    pub fn profile_count(&self) -> usize {
        self.profiles.len()
    }

    pub fn profile(&self, id: u32) -> &[u32] {
        &self.profiles[id as usize]
    }

    /// The text of a string id; `None` when absent.
    pub fn text(&self, id: u32) -> Option<&str> {
        (id != ABSENT).then(|| &*self.strings[id as usize])
    }

    fn intern(&mut self, text: &str) -> u32 {
        if text.is_empty() {
            return ABSENT;
        }
        if let Some(id) = self.string_ids.get(text) {
            return *id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(text.into());
        self.string_ids.insert(text.into(), id);
        id
    }

    fn profile_for(&mut self, values: &[Option<String>]) -> u32 {
        let ids: Box<[u32]> = values
            .iter()
            .map(|v| v.as_deref().map_or(ABSENT, |t| self.intern(t)))
            .collect();
        if let Some(id) = self.profile_ids.get(&ids) {
            return *id;
        }
        let id = self.profiles.len() as u32;
        self.profiles.push(ids.clone());
        self.profile_ids.insert(ids, id);
        id
    }

    fn push(&mut self, timestamp: i64, profile: u32, duration: u32, status: u8) {
        self.timestamps.push(timestamp);
        self.profile_of.push(profile);
        self.durations.push(duration);
        self.statuses.push(status);
    }

    fn add(&mut self, event: ParsedEvent) {
        let profile = self.profile_for(&event.dimensions);
        if let Some(id) = event.transaction_id {
            self.transaction_ids.insert(self.len(), id.into());
        }
        self.push(event.timestamp, profile, event.duration, event.status);
    }

    /// Validates one event and stores it.
    #[cfg(test)]
    pub fn add_event(&mut self, event: &Value) -> Result<(), String> {
        self.add(parse_event(event)?);
        Ok(())
    }

    /// The transaction id of event `index`: as injected, or derived for generated ones.
    pub fn transaction_id(&self, index: usize) -> String {
        self.transaction_ids
            .get(&index)
            .map(|id| id.to_string())
            .unwrap_or_else(|| format!("sandbox-txn-{index:010}"))
    }

    /// Event `index` rebuilt in the §5.3 shape.
    pub fn event_json(&self, index: usize) -> Value {
        let mut event = json!({
            "version": "1.0",
            "timestamp": self.timestamps[index],
            "transactionId": self.transaction_id(index),
            "type": "transactionSummary",
            "transactionSummary": {
                "status": STATUSES[self.statuses[index] as usize],
                "duration": self.durations[index],
            }
        });
        for (d, id) in DIMENSIONS
            .iter()
            .zip(self.profile(self.profile_of[index]).iter())
        {
            if let (Some(path), Some(text)) = (d.path, self.text(*id)) {
                let pointer = format!("/{}", path.replace('.', "/"));
                set_pointer(&mut event, &pointer, json!(text));
            }
        }
        event
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let mut current = root;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            current[*part] = value;
            return;
        }
        if !current[*part].is_object() {
            current[*part] = json!({});
        }
        current = &mut current[*part];
    }
}

/// One valid event, reduced to what is stored.
#[derive(Debug, PartialEq)]
pub(crate) struct ParsedEvent {
    pub timestamp: i64,
    pub status: u8,
    pub duration: u32,
    pub dimensions: Vec<Option<String>>,
    pub transaction_id: Option<String>,
}

/// Checks one injected event against the §5.3 shape.
pub(crate) fn parse_event(event: &Value) -> Result<ParsedEvent, String> {
    if !event.is_object() {
        return Err("must be a JSON object".to_owned());
    }
    if event.get("type").and_then(Value::as_str) != Some("transactionSummary") {
        return Err("type must be \"transactionSummary\"".to_owned());
    }
    let timestamp = event
        .get("timestamp")
        .and_then(Value::as_i64)
        .filter(|t| *t >= 0)
        .ok_or("timestamp must be epoch milliseconds (a non-negative integer)")?;
    let summary = event
        .get("transactionSummary")
        .filter(|s| s.is_object())
        .ok_or("transactionSummary must be an object")?;
    let status_text = summary
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let status = STATUSES
        .iter()
        .position(|s| *s == status_text)
        .ok_or_else(|| {
            format!(
                "transactionSummary.status must be one of {}",
                STATUSES.join(", ")
            )
        })? as u8;
    let duration = match summary.get("duration") {
        None | Some(Value::Null) => 0,
        Some(d) => d
            .as_f64()
            .filter(|d| *d >= 0.0 && *d <= u32::MAX as f64)
            .ok_or("transactionSummary.duration must be a non-negative number of milliseconds")?
            .round() as u32,
    };
    let mut dimensions = Vec::with_capacity(DIMENSIONS.len());
    for d in DIMENSIONS {
        let value = match d.path {
            None => None,
            Some(path) => match event.pointer(&format!("/{}", path.replace('.', "/"))) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(_) => return Err(format!("{path} must be a string")),
            },
        };
        dimensions.push(value);
    }
    let transaction_id = match event.get("transactionId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("transactionId must be a string".to_owned()),
    };
    Ok(ParsedEvent {
        timestamp,
        status,
        duration,
        dimensions,
        transaction_id,
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeneratedAsset {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub quota_id: Option<String>,
}

/// A subscription to generate traffic for.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeneratedSubscription {
    pub id: String,
    pub name: String,
    pub asset_resources: Vec<GeneratedAsset>,
    #[serde(default)]
    pub product_id: Option<String>,
    #[serde(default)]
    pub product_name: Option<String>,
    #[serde(default)]
    pub product_plan_id: Option<String>,
    /// Quota ids parallel to `assetResources` (an asset's own `quotaId` wins).
    #[serde(default)]
    pub quota_ids: Vec<String>,
    #[serde(default)]
    pub marketplace_id: Option<String>,
    #[serde(default)]
    pub consumer_org_id: Option<String>,
    #[serde(default)]
    pub environment_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GenerateRequest {
    pub seed: u64,
    pub count: u64,
    pub from: i64,
    pub to: i64,
    #[serde(default)]
    pub subscriptions: Option<Vec<GeneratedSubscription>>,
}

/// Most events one generate call may produce (memory guard).
const MAX_GENERATED: u64 = 20_000_000;

/// Id of an asset resource known only by the name a quota lists (`<asset>/<resource>`). The
/// catalog here has no AssetResource kind, so the id is a stable hash of the name [I].
pub(crate) fn asset_resource_id(name: &str) -> String {
    let fnv = |offset: u64| {
        name.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x6c62_272e_07bb_0142)
    )
}

/// Approved subscriptions of the catalog with the asset resources of their plan's quotas.
pub(crate) fn subscriptions_from_catalog(catalog: &Catalog) -> Vec<GeneratedSubscription> {
    let mut found = Vec::new();
    for sub in catalog.all_of("Subscription") {
        let doc = &sub.document;
        if doc["approval"]["state"] != "approved" {
            continue;
        }
        let product_name = doc["spec"]["product"].as_str().unwrap_or_default();
        let plan_name = doc["spec"]["plan"]["name"].as_str().unwrap_or_default();
        let product = catalog.named("Product", None, product_name);
        let plan = catalog.named("ProductPlan", None, plan_name);
        let mut assets = Vec::new();
        for quota in catalog
            .all_of("Quota")
            .filter(|q| q.scope.as_deref() == Some(plan_name))
        {
            let resources = quota.document["spec"]["resources"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for r in resources {
                if let Some(name) = r["name"].as_str() {
                    assets.push(GeneratedAsset {
                        id: asset_resource_id(name),
                        name: name.to_owned(),
                        quota_id: quota.document["metadata"]["id"].as_str().map(str::to_owned),
                    });
                }
            }
        }
        if assets.is_empty() {
            continue;
        }
        found.push(GeneratedSubscription {
            id: doc["metadata"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            name: sub.name.clone(),
            asset_resources: assets,
            product_id: product
                .and_then(|p| p.document["metadata"]["id"].as_str().map(str::to_owned)),
            product_name: Some(product_name.to_owned()),
            product_plan_id: plan
                .and_then(|p| p.document["metadata"]["id"].as_str().map(str::to_owned)),
            quota_ids: Vec::new(),
            marketplace_id: doc["marketplace"]["name"].as_str().map(str::to_owned),
            consumer_org_id: doc["marketplace"]["resource"]["owner"]["organization"]["id"]
                .as_str()
                .map(str::to_owned),
            environment_id: None,
        });
    }
    found
}

/// The dimension values of generated events for one (subscription, asset resource).
fn generated_dimensions(sub: &GeneratedSubscription, asset_index: usize) -> Vec<Option<String>> {
    let asset = &sub.asset_resources[asset_index];
    let quota = asset
        .quota_id
        .clone()
        .or_else(|| sub.quota_ids.get(asset_index).cloned());
    let values: HashMap<&str, Option<String>> = HashMap::from([
        (
            "environmentId",
            sub.environment_id
                .clone()
                .or(Some("sandbox-environment".to_owned())),
        ),
        ("statusDetail", None),
        ("proxyId", Some(format!("remoteApiId_{}", asset.name))),
        ("proxyName", Some(asset.name.clone())),
        ("productId", sub.product_id.clone()),
        ("productName", sub.product_name.clone()),
        ("productPlanId", sub.product_plan_id.clone()),
        ("quotaId", quota),
        ("assetResourceId", Some(asset.id.clone())),
        ("assetResourceName", Some(asset.name.clone())),
        ("subscriptionId", Some(sub.id.clone())),
        ("subscriptionName", Some(sub.name.clone())),
        ("consumerApplicationId", Some(format!("app-{}", sub.id))),
        ("consumerOrgId", sub.consumer_org_id.clone()),
        ("marketplaceId", sub.marketplace_id.clone()),
    ]);
    DIMENSIONS
        .iter()
        .map(|d| values.get(d.field).cloned().flatten())
        .collect()
}

/// Counts per (subscriptionId, assetResourceId) of what was generated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct GeneratedTotals {
    pub total: u64,
    pub success: u64,
    pub failure: u64,
    pub exception: u64,
}

/// Adds `count` synthetic events, the same ones for the same seed, and says what it added.
pub(crate) fn generate(
    store: &mut TrafficStore,
    request: &GenerateRequest,
    subscriptions: &[GeneratedSubscription],
) -> Result<BTreeMap<(String, String), GeneratedTotals>, String> {
    if request.from >= request.to {
        return Err("from must be before to".to_owned());
    }
    if request.count > MAX_GENERATED {
        return Err(format!("count must be at most {MAX_GENERATED}"));
    }
    let pairs: Vec<(usize, usize)> = subscriptions
        .iter()
        .enumerate()
        .flat_map(|(s, sub)| (0..sub.asset_resources.len()).map(move |a| (s, a)))
        .collect();
    if pairs.is_empty() {
        return Err("no subscription with asset resources to generate traffic for".to_owned());
    }
    let profiles: Vec<u32> = pairs
        .iter()
        .map(|(s, a)| store.profile_for(&generated_dimensions(&subscriptions[*s], *a)))
        .collect();
    let mut per_pair = vec![GeneratedTotals::default(); pairs.len()];
    let mut rng = StdRng::seed_from_u64(request.seed);
    store.timestamps.reserve(request.count as usize);
    store.profile_of.reserve(request.count as usize);
    store.durations.reserve(request.count as usize);
    store.statuses.reserve(request.count as usize);
    for _ in 0..request.count {
        let pair = rng.random_range(0..pairs.len());
        let timestamp = rng.random_range(request.from..request.to);
        let roll = rng.random_range(0..100u32);
        let status = match roll {
            0..90 => SUCCESS,
            90..97 => FAILURE,
            _ => EXCEPTION,
        };
        let duration = rng.random_range(5..500u32);
        store.push(timestamp, profiles[pair], duration, status);
        let totals = &mut per_pair[pair];
        totals.total += 1;
        match status {
            SUCCESS => totals.success += 1,
            FAILURE => totals.failure += 1,
            _ => totals.exception += 1,
        }
    }
    let mut result: BTreeMap<(String, String), GeneratedTotals> = BTreeMap::new();
    for ((s, a), totals) in pairs.iter().zip(per_pair) {
        if totals.total == 0 {
            continue;
        }
        let key = (
            subscriptions[*s].id.clone(),
            subscriptions[*s].asset_resources[*a].id.clone(),
        );
        let entry = result.entry(key).or_default();
        entry.total += totals.total;
        entry.success += totals.success;
        entry.failure += totals.failure;
        entry.exception += totals.exception;
    }
    Ok(result)
}

fn control_error(status: u16, message: impl Into<String>) -> HttpResponse {
    let code = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    HttpResponse::build(code).json(json!({"error": message.into()}))
}

/// `POST /_sandbox/traffic`: a JSON array of events; all or nothing.
pub(crate) async fn inject(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    let events: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(Value::Array(events)) => events,
        _ => {
            return control_error(
                400,
                "the body must be a JSON array of transactionSummary events",
            );
        }
    };
    let mut parsed = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        match parse_event(event) {
            Ok(p) => parsed.push(p),
            Err(e) => return control_error(400, format!("event {i}: {e}")),
        }
    }
    let accepted = parsed.len();
    let mut store = state.amplify.traffic.write();
    for event in parsed {
        store.add(event);
    }
    HttpResponse::Ok().json(json!({"accepted": accepted, "stored": store.len()}))
}

/// `POST /_sandbox/traffic/generate`.
pub(crate) async fn generate_route(
    state: web::Data<SandboxState>,
    body: web::Bytes,
) -> HttpResponse {
    let request: GenerateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return control_error(400, format!("invalid generate request: {e}")),
    };
    let subscriptions = match &request.subscriptions {
        Some(subs) => subs.clone(),
        None => subscriptions_from_catalog(&state.amplify.catalog.lock()),
    };
    if let Some(sub) = subscriptions.iter().find(|s| s.asset_resources.is_empty()) {
        return control_error(
            400,
            format!("subscription '{}' has no assetResources", sub.id),
        );
    }
    let mut store = state.amplify.traffic.write();
    match generate(&mut store, &request, &subscriptions) {
        Ok(totals) => {
            let names: HashMap<(&str, &str), (&str, &str)> = subscriptions
                .iter()
                .flat_map(|s| {
                    s.asset_resources.iter().map(move |a| {
                        (
                            (s.id.as_str(), a.id.as_str()),
                            (s.name.as_str(), a.name.as_str()),
                        )
                    })
                })
                .collect();
            let rows: Vec<Value> = totals
                .iter()
                .map(|((sub, asset), t)| {
                    let (sub_name, asset_name) = names
                        .get(&(sub.as_str(), asset.as_str()))
                        .copied()
                        .unwrap_or_default();
                    json!({"subscriptionId": sub, "subscriptionName": sub_name,
                           "assetResourceId": asset, "assetResourceName": asset_name,
                           "totalCount": t.total, "successCount": t.success,
                           "failureCount": t.failure, "exceptionCount": t.exception})
                })
                .collect();
            HttpResponse::Ok().json(json!({
                "generated": request.count, "from": request.from, "to": request.to,
                "stored": store.len(), "totals": rows,
            }))
        }
        Err(e) => control_error(400, e),
    }
}

/// `GET /_sandbox/traffic`: how much is stored.
pub(crate) async fn describe(state: web::Data<SandboxState>) -> HttpResponse {
    let store = state.amplify.traffic.read();
    HttpResponse::Ok().json(json!({"stored": store.len(), "profiles": store.profile_count()}))
}

/// `DELETE /_sandbox/traffic`.
pub(crate) async fn clear(state: web::Data<SandboxState>) -> HttpResponse {
    state.amplify.traffic.write().clear();
    HttpResponse::NoContent().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(ts: i64, sub: &str, asset: &str, status: &str, duration: u32) -> Value {
        json!({"version": "1.0", "timestamp": ts, "transactionId": format!("t{ts}"), "environmentId": "env",
               "tenantId": "100000142", "type": "transactionSummary",
               "transactionSummary": {"status": status, "statusDetail": "200", "duration": duration,
                 "proxy": {"id": "p1", "name": "Pets", "revision": 1},
                 "assetResource": {"id": asset, "name": format!("{asset}-name")},
                 "consumerDetails": {"subscription": {"id": sub, "name": format!("{sub}-name")}}}})
    }

    #[test]
    fn events_are_validated_and_rebuilt_from_the_compact_store() {
        let e = event(1000, "s1", "a1", "Success", 61);
        let parsed = parse_event(&e).unwrap();
        let mut store = TrafficStore::default();
        store.add(parsed);
        let rebuilt = store.event_json(0);
        assert_eq!(rebuilt["transactionId"], "t1000");
        assert_eq!(
            rebuilt["transactionSummary"]["consumerDetails"]["subscription"]["id"],
            "s1"
        );
        assert_eq!(rebuilt["transactionSummary"]["duration"], 61);
        let mut bad = e.clone();
        bad["transactionSummary"]["status"] = json!("Fine");
        assert!(parse_event(&bad).unwrap_err().contains("status"));
        let mut bad = e.clone();
        bad["timestamp"] = json!("yesterday");
        assert!(parse_event(&bad).unwrap_err().contains("timestamp"));
        assert!(parse_event(&json!({"type": "transactionEvent"})).is_err());
    }

    #[test]
    fn generation_is_deterministic_and_its_totals_add_up() {
        let subs = vec![GeneratedSubscription {
            id: "s1".into(),
            name: "one".into(),
            asset_resources: vec![
                GeneratedAsset {
                    id: "a1".into(),
                    name: "api/a1".into(),
                    quota_id: None,
                },
                GeneratedAsset {
                    id: "a2".into(),
                    name: "api/a2".into(),
                    quota_id: None,
                },
            ],
            product_id: None,
            product_name: None,
            product_plan_id: None,
            quota_ids: vec![],
            marketplace_id: None,
            consumer_org_id: None,
            environment_id: None,
        }];
        let request = GenerateRequest {
            seed: 7,
            count: 1000,
            from: 0,
            to: 10_000,
            subscriptions: None,
        };
        let mut a = TrafficStore::default();
        let mut b = TrafficStore::default();
        let totals = generate(&mut a, &request, &subs).unwrap();
        assert_eq!(totals, generate(&mut b, &request, &subs).unwrap());
        assert_eq!(a.timestamps, b.timestamps);
        assert_eq!(totals.values().map(|t| t.total).sum::<u64>(), 1000);
        assert!(
            totals
                .values()
                .all(|t| t.total == t.success + t.failure + t.exception)
        );
        assert!(a.timestamps.iter().all(|t| (0..10_000).contains(t)));
    }
}
