//! The UsageAggregator's directory of billed subscriptions: for each Amplify subscription linked
//! to a Recurly subscription (the `recurlySubscriptionId` attribute the SubscriptionProvisioner
//! writes), its plan's quotas by the asset resources they count (by id and name). Amplify stays the source of
//! truth (design.md §5); this is a cache, filled with a few large list calls (every linked
//! subscription, every quota) rather than one call per row, because Amplify allows 25 calls a
//! minute.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use billing_bridge_amplify::{AmplifyClient, AmplifyError};
use billing_bridge_domain::amplify::{ReferenceView, Resource};
use billing_bridge_domain::events::link_attributes;
use billing_bridge_domain::usage::{BilledSubscription, QuotaResource, own_name};
use billing_bridge_store::Store;
use serde::{Deserialize, Serialize};

/// The kind of the resources a quota lists (reference §3.3).
const ASSET_RESOURCE: &str = "AssetResource";

/// The resources a quota lists, each with its AssetResource id [I]: the API server records the
/// resources a spec refers to in `metadata.references` (as it does a Subscription's product and
/// plan, reference §3.4), so the quota's `AssetResource` entries carry each listed resource's
/// `id`, with its own `name` and its asset as `scopeName`. This is the only place that knows;
/// an entry that matches no listed resource still names one of the quota's resources, so it is
/// kept too. With no such entries, resources are found by name alone.
fn quota_resources(quota: &Resource) -> Vec<QuotaResource> {
    let references: Vec<&ReferenceView> = quota
        .references()
        .iter()
        .filter(|r| r.kind == ASSET_RESOURCE && !r.id.is_empty())
        .collect();
    let full = |r: &ReferenceView| {
        if r.scope_name.is_empty() || r.name.contains('/') {
            r.name.clone()
        } else {
            format!("{}/{}", r.scope_name, r.name)
        }
    };
    let mut used = vec![false; references.len()];
    let mut resources: Vec<QuotaResource> = quota
        .resource_names()
        .map(|listed| {
            let found = references
                .iter()
                .position(|r| full(r) == listed)
                .or_else(|| {
                    // No asset to tell them apart: an own name one reference alone has.
                    let own = own_name(listed);
                    let mut same = references.iter().enumerate().filter(|(_, r)| r.name == own);
                    match (same.next(), same.next()) {
                        (Some((i, _)), None) => Some(i),
                        _ => None,
                    }
                });
            if let Some(i) = found {
                used[i] = true;
            }
            QuotaResource {
                listed: listed.to_owned(),
                id: found.map(|i| references[i].id.clone()),
            }
        })
        .collect();
    resources.extend(
        references
            .iter()
            .zip(used)
            .filter(|(_, used)| !used)
            .map(|(r, _)| QuotaResource {
                listed: full(r),
                id: Some(r.id.clone()),
            }),
    );
    resources
}

/// A full refresh is due after this long. New subscriptions are looked up as their traffic
/// appears, and a resource no quota of a known plan counts triggers a refresh, so this only
/// bounds how long other changes (a link removed) go unseen.
pub const MAX_AGE: Duration = Duration::from_secs(6 * 3600);
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
}

#[derive(Default)]
pub struct Directory {
    subscriptions: HashMap<String, Billed>,
    /// Looked up and found not billed; forgotten at the next full refresh.
    not_billed: HashSet<String>,
    /// Plan name → its quotas by asset resource key (shared by the plan's subscriptions).
    quotas: HashMap<String, BilledSubscription>,
    /// When Amplify was last read in full (epoch ms, wall clock: snapshots outlive processes).
    refreshed_ms: Option<i64>,
}

/// The [`Snapshot`] form this build writes; another (older) form is not read, Amplify is.
/// 2: quotas by resource id and ambiguous names.
const SNAPSHOT_VERSION: u32 = 2;

/// What the store keeps of the directory (`Store::save_links`), so a restarted process or
/// another instance starts warm instead of reading every subscription again.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    #[serde(default)]
    version: u32,
    refreshed_ms: i64,
    /// (Amplify id, name, title, Recurly subscription, plan).
    subscriptions: Vec<(String, String, String, String, String)>,
    quotas: HashMap<String, BilledSubscription>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
        // A billed subscription of a plan with no quotas is billed for nothing: its traffic is
        // unmatched by resource, not by subscription.
        static NO_QUOTAS: BilledSubscription = BilledSubscription {
            quotas: BTreeSet::new(),
            quota_by_resource_id: BTreeMap::new(),
            quota_by_resource: BTreeMap::new(),
            ambiguous: BTreeSet::new(),
        };
        self.subscriptions
            .get(amplify_id)
            .map(|b| self.quotas.get(&b.plan).unwrap_or(&NO_QUOTAS))
    }

    pub fn is_stale(&self) -> bool {
        self.refreshed_ms
            .is_none_or(|at| now_ms() - at >= MAX_AGE.as_millis() as i64)
    }

    /// Whether the directory was read in full since `at_ms` (epoch ms).
    pub fn refreshed_since(&self, at_ms: i64) -> bool {
        self.refreshed_ms.is_some_and(|at| at >= at_ms)
    }

    fn snapshot(&self) -> String {
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            refreshed_ms: self.refreshed_ms.unwrap_or(0),
            subscriptions: self
                .subscriptions
                .values()
                .map(|b| {
                    (
                        b.amplify_id.clone(),
                        b.name.clone(),
                        b.title.clone(),
                        b.recurly_subscription.clone(),
                        b.plan.clone(),
                    )
                })
                .collect(),
            quotas: self.quotas.clone(),
        };
        serde_json::to_string(&snapshot).expect("snapshots serialize")
    }

    /// Takes the store's snapshot when this process has none; a snapshot past [`MAX_AGE`]
    /// is taken too, and then refreshed as stale.
    async fn restore(&mut self, store: &Store) {
        if self.refreshed_ms.is_some() {
            return;
        }
        let Ok(Some(text)) = store.links().await else {
            return;
        };
        let Ok(snapshot) = serde_json::from_str::<Snapshot>(&text) else {
            tracing::warn!("the stored links could not be read; reading Amplify instead");
            return;
        };
        if snapshot.version != SNAPSHOT_VERSION {
            tracing::info!("the stored links are of an older form; reading Amplify instead");
            return;
        }
        self.quotas = snapshot.quotas;
        self.subscriptions = snapshot
            .subscriptions
            .into_iter()
            .map(|(amplify_id, name, title, recurly_subscription, plan)| {
                (
                    amplify_id.clone(),
                    Billed {
                        amplify_id,
                        name,
                        title,
                        recurly_subscription,
                        plan,
                    },
                )
            })
            .collect();
        self.refreshed_ms = Some(snapshot.refreshed_ms);
    }

    async fn save(&self, store: &Store) {
        if let Err(e) = store.save_links(self.snapshot()).await {
            tracing::warn!(error = %e, "the links could not be kept in the store");
        }
    }

    /// Whether a subscription id is neither billed nor known not to be.
    pub fn is_unknown(&self, amplify_id: &str) -> bool {
        !self.subscriptions.contains_key(amplify_id) && !self.not_billed.contains(amplify_id)
    }

    fn billed_from(&self, subscription: Resource) -> Option<Billed> {
        let recurly = subscription.attribute(link_attributes::SUBSCRIPTION_ID)?;
        let plan = subscription.plan_name()?;
        let (id, name) = (subscription.id()?, subscription.name()?);
        Some(Billed {
            amplify_id: id.to_owned(),
            title: subscription.title().unwrap_or(name).to_owned(),
            name: name.to_owned(),
            recurly_subscription: recurly.to_owned(),
            plan: plan.to_owned(),
        })
    }

    /// Reads every linked subscription and every quota again, and keeps them in the store.
    pub async fn refresh(
        &mut self,
        store: &Store,
        amplify: &AmplifyClient,
        api_version: &str,
    ) -> Result<(), AmplifyError> {
        let quotas: Vec<Resource> = amplify
            .list_as(&format!("/catalog/{api_version}/quotas"), None)
            .await?;
        let mut by_plan: HashMap<String, BilledSubscription> = HashMap::new();
        for quota in &quotas {
            if let (Some(plan), Some(id)) = (quota.scope_name(), quota.id()) {
                by_plan
                    .entry(plan.to_owned())
                    .or_default()
                    .add_quota(id, &quota_resources(quota));
            }
        }
        drop(quotas);
        self.quotas = by_plan;
        let linked: Vec<Resource> = amplify
            .list_as(
                &format!("/catalog/{api_version}/subscriptions"),
                Some(&format!(
                    "attributes.{}==*",
                    link_attributes::SUBSCRIPTION_ID
                )),
            )
            .await?;
        let subscriptions = linked
            .into_iter()
            .filter_map(|s| self.billed_from(s))
            .map(|b| (b.amplify_id.clone(), b))
            .collect();
        self.subscriptions = subscriptions;
        self.not_billed.clear();
        self.refreshed_ms = Some(now_ms());
        self.save(store).await;
        Ok(())
    }

    /// Makes sure every subscription named in `ids` is known: a full refresh when stale or
    /// when many are unknown, otherwise one lookup each. Returns how many calls it took.
    pub async fn resolve<'a>(
        &mut self,
        store: &Store,
        amplify: &AmplifyClient,
        api_version: &str,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AmplifyError> {
        self.restore(store).await;
        if self.is_stale() {
            return self.refresh(store, amplify, api_version).await;
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
            return self.refresh(store, amplify, api_version).await;
        }
        let mut found_any = false;
        for id in unknown {
            let found: Vec<Resource> = amplify
                .list_as(
                    &format!("/catalog/{api_version}/subscriptions"),
                    Some(&format!("metadata.id=={id}")),
                )
                .await?;
            let billed = found.into_iter().find_map(|s| self.billed_from(s));
            match billed {
                Some(b) if !self.quotas.contains_key(&b.plan) => {
                    // A plan the directory has not seen: its quotas are needed too.
                    return self.refresh(store, amplify, api_version).await;
                }
                Some(b) => {
                    self.subscriptions.insert(id, b);
                    found_any = true;
                }
                None => {
                    self.not_billed.insert(id);
                }
            }
        }
        if found_any {
            self.save(store).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn quota(value: serde_json::Value) -> Resource {
        Resource::read(&value)
    }

    fn plan_of(quotas: &[serde_json::Value]) -> BilledSubscription {
        let mut plan = BilledSubscription::default();
        for q in quotas {
            let q = quota(q.clone());
            plan.add_quota(q.id().unwrap(), &quota_resources(&q));
        }
        plan
    }

    fn billed_to(
        plan: &BilledSubscription,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Option<String> {
        let row = billing_bridge_domain::usage::TrafficRow {
            resource_id: id.map(str::to_owned),
            resource_name: name.map(str::to_owned),
            ..Default::default()
        };
        plan.quota_of(&row).ok().map(str::to_owned)
    }

    #[test]
    fn quotas_are_found_by_resource_id_listed_name_and_unambiguous_own_name() {
        let plan = plan_of(&[
            json!({"metadata": {"id": "q1", "scope": {"kind": "ProductPlan", "name": "gold"},
                    "references": [
                        {"id": "ar-pl", "kind": "AssetResource", "name": "list", "scopeKind": "Asset", "scopeName": "pets"},
                        {"id": "pp", "kind": "ProductPlan", "name": "gold"}]},
                   "spec": {"unit": "transactions", "resources": [{"kind": "AssetResource", "name": "pets/list"}, {"name": "pets/get"}]}}),
            json!({"metadata": {"id": "q2", "references": [
                        {"id": "ar-sl", "kind": "AssetResource", "name": "list", "scopeName": "stores"}]},
                   "spec": {"resources": [{"name": "stores/list"}]}}),
        ]);
        assert_eq!(
            billed_to(&plan, Some("ar-pl"), Some("list")).as_deref(),
            Some("q1")
        );
        assert_eq!(billed_to(&plan, Some("ar-sl"), None).as_deref(), Some("q2"));
        assert_eq!(
            billed_to(&plan, None, Some("stores/list")).as_deref(),
            Some("q2")
        );
        assert_eq!(billed_to(&plan, None, Some("get")).as_deref(), Some("q1"));
        assert_eq!(
            plan.quota_of(&billing_bridge_domain::usage::TrafficRow {
                resource_name: Some("list".into()),
                ..Default::default()
            }),
            Err(billing_bridge_domain::usage::Unmatched::AmbiguousResource),
            "shared by two quotas: not guessed"
        );
        assert_eq!(
            billed_to(&plan, Some("pp"), None),
            None,
            "only AssetResource references"
        );
    }

    #[test]
    fn a_subscription_is_billed_when_linked_to_a_recurly_subscription() {
        let link = Resource::read(&json!({
            "name": "acme-gold", "title": "Acme Gold", "metadata": {"id": "s1"},
            "spec": {"product": "p", "plan": {"name": "gold"}},
            "attributes": {link_attributes::SUBSCRIPTION_ID: "r1", "other": "x"},
            "approval": {"state": "approved"}
        }));
        let billed = Directory::default().billed_from(link).unwrap();
        assert_eq!(
            (
                billed.amplify_id.as_str(),
                billed.recurly_subscription.as_str(),
                billed.plan.as_str(),
                billed.title.as_str()
            ),
            ("s1", "r1", "gold", "Acme Gold")
        );
        let unlinked = Resource::read(&json!({
            "name": "x", "metadata": {"id": "s2"}, "spec": {"plan": {"name": "gold"}}
        }));
        assert!(Directory::default().billed_from(unlinked).is_none());
    }

    #[tokio::test]
    async fn a_new_process_starts_from_the_stored_links() {
        let store = Store::memory(10);
        let mut first = Directory::default();
        first.quotas.insert(
            "gold".into(),
            BilledSubscription {
                quota_by_resource: BTreeMap::from([("api/pets".to_owned(), "q1".to_owned())]),
                ..BilledSubscription::default()
            },
        );
        let link = Resource::read(&json!({
            "name": "acme-gold", "metadata": {"id": "s1"}, "spec": {"plan": {"name": "gold"}},
            "attributes": {"recurlySubscriptionId": "r1"}
        }));
        let billed = first.billed_from(link).unwrap();
        first.subscriptions.insert("s1".into(), billed.clone());
        first.refreshed_ms = Some(now_ms());
        first.save(&store).await;

        let mut second = Directory::default();
        assert!(second.is_stale());
        second.restore(&store).await;
        assert!(!second.is_stale(), "a fresh snapshot needs no Amplify call");
        assert_eq!(second.get("s1"), Some(&billed));
        assert_eq!(
            second
                .billing_of("s1")
                .unwrap()
                .quota_by_resource
                .get("api/pets")
                .map(String::as_str),
            Some("q1")
        );
    }
}
