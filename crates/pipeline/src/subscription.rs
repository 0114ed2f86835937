//! Subscription provisioning, level-triggered: a subscription awaiting approval for a linked plan
//! gets a Recurly subscription on the subscriber's existing billing account (every usage add-on
//! listed), the link written back, then approval in Amplify and a mail to the subscriber. No
//! account, or a refusal from Recurly: the subscription is rejected with a reason (or left
//! pending) and the provider is told. A subscription Amplify confirms ended or gone has its
//! billing canceled, only when the bridge made it (its own link in the store, Recurly's plan and
//! account as the bridge set them); nothing ends on an event's word.

use billing_bridge_config::{OnEnd, OnFailure};
use billing_bridge_domain::amplify::{Resource, Subscription};
use billing_bridge_domain::codes::{billing_account_codes, billing_plan_code, idempotency_key};
use billing_bridge_domain::events::{ResourceEvent, link_attributes};
use billing_bridge_domain::trust::{BillingSide, SubscriptionLink, consumer_codes, may_end};
use billing_bridge_notify::{Address, Mail, ProviderCard, Tone};
use serde_json::json;

use crate::Bridge;
use crate::metrics::{ProvisioningOutcome, ResourceLabel};
use crate::notices::{Notice, Notices};
use crate::provision::{ProvisionError, by_id, catalog_collection, catalog_path, first_time};
use tracing::Instrument;

/// Subscription states (`state.name`) that mean it has ended. Only `active` is verified; the
/// others are inferred from the UI's states (Amplify reference §3.4, open question 2).
const ENDED_STATES: [&str; 3] = ["archived", "cancelled", "canceled"];

/// Whether Amplify shows a subscription ended: an ended `state.name`, or `metadata.state`
/// `DELETING` (present only while a resource is being deleted, reference §2.4).
pub(crate) fn has_ended(subscription: &Resource) -> bool {
    subscription
        .state()
        .is_some_and(|s| ENDED_STATES.contains(&s))
        || subscription.is_deleting()
}
/// Recurly states in which a subscription can still be canceled.
const CANCELABLE: [&str; 3] = ["active", "future", "paused"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionOutcome {
    /// Billed in Recurly and approved in Amplify.
    Approved {
        account_code: String,
        subscription_id: String,
    },
    /// Rejected in Amplify with this reason (the provider was told).
    Rejected { reason: String },
    /// Could not be billed; left pending as configured (the provider was told).
    LeftPending { reason: String },
    /// Its plan is not billed by the bridge.
    NotOurs,
    /// Canceled (or terminated) in Recurly.
    Canceled { subscription_id: String },
    /// Nothing to do (not pending, already handled).
    Unchanged,
    /// An upstream was unavailable; the next pass will try again.
    Retry { reason: String },
    /// Something the bridge cannot fix by itself.
    Failed { reason: String },
}

impl SubscriptionOutcome {
    pub fn metric(&self) -> ProvisioningOutcome {
        match self {
            SubscriptionOutcome::Approved { .. } => ProvisioningOutcome::Approved,
            SubscriptionOutcome::Rejected { .. } | SubscriptionOutcome::LeftPending { .. } => {
                ProvisioningOutcome::Rejected
            }
            SubscriptionOutcome::NotOurs => ProvisioningOutcome::NotOurs,
            SubscriptionOutcome::Canceled { .. } => ProvisioningOutcome::Canceled,
            SubscriptionOutcome::Unchanged => ProvisioningOutcome::Unchanged,
            SubscriptionOutcome::Retry { .. } => ProvisioningOutcome::Retry,
            SubscriptionOutcome::Failed { .. } => ProvisioningOutcome::Failed,
        }
    }
}

pub async fn provision_subscription(
    bridge: &Bridge,
    notices: &Notices,
    event: &ResourceEvent,
) -> SubscriptionOutcome {
    let span = crate::trace::provisioning_span(event);
    let outcome = provision_subscription_traced(bridge, notices, event)
        .instrument(span.clone())
        .await;
    span.record("outcome", outcome.metric().as_str());
    outcome
}

async fn provision_subscription_traced(
    bridge: &Bridge,
    notices: &Notices,
    event: &ResourceEvent,
) -> SubscriptionOutcome {
    let started = std::time::Instant::now();
    let outcome = match pass(bridge, notices, event).await {
        Ok(outcome) => outcome,
        Err(e) if e.is_transient() => SubscriptionOutcome::Retry {
            reason: e.to_string(),
        },
        Err(e) => SubscriptionOutcome::Failed {
            reason: e.to_string(),
        },
    };
    match &outcome {
        SubscriptionOutcome::Retry { reason } | SubscriptionOutcome::Failed { reason } => {
            tracing::warn!(subscription = %event.name, %reason, outcome = ?outcome.metric(), "subscription not provisioned")
        }
        other => {
            tracing::info!(subscription = %event.name, outcome = ?other, "subscription provisioning pass")
        }
    }
    bridge
        .metrics
        .provisioned(ResourceLabel::Subscription, outcome.metric());
    bridge
        .metrics
        .provisioning_took(ResourceLabel::Subscription, started.elapsed());
    outcome
}

async fn pass(
    bridge: &Bridge,
    notices: &Notices,
    event: &ResourceEvent,
) -> Result<SubscriptionOutcome, ProvisionError> {
    // The event names the subscription; what it claims (deleted, a billing id, a URL) is only a
    // hint. The subscription is read by name, and one not found under it is confirmed gone by
    // its id (Amplify's list) before anything the bridge linked to it ends.
    let path = catalog_path(bridge, "subscriptions", &event.name)?;
    let current = bridge.amplify.get(&path).await?;
    let named = current
        .as_ref()
        .and_then(|raw| Resource::read(raw).id().map(str::to_owned));
    if named.as_deref() != Some(event.resource_id.as_str()) && !event.resource_id.is_empty() {
        let outcome = end_if_ended(bridge, notices, &event.resource_id).await?;
        if current.is_none() || matches!(outcome, SubscriptionOutcome::Canceled { .. }) {
            return Ok(outcome);
        }
    }
    let Some(raw) = current else {
        return Ok(SubscriptionOutcome::NotOurs);
    };
    let view = Resource::read(&raw);
    let subscription: Subscription = serde_json::from_value(raw).map_err(|e| {
        ProvisionError::Data(format!("subscription {} is not readable: {e}", event.name))
    })?;
    if has_ended(&view) {
        return match bridge
            .store
            .subscription_link(&subscription.metadata.id)
            .await
            .map_err(store_error)?
        {
            Some(link) => end(bridge, notices, &link, Some(&subscription)).await,
            None => Ok(SubscriptionOutcome::NotOurs),
        };
    }
    let linked = subscription
        .attributes
        .get(link_attributes::SUBSCRIPTION_ID)
        .cloned();
    if subscription
        .approval
        .as_ref()
        .and_then(|a| a.state.as_deref())
        != Some("pending")
    {
        return Ok(SubscriptionOutcome::Unchanged);
    }
    let Some(plan_name) = subscription.spec.plan.as_ref().map(|p| p.name.clone()) else {
        return Ok(SubscriptionOutcome::NotOurs);
    };
    let plan_link = catalog_path(bridge, "productplans", &plan_name)?;
    let Some(plan) = bridge.amplify.get(&plan_link).await? else {
        return Ok(SubscriptionOutcome::NotOurs);
    };
    let plan = Resource::read(&plan);
    let Some(plan_code) = plan
        .attribute(link_attributes::PLAN_CODE)
        .map(str::to_owned)
        // Only the bridge's own code for that plan: the attribute is a claim like any other.
        .filter(|code| billing_plan_code(plan.id().unwrap_or_default()).as_ref() == Ok(code))
    else {
        return Ok(SubscriptionOutcome::NotOurs);
    };
    let owner = subscription
        .marketplace
        .as_ref()
        .and_then(|m| m.resource.as_ref())
        .and_then(|r| r.owner.clone());
    let title = subscription.name.clone();
    let sub_title = view.title().unwrap_or(&title).to_owned();
    let plan_title = plan.title().unwrap_or(&plan_name).to_owned();

    // A billing subscription from an earlier pass whose approval did not happen: finish it, if
    // it is one the bridge would have made (its plan, one of the subscriber's accounts).
    if let Some(existing) = linked.as_deref()
        && let Some(found) = bridge.recurly.subscription(existing).await?
        && CANCELABLE.contains(&found.state.as_str())
        && found.plan.code.as_deref() == Some(plan_code.as_str())
        && let Some(account) = found.account.code.clone().filter(|code| {
            owner
                .as_ref()
                .is_some_and(|o| consumer_codes(o).contains(code))
        })
    {
        keep_link(bridge, &subscription, &found.id, &plan_code, &account).await?;
        return approve(
            bridge,
            notices,
            &view,
            &path,
            &account,
            &found.id,
            &sub_title,
            &plan_title,
        )
        .await;
    }

    let recurly_plan = bridge.recurly.plan(&plan_code).await?;
    let Some(recurly_plan) = recurly_plan.filter(|p| p.state == "active") else {
        let reason = format!("The plan {plan_title} is no longer sold. Choose another plan.");
        return refuse(
            bridge,
            notices,
            &path,
            &subscription,
            &sub_title,
            &reason,
            "the Recurly plan is missing or inactive",
        )
        .await;
    };
    let add_on_codes: Vec<String> = bridge
        .recurly
        .plan_add_ons(&plan_code)
        .await?
        .into_iter()
        .filter(|a| {
            a.add_on_type.as_deref() == Some("usage")
                && a.state.as_deref().is_none_or(|s| s == "active")
        })
        .map(|a| a.code)
        .collect();
    let currency = recurly_plan
        .currencies
        .first()
        .map(|c| c.currency.clone())
        .unwrap_or_else(|| "USD".into());

    let candidates = owner
        .as_ref()
        .map(|o| billing_account_codes(o, &bridge.config.provisioning.account_order))
        .unwrap_or_default();
    let mut account_code = None;
    for code in &candidates {
        if bridge
            .recurly
            .account(code)
            .await?
            .is_some_and(|a| a.state.as_deref().is_none_or(|s| s == "active"))
        {
            account_code = Some(code.clone());
            break;
        }
    }
    let Some(account_code) = account_code else {
        let reason = if candidates.is_empty() {
            "No billing account could be determined for this subscription. Contact the API provider.".to_owned()
        } else {
            format!(
                "No billing account exists for you yet. Ask the API provider to create one (account code {}), then subscribe again.",
                candidates.join(" or ")
            )
        };
        return refuse(
            bridge,
            notices,
            &path,
            &subscription,
            &sub_title,
            &reason,
            "no billing account",
        )
        .await;
    };

    let new = billing_bridge_billing::recurly::NewSubscription {
        plan_code: plan_code.clone(),
        account_code: account_code.clone(),
        currency,
        add_on_codes,
    };
    let key = idempotency_key("create-subscription", &[&subscription.metadata.id]);
    let created = match bridge.recurly.create_subscription(&new, &key).await {
        Ok(created) => Ok(created),
        Err(e)
            if e.error_type() == Some("validation")
                && e.to_string().contains("already have a subscription") =>
        {
            // Made by an earlier pass whose answer (and its idempotency record) was lost, unless
            // it is the billing of another Amplify subscription on the same account (two teams
            // sharing an organization's account): then Recurly refuses this one.
            let live = bridge
                .recurly
                .account_subscriptions(&account_code, "live")
                .await?;
            match live
                .into_iter()
                .find(|s| s.plan.code.as_deref() == Some(plan_code.as_str()))
            {
                Some(found) if !linked_elsewhere(bridge, &subscription.name, &found.id).await? => {
                    Ok(found)
                }
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let created = match created {
        Ok(created) => created,
        Err(e)
            if e.error_type().is_some()
                && !billing_bridge_upstream::Transient::is_transient(&e) =>
        {
            let message = match &e {
                billing_bridge_billing::recurly::RecurlyError::Api { message, .. } => {
                    message.clone()
                }
                other => other.to_string(),
            };
            let reason =
                format!("Billing could not be set up: {message} Contact the API provider.");
            return refuse(
                bridge,
                notices,
                &path,
                &subscription,
                &sub_title,
                &reason,
                &e.to_string(),
            )
            .await;
        }
        Err(e) => return Err(e.into()),
    };
    // The bridge's own record comes first: only what it holds is ever ended.
    keep_link(
        bridge,
        &subscription,
        &created.id,
        &plan_code,
        &account_code,
    )
    .await?;
    bridge
        .amplify
        .set_attributes(
            &path,
            &[
                (link_attributes::SUBSCRIPTION_ID, &created.id),
                (link_attributes::SUBSCRIPTION_UUID, &created.uuid),
                (link_attributes::ACCOUNT_CODE, &account_code),
            ],
        )
        .await?;
    approve(
        bridge,
        notices,
        &view,
        &path,
        &account_code,
        &created.id,
        &sub_title,
        &plan_title,
    )
    .await
}

fn store_error(e: billing_bridge_store::StoreError) -> ProvisionError {
    ProvisionError::Store(e)
}

/// Records in the store that the bridge made `recurly_id` for this subscription.
async fn keep_link(
    bridge: &Bridge,
    subscription: &Subscription,
    recurly_id: &str,
    plan_code: &str,
    account_code: &str,
) -> Result<(), ProvisionError> {
    bridge
        .store
        .link_subscription(&SubscriptionLink {
            amplify_id: subscription.metadata.id.clone(),
            amplify_name: subscription.name.clone(),
            recurly_subscription: recurly_id.to_owned(),
            plan_code: plan_code.to_owned(),
            account_code: account_code.to_owned(),
        })
        .await
        .map_err(store_error)
}

/// Whether an Amplify subscription other than `name` is linked to billing subscription `id`.
async fn linked_elsewhere(bridge: &Bridge, name: &str, id: &str) -> Result<bool, ProvisionError> {
    let linked: Vec<Resource> = bridge
        .amplify
        .list_as(
            &catalog_collection(bridge, "subscriptions"),
            Some(&format!(
                "attributes.{}=={id}",
                link_attributes::SUBSCRIPTION_ID
            )),
        )
        .await?;
    Ok(linked.iter().any(|s| s.name() != Some(name)))
}

#[allow(clippy::too_many_arguments)]
async fn approve(
    bridge: &Bridge,
    notices: &Notices,
    raw: &Resource,
    self_link: &str,
    account_code: &str,
    subscription_id: &str,
    sub_title: &str,
    plan_title: &str,
) -> Result<SubscriptionOutcome, ProvisionError> {
    bridge
        .amplify
        .put_subresource(
            self_link,
            "approval",
            json!({"state": "approved", "reason": format!("Billing set up in Recurly on account {account_code}")}),
        )
        .await?;
    let resource_id = raw.id().unwrap_or(subscription_id);
    if first_time(
        bridge,
        &format!("notice:subscription-approved:{resource_id}"),
    )
    .await
    {
        match approval_mail(bridge, raw, sub_title, plan_title, account_code).await {
            Ok(Some(mail)) => notices.notify(Notice::Subscriber(mail)).await,
            Ok(None) => {
                tracing::info!(subscription = %sub_title, "no subscriber address known; no mail sent")
            }
            Err(e) => {
                tracing::warn!(subscription = %sub_title, error = %e, "subscriber address lookup failed; no mail sent")
            }
        }
    }
    Ok(SubscriptionOutcome::Approved {
        account_code: account_code.to_owned(),
        subscription_id: subscription_id.to_owned(),
    })
}

/// `text` as HTML text: titles come from Amplify users and must not become markup in the mail.
fn html_text(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The subscriber: the user of a private team, else the user who created the subscription.
async fn approval_mail(
    bridge: &Bridge,
    raw: &Resource,
    sub_title: &str,
    plan_title: &str,
    account_code: &str,
) -> Result<Option<Mail>, ProvisionError> {
    let Some(user_id) = raw.subscriber_user_id() else {
        return Ok(None);
    };
    let Some(user) = bridge.amplify.platform_user(user_id).await? else {
        return Ok(None);
    };
    let mail_config = &bridge.config.notify.mail;
    let marketplace = &bridge.config.provisioning.marketplace_url;
    let greeting = user
        .first_name
        .clone()
        .map(|n| format!("Hello {n},"))
        .unwrap_or_else(|| "Hello,".into());
    let text_body = format!(
        "{greeting}\n\nYour subscription {sub_title} to the plan {plan_title} is approved, and billing is set up on account {account_code}.\nUsage is billed according to the plan.\n\nManage your subscription in the marketplace: {marketplace}\n"
    );
    let html = format!(
        "<p>{}</p><p>Your subscription <b>{}</b> to the plan <b>{}</b> is approved, and billing is set up on account {}. Usage is billed according to the plan.</p><p><a href=\"{}\">Manage your subscription in the marketplace</a></p>",
        html_text(&greeting),
        html_text(sub_title),
        html_text(plan_title),
        html_text(account_code),
        html_text(marketplace),
    );
    Ok(Some(Mail {
        from: Address {
            email: mail_config.from.clone(),
            name: mail_config.from_name.clone(),
        },
        reply_to: mail_config.reply_to.clone().map(Address::new),
        to: Address {
            email: user.email,
            name: match (user.first_name, user.last_name) {
                (Some(f), Some(l)) => Some(format!("{f} {l}")),
                (f, l) => f.or(l),
            },
        },
        subject: format!("Your subscription {sub_title} is approved"),
        text: text_body,
        html: Some(html),
        tags: [(
            "subscription".to_owned(),
            raw.id().unwrap_or_default().to_owned(),
        )]
        .into(),
    }))
}

/// Rejects (or leaves pending) with a reason the consumer can act on, and tells the provider once.
async fn refuse(
    bridge: &Bridge,
    notices: &Notices,
    self_link: &str,
    subscription: &Subscription,
    sub_title: &str,
    reason: &str,
    detail: &str,
) -> Result<SubscriptionOutcome, ProvisionError> {
    let leave_pending = bridge.config.provisioning.on_failure == OnFailure::LeavePending;
    if !leave_pending {
        bridge
            .amplify
            .put_subresource(
                self_link,
                "approval",
                json!({"state": "rejected", "reason": reason}),
            )
            .await?;
    }
    notices
        .notify_once(
            &format!("notice:subscription-refused:{}", subscription.metadata.id),
            Notice::Provider(ProviderCard {
                title: format!("Subscription not billed: {sub_title}"),
                tone: Tone::Attention,
                text: format!(
                    "{} {reason}",
                    if leave_pending {
                        "The subscription was left pending."
                    } else {
                        "The subscription was rejected."
                    }
                ),
                facts: vec![
                    ("Subscription".into(), subscription.name.clone()),
                    ("Cause".into(), detail.to_owned()),
                ],
                link: None,
            }),
        )
        .await;
    let reason = reason.to_owned();
    Ok(if leave_pending {
        SubscriptionOutcome::LeftPending { reason }
    } else {
        SubscriptionOutcome::Rejected { reason }
    })
}

/// The Amplify subscription `id` an event named, when its name no longer leads to it: its
/// billing ends only if the bridge linked it and Amplify's list confirms it gone or ended.
async fn end_if_ended(
    bridge: &Bridge,
    notices: &Notices,
    id: &str,
) -> Result<SubscriptionOutcome, ProvisionError> {
    // The store first: an id the bridge never linked costs no Amplify call.
    let Some(link) = bridge
        .store
        .subscription_link(id)
        .await
        .map_err(store_error)?
    else {
        return Ok(SubscriptionOutcome::NotOurs);
    };
    match by_id(bridge, "subscriptions", id).await? {
        None => end(bridge, notices, &link, None).await,
        Some(raw) if has_ended(&Resource::read(&raw)) => {
            let subscription: Subscription = serde_json::from_value(raw).map_err(|e| {
                ProvisionError::Data(format!("subscription {id} is not readable: {e}"))
            })?;
            end(bridge, notices, &link, Some(&subscription)).await
        }
        // Alive: nothing ends on an event's word.
        Some(_) => Ok(SubscriptionOutcome::Unchanged),
    }
}

/// Ends the billing subscription the bridge linked to an Amplify subscription that Amplify
/// confirmed gone (`amplify` is `None`) or ended, once Recurly shows it is the one the bridge
/// made; then forgets the link, so no later pass ends (or announces) it again.
async fn end(
    bridge: &Bridge,
    notices: &Notices,
    link: &SubscriptionLink,
    amplify: Option<&Subscription>,
) -> Result<SubscriptionOutcome, ProvisionError> {
    let id = link.recurly_subscription.as_str();
    let Some(found) = bridge.recurly.subscription(id).await? else {
        bridge
            .store
            .unlink_subscription(&link.amplify_id)
            .await
            .map_err(store_error)?;
        return Ok(SubscriptionOutcome::Unchanged);
    };
    let billing = BillingSide {
        id: &found.id,
        plan_code: found.plan.code.as_deref(),
        account_code: found.account.code.as_deref(),
    };
    if let Err(why) = may_end(link, amplify, billing) {
        tracing::warn!(subscription = %link.amplify_name, recurly_subscription = %id, reason = %why, "not ending a billing subscription the bridge did not make");
        notices.notify_once(&format!("notice:subscription-not-ended:{}", link.amplify_id), Notice::Provider(ProviderCard {
                title: format!("Subscription ended, billing left alone: {}", link.amplify_name),
                tone: Tone::Attention,
                text: format!(
                    "The Amplify subscription ended, but its Recurly subscription was not ended: {why}. Check it in Recurly."
                ),
                facts: vec![("Recurly subscription".into(), id.to_owned())],
                link: None,
            })).await;
        bridge
            .store
            .unlink_subscription(&link.amplify_id)
            .await
            .map_err(store_error)?;
        return Ok(SubscriptionOutcome::NotOurs);
    }
    let live = CANCELABLE.contains(&found.state.as_str());
    if live {
        let result = match bridge.config.provisioning.on_end {
            OnEnd::Cancel => {
                bridge
                    .recurly
                    .cancel_subscription(id, false, &idempotency_key("cancel-subscription", &[id]))
                    .await
            }
            OnEnd::Terminate => {
                bridge
                    .recurly
                    .terminate_subscription(id, &idempotency_key("terminate-subscription", &[id]))
                    .await
            }
        };
        match result {
            Ok(_) => {}
            // Canceled meanwhile: the goal is reached.
            Err(e) if e.error_type() == Some("validation") => {}
            Err(e) => return Err(e.into()),
        }
        // One card per subscription, however many passes (or instances) get here.
        notices.notify_once(&format!("notice:subscription-ended:{}", link.amplify_id), Notice::Provider(ProviderCard {
                title: format!("Subscription ended: {}", link.amplify_name),
                tone: Tone::Info,
                text: match bridge.config.provisioning.on_end {
                    OnEnd::Cancel => "The Amplify subscription ended; its Recurly subscription is canceled at the end of its term.".into(),
                    OnEnd::Terminate => "The Amplify subscription ended; its Recurly subscription was terminated.".into(),
                },
                facts: vec![("Recurly subscription".into(), id.to_owned())],
                link: None,
            })).await;
    }
    bridge
        .store
        .unlink_subscription(&link.amplify_id)
        .await
        .map_err(store_error)?;
    Ok(if live {
        SubscriptionOutcome::Canceled {
            subscription_id: id.to_owned(),
        }
    } else {
        SubscriptionOutcome::Unchanged
    })
}

#[cfg(test)]
mod tests {
    use super::html_text;

    #[test]
    fn html_text_escapes_markup_and_keeps_the_rest() {
        assert_eq!(
            html_text(r#"<a href="x">O'Neil</a> & co"#),
            "&lt;a href=&quot;x&quot;&gt;O&#39;Neil&lt;/a&gt; &amp; co"
        );
        assert_eq!(html_text("Gold plan"), "Gold plan");
    }
}
