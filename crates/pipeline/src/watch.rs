//! Gap-free intake from a WatchTopic (reference §4.5): the events after the last sequence id the
//! store holds, read at start and every `[intake] watch_every`, queued in order like webhooks.
//!
//! A read is one Amplify call (in the reconciliation lane) for up to a page of events. Each event
//! goes through the webhook's dedupe (its id: a change already delivered by webhook is not queued
//! twice) and the same store queue; its thin payload only names the resource, which the
//! provisioner reads anyway. The sequence id is stored after the events before it are queued, so
//! a crash re-reads (and dedupes) rather than skips.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use billing_bridge_amplify::{AmplifyError, EventType, Lane, WebhookEnvelope};
use billing_bridge_domain::amplify::Resource;
use billing_bridge_domain::events::EventPayload;
use billing_bridge_store::StoreError;

use crate::intake::{NotAdmitted, QueueError, Queued, Source, admit, queue_once};
use serde_json::Value;
use tracing::Instrument;

use crate::Bridge;
use crate::actors::{ReconcileNow, Reconciler};

/// What one read did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchRead {
    /// Events read from Amplify.
    pub read: usize,
    /// Queued for a provisioner.
    pub queued: usize,
    /// Already queued by their webhook (or an earlier read).
    pub duplicates: usize,
    /// Of no interest (another kind or organization, a pipeline switched off, ...).
    pub ignored: usize,
    /// The sequence id stored after the read.
    pub sequence: Option<i64>,
    /// Nothing tells what happened before this read: the first read of the topic, or the events
    /// after the stored id are past Amplify's retention. A full reconcile pass is needed.
    pub needs_full_pass: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Amplify(#[from] AmplifyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Outcome {
    Queued,
    Duplicate,
    Ignored,
    /// Not queued now (store full or unavailable, the webhook still accepting it): stop here.
    Later,
}

/// Reads WatchTopic `topic` once: from the stored sequence id, or, the first time, from its
/// newest event (what came before is the full pass's).
pub async fn read_topic(bridge: &Bridge, topic: &str) -> Result<WatchRead, WatchError> {
    let amplify = bridge.amplify.lane(Lane::Reconciliation);
    let mut summary = WatchRead::default();
    let Some(after) = bridge.store.watch_sequence(topic).await? else {
        let newest = amplify.watch_newest(topic).await?.unwrap_or(0);
        bridge.store.set_watch_sequence(topic, newest).await?;
        summary.sequence = Some(newest);
        summary.needs_full_pass = true;
        return Ok(summary);
    };
    let events = match amplify.watch_events(topic, after).await {
        Ok(events) => events,
        Err(AmplifyError::Gone { newest, .. }) => {
            tracing::warn!(
                topic,
                after,
                ?newest,
                "the watch topic's events after the last one read are past retention; a full pass catches up"
            );
            let newest = match newest {
                Some(n) => n,
                None => amplify.watch_newest(topic).await?.unwrap_or(after),
            };
            bridge.store.set_watch_sequence(topic, newest).await?;
            summary.sequence = Some(newest);
            summary.needs_full_pass = true;
            return Ok(summary);
        }
        Err(e) => return Err(e.into()),
    };
    summary.read = events.len();
    let mut last = after;
    for event in &events {
        let sequence = Resource::read(event).sequence_id();
        let outcome = take(bridge, event).await;
        match outcome {
            Outcome::Queued => summary.queued += 1,
            Outcome::Duplicate => summary.duplicates += 1,
            Outcome::Ignored => summary.ignored += 1,
            Outcome::Later => break,
        }
        if let Some(sequence) = sequence {
            last = last.max(sequence);
        }
    }
    if last != after {
        bridge.store.set_watch_sequence(topic, last).await?;
    }
    summary.sequence = Some(last);
    Ok(summary)
}

/// One event through the webhook's rules: organization, interest, name, dedupe, queue.
async fn take(bridge: &Bridge, raw: &Value) -> Outcome {
    let config = &bridge.config;
    let envelope: WebhookEnvelope<EventPayload> = match serde_json::from_value(raw.clone()) {
        Ok(envelope) => envelope,
        Err(e) => {
            let kind = raw.get("type").and_then(Value::as_str).unwrap_or_default();
            if !EventType::is_change(kind) {
                return Outcome::Ignored;
            }
            tracing::warn!(error = %e, "a watch topic event could not be read; skipped");
            return Outcome::Ignored;
        }
    };
    if envelope.id.trim().is_empty() {
        return Outcome::Ignored;
    }
    let mut event = match admit(config, &envelope, Source::WatchTopic) {
        Ok(event) => event,
        Err(NotAdmitted::Ignored(_)) => return Outcome::Ignored,
        Err(NotAdmitted::BadName(_)) => {
            tracing::warn!(event = %envelope.id, "a watch topic event names no Amplify resource; skipped");
            return Outcome::Ignored;
        }
    };
    event.trace_parent = crate::trace::traceparent(&tracing::Span::current());
    match queue_once(&bridge.store, event).await {
        Ok(Queued::Queued) => Outcome::Queued,
        Ok(Queued::Duplicate) => Outcome::Duplicate,
        Err(QueueError::InFlight) => Outcome::Later,
        Err(QueueError::Store(e)) => {
            tracing::warn!(error = %e, "could not queue a watch topic event; the next read takes it again");
            Outcome::Later
        }
    }
}

/// Reads the topic at start and every `watch_every`, one read at a time; asks the Reconciler
/// for a full pass when a read says nothing covers the time before it.
pub struct WatchReader {
    pub bridge: Arc<Bridge>,
    pub topic: String,
    pub every: Duration,
    pub reconciler: Addr<Reconciler>,
    reading: Arc<AtomicBool>,
}

impl WatchReader {
    pub fn new(
        bridge: Arc<Bridge>,
        topic: String,
        every: Duration,
        reconciler: Addr<Reconciler>,
    ) -> Self {
        Self {
            bridge,
            topic,
            every,
            reconciler,
            reading: Arc::new(AtomicBool::new(false)),
        }
    }

    fn read(&self, ctx: &mut Context<Self>) {
        if self.reading.swap(true, Ordering::SeqCst) {
            return;
        }
        let (bridge, topic, reconciler, reading) = (
            self.bridge.clone(),
            self.topic.clone(),
            self.reconciler.clone(),
            self.reading.clone(),
        );
        ctx.spawn(
            async move {
                let span = tracing::info_span!("watch_read", topic = %topic);
                match read_topic(&bridge, &topic).instrument(span).await {
                    Ok(summary) => {
                        tracing::debug!(?summary, "watch topic read");
                        if summary.needs_full_pass {
                            reconciler.do_send(ReconcileNow);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %topic, "watch topic read failed; the next one retries")
                    }
                }
                reading.store(false, Ordering::SeqCst);
            }
            .into_actor(self),
        );
    }
}

impl Actor for WatchReader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.read(ctx);
        ctx.run_interval(self.every, |act, ctx| act.read(ctx));
    }
}
