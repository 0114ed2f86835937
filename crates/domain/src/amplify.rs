//! Typed views of the Amplify resources the rules read (Product, ProductPlan, Quota,
//! Subscription). Tolerant: unknown fields are ignored, both `v1` and `v1alpha1` shapes parse.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Metadata {
    pub id: String,
    #[serde(rename = "selfLink", default)]
    pub self_link: Option<String>,
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub references: Vec<Reference>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Reference {
    #[serde(default)]
    pub id: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Product {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub metadata: Metadata,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ProductPlan {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub metadata: Metadata,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub spec: PlanSpec,
    /// Lifecycle subresource: `draft | active | deprecated | archived` (reference §3.2).
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PlanSpec {
    #[serde(default)]
    pub product: String,
    /// `free | paid | custom`.
    #[serde(rename = "type", default)]
    pub plan_type: Option<String>,
    #[serde(default)]
    pub billing: Option<PlanBilling>,
    #[serde(default)]
    pub subscription: Option<PlanSubscription>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PlanBilling {
    #[serde(default)]
    pub currency: Option<String>,
    /// Base price per billing interval.
    #[serde(default)]
    pub price: Option<f64>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub setup: Option<SetupFee>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SetupFee {
    #[serde(default)]
    pub price: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PlanSubscription {
    /// `manual | automatic`.
    #[serde(default)]
    pub approval: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Quota {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: QuotaSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct QuotaSpec {
    /// `transactions`, or the name of a custom ProductPlanUnit.
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub pricing: Option<QuotaPricing>,
    /// Asset resources whose traffic this quota counts.
    #[serde(default)]
    pub resources: Vec<ResourceRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ResourceRef {
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
}

/// How a quota is priced (reference §3.3), discriminated by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum QuotaPricing {
    /// "Standard": a limit per `interval`; a `loose` limit may price the units above it
    /// (`overages.value`, reference §3.3).
    #[serde(rename = "fixed")]
    Fixed {
        #[serde(default)]
        interval: Option<String>,
        #[serde(default)]
        limit: Option<QuotaLimit>,
    },
    #[serde(rename = "unlimited")]
    Unlimited {},
    /// "Pay Per Use". The spelling `perunit` is seen only in an Axway employee's generator
    /// (reference §3.3, open question 4); `perUnit` is accepted too in case the API follows the
    /// SDK's type name.
    #[serde(rename = "perunit", alias = "perUnit")]
    PerUnit { cost: f64 },
    /// "Tiered – Graduated": each unit priced at its own tier.
    #[serde(rename = "graduated")]
    Graduated { limit: TierLimit },
    /// "Tiered – Volume": all units priced at the tier the total reaches.
    #[serde(rename = "volume")]
    Volume { limit: TierLimit },
    /// A pricing type this version does not know; never billed.
    #[serde(other)]
    Unknown,
}

/// A Standard quota's limit (reference §3.3, SDK `QuotaSpecLimitType{Strict,Loose}`): `strict`
/// blocks past `value`; `loose` lets traffic through and prices each unit over `value` at
/// `overages.value`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum QuotaLimit {
    #[serde(rename = "strict")]
    Strict {
        #[serde(default)]
        value: i64,
    },
    #[serde(rename = "loose")]
    Loose {
        #[serde(default)]
        value: i64,
        #[serde(default)]
        overages: Option<Overages>,
    },
    /// `tiered` belongs to graduated and volume pricing; anything else is not a Standard limit.
    #[serde(other)]
    Other,
}

/// The price of each unit past a loose limit (SDK `QuotaSpecLimitTypeLooseOverages`, omitted
/// when zero).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Overages {
    #[serde(default)]
    pub value: f64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TierLimit {
    #[serde(default)]
    pub tiers: Vec<AmplifyTier>,
}

/// One tier as Amplify states it: units `from..=to` cost `cost` each, plus `flatFee` once when
/// the tier is reached.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct AmplifyTier {
    pub from: i64,
    pub to: i64,
    #[serde(default)]
    pub cost: f64,
    #[serde(rename = "flatFee", default)]
    pub flat_fee: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Subscription {
    pub name: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: SubscriptionSpec,
    #[serde(default)]
    pub marketplace: Option<SubscriptionMarketplace>,
    #[serde(default)]
    pub approval: Option<Approval>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SubscriptionSpec {
    #[serde(default)]
    pub product: String,
    #[serde(default)]
    pub plan: Option<NamedRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct NamedRef {
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Approval {
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SubscriptionMarketplace {
    #[serde(default)]
    pub resource: Option<MarketplaceResource>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct MarketplaceResource {
    #[serde(default)]
    pub owner: Option<Owner>,
}

/// Who owns a subscription (reference §3.4): a team, in an organization, and a user when the
/// team is the user's private one.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Owner {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub organization: Option<IdRef>,
    #[serde(default)]
    pub user: Option<IdRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct IdRef {
    pub id: String,
}

/// The fields the pipeline reads of any catalog resource it looks at (Product, ProductPlan,
/// Quota, Subscription, and the WatchTopic events that name them), in the shapes reference §2.4
/// and §3 document. Read from whatever Amplify answers, and forgiving: a field that is missing,
/// `null` or of another type reads as absent, so one odd field never hides the rest of a
/// resource; the accessors answer only non-empty text.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Resource {
    #[serde(deserialize_with = "lenient")]
    name: Option<String>,
    #[serde(deserialize_with = "lenient")]
    title: Option<String>,
    #[serde(deserialize_with = "lenient")]
    metadata: ResourceMetadata,
    /// Only string values: Amplify's attributes are `string → string` (§2.4).
    #[serde(deserialize_with = "lenient_attributes")]
    attributes: BTreeMap<String, String>,
    #[serde(deserialize_with = "lenient")]
    spec: ResourceSpec,
    #[serde(deserialize_with = "lenient")]
    state: Option<LifecycleState>,
    #[serde(deserialize_with = "lenient")]
    marketplace: ResourceMarketplace,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct ResourceMetadata {
    #[serde(deserialize_with = "lenient")]
    id: Option<String>,
    #[serde(rename = "selfLink", deserialize_with = "lenient")]
    self_link: Option<String>,
    /// `DELETING`, only while a resource is being deleted (§2.4).
    #[serde(deserialize_with = "lenient")]
    state: Option<String>,
    #[serde(deserialize_with = "lenient")]
    scope: NamedView,
    /// A WatchTopic event's position in its topic (§4.5).
    #[serde(rename = "sequenceID", deserialize_with = "lenient")]
    sequence_id: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    references: Vec<ReferenceView>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct NamedView {
    #[serde(deserialize_with = "lenient")]
    name: Option<String>,
}

/// An entry of `metadata.references` (§2.4; fields as the SDK's `Reference`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ReferenceView {
    #[serde(deserialize_with = "lenient")]
    pub id: String,
    #[serde(deserialize_with = "lenient")]
    pub kind: String,
    #[serde(deserialize_with = "lenient")]
    pub name: String,
    #[serde(rename = "scopeName", deserialize_with = "lenient")]
    pub scope_name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct ResourceSpec {
    /// A plan's or a subscription's product name.
    #[serde(deserialize_with = "lenient")]
    product: Option<String>,
    /// A plan's `free | paid | custom`.
    #[serde(rename = "type", deserialize_with = "lenient")]
    plan_type: Option<String>,
    /// A subscription's plan.
    #[serde(deserialize_with = "lenient")]
    plan: NamedView,
    /// A quota's pricing, of which only the type is read here.
    #[serde(deserialize_with = "lenient")]
    pricing: PricingType,
    /// The asset resources a quota lists (`asset/resource`).
    #[serde(deserialize_with = "lenient")]
    resources: Vec<NamedView>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct PricingType {
    #[serde(rename = "type", deserialize_with = "lenient")]
    pricing_type: Option<String>,
}

/// The lifecycle subresource: a string on plans (`"active"`, §3.2), `{"name": …}` on
/// subscriptions (§3.4).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
enum LifecycleState {
    Text(String),
    Named { name: String },
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct ResourceMarketplace {
    #[serde(deserialize_with = "lenient")]
    resource: MarketplaceResourceView,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct MarketplaceResourceView {
    #[serde(deserialize_with = "lenient")]
    owner: OwnerView,
    #[serde(deserialize_with = "lenient")]
    metadata: CreatorView,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct OwnerView {
    #[serde(deserialize_with = "lenient")]
    user: IdView,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct IdView {
    #[serde(deserialize_with = "lenient")]
    id: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct CreatorView {
    #[serde(rename = "createUserId", deserialize_with = "lenient")]
    create_user_id: Option<String>,
}

/// A field read as `T` when it is one, and as `T::default()` (absent) when it is anything else.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).unwrap_or_default())
}

/// Attributes whose values are strings; any other value is left out.
fn lenient_attributes<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    })
}

fn text(field: &Option<String>) -> Option<&str> {
    field.as_deref().filter(|s| !s.is_empty())
}

impl Resource {
    /// Reads a resource as Amplify sent it; anything but an object reads as an empty resource.
    pub fn read(value: &serde_json::Value) -> Resource {
        Resource::deserialize(value).unwrap_or_default()
    }

    /// `metadata.id`.
    pub fn id(&self) -> Option<&str> {
        text(&self.metadata.id)
    }

    pub fn name(&self) -> Option<&str> {
        text(&self.name)
    }

    pub fn title(&self) -> Option<&str> {
        text(&self.title)
    }

    /// `metadata.selfLink`.
    pub fn self_link(&self) -> Option<&str> {
        text(&self.metadata.self_link)
    }

    /// `metadata.state` is `DELETING`: the resource is being deleted (§2.4).
    pub fn is_deleting(&self) -> bool {
        text(&self.metadata.state) == Some("DELETING")
    }

    /// The lifecycle state: a plan's `state`, a subscription's `state.name`.
    pub fn state(&self) -> Option<&str> {
        match &self.state {
            Some(LifecycleState::Text(s) | LifecycleState::Named { name: s }) => {
                Some(s.as_str()).filter(|s| !s.is_empty())
            }
            None => None,
        }
    }

    /// A non-empty attribute.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .get(name)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `metadata.scope.name`: a quota's plan.
    pub fn scope_name(&self) -> Option<&str> {
        text(&self.metadata.scope.name)
    }

    /// `metadata.sequenceID` of a WatchTopic event.
    pub fn sequence_id(&self) -> Option<i64> {
        self.metadata.sequence_id
    }

    /// `metadata.references`.
    pub fn references(&self) -> &[ReferenceView] {
        &self.metadata.references
    }

    /// `spec.product`.
    pub fn product(&self) -> Option<&str> {
        text(&self.spec.product)
    }

    /// A plan's `spec.type`.
    pub fn plan_type(&self) -> Option<&str> {
        text(&self.spec.plan_type)
    }

    /// A subscription's `spec.plan.name`.
    pub fn plan_name(&self) -> Option<&str> {
        text(&self.spec.plan.name)
    }

    /// A quota's `spec.pricing.type`.
    pub fn pricing_type(&self) -> Option<&str> {
        text(&self.spec.pricing.pricing_type)
    }

    /// The non-empty names a quota's `spec.resources` lists.
    pub fn resource_names(&self) -> impl Iterator<Item = &str> {
        self.spec.resources.iter().filter_map(|r| text(&r.name))
    }

    /// A subscription's subscriber (§3.4): the user of a private team that owns it, else the
    /// user who created it.
    pub fn subscriber_user_id(&self) -> Option<&str> {
        let resource = &self.marketplace.resource;
        text(&resource.owner.user.id).or_else(|| text(&resource.metadata.create_user_id))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Reference §3.4, the captured Subscription (ids shortened).
    fn subscription() -> serde_json::Value {
        json!({
          "group":"catalog","apiVersion":"v1","kind":"Subscription",
          "name":"finance-starter-free-2","title":"Finance Starter - Free",
          "metadata":{
            "id":"8a2e8d0f8ba74a18018bd978d36e638b",
            "references":[
              {"id":"8a2e8a0e","kind":"Product","name":"finance-starter","type":"hard","group":"catalog","selfLink":"/catalog/v1/products/finance-starter"},
              {"id":"8a2e952f","kind":"ProductPlan","name":"free","type":"hard","group":"catalog","selfLink":"/catalog/v1alpha1/productplans/free"}],
            "selfLink":"/catalog/v1alpha1/subscriptions/finance-starter-free-2"},
          "attributes":{"marketplaceId":"082a27eb","tenantId":"100000142","recurlySubscriptionId":"rs-1"},
          "spec":{"product":"finance-starter","plan":{"name":"free"},"data":{},"schema":{}},
          "marketplace":{"name":"082a27eb","resource":{
              "owner":{"id":"e33e2081","type":"team","organization":{"id":"650130132060094"}},
              "metadata":{"createUserId":"281768f2","modifyUserId":"281768f2"}}},
          "approval":{"state":"approved","reason":"aa","userId":"8c27302c","previousState":"pending"},
          "state":{"name":"active","reason":"r","when":{"timestamp":"2023-11-16T18:50:56.238+0000"}}
        })
    }

    #[test]
    fn a_subscription_reads_as_reference_3_4_shows_it() {
        let r = Resource::read(&subscription());
        assert_eq!(r.id(), Some("8a2e8d0f8ba74a18018bd978d36e638b"));
        assert_eq!(r.name(), Some("finance-starter-free-2"));
        assert_eq!(r.title(), Some("Finance Starter - Free"));
        assert_eq!(
            r.self_link(),
            Some("/catalog/v1alpha1/subscriptions/finance-starter-free-2")
        );
        assert_eq!(r.state(), Some("active"));
        assert!(!r.is_deleting());
        assert_eq!(r.product(), Some("finance-starter"));
        assert_eq!(r.plan_name(), Some("free"));
        assert_eq!(r.attribute("recurlySubscriptionId"), Some("rs-1"));
        assert_eq!(r.attribute("missing"), None);
        // A team subscription: the user who created it is the subscriber.
        assert_eq!(r.subscriber_user_id(), Some("281768f2"));
        assert_eq!(r.references().len(), 2);
        assert_eq!(r.references()[1].kind, "ProductPlan");
        assert_eq!(r.references()[1].id, "8a2e952f");
        // The full typed view reads the same document.
        let typed: Subscription = serde_json::from_value(subscription()).unwrap();
        assert_eq!(typed.spec.plan.map(|p| p.name).as_deref(), Some("free"));
    }

    #[test]
    fn a_private_teams_user_is_the_subscriber() {
        let mut raw = subscription();
        raw["marketplace"]["resource"]["owner"]["user"] = json!({"id": "u-private"});
        assert_eq!(Resource::read(&raw).subscriber_user_id(), Some("u-private"));
    }

    #[test]
    fn a_plan_reads_as_reference_3_2_shows_it() {
        let raw = json!({
          "group":"catalog","apiVersion":"v1","kind":"ProductPlan",
          "name":"demo-plan-paid","title":"Silver",
          "metadata":{"id":"8a2e89a1844076b20184436063bd2747",
                      "references":[{"kind":"Product","name":"customer-data"}],
                      "selfLink":"/catalog/v1/productplans/demo-plan-paid"},
          "attributes":{"recurlyPlanCode":"amplify-plan-8a2e89a1844076b20184436063bd2747"},
          "spec":{"product":"customer-data","type":"paid",
                  "billing":{"currency":"USD","price":10.99,"cycle":"recurring","interval":"monthly","setup":{"price":50}},
                  "subscription":{"interval":{"type":"months","length":1},"renewal":"automatic","approval":"manual"}},
          "state":"active",
          "status":{"level":"Success"}
        });
        let r = Resource::read(&raw);
        assert_eq!(r.id(), Some("8a2e89a1844076b20184436063bd2747"));
        assert_eq!(r.state(), Some("active"));
        assert_eq!(r.product(), Some("customer-data"));
        assert_eq!(r.plan_type(), Some("paid"));
        assert_eq!(
            r.attribute("recurlyPlanCode"),
            Some("amplify-plan-8a2e89a1844076b20184436063bd2747")
        );
        assert_eq!(r.references()[0].id, "", "a reference without an id");
        let typed: ProductPlan = serde_json::from_value(raw).unwrap();
        assert_eq!(typed.state.as_deref(), Some("active"));
    }

    #[test]
    fn a_quota_reads_as_reference_3_3_shows_it() {
        let raw = json!({
          "group":"catalog","apiVersion":"v1","kind":"Quota","name":"quota-0","title":"Quota 0",
          "metadata":{"id":"q-1","scope":{"id":"p-1","kind":"ProductPlan","name":"demo-plan-paid","selfLink":"/catalog/v1/productplans/demo-plan-paid"},
                      "references":[{"id":"ar-1","kind":"AssetResource","name":"pets","scopeName":"petstore"}]},
          "spec":{"unit":"transactions",
                  "pricing":{"type":"graduated","limit":{"type":"tiered","tiers":[
                      {"from":1,"to":500,"cost":2,"flatFee":0},{"from":501,"to":999999999,"cost":1,"flatFee":0}]}},
                  "resources":[{"kind":"AssetResource","name":"petstore/pets"}]}
        });
        let r = Resource::read(&raw);
        assert_eq!(r.id(), Some("q-1"));
        assert_eq!(r.scope_name(), Some("demo-plan-paid"));
        assert_eq!(r.pricing_type(), Some("graduated"));
        assert_eq!(r.resource_names().collect::<Vec<_>>(), ["petstore/pets"]);
        assert_eq!(r.references()[0].scope_name, "petstore");
        let typed: Quota = serde_json::from_value(raw).unwrap();
        assert!(matches!(
            typed.spec.pricing,
            Some(QuotaPricing::Graduated { .. })
        ));
    }

    #[test]
    fn a_resource_being_deleted_and_a_watch_topic_event_read_their_metadata() {
        // §2.4: `metadata.state` only while deleting; §4.5: thin events with a sequence id.
        let deleting = json!({"name": "s", "metadata": {"id": "x", "state": "DELETING"}});
        assert!(Resource::read(&deleting).is_deleting());
        let event = json!({"group": "catalog", "kind": "Subscription", "name": "s",
            "metadata": {"watchTopicSelfLink": "/management/v1/watchtopics/t", "watchTopicID": "w", "sequenceID": 42, "subresource": ""}});
        assert_eq!(Resource::read(&event).sequence_id(), Some(42));
    }

    #[test]
    fn odd_fields_read_as_absent_and_leave_the_rest() {
        let raw = json!({
            "name": "p", "title": 7,
            "metadata": {"id": "p-1", "selfLink": null, "scope": "not an object", "sequenceID": "12"},
            "attributes": {"recurlyPlanCode": 3, "ok": "yes", "empty": ""},
            "spec": {"product": ["x"], "plan": "free"},
            "state": {"reason": "no name"}
        });
        let r = Resource::read(&raw);
        assert_eq!((r.id(), r.name()), (Some("p-1"), Some("p")));
        assert_eq!(
            (r.title(), r.self_link(), r.scope_name()),
            (None, None, None)
        );
        assert_eq!(r.sequence_id(), None);
        assert_eq!(r.attribute("recurlyPlanCode"), None);
        assert_eq!(r.attribute("ok"), Some("yes"));
        assert_eq!(r.attribute("empty"), None);
        assert_eq!((r.product(), r.plan_name(), r.state()), (None, None, None));
        assert_eq!(Resource::read(&json!([1, 2])), Resource::default());
        assert_eq!(Resource::read(&json!(null)).id(), None);
    }
}
