//! Tells people what happened: the API provider through an MS Teams channel (Adaptive Cards),
//! the subscriber by mail (SendGrid or SMTP). Each channel can be switched off.
//!
//! Secrets (the Teams URL, API keys, SMTP password) are held as `SecretString` and never appear
//! in errors or logs: every error below is built from statuses and upstream messages only.

pub mod card;
pub mod config;
pub mod mail;
mod sendgrid;
mod smtp;
pub mod teams;

use std::time::Duration;

use billing_bridge_upstream::RetryPolicy;

use thiserror::Error;

pub use card::{ProviderCard, Tone};
pub use config::{
    MailBackend, MailConfig, NotifyConfig, SendGridConfig, SmtpConfig, SmtpSecurity, TeamsConfig,
};
pub use mail::{Address, Delivery, Mail, Mailer};
pub use teams::{ProviderChannel, TeamsClient};

#[derive(Debug, Error)]
pub enum NotifyError {
    #[error("{upstream} refused the message ({status}): {detail}")]
    Rejected {
        upstream: &'static str,
        status: u16,
        detail: String,
    },
    #[error("{upstream} is throttling; try again later")]
    Throttled {
        upstream: &'static str,
        retry_after: Option<Duration>,
    },
    #[error("{upstream} failed ({status}); it may recover by itself")]
    Unavailable { upstream: &'static str, status: u16 },
    #[error("{upstream} could not be reached: {detail}")]
    Unreachable {
        upstream: &'static str,
        detail: String,
    },
    #[error("the mail is not valid: {0}")]
    InvalidMail(String),
    #[error("notification configuration: {0}")]
    Config(String),
}

impl billing_bridge_upstream::Transient for NotifyError {
    fn is_transient(&self) -> bool {
        NotifyError::is_transient(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        NotifyError::retry_after(self)
    }
}

impl NotifyError {
    /// Whether sending again later may succeed (throttling, 5xx, network), as opposed to a
    /// refusal that will repeat.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            NotifyError::Throttled { .. }
                | NotifyError::Unavailable { .. }
                | NotifyError::Unreachable { .. }
        )
    }

    /// How long the upstream asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NotifyError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A network error, described without the URL (the Teams URL is a secret).
    fn unreachable(upstream: &'static str, err: reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        NotifyError::Unreachable {
            upstream,
            detail: format!("{kind}: {}", billing_bridge_upstream::network_error(err)),
        }
    }
}

/// Builds the provider channel and the mailer a configuration asks for, each retrying
/// transient failures for a few seconds.
pub fn channels(
    config: &NotifyConfig,
    http: &reqwest::Client,
) -> Result<(ProviderChannel, Mailer), NotifyError> {
    build_channels(
        config,
        http,
        billing_bridge_upstream::NoObserver::shared(),
        RetryPolicy::default(),
    )
}

/// The channels for an outbox that keeps each notice and retries it itself: a send rides out a
/// blip (throttling, a 5xx) with [`OUTBOX_RETRY`], so notices keep their order in normal
/// operation, and otherwise comes back at once with the failure (and how long the upstream
/// asked to wait) for the outbox to schedule. Every HTTP exchange is reported to `observer`.
pub fn channels_observed(
    config: &NotifyConfig,
    http: &reqwest::Client,
    observer: billing_bridge_upstream::Observer,
) -> Result<(ProviderChannel, Mailer), NotifyError> {
    build_channels(config, http, observer, OUTBOX_RETRY)
}

/// Tries per send for an outbox: three within about a second, plus what a throttling channel
/// asks for (a burst of cards over Teams' 4 a second is waited out, not rescheduled).
pub const OUTBOX_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    min_delay: Duration::from_millis(250),
    max_delay: Duration::from_secs(1),
};

fn build_channels(
    config: &NotifyConfig,
    http: &reqwest::Client,
    observer: billing_bridge_upstream::Observer,
    retry: RetryPolicy,
) -> Result<(ProviderChannel, Mailer), NotifyError> {
    let provider = match &config.teams.webhook_url {
        Some(url) => ProviderChannel::Teams(
            TeamsClient::new(http.clone(), url.clone(), config.teams.requests_per_second)
                .with_observer(observer.clone())
                .with_retry(retry.attempts, retry.min_delay, retry.max_delay),
        ),
        None => ProviderChannel::Off,
    };
    let mailer = match config.mail.backend {
        MailBackend::Off => Mailer::Off,
        MailBackend::Sendgrid => {
            let key = config.mail.sendgrid.api_key.clone().ok_or_else(|| {
                NotifyError::Config(
                    "notify.mail.sendgrid.api_key is required for the sendgrid backend".into(),
                )
            })?;
            Mailer::SendGrid(
                sendgrid::SendGridMailer::new(http.clone(), &config.mail.sendgrid.base_url, key)
                    .with_observer(observer)
                    .with_retry(retry.attempts, retry.min_delay, retry.max_delay),
            )
        }
        MailBackend::Smtp => Mailer::Smtp(smtp::SmtpMailer::new(&config.mail.smtp)?),
    };
    Ok((provider, mailer))
}

pub use sendgrid::SendGridMailer;
pub use smtp::SmtpMailer;
