//! Recurly's error answers: the `{"error":{type,message,params}}` body and the status each
//! `ErrorTypeEnum` value is sent with (reference §1.3).

use actix_web::http::StatusCode;
use serde_json::{Value, json};

/// One field a request got wrong, as Recurly lists it under `error.params`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Invalid {
    pub param: String,
    pub message: String,
}

impl Invalid {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// An error Recurly would answer with; turned into a response by [`ApiError::body`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub(crate) struct ApiError {
    pub kind: &'static str,
    pub message: String,
    pub params: Vec<Invalid>,
}

impl ApiError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            params: Vec::new(),
        }
    }

    pub fn not_found(resource: &str, id: &str) -> Self {
        Self::new(
            "not_found",
            format!("Couldn't find {resource} with id = {id}"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new("bad_request", message)
    }

    /// A 422 whose message reads like Recurly's ("Code has already been taken.").
    pub fn validation(params: Vec<Invalid>) -> Self {
        let message = params
            .iter()
            .map(|p| format!("{} {}", humanize(&p.param), p.message))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            kind: "validation",
            message: format!("{message}."),
            params,
        }
    }

    /// A 422 with a message of its own, e.g. "You already have a subscription to this plan."
    pub fn validation_message(message: impl Into<String>, param: &str) -> Self {
        let message = message.into();
        Self {
            kind: "validation",
            params: vec![Invalid::new(
                param,
                message.trim_end_matches('.').to_owned(),
            )],
            message,
        }
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.kind)
    }

    pub fn body(&self) -> Value {
        let params: Vec<Value> = self
            .params
            .iter()
            .map(|p| json!({"param": p.param, "message": p.message}))
            .collect();
        json!({"error": {"type": self.kind, "message": self.message, "params": params}})
    }
}

/// "accounting_code" → "Accounting code"; nested params keep their path ("add_ons[0].code").
fn humanize(param: &str) -> String {
    let spaced = param.replace('_', " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
}

/// The status Recurly sends each error type with (reference §1.3, read from the Ruby client's
/// error class hierarchy).
pub(crate) fn status_of(kind: &str) -> StatusCode {
    match kind {
        "bad_request" | "invalid_content_type" => StatusCode::BAD_REQUEST,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "invalid_api_key" | "invalid_permissions" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "unknown_api_version" | "unavailable_in_api_version" | "invalid_api_version" => {
            StatusCode::NOT_ACCEPTABLE
        }
        "validation"
        | "missing_feature"
        | "transaction"
        | "simultaneous_request"
        | "immutable_subscription"
        | "invalid_token" => StatusCode::UNPROCESSABLE_ENTITY,
        "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_code_reads_like_recurly() {
        let err = ApiError::validation(vec![Invalid::new("code", "has already been taken")]);
        assert_eq!(err.message, "Code has already been taken.");
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.body()["error"]["params"][0]["param"], "code");
    }

    #[test]
    fn each_type_has_the_status_of_its_ruby_class() {
        assert_eq!(status_of("invalid_api_key"), StatusCode::FORBIDDEN);
        assert_eq!(status_of("invalid_api_version"), StatusCode::NOT_ACCEPTABLE);
        assert_eq!(
            status_of("simultaneous_request"),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(status_of("rate_limited"), StatusCode::TOO_MANY_REQUESTS);
    }
}
