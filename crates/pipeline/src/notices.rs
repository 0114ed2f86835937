//! The notification outbox: every card and mail is written to the store's `notices` queue
//! before its sender moves on ([`Notices::notify`], the one entrance), and the Notifier actor
//! delivers it, retrying with back-off until the channel takes it or it is too old.
//!
//! A notice is acknowledged in the store only after its channel took it, right after the answer
//! came, so a restart loses none and a copy is sent twice only if the process dies (or the store
//! fails) in the moment between the channel's answer and the acknowledgement, or if a channel
//! that answered a failure (a 5xx) or never answered (a time-out) had in fact taken it. SendGrid and Teams offer no idempotency
//! key that would close that window.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use billing_bridge_notify::{Delivery, Mail, ProviderCard};
use billing_bridge_store::Taken;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::bridge::{Bridge, Channels};
use crate::metrics::{Channel, NotificationOutcome};

pub use billing_bridge_store::NOTICES_QUEUE;
/// How long a notice waits for a store that cannot take it before it is counted lost.
const PUT_PATIENCE: Duration = Duration::from_secs(30);
/// How long the Notifier waits for a notice before looking again (and refreshing its gauge).
const POLL: Duration = Duration::from_secs(1);
/// One delivery try gives up after this long and counts as a transient failure.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries at acknowledging a delivered notice while the store fails, a short pause apart: each
/// failed one widens the window in which the notice could be sent again.
const ACK_TRIES: u32 = 5;

/// Something to tell someone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Notice {
    Provider(ProviderCard),
    Subscriber(Mail),
}

impl Notice {
    fn channel(&self) -> Channel {
        match self {
            Notice::Provider(_) => Channel::Teams,
            Notice::Subscriber(_) => Channel::Mail,
        }
    }
}

/// A notice as the outbox keeps it: the rendered card or mail, when it was made (wall clock,
/// epoch ms, for `max_age`), and the trace context of the pass that made it, so its delivery
/// joins that trace. The store keeps its stable id beside it.
#[derive(Debug, Serialize, Deserialize)]
struct OutboxEntry {
    notice: Notice,
    created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The one way to send a notice: what provisioners, the reconciler, the billing watcher and
/// reporting hold.
#[derive(Clone)]
pub struct Notices {
    bridge: Arc<Bridge>,
}

impl Notices {
    pub fn new(bridge: Arc<Bridge>) -> Self {
        Self { bridge }
    }

    /// [`notify`](Self::notify), the first time `key` is seen (within a week): for notices that
    /// must be sent once although the pass that sends them may run many times, on any instance.
    pub async fn notify_once(&self, key: &str, notice: Notice) {
        if crate::provision::first_time(&self.bridge, key).await {
            self.notify(notice).await;
        }
    }

    /// Writes the notice to the outbox, with the current span's trace context; returns once the
    /// store holds it. A store that is briefly away (a Redis restart, a failover) is tried again
    /// for up to [`PUT_PATIENCE`]; one that still cannot take it is logged and counted (`lost`):
    /// the work that caused the notice is done and is not undone for it.
    pub async fn notify(&self, notice: Notice) {
        let channel = notice.channel();
        let entry = OutboxEntry {
            notice,
            created_ms: now_ms(),
            traceparent: crate::trace::traceparent(&tracing::Span::current()),
        };
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::to_string(&entry).expect("notices serialize");
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        let mut put = self.bridge.store.queue_put(NOTICES_QUEUE, &id, &body).await;
        while put.is_err() && started.elapsed() + wait <= PUT_PATIENCE {
            actix_rt::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            put = self.bridge.store.queue_put(NOTICES_QUEUE, &id, &body).await;
        }
        match put {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, notice = %id, channel = channel.as_str(), "a notification could not be queued and is lost");
                self.bridge
                    .metrics
                    .notified(channel, NotificationOutcome::Lost);
            }
        }
    }
}

/// The wait before try `attempt + 1` of a notice: `first` doubled per earlier retry, at most
/// `max`, scaled by `jitter` (in [0.5, 1]) so notices failed together do not return together,
/// and never shorter than the channel asked.
fn backoff(
    first: Duration,
    max: Duration,
    attempt: u32,
    jitter: f64,
    asked: Option<Duration>,
) -> Duration {
    let planned = first
        .saturating_mul(1u32 << attempt.min(20))
        .min(max)
        .mul_f64(jitter.clamp(0.5, 1.0));
    asked.map_or(planned, |asked| planned.max(asked))
}

/// Delivers the outbox: takes one notice at a time (so a throttled channel is not hammered),
/// sends it, and acknowledges it, schedules it again, or gives it up.
pub struct Notifier {
    channels: Rc<Channels>,
    bridge: Arc<Bridge>,
}

impl Notifier {
    pub fn new(channels: Channels, bridge: Arc<Bridge>) -> Self {
        Self {
            channels: Rc::new(channels),
            bridge,
        }
    }
}

impl Actor for Notifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (bridge, channels) = (self.bridge.clone(), self.channels.clone());
        ctx.spawn(
            async move {
                loop {
                    match bridge.store.queue_take(NOTICES_QUEUE, POLL).await {
                        Ok(Some(taken)) => deliver(&bridge, &channels, taken).await,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "store unavailable; the notifier waits");
                            actix_rt::time::sleep(POLL).await;
                        }
                    }
                    bridge.refresh_depths().await;
                }
            }
            .into_actor(self),
        );
    }
}

/// Delivers every notice due now, once each, and returns: for a command that exits (`report`).
/// Notices a channel could not take stay in the outbox for `serve`.
pub async fn deliver_due(bridge: &Bridge, channels: &Channels) {
    let Ok(queued) = bridge.store.queue_len(NOTICES_QUEUE).await else {
        return;
    };
    for _ in 0..queued {
        match bridge.store.queue_take(NOTICES_QUEUE, Duration::ZERO).await {
            Ok(Some(taken)) => deliver(bridge, channels, taken).await,
            _ => return,
        }
    }
}

/// What one try at a channel came to.
enum Tried {
    Taken(NotificationOutcome),
    Transient(Option<Duration>, String),
    Refused(String),
}

async fn send(channels: &Channels, notice: &Notice) -> Tried {
    let answer = match notice {
        Notice::Provider(card) => channels.provider.post(card).await.map(|posted| {
            if posted {
                NotificationOutcome::Sent
            } else {
                NotificationOutcome::Skipped
            }
        }),
        Notice::Subscriber(mail) => channels.mailer.send(mail).await.map(|d| match d {
            Delivery::Sent { .. } => NotificationOutcome::Sent,
            Delivery::Skipped => NotificationOutcome::Skipped,
        }),
    };
    match answer {
        Ok(outcome) => Tried::Taken(outcome),
        Err(e) if e.is_transient() => Tried::Transient(e.retry_after(), e.to_string()),
        Err(e) => Tried::Refused(e.to_string()),
    }
}

/// One try at one notice, in a `notify` span that continues the trace of the pass that made it.
async fn deliver(bridge: &Bridge, channels: &Channels, taken: Taken) {
    let entry: OutboxEntry = match serde_json::from_str(&taken.body) {
        Ok(entry) => entry,
        Err(e) => {
            // Written by another release, or damaged: it would never read, so it goes.
            tracing::error!(error = %e, notice = %taken.id, "an outbox entry does not read; dropped");
            acknowledge(bridge, &taken).await;
            return;
        }
    };
    let channel = entry.notice.channel();
    let span = tracing::info_span!(
        "notify",
        channel = channel.as_str(),
        notice = %taken.id,
        attempt = taken.attempt,
        outcome = tracing::field::Empty,
    );
    crate::trace::set_parent(&span, entry.traceparent.as_deref());
    async {
        let tried = match tokio::time::timeout(DELIVERY_TIMEOUT, send(channels, &entry.notice))
            .await
        {
            Ok(tried) => tried,
            Err(_) => Tried::Transient(None, format!("no answer within {DELIVERY_TIMEOUT:?}")),
        };
        let config = &bridge.config.notify;
        let age = Duration::from_millis(now_ms().saturating_sub(entry.created_ms).max(0) as u64);
        let outcome = match tried {
            Tried::Taken(outcome) => {
                acknowledge(bridge, &taken).await;
                outcome
            }
            Tried::Transient(_, error) if age >= config.max_age => {
                acknowledge(bridge, &taken).await;
                tracing::warn!(%error, age = ?age, attempts = taken.attempt + 1, "a notification was not delivered within notify.max_age; given up");
                NotificationOutcome::Expired
            }
            Tried::Transient(asked, error) => {
                let delay = backoff(
                    config.retry_first,
                    config.retry_max,
                    taken.attempt,
                    rand::random_range(0.5..=1.0),
                    asked,
                );
                match bridge.store.queue_retry(NOTICES_QUEUE, &taken, delay).await {
                    Ok(()) => {
                        tracing::info!(%error, retry_in = ?delay, "a notification will be tried again")
                    }
                    // Left in flight: the store hands it out again after reclaim_after.
                    Err(e) => {
                        tracing::warn!(%error, store_error = %e, "a notification could not be rescheduled; it comes back after store.reclaim_after")
                    }
                }
                NotificationOutcome::Retried
            }
            Tried::Refused(error) => {
                acknowledge(bridge, &taken).await;
                tracing::warn!(%error, "a notification was refused by its channel; dropped");
                NotificationOutcome::Failed
            }
        };
        bridge.metrics.notified(channel, outcome);
        tracing::Span::current().record("outcome", outcome.as_str());
    }
    .instrument(span)
    .await
}

/// Acknowledges a notice done with, trying a few times while the store fails.
async fn acknowledge(bridge: &Bridge, taken: &Taken) {
    for attempt in 1..=ACK_TRIES {
        match bridge.store.queue_ack(NOTICES_QUEUE, taken).await {
            Ok(()) => return,
            Err(e) if attempt == ACK_TRIES => {
                tracing::error!(error = %e, notice = %taken.id, "a delivered notification could not be acknowledged; it may be sent again");
            }
            Err(_) => actix_rt::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_maximum_and_honour_retry_after() {
        let (first, max) = (Duration::from_secs(10), Duration::from_secs(600));
        let waits: Vec<u64> = (0..8)
            .map(|a| backoff(first, max, a, 1.0, None).as_secs())
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff(first, max, 1, 0.5, None), Duration::from_secs(10));
        assert_eq!(backoff(first, max, 40, 1.0, None), max, "no overflow");
        assert_eq!(
            backoff(first, max, 0, 1.0, Some(Duration::from_secs(90))),
            Duration::from_secs(90),
            "never sooner than the channel asked"
        );
    }

    #[test]
    fn an_outbox_entry_reads_back_as_written() {
        let entry = OutboxEntry {
            notice: Notice::Provider(ProviderCard {
                title: "Plan billed".into(),
                tone: billing_bridge_notify::Tone::Good,
                text: "Silver".into(),
                facts: vec![("Plan".into(), "amplify-plan-1".into())],
                link: Some(("Open".into(), "https://example".into())),
            }),
            created_ms: 42,
            traceparent: None,
        };
        let read: OutboxEntry =
            serde_json::from_str(&serde_json::to_string(&entry).unwrap()).unwrap();
        assert_eq!(read.notice, entry.notice);
        assert_eq!(read.created_ms, 42);
    }
}
