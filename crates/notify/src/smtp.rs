//! Subscriber mail through an SMTP relay (lettre), with STARTTLS, implicit TLS or plain.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{SmtpConfig, SmtpSecurity};
use crate::{Address, Mail, NotifyError};

const UPSTREAM: &str = "SMTP relay";

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

fn mailbox(a: &Address) -> Result<Mailbox, NotifyError> {
    let email = a
        .email
        .parse()
        .map_err(|e| NotifyError::InvalidMail(format!("'{}': {e}", a.email)))?;
    Ok(Mailbox::new(a.name.clone(), email))
}

pub(crate) fn message(mail: &Mail) -> Result<Message, NotifyError> {
    let mut builder = Message::builder()
        .from(mailbox(&mail.from)?)
        .to(mailbox(&mail.to)?)
        .subject(mail.subject.clone());
    if let Some(reply_to) = &mail.reply_to {
        builder = builder.reply_to(mailbox(reply_to)?);
    }
    let built = match &mail.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            mail.text.clone(),
            html.clone(),
        )),
        None => builder
            .header(ContentType::TEXT_PLAIN)
            .body(mail.text.clone()),
    };
    built.map_err(|e| NotifyError::InvalidMail(e.to_string()))
}

impl SmtpMailer {
    pub fn new(config: &SmtpConfig) -> Result<Self, NotifyError> {
        if config.host.is_empty() {
            return Err(NotifyError::Config("notify.mail.smtp.host is empty".into()));
        }
        let builder = match config.security {
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            }
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                    .map_err(|e| NotifyError::Config(format!("SMTP host {}: {e}", config.host)))?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .map_err(|e| NotifyError::Config(format!("SMTP host {}: {e}", config.host)))?,
        };
        let mut builder = builder
            .port(config.port)
            .timeout(Some(Duration::from_secs(config.timeout_secs.max(1))));
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
        })
    }

    /// Sends the mail; SMTP gives no message id worth keeping.
    pub async fn send(&self, mail: &Mail) -> Result<Option<String>, NotifyError> {
        let message = message(mail)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(None),
            Err(e) if e.is_permanent() => Err(NotifyError::Rejected {
                upstream: UPSTREAM,
                status: e.status().map(u16::from).unwrap_or(550),
                detail: e.to_string(),
            }),
            Err(e) => Err(NotifyError::Unreachable {
                upstream: UPSTREAM,
                detail: e.to_string(),
            }),
        }
    }
}
