//! billing-bridge configuration: the commented defaults in `config.default.toml`, then a file,
//! then `BRIDGE_`-prefixed environment variables (`__` between levels).

use std::path::Path;
use std::time::Duration;

use billing_bridge_domain::codes::{AccountKind, DEFAULT_ACCOUNT_ORDER};
use billing_bridge_notify::{MailBackend, NotifyConfig};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use thiserror::Error;

/// The defaults, with a comment on every setting; also printed by `billing-bridge config`.
pub const DEFAULT_CONFIG: &str = include_str!("../config.default.toml");
/// Environment variables that override settings start with this.
pub const ENV_PREFIX: &str = "BRIDGE_";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration is incomplete:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub server: ServerConfig,
    pub webhook: WebhookConfig,
    pub intake: IntakeConfig,
    pub amplify: AmplifyConfig,
    pub recurly: RecurlyConfig,
    pub provisioning: ProvisioningConfig,
    pub notify: NotifyConfig,
    pub reporting: ReportingConfig,
    pub ingest: IngestConfig,
    pub store: StoreConfig,
    pub telemetry: TelemetryConfig,
}

/// `[intake]`: the WatchTopic read beside the webhooks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    /// The WatchTopic's name; empty: none.
    pub watch_topic: String,
    #[serde(with = "humantime_serde")]
    pub watch_every: Duration,
    /// The full reconcile pass's period while a topic is read.
    #[serde(with = "humantime_serde")]
    pub reconcile_every: Duration,
}

impl IntakeConfig {
    /// The topic, when one is configured.
    pub fn watch_topic(&self) -> Option<&str> {
        Some(self.watch_topic.trim()).filter(|t| !t.is_empty())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    pub queue_capacity: usize,
    #[serde(default)]
    pub admin_token: Option<SecretString>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub secret: Option<SecretString>,
    pub header: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmplifyConfig {
    pub central_url: String,
    pub auth_url: String,
    pub platform_url: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// The provider organization: sent as `X-Axway-Tenant-Id`, and webhooks of other
    /// organizations are ignored (reference §1.3, §4.3).
    #[serde(default)]
    pub tenant_id: Option<String>,
    pub requests_per_minute: u32,
    pub api_version: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecurlySite {
    Production,
    Sandbox,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurlyConfig {
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<SecretString>,
    pub site: RecurlySite,
    pub requests_per_minute: u32,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The secret of the Recurly webhook endpoint (`recurly-signature`); unset: notifications
    /// are refused.
    #[serde(default)]
    pub webhook_secret: Option<SecretString>,
    /// How far a notification's signed timestamp may be from the clock (replays are refused).
    #[serde(with = "humantime_serde")]
    pub webhook_tolerance: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    Reject,
    LeavePending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnEnd {
    Cancel,
    Terminate,
}

/// What the bridge does when a linked Recurly subscription's billing ends outside the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBillingEnd {
    /// Tell the provider (one card); the Amplify subscription stays as it is.
    Notify,
    /// Tell the provider and archive the Amplify subscription (a `SubscriptionJob`).
    Archive,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    pub plans: bool,
    pub subscriptions: bool,
    pub account_order: Vec<AccountKind>,
    pub on_failure: OnFailure,
    pub on_end: OnEnd,
    #[serde(with = "humantime_serde")]
    pub reconcile_every: Duration,
    pub marketplace_url: String,
    pub on_billing_end: OnBillingEnd,
    /// How often every linked Recurly subscription is read, to catch notifications that were
    /// never delivered (ended billing, past-due invoices). 0s: never.
    #[serde(with = "humantime_serde")]
    pub billing_check_every: Duration,
    /// A pass that must be tried again (an upstream failing) is queued again after this long,
    /// then twice as long each time, at most `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_first: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Passes of one kind in flight at once (never two of one resource).
    pub concurrency: usize,
}

/// Which Traceability count is billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BilledCount {
    Total,
    Success,
}

/// Where traffic comes from (docs/ingest.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficSource {
    /// Traceability summary rows, counted by Amplify.
    Summary,
    /// Raw `transactionSummary` events paged from Traceability search, each id counted once.
    Search,
    /// Transactions pushed to `POST /ingest/transactions`, each id counted once.
    Push,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportingConfig {
    pub enabled: bool,
    pub source: TrafficSource,
    /// Cron expression (UTC), 5 fields or 6 with seconds first; empty: on demand only.
    pub schedule: String,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    pub max_windows_per_run: usize,
    pub repoll_windows: usize,
    pub billed_count: BilledCount,
    pub page_size: u32,
    pub concurrency: usize,
    /// RFC 3339; the first window when the store has no watermark yet.
    #[serde(default)]
    pub start_at: Option<String>,
    /// Reported windows whose per-record details are kept (for late deltas and backfills)
    /// beyond the re-polled ones; older ones keep only "done".
    pub keep_details_windows: usize,
    /// Recurly keeps idempotency keys for an undocumented time; a record left unsettled for
    /// longer is looked up in Recurly before it is sent again.
    #[serde(with = "humantime_serde")]
    pub trust_idempotency_for: Duration,
    /// How long a run holds the reporting lease without renewing it; renewed every third of it.
    /// A run whose instance died is taken over by another after this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

/// `POST /ingest/transactions` (docs/ingest.md), taken when `reporting.source` is `push`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// The bearer token senders present.
    #[serde(default)]
    pub token: Option<SecretString>,
    /// Events older than this are refused (their window may be past re-reporting).
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// Events this far ahead of the clock are refused.
    #[serde(with = "humantime_serde")]
    pub future_skew: Duration,
    /// Largest body as received (gzip or not).
    pub max_body_bytes: usize,
    /// Largest body once unzipped.
    pub max_decoded_bytes: usize,
    /// Most events in one batch.
    pub max_events: usize,
    /// Most distinct groups (subscription, quota, resource, success) one window holds; events
    /// of further new groups are refused (`too_many_groups`), so memory stays bounded.
    pub max_groups_per_window: usize,
    /// Bytes all batches in progress may hold together (as received, once unzipped, and their
    /// parsed events); a batch that finds it spent is answered 503 with `Retry-After`.
    pub max_inflight_bytes: usize,
    /// A body that has not arrived whole this long after its request began is answered 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Batches unzipped and parsed at once, off the request threads; 0: one per CPU core.
    pub parse_threads: usize,
}

impl IngestConfig {
    /// What the in-flight budget charges a parsed event (its slice, key and group index entry),
    /// on top of the body bytes.
    pub const PARSE_BYTES_PER_EVENT: usize = 64;

    /// The most one batch within every limit can hold of the in-flight budget at once: its body
    /// as received and unzipped, and its parsed events. The budget must be at least this, or such
    /// a batch could never be taken.
    pub fn largest_batch_bytes(&self) -> usize {
        self.max_body_bytes
            .saturating_add(self.max_decoded_bytes)
            .saturating_add(self.max_events.saturating_mul(Self::PARSE_BYTES_PER_EVENT))
    }

    /// Windows behind the watermark a push run re-reads, so every event the horizon lets in
    /// reaches a run: the horizon in windows, plus the window in progress and one for a run that
    /// comes late.
    pub fn windows_reached(&self, window: Duration) -> usize {
        let window = window.as_millis().max(1);
        self.horizon.as_millis().div_ceil(window) as usize + 2
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub redis_url: Option<SecretString>,
    /// The memory store's journal file; empty: nothing kept on disk.
    #[serde(default)]
    pub state_file: String,
    /// How many instances share one Redis: per-client upstream limits are divided by it.
    #[serde(default = "one")]
    pub instances: u32,
    /// An event another instance took and has not acknowledged after this long is taken over.
    #[serde(with = "humantime_serde", default = "five_minutes")]
    pub reclaim_after: Duration,
}

fn one() -> u32 {
    1
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Traces and logs: where spans go (OTLP over HTTP, off when the endpoint is empty), under which
/// service name, and the log line format.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL, e.g. `http://otel-collector:4318`; spans go to `{it}/v1/traces`.
    pub otlp_endpoint: String,
    pub service_name: String,
    pub log_format: LogFormat,
}

impl TelemetryConfig {
    /// The span export URL, when traces are on.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.trim();
        (!base.is_empty()).then(|| format!("{}/v1/traces", base.trim_end_matches('/')))
    }
}

fn is_blank(secret: &Option<SecretString>) -> bool {
    secret
        .as_ref()
        .is_none_or(|s| s.expose_secret().trim().is_empty())
}

impl BridgeConfig {
    /// The defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// As [`load`](Self::load), with the environment given (tests).
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_CONFIG));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(vec![format!(
                    "config file {} does not exist",
                    file.display()
                )]));
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: BridgeConfig = figment.merge(env).extract().map_err(Box::new)?;
        Ok(config.normalised())
    }

    /// Parses a TOML document over the defaults (tests and the demo).
    pub fn from_toml(overrides: &str) -> Result<Self, ConfigError> {
        Self::from_toml_layers(&[overrides])
    }

    /// TOML documents over the defaults, later ones winning.
    pub fn from_toml_layers(layers: &[&str]) -> Result<Self, ConfigError> {
        let figment = layers
            .iter()
            .fold(Figment::from(Toml::string(DEFAULT_CONFIG)), |f, layer| {
                f.merge(Toml::string(layer))
            });
        let config: BridgeConfig = figment.extract().map_err(Box::new)?;
        Ok(config.normalised())
    }

    /// Empty secrets mean "not set".
    /// How often the full reconcile pass runs: rarely while a WatchTopic is read.
    pub fn reconcile_every(&self) -> Duration {
        if self.intake.watch_topic().is_some() {
            self.intake.reconcile_every
        } else {
            self.provisioning.reconcile_every
        }
    }

    fn normalised(mut self) -> Self {
        for secret in [
            &mut self.server.admin_token,
            &mut self.webhook.secret,
            &mut self.amplify.client_secret,
            &mut self.recurly.api_key,
            &mut self.recurly.webhook_secret,
            &mut self.notify.teams.webhook_url,
            &mut self.notify.mail.sendgrid.api_key,
            &mut self.notify.mail.smtp.password,
            &mut self.store.redis_url,
            &mut self.ingest.token,
        ] {
            if is_blank(secret) {
                *secret = None;
            }
        }
        if self.provisioning.account_order.is_empty() {
            self.provisioning.account_order = DEFAULT_ACCOUNT_ORDER.to_vec();
        }
        self
    }

    /// What `serve` needs and is missing, each problem with the setting that fixes it.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if is_blank(&self.webhook.secret) {
            problems.push("webhook.secret is not set (BRIDGE_WEBHOOK__SECRET): without it anyone could post events".into());
        }
        if self.amplify.client_id.trim().is_empty() || is_blank(&self.amplify.client_secret) {
            problems.push("amplify.client_id and amplify.client_secret (BRIDGE_AMPLIFY__CLIENT_SECRET) are required".into());
        }
        if is_blank(&self.recurly.api_key) {
            problems.push("recurly.api_key (BRIDGE_RECURLY__API_KEY) is required".into());
        }
        if self.amplify.requests_per_minute == 0 {
            problems.push("amplify.requests_per_minute must be at least 1".into());
        }
        if let Some(topic) = self.intake.watch_topic() {
            if self.intake.watch_every < Duration::from_secs(1) {
                problems.push("intake.watch_every must be at least 1s".into());
            }
            if self.intake.reconcile_every.is_zero() {
                problems.push("intake.reconcile_every must be more than 0".into());
            }
            let valid_name = topic.len() <= 100
                && topic
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !valid_name {
                problems.push(format!(
                    "intake.watch_topic '{topic}' is no Amplify resource name (lower-case letters, digits, '-', '.')"
                ));
            }
        }
        if self.provisioning.concurrency == 0 || self.provisioning.concurrency > 64 {
            problems.push("provisioning.concurrency must be between 1 and 64".into());
        }
        let reporting = &self.reporting;
        if reporting.window.as_millis() < 1_000
            || !reporting.window.as_millis().is_multiple_of(1_000)
        {
            problems.push("reporting.window must be whole seconds, at least 1s".into());
        }
        if reporting.max_windows_per_run == 0 {
            problems.push("reporting.max_windows_per_run must be at least 1".into());
        }
        if reporting.page_size == 0 || reporting.concurrency == 0 {
            problems
                .push("reporting.page_size and reporting.concurrency must be at least 1".into());
        }
        if reporting.source == TrafficSource::Push {
            if is_blank(&self.ingest.token) {
                problems.push("reporting.source is push but ingest.token (BRIDGE_INGEST__TOKEN) is not set: senders could not be told from anyone else".into());
            }
            if self.ingest.horizon.is_zero()
                || self.ingest.horizon > Duration::from_secs(7 * 86_400)
            {
                problems.push("ingest.horizon must be between 1s and 7 days".into());
            }
            if self.ingest.max_events == 0
                || self.ingest.max_body_bytes == 0
                || self.ingest.max_decoded_bytes == 0
            {
                problems.push("ingest.max_events, ingest.max_body_bytes and ingest.max_decoded_bytes must be at least 1".into());
            }
            if self.ingest.max_inflight_bytes < self.ingest.largest_batch_bytes() {
                problems.push(format!(
                    "ingest.max_inflight_bytes ({}) must be at least max_body_bytes + max_decoded_bytes + {} x max_events ({}), or a batch at those limits could never be taken",
                    self.ingest.max_inflight_bytes,
                    IngestConfig::PARSE_BYTES_PER_EVENT,
                    self.ingest.largest_batch_bytes()
                ));
            }
            if self.ingest.body_timeout < Duration::from_millis(100) {
                problems.push("ingest.body_timeout must be at least 100ms".into());
            }
        }
        if self.store.instances == 0 {
            problems.push("store.instances must be at least 1".into());
        }
        if self.store.instances > 1 && self.store.redis_url.is_none() {
            problems.push(
                "store.instances is above 1 but store.redis_url is not set: instances must share one Redis"
                    .into(),
            );
        }
        if self.server.queue_capacity == 0 {
            problems.push("server.queue_capacity must be at least 1".into());
        }
        match self.notify.mail.backend {
            MailBackend::Off => {}
            MailBackend::Sendgrid if is_blank(&self.notify.mail.sendgrid.api_key) => problems.push(
                "notify.mail.backend is sendgrid but notify.mail.sendgrid.api_key is not set"
                    .into(),
            ),
            MailBackend::Smtp if self.notify.mail.smtp.host.trim().is_empty() => problems
                .push("notify.mail.backend is smtp but notify.mail.smtp.host is not set".into()),
            _ => {}
        }
        if self.notify.mail.backend != MailBackend::Off && !self.notify.mail.from.contains('@') {
            problems.push("notify.mail.from must be the sender's address when mail is on".into());
        }
        if self.provisioning.subscriptions
            && self.notify.mail.backend != MailBackend::Off
            && self.provisioning.marketplace_url.trim().is_empty()
        {
            problems.push(
                "provisioning.marketplace_url is empty: approval mails would link nowhere".into(),
            );
        }
        problems
    }

    /// Fails with every problem at once, so a user fixes them in one go.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_topic_makes_the_full_reconcile_pass_a_daily_backstop() {
        let config =
            BridgeConfig::from_toml("[intake]\nwatch_topic = \"billing-bridge-watch\"").unwrap();
        assert_eq!(config.intake.watch_topic(), Some("billing-bridge-watch"));
        assert_eq!(config.intake.watch_every, Duration::from_secs(60));
        assert_eq!(config.reconcile_every(), Duration::from_secs(24 * 3600));
        let bad =
            BridgeConfig::from_toml("[intake]\nwatch_topic = \"../events\"\nwatch_every = \"0s\"")
                .unwrap();
        let problems = bad.problems().join("\n");
        assert!(problems.contains("intake.watch_topic"), "{problems}");
        assert!(problems.contains("intake.watch_every"), "{problems}");
    }

    #[test]
    fn the_commented_defaults_load_and_name_what_serve_still_needs() {
        let config = BridgeConfig::from_toml("").unwrap();
        assert_eq!(config.server.max_body_bytes, 1_048_576);
        assert_eq!(config.amplify.requests_per_minute, 25);
        assert_eq!(config.recurly.site, RecurlySite::Production);
        assert_eq!(
            config.provisioning.reconcile_every,
            Duration::from_secs(900)
        );
        assert_eq!(
            config.provisioning.account_order,
            DEFAULT_ACCOUNT_ORDER.to_vec()
        );
        assert!(config.webhook.secret.is_none());
        assert_eq!(config.intake.watch_topic(), None);
        assert_eq!(config.reconcile_every(), Duration::from_secs(900));
        let problems = config.problems().join("\n");
        for needed in ["webhook.secret", "amplify.client_secret", "recurly.api_key"] {
            assert!(problems.contains(needed), "{problems}");
        }
        // The marketplace link is needed only when approval mails are sent.
        assert!(!problems.contains("marketplace_url"), "{problems}");
        let mailing = BridgeConfig::from_toml("[notify.mail]\nbackend = \"smtp\"\nfrom = \"a@b.example\"\n[notify.mail.smtp]\nhost = \"relay\"").unwrap();
        assert!(mailing.problems().join("\n").contains("marketplace_url"));
    }

    #[test]
    fn a_file_then_the_environment_override_the_defaults() {
        let dir = std::env::temp_dir().join(format!("bridge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bridge.toml");
        std::fs::write(&file, "[recurly]\nsite = \"sandbox\"\nrequests_per_minute = 400\n[provisioning]\naccount_order = [\"team\"]\n").unwrap();
        // Env::prefixed reads the process environment; a unique prefix keeps tests apart.
        let prefix = format!("BRIDGE_TEST_{}_", std::process::id());
        // SAFETY: the variables are unique to this test and set before any thread reads them.
        unsafe {
            std::env::set_var(format!("{prefix}RECURLY__API_KEY"), "key-from-env");
            std::env::set_var(format!("{prefix}NOTIFY__TEAMS__WEBHOOK_URL"), "");
        }
        let config =
            BridgeConfig::load_from(Some(&file), Env::prefixed(&prefix).split("__")).unwrap();
        assert_eq!(config.recurly.site, RecurlySite::Sandbox);
        assert_eq!(config.recurly.requests_per_minute, 400);
        assert_eq!(config.provisioning.account_order, vec![AccountKind::Team]);
        assert_eq!(
            config.recurly.api_key.as_ref().unwrap().expose_secret(),
            "key-from-env"
        );
        assert!(
            config.notify.teams.webhook_url.is_none(),
            "an empty secret means unset"
        );
        assert!(
            !format!("{config:?}").contains("key-from-env"),
            "secrets are redacted in Debug"
        );
    }

    #[test]
    fn traces_are_off_by_default_and_go_to_the_collectors_traces_path() {
        let config = BridgeConfig::from_toml("").unwrap();
        assert_eq!(config.telemetry.traces_url(), None);
        assert_eq!(config.telemetry.service_name, "billing-bridge");
        assert_eq!(config.telemetry.log_format, LogFormat::Text);
        let config = BridgeConfig::from_toml(
            "[telemetry]\notlp_endpoint = \"http://collector:4318/\"\nlog_format = \"json\"",
        )
        .unwrap();
        assert_eq!(
            config.telemetry.traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
        assert!(BridgeConfig::from_toml("[telemetry]\nlog_format = \"xml\"").is_err());
    }

    #[test]
    fn mistakes_are_reported_clearly() {
        let err = BridgeConfig::from_toml("[server]\nlisten_on = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_on"), "{err}");
        let err = BridgeConfig::from_toml("[provisioning]\non_failure = \"explode\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("explode") || err.contains("on_failure"),
            "{err}"
        );
        let missing = BridgeConfig::load_from(
            Some(Path::new("/nonexistent/bridge.toml")),
            Env::prefixed("NOPE_"),
        );
        assert!(matches!(missing, Err(ConfigError::Invalid(p)) if p[0].contains("does not exist")));
    }

    #[test]
    fn the_ingest_budget_must_hold_one_batch_at_every_limit() {
        let push = "[reporting]\nsource = \"push\"\n[ingest]\ntoken = \"t\"\n";
        let config = BridgeConfig::from_toml(push).unwrap();
        assert_eq!(config.ingest.max_inflight_bytes, 268_435_456);
        assert_eq!(config.ingest.body_timeout, Duration::from_secs(30));
        assert_eq!(
            config.ingest.largest_batch_bytes(),
            16_777_216 + 134_217_728 + 3_200_000
        );
        assert!(!config.problems().join("\n").contains("ingest."));
        let small = BridgeConfig::from_toml(&format!(
            "{push}max_inflight_bytes = 100000000\nbody_timeout = \"10ms\""
        ))
        .unwrap();
        let problems = small.problems().join("\n");
        assert!(problems.contains("ingest.max_inflight_bytes"), "{problems}");
        assert!(problems.contains("ingest.body_timeout"), "{problems}");
    }
}
