//! The Notifier actor: sends provider cards and subscriber mails one at a time, so a slow or
//! throttled channel delays notifications but never a provisioner.

use actix::prelude::*;
use billing_bridge_notify::{Delivery, Mail, ProviderCard};

use std::rc::Rc;
use std::sync::Arc;

use tracing::Instrument;

use crate::bridge::{Bridge, Channels};
use crate::metrics::{ActorLabel, Channel, NotificationOutcome};
use prometheus_client::metrics::gauge::Gauge;

/// Something to tell someone.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub enum Notice {
    Provider(ProviderCard),
    Subscriber(Mail),
}

/// A notice with the trace context of the pass that sent it, so its delivery joins that trace.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct TracedNotice {
    pub notice: Notice,
    pub traceparent: Option<String>,
}

/// Where provisioners put notices. The Notifier's address in production; a recorder in tests.
pub trait NoticeSink {
    fn notify(&self, notice: Notice);
}

impl NoticeSink for Addr<Notifier> {
    fn notify(&self, notice: Notice) {
        if let Err(e) = self.try_send(notice) {
            tracing::warn!(error = %e, "notifier mailbox is full; a notification was dropped");
        }
    }
}

/// The Notifier's address with its mailbox gauge: what the provisioners hold, so the depth of
/// the Notifier's mailbox is visible (`billing_bridge_mailbox_depth_messages{actor="notifier"}`).
#[derive(Clone)]
pub struct NotifierMailbox {
    pub addr: Addr<Notifier>,
    depth: Gauge,
}

impl NotifierMailbox {
    pub fn new(addr: Addr<Notifier>, bridge: &Bridge) -> Self {
        Self {
            addr,
            depth: bridge.metrics.mailbox(ActorLabel::Notifier),
        }
    }
}

impl NoticeSink for NotifierMailbox {
    fn notify(&self, notice: Notice) {
        self.depth.inc();
        let traceparent = crate::trace::traceparent(&tracing::Span::current());
        if let Err(e) = self.addr.try_send(TracedNotice {
            notice,
            traceparent,
        }) {
            self.depth.dec();
            tracing::warn!(error = %e, "notifier mailbox is full; a notification was dropped");
        }
    }
}

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

/// Mailbox size: notices beyond it are dropped with a warning rather than blocking provisioning.
const MAILBOX: usize = 1_000;

impl Actor for Notifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Notice> for Notifier {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, notice: Notice, _ctx: &mut Self::Context) -> Self::Result {
        self.deliver(notice, None)
    }
}

impl Handler<TracedNotice> for Notifier {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, traced: TracedNotice, _ctx: &mut Self::Context) -> Self::Result {
        self.deliver(traced.notice, traced.traceparent.as_deref())
    }
}

impl Notifier {
    /// Sends one notice, one at a time, in a `notify` span that continues the sender's trace.
    fn deliver(&mut self, notice: Notice, traceparent: Option<&str>) -> AtomicResponse<Self, ()> {
        let channels = self.channels.clone();
        let bridge = self.bridge.clone();
        let depth = bridge.metrics.mailbox(ActorLabel::Notifier);
        let record = move |channel, outcome: NotificationOutcome| {
            bridge.metrics.notified(channel, outcome);
            tracing::Span::current().record("outcome", outcome.as_str());
            // Notices sent through the bare address were never counted in.
            if depth.get() > 0 {
                depth.dec();
            }
        };
        let channel = match &notice {
            Notice::Provider(_) => Channel::Teams,
            Notice::Subscriber(_) => Channel::Mail,
        };
        let span = tracing::info_span!(
            "notify",
            channel = channel.as_str(),
            outcome = tracing::field::Empty,
        );
        crate::trace::set_parent(&span, traceparent);
        AtomicResponse::new(Box::pin(
            async move {
                match notice {
                    Notice::Provider(card) => match channels.provider.post(&card).await {
                        Ok(true) => record(Channel::Teams, NotificationOutcome::Sent),
                        Ok(false) => record(Channel::Teams, NotificationOutcome::Skipped),
                        Err(e) => {
                            tracing::warn!(error = %e, title = %card.title, "provider card not delivered");
                            record(Channel::Teams, NotificationOutcome::Failed);
                        }
                    },
                    Notice::Subscriber(mail) => match channels.mailer.send(&mail).await {
                        Ok(Delivery::Sent { .. }) => record(Channel::Mail, NotificationOutcome::Sent),
                        Ok(Delivery::Skipped) => record(Channel::Mail, NotificationOutcome::Skipped),
                        Err(e) => {
                            tracing::warn!(error = %e, "subscriber mail not delivered");
                            record(Channel::Mail, NotificationOutcome::Failed);
                        }
                    },
                }
            }
            .instrument(span)
            .into_actor(self),
        ))
    }
}

/// Answers once every notice sent before it was handled (a command that exits uses it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for Notifier {
    type Result = ();

    fn handle(&mut self, _msg: Flush, _ctx: &mut Self::Context) {}
}
