//! The resource kinds Central serves (group, plural, scope, subresources; reference §2.2), the
//! URL shapes that address them, Central's error body and its timestamp and id formats.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Value, json};

/// One resource kind as the API server describes it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KindSpec {
    pub kind: &'static str,
    pub group: &'static str,
    pub plural: &'static str,
    /// The kind this one lives inside (`Quota` inside `ProductPlan`), if any.
    pub scope: Option<&'static str>,
    /// Named subresources writable with `PUT …/{name}/{sub}`; `x-*` extensions always are.
    pub subresources: &'static [&'static str],
}

/// Every kind the emulator stores (reference §2.2 tables; SDK `*SubResourceName`).
pub(crate) const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: "Product",
        group: "catalog",
        plural: "products",
        scope: None,
        subresources: &["icon", "latestrelease", "references", "state", "status"],
    },
    KindSpec {
        kind: "ProductPlan",
        group: "catalog",
        plural: "productplans",
        scope: None,
        subresources: &["references", "state", "status"],
    },
    KindSpec {
        kind: "Quota",
        group: "catalog",
        plural: "quotas",
        scope: Some("ProductPlan"),
        subresources: &["status"],
    },
    KindSpec {
        kind: "ProductPlanUnit",
        group: "catalog",
        plural: "productplanunits",
        scope: None,
        subresources: &[],
    },
    KindSpec {
        kind: "Subscription",
        group: "catalog",
        plural: "subscriptions",
        scope: None,
        subresources: &[
            "approval",
            "billing",
            "marketplace",
            "references",
            "state",
            "status",
        ],
    },
    KindSpec {
        kind: "SubscriptionJob",
        group: "catalog",
        plural: "subscriptionjobs",
        scope: Some("Subscription"),
        subresources: &["status"],
    },
    KindSpec {
        kind: "Marketplace",
        group: "catalog",
        plural: "marketplaces",
        scope: None,
        subresources: &["billing"],
    },
    KindSpec {
        kind: "Integration",
        group: "management",
        plural: "integrations",
        scope: None,
        subresources: &[],
    },
    KindSpec {
        kind: "Secret",
        group: "management",
        plural: "secrets",
        scope: Some("Integration"),
        subresources: &[],
    },
    KindSpec {
        kind: "Webhook",
        group: "management",
        plural: "webhooks",
        scope: Some("Integration"),
        subresources: &[],
    },
    KindSpec {
        kind: "ResourceHook",
        group: "management",
        plural: "resourcehooks",
        scope: Some("Integration"),
        subresources: &[],
    },
    KindSpec {
        kind: "WatchTopic",
        group: "management",
        plural: "watchtopics",
        scope: None,
        subresources: &[],
    },
];

/// API versions the server answers; both serve the same resources (reference §2.1).
pub(crate) const API_VERSIONS: &[&str] = &["v1", "v1alpha1"];

pub(crate) fn kind_named(kind: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|k| k.kind == kind)
}

fn kind_with_plural(group: &str, plural: &str) -> Option<&'static KindSpec> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.plural == plural)
}

impl KindSpec {
    pub fn scope_spec(&self) -> Option<&'static KindSpec> {
        self.scope.and_then(kind_named)
    }

    /// Whether `PUT …/{name}/{sub}` is allowed for this kind.
    pub fn accepts_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub) || is_extension(sub)
    }
}

/// Custom extension subresources are named `x-…` (reference §2.3: the prefix is [I]).
pub(crate) fn is_extension(sub: &str) -> bool {
    sub.starts_with("x-") && sub.len() > 2
}

/// `/{group}/{version}[/{scopePlural}/{scopeName}]/{plural}/{name}`, the form of
/// `metadata.selfLink` (reference §2.4).
pub(crate) fn self_link(spec: &KindSpec, version: &str, scope: Option<&str>, name: &str) -> String {
    match (spec.scope_spec(), scope) {
        (Some(scope_spec), Some(scope_name)) => format!(
            "/{}/{}/{}/{}/{}/{}",
            spec.group, version, scope_spec.plural, scope_name, spec.plural, name
        ),
        _ => format!("/{}/{}/{}/{}", spec.group, version, spec.plural, name),
    }
}

/// What a `/apis/...` path addresses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub spec: &'static KindSpec,
    pub version: String,
    /// The scope name from the path; `None` for unscoped kinds and for the across-scopes listing.
    pub scope: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Reads `/apis/{g}/{v}/...` (the part after `/apis/` given as segments) per reference §2.2.
pub(crate) fn parse_target(segments: &[&str]) -> Option<Target> {
    let [group, version, rest @ ..] = segments else {
        return None;
    };
    if !API_VERSIONS.contains(version) || rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let first = kind_with_plural(group, rest.first()?)?;
    // A scoped collection is `{scopePlural}/{scopeName}/{plural}`: the third segment names a
    // kind living inside the first.
    let scoped_child = rest
        .get(2)
        .and_then(|p| kind_with_plural(group, p))
        .filter(|child| child.scope == Some(first.kind));
    let target = |spec, scope: Option<&str>, name: Option<&&str>, sub: Option<&&str>| Target {
        spec,
        version: version.to_string(),
        scope: scope.map(str::to_owned),
        name: name.map(|n| n.to_string()),
        subresource: sub.map(|s| s.to_string()),
    };
    match (scoped_child, rest.len()) {
        (Some(child), 3..=5) => Some(target(child, Some(rest[1]), rest.get(3), rest.get(4))),
        (None, 1) => Some(target(first, None, None, None)),
        // A single item of a scoped kind needs its scope in the path.
        (None, 2 | 3) if first.scope.is_none() => {
            Some(target(first, None, rest.get(1), rest.get(2)))
        }
        _ => None,
    }
}

/// Central's timestamp form, `2023-11-16T18:50:56.238+0000` (reference §2.4).
pub(crate) fn central_timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

/// Parses Central's timestamp form (offset without colon), or RFC 3339.
pub(crate) fn parse_central_timestamp(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.3f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A new `metadata.id`: 32 lowercase hex digits (reference §2.4).
pub(crate) fn new_resource_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A failed API call: the status and what to tell the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, detail)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(409, detail)
    }

    pub fn response(&self) -> HttpResponse {
        central_error(self.status, &self.detail)
    }
}

/// Central's error body `{"errors":[{status,title,detail}]}` (reference §2.4).
pub(crate) fn central_error_body(status: u16, detail: &str) -> Value {
    let title = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    json!({"errors": [{"status": status, "title": title, "detail": detail}]})
}

pub(crate) fn central_error(status: u16, detail: &str) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(code).json(central_error_body(status, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str) -> Option<Target> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        parse_target(&segments)
    }

    #[test]
    fn paths_of_reference_2_2_resolve_to_kind_scope_name_and_subresource() {
        let t = parse("catalog/v1/products").unwrap();
        assert_eq!((t.spec.kind, t.name), ("Product", None));
        let t = parse("catalog/v1alpha1/subscriptions/s1/approval").unwrap();
        assert_eq!(t.spec.kind, "Subscription");
        assert_eq!(t.version, "v1alpha1");
        assert_eq!(t.name.as_deref(), Some("s1"));
        assert_eq!(t.subresource.as_deref(), Some("approval"));
        let t = parse("catalog/v1/productplans/gold/quotas").unwrap();
        assert_eq!(
            (t.spec.kind, t.scope.as_deref(), t.name),
            ("Quota", Some("gold"), None)
        );
        let t = parse("management/v1/integrations/i/webhooks/w/x-ext").unwrap();
        assert_eq!(t.spec.kind, "Webhook");
        assert_eq!(t.subresource.as_deref(), Some("x-ext"));
        let t = parse("catalog/v1/quotas").unwrap();
        assert_eq!((t.spec.kind, t.scope), ("Quota", None));
        // A subresource that happens to be named like nothing is still a subresource path.
        let t = parse("catalog/v1/productplans/gold/state").unwrap();
        assert_eq!(t.subresource.as_deref(), Some("state"));
    }

    #[test]
    fn unknown_groups_versions_kinds_and_scopeless_items_of_scoped_kinds_are_not_found() {
        assert!(parse("catalog/v2/products").is_none());
        assert!(parse("management/v1/products").is_none());
        assert!(parse("catalog/v1/widgets").is_none());
        assert!(parse("catalog/v1/quotas/q1").is_none());
        assert!(parse("catalog/v1/products/p/state/extra").is_none());
        assert!(parse("catalog/v1/products//").is_none());
    }

    #[test]
    fn self_links_carry_the_scope_and_the_requested_version() {
        let quota = kind_named("Quota").unwrap();
        assert_eq!(
            self_link(quota, "v1alpha1", Some("gold"), "q0"),
            "/catalog/v1alpha1/productplans/gold/quotas/q0"
        );
    }

    #[test]
    fn timestamps_use_millis_and_an_offset_without_colon() {
        let at = chrono::DateTime::parse_from_rfc3339("2023-11-16T18:50:56.238Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let text = central_timestamp(at);
        assert_eq!(text, "2023-11-16T18:50:56.238+0000");
        assert_eq!(parse_central_timestamp(&text), Some(at));
    }
}
