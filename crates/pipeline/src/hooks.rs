//! The Amplify resources that make Amplify send plan, quota and subscription events to the
//! bridge (reference §4.1): an Integration, a Secret holding the webhook secret, a Webhook with
//! the bridge's URL and the secret's header, a ResourceHook with the triggers; and a WatchTopic
//! with the same triggers as filters (§4.5), which keeps the events 7 days for the bridge to read.

use billing_bridge_amplify::{AmplifyClient, AmplifyError};
use serde_json::{Value, json};

/// What to install.
pub struct HookSpec<'a> {
    /// Resource names are derived from it, e.g. `billing-bridge`.
    pub name: &'a str,
    /// The bridge's public webhook URL (…/webhooks/amplify).
    pub url: &'a str,
    /// The header Amplify puts the secret in.
    pub header: &'a str,
    /// The secret value, sent verbatim.
    pub secret: &'a str,
}

/// The events the bridge needs: plan lifecycle, quota changes, subscription approval and end.
fn triggers() -> Value {
    json!([
        {"group": "catalog", "kind": "ProductPlan", "name": "*", "type": ["created", "updated", "deleted"]},
        {"group": "catalog", "kind": "Quota", "name": "*", "type": ["created", "updated", "deleted"],
         "scope": {"kind": "ProductPlan", "name": "*"}},
        {"group": "catalog", "kind": "Subscription", "name": "*", "type": ["updated", "deleted"]}
    ])
}

/// The WatchTopic `install-hooks --name NAME` creates: `NAME-watch` (`[intake] watch_topic`).
pub fn watch_topic_name(name: &str) -> String {
    format!("{name}-watch")
}

/// Creates or updates the five resources; answers a line per resource saying what was done.
pub async fn install_hooks(
    amplify: &AmplifyClient,
    spec: &HookSpec<'_>,
) -> Result<Vec<String>, AmplifyError> {
    let name = spec.name;
    let integration = amplify.resource_path("management", "integrations", name);
    let scoped = |plural: &str| format!("{integration}/{plural}");
    let secret_name = format!("{name}-secret");
    let webhook_name = format!("{name}-webhook");
    let hook_name = format!("{name}-events");
    let resources = [
        (
            amplify
                .resource_path("management", "integrations", "")
                .trim_end_matches('/')
                .to_owned(),
            json!({"group": "management", "kind": "Integration", "name": name, "title": "billing-bridge",
                   "spec": {"description": "Sends plan, quota and subscription events to billing-bridge"}}),
        ),
        (
            scoped("secrets"),
            json!({"group": "management", "kind": "Secret", "name": secret_name,
                   "metadata": {"scope": {"kind": "Integration", "name": name}},
                   "spec": {"data": {spec.header: spec.secret}}}),
        ),
        (
            scoped("webhooks"),
            json!({"group": "management", "kind": "Webhook", "name": webhook_name,
                   "metadata": {"scope": {"kind": "Integration", "name": name}},
                   "spec": {"enabled": true, "url": spec.url, "headers": {"Content-Type": "application/json"},
                            "auth": {"secret": {"name": secret_name, "key": spec.header},
                                     "location": {"in": "header", "name": spec.header}}}}),
        ),
        (
            scoped("resourcehooks"),
            json!({"group": "management", "kind": "ResourceHook", "name": hook_name,
                   "metadata": {"scope": {"kind": "Integration", "name": name}},
                   "spec": {"triggers": triggers(), "webhooks": [webhook_name]}}),
        ),
        (
            amplify
                .resource_path("management", "watchtopics", "")
                .trim_end_matches('/')
                .to_owned(),
            // A WatchTopic's filters have a trigger's shape (SDK `WatchTopicSpecFilters`).
            json!({"group": "management", "kind": "WatchTopic", "name": watch_topic_name(name),
                   "title": "billing-bridge",
                   "spec": {"description": "Plan, quota and subscription events billing-bridge reads after a restart",
                            "filters": triggers()}}),
        ),
    ];
    let mut done = Vec::new();
    for (collection, mut body) in resources {
        body["apiVersion"] = json!(amplify.api_version());
        let kind = body["kind"].as_str().unwrap_or_default().to_owned();
        let resource_name = body["name"].as_str().unwrap_or_default().to_owned();
        let self_link = format!("{collection}/{resource_name}");
        match amplify.create(&collection, &body).await {
            Ok(_) => done.push(format!("created {kind} {resource_name}")),
            Err(AmplifyError::Refused { status: 409, .. }) => {
                amplify.replace(&self_link, &body).await?;
                done.push(format!("updated {kind} {resource_name}"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
