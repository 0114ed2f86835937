//! Checks whole recorded exchanges (the sandbox's `/_sandbox/requests` entries) against the
//! contract: the request body a client sent and the answer it got.

use serde_json::Value;

use crate::{RecurlyContract, Violation, Violations};

/// Who is under test when an exchange is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangePolicy {
    /// The client is under test (the bridge's own traffic): every request body it sent must
    /// conform, and so must every answer.
    ClientMustConform,
    /// The server is under test (conformance tests that send bad requests on purpose): a request
    /// outside the contract is fine as long as it was refused with a 4xx; accepting it (2xx) is
    /// the violation. Every answer must conform.
    ServerMustRefuseInvalid,
}

/// Checks recorded exchanges, each a JSON object with `method`, `path` (with `prefix`, e.g.
/// `/recurly`, in front of the Recurly path), `body`, `status` and `response_body`, as
/// `GET /_sandbox/requests?upstream=recurly` lists them. Returns every violation found, each
/// labelled with the exchange's `seq` when it has one.
pub fn check_recorded_exchanges(
    entries: &[Value],
    prefix: &str,
    policy: ExchangePolicy,
) -> Result<(), Violations> {
    let contract = RecurlyContract::get();
    let mut found = Vec::new();
    for entry in entries {
        let Recorded {
            seq,
            method,
            full_path,
            path,
            status,
        } = Recorded::read(entry, prefix);
        let tag = |violations: Violations| {
            violations.0.into_iter().map(|v| Violation {
                operation: format!("{seq}{} [{method} {full_path} → {status:?}]", v.operation),
                ..v
            })
        };

        let request_body = entry.get("body").unwrap_or(&Value::Null);
        if (!request_body.is_null() || matches!(method, "POST" | "PUT" | "PATCH"))
            && let Err(v) = contract.validate_request(method, path, &json_or_raw(request_body))
        {
            let refused = status.is_some_and(|s| (400..500).contains(&s));
            match policy {
                ExchangePolicy::ClientMustConform => found.extend(tag(v)),
                ExchangePolicy::ServerMustRefuseInvalid if refused => {}
                ExchangePolicy::ServerMustRefuseInvalid => {
                    found.extend(tag(v).map(|v| Violation {
                        message: format!(
                            "the server accepted a request outside the contract: {}",
                            v.message
                        ),
                        ..v
                    }));
                }
            }
        }

        let Some(status) = status else {
            found.push(Violation {
                operation: format!("{seq}{method} {full_path}"),
                pointer: String::new(),
                message: "the exchange has no status (no answer was recorded)".into(),
            });
            continue;
        };
        let response_body = entry.get("response_body").unwrap_or(&Value::Null);
        if let Err(v) =
            contract.validate_response(method, path, status, &json_or_raw(response_body))
        {
            found.extend(tag(v));
        }
    }
    Violations(found).into_result()
}

/// What identifies a recorded exchange in a violation, read from the recorder's entry.
struct Recorded<'a> {
    /// `#seq ` when the entry has one.
    seq: String,
    method: &'a str,
    /// The path as recorded, with the upstream's prefix.
    full_path: &'a str,
    /// The path the contract knows.
    path: &'a str,
    status: Option<u16>,
}

impl<'a> Recorded<'a> {
    fn read(entry: &'a Value, prefix: &str) -> Self {
        let full_path = entry.get("path").and_then(Value::as_str).unwrap_or("?");
        Recorded {
            seq: entry
                .get("seq")
                .map(|s| format!("#{s} "))
                .unwrap_or_default(),
            method: entry.get("method").and_then(Value::as_str).unwrap_or("?"),
            full_path,
            path: full_path.strip_prefix(prefix).unwrap_or(full_path),
            status: entry
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok()),
        }
    }
}

/// The recorder keeps bodies as JSON when they parse and as text otherwise; an empty text is no
/// body at all.
fn json_or_raw(body: &Value) -> Value {
    match body {
        Value::String(s) if s.trim().is_empty() => Value::Null,
        other => other.clone(),
    }
}

/// Checks that every success answer among recorded exchanges (as `check_recorded_exchanges`
/// takes them) carries every field the spec documents for it, `null` or `[]` when unset: the
/// sandbox's answers, since the product never sends answers.
pub fn check_recorded_answers_complete(entries: &[Value], prefix: &str) -> Result<(), Violations> {
    let contract = RecurlyContract::get();
    let mut found = Vec::new();
    for entry in entries {
        let Recorded {
            seq,
            method,
            full_path,
            path,
            status,
        } = Recorded::read(entry, prefix);
        let Some(status) = status else {
            continue;
        };
        let body = json_or_raw(entry.get("response_body").unwrap_or(&Value::Null));
        if let Err(v) = contract.missing_response_fields(method, path, status, &body) {
            found.extend(v.0.into_iter().map(|v| Violation {
                operation: format!("{seq}{} [{method} {full_path}]", v.operation),
                ..v
            }));
        }
    }
    Violations(found).into_result()
}
