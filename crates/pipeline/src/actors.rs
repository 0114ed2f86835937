//! The actors: thin shells that own a mailbox and call the provisioning functions. The Router
//! takes accepted events from the store and hands each to its provisioner, acknowledging it only
//! once handled; the Reconciler runs full passes on start, on a timer and on demand.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use billing_bridge_domain::events::{ResourceEvent, ResourceKind};
use tracing::Instrument;

use crate::Bridge;
use crate::metrics::ActorLabel;
use crate::notices::NotifierMailbox;
use crate::plan::{PlanOutcome, provision_plan};
use crate::reconcile::{ReconcileSummary, reconcile};
use crate::subscription::{SubscriptionOutcome, provision_subscription};

/// Events a provisioner may hold before the Router waits: bounded, so a slow upstream pushes
/// back into the store's queue (and from there to intake's 503) instead of growing memory.
const PROVISIONER_MAILBOX: usize = 16;
/// How long the Router waits for an event before looking again.
const POLL: Duration = Duration::from_secs(1);
/// An event whose pass ended in "try again later" is queued again after 5 s, 10 s, 20 s, ...
/// up to this many times; after that the Reconciler's next pass picks the resource up.
const MAX_ATTEMPTS: u32 = 6;

fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << attempt.min(6)).min(300))
}

/// Queues an event again later, without holding up the Router.
fn requeue_later(bridge: Arc<Bridge>, mut event: ResourceEvent) {
    if event.attempt + 1 >= MAX_ATTEMPTS {
        tracing::warn!(resource = %event.name, attempts = event.attempt + 1, "giving up for now; the reconciler will pick it up");
        return;
    }
    let delay = retry_delay(event.attempt);
    event.attempt += 1;
    actix_rt::spawn(async move {
        actix_rt::time::sleep(delay).await;
        if let Err(e) = bridge.store.enqueue(event).await {
            tracing::warn!(error = %e, "could not queue a retry; the reconciler will pick it up");
        }
    });
}

#[derive(Message)]
#[rtype(result = "PlanOutcome")]
pub struct ProvisionPlan(pub ResourceEvent);

#[derive(Message)]
#[rtype(result = "SubscriptionOutcome")]
pub struct ProvisionSubscription(pub ResourceEvent);

pub struct PlanProvisioner {
    pub bridge: Arc<Bridge>,
    pub notifier: NotifierMailbox,
}

impl Actor for PlanProvisioner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(PROVISIONER_MAILBOX);
    }
}

impl Handler<ProvisionPlan> for PlanProvisioner {
    type Result = AtomicResponse<Self, PlanOutcome>;

    fn handle(&mut self, msg: ProvisionPlan, _ctx: &mut Self::Context) -> Self::Result {
        let (bridge, notifier) = (self.bridge.clone(), self.notifier.clone());
        AtomicResponse::new(Box::pin(
            async move { provision_plan(&bridge, &notifier, &msg.0).await }.into_actor(self),
        ))
    }
}

pub struct SubscriptionProvisioner {
    pub bridge: Arc<Bridge>,
    pub notifier: NotifierMailbox,
}

impl Actor for SubscriptionProvisioner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(PROVISIONER_MAILBOX);
    }
}

impl Handler<ProvisionSubscription> for SubscriptionProvisioner {
    type Result = AtomicResponse<Self, SubscriptionOutcome>;

    fn handle(&mut self, msg: ProvisionSubscription, _ctx: &mut Self::Context) -> Self::Result {
        let (bridge, notifier) = (self.bridge.clone(), self.notifier.clone());
        AtomicResponse::new(Box::pin(
            async move { provision_subscription(&bridge, &notifier, &msg.0).await }
                .into_actor(self),
        ))
    }
}

/// Takes accepted events from the store, in order, and hands each to its provisioner.
pub struct Router {
    pub bridge: Arc<Bridge>,
    pub plans: Addr<PlanProvisioner>,
    pub subscriptions: Addr<SubscriptionProvisioner>,
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (bridge, plans, subscriptions) = (
            self.bridge.clone(),
            self.plans.clone(),
            self.subscriptions.clone(),
        );
        ctx.spawn(
            async move {
                loop {
                    let next = bridge.store.next_event(POLL).await;
                    // The Router asks the store every second: its answer is the store's health.
                    bridge.metrics.store_up.set(i64::from(next.is_ok()));
                    let delivery = match next {
                        Ok(Some(delivery)) => delivery,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "store unavailable; router waits");
                            actix_rt::time::sleep(POLL).await;
                            continue;
                        }
                    };
                    if let Ok(depth) = bridge.store.queue_depth().await {
                        bridge.metrics.queue_depth.set(depth as i64);
                    }
                    let event = delivery.event;
                    let again = event.clone();
                    let retry = match event.kind {
                        ResourceKind::ProductPlan if bridge.config.provisioning.plans => {
                            let depth = bridge.metrics.mailbox(ActorLabel::PlanProvisioner);
                            depth.inc();
                            let answer = plans.send(ProvisionPlan(event)).await;
                            depth.dec();
                            answer.map(|outcome| matches!(outcome, PlanOutcome::Retry { .. }))
                        }
                        ResourceKind::Subscription if bridge.config.provisioning.subscriptions => {
                            let depth = bridge.metrics.mailbox(ActorLabel::SubscriptionProvisioner);
                            depth.inc();
                            let answer = subscriptions.send(ProvisionSubscription(event)).await;
                            depth.dec();
                            answer
                                .map(|outcome| matches!(outcome, SubscriptionOutcome::Retry { .. }))
                        }
                        _ => Ok(false),
                    };
                    match retry {
                        Ok(true) => requeue_later(bridge.clone(), again),
                        Ok(false) => {}
                        Err(e) => tracing::error!(error = %e, "provisioner unavailable"),
                    }
                    let _ = bridge.store.ack(&delivery.tag).await;
                }
            }
            .into_actor(self),
        );
    }
}

#[derive(Message)]
#[rtype(result = "Result<ReconcileSummary, String>")]
pub struct ReconcileNow;

pub struct Reconciler {
    pub bridge: Arc<Bridge>,
    pub every: Duration,
}

fn pass_id() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
        .to_string()
}

impl Reconciler {
    fn run(&self, ctx: &mut Context<Self>) {
        let bridge = self.bridge.clone();
        ctx.spawn(
            async move {
                let pass = pass_id();
                let span = tracing::info_span!("reconcile_pass", pass = %pass, trigger = "timer");
                match reconcile(&bridge, &pass).instrument(span).await {
                    Ok(summary) => {
                        bridge.metrics.reconcile_passes.inc();
                        tracing::info!(?summary, "reconciliation pass");
                    }
                    Err(e) => tracing::warn!(error = %e, "reconciliation pass failed; the next one retries"),
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Reconciler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.run(ctx);
        ctx.run_interval(self.every, |act, ctx| act.run(ctx));
    }
}

impl Handler<ReconcileNow> for Reconciler {
    type Result = ResponseFuture<Result<ReconcileSummary, String>>;

    fn handle(&mut self, _msg: ReconcileNow, _ctx: &mut Self::Context) -> Self::Result {
        let bridge = self.bridge.clone();
        Box::pin(async move {
            let pass = pass_id();
            let span = tracing::info_span!("reconcile_pass", pass = %pass, trigger = "admin");
            let summary = reconcile(&bridge, &pass)
                .instrument(span)
                .await
                .map_err(|e| e.to_string())?;
            bridge.metrics.reconcile_passes.inc();
            Ok(summary)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_stop() {
        let delays: Vec<u64> = (0..MAX_ATTEMPTS)
            .map(|a| retry_delay(a).as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160]);
        assert_eq!(retry_delay(30).as_secs(), 300);
    }
}
