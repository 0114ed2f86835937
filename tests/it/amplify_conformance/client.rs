//! A small Amplify client for the tests: a token per sandbox, JSON requests with the headers the
//! SDK sends (§1.3), resource fixtures (§3) and checks of the resource envelope (§2.4).

#![allow(dead_code)]

use billing_bridge_sandbox::{AmplifySettings, SandboxConfig};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestSandbox, spawn_sandbox};

pub const TOKEN_PATH: &str = "/auth/realms/Broker/protocol/openid-connect/token";
pub const ORG_ID: &str = "100000142";
pub const MARKETPLACE: &str = "082a27eb-1c67-4b54-90e0-b1529c008af7";
pub const TEAM_ID: &str = "e33e2081-9025-4939-9741-c1dddae11017";
pub const CONSUMER_ORG: &str = "650130132060094";

/// An answer with its status, headers and body (`Value::Null` when empty or not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    pub async fn from(resp: reqwest::Response) -> Resp {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body is readable");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            body,
        }
    }

    /// Asserts the status and returns the body.
    pub fn expect(self, status: u16, what: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{what}: {} {}",
            self.status,
            self.text
        );
        self.body
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Amplify settings without the per-client rate limit, so tests can make many calls.
pub fn unlimited() -> SandboxConfig {
    SandboxConfig {
        amplify: AmplifySettings {
            requests_per_minute: 0,
            ..AmplifySettings::default()
        },
        ..SandboxConfig::default()
    }
}

/// Asks for a token with client credentials in the Basic header (§1.2).
pub async fn token_basic(sb: &TestSandbox, id: &str, secret: &str) -> Resp {
    let resp = sb
        .http
        .post(sb.at(TOKEN_PATH))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token endpoint answers");
    Resp::from(resp).await
}

/// Asks for a token with client credentials as form fields (§1.2).
pub async fn token_form(sb: &TestSandbox, id: &str, secret: &str) -> Resp {
    let resp = sb
        .http
        .post(sb.at(TOKEN_PATH))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .expect("token endpoint answers");
    Resp::from(resp).await
}

/// A sandbox plus a bearer token from it.
pub struct Amplify {
    pub sb: TestSandbox,
    pub token: String,
}

impl Amplify {
    /// A sandbox without the Amplify rate limit, and a token.
    pub async fn start() -> Amplify {
        Amplify::start_with(unlimited()).await
    }

    pub async fn start_with(config: SandboxConfig) -> Amplify {
        let id = config
            .amplify
            .client_id
            .clone()
            .unwrap_or("billing-bridge-sa".into());
        let secret = config
            .amplify
            .client_secret
            .clone()
            .unwrap_or("sa-secret".into());
        let sb = spawn_sandbox(config).await;
        let body = token_basic(&sb, &id, &secret)
            .await
            .expect(200, "token for the test");
        let token = body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        Amplify { sb, token }
    }

    /// `{url}/amplify/apis{path}`.
    pub fn apis(&self, path: &str) -> String {
        self.sb.at(&format!("/amplify/apis{path}"))
    }

    fn authed(&self, req: RequestBuilder) -> RequestBuilder {
        req.bearer_auth(&self.token)
            .header("X-Axway-Tenant-Id", ORG_ID)
    }

    pub async fn send(&self, req: RequestBuilder) -> Resp {
        Resp::from(self.authed(req).send().await.expect("amplify answers")).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.sb.http.get(self.apis(path))).await
    }

    pub async fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Resp {
        self.send(self.sb.http.get(self.apis(path)).query(query))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(self.sb.http.post(self.apis(path)).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.send(self.sb.http.put(self.apis(path)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.sb.http.delete(self.apis(path))).await
    }

    /// Creates a resource and returns it; fails the test unless the answer is 201.
    pub async fn create(&self, collection: &str, body: &Value) -> Value {
        self.post(collection, body)
            .await
            .expect(201, &format!("create in {collection}"))
    }

    pub async fn product(&self, version: &str, name: &str, billing_system: &str) -> Value {
        self.create(
            &format!("/catalog/{version}/products"),
            &product_body(version, name, billing_system),
        )
        .await
    }

    pub async fn plan(&self, version: &str, name: &str, product: &str) -> Value {
        self.create(
            &format!("/catalog/{version}/productplans"),
            &plan_body(version, name, product),
        )
        .await
    }

    /// `PUT …/productplans/{name}/state {"state":"active"}` (§3.2).
    pub async fn activate_plan(&self, version: &str, name: &str) -> Value {
        self.put(
            &format!("/catalog/{version}/productplans/{name}/state"),
            &json!({"state": "active"}),
        )
        .await
        .expect(200, "activate plan")
    }

    pub async fn subscription(
        &self,
        version: &str,
        name: &str,
        product: &str,
        plan: &str,
    ) -> Value {
        self.create(
            &format!("/catalog/{version}/subscriptions"),
            &subscription_body(version, name, product, plan),
        )
        .await
    }

    /// A product with an active manual-approval paid plan, ready for subscriptions.
    pub async fn product_with_active_plan(&self, product: &str, plan: &str) {
        self.product("v1", product, "recurly").await;
        self.plan("v1", plan, product).await;
        self.activate_plan("v1", plan).await;
    }
}

pub fn product_body(version: &str, name: &str, billing_system: &str) -> Value {
    json!({
        "group": "catalog", "apiVersion": version, "kind": "Product",
        "name": name, "title": format!("Product {name}"),
        "attributes": {"billingSystem": billing_system},
        "tags": ["finance"],
        "spec": {"description": "Finance data APIs"}
    })
}

/// A paid plan with manual approval, as the billing integration requires (§3.2, §6).
pub fn plan_body(version: &str, name: &str, product: &str) -> Value {
    json!({
        "group": "catalog", "apiVersion": version, "kind": "ProductPlan",
        "name": name, "title": "Silver",
        "attributes": {"tier": "silver"},
        "spec": {
            "product": product,
            "description": "Pay a little to get more",
            "type": "paid",
            "billing": {"currency": "USD", "price": 10.99, "cycle": "recurring", "interval": "monthly"},
            "subscription": {"interval": {"type": "months", "length": 1}, "renewal": "automatic", "approval": "manual"}
        }
    })
}

/// A graduated-tier quota (§3.3).
pub fn quota_body(version: &str, name: &str) -> Value {
    json!({
        "group": "catalog", "apiVersion": version, "kind": "Quota",
        "name": name, "title": "Lining",
        "spec": {
            "unit": "transactions",
            "pricing": {"type": "graduated", "limit": {"type": "tiered", "tiers": [
                {"from": 1, "to": 500, "cost": 2, "flatFee": 0},
                {"from": 501, "to": 999999999, "cost": 1, "flatFee": 10}]}},
            "resources": [{"kind": "AssetResource", "name": "weather/current"}]
        }
    })
}

pub fn owner() -> Value {
    json!({"type": "team", "id": TEAM_ID, "organization": {"id": CONSUMER_ORG}})
}

/// A subscription as the Marketplace creates it, with its owner (§3.4).
pub fn subscription_body(version: &str, name: &str, product: &str, plan: &str) -> Value {
    json!({
        "group": "catalog", "apiVersion": version, "kind": "Subscription",
        "name": name, "title": format!("{product} - Silver"),
        "attributes": {"marketplaceId": MARKETPLACE, "tenantId": ORG_ID},
        "spec": {"product": product, "plan": {"name": plan}},
        "marketplace": {"name": MARKETPLACE, "resource": {"owner": owner()}}
    })
}

// ---------------------------------------------------------------------------------------------
// checks

pub fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$` (§2.4).
pub fn is_amplify_timestamp(s: &str) -> bool {
    const PATTERN: &str = "dddd-dd-ddTdd:dd:dd.ddd+0000";
    s.len() == PATTERN.len()
        && s.chars().zip(PATTERN.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

/// Checks the §2.4 envelope of a catalog resource: identity, id, selfLink, version, audit
/// timestamps, string attributes.
pub fn assert_envelope(res: &Value, version: &str, kind: &str, name: &str, self_link: &str) {
    assert_eq!(res["group"], "catalog", "{res}");
    assert_eq!(res["apiVersion"], version, "{res}");
    assert_eq!(res["kind"], kind, "{res}");
    assert_eq!(res["name"], name, "{res}");
    let meta = &res["metadata"];
    assert!(
        meta["id"].as_str().is_some_and(is_hex32),
        "§2.4 metadata.id is 32 hex: {}",
        meta["id"]
    );
    assert_eq!(meta["selfLink"], self_link, "§2.4 selfLink");
    assert!(
        meta["resourceVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "§2.4 resourceVersion is a non-empty string: {}",
        meta["resourceVersion"]
    );
    for field in ["createTimestamp", "modifyTimestamp"] {
        let ts = &meta["audit"][field];
        assert!(
            ts.as_str().is_some_and(is_amplify_timestamp),
            "§2.4 audit.{field} like 2023-11-16T18:50:56.238+0000: {ts}"
        );
    }
    let attributes = res["attributes"]
        .as_object()
        .unwrap_or_else(|| panic!("§2.4 attributes is a map: {res}"));
    assert!(
        attributes.values().all(Value::is_string),
        "§2.3 attributes hold strings only: {res}"
    );
}

/// Checks a Central error answer: the status and `{"errors":[{"status","title","detail"}]}` (§2.4).
pub fn assert_central_error(resp: &Resp, status: u16) {
    assert_eq!(resp.status.as_u16(), status, "{}", resp.text);
    let first = &resp.body["errors"][0];
    assert_eq!(
        first["status"].as_u64(),
        Some(u64::from(status)),
        "§2.4 errors[].status: {}",
        resp.text
    );
    assert!(
        first["title"].is_string(),
        "§2.4 errors[].title: {}",
        resp.text
    );
    assert!(
        first["detail"].is_string(),
        "§2.4 errors[].detail: {}",
        resp.text
    );
}

/// Names of the resources in a list answer (a bare array, §2.5).
pub fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("§2.5 a list is a bare JSON array: {list}"))
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Sorted names, for comparing sets.
pub fn sorted_names(list: &Value) -> Vec<String> {
    let mut names = names(list);
    names.sort();
    names
}
