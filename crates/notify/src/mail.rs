//! Subscriber mail: one message, sent through SendGrid, SMTP, or not at all.

use std::collections::BTreeMap;

use crate::NotifyError;
use crate::sendgrid::SendGridMailer;
use crate::smtp::SmtpMailer;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Address {
    pub email: String,
    pub name: Option<String>,
}

impl Address {
    pub fn new(email: impl Into<String>) -> Self {
        Self {
            email: email.into(),
            name: None,
        }
    }
}

/// A mail to one subscriber; serializable, so the pipeline's outbox can keep it until the
/// backend takes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mail {
    pub from: Address,
    pub reply_to: Option<Address>,
    pub to: Address,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// Our own ids (e.g. the event that caused the mail), carried for reconciliation.
    pub tags: BTreeMap<String, String>,
}

impl Mail {
    pub(crate) fn check(&self) -> Result<(), NotifyError> {
        let address_ok =
            |a: &Address| a.email.contains('@') && !a.email.contains(char::is_whitespace);
        if !address_ok(&self.to) {
            return Err(NotifyError::InvalidMail(format!(
                "recipient '{}' is not an email address",
                self.to.email
            )));
        }
        if !address_ok(&self.from) {
            return Err(NotifyError::InvalidMail(format!(
                "sender '{}' is not an email address (set notify.mail.from)",
                self.from.email
            )));
        }
        if self.subject.trim().is_empty() || self.text.trim().is_empty() {
            return Err(NotifyError::InvalidMail(
                "subject and text must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// What became of a mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted by the backend, with its message id when it gives one.
    Sent { message_id: Option<String> },
    /// Mail is switched off.
    Skipped,
}

pub enum Mailer {
    Off,
    SendGrid(SendGridMailer),
    Smtp(SmtpMailer),
}

impl Mailer {
    pub async fn send(&self, mail: &Mail) -> Result<Delivery, NotifyError> {
        if matches!(self, Mailer::Off) {
            return Ok(Delivery::Skipped);
        }
        mail.check()?;
        let message_id = match self {
            Mailer::Off => return Ok(Delivery::Skipped),
            Mailer::SendGrid(sendgrid) => sendgrid.send(mail).await?,
            Mailer::Smtp(smtp) => smtp.send(mail).await?,
        };
        Ok(Delivery::Sent { message_id })
    }
}
