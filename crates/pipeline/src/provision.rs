//! What provisioners share: the error type, resource paths built from checked names, the
//! confirmation that a resource is gone, and "tell them once".

use std::time::Duration;

use billing_bridge_amplify::AmplifyError;
use billing_bridge_billing::recurly::RecurlyError;
use billing_bridge_domain::amplify::Resource;
use billing_bridge_domain::trust::amplify_name;
use billing_bridge_store::Claim;
use billing_bridge_upstream::Transient;

use crate::Bridge;

/// How long a "told them already" mark is kept: a week, longer than any retry or reconcile
/// would repeat the same notice.
const NOTICE_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Amplify(#[from] AmplifyError),
    #[error(transparent)]
    Recurly(#[from] RecurlyError),
    #[error(transparent)]
    Store(billing_bridge_store::StoreError),
    #[error("{0}")]
    Data(String),
}

impl ProvisionError {
    /// Worth another pass later (the upstream was throttling, failing or unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            ProvisionError::Amplify(e) => e.is_transient(),
            ProvisionError::Recurly(e) => e.is_transient(),
            // The store being unavailable passes; a link must never be skipped for it.
            ProvisionError::Store(_) => true,
            ProvisionError::Data(_) => false,
        }
    }
}

/// `/catalog/{version}/{plural}/{name}`: a resource's path built from its kind and a checked
/// name, never taken from an event (`selfLink` is a claim like the rest of the body).
pub fn catalog_path(bridge: &Bridge, plural: &str, name: &str) -> Result<String, ProvisionError> {
    let name = amplify_name(name).map_err(|e| ProvisionError::Data(e.to_string()))?;
    Ok(bridge.amplify.resource_path("catalog", plural, name))
}

/// `/catalog/{version}/{plural}`.
pub fn catalog_collection(bridge: &Bridge, plural: &str) -> String {
    format!("/catalog/{}/{plural}", bridge.amplify.api_version())
}

/// The resource of `plural` whose `metadata.id` is `id`, read from Amplify's list (one call):
/// `None` confirms it is gone, whatever name an event gave it. A name may have been reused by a
/// new resource, and a forged event may pair a real id with a missing name; the id decides.
pub async fn by_id(
    bridge: &Bridge,
    plural: &str,
    id: &str,
) -> Result<Option<serde_json::Value>, ProvisionError> {
    let id = amplify_name(id).map_err(|e| ProvisionError::Data(e.to_string()))?;
    let listed = bridge
        .amplify
        .list(
            &catalog_collection(bridge, plural),
            Some(&format!("metadata.id=={id}")),
        )
        .await?;
    // `==` takes wildcards (`_`): only the exact id counts.
    Ok(listed
        .into_iter()
        .find(|r| Resource::read(r).id() == Some(id)))
}

/// True the first time `key` is seen (within a week): for notices that must be sent once
/// although the pass that sends them may run many times.
pub async fn first_time(bridge: &Bridge, key: &str) -> bool {
    match bridge.store.claim_event(key, NOTICE_MEMORY).await {
        Ok(Claim::Claimed) => {
            let _ = bridge.store.finish_event(key, NOTICE_MEMORY).await;
            true
        }
        Ok(_) => false,
        // Without the store we cannot know; telling twice beats never telling.
        Err(_) => true,
    }
}
