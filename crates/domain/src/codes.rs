//! The codes that link Amplify resources to billing resources, kept exactly as the integration
//! this product replaces named them (design.md §1), so existing Recurly data stays linked.

use serde::Deserialize;
use thiserror::Error;

use crate::amplify::Owner;

/// Recurly codes: letters, digits, `_`, `+`, `-`, at most 50 (Recurly reference §3.1).
pub const MAX_CODE_LEN: usize = 50;
/// Recurly `accounting_code`: lowercase letters, digits, `_`, `+`, `-`, at most 20.
pub const MAX_ACCOUNTING_CODE_LEN: usize = 20;

#[derive(Debug, Error, PartialEq)]
pub enum CodeError {
    #[error("billing code '{code}' is longer than {MAX_CODE_LEN} characters")]
    TooLong { code: String },
    #[error(
        "billing code '{code}' has characters Recurly refuses (allowed: letters, digits, _ + -)"
    )]
    BadCharacters { code: String },
    #[error("the Amplify id is empty")]
    EmptyId,
}

fn checked(prefix: &str, id: &str) -> Result<String, CodeError> {
    if id.is_empty() {
        return Err(CodeError::EmptyId);
    }
    let code = format!("{prefix}{id}");
    if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'))
    {
        return Err(CodeError::BadCharacters { code });
    }
    if code.len() > MAX_CODE_LEN {
        return Err(CodeError::TooLong { code });
    }
    Ok(code)
}

/// `amplify-plan-{ProductPlan metadata.id}`.
pub fn billing_plan_code(plan_id: &str) -> Result<String, CodeError> {
    checked("amplify-plan-", plan_id)
}

/// `amplify-quota-{Quota metadata.id}`.
pub fn usage_add_on_code(quota_id: &str) -> Result<String, CodeError> {
    checked("amplify-quota-", quota_id)
}

/// Recurly defaults `accounting_code` to the plan or add-on code, which is too long for its own
/// 20-character rule, so one is always set: a short prefix and the tail of the Amplify id, where
/// its ids vary most (the head encodes the server and start time).
fn accounting_code(prefix: &str, id: &str) -> String {
    let cleaned: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let room = MAX_ACCOUNTING_CODE_LEN - prefix.len();
    let tail = &cleaned[cleaned.len().saturating_sub(room)..];
    format!("{prefix}{tail}")
}

pub fn plan_accounting_code(plan_id: &str) -> String {
    accounting_code("ap-", plan_id)
}

pub fn add_on_accounting_code(quota_id: &str) -> String {
    accounting_code("aq-", quota_id)
}

/// The three forms of billing account code, tried in a configurable order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    User,
    Team,
    Org,
}

/// The default order: the most specific owner first. The integration's own precedence is
/// unknown (Amplify reference §6, open question 5).
pub const DEFAULT_ACCOUNT_ORDER: [AccountKind; 3] =
    [AccountKind::User, AccountKind::Team, AccountKind::Org];

/// Candidate billing account codes for a subscription owner, in `order`: `amplify-user-{id}`
/// from `owner.user.id`, `amplify-team-{id}` from `owner.id`, `amplify-org-{id}` from
/// `owner.organization.id` (which id feeds which form is inferred, Amplify reference §6).
pub fn billing_account_codes(owner: &Owner, order: &[AccountKind]) -> Vec<String> {
    order
        .iter()
        .filter_map(|kind| {
            let (prefix, id) = match kind {
                AccountKind::User => ("amplify-user-", owner.user.as_ref().map(|u| u.id.as_str())),
                AccountKind::Team => ("amplify-team-", owner.id.as_deref()),
                AccountKind::Org => (
                    "amplify-org-",
                    owner.organization.as_ref().map(|o| o.id.as_str()),
                ),
            };
            checked(prefix, id?).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amplify::IdRef;

    #[test]
    fn plan_and_add_on_codes_follow_the_seed_naming() {
        let id = "8a2e89a1844076b20184436063bd2747";
        assert_eq!(billing_plan_code(id).unwrap(), format!("amplify-plan-{id}"));
        assert_eq!(
            usage_add_on_code(id).unwrap(),
            format!("amplify-quota-{id}")
        );
        assert_eq!(billing_plan_code(""), Err(CodeError::EmptyId));
        assert!(matches!(
            billing_plan_code("a b"),
            Err(CodeError::BadCharacters { .. })
        ));
        assert!(matches!(
            billing_plan_code(&"a".repeat(40)),
            Err(CodeError::TooLong { .. })
        ));
    }

    #[test]
    fn accounting_codes_fit_recurlys_rule() {
        let code = plan_accounting_code("8A2E89A1844076B20184436063BD2747");
        assert_eq!(code, "ap-20184436063bd2747");
        assert_eq!(code.len(), MAX_ACCOUNTING_CODE_LEN);
        assert!(
            code.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_eq!(add_on_accounting_code("abc"), "aq-abc");
    }

    #[test]
    fn account_codes_come_in_the_configured_order_and_skip_missing_ids() {
        let owner = Owner {
            id: Some("e33e2081-9025-4939-9741-c1dddae11017".into()),
            organization: Some(IdRef {
                id: "650130132060094".into(),
            }),
            user: None,
        };
        assert_eq!(
            billing_account_codes(&owner, &DEFAULT_ACCOUNT_ORDER),
            vec![
                "amplify-team-e33e2081-9025-4939-9741-c1dddae11017".to_owned(),
                "amplify-org-650130132060094".to_owned()
            ]
        );
        assert_eq!(
            billing_account_codes(&owner, &[AccountKind::Org]),
            vec!["amplify-org-650130132060094".to_owned()]
        );
    }
}

/// Longest `Idempotency-Key` sent. Recurly documents no maximum; 64 is a guess (Recurly
/// reference §1.5) kept here so it can be corrected in one place.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 64;

/// FNV-1a over `bytes` from `seed`: stable across Rust versions and platforms, unlike std's
/// hasher, because keys must be the same after a restart or an upgrade.
fn fnv1a64(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The deterministic `Idempotency-Key` of one logical write: the operation and the ids it acts
/// on, so a retry after a crash or on another instance reuses it. Keys that would be too long
/// keep the operation readable and replace the ids with a 128-bit digest of them.
pub fn idempotency_key(operation: &str, ids: &[&str]) -> String {
    let plain = format!("{operation}:{}", ids.join(":"));
    if plain.len() <= MAX_IDEMPOTENCY_KEY_LEN {
        return plain;
    }
    let joined = ids.join(":");
    let high = fnv1a64(0xcbf2_9ce4_8422_2325, joined.as_bytes());
    let low = fnv1a64(0x84222325_cbf29ce4, joined.as_bytes());
    let op: String = operation
        .chars()
        .take(MAX_IDEMPOTENCY_KEY_LEN - 33)
        .collect();
    format!("{op}:{high:016x}{low:016x}")
}

#[cfg(test)]
mod idempotency_tests {
    use super::*;

    #[test]
    fn keys_are_stable_readable_when_short_and_bounded_when_long() {
        let plan = "8a2e89a1844076b20184436063bd2747";
        assert_eq!(
            idempotency_key("create-plan", &[plan]),
            format!("create-plan:{plan}")
        );
        let long = idempotency_key(
            "usage",
            &[plan, "8a2e89a1844076b20184436065262750", "1700000000"],
        );
        assert!(long.len() <= MAX_IDEMPOTENCY_KEY_LEN, "{long}");
        assert!(long.starts_with("usage:"));
        // The digest is part of the contract with Recurly's stored keys: it must never change.
        assert_eq!(
            long,
            idempotency_key(
                "usage",
                &[plan, "8a2e89a1844076b20184436065262750", "1700000000"]
            )
        );
        assert_ne!(
            long,
            idempotency_key(
                "usage",
                &[plan, "8a2e89a1844076b20184436065262750", "1700003600"]
            )
        );
        assert_eq!(fnv1a64(0xcbf2_9ce4_8422_2325, b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
