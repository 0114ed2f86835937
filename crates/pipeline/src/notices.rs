//! The Notifier actor: sends provider cards and subscriber mails one at a time, so a slow or
//! throttled channel delays notifications but never a provisioner.

use actix::prelude::*;
use billing_bridge_notify::{Delivery, Mail, ProviderCard};

use std::rc::Rc;
use std::sync::Arc;

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
        if let Err(e) = self.addr.try_send(notice) {
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
        let channels = self.channels.clone();
        let bridge = self.bridge.clone();
        let depth = bridge.metrics.mailbox(ActorLabel::Notifier);
        let record = move |channel, outcome| {
            bridge.metrics.notified(channel, outcome);
            // Notices sent through the bare address were never counted in.
            if depth.get() > 0 {
                depth.dec();
            }
        };
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
            .into_actor(self),
        ))
    }
}
