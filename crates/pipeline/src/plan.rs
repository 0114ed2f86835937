//! Plan provisioning, level-triggered: read the plan as it is now and make Recurly match it.
//! An active eligible plan gets a Recurly plan with one usage add-on per priced quota (created
//! whole, in one call; quotas added later become add-ons); a plan Amplify confirms deprecated,
//! archived or gone is taken off sale. The link is written back onto the Amplify plan.

use billing_bridge_amplify::AmplifyError;
use billing_bridge_domain::amplify::{Product, ProductPlan, Quota, Resource};
use billing_bridge_domain::codes::{billing_plan_code, idempotency_key};
use billing_bridge_domain::events::{ResourceEvent, link_attributes};
use billing_bridge_domain::plan::{
    BillingPlan, Ineligible, PlanAction, billing_plan, plan_action, plan_eligibility,
};
use billing_bridge_notify::{ProviderCard, Tone};

use crate::Bridge;
use crate::metrics::{ProvisioningOutcome, ResourceLabel};
use crate::notices::{Notice, Notices};
use crate::provision::{ProvisionError, by_id, catalog_path};
use tracing::Instrument;

/// What a pass over a plan did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanOutcome {
    /// The Recurly plan now matches: `created` on first provisioning, `add_ons_added` later.
    Provisioned {
        code: String,
        created: bool,
        add_ons_added: usize,
    },
    /// Already matched; nothing to do.
    Unchanged { code: String },
    /// Not a plan the bridge bills (not Recurly, not paid, ...).
    Ineligible(Ineligible),
    /// Draft: nothing yet.
    Waiting,
    /// Taken off sale in Recurly (or already off sale, or never billed).
    Deactivated { code: String },
    /// Cannot be billed as it is; the provider was told why.
    Failed { reason: String },
    /// An upstream was unavailable; the next pass will try again.
    Retry { reason: String },
}

impl PlanOutcome {
    pub fn metric(&self) -> ProvisioningOutcome {
        match self {
            PlanOutcome::Provisioned { .. } => ProvisioningOutcome::Provisioned,
            PlanOutcome::Unchanged { .. } => ProvisioningOutcome::Unchanged,
            PlanOutcome::Ineligible(_) => ProvisioningOutcome::Ineligible,
            PlanOutcome::Waiting => ProvisioningOutcome::Waiting,
            PlanOutcome::Deactivated { .. } => ProvisioningOutcome::Deactivated,
            PlanOutcome::Failed { .. } => ProvisioningOutcome::Failed,
            PlanOutcome::Retry { .. } => ProvisioningOutcome::Retry,
        }
    }
}

fn plan_title(plan: &ProductPlan) -> String {
    plan.title.clone().unwrap_or_else(|| plan.name.clone())
}

fn failure_card(title: &str, plan_name: &str, reason: &str) -> ProviderCard {
    ProviderCard {
        title: format!("Plan not billed: {title}"),
        tone: Tone::Attention,
        text: format!(
            "The Amplify plan could not be set up in Recurly, so its subscribers cannot be billed. {reason}"
        ),
        facts: vec![("Amplify plan".into(), plan_name.to_owned())],
        link: None,
    }
}

/// Runs one pass and records its outcome; never fails: failures become outcomes.
pub async fn provision_plan(
    bridge: &Bridge,
    notices: &Notices,
    event: &ResourceEvent,
) -> PlanOutcome {
    let span = crate::trace::provisioning_span(event);
    let outcome = provision_plan_traced(bridge, notices, event)
        .instrument(span.clone())
        .await;
    span.record("outcome", outcome.metric().as_str());
    outcome
}

async fn provision_plan_traced(
    bridge: &Bridge,
    notices: &Notices,
    event: &ResourceEvent,
) -> PlanOutcome {
    let started = std::time::Instant::now();
    let outcome = match pass(bridge, notices, event).await {
        Ok(outcome) => outcome,
        Err(e) if e.is_transient() => PlanOutcome::Retry {
            reason: e.to_string(),
        },
        Err(e) => {
            let reason = e.to_string();
            notices
                .notify_once(
                    &format!("notice:plan-error:{}:{reason}", event.resource_id),
                    Notice::Provider(failure_card(&event.name, &event.name, &reason)),
                )
                .await;
            PlanOutcome::Failed { reason }
        }
    };
    match &outcome {
        PlanOutcome::Ineligible(why) => {
            tracing::debug!(plan = %event.name, reason = %why, "plan not billed")
        }
        PlanOutcome::Retry { reason } => {
            tracing::warn!(plan = %event.name, %reason, "plan provisioning will be retried")
        }
        PlanOutcome::Failed { reason } => {
            tracing::warn!(plan = %event.name, %reason, "plan cannot be provisioned")
        }
        other => tracing::info!(plan = %event.name, outcome = ?other, "plan provisioning pass"),
    }
    bridge
        .metrics
        .provisioned(ResourceLabel::Plan, outcome.metric());
    bridge
        .metrics
        .provisioning_took(ResourceLabel::Plan, started.elapsed());
    outcome
}

async fn pass(
    bridge: &Bridge,
    notices: &Notices,
    event: &ResourceEvent,
) -> Result<PlanOutcome, ProvisionError> {
    // The event names the plan; what it claims (deleted, its state) is only a hint. The plan is
    // read by name, and a plan not found is confirmed gone by its id before Recurly is touched.
    let path = catalog_path(bridge, "productplans", &event.name)?;
    let current = bridge.amplify.get(&path).await?;
    let named = current
        .as_ref()
        .and_then(|raw| Resource::read(raw).id().map(str::to_owned));
    if named.as_deref() != Some(event.resource_id.as_str()) && !event.resource_id.is_empty() {
        // The event's plan is not (or no longer) the one under that name.
        if let outcome @ PlanOutcome::Deactivated { .. } =
            ended_elsewhere(bridge, notices, &event.resource_id, &event.name).await?
        {
            return Ok(outcome);
        }
    }
    let Some(raw) = current else {
        return Ok(PlanOutcome::Waiting);
    };
    // Being deleted (`metadata.state`, reference §2.4): Amplify itself says it is going.
    let deleting = Resource::read(&raw).is_deleting();
    let plan: ProductPlan = serde_json::from_value(raw)
        .map_err(|e| ProvisionError::Data(format!("plan {} is not readable: {e}", event.name)))?;
    if deleting {
        return deactivate(bridge, notices, &plan.metadata.id, &plan_title(&plan)).await;
    }
    match plan_action(plan.state.as_deref(), false) {
        PlanAction::Wait => Ok(PlanOutcome::Waiting),
        // Amplify itself says the plan is deprecated or archived.
        PlanAction::Deactivate => {
            deactivate(bridge, notices, &plan.metadata.id, &plan_title(&plan)).await
        }
        PlanAction::Provision => match provision(bridge, notices, &plan, &path).await {
            // Deleted while this pass read it (its quotas go first, each with an event): a
            // plan confirmed gone is taken off sale, not reported as failed.
            Err(ProvisionError::Amplify(AmplifyError::NotFound { .. }))
                if by_id(bridge, "productplans", &plan.metadata.id)
                    .await?
                    .is_none() =>
            {
                deactivate(bridge, notices, &plan.metadata.id, &plan_title(&plan)).await
            }
            other => other,
        },
    }
}

/// The plan `id` an event named, when its name no longer leads to it: taken off sale only once
/// Amplify's list confirms it is gone, deprecated or archived.
async fn ended_elsewhere(
    bridge: &Bridge,
    notices: &Notices,
    id: &str,
    name: &str,
) -> Result<PlanOutcome, ProvisionError> {
    match by_id(bridge, "productplans", id).await? {
        None => deactivate(bridge, notices, id, name).await,
        Some(raw) if plan_action(Resource::read(&raw).state(), false) == PlanAction::Deactivate => {
            let title = Resource::read(&raw).title().unwrap_or(name).to_owned();
            deactivate(bridge, notices, id, &title).await
        }
        Some(_) => Ok(PlanOutcome::Waiting),
    }
}

async fn provision(
    bridge: &Bridge,
    notices: &Notices,
    plan: &ProductPlan,
    self_link: &str,
) -> Result<PlanOutcome, ProvisionError> {
    let product_link = catalog_path(bridge, "products", &plan.spec.product)?;
    let Some(product) = bridge.amplify.get(&product_link).await? else {
        return Err(ProvisionError::Data(format!(
            "the plan's product '{}' does not exist",
            plan.spec.product
        )));
    };
    let product: Product = serde_json::from_value(product)
        .map_err(|e| ProvisionError::Data(format!("product is not readable: {e}")))?;
    let quotas: Vec<Quota> = bridge
        .amplify
        .list(&format!("{self_link}/quotas"), None)
        .await?
        .into_iter()
        .filter_map(|q| serde_json::from_value(q).ok())
        .collect();
    if let Err(why) = plan_eligibility(&product, plan, &quotas) {
        return Ok(PlanOutcome::Ineligible(why));
    }
    let title = plan_title(plan);
    let mapped = match billing_plan(plan, &quotas) {
        Ok(mapped) => mapped,
        Err(e) => {
            let reason = e.to_string();
            let version = plan.metadata.resource_version.as_deref().unwrap_or("");
            notices
                .notify_once(
                    &format!("notice:plan-failed:{}:{version}", plan.metadata.id),
                    Notice::Provider(failure_card(&title, &plan.name, &reason)),
                )
                .await;
            return Ok(PlanOutcome::Failed { reason });
        }
    };
    ensure_measured_units(bridge, &mapped).await?;
    let (created, add_ons_added) = match bridge.recurly.plan(&mapped.code).await? {
        None => match bridge
            .recurly
            .create_plan(
                &mapped,
                &idempotency_key("create-plan", &[&plan.metadata.id]),
            )
            .await
        {
            Ok(_) => (true, 0),
            // Created by an earlier pass whose answer was lost, or by another instance.
            Err(e) if e.is_code_taken() => (false, ensure_add_ons(bridge, &mapped).await?),
            Err(e) => return Err(e.into()),
        },
        Some(existing) if existing.state != "active" => {
            let reason = format!(
                "Recurly plan {} was deleted in Recurly and cannot be reactivated; archive this Amplify plan and create a new one",
                mapped.code
            );
            notices
                .notify_once(
                    &format!("notice:plan-inactive:{}", plan.metadata.id),
                    Notice::Provider(failure_card(&title, &plan.name, &reason)),
                )
                .await;
            return Ok(PlanOutcome::Failed { reason });
        }
        Some(_) => (false, ensure_add_ons(bridge, &mapped).await?),
    };
    let recurly_plan = bridge.recurly.plan(&mapped.code).await?.ok_or_else(|| {
        ProvisionError::Data(format!(
            "Recurly plan {} vanished after creation",
            mapped.code
        ))
    })?;
    bridge
        .amplify
        .set_attributes(
            self_link,
            &[
                (link_attributes::PLAN_CODE, &mapped.code),
                (link_attributes::PLAN_ID, &recurly_plan.id),
            ],
        )
        .await?;
    if !created && add_ons_added == 0 {
        return Ok(PlanOutcome::Unchanged { code: mapped.code });
    }
    let text = if created {
        format!(
            "Subscribers to {title} are now billed in Recurly, with {} usage add-on(s).",
            mapped.add_ons.len()
        )
    } else {
        format!("{add_ons_added} new quota(s) of {title} are now billed in Recurly.")
    };
    notices
        .notify(Notice::Provider(ProviderCard {
            title: format!("Plan billed in Recurly: {title}"),
            tone: Tone::Good,
            text,
            facts: vec![
                ("Amplify plan".into(), plan.name.clone()),
                ("Recurly plan".into(), mapped.code.clone()),
                ("Price".into(), mapped.price_per_interval()),
                (
                    "Usage add-ons".into(),
                    mapped
                        .add_ons
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ],
            link: None,
        }))
        .await;
    Ok(PlanOutcome::Provisioned {
        code: mapped.code,
        created,
        add_ons_added,
    })
}

/// Usage add-ons name a measured unit that must exist first.
async fn ensure_measured_units(bridge: &Bridge, plan: &BillingPlan) -> Result<(), ProvisionError> {
    let mut units: Vec<&str> = plan
        .add_ons
        .iter()
        .map(|a| a.measured_unit.as_str())
        .collect();
    units.sort_unstable();
    units.dedup();
    for unit in units {
        if bridge.recurly.measured_unit(unit).await?.is_none() {
            match bridge
                .recurly
                .create_measured_unit(unit, &idempotency_key("create-measured-unit", &[unit]))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_code_taken() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Creates the add-ons the Recurly plan lacks (quotas added after activation).
async fn ensure_add_ons(bridge: &Bridge, plan: &BillingPlan) -> Result<usize, ProvisionError> {
    let existing = bridge.recurly.plan_add_ons(&plan.code).await?;
    let mut added = 0;
    for add_on in &plan.add_ons {
        if existing.iter().any(|e| e.code == add_on.code) {
            continue;
        }
        let key = idempotency_key("create-add-on", &[&add_on.quota_id]);
        match bridge
            .recurly
            .create_add_on(&plan.code, add_on, &plan.currency, &key)
            .await
        {
            Ok(_) => added += 1,
            Err(e) if e.is_code_taken() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(added)
}

async fn deactivate(
    bridge: &Bridge,
    notices: &Notices,
    plan_id: &str,
    title: &str,
) -> Result<PlanOutcome, ProvisionError> {
    let code = billing_plan_code(plan_id).map_err(|e| ProvisionError::Data(e.to_string()))?;
    match bridge.recurly.plan(&code).await? {
        Some(plan) if plan.state == "active" => {
            match bridge
                .recurly
                .deactivate_plan(&code, &idempotency_key("deactivate-plan", &[plan_id]))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(PlanOutcome::Deactivated { code }),
                Err(e) => return Err(e.into()),
            }
            notices.notify(Notice::Provider(ProviderCard {
                title: format!("Plan off sale in Recurly: {title}"),
                tone: Tone::Info,
                text: "The Amplify plan was deprecated, archived or deleted, so its Recurly plan takes no new subscriptions. Existing subscriptions continue.".into(),
                facts: vec![("Recurly plan".into(), code.clone())],
                link: None,
            })).await;
            Ok(PlanOutcome::Deactivated { code })
        }
        _ => Ok(PlanOutcome::Deactivated { code }),
    }
}
