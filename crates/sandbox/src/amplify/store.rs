//! The Central resource store and its write rules: create, update, delete and subresource writes,
//! validation, references, the plan lifecycle and the subscription-creation sequence (§2–§4.3).
//! Every write returns the changes it made, in order, so each can become a webhook event.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use super::resources::{
    ApiError, KindSpec, central_timestamp, kind_named, new_resource_id, self_link,
};
use super::traffic::asset_resource_id;

/// What happened to a resource, as the webhook envelope's `type` names it (reference §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    ResourceCreated,
    ResourceUpdated,
    ResourceDeleted,
    SubResourceUpdated,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::ResourceCreated => "ResourceCreated",
            EventType::ResourceUpdated => "ResourceUpdated",
            EventType::ResourceDeleted => "ResourceDeleted",
            EventType::SubResourceUpdated => "SubResourceUpdated",
        }
    }

    /// The ResourceHook trigger `type` this event counts as; a subresource write counts as
    /// `updated` (reference §4.3).
    pub fn trigger_type(self) -> &'static str {
        match self {
            EventType::ResourceCreated => "created",
            EventType::ResourceUpdated | EventType::SubResourceUpdated => "updated",
            EventType::ResourceDeleted => "deleted",
        }
    }
}

/// One change to one resource: the resource after it (before it, for a delete).
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub event_type: EventType,
    pub spec: &'static KindSpec,
    pub scope: Option<String>,
    /// The stored document (no `apiVersion`, no self links; see [`render`]).
    pub document: Value,
    pub subresource: Option<String>,
}

/// Who is writing and when; fills audit fields and default owners.
#[derive(Debug, Clone)]
pub(crate) struct ChangeContext {
    pub user_id: String,
    pub org_id: String,
    /// The team that owns a subscription when the create body names none.
    pub default_owner_team: String,
    pub now: chrono::DateTime<chrono::Utc>,
}

/// The audit user id recorded for a service-account client. Real audit ids are user GUIDs; the
/// `service-account-<clientId>` form is what LBU sends as `approval.userId` [I, reference §3.4].
pub(crate) fn audit_user_id(client_id: &str) -> String {
    format!("service-account-{client_id}")
}

/// Status a reference to a missing resource in a body gets (a plan's `spec.product`, a
/// subscription's plan). The reference does not say; 400 because the URL itself was fine [I].
const MISSING_REFERENCE_STATUS: u16 = 400;

/// Plan and product lifecycle states in order (reference §3.1, §3.2).
const LIFECYCLE_STATES: &[&str] = &["draft", "active", "deprecated", "archived"];

/// Whether a ProductPlan may move from `from` to `to`. The reference gives the order draft →
/// active → deprecated → archived and "only draft plans can be activated"; which skips are
/// allowed is [I]: forward moves only, and a draft plan can only be activated. Re-setting the
/// current state is accepted.
pub(crate) fn plan_state_transition_allowed(from: &str, to: &str) -> bool {
    let rank = |s: &str| LIFECYCLE_STATES.iter().position(|x| *x == s);
    match (rank(from), rank(to)) {
        (Some(a), Some(b)) if a == b => true,
        (Some(0), Some(b)) => b == 1,
        (Some(a), Some(b)) => b > a,
        _ => false,
    }
}

/// The state a new resource of this kind starts in, if it has one: plans (reference §3.2) and
/// products start as drafts [I for products]; subscriptions as active (below).
fn initial_state(kind: &str) -> Option<Value> {
    match kind {
        "Product" | "ProductPlan" => Some(json!("draft")),
        // The captured event of a subscription awaiting approval (reference §4.3, resource
        // version 2) already carries `state: {"name": "active"}`, although the docs say the state
        // "is not set until the subscription is approved" (§3.4): the captured payload is what
        // the platform sends, so a subscription has it from creation.
        "Subscription" => Some(json!({"name": "active"})),
        _ => None,
    }
}

/// Who owns a new subscription: the body's `marketplace.resource.owner` (the sandbox's stand-in
/// for the calling user, whom the real platform takes), else the first seeded team.
fn subscription_owner(body: &Value, ctx: &ChangeContext) -> Value {
    body.pointer("/marketplace/resource/owner")
        .filter(|o| o.is_object())
        .cloned()
        .unwrap_or_else(|| {
            json!({"type": "team", "id": ctx.default_owner_team, "organization": {"id": ctx.org_id}})
        })
}

/// The user who subscribed: the owner's user when the team is private, else the caller.
fn subscriber_user(owner: &Value, ctx: &ChangeContext) -> String {
    owner
        .pointer("/user/id")
        .and_then(Value::as_str)
        .map_or_else(|| ctx.user_id.clone(), str::to_owned)
}

/// The attributes the platform writes on a subscription, as the captured payloads show them
/// (reference §3.4, §4.3): `marketplaceId`, `tenantId` (the provider organization),
/// `consumerTenantId` (the owner's organization, only when it is another one), `ownerId` (the
/// owning team) and `userId` (the subscriber). Which id feeds each is [I] ("attribute semantics
/// I"), read from the sample's matching values.
fn platform_subscription_attributes(
    marketplace: &str,
    owner: &Value,
    user: &str,
    ctx: &ChangeContext,
) -> Map<String, Value> {
    let mut attributes = Map::new();
    attributes.insert("marketplaceId".into(), json!(marketplace));
    attributes.insert("tenantId".into(), json!(ctx.org_id));
    if let Some(consumer) = owner
        .pointer("/organization/id")
        .and_then(Value::as_str)
        .filter(|org| *org != ctx.org_id)
    {
        attributes.insert("consumerTenantId".into(), json!(consumer));
    }
    if let Some(team) = owner.get("id").and_then(Value::as_str) {
        attributes.insert("ownerId".into(), json!(team));
    }
    attributes.insert("userId".into(), json!(user));
    attributes
}

/// A webhook whose `spec.enabled` is absent counts as enabled [I: examples always set it].
pub(crate) const WEBHOOK_ENABLED_BY_DEFAULT: bool = true;

/// The Marketplace subscriptions live in when none was created: the real platform always has
/// one (its name is a GUID, reference §3.5), so it is stored on first need, without an event [I].
const DEFAULT_MARKETPLACE_NAME: &str = "082a27eb-1c67-4b54-90e0-b1529c008af7";
const DEFAULT_MARKETPLACE_ID: &str = "8a2e8036807692430180855c80a547b2";

fn ensure_marketplace(catalog: &mut Catalog, ctx: &ChangeContext) {
    if catalog.all_of("Marketplace").next().is_some() {
        return;
    }
    let spec = kind_named("Marketplace").expect("Marketplace is a known kind");
    let now = central_timestamp(ctx.now);
    let document = json!({
        "group": spec.group, "kind": spec.kind, "name": DEFAULT_MARKETPLACE_NAME,
        "title": "Sandbox Marketplace",
        "metadata": {"id": DEFAULT_MARKETPLACE_ID, "resourceVersion": "1", "references": [],
                     "audit": {"createTimestamp": now, "createUserId": ctx.user_id,
                               "modifyTimestamp": now, "modifyUserId": ctx.user_id}},
        "attributes": {}, "tags": [], "finalizers": [],
        "spec": {"description": "The marketplace of the sandbox organization"},
    });
    catalog.insert(Stored {
        spec,
        scope: None,
        name: DEFAULT_MARKETPLACE_NAME.to_owned(),
        document,
    });
}

/// Whether a PUT may change the spec of a plan in `plan_state`, or of a quota of such a plan.
/// "Editing an active plan is restricted to adding resources/quotas" (reference §3.2): outside
/// draft, a plan's spec is frozen and a quota may only change its `resources` [I for the exact
/// line].
fn spec_edit_allowed(kind: &str, plan_state: &str, old_spec: &Value, new_spec: &Value) -> bool {
    if plan_state == "draft" || old_spec == new_spec {
        return true;
    }
    match kind {
        "ProductPlan" => false,
        "Quota" => {
            let without_resources = |spec: &Value| {
                let mut spec = spec.clone();
                if let Some(map) = spec.as_object_mut() {
                    map.remove("resources");
                }
                spec
            };
            without_resources(old_spec) == without_resources(new_spec)
        }
        _ => true,
    }
}

/// Name for a resource created without one [I: the real server generates quota names such as
/// `quota-0` or random words, reference §3.3].
fn generated_name(spec: &KindSpec) -> String {
    let suffix = &new_resource_id()[..8];
    format!("{}-{suffix}", spec.kind.to_ascii_lowercase())
}

type Key = (&'static str, String, String);

/// Every stored resource, in creation order.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    next_seq: u64,
    index: HashMap<Key, u64>,
    items: BTreeMap<u64, Stored>,
}

#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub spec: &'static KindSpec,
    pub scope: Option<String>,
    pub name: String,
    pub document: Value,
}

fn key(spec: &KindSpec, scope: Option<&str>, name: &str) -> Key {
    (
        spec.kind,
        scope.unwrap_or_default().to_owned(),
        name.to_owned(),
    )
}

impl Catalog {
    pub fn get(&self, spec: &KindSpec, scope: Option<&str>, name: &str) -> Option<&Stored> {
        let seq = self.index.get(&key(spec, scope, name))?;
        self.items.get(seq)
    }

    fn get_mut(&mut self, spec: &KindSpec, scope: Option<&str>, name: &str) -> Option<&mut Stored> {
        let seq = self.index.get(&key(spec, scope, name))?;
        self.items.get_mut(seq)
    }

    /// Resources of a kind in creation order; `scope: None` lists across all scopes.
    pub fn list<'a>(
        &'a self,
        spec: &'a KindSpec,
        scope: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Stored> + 'a {
        self.items.values().filter(move |s| {
            s.spec.kind == spec.kind && scope.is_none_or(|want| s.scope.as_deref() == Some(want))
        })
    }

    pub fn named(&self, kind: &str, scope: Option<&str>, name: &str) -> Option<&Stored> {
        self.get(kind_named(kind)?, scope, name)
    }

    pub fn all_of(&self, kind: &'static str) -> impl Iterator<Item = &Stored> + '_ {
        self.items.values().filter(move |s| s.spec.kind == kind)
    }

    fn insert(&mut self, stored: Stored) {
        self.next_seq += 1;
        let k = key(stored.spec, stored.scope.as_deref(), &stored.name);
        self.index.insert(k, self.next_seq);
        self.items.insert(self.next_seq, stored);
    }

    fn remove(&mut self, spec: &KindSpec, scope: Option<&str>, name: &str) -> Option<Stored> {
        let seq = self.index.remove(&key(spec, scope, name))?;
        self.items.remove(&seq)
    }
}

/// The resource as GET answers it for `version`: `apiVersion` and every self link filled in.
pub(crate) fn render(stored: &Stored, version: &str) -> Value {
    render_document(
        stored.spec,
        stored.scope.as_deref(),
        &stored.document,
        version,
    )
}

pub(crate) fn render_document(
    spec: &KindSpec,
    scope: Option<&str>,
    document: &Value,
    version: &str,
) -> Value {
    let mut doc = document.clone();
    let name = doc["name"].as_str().unwrap_or_default().to_owned();
    doc["apiVersion"] = json!(version);
    let metadata = &mut doc["metadata"];
    metadata["selfLink"] = json!(self_link(spec, version, scope, &name));
    if let (Some(scope_spec), Some(scope_name)) = (spec.scope_spec(), scope) {
        metadata["scope"]["selfLink"] = json!(self_link(scope_spec, version, None, scope_name));
    }
    if let Some(refs) = metadata["references"].as_array_mut() {
        for r in refs {
            let target = r["kind"].as_str().and_then(kind_named);
            if let (Some(target), Some(ref_name)) = (target, r["name"].as_str()) {
                let link = self_link(target, version, None, ref_name);
                r["selfLink"] = json!(link);
            }
        }
    }
    doc
}

fn string_field<'a>(body: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("'{field}' must be a string"))),
    }
}

/// `kind` and `group` in a body must agree with the path they were sent to.
fn check_kind_and_group(spec: &KindSpec, body: &Value) -> Result<(), ApiError> {
    if let Some(kind) = string_field(body, "kind")?
        && kind != spec.kind
    {
        return Err(ApiError::bad_request(format!(
            "body kind '{kind}' does not match the path, which addresses {}",
            spec.kind
        )));
    }
    if let Some(group) = string_field(body, "group")?
        && group != spec.group
    {
        return Err(ApiError::bad_request(format!(
            "body group '{group}' does not match the path, which addresses group {}",
            spec.group
        )));
    }
    Ok(())
}

/// `attributes` is map<string,string> (reference §2.3).
fn attributes_of(body: &Value) -> Result<Option<Value>, ApiError> {
    match body.get("attributes") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => {
            if let Some((k, _)) = map.iter().find(|(_, v)| !v.is_string()) {
                return Err(ApiError::bad_request(format!(
                    "attributes.{k} must be a string: attributes is a map of strings"
                )));
            }
            Ok(Some(Value::Object(map.clone())))
        }
        Some(_) => Err(ApiError::bad_request(
            "attributes must be an object of strings",
        )),
    }
}

fn tags_of(body: &Value) -> Result<Option<Value>, ApiError> {
    match body.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(Some(json!(items))),
        Some(_) => Err(ApiError::bad_request("tags must be an array of strings")),
    }
}

fn object_field(body: &Value, field: &str) -> Result<Option<Value>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "'{field}' must be an object"
        ))),
    }
}

fn reference_to(stored: &Stored) -> Value {
    json!({
        "id": stored.document["metadata"]["id"],
        "kind": stored.spec.kind,
        "name": stored.name,
        "type": "hard",
        "group": stored.spec.group,
    })
}

/// The `metadata.references` entry of a resource a Quota lists (`<asset>/<resource>`) [I:
/// reference §3.3 lists resources by name only; that the API server records them as references
/// like a Subscription's product and plan (§3.4), with the SDK `Reference` fields and the
/// resource's own name scoped to its asset, is inferred]. This catalog has no AssetResource
/// kind, so the id is [`asset_resource_id`] of the listed name, as generated traffic carries.
fn asset_resource_reference(listed: &str) -> Value {
    let (asset, own) = listed.rsplit_once('/').unwrap_or(("", listed));
    json!({
        "id": asset_resource_id(listed),
        "kind": "AssetResource",
        "name": own,
        "scopeKind": "Asset",
        "scopeName": asset,
        "selfLink": format!("/catalog/v1/assets/{asset}/assetresources/{own}"),
        "type": "soft",
        "group": "catalog",
    })
}

fn missing_reference(detail: String) -> ApiError {
    ApiError::new(MISSING_REFERENCE_STATUS, detail)
}

/// Checks a kind's spec and works out the `metadata.references` it implies.
fn validate_spec(
    catalog: &Catalog,
    spec: &KindSpec,
    body_spec: &Value,
    creating: bool,
) -> Result<Vec<Value>, ApiError> {
    let text = |path: &str| body_spec.pointer(path).and_then(Value::as_str);
    match spec.kind {
        "SubscriptionJob" => {
            let action = text("/action/type").ok_or_else(|| {
                ApiError::bad_request("SubscriptionJob spec.action.type is required")
            })?;
            if !SUBSCRIPTION_JOB_ACTIONS.contains(&action) {
                return Err(ApiError::bad_request(format!(
                    "SubscriptionJob spec.action.type '{action}' is not one of {}",
                    SUBSCRIPTION_JOB_ACTIONS.join(", ")
                )));
            }
            Ok(Vec::new())
        }
        "ProductPlan" => {
            let product = text("/product")
                .ok_or_else(|| ApiError::bad_request("ProductPlan spec.product is required"))?;
            let product = catalog.named("Product", None, product).ok_or_else(|| {
                missing_reference(format!("spec.product: Product '{product}' not found"))
            })?;
            Ok(vec![reference_to(product)])
        }
        "Subscription" => {
            let product_name = text("/product")
                .ok_or_else(|| ApiError::bad_request("Subscription spec.product is required"))?;
            let plan_name = text("/plan/name")
                .ok_or_else(|| ApiError::bad_request("Subscription spec.plan.name is required"))?;
            let product = catalog
                .named("Product", None, product_name)
                .ok_or_else(|| {
                    missing_reference(format!("spec.product: Product '{product_name}' not found"))
                })?;
            let plan = catalog
                .named("ProductPlan", None, plan_name)
                .ok_or_else(|| {
                    missing_reference(format!(
                        "spec.plan.name: ProductPlan '{plan_name}' not found"
                    ))
                })?;
            if plan.document["spec"]["product"].as_str() != Some(product_name) {
                return Err(ApiError::bad_request(format!(
                    "ProductPlan '{plan_name}' belongs to another product than '{product_name}'"
                )));
            }
            // "Active plans accept new subscriptions; deprecated = no new subscriptions" (§3.2).
            let plan_state = plan.document["state"].as_str().unwrap_or("draft");
            if creating && plan_state != "active" {
                return Err(ApiError::bad_request(format!(
                    "ProductPlan '{plan_name}' is {plan_state}; only active plans accept new subscriptions"
                )));
            }
            let marketplace = catalog
                .all_of("Marketplace")
                .next()
                .ok_or_else(|| ApiError::new(500, "no Marketplace to subscribe in"))?;
            Ok(vec![
                reference_to(product),
                reference_to(marketplace),
                reference_to(plan),
            ])
        }
        "Quota" => Ok(body_spec
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| r["kind"] == "AssetResource")
            .filter_map(|r| r["name"].as_str())
            .map(asset_resource_reference)
            .collect()),
        "Webhook" => {
            if text("/url").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request("Webhook spec.url is required"));
            }
            if let Some(headers) = body_spec.get("headers")
                && !headers
                    .as_object()
                    .is_some_and(|h| h.values().all(Value::is_string))
            {
                return Err(ApiError::bad_request(
                    "Webhook spec.headers must map names to strings",
                ));
            }
            Ok(Vec::new())
        }
        "ResourceHook" => {
            validate_event_filters(body_spec, "triggers", "ResourceHook")?;
            if !body_spec
                .get("webhooks")
                .and_then(Value::as_array)
                .is_some_and(|w| w.iter().all(Value::is_string))
            {
                return Err(ApiError::bad_request(
                    "ResourceHook spec.webhooks must be an array of names",
                ));
            }
            Ok(Vec::new())
        }
        // spec.filters as the SDK's WatchTopicSpecFilters: group, kind, name, type[], scope
        // (reference §4.5).
        "WatchTopic" => {
            validate_event_filters(body_spec, "filters", "WatchTopic")?;
            Ok(Vec::new())
        }
        _ => Ok(Vec::new()),
    }
}

/// A ResourceHook's `spec.triggers` or a WatchTopic's `spec.filters` (reference §4.1, §4.5):
/// an array of `{group, kind, name?, type: [created|updated|deleted], scope?}`.
fn validate_event_filters(body_spec: &Value, field: &str, kind: &str) -> Result<(), ApiError> {
    let filters = body_spec
        .get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request(format!("{kind} spec.{field} must be an array")))?;
    for (i, filter) in filters.iter().enumerate() {
        for part in ["group", "kind"] {
            if !filter.get(part).is_some_and(Value::is_string) {
                return Err(ApiError::bad_request(format!(
                    "spec.{field}[{i}].{part} is required"
                )));
            }
        }
        let types_ok = filter
            .get("type")
            .and_then(Value::as_array)
            .is_some_and(|t| {
                !t.is_empty()
                    && t.iter()
                        .all(|x| matches!(x.as_str(), Some("created" | "updated" | "deleted")))
            });
        if !types_ok {
            return Err(ApiError::bad_request(format!(
                "spec.{field}[{i}].type must list created, updated and/or deleted"
            )));
        }
    }
    Ok(())
}

fn bump(document: &mut Value, ctx: &ChangeContext) {
    let metadata = &mut document["metadata"];
    let version: u64 = metadata["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    metadata["resourceVersion"] = json!((version + 1).to_string());
    metadata["audit"]["modifyTimestamp"] = json!(central_timestamp(ctx.now));
    metadata["audit"]["modifyUserId"] = json!(ctx.user_id);
}

fn not_found(spec: &KindSpec, scope: Option<&str>, name: &str) -> ApiError {
    match (spec.scope, scope) {
        (Some(scope_kind), Some(scope_name)) => ApiError::not_found(format!(
            "{} '{name}' not found in {scope_kind} '{scope_name}'",
            spec.kind
        )),
        _ => ApiError::not_found(format!("{} '{name}' not found", spec.kind)),
    }
}

/// Creates a resource from a create body, then runs whatever the platform does right after
/// (the subscription sequence of §4.3). `scope` comes from the path or the body.
pub(crate) fn create(
    catalog: &mut Catalog,
    spec: &'static KindSpec,
    path_scope: Option<&str>,
    body: &Value,
    ctx: &ChangeContext,
) -> Result<(Vec<Change>, String), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    check_kind_and_group(spec, body)?;
    let body_scope = body.pointer("/metadata/scope/name").and_then(Value::as_str);
    let scope = match (spec.scope, path_scope, body_scope) {
        (None, _, _) => None,
        (Some(_), Some(p), Some(b)) if p != b => {
            return Err(ApiError::bad_request(format!(
                "metadata.scope.name '{b}' does not match the scope '{p}' in the path"
            )));
        }
        (Some(_), Some(p), _) => Some(p.to_owned()),
        (Some(_), None, Some(b)) => Some(b.to_owned()),
        (Some(scope_kind), None, None) => {
            return Err(ApiError::bad_request(format!(
                "{} is scoped to {scope_kind}: create it under its {scope_kind}'s path or give metadata.scope.name",
                spec.kind
            )));
        }
    };
    let scope_ref = match (spec.scope_spec(), scope.as_deref()) {
        (Some(scope_spec), Some(scope_name)) => {
            let parent = catalog.get(scope_spec, None, scope_name).ok_or_else(|| {
                ApiError::not_found(format!("{} '{scope_name}' not found", scope_spec.kind))
            })?;
            Some(
                json!({"id": parent.document["metadata"]["id"], "kind": scope_spec.kind, "name": scope_name}),
            )
        }
        _ => None,
    };
    let name = match string_field(body, "name")? {
        Some(n) if n.trim().is_empty() || n.contains('/') => {
            return Err(ApiError::bad_request(format!(
                "'{n}' is not a valid resource name"
            )));
        }
        Some(n) => n.to_owned(),
        None => generated_name(spec),
    };
    if catalog.get(spec, scope.as_deref(), &name).is_some() {
        return Err(ApiError::conflict(format!(
            "{} '{name}' already exists",
            spec.kind
        )));
    }
    let body_spec = object_field(body, "spec")?.unwrap_or_else(|| json!({}));
    if spec.kind == "Subscription" {
        ensure_marketplace(catalog, ctx);
    }
    let references = validate_spec(catalog, spec, &body_spec, true)?;
    let now = central_timestamp(ctx.now);
    let mut metadata = json!({
        "id": new_resource_id(),
        "audit": {"createTimestamp": now, "createUserId": ctx.user_id,
                  "modifyTimestamp": now, "modifyUserId": ctx.user_id},
        "resourceVersion": "1",
        "references": references,
    });
    if let Some(scope_ref) = scope_ref {
        metadata["scope"] = scope_ref;
    }
    let mut document = json!({
        "group": spec.group,
        "kind": spec.kind,
        "name": name,
        "title": string_field(body, "title")?.unwrap_or(&name),
        "metadata": metadata,
        "attributes": attributes_of(body)?.unwrap_or_else(|| json!({})),
        "tags": tags_of(body)?.unwrap_or_else(|| json!([])),
        "finalizers": body.get("finalizers").filter(|f| f.is_array()).cloned().unwrap_or_else(|| json!([])),
        "spec": body_spec,
    });
    if let Some(owner) = object_field(body, "owner")? {
        document["owner"] = owner;
    }
    if let Some(state) = initial_state(spec.kind) {
        document["state"] = state;
    }
    if spec.kind == "Subscription" {
        let marketplace = references
            .iter()
            .find(|r| r["kind"] == "Marketplace")
            .and_then(|r| r["name"].as_str())
            .unwrap_or_default();
        let owner = subscription_owner(body, ctx);
        let platform = platform_subscription_attributes(
            marketplace,
            &owner,
            &subscriber_user(&owner, ctx),
            ctx,
        );
        if let Some(attributes) = document["attributes"].as_object_mut() {
            // The platform's own attributes win over any a client sent under the same names.
            attributes.extend(platform);
        }
    }
    let stored = Stored {
        spec,
        scope: scope.clone(),
        name: name.clone(),
        document: document.clone(),
    };
    catalog.insert(stored);
    let mut changes = vec![Change {
        event_type: EventType::ResourceCreated,
        spec,
        scope: scope.clone(),
        document,
        subresource: None,
    }];
    if spec.kind == "Subscription" {
        changes.extend(subscription_sequence(catalog, &name, body, ctx)?);
    }
    if spec.kind == "SubscriptionJob" {
        let subscription = scope.as_deref().unwrap_or_default();
        changes.extend(run_subscription_job(catalog, subscription, &name, ctx)?);
    }
    Ok((changes, name))
}

/// `SubscriptionJob.spec.action.type` values (Amplify reference §3.4: the field names are
/// verified, these strings are inferred [I]).
pub(crate) const SUBSCRIPTION_JOB_ACTIONS: [&str; 3] =
    ["archive", "planMigration", "approvalStateChange"];
/// The `state.name` an archive job leaves its subscription in [I: the UI says "Archived"].
pub(crate) const ARCHIVED_STATE: &str = "archived";

/// Runs a job at once (the platform runs it at `spec.when.timestamp`, or now without one [I]):
/// an archive sets the subscription's `state` to archived with the job's reason, then the job's
/// status to Success. The other actions are accepted and only marked done.
fn run_subscription_job(
    catalog: &mut Catalog,
    subscription: &str,
    job: &str,
    ctx: &ChangeContext,
) -> Result<Vec<Change>, ApiError> {
    let job_spec = kind_named("SubscriptionJob").expect("SubscriptionJob is a known kind");
    let sub_spec = kind_named("Subscription").expect("Subscription is a known kind");
    let action = catalog
        .get(job_spec, Some(subscription), job)
        .map(|j| j.document["spec"]["action"].clone())
        .unwrap_or_default();
    let mut changes = Vec::new();
    if action["type"] == SUBSCRIPTION_JOB_ACTIONS[0] {
        let reason = action["reason"].as_str().unwrap_or_default();
        let state = json!({"state": {"name": ARCHIVED_STATE, "reason": reason,
                                      "when": {"timestamp": central_timestamp(ctx.now)}}});
        changes.extend(put_subresource(
            catalog,
            sub_spec,
            None,
            subscription,
            "state",
            &state,
            ctx,
        )?);
    }
    changes.extend(put_subresource(
        catalog,
        job_spec,
        Some(subscription),
        job,
        "status",
        &json!({"status": {"level": "Success"}}),
        ctx,
    )?);
    Ok(changes)
}

/// What the platform does after a subscription is created, each step its own change
/// (reference §4.3): status Pending, marketplace, approval pending (approved at once on
/// automatic-approval plans), status Success.
fn subscription_sequence(
    catalog: &mut Catalog,
    name: &str,
    body: &Value,
    ctx: &ChangeContext,
) -> Result<Vec<Change>, ApiError> {
    let spec = kind_named("Subscription").expect("Subscription is a known kind");
    let marketplace_ref = catalog
        .get(spec, None, name)
        .and_then(|s| s.document["metadata"]["references"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .find(|r| r["kind"] == "Marketplace")
        .unwrap_or_default();
    let owner = subscription_owner(body, ctx);
    // The sample's `marketplace.resource.metadata.createUserId` is its `attributes.userId`.
    let user = subscriber_user(&owner, ctx);
    let marketplace = json!({
        "name": marketplace_ref["name"],
        "resource": {"owner": owner,
                     "metadata": {"createUserId": user, "modifyUserId": user}},
    });
    let automatic = catalog
        .get(spec, None, name)
        .and_then(|s| {
            s.document["spec"]["plan"]["name"]
                .as_str()
                .map(str::to_owned)
        })
        .and_then(|plan| catalog.named("ProductPlan", None, &plan))
        .is_some_and(|plan| plan.document["spec"]["subscription"]["approval"] == "automatic");
    let approval = if automatic {
        json!({"state": "approved", "reason": "automatic approval"})
    } else {
        json!({"state": "pending"})
    };
    let mut changes = Vec::new();
    for (sub, value) in [
        ("status", json!({"level": "Pending"})),
        ("marketplace", marketplace),
        ("approval", approval),
        ("status", json!({"level": "Success"})),
    ] {
        let body = json!({ sub: value });
        changes.extend(put_subresource(catalog, spec, None, name, sub, &body, ctx)?);
    }
    Ok(changes)
}

/// `PUT …/{name}`: replaces title, spec, attributes, tags (and finalizers, owner) where the body
/// has them; subresources in the body are ignored (reference §2.3).
pub(crate) fn update(
    catalog: &mut Catalog,
    spec: &'static KindSpec,
    scope: Option<&str>,
    name: &str,
    body: &Value,
    ctx: &ChangeContext,
) -> Result<Vec<Change>, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let current = catalog
        .get(spec, scope, name)
        .ok_or_else(|| not_found(spec, scope, name))?;
    check_kind_and_group(spec, body)?;
    if let Some(body_name) = string_field(body, "name")?
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "body name '{body_name}' does not match the name '{name}' in the path"
        )));
    }
    let sent_version = match body.pointer("/metadata/resourceVersion") {
        Some(Value::String(v)) => Some(v.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let current_version = current.document["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    if let Some(sent) = sent_version
        && sent != current_version
    {
        return Err(ApiError::new(
            428,
            format!(
                "metadata.resourceVersion {sent} is stale: {} '{name}' is at {current_version}",
                spec.kind
            ),
        ));
    }
    let mut document = current.document.clone();
    if let Some(title) = string_field(body, "title")? {
        document["title"] = json!(title);
    }
    if let Some(attributes) = attributes_of(body)? {
        document["attributes"] = attributes;
    }
    if let Some(tags) = tags_of(body)? {
        document["tags"] = tags;
    }
    if let Some(finalizers) = body.get("finalizers").filter(|f| f.is_array()) {
        document["finalizers"] = finalizers.clone();
    }
    if let Some(owner) = object_field(body, "owner")? {
        document["owner"] = owner;
    }
    if let Some(new_spec) = object_field(body, "spec")? {
        let plan_state = match spec.kind {
            "ProductPlan" => document["state"].as_str(),
            "Quota" => scope
                .and_then(|plan| catalog.named("ProductPlan", None, plan))
                .and_then(|plan| plan.document["state"].as_str()),
            _ => None,
        }
        .unwrap_or("draft");
        if !spec_edit_allowed(spec.kind, plan_state, &document["spec"], &new_spec) {
            return Err(ApiError::bad_request(format!(
                "the plan is {plan_state}: editing it is restricted to adding resources and quotas"
            )));
        }
        let references = validate_spec(catalog, spec, &new_spec, false)?;
        if !references.is_empty() || spec.kind == "Quota" {
            document["metadata"]["references"] = json!(references);
        }
        document["spec"] = new_spec;
    }
    bump(&mut document, ctx);
    let stored = catalog
        .get_mut(spec, scope, name)
        .ok_or_else(|| not_found(spec, scope, name))?;
    stored.document = document.clone();
    Ok(vec![Change {
        event_type: EventType::ResourceUpdated,
        spec,
        scope: scope.map(str::to_owned),
        document,
        subresource: None,
    }])
}

/// `DELETE …/{name}`: removes the resource and, first, everything scoped inside it.
pub(crate) fn delete(
    catalog: &mut Catalog,
    spec: &'static KindSpec,
    scope: Option<&str>,
    name: &str,
) -> Result<Vec<Change>, ApiError> {
    if catalog.get(spec, scope, name).is_none() {
        return Err(not_found(spec, scope, name));
    }
    let children: Vec<(&'static KindSpec, String)> = catalog
        .items
        .values()
        .filter(|s| s.spec.scope == Some(spec.kind) && s.scope.as_deref() == Some(name))
        .map(|s| (s.spec, s.name.clone()))
        .collect();
    let mut changes = Vec::new();
    for (child_spec, child_name) in children {
        changes.extend(delete(catalog, child_spec, Some(name), &child_name)?);
    }
    let removed = catalog
        .remove(spec, scope, name)
        .ok_or_else(|| not_found(spec, scope, name))?;
    changes.push(Change {
        event_type: EventType::ResourceDeleted,
        spec,
        scope: removed.scope,
        document: removed.document,
        subresource: None,
    });
    Ok(changes)
}

/// Checks a subresource value against what the platform accepts for it.
fn validate_subresource(
    spec: &KindSpec,
    current: &Value,
    sub: &str,
    value: &Value,
) -> Result<(), ApiError> {
    match (spec.kind, sub) {
        ("ProductPlan" | "Product", "state") => {
            let to = value.as_str().ok_or_else(|| {
                ApiError::bad_request(format!("{} state must be a string", spec.kind))
            })?;
            if !LIFECYCLE_STATES.contains(&to) {
                return Err(ApiError::bad_request(format!(
                    "state '{to}' is not one of {}",
                    LIFECYCLE_STATES.join(", ")
                )));
            }
            let from = current["state"].as_str().unwrap_or("draft");
            if spec.kind == "ProductPlan" && !plan_state_transition_allowed(from, to) {
                return Err(ApiError::bad_request(format!(
                    "a {from} product plan cannot become {to}"
                )));
            }
            Ok(())
        }
        ("Subscription", "approval") => {
            let state = value.get("state").and_then(Value::as_str);
            if !matches!(state, Some("pending" | "approved" | "rejected")) {
                return Err(ApiError::bad_request(
                    "approval.state must be pending, approved or rejected",
                ));
            }
            Ok(())
        }
        ("Subscription", "state") => {
            if !value.get("name").is_some_and(Value::is_string) {
                return Err(ApiError::bad_request(
                    "Subscription state must be {\"name\": …}",
                ));
            }
            Ok(())
        }
        (_, "status") => {
            if !value.is_object() {
                return Err(ApiError::bad_request(
                    "status must be an object such as {\"level\":\"Success\"}",
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `PUT …/{name}/{sub}` with body `{"<sub>": value}` (reference §2.3).
pub(crate) fn put_subresource(
    catalog: &mut Catalog,
    spec: &'static KindSpec,
    scope: Option<&str>,
    name: &str,
    sub: &str,
    body: &Value,
    ctx: &ChangeContext,
) -> Result<Vec<Change>, ApiError> {
    if !spec.accepts_subresource(sub) {
        return Err(ApiError::not_found(format!(
            "{} has no subresource '{sub}'",
            spec.kind
        )));
    }
    let current = catalog
        .get(spec, scope, name)
        .ok_or_else(|| not_found(spec, scope, name))?;
    let value = body
        .as_object()
        .and_then(|b| b.get(sub))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "the body must be {{\"{sub}\": …}} for subresource {sub}"
            ))
        })?
        .clone();
    validate_subresource(spec, &current.document, sub, &value)?;
    let mut document = current.document.clone();
    let mut value = value;
    if spec.kind == "Subscription" && sub == "approval" {
        if let (Some(previous), Some(obj)) = (
            document["approval"]["state"].as_str(),
            value.as_object_mut(),
        ) {
            obj.insert("previousState".into(), json!(previous));
        }
        // "The state is not set until the subscription is approved" (reference §3.4).
        if value["state"] == "approved" && document["state"]["name"].is_null() {
            document["state"] = json!({"name": "active"});
        }
    }
    document[sub] = value;
    bump(&mut document, ctx);
    let stored = catalog
        .get_mut(spec, scope, name)
        .ok_or_else(|| not_found(spec, scope, name))?;
    stored.document = document.clone();
    Ok(vec![Change {
        event_type: EventType::SubResourceUpdated,
        spec,
        scope: scope.map(str::to_owned),
        document,
        subresource: Some(sub.to_owned()),
    }])
}

/// The subresource keys of a seed/apply body, in the order they are written after creation.
pub(crate) fn subresources_in(spec: &KindSpec, body: &Value) -> Vec<String> {
    let Some(map) = body.as_object() else {
        return Vec::new();
    };
    let mut subs: Vec<String> = spec
        .subresources
        .iter()
        .filter(|s| map.contains_key(**s))
        // The subscription's marketplace is set by the creation sequence from the body.
        .filter(|s| !(spec.kind == "Subscription" && **s == "marketplace"))
        .map(|s| s.to_string())
        .collect();
    let mut extensions: Vec<String> = map
        .keys()
        .filter(|k| super::resources::is_extension(k))
        .cloned()
        .collect();
    extensions.sort();
    subs.extend(extensions);
    subs
}

/// Only the fields a `fields=` list asks for (reference §2.5).
pub(crate) fn select_fields(doc: Value, fields: &[&str]) -> Value {
    match doc {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| fields.contains(&k.as_str()))
                .collect::<Map<String, Value>>(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ChangeContext {
        ChangeContext {
            user_id: "service-account-test".into(),
            org_id: "100000142".into(),
            default_owner_team: "team-1".into(),
            now: chrono::Utc::now(),
        }
    }

    fn spec(kind: &str) -> &'static KindSpec {
        kind_named(kind).unwrap()
    }

    fn seeded() -> Catalog {
        let mut c = Catalog::default();
        create(&mut c, spec("Product"), None, &json!({"name": "p"}), &ctx()).unwrap();
        create(
            &mut c,
            spec("ProductPlan"),
            None,
            &json!({"name": "gold", "spec": {"product": "p"}}),
            &ctx(),
        )
        .unwrap();
        c
    }

    #[test]
    fn plan_lifecycle_moves_forward_only() {
        assert!(plan_state_transition_allowed("draft", "active"));
        assert!(plan_state_transition_allowed("active", "deprecated"));
        assert!(plan_state_transition_allowed("deprecated", "archived"));
        assert!(plan_state_transition_allowed("active", "active"));
        assert!(!plan_state_transition_allowed("draft", "archived"));
        assert!(!plan_state_transition_allowed("archived", "active"));
        assert!(!plan_state_transition_allowed("deprecated", "active"));
    }

    #[test]
    fn a_subscription_runs_the_creation_sequence_as_separate_changes() {
        let mut c = seeded();
        put_subresource(
            &mut c,
            spec("ProductPlan"),
            None,
            "gold",
            "state",
            &json!({"state": "active"}),
            &ctx(),
        )
        .unwrap();
        let (changes, _) = create(
            &mut c,
            spec("Subscription"),
            None,
            &json!({"name": "s", "spec": {"product": "p", "plan": {"name": "gold"}}}),
            &ctx(),
        )
        .unwrap();
        let steps: Vec<_> = changes
            .iter()
            .map(|c| {
                (
                    c.event_type.name(),
                    c.subresource.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                ("ResourceCreated", "".to_owned()),
                ("SubResourceUpdated", "status".to_owned()),
                ("SubResourceUpdated", "marketplace".to_owned()),
                ("SubResourceUpdated", "approval".to_owned()),
                ("SubResourceUpdated", "status".to_owned()),
            ]
        );
        let last = &changes[4].document;
        assert_eq!(last["metadata"]["resourceVersion"], "5");
        assert_eq!(last["approval"]["state"], "pending");
        assert_eq!(last["state"], json!({"name": "active"}));
        assert_eq!(last["attributes"]["tenantId"], ctx().org_id);
        assert_eq!(last["attributes"]["userId"], ctx().user_id);
        let kinds: Vec<_> = last["metadata"]["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["kind"].clone())
            .collect();
        assert_eq!(
            kinds,
            [json!("Product"), json!("Marketplace"), json!("ProductPlan")]
        );
        let approved = put_subresource(
            &mut c,
            spec("Subscription"),
            None,
            "s",
            "approval",
            &json!({"approval": {"state": "approved", "reason": "ok"}}),
            &ctx(),
        )
        .unwrap();
        assert_eq!(approved[0].document["state"]["name"], "active");
        assert_eq!(approved[0].document["approval"]["previousState"], "pending");
    }

    #[test]
    fn writes_are_validated() {
        let mut c = seeded();
        let err = |r: Result<_, ApiError>| r.err().map(|e| e.status);
        assert_eq!(
            err(create(&mut c, spec("Product"), None, &json!({"name": "p"}), &ctx()).map(|_| ())),
            Some(409)
        );
        assert_eq!(
            err(create(
                &mut c,
                spec("Product"),
                None,
                &json!({"name": "q", "attributes": {"a": 1}}),
                &ctx()
            )
            .map(|_| ())),
            Some(400)
        );
        assert_eq!(
            err(create(
                &mut c,
                spec("Product"),
                None,
                &json!({"kind": "ProductPlan"}),
                &ctx()
            )
            .map(|_| ())),
            Some(400)
        );
        assert_eq!(
            err(create(
                &mut c,
                spec("ProductPlan"),
                None,
                &json!({"spec": {"product": "nope"}}),
                &ctx()
            )
            .map(|_| ())),
            Some(MISSING_REFERENCE_STATUS)
        );
        assert_eq!(
            err(create(&mut c, spec("Quota"), Some("nope"), &json!({}), &ctx()).map(|_| ())),
            Some(404)
        );
        assert_eq!(
            err(update(
                &mut c,
                spec("Product"),
                None,
                "p",
                &json!({"metadata": {"resourceVersion": "7"}}),
                &ctx()
            )
            .map(|_| ())),
            Some(428)
        );
        assert_eq!(
            err(put_subresource(
                &mut c,
                spec("ProductPlan"),
                None,
                "gold",
                "state",
                &json!({"state": "archived"}),
                &ctx()
            )
            .map(|_| ())),
            Some(400)
        );
        assert_eq!(
            err(put_subresource(
                &mut c,
                spec("ProductPlan"),
                None,
                "gold",
                "approval",
                &json!({"approval": {}}),
                &ctx()
            )
            .map(|_| ())),
            Some(404)
        );
        let generated = create(
            &mut c,
            spec("Quota"),
            Some("gold"),
            &json!({"title": "Q"}),
            &ctx(),
        )
        .unwrap()
        .1;
        assert!(generated.starts_with("quota-"));
    }

    #[test]
    fn an_active_plan_keeps_its_spec_but_takes_attributes_and_quota_resources() {
        let mut c = seeded();
        create(
            &mut c,
            spec("Quota"),
            Some("gold"),
            &json!({"name": "q0", "spec": {"unit": "transactions"}}),
            &ctx(),
        )
        .unwrap();
        put_subresource(
            &mut c,
            spec("ProductPlan"),
            None,
            "gold",
            "state",
            &json!({"state": "active"}),
            &ctx(),
        )
        .unwrap();
        let plan = update(
            &mut c,
            spec("ProductPlan"),
            None,
            "gold",
            &json!({"attributes": {"k": "v"}}),
            &ctx(),
        );
        assert!(plan.is_ok());
        let repriced = update(
            &mut c,
            spec("ProductPlan"),
            None,
            "gold",
            &json!({"spec": {"product": "p", "type": "free"}}),
            &ctx(),
        );
        assert_eq!(repriced.err().map(|e| e.status), Some(400));
        let more = json!({"spec": {"unit": "transactions", "resources": [{"kind": "AssetResource", "name": "a/b"}]}});
        assert!(update(&mut c, spec("Quota"), Some("gold"), "q0", &more, &ctx()).is_ok());
        let unit = json!({"spec": {"unit": "calls", "resources": [{"kind": "AssetResource", "name": "a/b"}]}});
        assert!(update(&mut c, spec("Quota"), Some("gold"), "q0", &unit, &ctx()).is_err());
    }

    #[test]
    fn deleting_a_scope_deletes_what_lives_in_it_first() {
        let mut c = seeded();
        create(
            &mut c,
            spec("Quota"),
            Some("gold"),
            &json!({"name": "q0"}),
            &ctx(),
        )
        .unwrap();
        let changes = delete(&mut c, spec("ProductPlan"), None, "gold").unwrap();
        let deleted: Vec<_> = changes.iter().map(|c| c.spec.kind).collect();
        assert_eq!(deleted, ["Quota", "ProductPlan"]);
        assert!(c.get(spec("Quota"), Some("gold"), "q0").is_none());
    }
}
