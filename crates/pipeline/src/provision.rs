//! What provisioners share: the error type, resource paths, and "tell them once".

use std::time::Duration;

use billing_bridge_amplify::AmplifyError;
use billing_bridge_billing::recurly::RecurlyError;
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
    #[error("{0}")]
    Data(String),
}

impl ProvisionError {
    /// Worth another pass later (the upstream was throttling, failing or unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            ProvisionError::Amplify(e) => e.is_transient(),
            ProvisionError::Recurly(e) => e.is_transient(),
            ProvisionError::Data(_) => false,
        }
    }
}

/// A non-empty string at a JSON pointer of an Amplify resource.
pub fn text<'a>(value: &'a serde_json::Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `/catalog/v1/products/x` beside `/catalog/v1/productplans/y`: same group and API version.
pub fn sibling_link(self_link: &str, plural: &str, name: &str) -> String {
    let mut parts = self_link.trim_start_matches('/').split('/');
    let group = parts.next().unwrap_or("catalog");
    let version = parts.next().unwrap_or("v1");
    format!("/{group}/{version}/{plural}/{name}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_keep_group_and_version() {
        assert_eq!(
            sibling_link(
                "/catalog/v1alpha1/productplans/silver",
                "products",
                "weather"
            ),
            "/catalog/v1alpha1/products/weather"
        );
        assert_eq!(
            sibling_link("/catalog/v1/subscriptions/s", "productplans", "p"),
            "/catalog/v1/productplans/p"
        );
    }
}
