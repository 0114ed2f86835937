//! The Amplify client: a client-credentials token cached and renewed before it expires, every
//! call of the process kept under Amplify's per-client limit, retries on what may pass, paging
//! through `Link` headers, and the writes the bridge makes (subresources, attributes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use billing_bridge_upstream::{
    NoObserver, Observer, RetryPolicy, Upstream, call_span, record_exchange, timed_wait,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::AmplifyError;
use crate::budget::{Budget, Lane, Schedule};

/// Path of the token endpoint below the auth base (reference §1.2).
const TOKEN_PATH: &str = "/realms/Broker/protocol/openid-connect/token";
/// Renew a token this long before Amplify says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// Page size asked for lists (Amplify's default is 20). Its cap is unknown [I]; a smaller page
/// is harmless, because the next one comes from the `Link` header.
const PAGE_SIZE: u32 = 1000;
/// Events asked per WatchTopic page. The SDK asks 100 [V SDK harvester]; the cap is unknown
/// [I]. A page that comes back full is followed by the next one.
const WATCH_PAGE_SIZE: u32 = 1000;
/// Header of a 410 answer naming the topic's newest sequence id [V SDK harvester].
const MAX_SEQUENCE_HEADER: &str = "X-Axway-Max-Sequence-Id";
/// How often an attribute write is retried when the resource changed meanwhile (428).
const CONFLICT_RETRIES: usize = 3;

#[derive(Clone, Debug)]
pub struct AmplifySettings {
    /// Central API server, e.g. `https://apicentral.axway.com` or the sandbox's `…/amplify`.
    pub central_url: String,
    /// Axway login, e.g. `https://login.axway.com/auth` or the sandbox's `…/auth`.
    pub auth_url: String,
    /// Platform, e.g. `https://platform.axway.com` or the sandbox's `…/platform`.
    pub platform_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Sent as `X-Axway-Tenant-Id` (not needed with service accounts, sent anyway; §1.3).
    pub tenant_id: Option<String>,
    /// The client's limit; Amplify documents 25 requests per minute (§1.4).
    pub requests_per_minute: u32,
    /// `v1` (or the deprecated `v1alpha1`) for paths this client builds itself.
    pub api_version: String,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// A subscriber as the Platform knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformUser {
    pub guid: String,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// The Platform's numeric user id (`user_id`), when it sent one.
    pub user_id: Option<i64>,
}

/// The Platform's answer to `GET /api/v1/user/{guid}` as the agent SDK models it
/// (`PlatformUserInfo`, `pkg/apic/definitions/definitions.go`): `{"success", "result": {"_id",
/// "guid", "user_id" (int64), "firstname", "lastname", "active", "email"}}`. The reference gives
/// only the base path (§1.1), so this is the one place that knows the shape.
#[derive(Deserialize)]
struct PlatformUserAnswer {
    #[serde(default)]
    result: Option<PlatformUserResult>,
}

#[derive(Deserialize)]
struct PlatformUserResult {
    #[serde(default)]
    guid: Option<String>,
    #[serde(default)]
    user_id: Option<i64>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    firstname: Option<String>,
    #[serde(default)]
    lastname: Option<String>,
}

/// Reads a Platform user answer; `None` when it names no email (nothing to write to). A body
/// of another shape is an error naming what was being read.
fn read_platform_user(guid: &str, body: Value) -> Result<Option<PlatformUser>, AmplifyError> {
    if body.is_null() {
        return Ok(None);
    }
    let answer: PlatformUserAnswer =
        serde_json::from_value(body).map_err(|e| AmplifyError::Unexpected {
            operation: "get platform user",
            detail: format!("the user answer is not the Platform's shape: {e}"),
        })?;
    let Some(user) = answer.result else {
        return Ok(None);
    };
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(non_empty(user.email).map(|email| PlatformUser {
        guid: non_empty(user.guid).unwrap_or_else(|| guid.to_owned()),
        email,
        first_name: non_empty(user.firstname),
        last_name: non_empty(user.lastname),
        user_id: user.user_id,
    }))
}

/// One Traceability summary question (reference §5.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub group_by: Vec<String>,
    pub query: Option<String>,
}

struct CachedToken {
    value: SecretString,
    renew_at: Instant,
}

/// A client of one lane of the process's Amplify budget. Clones are cheap and share the HTTP
/// client, the token and the budget; [`lane`](AmplifyClient::lane) makes one for another lane.
#[derive(Clone)]
pub struct AmplifyClient {
    shared: Arc<Shared>,
    lane: Lane,
}

struct Shared {
    http: reqwest::Client,
    settings: AmplifySettings,
    budget: Option<Budget>,
    token: Mutex<Option<CachedToken>>,
    observer: Observer,
}

/// The query string of the next page, from a `Link: <…?page=2&pageSize=20>; rel="next"` header.
/// Only the query is taken, as Axway's SDK does (§2.5), so the link's host never matters.
fn next_page_query(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("Link")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.split_once(';')?;
            params
                .split(';')
                .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next")
                .then(|| {
                    let target = target.trim().trim_start_matches('<').trim_end_matches('>');
                    target.split_once('?').map(|(_, q)| q.to_owned())
                })?
        })
}

/// Characters left as they are in path segments and query values (RFC 3986 unreserved).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(value: &str) -> String {
    utf8_percent_encode(value, UNRESERVED).to_string()
}

impl AmplifyClient {
    /// A client of the provisioning lane (the highest), with a budget of its own.
    pub fn new(http: reqwest::Client, settings: AmplifySettings) -> Self {
        Self::with_observer_shared(http, settings, NoObserver::shared())
    }

    fn with_observer_shared(
        http: reqwest::Client,
        settings: AmplifySettings,
        observer: Observer,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                budget: Schedule::per_minute(settings.requests_per_minute).map(Budget::new),
                http,
                settings,
                token: Mutex::new(None),
                observer,
            }),
            lane: Lane::Provisioning,
        }
    }

    /// Reports every exchange and rate-limit wait to `observer` (the metrics). Call it before
    /// any clone or [`lane`](Self::lane) is made: it starts a new shared client.
    pub fn with_observer(self, observer: Observer) -> Self {
        let (http, settings) = (self.shared.http.clone(), self.shared.settings.clone());
        Self::with_observer_shared(http, settings, observer)
    }

    /// The same client (token, budget, HTTP connections) calling in `lane`.
    pub fn lane(&self, lane: Lane) -> AmplifyClient {
        AmplifyClient {
            shared: self.shared.clone(),
            lane,
        }
    }

    /// The lane this client's calls wait in.
    pub fn current_lane(&self) -> Lane {
        self.lane
    }

    /// Callers waiting for a slot of the budget, per lane in [`Lane::ALL`] order.
    pub fn waiting(&self) -> [usize; 3] {
        self.shared.budget.as_ref().map_or([0; 3], Budget::waiting)
    }

    /// `/catalog/{version}/{plural}/{name}`, the selfLink form of a resource this client names.
    pub fn resource_path(&self, group: &str, plural: &str, name: &str) -> String {
        format!(
            "/{group}/{}/{plural}/{}",
            self.shared.settings.api_version,
            encode(name)
        )
    }

    async fn fetch_token(&self) -> Result<CachedToken, AmplifyError> {
        let operation = "get token";
        self.fetch_token_once()
            .instrument(call_span(Upstream::Amplify, operation, "POST"))
            .await
    }

    async fn fetch_token_once(&self) -> Result<CachedToken, AmplifyError> {
        #[derive(Deserialize)]
        struct TokenAnswer {
            access_token: String,
            expires_in: u64,
        }
        let operation = "get token";
        let url = format!(
            "{}{TOKEN_PATH}",
            self.shared.settings.auth_url.trim_end_matches('/')
        );
        let request = self
            .shared
            .http
            .post(url)
            .basic_auth(
                &self.shared.settings.client_id,
                Some(self.shared.settings.client_secret.expose_secret()),
            )
            .form(&[("grant_type", "client_credentials")])
            .timeout(self.shared.settings.timeout);
        let started = Instant::now();
        let response = request.send().await.map_err(|e| {
            record_exchange(
                &self.shared.observer,
                Upstream::Amplify,
                operation,
                None,
                started,
            );
            AmplifyError::Network {
                operation,
                detail: billing_bridge_upstream::network_error(e),
            }
        })?;
        let status = response.status().as_u16();
        record_exchange(
            &self.shared.observer,
            Upstream::Amplify,
            operation,
            Some(status),
            started,
        );
        match status {
            200 => {
                let answer: TokenAnswer =
                    response
                        .json()
                        .await
                        .map_err(|e| AmplifyError::Unexpected {
                            operation,
                            detail: billing_bridge_upstream::network_error(e),
                        })?;
                let lifetime = Duration::from_secs(answer.expires_in);
                Ok(CachedToken {
                    value: SecretString::from(answer.access_token),
                    renew_at: Instant::now()
                        + lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 5)),
                })
            }
            400 | 401 | 403 => Err(AmplifyError::Unauthorized { operation, status }),
            429 => Err(AmplifyError::RateLimited {
                operation,
                retry_after: None,
            }),
            500.. => Err(AmplifyError::Server { operation, status }),
            _ => Err(AmplifyError::Unexpected {
                operation,
                detail: format!("token endpoint answered {status}"),
            }),
        }
    }

    async fn bearer(&self) -> Result<SecretString, AmplifyError> {
        let mut cached = self.shared.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.value.clone());
        }
        let fresh = self.fetch_token().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    async fn forget_token(&self) {
        *self.shared.token.lock().await = None;
    }

    /// One exchange: answer body (`None` when empty) and headers, in a span of its own.
    async fn exchange(
        &self,
        operation: &'static str,
        method: &Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(Option<Value>, HeaderMap), AmplifyError> {
        self.exchange_once(operation, method, url, body)
            .instrument(call_span(Upstream::Amplify, operation, method.as_str()))
            .await
    }

    async fn exchange_once(
        &self,
        operation: &'static str,
        method: &Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(Option<Value>, HeaderMap), AmplifyError> {
        let token = self.bearer().await?;
        if let Some(budget) = &self.shared.budget {
            timed_wait(
                &self.shared.observer,
                Upstream::Amplify,
                budget.acquire(self.lane),
            )
            .await;
        }
        let mut request = self
            .shared
            .http
            .request(method.clone(), url)
            .bearer_auth(token.expose_secret())
            .timeout(self.shared.settings.timeout);
        if let Some(tenant) = &self.shared.settings.tenant_id {
            request = request.header("X-Axway-Tenant-Id", tenant);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let response = request.send().await.map_err(|e| {
            record_exchange(
                &self.shared.observer,
                Upstream::Amplify,
                operation,
                None,
                started,
            );
            AmplifyError::Network {
                operation,
                detail: billing_bridge_upstream::network_error(e),
            }
        })?;
        let status = response.status().as_u16();
        record_exchange(
            &self.shared.observer,
            Upstream::Amplify,
            operation,
            Some(status),
            started,
        );
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| AmplifyError::Network {
            operation,
            detail: billing_bridge_upstream::network_error(e),
        })?;
        let detail = || {
            serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v["errors"][0]["detail"]
                        .as_str()
                        .or(v["errors"][0]["title"].as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| text.chars().take(200).collect())
        };
        match status {
            200..=299 if text.trim().is_empty() => Ok((None, headers)),
            200..=299 => serde_json::from_str(&text)
                .map(|v| (Some(v), headers))
                .map_err(|e| AmplifyError::Unexpected {
                    operation,
                    detail: format!("body is not JSON: {e}"),
                }),
            401 => {
                // The cached token may have been revoked or expired early: the next try fetches
                // a new one.
                self.forget_token().await;
                Err(AmplifyError::Unauthorized { operation, status })
            }
            403 => Err(AmplifyError::Unauthorized { operation, status }),
            404 => Err(AmplifyError::NotFound { operation }),
            410 => Err(AmplifyError::Gone {
                operation,
                newest: headers
                    .get(MAX_SEQUENCE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok()),
            }),
            428 => Err(AmplifyError::Conflict { operation }),
            429 => Err(AmplifyError::RateLimited {
                operation,
                retry_after: headers
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_secs),
            }),
            500.. => Err(AmplifyError::Server { operation, status }),
            _ => Err(AmplifyError::Refused {
                operation,
                status,
                detail: detail(),
            }),
        }
    }

    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(Option<Value>, HeaderMap), AmplifyError> {
        let attempt = || {
            self.shared
                .settings
                .retry
                .run_observed(Some((&self.shared.observer, Upstream::Amplify)), || {
                    self.exchange(operation, &method, url, body)
                })
        };
        match attempt().await {
            // One more round with a fresh token: a 401 with a cached token is not final.
            Err(AmplifyError::Unauthorized { status: 401, .. }) => attempt().await,
            other => other,
        }
    }

    fn central(&self, path: &str) -> String {
        format!(
            "{}/apis{path}",
            self.shared.settings.central_url.trim_end_matches('/')
        )
    }

    /// A resource by its selfLink (`/catalog/v1/productplans/x`); `None` when it does not exist.
    pub async fn get(&self, self_link: &str) -> Result<Option<Value>, AmplifyError> {
        match self
            .call("get resource", Method::GET, &self.central(self_link), None)
            .await
        {
            Ok((body, _)) => Ok(body),
            Err(AmplifyError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every resource of a collection (`/catalog/v1/productplans`), following `Link` headers.
    pub async fn list(
        &self,
        collection: &str,
        query: Option<&str>,
    ) -> Result<Vec<Value>, AmplifyError> {
        self.list_as(collection, query).await
    }

    /// As [`list`](Self::list), each page read straight into `T` (only the fields `T` names),
    /// so a large collection is never held as raw JSON.
    pub async fn list_as<T: serde::de::DeserializeOwned>(
        &self,
        collection: &str,
        query: Option<&str>,
    ) -> Result<Vec<T>, AmplifyError> {
        let mut page_query = format!("pageSize={PAGE_SIZE}");
        if let Some(q) = query {
            page_query.push_str(&format!("&query={}", encode(q)));
        }
        let mut items = Vec::new();
        let mut next = Some(page_query);
        while let Some(q) = next.take() {
            let url = format!("{}?{q}", self.central(collection));
            let (body, headers) = self.call("list resources", Method::GET, &url, None).await?;
            let page: Vec<T> = match body {
                Some(page @ Value::Array(_)) => {
                    serde_json::from_value(page).map_err(|e| AmplifyError::Unexpected {
                        operation: "list resources",
                        detail: format!("a resource could not be read: {e}"),
                    })?
                }
                None => Vec::new(),
                Some(other) => {
                    return Err(AmplifyError::Unexpected {
                        operation: "list resources",
                        detail: format!("expected an array, got {}", other),
                    });
                }
            };
            let empty = page.is_empty();
            items.extend(page);
            next = next_page_query(&headers).filter(|_| !empty);
        }
        Ok(items)
    }

    /// The API version this client uses for paths it builds.
    pub fn api_version(&self) -> &str {
        &self.shared.settings.api_version
    }

    /// Fetches a token now: proves the service account works (for `check`).
    pub async fn check_credentials(&self) -> Result<(), AmplifyError> {
        self.forget_token().await;
        self.bearer().await.map(|_| ())
    }

    /// Replaces a resource (`PUT {selfLink}`) with `resource`.
    pub async fn replace(&self, self_link: &str, resource: &Value) -> Result<Value, AmplifyError> {
        let (body, _) = self
            .call(
                "replace resource",
                Method::PUT,
                &self.central(self_link),
                Some(resource),
            )
            .await?;
        body.ok_or(AmplifyError::Unexpected {
            operation: "replace resource",
            detail: "empty answer".into(),
        })
    }

    pub async fn create(&self, collection: &str, resource: &Value) -> Result<Value, AmplifyError> {
        let (body, _) = self
            .call(
                "create resource",
                Method::POST,
                &self.central(collection),
                Some(resource),
            )
            .await?;
        body.ok_or(AmplifyError::Unexpected {
            operation: "create resource",
            detail: "empty answer".into(),
        })
    }

    /// Writes a subresource (`approval`, `state`, `x-…`): `PUT {selfLink}/{name}` with
    /// `{"<name>": value}` (§2.3).
    pub async fn put_subresource(
        &self,
        self_link: &str,
        name: &str,
        value: Value,
    ) -> Result<Value, AmplifyError> {
        let url = self.central(&format!("{self_link}/{name}"));
        let (body, _) = self
            .call(
                "write subresource",
                Method::PUT,
                &url,
                Some(&json!({ name: value })),
            )
            .await?;
        body.ok_or(AmplifyError::Unexpected {
            operation: "write subresource",
            detail: "empty answer".into(),
        })
    }

    /// Sets attributes on a resource, keeping the others: read, merge, write back with the
    /// read `resourceVersion`, and read again if someone changed it meanwhile (428, §2.3).
    pub async fn set_attributes(
        &self,
        self_link: &str,
        attributes: &[(&str, &str)],
    ) -> Result<Value, AmplifyError> {
        let operation = "set attributes";
        for _ in 0..CONFLICT_RETRIES {
            let mut resource = self
                .get(self_link)
                .await?
                .ok_or(AmplifyError::NotFound { operation })?;
            let current = resource["attributes"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            if attributes
                .iter()
                .all(|(k, v)| current.get(*k).and_then(Value::as_str) == Some(*v))
            {
                return Ok(resource);
            }
            let mut merged: Map<String, Value> = current;
            for (k, v) in attributes {
                merged.insert((*k).to_owned(), Value::String((*v).to_owned()));
            }
            resource["attributes"] = Value::Object(merged);
            match self
                .call(
                    operation,
                    Method::PUT,
                    &self.central(self_link),
                    Some(&resource),
                )
                .await
            {
                Ok((Some(body), _)) => return Ok(body),
                Ok((None, _)) => {
                    return Err(AmplifyError::Unexpected {
                        operation,
                        detail: "empty answer".into(),
                    });
                }
                Err(AmplifyError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(AmplifyError::Conflict { operation })
    }

    /// `{CENTRAL}/events/management/{v}/watchtopics/{name}`: where a WatchTopic's events are
    /// read (reference §4.5; the SDK's harvester prefixes the topic's selfLink with `/events`).
    fn watch_url(&self, topic: &str) -> String {
        format!(
            "{}/events{}",
            self.shared.settings.central_url.trim_end_matches('/'),
            self.resource_path("management", "watchtopics", topic)
        )
    }

    /// The events of WatchTopic `topic` after sequence id `after`, oldest first, as the SDK's
    /// harvester reads them: `query=sequenceID>N`, `sort=sequenceID,ASC`, paged while a page
    /// comes back full (one call for up to [`WATCH_PAGE_SIZE`] events). `Gone` when the events
    /// after `after` are past the 7-day retention.
    pub async fn watch_events(&self, topic: &str, after: i64) -> Result<Vec<Value>, AmplifyError> {
        let operation = "read watch topic";
        let mut events = Vec::new();
        for page in 1.. {
            let url = format!(
                "{}?page={page}&pageSize={WATCH_PAGE_SIZE}&query={}&sort={}",
                self.watch_url(topic),
                encode(&format!("sequenceID>{after}")),
                encode("sequenceID,ASC"),
            );
            let (body, _) = self.call(operation, Method::GET, &url, None).await?;
            let batch = match body {
                None => Vec::new(),
                Some(Value::Array(batch)) => batch,
                Some(_) => {
                    return Err(AmplifyError::Unexpected {
                        operation,
                        detail: "expected an array of events".into(),
                    });
                }
            };
            let full = batch.len() as u32 >= WATCH_PAGE_SIZE;
            events.extend(batch);
            if !full {
                break;
            }
        }
        Ok(events)
    }

    /// The newest sequence id of WatchTopic `topic` (`pageSize=1&sort=sequenceID,DESC`, as the
    /// SDK starts a topic it never read); `None` when it holds no event.
    pub async fn watch_newest(&self, topic: &str) -> Result<Option<i64>, AmplifyError> {
        let operation = "read watch topic";
        let url = format!(
            "{}?pageSize=1&sort={}",
            self.watch_url(topic),
            encode("sequenceID,DESC")
        );
        let (body, _) = self.call(operation, Method::GET, &url, None).await?;
        Ok(body
            .as_ref()
            .and_then(|b| b.get(0))
            .and_then(|e| e.pointer("/metadata/sequenceID"))
            .and_then(Value::as_i64))
    }

    /// A Platform user by GUID; `None` when unknown or without an email. The answer is read by
    /// `read_platform_user`, the one place holding its shape.
    pub async fn platform_user(&self, guid: &str) -> Result<Option<PlatformUser>, AmplifyError> {
        let url = format!(
            "{}/api/v1/user/{}",
            self.shared.settings.platform_url.trim_end_matches('/'),
            encode(guid)
        );
        let body = match self
            .call("get platform user", Method::GET, &url, None)
            .await
        {
            Ok((body, _)) => body.unwrap_or(Value::Null),
            Err(AmplifyError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        read_platform_user(guid, body)
    }

    /// One Traceability search (reference §5.2): `body` is posted as is and the answer returned.
    /// The query and the reading of the answer are the caller's (they are partly inferred).
    pub async fn traceability_search(&self, body: &Value) -> Result<Value, AmplifyError> {
        let url = format!(
            "{}/api/traceability/v1/traceability/search",
            self.shared.settings.central_url.trim_end_matches('/')
        );
        let (answer, _) = self
            .call("traceability search", Method::POST, &url, Some(body))
            .await?;
        Ok(answer.unwrap_or(Value::Null))
    }

    /// Every row of a Traceability summary, paging with `count`/`offset` until a short page,
    /// each row read as `T` page by page (so a large summary is never held as raw JSON).
    /// The parameters are those of §5.1; which `groupBy` fields the real API accepts is unknown.
    pub async fn traceability_summary<T: serde::de::DeserializeOwned>(
        &self,
        query: &SummaryQuery,
        page_size: u32,
    ) -> Result<Vec<T>, AmplifyError> {
        let base = format!(
            "{}/api/traceability/v1/traceability/summary",
            self.shared.settings.central_url.trim_end_matches('/')
        );
        let mut rows = Vec::new();
        let page_size = page_size.max(1);
        loop {
            let mut params = format!(
                "from={}&to={}&count={page_size}&offset={}",
                query.from_ms,
                query.to_ms,
                rows.len()
            );
            for field in &query.group_by {
                params.push_str(&format!("&groupBy={}", encode(field)));
            }
            if let Some(q) = &query.query {
                params.push_str(&format!("&query={}", encode(q)));
            }
            let (body, _) = self
                .call(
                    "traceability summary",
                    Method::GET,
                    &format!("{base}?{params}"),
                    None,
                )
                .await?;
            let page: Vec<T> = match body {
                None => Vec::new(),
                Some(value @ Value::Array(_)) => {
                    serde_json::from_value(value).map_err(|e| AmplifyError::Unexpected {
                        operation: "traceability summary",
                        detail: format!("a row could not be read: {e}"),
                    })?
                }
                Some(_) => {
                    return Err(AmplifyError::Unexpected {
                        operation: "traceability summary",
                        detail: "expected an array of rows".into(),
                    });
                }
            };
            let short = (page.len() as u32) < page_size;
            rows.extend(page);
            if short {
                return Ok(rows);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platform_user_is_read_in_the_sdk_shape() {
        let body = json!({"success": true, "result": {
            "_id": "5f3e0a9c1b2d4e0011223344", "guid": "281768f2-user", "user_id": 1_234_567,
            "firstname": "Dev", "lastname": "One", "active": true, "email": "dev@consumer.example",
            "org_guid": "100000142"}});
        let user = read_platform_user("281768f2-user", body).unwrap().unwrap();
        assert_eq!(user.email, "dev@consumer.example");
        assert_eq!(user.guid, "281768f2-user");
        assert_eq!(user.user_id, Some(1_234_567));
        assert_eq!(user.first_name.as_deref(), Some("Dev"));
        // No email, or no result: nobody to write to.
        let no_email = json!({"success": true, "result": {"guid": "u", "user_id": 7, "email": ""}});
        assert_eq!(read_platform_user("u", no_email).unwrap(), None);
        assert_eq!(
            read_platform_user("u", json!({"success": true})).unwrap(),
            None
        );
        assert_eq!(read_platform_user("u", Value::Null).unwrap(), None);
        // A `user_id` that is not an integer is not the SDK's shape.
        let wrong = json!({"success": true, "result": {"user_id": "u-1", "email": "a@b.example"}});
        assert!(matches!(
            read_platform_user("u", wrong),
            Err(AmplifyError::Unexpected { .. })
        ));
    }
    use reqwest::header::HeaderValue;

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Link",
            HeaderValue::from_static(
                "</amplify/apis/catalog/v1/productplans?page=2&pageSize=20&query=x>; rel=\"next\"",
            ),
        );
        assert_eq!(
            next_page_query(&headers).as_deref(),
            Some("page=2&pageSize=20&query=x")
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "Link",
            HeaderValue::from_static("<https://h/apis/x?page=1>; rel=\"prev\""),
        );
        assert_eq!(next_page_query(&headers), None);
        assert_eq!(next_page_query(&HeaderMap::new()), None);
    }
}
