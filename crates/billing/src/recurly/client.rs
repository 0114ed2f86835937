//! The Recurly client: every request carries the version `Accept` header and Basic auth with the
//! API key; every write carries the caller's deterministic `Idempotency-Key`; requests stay under
//! the site's limit and wait out `X-RateLimit-Reset` when Recurly says the budget is spent.

use std::num::NonZeroU32;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use billing_bridge_upstream::{
    NoObserver, Observer, RetryPolicy, Upstream, call_span, record_exchange, timed_wait,
};
use chrono::{DateTime, SecondsFormat, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::Instrument;

use super::error::RecurlyError;
use super::model::{Account, AddOn, Invoice, MeasuredUnit, Page, Plan, Subscription, Usage};
use super::{add_on_create, measured_unit_display_name, plan_create};
use billing_bridge_domain::plan::{BillingPlan, UsageAddOn};

/// The API version this client speaks (reference §1.1).
pub const ACCEPT: &str = "application/vnd.recurly.v2021-02-25";
/// Largest page Recurly serves.
const PAGE_LIMIT: u32 = 200;
/// Characters left as they are in `code-…` path segments; the rest is percent-encoded.
const CODE_SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// Which limit the site has (reference §1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteKind {
    /// Sandbox sites: 400 requests per minute, every method counts.
    Sandbox,
    /// Production sites: 1,000 GET per minute; writes are not limited.
    Production,
}

#[derive(Clone, Debug)]
pub struct RecurlySettings {
    /// `https://v3.recurly.com`, `https://v3.eu.recurly.com`, or the sandbox's `…/recurly`.
    pub base_url: String,
    pub api_key: SecretString,
    pub site: SiteKind,
    /// The site's per-minute limit (Recurly support can raise it).
    pub requests_per_minute: u32,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// A subscription to create on an existing account, with every usage add-on listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSubscription {
    pub plan_code: String,
    pub account_code: String,
    pub currency: String,
    pub add_on_codes: Vec<String>,
}

/// One usage record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewUsage {
    pub amount: u64,
    pub usage_timestamp: DateTime<Utc>,
    pub merchant_tag: String,
}

pub struct RecurlyClient {
    http: reqwest::Client,
    settings: RecurlySettings,
    limiter: Option<DefaultDirectRateLimiter>,
    /// When Recurly said the budget is spent: no counted request before this instant.
    spent_until: Mutex<Option<Instant>>,
    observer: Observer,
}

/// Recurly counts over a sliding five minutes with a budget of five times the per-minute figure
/// (reference §1.4, inferred). A token bucket of 90% of the rate with a burst of half a minute's
/// budget never exceeds that in any five-minute window: 0.5 + 5 × 0.9 = 5 minutes' budget.
fn site_quota(per_minute: u32) -> Option<Quota> {
    let per_minute = NonZeroU32::new(per_minute)?;
    let period = Duration::from_secs(60).div_f64(f64::from(per_minute.get()) * 0.9);
    let burst = NonZeroU32::new(per_minute.get() / 2).unwrap_or(NonZeroU32::MIN);
    Some(Quota::with_period(period)?.allow_burst(burst))
}

fn code_segment(prefix: &str, value: &str) -> String {
    format!("{prefix}{}", utf8_percent_encode(value, CODE_SAFE))
}

fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl RecurlyClient {
    pub fn new(http: reqwest::Client, settings: RecurlySettings) -> Self {
        Self {
            limiter: site_quota(settings.requests_per_minute).map(RateLimiter::direct),
            http,
            settings,
            spent_until: Mutex::new(None),
            observer: NoObserver::shared(),
        }
    }

    /// Reports every exchange and rate-limit wait to `observer` (the metrics).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    fn counts(&self, method: &Method) -> bool {
        match self.settings.site {
            SiteKind::Sandbox => true,
            SiteKind::Production => method == Method::GET || method == Method::HEAD,
        }
    }

    async fn wait_for_budget(&self, method: &Method) {
        if !self.counts(method) {
            return;
        }
        let until = *self.spent_until.lock().await;
        timed_wait(&self.observer, Upstream::Recurly, async {
            if let Some(until) = until {
                tokio::time::sleep_until(until.into()).await;
            }
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
        })
        .await;
    }

    /// One HTTP exchange, in a span of its own. `Ok(None)` for an empty 2xx body.
    async fn exchange(
        &self,
        operation: &'static str,
        method: &Method,
        path_and_query: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<Value>, RecurlyError> {
        self.exchange_once(operation, method, path_and_query, body, idempotency_key)
            .instrument(call_span(Upstream::Recurly, operation, method.as_str()))
            .await
    }

    async fn exchange_once(
        &self,
        operation: &'static str,
        method: &Method,
        path_and_query: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<Value>, RecurlyError> {
        self.wait_for_budget(method).await;
        let url = format!(
            "{}{}",
            self.settings.base_url.trim_end_matches('/'),
            path_and_query
        );
        let mut request = self
            .http
            .request(method.clone(), url)
            .header("Accept", ACCEPT)
            .basic_auth(self.settings.api_key.expose_secret(), Some(""))
            .timeout(self.settings.timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let started = Instant::now();
        let response = request.send().await.map_err(|e| {
            record_exchange(&self.observer, Upstream::Recurly, operation, None, started);
            RecurlyError::Network {
                operation,
                detail: billing_bridge_upstream::network_error(e),
            }
        })?;
        let status = response.status().as_u16();
        record_exchange(
            &self.observer,
            Upstream::Recurly,
            operation,
            Some(status),
            started,
        );
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let request_id = header("X-Request-Id");
        let remaining: Option<u64> = header("X-RateLimit-Remaining").and_then(|v| v.parse().ok());
        let reset_in = header("X-RateLimit-Reset")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|reset| {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Duration::from_secs(reset.saturating_sub(now).max(1))
            });
        if remaining == Some(0)
            && self.counts(method)
            && let Some(wait) = reset_in
        {
            *self.spent_until.lock().await = Some(Instant::now() + wait);
        }
        let text = response.text().await.map_err(|e| RecurlyError::Network {
            operation,
            detail: billing_bridge_upstream::network_error(e),
        })?;
        match status {
            200..=299 if text.trim().is_empty() => Ok(None),
            200..=299 => {
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| RecurlyError::Unexpected {
                        operation,
                        status,
                        detail: format!("body is not JSON: {e}"),
                    })
            }
            429 => Err(RecurlyError::RateLimited {
                operation,
                retry_after: reset_in,
            }),
            _ => {
                let parsed: Option<Value> = serde_json::from_str(&text).ok();
                let error = parsed.as_ref().and_then(|v| v.get("error"));
                match error.and_then(|e| e.get("type")).and_then(Value::as_str) {
                    Some(kind) if status < 500 => Err(RecurlyError::Api {
                        operation,
                        status,
                        error_type: kind.to_owned(),
                        message: error
                            .and_then(|e| e["message"].as_str())
                            .unwrap_or_default()
                            .to_owned(),
                        params: error
                            .and_then(|e| e["params"].as_array())
                            .map(|params| {
                                params
                                    .iter()
                                    .map(|p| {
                                        (
                                            p["param"].as_str().unwrap_or_default().to_owned(),
                                            p["message"].as_str().unwrap_or_default().to_owned(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        request_id,
                    }),
                    _ if status >= 500 => Err(RecurlyError::Server {
                        operation,
                        status,
                        request_id,
                    }),
                    _ => Err(RecurlyError::Unexpected {
                        operation,
                        status,
                        detail: text.chars().take(200).collect(),
                    }),
                }
            }
        }
    }

    /// An exchange with retries on what may pass (throttling, 5xx, network), decoded into `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<T, RecurlyError> {
        let value = self
            .settings
            .retry
            .run_observed(Some((&self.observer, Upstream::Recurly)), || {
                self.exchange(operation, &method, path_and_query, body, idempotency_key)
            })
            .await?
            .unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|e| RecurlyError::Unexpected {
            operation,
            status: 200,
            detail: format!("unexpected shape: {e}"),
        })
    }

    /// A lookup where 404 `not_found` means "there is none".
    async fn find<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
    ) -> Result<Option<T>, RecurlyError> {
        match self.call(operation, Method::GET, path, None, None).await {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every item of a list, following `next` (reference §1.2).
    async fn list_all<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
    ) -> Result<Vec<T>, RecurlyError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{separator}limit={PAGE_LIMIT}"));
        let mut items = Vec::new();
        while let Some(page_path) = next.take() {
            let page: Page<T> = self
                .call(operation, Method::GET, &page_path, None, None)
                .await?;
            items.extend(page.data);
            next = page.next.filter(|n| page.has_more && !n.is_empty());
        }
        Ok(items)
    }

    pub async fn plan(&self, code: &str) -> Result<Option<Plan>, RecurlyError> {
        self.find(
            "get plan",
            &format!("/plans/{}", code_segment("code-", code)),
        )
        .await
    }

    /// Creates the plan with its add-ons inline: one call, so the plan is whole or absent.
    pub async fn create_plan(
        &self,
        plan: &BillingPlan,
        idempotency_key: &str,
    ) -> Result<Plan, RecurlyError> {
        self.call(
            "create plan",
            Method::POST,
            "/plans",
            Some(&plan_create(plan)),
            Some(idempotency_key),
        )
        .await
    }

    pub async fn plan_add_ons(&self, plan_code: &str) -> Result<Vec<AddOn>, RecurlyError> {
        self.list_all(
            "list add-ons",
            &format!("/plans/{}/add_ons", code_segment("code-", plan_code)),
        )
        .await
    }

    pub async fn create_add_on(
        &self,
        plan_code: &str,
        add_on: &UsageAddOn,
        currency: &str,
        idempotency_key: &str,
    ) -> Result<AddOn, RecurlyError> {
        let path = format!("/plans/{}/add_ons", code_segment("code-", plan_code));
        self.call(
            "create add-on",
            Method::POST,
            &path,
            Some(&add_on_create(add_on, currency)),
            Some(idempotency_key),
        )
        .await
    }

    /// Removes the plan from sale (Recurly calls it delete; the plan stays, inactive).
    pub async fn deactivate_plan(
        &self,
        plan_code: &str,
        idempotency_key: &str,
    ) -> Result<Plan, RecurlyError> {
        let path = format!("/plans/{}", code_segment("code-", plan_code));
        self.call(
            "deactivate plan",
            Method::DELETE,
            &path,
            None,
            Some(idempotency_key),
        )
        .await
    }

    pub async fn measured_unit(&self, name: &str) -> Result<Option<MeasuredUnit>, RecurlyError> {
        self.find(
            "get measured unit",
            &format!("/measured_units/{}", code_segment("name-", name)),
        )
        .await
    }

    pub async fn create_measured_unit(
        &self,
        name: &str,
        idempotency_key: &str,
    ) -> Result<MeasuredUnit, RecurlyError> {
        let body = json!({"name": name, "display_name": measured_unit_display_name(name)});
        self.call(
            "create measured unit",
            Method::POST,
            "/measured_units",
            Some(&body),
            Some(idempotency_key),
        )
        .await
    }

    pub async fn account(&self, code: &str) -> Result<Option<Account>, RecurlyError> {
        self.find(
            "get account",
            &format!("/accounts/{}", code_segment("code-", code)),
        )
        .await
    }

    pub async fn create_subscription(
        &self,
        new: &NewSubscription,
        idempotency_key: &str,
    ) -> Result<Subscription, RecurlyError> {
        let add_ons: Vec<Value> = new
            .add_on_codes
            .iter()
            .map(|code| json!({"code": code, "quantity": 1}))
            .collect();
        let body = json!({
            "plan_code": new.plan_code,
            "currency": new.currency,
            "account": {"code": new.account_code},
            "add_ons": add_ons,
        });
        self.call(
            "create subscription",
            Method::POST,
            "/subscriptions",
            Some(&body),
            Some(idempotency_key),
        )
        .await
    }

    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>, RecurlyError> {
        self.find(
            "get subscription",
            &format!("/subscriptions/{}", utf8_percent_encode(id, CODE_SAFE)),
        )
        .await
    }

    /// An account by its id (`GET /accounts/{id}`); `None` when it does not exist.
    pub async fn account_by_id(&self, id: &str) -> Result<Option<Account>, RecurlyError> {
        self.find(
            "get account",
            &format!("/accounts/{}", utf8_percent_encode(id, CODE_SAFE)),
        )
        .await
    }

    pub async fn invoice(&self, id: &str) -> Result<Option<Invoice>, RecurlyError> {
        self.find(
            "get invoice",
            &format!("/invoices/{}", utf8_percent_encode(id, CODE_SAFE)),
        )
        .await
    }

    /// A subscription's invoices in a state (`past_due`, `paid`, ...).
    pub async fn subscription_invoices(
        &self,
        subscription_id: &str,
        state: &str,
    ) -> Result<Vec<Invoice>, RecurlyError> {
        let path = format!(
            "/subscriptions/{}/invoices?state={state}",
            utf8_percent_encode(subscription_id, CODE_SAFE)
        );
        self.list_all("list subscription invoices", &path).await
    }

    /// One page of the site's subscriptions in `state` (`live`: active, canceled, future or in
    /// trial), the first when `next` is `None`; answers the page and the path of the next one.
    pub async fn site_subscriptions_page(
        &self,
        state: &str,
        next: Option<&str>,
    ) -> Result<(Vec<Subscription>, Option<String>), RecurlyError> {
        let path = match next {
            Some(next) => next.to_owned(),
            None => format!("/subscriptions?state={state}&limit={PAGE_LIMIT}"),
        };
        let page: Page<Subscription> = self
            .call("list site subscriptions", Method::GET, &path, None, None)
            .await?;
        let next = page.next.filter(|n| page.has_more && !n.is_empty());
        Ok((page.data, next))
    }

    /// Every subscription of an account (by id), whatever its state.
    pub async fn account_subscriptions_by_id(
        &self,
        account_id: &str,
    ) -> Result<Vec<Subscription>, RecurlyError> {
        let path = format!(
            "/accounts/{}/subscriptions",
            utf8_percent_encode(account_id, CODE_SAFE)
        );
        self.list_all("list account subscriptions", &path).await
    }

    /// Subscriptions of an account in a state (`live`, `active`, `canceled`, ...).
    pub async fn account_subscriptions(
        &self,
        account_code: &str,
        state: &str,
    ) -> Result<Vec<Subscription>, RecurlyError> {
        let path = format!(
            "/accounts/{}/subscriptions?state={state}",
            code_segment("code-", account_code)
        );
        self.list_all("list account subscriptions", &path).await
    }

    /// Cancels at the end of the term (or the next bill date).
    pub async fn cancel_subscription(
        &self,
        id: &str,
        at_bill_date: bool,
        idempotency_key: &str,
    ) -> Result<Subscription, RecurlyError> {
        let body = json!({"timeframe": if at_bill_date { "bill_date" } else { "term_end" }});
        let path = format!(
            "/subscriptions/{}/cancel",
            utf8_percent_encode(id, CODE_SAFE)
        );
        self.call(
            "cancel subscription",
            Method::PUT,
            &path,
            Some(&body),
            Some(idempotency_key),
        )
        .await
    }

    /// Ends the subscription now; unbilled usage is charged on the final invoice.
    pub async fn terminate_subscription(
        &self,
        id: &str,
        idempotency_key: &str,
    ) -> Result<Subscription, RecurlyError> {
        let path = format!(
            "/subscriptions/{}?refund=none&charge=true",
            utf8_percent_encode(id, CODE_SAFE)
        );
        self.call(
            "terminate subscription",
            Method::DELETE,
            &path,
            None,
            Some(idempotency_key),
        )
        .await
    }

    pub async fn create_usage(
        &self,
        subscription_id: &str,
        add_on_code: &str,
        usage: &NewUsage,
        idempotency_key: &str,
    ) -> Result<Usage, RecurlyError> {
        let path = format!(
            "/subscriptions/{}/add_ons/{}/usage",
            utf8_percent_encode(subscription_id, CODE_SAFE),
            code_segment("code-", add_on_code)
        );
        let body = json!({
            "amount": usage.amount,
            "merchant_tag": usage.merchant_tag,
            "usage_timestamp": timestamp(&usage.usage_timestamp),
        });
        self.call(
            "create usage",
            Method::POST,
            &path,
            Some(&body),
            Some(idempotency_key),
        )
        .await
    }

    /// Every usage record of a subscription add-on, billed or not.
    pub async fn usage(
        &self,
        subscription_id: &str,
        add_on_code: &str,
    ) -> Result<Vec<Usage>, RecurlyError> {
        let path = format!(
            "/subscriptions/{}/add_ons/{}/usage?billing_status=all&sort=usage_timestamp&order=asc",
            utf8_percent_encode(subscription_id, CODE_SAFE),
            code_segment("code-", add_on_code)
        );
        self.list_all("list usage", &path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_quota_stays_within_five_minutes_of_budget() {
        for per_minute in [1, 3, 400, 1_000] {
            let quota = site_quota(per_minute).unwrap();
            let burst = f64::from(quota.burst_size().get());
            let refill = 300.0 / quota.replenish_interval().as_secs_f64();
            assert!(
                burst + refill <= f64::from(per_minute) * 5.0 + 1.0,
                "{per_minute}/min: {burst} + {refill}"
            );
        }
        assert!(site_quota(0).is_none());
    }

    #[test]
    fn codes_are_percent_encoded_in_paths() {
        assert_eq!(
            code_segment("code-", "amplify-plan-ab_1"),
            "code-amplify-plan-ab_1"
        );
        assert_eq!(code_segment("code-", "a+b/c"), "code-a%2Bb%2Fc");
    }
}
