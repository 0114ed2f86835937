//! The Notifier actor: sends provider cards and subscriber mails one at a time, so a slow or
//! throttled channel delays notifications but never a provisioner.

use actix::prelude::*;
use billing_bridge_notify::{Delivery, Mail, ProviderCard};

use std::rc::Rc;
use std::sync::Arc;

use crate::bridge::{Bridge, Channels};
use crate::metrics::{Channel, NotificationOutcome};

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
        let record = move |channel, outcome| bridge.metrics.notified(channel, outcome);
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

/// Answers once every notice sent before it was handled (a command that exits uses it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for Notifier {
    type Result = ();

    fn handle(&mut self, _msg: Flush, _ctx: &mut Self::Context) {}
}
