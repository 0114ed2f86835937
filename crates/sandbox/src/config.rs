//! What a sandbox run can be told: which credentials it accepts, its rate limits, how much it
//! records. Defaults match the real services as described in `shared/reference/`.

use serde::{Deserialize, Serialize};

/// The whole sandbox configuration. Every field has a default, so `{}` is a valid config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    pub amplify: AmplifySettings,
    pub recurly: RecurlySettings,
    pub teams: TeamsSettings,
    pub sendgrid: SendgridSettings,
    pub recorder: RecorderSettings,
    /// Worker threads of the HTTP server; `None` means one per core.
    pub workers: Option<usize>,
}

/// An accepted credential. `None` accepts any non-empty value, as a sandbox should by default;
/// `Some` accepts exactly that value. An empty or missing credential is always refused.
pub fn credential_matches(expected: &Option<String>, given: Option<&str>) -> bool {
    match (expected, given) {
        (_, None) => false,
        (_, Some("")) => false,
        (None, Some(_)) => true,
        (Some(want), Some(got)) => want == got,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmplifySettings {
    /// Service-account client id accepted by the token endpoint (`None`: any non-empty).
    pub client_id: Option<String>,
    /// Service-account client secret accepted by the token endpoint (`None`: any non-empty).
    pub client_secret: Option<String>,
    /// Lifetime of issued access tokens; the real platform answers `expires_in: 1800`.
    pub token_ttl_secs: u64,
    /// Requests per minute per client on Central, Platform and Traceability (reference §1.4:
    /// 25). `0` switches the limit off.
    pub requests_per_minute: u32,
    /// The provider organization id placed in webhook envelopes and resources.
    pub org_id: String,
    /// How long a webhook delivery may take before it is given up (Amplify never retries).
    pub webhook_timeout_ms: u64,
}

impl Default for AmplifySettings {
    fn default() -> Self {
        Self {
            client_id: None,
            client_secret: None,
            token_ttl_secs: 1800,
            requests_per_minute: 25,
            org_id: "100000142".to_owned(),
            webhook_timeout_ms: 5_000,
        }
    }
}

/// Which Recurly site the sandbox pretends to be; the two have different rate limits
/// (reference §1.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecurlyMode {
    /// 400 requests/minute, every method counts.
    #[default]
    Sandbox,
    /// 1,000 GET requests/minute; POST, PUT and DELETE are not limited.
    Production,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecurlySettings {
    /// Private API key accepted as the Basic-auth user name (`None`: any non-empty).
    pub api_key: Option<String>,
    pub mode: RecurlyMode,
    /// Overrides the per-minute limit of the mode (tests use a small one); `Some(0)` disables it.
    pub requests_per_minute: Option<u32>,
    /// How a failed renewal payment is retried before the subscription expires.
    pub dunning: DunningSettings,
}

/// Recurly's dunning: a renewal invoice that fails to collect is `past_due` and retried; after
/// the last failed attempt the invoice is `failed` and the subscription expires. A site sets its
/// own schedule in the admin console (dunning campaigns), so both numbers are configurable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DunningSettings {
    /// Collection attempts in all, the first one at renewal included (at least 1).
    pub attempts: u32,
    /// Sandbox-clock seconds between two attempts.
    pub retry_interval_secs: u64,
}

impl Default for DunningSettings {
    fn default() -> Self {
        Self {
            attempts: 3,
            retry_interval_secs: 86_400,
        }
    }
}

impl RecurlySettings {
    /// Requests per minute that count against the limit, or `None` when unlimited.
    pub fn per_minute_limit(&self) -> Option<u32> {
        let limit = self.requests_per_minute.unwrap_or(match self.mode {
            RecurlyMode::Sandbox => 400,
            RecurlyMode::Production => 1_000,
        });
        (limit > 0).then_some(limit)
    }

    /// Whether a request with this method counts against the limit in this mode.
    pub fn counts_against_limit(&self, method: &str) -> bool {
        match self.mode {
            RecurlyMode::Sandbox => true,
            RecurlyMode::Production => method == "GET" || method == "HEAD",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamsSettings {
    /// Requests per second per webhook URL before Teams throttles (reference §8.1: 4).
    pub requests_per_second: u32,
}

impl Default for TeamsSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 4,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendgridSettings {
    /// API key accepted as the Bearer token (`None`: any non-empty).
    pub api_key: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderSettings {
    /// How many upstream requests are kept for `/_sandbox/requests`; the oldest go first.
    /// `0` turns recording off (load tests).
    pub limit: usize,
}

impl Default for RecorderSettings {
    fn default() -> Self {
        Self { limit: 10_000 }
    }
}
