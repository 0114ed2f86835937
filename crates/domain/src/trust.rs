//! What the bridge may act on (design.md §6, invariant 7): Amplify names fit to build a URL from,
//! the link the bridge keeps of each billing subscription it created, and whether one may end.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::amplify::{Owner, Subscription};
use crate::codes::{AccountKind, billing_account_codes, billing_plan_code};

/// Longest Amplify name accepted (Kubernetes-style names, which Amplify's follow [I]).
pub const MAX_NAME_LEN: usize = 253;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("'{0}' is not an Amplify name (letters, digits, '-', '_', '.'; no '..'; at most 253)")]
    BadName(String),
}

/// `name` when it is safe as one path segment of an Amplify URL: ASCII letters, digits, `-`, `_`
/// and `.`, not starting with `.` (so never `.` or `..`), no `..` anywhere, 1 to 253 long. Real
/// names (`finance-starter-free-2`, a GUID, `quota-0`) pass; `../../management` cannot.
pub fn amplify_name(name: &str) -> Result<&str, TrustError> {
    let fits = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fits {
        Ok(name)
    } else {
        Err(TrustError::BadName(name.chars().take(80).collect()))
    }
}

/// What the bridge records, in its own store, when it creates (or adopts from its own earlier
/// pass) a Recurly subscription for an Amplify subscription. Only a subscription with such a
/// link is ever ended, and only when Recurly still shows the same plan and account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionLink {
    /// The Amplify subscription's `metadata.id` (the key).
    pub amplify_id: String,
    /// Its name when linked, to read it again by name.
    pub amplify_name: String,
    pub recurly_subscription: String,
    /// `amplify-plan-{plan id}`.
    pub plan_code: String,
    /// One of the consumer's codes, `amplify-{user,team,org}-{id}`.
    pub account_code: String,
}

/// Why a billing subscription is not ended although its Amplify subscription ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotEnded {
    /// Recurly answered with another subscription than the link names.
    OtherSubscription,
    /// The Amplify subscription's attribute names another Recurly subscription than the link.
    AttributeDiffers,
    /// The Recurly subscription's plan is not the bridge's plan for the Amplify plan.
    PlanNotOurs(String),
    /// The Recurly subscription's account is not one of the consumer's codes.
    AccountNotOurs(String),
}

impl std::fmt::Display for NotEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            NotEnded::OtherSubscription => {
                f.write_str("Recurly answered with another subscription than the one linked")
            }
            NotEnded::AttributeDiffers => f.write_str(
                "the Amplify subscription names another Recurly subscription than the bridge linked",
            ),
            NotEnded::PlanNotOurs(code) => write!(
                f,
                "the Recurly subscription is on plan '{code}', not the plan the bridge created for it"
            ),
            NotEnded::AccountNotOurs(code) => write!(
                f,
                "the Recurly subscription is on account '{code}', not one of the subscriber's"
            ),
        }
    }
}

/// What Recurly says of the billing subscription a link names.
#[derive(Clone, Copy, Debug)]
pub struct BillingSide<'a> {
    pub id: &'a str,
    pub plan_code: Option<&'a str>,
    pub account_code: Option<&'a str>,
}

fn is_consumer_code(code: &str) -> bool {
    ["amplify-user-", "amplify-team-", "amplify-org-"]
        .iter()
        .any(|prefix| code.strip_prefix(prefix).is_some_and(|id| !id.is_empty()))
}

/// The consumer codes an owner can have, in any order (which one was chosen is the link's).
pub fn consumer_codes(owner: &Owner) -> Vec<String> {
    billing_account_codes(
        owner,
        &[AccountKind::User, AccountKind::Team, AccountKind::Org],
    )
}

/// Whether the bridge may end the billing subscription `billing` for `link`. `amplify` is the
/// Amplify subscription when it still exists (archived): then its link attribute must name the
/// same Recurly subscription, its plan's code must be the link's and the account one of its
/// owner's codes. A deleted one is judged by the link alone, which only the bridge writes.
pub fn may_end(
    link: &SubscriptionLink,
    amplify: Option<&Subscription>,
    billing: BillingSide<'_>,
) -> Result<(), NotEnded> {
    if billing.id != link.recurly_subscription {
        return Err(NotEnded::OtherSubscription);
    }
    let plan = billing.plan_code.unwrap_or_default();
    if plan != link.plan_code || !plan.starts_with("amplify-plan-") {
        return Err(NotEnded::PlanNotOurs(plan.to_owned()));
    }
    let account = billing.account_code.unwrap_or_default();
    if account != link.account_code || !is_consumer_code(account) {
        return Err(NotEnded::AccountNotOurs(account.to_owned()));
    }
    if let Some(subscription) = amplify {
        if subscription
            .attributes
            .get(crate::events::link_attributes::SUBSCRIPTION_ID)
            != Some(&link.recurly_subscription)
        {
            return Err(NotEnded::AttributeDiffers);
        }
        let plan_id = subscription
            .metadata
            .references
            .iter()
            .find(|r| r.kind == "ProductPlan")
            .and_then(|r| r.id.as_deref());
        if let Some(expected) = plan_id.and_then(|id| billing_plan_code(id).ok())
            && expected != plan
        {
            return Err(NotEnded::PlanNotOurs(plan.to_owned()));
        }
        let owner = subscription
            .marketplace
            .as_ref()
            .and_then(|m| m.resource.as_ref())
            .and_then(|r| r.owner.as_ref());
        if let Some(owner) = owner
            && !consumer_codes(owner).iter().any(|c| c == account)
        {
            return Err(NotEnded::AccountNotOurs(account.to_owned()));
        }
    }
    Ok(())
}

/// The link an approved subscription billed by an earlier release implies, for the one-time
/// adoption on the first reconcile pass of a store (those releases kept no link of their own):
/// its attributes name the Recurly subscription and one of its owner's account codes, and the
/// plan code is the bridge's for its plan. Ending it still needs Recurly to agree ([`may_end`]).
pub fn adopted_link(subscription: &Subscription) -> Option<SubscriptionLink> {
    use crate::events::link_attributes::{ACCOUNT_CODE, SUBSCRIPTION_ID};
    if subscription.approval.as_ref()?.state.as_deref()? != "approved" {
        return None;
    }
    let recurly = subscription.attributes.get(SUBSCRIPTION_ID)?;
    let account = subscription.attributes.get(ACCOUNT_CODE)?;
    let owner = subscription
        .marketplace
        .as_ref()?
        .resource
        .as_ref()?
        .owner
        .as_ref()?;
    let plan_id = subscription
        .metadata
        .references
        .iter()
        .find(|r| r.kind == "ProductPlan")?
        .id
        .as_deref()?;
    if recurly.is_empty() || !consumer_codes(owner).contains(account) {
        return None;
    }
    Some(SubscriptionLink {
        amplify_id: subscription.metadata.id.clone(),
        amplify_name: subscription.name.clone(),
        recurly_subscription: recurly.clone(),
        plan_code: billing_plan_code(plan_id).ok()?,
        account_code: account.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn real_names_pass_and_path_tricks_do_not() {
        for ok in [
            "finance-starter-free-2",
            "082a27eb-1c67-4b54-90e0-b1529c008af7",
            "quota-0",
            "v1.2_x",
        ] {
            assert_eq!(amplify_name(ok), Ok(ok));
        }
        for bad in [
            "",
            ".",
            "..",
            "a/../b",
            "../../management/v1/integrations",
            "a..b",
            ".hidden",
            "a/b",
            "a%2Fb",
            "a b",
            "a?b",
            "a#b",
            "a\\b",
            "é",
            &"a".repeat(254),
        ] {
            assert!(amplify_name(bad).is_err(), "{bad:?}");
        }
    }

    fn link() -> SubscriptionLink {
        SubscriptionLink {
            amplify_id: "s1".into(),
            amplify_name: "sub-1".into(),
            recurly_subscription: "r1".into(),
            plan_code: "amplify-plan-p1".into(),
            account_code: "amplify-team-t1".into(),
        }
    }

    fn billing<'a>(id: &'a str, plan: &'a str, account: &'a str) -> BillingSide<'a> {
        BillingSide {
            id,
            plan_code: Some(plan),
            account_code: Some(account),
        }
    }

    #[test]
    fn a_subscription_billed_by_an_earlier_release_is_adopted_only_whole() {
        let mut linked = archived("r1", "p1", "t1");
        linked.approval = Some(crate::amplify::Approval {
            state: Some("approved".into()),
        });
        linked
            .attributes
            .insert("recurlyAccountCode".into(), "amplify-team-t1".into());
        assert_eq!(adopted_link(&linked), Some(link()));
        let mut foreign_account = linked.clone();
        foreign_account
            .attributes
            .insert("recurlyAccountCode".into(), "acme".into());
        assert_eq!(adopted_link(&foreign_account), None);
        let mut pending = linked.clone();
        pending.approval = Some(crate::amplify::Approval {
            state: Some("pending".into()),
        });
        assert_eq!(adopted_link(&pending), None);
        let mut no_account = linked.clone();
        no_account.attributes.remove("recurlyAccountCode");
        assert_eq!(adopted_link(&no_account), None);
    }

    fn archived(attribute: &str, plan_id: &str, team: &str) -> Subscription {
        serde_json::from_value(json!({"name":"sub-1","metadata":{"id":"s1","references":[{"id":plan_id,"kind":"ProductPlan","name":"silver"}]},
            "attributes":{"recurlySubscriptionId":attribute},
            "marketplace":{"resource":{"owner":{"type":"team","id":team,"organization":{"id":"o1"},"user":{"id":"u1"}}}}}))
        .unwrap()
    }

    #[test]
    fn only_the_linked_subscription_on_the_bridges_plan_and_the_consumers_account_may_end() {
        let link = link();
        let ours = billing("r1", "amplify-plan-p1", "amplify-team-t1");
        assert_eq!(may_end(&link, None, ours), Ok(()));
        assert_eq!(
            may_end(&link, Some(&archived("r1", "p1", "t1")), ours),
            Ok(())
        );
        assert_eq!(
            may_end(
                &link,
                None,
                billing("r2", "amplify-plan-p1", "amplify-team-t1")
            ),
            Err(NotEnded::OtherSubscription)
        );
        assert!(matches!(
            may_end(&link, None, billing("r1", "gold", "amplify-team-t1")),
            Err(NotEnded::PlanNotOurs(_))
        ));
        assert!(matches!(
            may_end(
                &link,
                None,
                billing("r1", "amplify-plan-p1", "someone-else")
            ),
            Err(NotEnded::AccountNotOurs(_))
        ));
        assert_eq!(
            may_end(&link, Some(&archived("r9", "p1", "t1")), ours),
            Err(NotEnded::AttributeDiffers)
        );
        assert!(matches!(
            may_end(&link, Some(&archived("r1", "p2", "t1")), ours),
            Err(NotEnded::PlanNotOurs(_))
        ));
        assert!(matches!(
            may_end(&link, Some(&archived("r1", "p1", "t2")), ours),
            Err(NotEnded::AccountNotOurs(_))
        ));
        let mut foreign_link = link.clone();
        foreign_link.account_code = "acme".into();
        assert!(matches!(
            may_end(
                &foreign_link,
                None,
                billing("r1", "amplify-plan-p1", "acme")
            ),
            Err(NotEnded::AccountNotOurs(_))
        ));
    }
}
