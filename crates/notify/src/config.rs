//! The `[notify]` configuration section: the provider's Teams channel, the subscriber mail
//! backend and how long undelivered notices are retried. Secrets are `SecretString`s so they
//! cannot be printed by accident.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// A card or mail its channel has not taken after this long (throttling, outage) is given up,
    /// counted and logged as expired.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The wait before the first retry of a notice a channel could not take; each further
    /// retry waits twice as long (with jitter), at most `retry_max`, and never less than the
    /// channel asked (`Retry-After`).
    #[serde(with = "humantime_serde")]
    pub retry_first: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    pub teams: TeamsConfig,
    pub mail: MailConfig,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(24 * 3600),
            retry_first: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
            teams: TeamsConfig::default(),
            mail: MailConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamsConfig {
    /// Incoming-webhook or Workflows URL of the provider's channel; none switches cards off.
    /// The URL is the credential.
    pub webhook_url: Option<SecretString>,
    /// Teams throttles at 4 requests per second per webhook (reference §8.1).
    pub requests_per_second: u32,
}

impl Default for TeamsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            requests_per_second: 4,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailBackend {
    #[default]
    Off,
    Sendgrid,
    Smtp,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    pub backend: MailBackend,
    /// Sender address (a verified sender, for SendGrid).
    pub from: String,
    pub from_name: Option<String>,
    pub reply_to: Option<String>,
    pub sendgrid: SendGridConfig,
    pub smtp: SmtpConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendGridConfig {
    pub api_key: Option<SecretString>,
    /// `https://api.sendgrid.com`, or `https://api.eu.sendgrid.com` for EU subusers.
    pub base_url: String,
}

impl Default for SendGridConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: "https://api.sendgrid.com".to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection (a local relay).
    None,
    /// Upgrade with STARTTLS (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub timeout_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 587,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            timeout_secs: 30,
        }
    }
}
