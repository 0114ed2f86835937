//! What Recurly knows flowing back to Amplify: a linked subscription whose billing ended outside
//! the bridge (dunning, a cancel in Recurly's console, a closed account) is told to the provider
//! once and, with `[provisioning] on_billing_end = "archive"`, archived in Amplify through a
//! `SubscriptionJob`; a past-due invoice is told once. Recurly notifications and the periodic
//! pass both land here, and both re-read Recurly first: a notification is only a hint.

use billing_bridge_amplify::AmplifyError;
use billing_bridge_billing::recurly::{Invoice, RecurlyError, Subscription};
use billing_bridge_config::OnBillingEnd;
use billing_bridge_domain::amplify::Resource;
use billing_bridge_domain::events::link_attributes;
use billing_bridge_notify::{ProviderCard, Tone};
use serde_json::json;

use crate::Bridge;
use crate::metrics::BillingEndAction;
use crate::notices::{Notice, Notices};
use crate::provision::first_time;

/// Amplify subscription states that mean it has ended already (then the bridge, or the
/// consumer, ended it: nothing to tell). Only `active` is verified (Amplify reference §3.4).
const AMPLIFY_ENDED: [&str; 3] = ["archived", "cancelled", "canceled"];
/// The `SubscriptionJob` action that archives a subscription (Amplify reference §3.4: the
/// field names are verified, the `type` value is inferred).
pub const ARCHIVE_ACTION: &str = "archive";

#[derive(Debug, thiserror::Error)]
pub enum BillingStateError {
    #[error(transparent)]
    Recurly(#[from] RecurlyError),
    #[error(transparent)]
    Amplify(#[from] AmplifyError),
}

/// What a notification names (`object_type` and `id`), re-read before anything is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    Subscription(String),
    Account(String),
    Invoice(String),
    /// Nothing the bridge acts on (usage, plans, ...).
    Other,
}

impl Named {
    pub fn of(object_type: &str, id: &str) -> Named {
        if id.is_empty() {
            return Named::Other;
        }
        match object_type {
            "subscription" => Named::Subscription(id.to_owned()),
            "account" => Named::Account(id.to_owned()),
            "invoice" | "charge_invoice" => Named::Invoice(id.to_owned()),
            _ => Named::Other,
        }
    }
}

/// What was done, for the caller's log and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Acted {
    pub ended: Vec<String>,
    pub archived: Vec<String>,
    pub past_due: Vec<String>,
}

/// The Amplify subscription linked to a Recurly subscription, as far as this module reads it.
struct Linked {
    name: String,
    title: String,
    state: Option<String>,
}

async fn linked(bridge: &Bridge, recurly_id: &str) -> Result<Option<Linked>, AmplifyError> {
    let version = &bridge.config.amplify.api_version;
    let found: Vec<Resource> = bridge
        .amplify
        .list_as(
            &format!("/catalog/{version}/subscriptions"),
            Some(&format!(
                "attributes.{}=={recurly_id}",
                link_attributes::SUBSCRIPTION_ID
            )),
        )
        .await?;
    Ok(found
        .into_iter()
        .find(|s| s.attribute(link_attributes::SUBSCRIPTION_ID) == Some(recurly_id))
        .map(|s| Linked {
            name: s.name().unwrap_or_default().to_owned(),
            title: s.title().or(s.name()).unwrap_or_default().to_owned(),
            state: s.state().map(str::to_owned),
        }))
}

/// Acts on what a notification names, after reading it from Recurly.
pub async fn act_on(
    bridge: &Bridge,
    notices: &Notices,
    named: &Named,
) -> Result<Acted, BillingStateError> {
    let mut acted = Acted::default();
    match named {
        Named::Subscription(id) => {
            if let Some(sub) = bridge.recurly.subscription(id).await? {
                subscription_state(bridge, notices, &sub, None, &mut acted).await?;
            }
        }
        Named::Account(id) => {
            let Some(account) = bridge.recurly.account_by_id(id).await? else {
                return Ok(acted);
            };
            let closed = account.state.as_deref() == Some("closed")
                || account.state.as_deref() == Some("inactive");
            for sub in bridge
                .recurly
                .account_subscriptions_by_id(&account.id)
                .await?
            {
                let reason = closed.then_some("its Recurly billing account was closed");
                subscription_state(bridge, notices, &sub, reason, &mut acted).await?;
            }
        }
        Named::Invoice(id) => {
            if let Some(invoice) = bridge.recurly.invoice(id).await? {
                invoice_state(bridge, notices, &invoice, &mut acted).await?;
            }
        }
        Named::Other => {}
    }
    Ok(acted)
}

/// One pass over every linked subscription: what notifications should have said, had they all
/// been delivered.
pub async fn check_linked(bridge: &Bridge, notices: &Notices) -> Result<Acted, BillingStateError> {
    let version = &bridge.config.amplify.api_version;
    let linked: Vec<Resource> = bridge
        .amplify
        .list_as(
            &format!("/catalog/{version}/subscriptions"),
            Some(&format!(
                "attributes.{}==*",
                link_attributes::SUBSCRIPTION_ID
            )),
        )
        .await?;
    let mut acted = Acted::default();
    for amplify in linked {
        let Some(id) = amplify.attribute(link_attributes::SUBSCRIPTION_ID) else {
            continue;
        };
        if amplify.state().is_some_and(|s| AMPLIFY_ENDED.contains(&s)) {
            continue;
        }
        let Some(sub) = bridge.recurly.subscription(id).await? else {
            continue;
        };
        subscription_state(bridge, notices, &sub, None, &mut acted).await?;
        for invoice in bridge.recurly.subscription_invoices(id, "past_due").await? {
            invoice_state(bridge, notices, &invoice, &mut acted).await?;
        }
    }
    bridge.metrics.billing_checks.inc();
    Ok(acted)
}

fn ended(state: &str) -> bool {
    matches!(state, "expired" | "failed" | "canceled")
}

/// Why billing ended, in words a consumer can act on.
async fn why(bridge: &Bridge, sub: &Subscription, closed: Option<&str>) -> String {
    if let Some(closed) = closed {
        return format!(
            "Billing for this subscription ended because {closed}. Contact the API provider to open a billing account, then subscribe again."
        );
    }
    let unpaid = bridge
        .recurly
        .subscription_invoices(&sub.id, "failed")
        .await
        .map(|i| !i.is_empty())
        .unwrap_or(false);
    match sub.state.as_str() {
        "canceled" => format!(
            "The subscription was canceled in billing and ends {}. Subscribe again to keep using the API after that.",
            sub.expires_at
                .as_deref()
                .or(sub.current_period_ends_at.as_deref())
                .map(|at| format!("on {at}"))
                .unwrap_or_else(|| "at the end of its period".into())
        ),
        _ if unpaid => "Billing for this subscription ended because its invoice could not be paid. Update the payment details of your billing account and subscribe again.".into(),
        _ => "Billing for this subscription ended. Contact the API provider, or subscribe again.".into(),
    }
}

async fn subscription_state(
    bridge: &Bridge,
    notices: &Notices,
    sub: &Subscription,
    closed: Option<&str>,
    acted: &mut Acted,
) -> Result<(), BillingStateError> {
    bridge.periods.keep(sub, bridge.clock.now_ms());
    if !ended(&sub.state) {
        return Ok(());
    }
    // Only subscriptions the bridge linked, and only while Amplify still has them running.
    let Some(amplify) = linked(bridge, &sub.id).await? else {
        return Ok(());
    };
    if amplify
        .state
        .as_deref()
        .is_some_and(|s| AMPLIFY_ENDED.contains(&s))
    {
        return Ok(());
    }
    let reason = why(bridge, sub, closed).await;
    // A canceled subscription still runs to the end of its period: archived once it expired.
    let archive = bridge.config.provisioning.on_billing_end == OnBillingEnd::Archive
        && sub.state != "canceled";
    if archive {
        archive_in_amplify(bridge, &amplify.name, &sub.id, &reason).await?;
        acted.archived.push(sub.id.clone());
    }
    if first_time(bridge, &format!("billing-ended:{}", sub.id)).await {
        bridge.metrics.billing_end(if archive {
            BillingEndAction::Archived
        } else {
            BillingEndAction::Notified
        });
        notices.notify(Notice::Provider(ProviderCard {
            title: format!("Billing ended: {}", amplify.name),
            tone: Tone::Attention,
            text: format!(
                "The Recurly subscription is {} and this was not done by the bridge. {}{}",
                sub.state,
                if archive {
                    "The Amplify subscription was archived with this reason for the consumer: "
                } else if bridge.config.provisioning.on_billing_end == OnBillingEnd::Archive {
                    "The Amplify subscription is archived when billing expires. Reason given to the consumer: "
                } else {
                    "The Amplify subscription is still active: archive it if the consumer should stop calling the API. Suggested reason: "
                },
                reason
            ),
            facts: vec![
                (
                    "Amplify subscription".into(),
                    format!("{} ({})", amplify.title, amplify.name),
                ),
                ("Recurly subscription".into(), sub.id.clone()),
                ("Recurly state".into(), sub.state.clone()),
            ],
            link: None,
        })).await;
        acted.ended.push(sub.id.clone());
    }
    Ok(())
}

/// Archives an Amplify subscription with a `SubscriptionJob` (Amplify reference §3.4). The job
/// is named after the Recurly subscription, so doing it again finds it already there.
async fn archive_in_amplify(
    bridge: &Bridge,
    name: &str,
    recurly_id: &str,
    reason: &str,
) -> Result<(), AmplifyError> {
    let version = &bridge.config.amplify.api_version;
    let job = json!({
        "group": "catalog", "apiVersion": version, "kind": "SubscriptionJob",
        "name": format!("billing-ended-{}", recurly_id.to_ascii_lowercase()),
        "title": "Billing ended",
        "metadata": {"scope": {"kind": "Subscription", "name": name}},
        "spec": {"action": {"type": ARCHIVE_ACTION, "reason": reason}},
    });
    match bridge
        .amplify
        .create(
            &format!("/catalog/{version}/subscriptions/{name}/subscriptionjobs"),
            &job,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(AmplifyError::Refused { status: 409, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn invoice_state(
    bridge: &Bridge,
    notices: &Notices,
    invoice: &Invoice,
    acted: &mut Acted,
) -> Result<(), BillingStateError> {
    if invoice.state != "past_due" {
        return Ok(());
    }
    let mut names = Vec::new();
    for id in &invoice.subscription_ids {
        if let Some(amplify) = linked(bridge, id).await? {
            names.push((id.clone(), amplify));
        }
    }
    let Some((recurly_id, amplify)) = names.into_iter().next() else {
        return Ok(());
    };
    if !first_time(bridge, &format!("past-due:{}", invoice.id)).await {
        return Ok(());
    }
    bridge.metrics.past_due_invoices.inc();
    let amount = match (invoice.balance.or(invoice.total), &invoice.currency) {
        (Some(amount), Some(currency)) => format!("{amount:.2} {currency}"),
        (Some(amount), None) => format!("{amount:.2}"),
        _ => "unknown".into(),
    };
    notices.notify(Notice::Provider(ProviderCard {
        title: format!("Invoice past due: {}", amplify.name),
        tone: Tone::Attention,
        text: "Recurly could not collect this invoice and is retrying (dunning). If every attempt fails, the Recurly subscription expires and billing for the API ends.".into(),
        facts: vec![
            (
                "Amplify subscription".into(),
                format!("{} ({})", amplify.title, amplify.name),
            ),
            ("Recurly subscription".into(), recurly_id),
            (
                "Invoice".into(),
                invoice.number.clone().unwrap_or_else(|| invoice.id.clone()),
            ),
            ("Balance".into(), amount),
        ],
        link: None,
    })).await;
    acted.past_due.push(invoice.id.clone());
    Ok(())
}

/// Runs [`check_linked`] every `[provisioning] billing_check_every` (not at all when 0).
pub struct BillingWatcher {
    pub bridge: std::sync::Arc<Bridge>,
    pub notices: crate::Notices,
}

impl actix::Actor for BillingWatcher {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        use actix::{AsyncContext, WrapFuture};
        let every = self.bridge.config.provisioning.billing_check_every;
        if every.is_zero() {
            return;
        }
        ctx.run_interval(every, |act, ctx| {
            let bridge = act.bridge.clone();
            let notices = act.notices.clone();
            // One pass at a time: a slow pass delays the next tick's instead of overlapping it.
            ctx.wait(
                async move {
                    match check_linked(&bridge, &notices).await {
                        Ok(acted) if acted != Acted::default() => {
                            tracing::info!(?acted, "billing check acted on what Recurly knows")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "billing check failed; the next one retries")
                        }
                    }
                }
                .into_actor(act),
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_what_the_bridge_reads_again() {
        assert_eq!(
            Named::of("subscription", "s1"),
            Named::Subscription("s1".into())
        );
        assert_eq!(Named::of("account", "a1"), Named::Account("a1".into()));
        assert_eq!(Named::of("invoice", "i1"), Named::Invoice("i1".into()));
        assert_eq!(Named::of("usage", "u1"), Named::Other);
        assert_eq!(Named::of("subscription", ""), Named::Other);
    }
}
