//! Amplify's errors, sorted into what a retry can fix and what it cannot.

use std::time::Duration;

use billing_bridge_upstream::Transient;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AmplifyError {
    #[error(
        "Amplify {operation}: the service account was refused ({status}): check the client id and secret"
    )]
    Unauthorized {
        operation: &'static str,
        status: u16,
    },
    #[error("Amplify {operation}: not found")]
    NotFound { operation: &'static str },
    #[error("Amplify {operation}: the resource changed meanwhile (428); read it again")]
    Conflict { operation: &'static str },
    #[error("Amplify {operation}: rate limited (25 requests/minute per client)")]
    RateLimited {
        operation: &'static str,
        retry_after: Option<Duration>,
    },
    #[error("Amplify {operation}: server error {status}; it may recover by itself")]
    Server {
        operation: &'static str,
        status: u16,
    },
    #[error("Amplify {operation}: refused ({status}): {detail}")]
    Refused {
        operation: &'static str,
        status: u16,
        detail: String,
    },
    /// 410 on a WatchTopic read: the events after the asked sequence id are past retention;
    /// `newest` is the topic's last sequence id (`X-Axway-Max-Sequence-Id`, as the SDK reads it).
    #[error("Amplify {operation}: the asked events are past retention (410)")]
    Gone {
        operation: &'static str,
        newest: Option<i64>,
    },
    #[error("Amplify {operation}: {detail}")]
    Network {
        operation: &'static str,
        detail: String,
    },
    #[error("Amplify {operation}: unexpected answer: {detail}")]
    Unexpected {
        operation: &'static str,
        detail: String,
    },
}

impl Transient for AmplifyError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            AmplifyError::RateLimited { .. }
                | AmplifyError::Server { .. }
                | AmplifyError::Network { .. }
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AmplifyError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
