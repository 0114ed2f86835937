//! Stored API traffic for the Traceability emulator: transaction summaries as agents publish
//! them, in either shape (reference §5.3's `transactionSummary` LogEvent, §5.4's
//! `api.transaction.summary` InsightsEvent v4), kept compactly (interned dimension profiles, one
//! row of plain numbers per event), their validation, deterministic generation, and the
//! `/_sandbox/traffic` routes.

use std::collections::{BTreeMap, HashMap};

use actix_web::{HttpResponse, web};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

use super::store::Catalog;
use crate::SandboxState;

/// One stored field of a transaction summary: where it sits in a LogEvent (§5.3) and in an
/// InsightsEvent v4 (§5.4), and the Traceability summary row field (§5.1) it groups as, if any.
/// Row fields without a path (names no agent sends) group as absent.
#[derive(Debug)]
pub(crate) struct Dimension {
    /// The §5.1 summary row field; `None` when §5.1 lists no field for it.
    pub field: Option<&'static str>,
    /// Its path in a LogEvent.
    pub path: Option<&'static str>,
    /// Its path in an InsightsEvent v4, when v4 copies it as is (the proxy is rewritten, see
    /// [`TrafficStore::event_json`]).
    pub v4: Option<&'static str>,
}

const fn dim(
    field: Option<&'static str>,
    path: Option<&'static str>,
    v4: Option<&'static str>,
) -> Dimension {
    Dimension { field, path, v4 }
}

/// Index of the proxy id and name in [`DIMENSIONS`] (v4 derives `api` and `proxy` from them).
const PROXY_ID: usize = 8;
const PROXY_NAME: usize = 9;

/// The one table of stored fields. Paths are the SDK's builders' (`LogEvent`/`Summary` in
/// `pkg/transaction/definitions.go`, `TransactionSummaryData` in `v2event.go`); row fields are
/// §5.1's captured list; the pairing of row names with event paths is [I] (no spec links them).
pub(crate) const DIMENSIONS: &[Dimension] = &[
    dim(
        Some("environmentId"),
        Some("environmentId"),
        Some("distribution.environment"),
    ),
    dim(Some("environmentName"), Some("environmentName"), None),
    dim(None, Some("tenantId"), Some("org")),
    dim(None, Some("trcbltPartitionId"), None),
    dim(None, Some("apicDeployment"), Some("data.apicDeployment")),
    dim(
        None,
        Some("transactionSummary.statusDetail"),
        Some("data.statusDetail"),
    ),
    dim(Some("teamId"), Some("transactionSummary.team.id"), None),
    dim(Some("teamName"), None, None),
    // PROXY_ID, PROXY_NAME
    dim(Some("proxyId"), Some("transactionSummary.proxy.id"), None),
    dim(
        Some("proxyName"),
        Some("transactionSummary.proxy.name"),
        None,
    ),
    dim(
        Some("proxyRevision"),
        Some("transactionSummary.proxy.revision"),
        None,
    ),
    dim(
        None,
        Some("transactionSummary.proxy.apiServiceId"),
        Some("data.api.apiServiceId"),
    ),
    dim(
        None,
        Some("transactionSummary.proxy.apiServiceInstance"),
        Some("data.apiServiceRevision.id"),
    ),
    dim(None, Some("transactionSummary.entryPoint.type"), None),
    dim(
        Some("method"),
        Some("transactionSummary.entryPoint.method"),
        Some("data.entryPoint.method"),
    ),
    dim(
        Some("virtualHost"),
        Some("transactionSummary.entryPoint.host"),
        Some("data.entryPoint.host"),
    ),
    dim(
        Some("uri"),
        Some("transactionSummary.entryPoint.path"),
        Some("data.entryPoint.path"),
    ),
    dim(
        Some("applicationId"),
        Some("transactionSummary.application.id"),
        None,
    ),
    dim(
        Some("applicationName"),
        Some("transactionSummary.application.name"),
        None,
    ),
    dim(
        Some("productId"),
        Some("transactionSummary.product.id"),
        Some("data.product.id"),
    ),
    dim(
        Some("productName"),
        Some("transactionSummary.product.name"),
        None,
    ),
    dim(
        None,
        Some("transactionSummary.product.versionId"),
        Some("data.product.versionId"),
    ),
    dim(None, Some("transactionSummary.product.versionName"), None),
    dim(
        None,
        Some("transactionSummary.productPlan.id"),
        Some("data.productPlan.id"),
    ),
    dim(
        None,
        Some("transactionSummary.quota.id"),
        Some("data.quota.id"),
    ),
    dim(
        Some("assetResourceId"),
        Some("transactionSummary.assetResource.id"),
        Some("data.assetResource.id"),
    ),
    dim(
        Some("assetResourceName"),
        Some("transactionSummary.assetResource.name"),
        None,
    ),
    dim(
        Some("subscriptionId"),
        Some("transactionSummary.consumerDetails.subscription.id"),
        Some("data.consumerDetails.subscription.id"),
    ),
    dim(
        Some("subscriptionName"),
        Some("transactionSummary.consumerDetails.subscription.name"),
        None,
    ),
    dim(
        None,
        Some("transactionSummary.consumerDetails.application.id"),
        Some("data.consumerDetails.application.id"),
    ),
    dim(
        None,
        Some("transactionSummary.consumerDetails.application.name"),
        None,
    ),
    dim(
        Some("consumerOrgId"),
        Some("transactionSummary.consumerDetails.application.consumerOrgId"),
        Some("data.consumerDetails.application.consumerOrgId"),
    ),
    dim(Some("consumerOrgName"), None, None),
    dim(Some("consumerTeamId"), None, None),
    dim(Some("consumerTeamName"), None, None),
    dim(
        None,
        Some("transactionSummary.consumerDetails.publishedProduct.id"),
        Some("data.consumerDetails.publishedProduct.id"),
    ),
    dim(
        None,
        Some("transactionSummary.consumerDetails.publishedProduct.name"),
        None,
    ),
    dim(
        Some("marketplaceId"),
        Some("transactionSummary.consumerDetails.marketplace.guid"),
        Some("data.consumerDetails.marketplace.guid"),
    ),
    dim(Some("marketplaceName"), None, None),
    dim(
        None,
        Some("transactionSummary.consumerDetails.marketplace.consumerOrgId"),
        Some("data.consumerDetails.consumerOrgId"),
    ),
    // v4 only: the agent that sent it.
    dim(None, None, Some("data.reporter.version")),
    dim(None, None, Some("data.reporter.type")),
    dim(None, None, Some("data.reporter.agentSDKVersion")),
    dim(None, None, Some("data.reporter.agentName")),
];

/// The dimension a §5.1 summary row field names.
pub(crate) fn dimension_index(field: &str) -> Option<usize> {
    DIMENSIONS.iter().position(|d| d.field == Some(field))
}

/// What prefixes a proxy id in a LogEvent's `proxy.id` and v4's `api.id`, and not in v4's
/// `proxy.id` (SDK `util.go` `SummaryEventProxyIDPrefix`).
const PROXY_ID_PREFIX: &str = "remoteApiId_";
/// The InsightsEvent name of a transaction summary and its envelope version (§5.4).
pub(crate) const INSIGHTS_SUMMARY: &str = "api.transaction.summary";
const INSIGHTS_VERSION: &str = "4";
/// A `timestamp` below this is epoch seconds (an agent that never calls `SetTimestamp`, §5.4).
pub(crate) const SECONDS_BELOW: i64 = 100_000_000_000;

/// How a stored event was (or is to be) published.
pub(crate) mod shape {
    /// An InsightsEvent v4, not a LogEvent.
    pub const V4: u8 = 1;
    /// Its `timestamp` is in seconds.
    pub const SECONDS: u8 = 2;
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
    /// [`shape`] flags per event.
    pub shapes: Vec<u8>,
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
            shapes: Vec::new(),
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

    /// Stores an event; `timestamp` is in milliseconds whatever `shape` says it is sent in.
    fn push(&mut self, timestamp: i64, profile: u32, duration: u32, status: u8, shape: u8) {
        self.timestamps.push(timestamp);
        self.profile_of.push(profile);
        self.durations.push(duration);
        self.statuses.push(status);
        self.shapes.push(shape);
    }

    fn add(&mut self, event: ParsedEvent) {
        let profile = self.profile_for(&event.dimensions);
        if let Some(id) = event.transaction_id {
            self.transaction_ids.insert(self.len(), id.into());
        }
        self.push(
            event.timestamp,
            profile,
            event.duration,
            event.status,
            event.shape,
        );
    }

    /// Whether event `index` is published as an InsightsEvent v4.
    pub fn is_v4(&self, index: usize) -> bool {
        self.shapes[index] & shape::V4 != 0
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

    /// The `timestamp` event `index` is published with: milliseconds, or seconds for an agent
    /// that never sets it.
    fn sent_timestamp(&self, index: usize) -> i64 {
        let ms = self.timestamps[index];
        if self.shapes[index] & shape::SECONDS != 0 {
            ms.div_euclid(1000)
        } else {
            ms
        }
    }

    fn dimension_text(&self, index: usize, d: usize) -> Option<&str> {
        self.text(self.profile(self.profile_of[index])[d])
    }

    /// Event `index` as its agent published it: a §5.3 LogEvent or a §5.4 InsightsEvent v4.
    pub fn event_json(&self, index: usize) -> Value {
        if self.is_v4(index) {
            self.insights_json(index)
        } else {
            self.log_event_json(index)
        }
    }

    /// Event `index` as a §5.3 LogEvent (`NewTransactionSummaryBuilder`).
    pub fn log_event_json(&self, index: usize) -> Value {
        let mut event = json!({
            "version": "1.0",
            "timestamp": self.sent_timestamp(index),
            "transactionId": self.transaction_id(index),
            "type": "transactionSummary",
            "transactionSummary": {
                "status": STATUSES[self.statuses[index] as usize],
                "duration": self.durations[index],
            }
        });
        for (i, d) in DIMENSIONS.iter().enumerate() {
            if let (Some(path), Some(text)) = (d.path, self.dimension_text(index, i)) {
                set_path(&mut event, path, field_value(path, text));
            }
        }
        event
    }

    /// Event `index` as a §5.4 InsightsEvent v4, as `BuildTransactionV2Data` builds it from
    /// the LogEvent: a fresh top-level `id` every time (it is not the transaction's), the
    /// transaction id as `session.id`, absent fields left out.
    pub fn insights_json(&self, index: usize) -> Value {
        let mut event = json!({
            "id": fresh_uuid(),
            "event": INSIGHTS_SUMMARY,
            "version": INSIGHTS_VERSION,
            "timestamp": self.sent_timestamp(index),
            "distribution": {},
            "data": {
                "version": "2",
                "status": STATUSES[self.statuses[index] as usize],
                "duration": self.durations[index],
            },
            "session": {"id": self.transaction_id(index)},
        });
        for (i, d) in DIMENSIONS.iter().enumerate() {
            if let (Some(path), Some(text)) = (d.v4, self.dimension_text(index, i)) {
                set_path(&mut event, path, json!(text));
            }
        }
        // `api` keeps the LogEvent's prefixed proxy id; `proxy` has it without the prefix.
        let id = self.dimension_text(index, PROXY_ID);
        let name = self.dimension_text(index, PROXY_NAME);
        if id.is_some() || name.is_some() {
            let id = id.unwrap_or_default();
            set_path(&mut event, "data.api.id", json!(id));
            set_path(
                &mut event,
                "data.proxy.id",
                json!(id.strip_prefix(PROXY_ID_PREFIX).unwrap_or(id)),
            );
            if let Some(name) = name {
                set_path(&mut event, "data.api.name", json!(name));
                set_path(&mut event, "data.proxy.name", json!(name));
            }
        }
        if event["data"]["consumerDetails"].is_object()
            && !event["data"]["consumerDetails"]["application"].is_object()
        {
            // buildConsumerDetails always writes an application, empty or not.
            event["data"]["consumerDetails"]["application"] = json!({});
        }
        event
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A fresh v4 event id (a uuid v4 in form), new on every build as the SDK's `uuid.NewString()`.
fn fresh_uuid() -> String {
    let bits: u128 = rand::random();
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// A stored field's JSON value: numbers where the SDK writes numbers (`proxy.revision`).
fn field_value(path: &str, text: &str) -> Value {
    match text.parse::<i64>() {
        Ok(n) if path.ends_with(".revision") => json!(n),
        _ => json!(text),
    }
}

/// Sets the value at a dotted path, creating objects on the way.
fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut current = root;
    let parts: Vec<&str> = path.split('.').collect();
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

fn get_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, part| v.get(part))
}

/// One valid event, reduced to what is stored.
#[derive(Debug, PartialEq)]
pub(crate) struct ParsedEvent {
    /// Epoch milliseconds.
    pub timestamp: i64,
    pub status: u8,
    pub duration: u32,
    pub dimensions: Vec<Option<String>>,
    pub transaction_id: Option<String>,
    /// [`shape`] flags.
    pub shape: u8,
}

fn text_at(event: &Value, path: &str) -> Result<Option<String>, String> {
    match get_path(event, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(format!("{path} must be a string")),
    }
}

/// Checks one injected event against its shape: a §5.3 `transactionSummary` LogEvent or a
/// §5.4 `api.transaction.summary` InsightsEvent v4 (other types and legs are not stored).
pub(crate) fn parse_event(event: &Value) -> Result<ParsedEvent, String> {
    if !event.is_object() {
        return Err("must be a JSON object".to_owned());
    }
    let v4 = event.get("type").is_none() && event.get("event").is_some();
    let (summary_key, id_path) = if v4 {
        if event.get("event").and_then(Value::as_str) != Some(INSIGHTS_SUMMARY) {
            return Err(format!("event must be \"{INSIGHTS_SUMMARY}\""));
        }
        if event.get("version").and_then(Value::as_str) != Some(INSIGHTS_VERSION) {
            return Err(format!("version must be \"{INSIGHTS_VERSION}\""));
        }
        ("data", "session.id")
    } else {
        if event.get("type").and_then(Value::as_str) != Some("transactionSummary") {
            return Err(
                "type must be \"transactionSummary\" (or event \"api.transaction.summary\")"
                    .to_owned(),
            );
        }
        ("transactionSummary", "transactionId")
    };
    let sent = event
        .get("timestamp")
        .and_then(Value::as_i64)
        .filter(|t| *t >= 0)
        .ok_or("timestamp must be epoch milliseconds or seconds (a non-negative integer)")?;
    let seconds = sent < SECONDS_BELOW;
    let timestamp = if seconds { sent * 1000 } else { sent };
    let summary = event
        .get(summary_key)
        .filter(|s| s.is_object())
        .ok_or_else(|| format!("{summary_key} must be an object"))?;
    let status_text = summary.get("status").and_then(Value::as_str);
    // v4 leaves an empty status out (omitempty).
    let status_text = match status_text {
        None if v4 => "Unknown",
        other => other.unwrap_or_default(),
    };
    let status = STATUSES
        .iter()
        .position(|s| *s == status_text)
        .ok_or_else(|| {
            format!(
                "{summary_key}.status must be one of {}",
                STATUSES.join(", ")
            )
        })? as u8;
    let duration = match summary.get("duration") {
        None | Some(Value::Null) => 0,
        Some(d) => d
            .as_f64()
            .filter(|d| *d >= 0.0 && *d <= u32::MAX as f64)
            .ok_or_else(|| {
                format!("{summary_key}.duration must be a non-negative number of milliseconds")
            })?
            .round() as u32,
    };
    let mut dimensions = Vec::with_capacity(DIMENSIONS.len());
    for (i, d) in DIMENSIONS.iter().enumerate() {
        let value = match (v4, d.path, d.v4) {
            (false, Some(path), _) => text_at(event, path)?,
            (true, _, Some(path)) => text_at(event, path)?,
            (true, _, None) if i == PROXY_ID => {
                text_at(event, "data.api.id")?
                    .or(text_at(event, "data.proxy.id")?.map(|id| format!("{PROXY_ID_PREFIX}{id}")))
            }
            (true, _, None) if i == PROXY_NAME => {
                text_at(event, "data.api.name")?.or(text_at(event, "data.proxy.name")?)
            }
            _ => None,
        };
        dimensions.push(value);
    }
    let transaction_id = match get_path(event, id_path) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(format!("{id_path} must be a string")),
    };
    Ok(ParsedEvent {
        timestamp,
        status,
        duration,
        dimensions,
        transaction_id,
        shape: if v4 { shape::V4 } else { 0 } | if seconds { shape::SECONDS } else { 0 },
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeneratedAsset {
    pub id: String,
    /// The name events carry (`assetResource.name`): the resource's own name, as the SDK sends
    /// it.
    pub name: String,
    #[serde(default)]
    pub quota_id: Option<String>,
    /// The name the quota lists (`<asset>/<resource>`), for the generate answer; not sent.
    #[serde(default)]
    pub listed: Option<String>,
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
    /// The share (0.0–1.0) of events published as InsightsEvents v4 (agent-sdk ≥ v1.1.146);
    /// the rest are LogEvents. Default [`DEFAULT_V4_SHARE`].
    #[serde(default, alias = "v4Share")]
    pub v4_share: Option<f64>,
}

/// LogEvents only unless asked: traffic generated before both shapes existed stays the same for
/// the same seed.
pub(crate) const DEFAULT_V4_SHARE: f64 = 0.0;

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
                        name: name
                            .rsplit_once('/')
                            .map_or(name, |(_, own)| own)
                            .to_owned(),
                        quota_id: quota.document["metadata"]["id"].as_str().map(str::to_owned),
                        listed: Some(name.to_owned()),
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

/// The tenant, environment and agent generated events name [I: fixed values of the shapes the
/// SDK's builders set].
const GENERATED_TENANT: &str = "100000142";
const GENERATED_ENVIRONMENT: &str = "sandbox-environment";
const GENERATED_AGENT: [(&str, &str); 4] = [
    ("data.reporter.version", "1.0.0"),
    ("data.reporter.type", "SandboxTraceabilityAgent"),
    ("data.reporter.agentSDKVersion", "1.1.152"),
    ("data.reporter.agentName", "sandbox-traceability-agent"),
];

/// `statusDetail` per status (the HTTP status the gateway answered).
fn status_detail(status: u8) -> &'static str {
    match status {
        SUCCESS => "200",
        FAILURE => "500",
        EXCEPTION => "502",
        _ => "0",
    }
}

/// The dimension values of generated events for one (subscription, asset resource, status):
/// every field the SDK's summary builder sets (and v4's reporter).
fn generated_dimensions(
    sub: &GeneratedSubscription,
    asset_index: usize,
    status: u8,
) -> Vec<Option<String>> {
    let asset = &sub.asset_resources[asset_index];
    let quota = asset
        .quota_id
        .clone()
        .or_else(|| sub.quota_ids.get(asset_index).cloned());
    let some = |s: &str| Some(s.to_owned());
    let by_path: HashMap<&str, Option<String>> = HashMap::from([
        (
            "environmentId",
            sub.environment_id.clone().or(some(GENERATED_ENVIRONMENT)),
        ),
        ("environmentName", some("Sandbox")),
        ("tenantId", some(GENERATED_TENANT)),
        ("trcbltPartitionId", some(GENERATED_TENANT)),
        ("apicDeployment", some("prod")),
        (
            "transactionSummary.statusDetail",
            some(status_detail(status)),
        ),
        ("transactionSummary.team.id", some("sandbox-provider-team")),
        (
            "transactionSummary.proxy.id",
            Some(format!("{PROXY_ID_PREFIX}{}", asset.name)),
        ),
        ("transactionSummary.proxy.name", Some(asset.name.clone())),
        ("transactionSummary.proxy.revision", some("1")),
        (
            "transactionSummary.proxy.apiServiceId",
            Some(format!("svc-{}", asset.id)),
        ),
        (
            "transactionSummary.proxy.apiServiceInstance",
            Some(format!("inst-{}", asset.id)),
        ),
        ("transactionSummary.entryPoint.type", some("http")),
        ("transactionSummary.entryPoint.method", some("GET")),
        (
            "transactionSummary.entryPoint.path",
            Some(format!("/{}", asset.name)),
        ),
        (
            "transactionSummary.entryPoint.host",
            some("api.sandbox.example"),
        ),
        ("transactionSummary.product.id", sub.product_id.clone()),
        ("transactionSummary.product.name", sub.product_name.clone()),
        (
            "transactionSummary.product.versionId",
            sub.product_id.as_ref().map(|p| format!("{p}-release")),
        ),
        (
            "transactionSummary.product.versionName",
            sub.product_id.as_ref().map(|_| "1.0.0".to_owned()),
        ),
        (
            "transactionSummary.productPlan.id",
            sub.product_plan_id.clone(),
        ),
        ("transactionSummary.quota.id", quota),
        (
            "transactionSummary.assetResource.id",
            Some(asset.id.clone()),
        ),
        (
            "transactionSummary.assetResource.name",
            Some(asset.name.clone()),
        ),
        (
            "transactionSummary.consumerDetails.subscription.id",
            Some(sub.id.clone()),
        ),
        (
            "transactionSummary.consumerDetails.subscription.name",
            Some(sub.name.clone()),
        ),
        (
            "transactionSummary.consumerDetails.application.id",
            Some(format!("app-{}", sub.id)),
        ),
        (
            "transactionSummary.consumerDetails.application.name",
            Some(format!("{} app", sub.name)),
        ),
        (
            "transactionSummary.consumerDetails.application.consumerOrgId",
            sub.consumer_org_id.clone(),
        ),
        (
            "transactionSummary.consumerDetails.publishedProduct.id",
            sub.product_id.as_ref().map(|p| format!("{p}-published")),
        ),
        (
            "transactionSummary.consumerDetails.publishedProduct.name",
            sub.product_name.clone(),
        ),
        (
            "transactionSummary.consumerDetails.marketplace.guid",
            sub.marketplace_id.clone(),
        ),
        (
            "transactionSummary.consumerDetails.marketplace.consumerOrgId",
            sub.consumer_org_id.clone(),
        ),
    ]);
    DIMENSIONS
        .iter()
        .map(|d| match (d.path, d.v4) {
            (Some(path), _) => by_path.get(path).cloned().flatten(),
            (None, Some(v4)) => GENERATED_AGENT
                .iter()
                .find(|(p, _)| *p == v4)
                .map(|(_, v)| (*v).to_owned()),
            (None, None) => None,
        })
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
    let v4_share = request.v4_share.unwrap_or(DEFAULT_V4_SHARE);
    if !(0.0..=1.0).contains(&v4_share) {
        return Err("v4_share must be between 0.0 and 1.0".to_owned());
    }
    // One profile per (pair, status): statusDetail follows the status.
    let profiles: Vec<[u32; 3]> = pairs
        .iter()
        .map(|(s, a)| {
            [SUCCESS, FAILURE, EXCEPTION].map(|status| {
                store.profile_for(&generated_dimensions(&subscriptions[*s], *a, status))
            })
        })
        .collect();
    let mut per_pair = vec![GeneratedTotals::default(); pairs.len()];
    let mut rng = StdRng::seed_from_u64(request.seed);
    store.timestamps.reserve(request.count as usize);
    store.profile_of.reserve(request.count as usize);
    store.durations.reserve(request.count as usize);
    store.statuses.reserve(request.count as usize);
    store.shapes.reserve(request.count as usize);
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
        // Drawn only when asked for, so LogEvent-only traffic is the same as before for a seed.
        let shape = if v4_share > 0.0 && rng.random_bool(v4_share) {
            shape::V4
        } else {
            0
        };
        store.push(
            timestamp,
            profiles[pair][status as usize],
            duration,
            status,
            shape,
        );
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
            let names: HashMap<(&str, &str), (&str, &GeneratedAsset)> = subscriptions
                .iter()
                .flat_map(|s| {
                    s.asset_resources
                        .iter()
                        .map(move |a| ((s.id.as_str(), a.id.as_str()), (s.name.as_str(), a)))
                })
                .collect();
            let rows: Vec<Value> = totals
                .iter()
                .map(|((sub, asset), t)| {
                    let (sub_name, generated) = names[&(sub.as_str(), asset.as_str())];
                    json!({"subscriptionId": sub, "subscriptionName": sub_name,
                           "assetResourceId": asset, "assetResourceName": generated.name,
                           "listedName": generated.listed, "quotaId": generated.quota_id,
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
                    name: "a1".into(),
                    quota_id: None,
                    listed: Some("api/a1".into()),
                },
                GeneratedAsset {
                    id: "a2".into(),
                    name: "a2".into(),
                    quota_id: None,
                    listed: Some("api/a2".into()),
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
            v4_share: None,
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

    fn paths_of(value: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                paths_of(v, &path, out);
            }
        } else {
            out.push(prefix.to_owned());
        }
    }

    fn catalog_sub() -> GeneratedSubscription {
        GeneratedSubscription {
            id: "8a2e-sub".into(),
            name: "acme-gold".into(),
            asset_resources: vec![GeneratedAsset {
                id: asset_resource_id("pets/list"),
                name: "list".into(),
                quota_id: Some("8a2e-quota".into()),
                listed: Some("pets/list".into()),
            }],
            product_id: Some("8a2e-product".into()),
            product_name: Some("pets".into()),
            product_plan_id: Some("8a2e-plan".into()),
            quota_ids: vec![],
            marketplace_id: Some("mkt-guid".into()),
            consumer_org_id: Some("650130132060094".into()),
            environment_id: None,
        }
    }

    #[test]
    fn generated_events_carry_what_the_sdk_builders_set_in_both_shapes() {
        let request = GenerateRequest {
            seed: 3,
            count: 400,
            from: 1_796_000_000_000,
            to: 1_796_000_360_000,
            subscriptions: None,
            v4_share: Some(0.5),
        };
        let mut store = TrafficStore::default();
        generate(&mut store, &request, &[catalog_sub()]).unwrap();
        let v4 = (0..store.len()).filter(|i| store.is_v4(*i)).count();
        assert!((120..280).contains(&v4), "about half are v4: {v4}");
        let log_index = (0..store.len()).find(|i| !store.is_v4(*i)).unwrap();
        let v4_index = (0..store.len()).find(|i| store.is_v4(*i)).unwrap();

        let mut log = Vec::new();
        paths_of(&store.event_json(log_index), "", &mut log);
        for path in [
            "version",
            "timestamp",
            "transactionId",
            "environmentId",
            "environmentName",
            "tenantId",
            "trcbltPartitionId",
            "apicDeployment",
            "type",
            "transactionSummary.status",
            "transactionSummary.statusDetail",
            "transactionSummary.duration",
            "transactionSummary.team.id",
            "transactionSummary.proxy.id",
            "transactionSummary.proxy.name",
            "transactionSummary.proxy.revision",
            "transactionSummary.entryPoint.type",
            "transactionSummary.entryPoint.method",
            "transactionSummary.entryPoint.path",
            "transactionSummary.entryPoint.host",
            "transactionSummary.product.id",
            "transactionSummary.product.name",
            "transactionSummary.product.versionId",
            "transactionSummary.product.versionName",
            "transactionSummary.productPlan.id",
            "transactionSummary.quota.id",
            "transactionSummary.assetResource.id",
            "transactionSummary.assetResource.name",
            "transactionSummary.consumerDetails.subscription.id",
            "transactionSummary.consumerDetails.subscription.name",
            "transactionSummary.consumerDetails.application.id",
            "transactionSummary.consumerDetails.application.name",
            "transactionSummary.consumerDetails.application.consumerOrgId",
            "transactionSummary.consumerDetails.publishedProduct.id",
            "transactionSummary.consumerDetails.publishedProduct.name",
            "transactionSummary.consumerDetails.marketplace.guid",
            "transactionSummary.consumerDetails.marketplace.consumerOrgId",
        ] {
            assert!(
                log.iter().any(|p| p == path),
                "LogEvent lacks {path}: {log:?}"
            );
        }
        assert!(!log.iter().any(|p| p.contains("reporter")), "{log:?}");
        let event = store.event_json(log_index);
        assert_eq!(
            event["transactionSummary"]["assetResource"]["name"], "list",
            "own name"
        );
        assert_eq!(event["transactionSummary"]["proxy"]["revision"], 1);

        let first = store.event_json(v4_index);
        let mut v4_paths = Vec::new();
        paths_of(&first, "", &mut v4_paths);
        for path in [
            "id",
            "org",
            "event",
            "version",
            "timestamp",
            "distribution.environment",
            "data.version",
            "data.apicDeployment",
            "data.status",
            "data.statusDetail",
            "data.duration",
            "data.api.id",
            "data.api.apiServiceId",
            "data.api.name",
            "data.entryPoint.method",
            "data.entryPoint.path",
            "data.entryPoint.host",
            "data.assetResource.id",
            "data.apiServiceRevision.id",
            "data.product.id",
            "data.product.versionId",
            "data.productPlan.id",
            "data.quota.id",
            "data.consumerDetails.consumerOrgId",
            "data.consumerDetails.marketplace.guid",
            "data.consumerDetails.application.id",
            "data.consumerDetails.application.consumerOrgId",
            "data.consumerDetails.publishedProduct.id",
            "data.consumerDetails.subscription.id",
            "data.proxy.id",
            "data.proxy.name",
            "data.reporter.version",
            "data.reporter.type",
            "data.reporter.agentSDKVersion",
            "data.reporter.agentName",
            "session.id",
        ] {
            assert!(
                v4_paths.iter().any(|p| p == path),
                "v4 lacks {path}: {v4_paths:?}"
            );
        }
        for absent in [
            "type",
            "transactionId",
            "transactionSummary",
            "data.assetResource.name",
        ] {
            assert!(
                !v4_paths.iter().any(|p| p.starts_with(absent)),
                "v4 has {absent}"
            );
        }
        assert_eq!(first["session"]["id"], store.transaction_id(v4_index));
        assert_eq!(first["data"]["api"]["id"], "remoteApiId_list");
        assert_eq!(first["data"]["proxy"]["id"], "list");
        assert_ne!(
            first["id"],
            store.event_json(v4_index)["id"],
            "the envelope id is new on every build"
        );
    }

    #[test]
    fn injected_events_of_either_shape_and_seconds_come_back_as_sent() {
        let log = json!({"version": "1.0", "timestamp": 1_796_229_002i64, "transactionId": "t-1",
            "type": "transactionSummary",
            "transactionSummary": {"status": "Success", "duration": 3,
                "assetResource": {"id": "ar-1", "name": "list"},
                "consumerDetails": {"subscription": {"id": "s1"}}}});
        let v4 = json!({"id": "x", "org": "1", "event": "api.transaction.summary", "version": "4",
            "timestamp": 1_796_229_002_500i64, "distribution": {"environment": "env"},
            "data": {"version": "2", "status": "Failure", "duration": 9,
                "api": {"id": "remoteApiId_p1", "name": "Pets"}, "proxy": {"id": "p1", "name": "Pets"},
                "assetResource": {"id": "ar-1"},
                "consumerDetails": {"application": {}, "subscription": {"id": "s1"}}},
            "session": {"id": "t-2"}});
        let mut store = TrafficStore::default();
        store.add_event(&log).unwrap();
        store.add_event(&v4).unwrap();
        assert_eq!(store.timestamps, [1_796_229_002_000, 1_796_229_002_500]);
        let back = store.event_json(0);
        assert_eq!(back["timestamp"], 1_796_229_002i64, "seconds stay seconds");
        assert_eq!(back["transactionId"], "t-1");
        let back = store.event_json(1);
        assert_eq!(back["session"]["id"], "t-2");
        assert_eq!(back["timestamp"], 1_796_229_002_500i64);
        assert_eq!(back["data"]["status"], "Failure");
        assert_eq!(
            back["data"]["api"],
            json!({"id": "remoteApiId_p1", "name": "Pets"})
        );
        assert_eq!(back["data"]["proxy"], json!({"id": "p1", "name": "Pets"}));
        assert_eq!(back["data"]["assetResource"], json!({"id": "ar-1"}));
        assert_eq!(back["distribution"]["environment"], "env");
        assert_eq!(back["org"], "1");
        for (bad, says) in [
            (
                json!({"event": "api.transaction.event", "version": "4", "timestamp": 1, "data": {}}),
                "event must be",
            ),
            (
                json!({"event": "api.transaction.summary", "version": "3", "timestamp": 1, "data": {}}),
                "version",
            ),
            (
                json!({"event": "api.transaction.summary", "version": "4", "timestamp": 1}),
                "data must be an object",
            ),
            (
                json!({"type": "transactionSummary", "transactionId": 5, "timestamp": 1, "transactionSummary": {"status": "Success"}}),
                "transactionId must be a string",
            ),
        ] {
            let error = parse_event(&bad).unwrap_err();
            assert!(error.contains(says), "{error:?} should say {says:?}");
        }
    }

    #[test]
    fn the_proxy_dimensions_are_where_v4_looks_for_them() {
        assert_eq!(DIMENSIONS[PROXY_ID].field, Some("proxyId"));
        assert_eq!(DIMENSIONS[PROXY_NAME].field, Some("proxyName"));
    }
}
