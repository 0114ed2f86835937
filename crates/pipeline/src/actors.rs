//! The actors: thin shells that own a queue or a timer and call the provisioning functions.
//! Each Provisioner takes the events of its kind from its own queue in the store, so plans
//! proceed independently of subscriptions; the Reconciler runs full passes on start, on a timer
//! and on demand.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use billing_bridge_domain::events::{ResourceEvent, ResourceKind};
use billing_bridge_store::Delivery;
use tracing::Instrument;

use crate::Bridge;
use crate::dispatch::Lanes;
use crate::notices::Notices;
use crate::plan::{PlanOutcome, provision_plan};
use crate::reconcile::{ReconcileSummary, reconcile};
use crate::subscription::{SubscriptionOutcome, provision_subscription};

/// How long a Provisioner waits for an event before looking again.
const POLL: Duration = Duration::from_secs(1);
/// An event whose pass ended in "try again later" is handed back to the store for another pass
/// after `[provisioning] retry_first`, then twice as long each time up to `retry_max`, up to
/// this many passes in all; after that the Reconciler's next pass picks the resource up.
const MAX_ATTEMPTS: u32 = 6;

/// The wait before the pass after pass number `attempt` (0 the first).
fn retry_delay(first: Duration, max: Duration, attempt: u32) -> Duration {
    first.saturating_mul(1u32 << attempt.min(20)).min(max)
}

/// One pass over an event; `true` when it must be tried again later.
async fn pass(bridge: &Bridge, notices: &Notices, event: &ResourceEvent) -> bool {
    let provisioning = &bridge.config.provisioning;
    match event.kind {
        ResourceKind::ProductPlan if provisioning.plans => matches!(
            provision_plan(bridge, notices, event).await,
            PlanOutcome::Retry { .. }
        ),
        ResourceKind::Subscription if provisioning.subscriptions => matches!(
            provision_subscription(bridge, notices, event).await,
            SubscriptionOutcome::Retry { .. }
        ),
        // That pipeline is switched off: the event is done with.
        _ => false,
    }
}

/// Finishes a delivery after its pass: a pass to try again is handed back to the store for
/// later (the acknowledgement and the durable scheduling are one step), anything else is
/// acknowledged.
async fn finish(bridge: &Bridge, delivery: &Delivery, retry: bool) {
    let event = &delivery.event;
    let provisioning = &bridge.config.provisioning;
    if retry && event.attempt + 1 < MAX_ATTEMPTS {
        let delay = retry_delay(
            provisioning.retry_first,
            provisioning.retry_max,
            event.attempt,
        );
        match bridge.store.retry_event(delivery, delay).await {
            Ok(()) => {
                tracing::info!(resource = %event.name, retry_in = ?delay, "pass to be tried again")
            }
            // Left in flight: the store hands it out again after store.reclaim_after.
            Err(e) => {
                tracing::warn!(resource = %event.name, error = %e, "could not schedule a retry; the event comes back after store.reclaim_after")
            }
        }
        return;
    }
    if retry {
        tracing::warn!(resource = %event.name, attempts = event.attempt + 1, "giving up for now; the reconciler will pick it up");
    }
    if let Err(e) = bridge.store.ack(delivery).await {
        tracing::warn!(resource = %event.name, error = %e, "could not acknowledge an event; it comes back after store.reclaim_after and is passed again");
    }
}

/// How long a resource's lease in the store is taken for; renewed every third of it while its
/// pass runs (a pass can wait minutes for Amplify's budget).
const RESOURCE_LEASE: Duration = Duration::from_secs(30);
/// How long a pass waits for a resource another instance is passing before the event is handed
/// back for later (counted as a pass to try again).
const RESOURCE_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting pass looks at the resource's lease again.
const RESOURCE_POLL: Duration = Duration::from_millis(250);

/// The lease that keeps two instances sharing a store from passing one resource at once.
fn resource_lease(event: &ResourceEvent) -> String {
    format!("provision/{}/{}", event.kind.label(), event.name)
}

/// One delivery, start to finish: the resource's lease in the store, the pass, the
/// acknowledgement or the hand-back.
async fn deliver(bridge: Arc<Bridge>, notices: Notices, delivery: Delivery) {
    let event = &delivery.event;
    let name = resource_lease(event);
    let waited = Instant::now();
    let lease = loop {
        match bridge.store.acquire_lease(&name, RESOURCE_LEASE).await {
            Ok(Some(lease)) => break lease,
            Ok(None) if waited.elapsed() < RESOURCE_WAIT => {
                actix_rt::time::sleep(RESOURCE_POLL).await
            }
            Ok(None) => {
                tracing::info!(resource = %event.name, "another instance is passing this resource; the event is handed back for later");
                finish(&bridge, &delivery, true).await;
                return;
            }
            // Without the store the pass cannot be finished either: handed back after
            // store.reclaim_after, as any delivery never finished.
            Err(e) => {
                tracing::warn!(resource = %event.name, error = %e, "store unavailable; the event comes back after store.reclaim_after");
                return;
            }
        }
    };
    let retry = bridge
        .holding(&lease, RESOURCE_LEASE, pass(&bridge, &notices, event))
        .await;
    finish(&bridge, &delivery, retry).await;
    let _ = bridge.store.release_lease(&lease).await;
    bridge.refresh_depths().await;
}

/// Takes the events of one kind from that kind's queue in the store and passes up to
/// `[provisioning] concurrency` of them at once, never two of one resource (a later event of
/// a resource being passed waits behind it, in order; see `dispatch`). One per kind, so a slow
/// upstream call of one kind never holds up the other; the queue is the mailbox, bounded by
/// `server.queue_capacity` (intake answers 503 beyond), and an event is taken only when a slot
/// is free to pass it.
pub struct Provisioner {
    pub bridge: Arc<Bridge>,
    pub notices: Notices,
    pub kind: ResourceKind,
}

impl Actor for Provisioner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (bridge, notices, kind) = (self.bridge.clone(), self.notices.clone(), self.kind);
        let lanes = Lanes::new(bridge.config.provisioning.concurrency);
        ctx.spawn(
            async move {
                loop {
                    let slot = lanes.slot().await;
                    let next = bridge.store.next_event(kind, POLL).await;
                    // Each provisioner asks the store every second: its answer is the store's
                    // health.
                    bridge.metrics.store_up.set(i64::from(next.is_ok()));
                    match next {
                        Ok(Some(delivery)) => {
                            let key = delivery.event.name.clone();
                            let (bridge, notices) = (bridge.clone(), notices.clone());
                            lanes.run(slot, key, delivery, move |delivery| {
                                deliver(bridge.clone(), notices.clone(), delivery)
                            });
                        }
                        Ok(None) => bridge.refresh_depths().await,
                        Err(e) => {
                            tracing::warn!(error = %e, "store unavailable; the provisioner waits");
                            actix_rt::time::sleep(POLL).await;
                        }
                    }
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
    /// Whether a pass runs at start. Not while a WatchTopic is read: its reader asks for one
    /// when the topic cannot tell what happened before (first start, events past retention).
    pub start_pass: bool,
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
        if self.start_pass {
            self.run(ctx);
        }
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
        let (first, max) = (Duration::from_secs(5), Duration::from_secs(300));
        let delays: Vec<u64> = (0..MAX_ATTEMPTS)
            .map(|a| retry_delay(first, max, a).as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160]);
        assert_eq!(retry_delay(first, max, 30).as_secs(), 300);
    }
}
