//! The UsageAggregator's directory of billed subscriptions: for each Amplify subscription linked
//! to a Recurly subscription (the `recurlySubscriptionId` attribute the SubscriptionProvisioner
//! writes), its plan's quotas by the asset resources they count. Amplify stays the source of
//! truth (design.md §5); this is a cache, filled with a few large list calls (every linked
//! subscription, every quota) rather than one call per row, because Amplify allows 25 calls a
//! minute.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use billing_bridge_amplify::{AmplifyClient, AmplifyError};
use billing_bridge_domain::events::link_attributes;
use billing_bridge_domain::usage::BilledSubscription;
use serde_json::Value;

use super::traffic::resource_keys;
use crate::provision::text;

/// A full refresh is due after this long, so quota changes and unlinks are seen.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// Unknown subscriptions in a window's traffic are looked up one by one up to this many; more
/// and the whole directory is read again (a few calls either way).
const LOOKUPS_BEFORE_REFRESH: usize = 20;

/// One billed subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Billed {
    pub amplify_id: String,
    /// Resource name (for cards).
    pub name: String,
    pub title: String,
    pub recurly_subscription: String,
    pub plan: String,
    pub billing: BilledSubscription,
}

#[derive(Default)]
pub struct Directory {
    subscriptions: HashMap<String, Billed>,
    /// Looked up and found not billed; forgotten at the next full refresh.
    not_billed: HashSet<String>,
    /// Plan name → asset resource key → quota id.
    quotas: HashMap<String, BTreeMap<String, String>>,
    refreshed: Option<Instant>,
}

fn quota_map(quota: &Value, into: &mut BTreeMap<String, String>, ambiguous: &mut HashSet<String>) {
    let Some(id) = text(quota, "/metadata/id") else {
        return;
    };
    for resource in quota
        .pointer("/spec/resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = text(resource, "/name") else {
            continue;
        };
        for (i, key) in resource_keys(name).into_iter().enumerate() {
            // A full name is unique in a plan (a resource belongs to one quota, reference
            // §3.3); a short name shared by two quotas is dropped rather than guessed.
            if i > 0 && (into.get(&key).is_some_and(|q| q != id) || ambiguous.contains(&key)) {
                into.remove(&key);
                ambiguous.insert(key);
                continue;
            }
            into.insert(key, id.to_owned());
        }
    }
}

impl Directory {
    pub fn len(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    pub fn get(&self, amplify_id: &str) -> Option<&Billed> {
        self.subscriptions.get(amplify_id)
    }

    pub fn billing_of(&self, amplify_id: &str) -> Option<&BilledSubscription> {
        self.subscriptions.get(amplify_id).map(|b| &b.billing)
    }

    pub fn is_stale(&self) -> bool {
        self.refreshed.is_none_or(|at| at.elapsed() >= MAX_AGE)
    }

    /// Whether a subscription id is neither billed nor known not to be.
    pub fn is_unknown(&self, amplify_id: &str) -> bool {
        !self.subscriptions.contains_key(amplify_id) && !self.not_billed.contains(amplify_id)
    }

    fn billed_from(&self, subscription: &Value) -> Option<Billed> {
        let recurly = text(
            subscription,
            &format!("/attributes/{}", link_attributes::SUBSCRIPTION_ID),
        )
        .filter(|s| !s.is_empty())?;
        let plan = text(subscription, "/spec/plan/name")?;
        let name = text(subscription, "/name")?;
        Some(Billed {
            amplify_id: text(subscription, "/metadata/id")?.to_owned(),
            name: name.to_owned(),
            title: text(subscription, "/title").unwrap_or(name).to_owned(),
            recurly_subscription: recurly.to_owned(),
            plan: plan.to_owned(),
            billing: BilledSubscription {
                quota_by_resource: self.quotas.get(plan).cloned().unwrap_or_default(),
            },
        })
    }

    /// Reads every linked subscription and every quota again.
    pub async fn refresh(
        &mut self,
        amplify: &AmplifyClient,
        api_version: &str,
    ) -> Result<(), AmplifyError> {
        let quotas = amplify
            .list(&format!("/catalog/{api_version}/quotas"), None)
            .await?;
        let mut by_plan: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        let mut ambiguous: HashMap<String, HashSet<String>> = HashMap::new();
        for quota in &quotas {
            if let Some(plan) = text(quota, "/metadata/scope/name") {
                quota_map(
                    quota,
                    by_plan.entry(plan.to_owned()).or_default(),
                    ambiguous.entry(plan.to_owned()).or_default(),
                );
            }
        }
        drop(quotas);
        self.quotas = by_plan;
        let linked = amplify
            .list(
                &format!("/catalog/{api_version}/subscriptions"),
                Some(&format!(
                    "attributes.{}==*",
                    link_attributes::SUBSCRIPTION_ID
                )),
            )
            .await?;
        let subscriptions = linked
            .iter()
            .filter_map(|s| self.billed_from(s))
            .map(|b| (b.amplify_id.clone(), b))
            .collect();
        self.subscriptions = subscriptions;
        self.not_billed.clear();
        self.refreshed = Some(Instant::now());
        Ok(())
    }

    /// Makes sure every subscription named in `ids` is known: a full refresh when stale or
    /// when many are unknown, otherwise one lookup each. Returns how many calls it took.
    pub async fn resolve<'a>(
        &mut self,
        amplify: &AmplifyClient,
        api_version: &str,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AmplifyError> {
        if self.is_stale() {
            return self.refresh(amplify, api_version).await;
        }
        let unknown: Vec<String> = ids
            .into_iter()
            .filter(|id| *id != super::traffic::UNKNOWN && self.is_unknown(id))
            .map(str::to_owned)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        if unknown.len() > LOOKUPS_BEFORE_REFRESH {
            return self.refresh(amplify, api_version).await;
        }
        for id in unknown {
            let found = amplify
                .list(
                    &format!("/catalog/{api_version}/subscriptions"),
                    Some(&format!("metadata.id=={id}")),
                )
                .await?;
            let billed = found.iter().find_map(|s| self.billed_from(s));
            match billed {
                Some(b) if !self.quotas.contains_key(&b.plan) => {
                    // A plan the directory has not seen: its quotas are needed too.
                    return self.refresh(amplify, api_version).await;
                }
                Some(b) => {
                    self.subscriptions.insert(id, b);
                }
                None => {
                    self.not_billed.insert(id);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quotas_are_found_by_full_and_unambiguous_short_resource_names() {
        let mut map = BTreeMap::new();
        let mut ambiguous = HashSet::new();
        quota_map(
            &json!({"metadata": {"id": "q1"}, "spec": {"resources": [{"name": "pets/list"}, {"name": "pets/get"}]}}),
            &mut map,
            &mut ambiguous,
        );
        quota_map(
            &json!({"metadata": {"id": "q2"}, "spec": {"resources": [{"name": "stores/list"}]}}),
            &mut map,
            &mut ambiguous,
        );
        assert_eq!(map.get("pets/list").map(String::as_str), Some("q1"));
        assert_eq!(map.get("stores/list").map(String::as_str), Some("q2"));
        assert_eq!(map.get("get").map(String::as_str), Some("q1"));
        assert_eq!(map.get("list"), None, "shared by two quotas: not guessed");
    }
}
