//! Webhook delivery (reference §4): turning resource changes into event envelopes, matching them
//! against ResourceHook triggers, and one worker that POSTs them in order, once, without retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::resources::central_timestamp;
use super::store::{Catalog, Change, EventType, WEBHOOK_ENABLED_BY_DEFAULT, render_document};
use crate::SandboxState;

/// One POST the worker is to make.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryJob {
    /// The reset epoch it belongs to; jobs from before a reset are dropped.
    pub epoch: u64,
    pub webhook: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub event: Value,
}

/// A delivery as `GET /_sandbox/deliveries` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeliveryRecord {
    pub seq: u64,
    pub webhook: String,
    pub url: String,
    pub event_type: String,
    pub subresource: Option<String>,
    pub event_id: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub event: Value,
}

/// The queue between request handlers and the delivery worker, and what it delivered.
pub(crate) struct Outbox {
    sender: mpsc::UnboundedSender<DeliveryJob>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<DeliveryJob>>>,
    epoch: AtomicU64,
    seq: AtomicU64,
    delivered: Mutex<Vec<DeliveryRecord>>,
}

impl Default for Outbox {
    fn default() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
            epoch: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            delivered: Mutex::new(Vec::new()),
        }
    }
}

impl Outbox {
    /// Forgets deliveries and drops whatever is still queued.
    pub fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.clear();
    }

    pub fn clear(&self) {
        self.delivered.lock().clear();
    }

    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.delivered.lock().clone()
    }

    fn enqueue(&self, mut job: DeliveryJob) {
        job.epoch = self.epoch.load(Ordering::SeqCst);
        // The receiver lives as long as the state; a send can only fail once the worker is
        // gone, when nobody is left to deliver to.
        let _ = self.sender.send(job);
    }
}

/// The webhook envelope of reference §4.3.
pub(crate) fn envelope(
    change: &Change,
    version: &str,
    correlation_id: &str,
    org_id: &str,
) -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "time": central_timestamp(chrono::Utc::now()),
        "version": "v1",
        "product": "AmplifyCentral",
        "correlationId": correlation_id,
        "organization": {"id": org_id},
        "type": change.event_type.name(),
        "payload": render_document(change.spec, change.scope.as_deref(), &change.document, version),
        "metadata": change.subresource.as_ref().map(|s| json!({"subresource": s})),
    })
}

fn pattern_matches(pattern: Option<&str>, value: &str) -> bool {
    match pattern {
        None | Some("*") => true,
        Some(p) => p == value,
    }
}

/// Whether a ResourceHook trigger (reference §4.1) fires for a change of this resource.
/// Whether any of `triggers` (a ResourceHook's `spec.triggers`, or a WatchTopic's
/// `spec.filters`, of the same shape) fires for `change`.
pub(crate) fn any_fires(triggers: &Value, change: &Change) -> bool {
    let name = change.document["name"].as_str().unwrap_or_default();
    let scope = change.spec.scope.zip(change.scope.as_deref());
    triggers.as_array().is_some_and(|ts| {
        ts.iter().any(|t| {
            trigger_matches(
                t,
                change.event_type,
                change.spec.group,
                change.spec.kind,
                name,
                scope,
            )
        })
    })
}

/// A trigger without `scope` fires for every scope; `*` matches any kind, name or scope.
pub(crate) fn trigger_matches(
    trigger: &Value,
    event_type: EventType,
    group: &str,
    kind: &str,
    name: &str,
    scope: Option<(&str, &str)>,
) -> bool {
    let text = |field: &str| trigger.get(field).and_then(Value::as_str);
    let type_ok = trigger
        .get("type")
        .and_then(Value::as_array)
        .is_some_and(|types| types.iter().any(|t| t == event_type.trigger_type()));
    let scope_ok = match (trigger.get("scope").filter(|s| s.is_object()), scope) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(want), Some((scope_kind, scope_name))) => {
            pattern_matches(want.get("kind").and_then(Value::as_str), scope_kind)
                && pattern_matches(want.get("name").and_then(Value::as_str), scope_name)
        }
    };
    type_ok
        && scope_ok
        && pattern_matches(text("group"), group)
        && pattern_matches(text("kind"), kind)
        && pattern_matches(text("name"), name)
}

/// Each POST a change causes: one per enabled Webhook named by each ResourceHook whose trigger
/// fires, with the Webhook's headers and its secret placed as `spec.auth` says.
fn jobs_for(catalog: &Catalog, change: &Change, event: &Value) -> Vec<DeliveryJob> {
    let mut jobs = Vec::new();
    for hook in catalog.all_of("ResourceHook") {
        if !any_fires(&hook.document["spec"]["triggers"], change) {
            continue;
        }
        let integration = hook.scope.as_deref();
        let webhook_names = hook.document["spec"]["webhooks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for webhook_name in webhook_names.iter().filter_map(Value::as_str) {
            let Some(webhook) = catalog.named("Webhook", integration, webhook_name) else {
                continue;
            };
            let spec = &webhook.document["spec"];
            if !spec["enabled"]
                .as_bool()
                .unwrap_or(WEBHOOK_ENABLED_BY_DEFAULT)
            {
                continue;
            }
            let mut headers: Vec<(String, String)> = spec["headers"]
                .as_object()
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            let mut query = Vec::new();
            if let Some(secret_value) = secret_value(catalog, integration, &spec["auth"]["secret"])
            {
                let location = &spec["auth"]["location"];
                let place = location["name"]
                    .as_str()
                    .unwrap_or("Authorization")
                    .to_owned();
                if location["in"] == "query" {
                    query.push((place, secret_value));
                } else {
                    headers.push((place, secret_value));
                }
            }
            jobs.push(DeliveryJob {
                epoch: 0,
                webhook: webhook_name.to_owned(),
                url: spec["url"].as_str().unwrap_or_default().to_owned(),
                headers,
                query,
                event: event.clone(),
            });
        }
    }
    jobs
}

/// The value of `spec.auth.secret {name, key}`: the Secret of the same Integration.
fn secret_value(
    catalog: &Catalog,
    integration: Option<&str>,
    secret_ref: &Value,
) -> Option<String> {
    let name = secret_ref["name"].as_str()?;
    let key = secret_ref["key"].as_str()?;
    let secret = catalog.named("Secret", integration, name)?;
    secret.document["spec"]["data"][key]
        .as_str()
        .map(str::to_owned)
}

/// Queues the events of `changes` for webhooks and retains them in WatchTopics. Called with the catalog still locked, so events leave in the
/// order the changes were made.
pub(crate) fn publish(
    state: &SandboxState,
    catalog: &Catalog,
    changes: &[Change],
    version: &str,
    correlation_id: &str,
) {
    let org_id = state.config().amplify.org_id.clone();
    for change in changes {
        let event = envelope(change, version, correlation_id, &org_id);
        for job in jobs_for(catalog, change, &event) {
            state.amplify.outbox.enqueue(job);
        }
        // The same event (same id) is retained by every WatchTopic whose filters match it.
        super::watch::retain(state, catalog, change, &event);
    }
}

/// The delivery worker: one POST at a time, in order, each given up after the configured
/// time-out and never retried (reference §4.1).
pub(crate) fn spawn_worker(state: Arc<SandboxState>) {
    let Some(mut receiver) = state.amplify.outbox.receiver.lock().take() else {
        return;
    };
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        while let Some(job) = receiver.recv().await {
            let outbox = &state.amplify.outbox;
            if job.epoch != outbox.epoch.load(Ordering::SeqCst) {
                continue;
            }
            let timeout = Duration::from_millis(state.config().amplify.webhook_timeout_ms);
            let (status, error) = post(&client, &job, timeout).await;
            if job.epoch != outbox.epoch.load(Ordering::SeqCst) {
                continue;
            }
            let record = DeliveryRecord {
                seq: outbox.seq.fetch_add(1, Ordering::SeqCst) + 1,
                webhook: job.webhook,
                url: job.url,
                event_type: job.event["type"].as_str().unwrap_or_default().to_owned(),
                subresource: job.event["metadata"]["subresource"]
                    .as_str()
                    .map(str::to_owned),
                event_id: job.event["id"].as_str().unwrap_or_default().to_owned(),
                status,
                error,
                event: job.event,
            };
            outbox.delivered.lock().push(record);
        }
    });
}

async fn post(
    client: &reqwest::Client,
    job: &DeliveryJob,
    timeout: Duration,
) -> (Option<u16>, Option<String>) {
    let mut request = client
        .post(&job.url)
        .timeout(timeout)
        .header("Content-Type", "application/json");
    if !job.query.is_empty() {
        request = request.query(&job.query);
    }
    for (name, value) in &job.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    match request.body(job.event.to_string()).send().await {
        Ok(response) => (Some(response.status().as_u16()), None),
        Err(e) if e.is_timeout() => (
            None,
            Some(format!("timed out after {} ms", timeout.as_millis())),
        ),
        Err(e) => (None, Some(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_match_on_group_kind_name_type_and_scope() {
        let t = json!({"group": "catalog", "kind": "ProductPlan", "name": "*", "type": ["updated", "deleted"]});
        let fires =
            |t: &Value, e, kind, scope| trigger_matches(t, e, "catalog", kind, "gold", scope);
        assert!(fires(&t, EventType::ResourceUpdated, "ProductPlan", None));
        assert!(fires(
            &t,
            EventType::SubResourceUpdated,
            "ProductPlan",
            None
        ));
        assert!(fires(&t, EventType::ResourceDeleted, "ProductPlan", None));
        assert!(!fires(&t, EventType::ResourceCreated, "ProductPlan", None));
        assert!(!fires(&t, EventType::ResourceUpdated, "Product", None));
        let any_kind =
            json!({"group": "catalog", "kind": "*", "name": "gold", "type": ["created"]});
        assert!(fires(
            &any_kind,
            EventType::ResourceCreated,
            "Quota",
            Some(("ProductPlan", "x"))
        ));
        assert!(!trigger_matches(
            &any_kind,
            EventType::ResourceCreated,
            "management",
            "Quota",
            "gold",
            None
        ));
        let scoped = json!({"group": "catalog", "kind": "Quota", "name": "*", "type": ["created"],
                            "scope": {"kind": "ProductPlan", "name": "silver"}});
        assert!(!fires(
            &scoped,
            EventType::ResourceCreated,
            "Quota",
            Some(("ProductPlan", "x"))
        ));
        assert!(trigger_matches(
            &scoped,
            EventType::ResourceCreated,
            "catalog",
            "Quota",
            "q",
            Some(("ProductPlan", "silver"))
        ));
        assert!(!fires(&scoped, EventType::ResourceCreated, "Quota", None));
    }
}
