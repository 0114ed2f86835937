//! A thin Recurly v3 client for the conformance tests (the headers the official clients send,
//! reference §1.1) and the contract check of everything the sandbox recorded.

use billing_bridge_contract::{
    ExchangePolicy, check_recorded_answers_complete, check_recorded_exchanges,
};
use billing_bridge_sandbox::{RecurlySettings, SandboxConfig};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::support::{TestSandbox, spawn_sandbox};

/// The version header the bridge sends (reference §1.1).
pub const ACCEPT_V2021: &str = "application/vnd.recurly.v2021-02-25";
/// The API key the tests present; any non-empty key works unless the config sets one.
pub const TEST_KEY: &str = "test-private-key";

/// Fails the calling test with every recorded Recurly exchange of `sb` that departs from the
/// OpenAPI contract. `ExchangePolicy::ClientMustConform` for the bridge's own traffic,
/// `ServerMustRefuseInvalid` when a test sends bad requests on purpose.
pub async fn assert_recurly_traffic_conforms(sb: &TestSandbox, policy: ExchangePolicy) {
    let entries = recorded_exchanges(sb).await;
    assert!(
        !entries.is_empty(),
        "the sandbox recorded no Recurly exchange; is the recorder on?"
    );
    if let Err(violations) = check_recorded_exchanges(&entries, "/recurly", policy) {
        panic!("recorded Recurly traffic breaks the OpenAPI contract\n{violations}");
    }
    // Recurly answers with every documented field (`null` or `[]` when unset); a client tested
    // against answers that leave fields out could depend on absences the real service never has.
    if let Err(violations) = check_recorded_answers_complete(&entries, "/recurly") {
        panic!("the sandbox's Recurly answers leave out documented fields\n{violations}");
    }
}

/// `GET /_sandbox/requests?upstream=recurly`, as a list of entries.
pub async fn recorded_exchanges(sb: &TestSandbox) -> Vec<Value> {
    let reply = sb
        .http
        .get(sb.at("/_sandbox/requests?upstream=recurly"))
        .send()
        .await
        .expect("the recording is readable");
    assert_eq!(reply.status(), 200, "GET /_sandbox/requests");
    let body: Value = reply.json().await.expect("the recording is JSON");
    match body {
        Value::Array(entries) => entries,
        Value::Object(mut map) => match ["requests", "data", "entries"]
            .iter()
            .find_map(|k| map.remove(*k))
        {
            Some(Value::Array(entries)) => entries,
            _ => panic!("unexpected recording shape: {}", Value::Object(map)),
        },
        other => panic!("unexpected recording shape: {other}"),
    }
}

/// One answer from the emulated Recurly.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    /// `METHOD path` of the request, for assertion messages.
    pub request: String,
}

impl Reply {
    /// The body, after asserting the status.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "{} answered {} with {}",
            self.request, self.status, self.body
        );
        self.body
    }

    /// Asserts a success status in `200..300` (for operations the reference leaves open).
    #[track_caller]
    pub fn expect_success(self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "{} answered {} with {}",
            self.request,
            self.status,
            self.body
        );
        self.body
    }

    /// Asserts a Recurly error answer (reference §1.3): `{"error": {"type", "message", ...}}`
    /// with this status and type. Returns the inner `error` object.
    #[track_caller]
    pub fn expect_error(self, status: u16, error_type: &str) -> Value {
        assert_eq!(
            self.status, status,
            "{} answered {} with {}",
            self.request, self.status, self.body
        );
        let error = self
            .body
            .get("error")
            .unwrap_or_else(|| panic!("{}: no `error` object in {}", self.request, self.body));
        assert_eq!(
            error["type"], error_type,
            "{}: error type in {}",
            self.request, self.body
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: an error carries a message: {}",
            self.request,
            self.body
        );
        if let Some(params) = error.get("params") {
            assert!(
                params.is_array(),
                "{}: `params` is a list: {}",
                self.request,
                self.body
            );
        }
        error.clone()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A sandbox and a client speaking Recurly v3 to it.
pub struct Recurly {
    pub sb: TestSandbox,
    pub key: String,
}

impl Recurly {
    pub async fn start() -> Recurly {
        Recurly::start_with(RecurlySettings::default()).await
    }

    pub async fn start_with(recurly: RecurlySettings) -> Recurly {
        let sb = spawn_sandbox(SandboxConfig {
            recurly,
            ..SandboxConfig::default()
        })
        .await;
        Recurly {
            sb,
            key: TEST_KEY.to_owned(),
        }
    }

    /// `{sandbox}/recurly{path}`: the emulated `https://v3.recurly.com{path}`.
    pub fn url(&self, path: &str) -> String {
        self.sb.at(&format!("/recurly{path}"))
    }

    /// A request with the headers of the official clients (reference §1.1): the version
    /// `Accept`, Basic auth with the key as user name and an empty password.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.bare(method, path)
            .header("Accept", ACCEPT_V2021)
            .basic_auth(&self.key, Some(""))
    }

    /// A request without any Recurly header, for the header tests.
    pub fn bare(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.sb.http.request(method, self.url(path))
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let built = request.build().expect("request builds");
        let label = format!("{} {}", built.method(), built.url().path());
        let reply = self
            .sb
            .http
            .execute(built)
            .await
            .unwrap_or_else(|e| panic!("{label}: no answer: {e}"));
        let status = reply.status().as_u16();
        let headers = reply.headers().clone();
        let text = reply.text().await.unwrap_or_default();
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            headers,
            body,
            request: label,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::PUT, path).json(body)).await
    }

    /// A PUT without a body, for operations the spec gives none (`reactivate`).
    pub async fn put_empty(&self, path: &str) -> Reply {
        self.send(self.request(Method::PUT, path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Sets fault injection for Recurly (`PUT /_sandbox/faults/recurly`, README).
    pub async fn inject_faults(&self, settings: Value) {
        let reply = self
            .sb
            .http
            .put(self.sb.at("/_sandbox/faults/recurly"))
            .json(&settings)
            .send()
            .await
            .expect("fault settings accepted");
        assert_eq!(reply.status(), 204, "PUT /_sandbox/faults/recurly");
    }

    /// Ends a test: every exchange the sandbox recorded must fit the contract, every answer carry
    /// each documented field; requests outside it must have been refused.
    pub async fn finish(self) {
        assert_recurly_traffic_conforms(&self.sb, ExchangePolicy::ServerMustRefuseInvalid).await;
        self.sb.handle.stop().await;
    }

    // ---- fixtures: valid objects per the reference, created through the API ----

    /// `POST /measured_units` (reference §3), answering the created unit.
    pub async fn create_measured_unit(&self, name: &str) -> Value {
        let unit = json!({"name": name, "display_name": "API calls", "description": "calls"});
        self.post("/measured_units", &unit).await.expect(201)
    }

    /// `POST /plans`, answering the created plan.
    pub async fn create_plan(&self, plan: &Value) -> Value {
        self.post("/plans", plan).await.expect(201)
    }

    /// `POST /accounts` with just a code (and an email), answering the account.
    pub async fn create_account(&self, code: &str) -> Value {
        let account = json!({"code": code, "email": format!("{code}@consumer.example"),
                             "first_name": "Dev", "last_name": "Team"});
        self.post("/accounts", &account).await.expect(201)
    }

    /// A measured unit `api_calls` and a usage-only plan `code` with a tiered usage add-on
    /// `api_calls` (the reference §2 example) and a fixed add-on `support`.
    pub async fn create_usage_plan(&self, code: &str) -> Value {
        let units = self.get("/measured_units/name-api_calls").await;
        if units.status == 404 {
            self.create_measured_unit("api_calls").await;
        }
        self.create_plan(&usage_plan(code)).await
    }

    /// An account `account_code` subscribed to a fresh usage plan `plan_code` with the usage
    /// add-on listed explicitly (reference §5). Answers the subscription.
    pub async fn create_subscription(&self, account_code: &str, plan_code: &str) -> Value {
        self.create_usage_plan(plan_code).await;
        self.create_account(account_code).await;
        self.post("/subscriptions", &subscription(account_code, plan_code))
            .await
            .expect(201)
    }
}

/// The reference §2 example plan: $0 a month plus a tiered usage add-on `api_calls`.
pub fn usage_plan(code: &str) -> Value {
    json!({
        "code": code,
        "name": format!("Plan {code}"),
        "interval_unit": "months", "interval_length": 1,
        "currencies": [{"currency": "USD", "unit_amount": 0, "setup_fee": 0}],
        "add_ons": [usage_add_on("api_calls", "tiered")]
    })
}

/// A usage add-on priced per call, of `tier_type` `tiered`, `volume`, `stairstep` or `flat`
/// (reference §3 pricing rules), measured in `api_calls`.
pub fn usage_add_on(code: &str, tier_type: &str) -> Value {
    let mut add_on = json!({
        "code": code, "name": format!("Add-on {code}"),
        "add_on_type": "usage", "usage_type": "price",
        "usage_calculation_type": "cumulative",
        "tier_type": tier_type,
        "measured_unit_name": "api_calls",
    });
    if tier_type == "flat" {
        add_on["currencies"] = json!([{"currency": "USD", "unit_amount_decimal": "0.001"}]);
    } else {
        add_on["tiers"] = json!([
            {"ending_quantity": 1000, "currencies": [{"currency": "USD", "unit_amount": 0}]},
            {"ending_quantity": 999999999,
             "currencies": [{"currency": "USD", "unit_amount_decimal": "0.002"}]}
        ]);
    }
    add_on
}

/// `SubscriptionCreate` for an existing account, invoiced (no billing info needed), listing the
/// usage add-on explicitly (reference §5: optional add-ons are not added by the API).
pub fn subscription(account_code: &str, plan_code: &str) -> Value {
    json!({
        "plan_code": plan_code, "currency": "USD",
        "account": {"code": account_code},
        "add_ons": [{"code": "api_calls", "quantity": 1}],
        "collection_method": "manual"
    })
}

/// The `data` of a list answer, after checking the list shape (reference §1.2).
#[track_caller]
pub fn list_data(list: &Value) -> &Vec<Value> {
    assert_eq!(list["object"], "list", "a list answer: {list}");
    assert!(
        list["has_more"].is_boolean(),
        "a list has `has_more`: {list}"
    );
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list has `data`: {list}"))
}

/// The values of `field` across a list's `data`.
pub fn field_of(list: &Value, field: &str) -> Vec<String> {
    list_data(list)
        .iter()
        .map(|item| item[field].as_str().unwrap_or_default().to_owned())
        .collect()
}
