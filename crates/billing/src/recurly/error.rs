//! Recurly's errors, sorted into what a retry can fix and what it cannot (reference §1.3, §1.5).

use std::time::Duration;

use billing_bridge_upstream::Transient;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RecurlyError {
    /// Recurly answered with an error type: validation, not found, bad request, ...
    #[error("Recurly {operation}: {error_type} ({status}): {message}")]
    Api {
        operation: &'static str,
        status: u16,
        error_type: String,
        message: String,
        /// `(param, message)` pairs of a validation error.
        params: Vec<(String, String)>,
        request_id: Option<String>,
    },
    #[error("Recurly {operation}: rate limited; the window resets in {retry_after:?}")]
    RateLimited {
        operation: &'static str,
        retry_after: Option<Duration>,
    },
    #[error("Recurly {operation}: server error {status}; it may recover by itself")]
    Server {
        operation: &'static str,
        status: u16,
        request_id: Option<String>,
    },
    #[error("Recurly {operation}: {detail}")]
    Network {
        operation: &'static str,
        detail: String,
    },
    #[error("Recurly {operation}: unexpected answer ({status}): {detail}")]
    Unexpected {
        operation: &'static str,
        status: u16,
        detail: String,
    },
}

impl RecurlyError {
    pub fn error_type(&self) -> Option<&str> {
        match self {
            RecurlyError::Api { error_type, .. } => Some(error_type),
            RecurlyError::RateLimited { .. } => Some("rate_limited"),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.error_type() == Some("not_found")
    }

    /// 422 "Code has already been taken.": the object exists (perhaps from an earlier try
    /// whose answer was lost).
    pub fn is_code_taken(&self) -> bool {
        matches!(self, RecurlyError::Api { error_type, message, params, .. }
            if error_type == "validation"
                && (message.contains("already been taken")
                    || params.iter().any(|(p, m)| p == "code" && m.contains("taken"))))
    }
}

impl Transient for RecurlyError {
    fn is_transient(&self) -> bool {
        match self {
            RecurlyError::RateLimited { .. }
            | RecurlyError::Server { .. }
            | RecurlyError::Network { .. } => true,
            // A concurrent change on the same account; worth another try shortly (reference §1.5).
            RecurlyError::Api { error_type, .. } => error_type == "simultaneous_request",
            RecurlyError::Unexpected { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RecurlyError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
