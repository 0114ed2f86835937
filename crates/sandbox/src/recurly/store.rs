//! The Recurly site's data, indexed by id and natural key, with the records, answers and the
//! site-policy choices ([U]/[I] facts) the operations in `catalog`, `accounts`, `subscriptions`
//! and `usage` share.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Months, SecondsFormat, Utc};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::paging::{ListQuery, Page, Row};

/// A second live subscription of one account to one plan is refused with "You already have a
/// subscription to this plan." [U: a site setting ("multiple subscriptions"), off here].
pub(crate) const ONE_LIVE_SUBSCRIPTION_PER_PLAN: bool = true;
/// How far ahead of the server clock a `usage_timestamp` may be before it counts as "in the
/// future" [U: v2 refused even a few seconds of skew; this allows a little].
pub(crate) const USAGE_CLOCK_SKEW_ALLOWANCE: Duration = Duration::seconds(5);
/// Without the site's Decimal Quantity feature Recurly strips a usage amount's decimals
/// (reference §6); the sandbox site does not have it.
pub(crate) const DECIMAL_QUANTITY_FEATURE: bool = false;

/// A deleted plan, add-on or measured unit stays retrievable and keeps its code (or name), so
/// the code cannot be reused [U: reference §2; `list_plans?state=inactive` suggests it stays].
pub(crate) fn deleted_codes_stay_taken() -> bool {
    true
}

/// RFC 3339 in UTC with whole seconds, as Recurly writes timestamps.
pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Recurly ids: 12 characters of lower-case base 36.
pub(crate) fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// One stored resource: its response body kept current, plus what listing needs.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub id: String,
    pub seq: u64,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub body: Map<String, Value>,
}

impl Record {
    pub(super) fn new(
        seq: u64,
        now: DateTime<Utc>,
        object: &str,
        mut body: Map<String, Value>,
    ) -> Record {
        let id = new_id();
        body.insert("id".into(), json!(id));
        body.insert("object".into(), json!(object));
        body.insert("created_at".into(), json!(timestamp(now)));
        body.insert("updated_at".into(), json!(timestamp(now)));
        Record {
            id,
            seq,
            created: now,
            updated: now,
            body,
        }
    }

    pub(super) fn touch(&mut self, now: DateTime<Utc>) {
        self.updated = now;
        self.body.insert("updated_at".into(), json!(timestamp(now)));
    }

    /// A body field, `null` when absent (indexing a `Map` directly would panic).
    pub fn field(&self, key: &str) -> &Value {
        self.body.get(key).unwrap_or(&Value::Null)
    }

    pub fn text(&self, key: &str) -> &str {
        self.body
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub(super) fn active(&self) -> bool {
        self.text("state") == "active"
    }

    pub(super) fn deactivate(&mut self, now: DateTime<Utc>) {
        self.touch(now);
        self.body.insert("state".into(), json!("inactive"));
        self.body.insert("deleted_at".into(), json!(timestamp(now)));
    }

    /// The body to merge an update into: the stored fields without the read-only ones.
    pub(super) fn editable(&self) -> Map<String, Value> {
        let mut fields = self.body.clone();
        for key in [
            "id",
            "object",
            "state",
            "plan_id",
            "created_at",
            "updated_at",
            "deleted_at",
        ] {
            fields.remove(key);
        }
        fields
    }
}

/// A usage record and the keys it is found by.
#[derive(Clone, Debug)]
pub(crate) struct UsageRecord {
    pub record: Record,
    pub subscription_id: String,
    pub add_on_id: String,
    pub usage_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub amount: f64,
    /// When a renewal put it on an invoice; `None` while unbilled (trial usage stays so).
    pub billed_at: Option<DateTime<Utc>>,
}

/// What a handler answers: a status and JSON body, or a list page (HEAD needs its total).
pub(crate) enum Reply {
    Json(u16, Value),
    /// A stored record's body, serialized with every documented field (`fields.rs`).
    Raw(u16, String),
    List(Page<Value>),
    NoContent,
}

impl Reply {
    pub(super) fn raw(status: u16, body: &Map<String, Value>) -> Reply {
        let mut body = Value::Object(body.clone());
        super::fields::complete_answer(&mut body);
        Reply::Raw(status, body.to_string())
    }
}

pub(super) type Result<T> = std::result::Result<T, ApiError>;

#[derive(Default)]
pub(crate) struct Store {
    pub(super) seq: u64,
    pub(super) plans: HashMap<String, Record>,
    pub(super) plan_by_code: HashMap<String, String>,
    pub(super) add_ons: HashMap<String, Record>,
    pub(super) plan_add_ons: HashMap<String, Vec<String>>,
    pub(super) add_on_by_code: HashMap<(String, String), String>,
    pub(super) units: HashMap<String, Record>,
    pub(super) unit_by_name: HashMap<String, String>,
    pub(super) accounts: HashMap<String, Record>,
    pub(super) account_by_code: HashMap<String, String>,
    pub(super) subscriptions: HashMap<String, Record>,
    pub(super) subscription_by_uuid: HashMap<String, String>,
    pub(super) account_subscriptions: HashMap<String, Vec<String>>,
    pub(super) usage: HashMap<String, UsageRecord>,
    pub(super) usage_by_add_on: HashMap<(String, String), Vec<String>>,
    /// The billing cycle: invoices, what each subscription has been billed, due work.
    pub(super) billing: super::billing::Billing,
}

/// `{id}` or `{prefix}{natural key}` in a path, e.g. `code-basic`.
pub(super) fn lookup<'a>(
    records: &'a HashMap<String, Record>,
    index: &HashMap<String, String>,
    key: &str,
    prefix: &str,
) -> Option<&'a Record> {
    match key.strip_prefix(prefix) {
        Some(natural) => index.get(natural).and_then(|id| records.get(id)),
        None => records.get(key),
    }
}

pub(super) fn rows<'a>(
    records: impl Iterator<Item = &'a Record>,
    query: &ListQuery,
) -> Vec<Row<&'a Record>> {
    records
        .map(|r| Row {
            key: if query.sort == "updated_at" {
                r.updated
            } else {
                r.created
            },
            seq: r.seq,
            id: r.id.clone(),
            item: r,
        })
        .collect()
}

pub(super) fn state_filter(query: &ListQuery) -> Result<Option<&str>> {
    match query.param("state") {
        None => Ok(None),
        Some(s @ ("active" | "inactive")) => Ok(Some(s)),
        Some(other) => Err(ApiError::bad_request(format!(
            "state must be active or inactive, not '{other}'"
        ))),
    }
}

pub(super) fn list_of(page: Page<&Record>, render: impl Fn(&Record) -> Value) -> Reply {
    Reply::List(Page {
        data: page.data.into_iter().map(render).collect(),
        has_more: page.has_more,
        next: page.next,
        total: page.total,
    })
}

/// `start` plus `length` days or months; an interval past the calendar's end stays at `start`
/// rather than overflowing (plans may ask for up to 2³¹ units).
pub(super) fn add_interval(start: DateTime<Utc>, unit: &str, length: i64) -> DateTime<Utc> {
    let end = if unit == "days" {
        Duration::try_days(length).and_then(|d| start.checked_add_signed(d))
    } else {
        u32::try_from(length)
            .ok()
            .and_then(|months| start.checked_add_months(Months::new(months)))
    };
    end.unwrap_or(start)
}

impl Store {
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(reply: Result<Reply>) -> Value {
        match reply {
            Ok(Reply::Json(_, v)) => v,
            Ok(Reply::Raw(_, text)) => serde_json::from_str(&text).unwrap(),
            Ok(_) => Value::Null,
            Err(e) => panic!("{e}"),
        }
    }

    fn error(reply: Result<Reply>) -> ApiError {
        match reply {
            Err(e) => e,
            Ok(_) => panic!("expected an error"),
        }
    }

    /// A site with a measured unit and plan `basic` holding usage add-on `calls` and fixed `seats`.
    fn site() -> (Store, DateTime<Utc>) {
        let mut store = Store::default();
        let now = Utc::now();
        body(store.create_unit(&json!({"name": "calls", "display_name": "Calls"}), now));
        body(store.create_plan(
            &json!({"code": "basic", "name": "Basic", "currencies": [{"currency": "USD", "unit_amount": 0}],
                "add_ons": [
                    {"code": "calls", "name": "Calls", "add_on_type": "usage", "usage_type": "price",
                     "measured_unit_name": "calls", "currencies": [{"currency": "USD", "unit_amount_decimal": "0.002"}]},
                    {"code": "seats", "name": "Seats", "currencies": [{"currency": "USD", "unit_amount": 5}]}]}),
            now,
        ));
        (store, now)
    }

    fn subscribe(store: &mut Store, account: &str, now: DateTime<Utc>) -> Result<Reply> {
        store.create_subscription(
            &json!({"plan_code": "basic", "currency": "USD", "account": {"code": account},
                "add_ons": [{"code": "calls"}, {"code": "seats", "quantity": 2}]}),
            now,
        )
    }

    #[test]
    fn a_subscription_creates_its_account_and_prices_its_add_ons() {
        let (mut store, now) = site();
        let sub = body(subscribe(&mut store, "consumer-1", now));
        assert_eq!(sub["state"], "active");
        assert_eq!(sub["account"]["code"], "consumer-1");
        assert_eq!(sub["add_ons"][0]["add_on"]["code"], "calls");
        assert_eq!(sub["add_ons"][0]["unit_amount_decimal"], "0.002");
        assert_eq!(sub["add_ons_total"], 10.0);
        let account = body(store.get_account("code-consumer-1", now));
        assert_eq!(account["has_live_subscription"], true);
    }

    #[test]
    fn a_second_live_subscription_to_the_same_plan_is_refused() {
        let (mut store, now) = site();
        body(subscribe(&mut store, "consumer-1", now));
        let err = error(subscribe(&mut store, "consumer-1", now));
        assert_eq!(err.message, "You already have a subscription to this plan.");
    }

    #[test]
    fn usage_add_ons_take_quantity_one_only() {
        let (mut store, now) = site();
        let err = error(store.create_subscription(
            &json!({"plan_code": "basic", "currency": "USD", "account": {"code": "c"}, "add_ons": [{"code": "calls", "quantity": 2}]}),
            now,
        ));
        assert_eq!(err.params[0].param, "add_ons[0].quantity");
        assert!(
            store.account("code-c").is_err(),
            "a refused subscription creates no account"
        );
    }

    #[test]
    fn usage_is_refused_in_the_future_and_on_fixed_add_ons() {
        let (mut store, now) = site();
        let sub = body(subscribe(&mut store, "c", now));
        let id = sub["id"].as_str().unwrap();
        let ahead = timestamp(now + Duration::seconds(60));
        let err = error(store.create_usage(
            id,
            "code-calls",
            &json!({"amount": 1, "usage_timestamp": ahead}),
            now,
        ));
        assert_eq!(err.params[0].param, "usage_timestamp");
        let skewed = timestamp(now + USAGE_CLOCK_SKEW_ALLOWANCE - Duration::seconds(1));
        body(store.create_usage(
            id,
            "code-calls",
            &json!({"amount": 1, "usage_timestamp": skewed}),
            now,
        ));
        assert_eq!(
            error(store.create_usage(id, "code-seats", &json!({"amount": 1}), now)).kind,
            "validation"
        );
        assert_eq!(
            error(store.create_usage(id, "code-nope", &json!({"amount": 1}), now)).kind,
            "not_found"
        );
    }

    #[test]
    fn terminating_without_charge_zeroes_the_unbilled_usage() {
        let (mut store, now) = site();
        let sub = body(subscribe(&mut store, "c", now));
        let id = sub["id"].as_str().unwrap();
        body(store.create_usage(id, "code-calls", &json!({"amount": 40}), now));
        body(store.create_usage(id, "code-calls", &json!({"amount": 2}), now));
        let totals = store.usage_totals();
        assert_eq!((totals[0].records, totals[0].amount), (2, 42.0));
        let expired = body(store.terminate_subscription(id, Some("none"), Some("false"), now));
        assert_eq!(expired["state"], "expired");
        let totals = store.usage_totals();
        assert_eq!((totals[0].records, totals[0].amount), (3, 0.0));
        assert_eq!(
            error(store.create_usage(id, "code-calls", &json!({"amount": 1}), now)).kind,
            "validation"
        );
    }

    #[test]
    fn a_deleted_plan_stays_readable_and_keeps_its_code() {
        let (mut store, now) = site();
        let deleted = body(store.delete_plan("code-basic", now));
        assert_eq!(deleted["state"], "inactive");
        assert!(deleted.get("deleted_at").is_some());
        assert_eq!(body(store.get_plan("code-basic"))["state"], "inactive");
        let again = store.create_plan(
            &json!({"code": "basic", "name": "B", "currencies": [{"currency": "USD"}]}),
            now,
        );
        assert_eq!(error(again).message, "Code has already been taken.");
        assert!(
            error(subscribe(&mut store, "c", now))
                .params
                .iter()
                .any(|p| p.param == "plan_code")
        );
    }

    #[test]
    fn cancel_then_reactivate_follows_recurlys_state_rules() {
        let (mut store, now) = site();
        let sub = body(subscribe(&mut store, "c", now));
        let id = sub["id"].as_str().unwrap();
        let canceled = body(store.cancel_subscription(id, &json!({"timeframe": "bill_date"}), now));
        assert_eq!(canceled["state"], "canceled");
        assert_eq!(canceled["expires_at"], canceled["current_period_ends_at"]);
        let err = error(store.cancel_subscription(id, &Value::Null, now));
        assert_eq!(
            err.message,
            "Only active and future subscriptions can be canceled"
        );
        assert_eq!(
            body(store.reactivate_subscription(id, now))["state"],
            "active"
        );
    }

    #[test]
    fn an_interval_past_the_calendar_does_not_overflow() {
        let (mut store, now) = site();
        body(store.create_plan(
            &json!({"code": "forever", "name": "Forever", "interval_unit": "days",
                "interval_length": 2147483647, "currencies": [{"currency": "USD", "unit_amount": 1}]}),
            now,
        ));
        let sub = store.create_subscription(
            &json!({"plan_code": "forever", "currency": "USD", "account": {"code": "c"}, "total_billing_cycles": 2147483647}),
            now,
        );
        assert_eq!(body(sub)["state"], "active");
    }

    #[test]
    fn a_change_now_replaces_the_add_ons_and_keeps_the_ones_named_by_id() {
        let (mut store, now) = site();
        let sub = body(store.create_subscription(
            &json!({"plan_code": "basic", "currency": "USD", "account": {"code": "c"}, "add_ons": [{"code": "calls"}]}),
            now,
        ));
        let id = sub["id"].as_str().unwrap();
        let kept_id = sub["add_ons"][0]["id"].clone();
        let change = body(store.change_subscription(
            id,
            &json!({"add_ons": [{"id": kept_id}, {"code": "seats", "quantity": 4}]}),
            now,
        ));
        assert_eq!(change["activated"], true);
        let changed = body(store.get_subscription(id));
        assert_eq!(changed["add_ons"][0]["id"], kept_id);
        assert_eq!(changed["add_ons"][1]["quantity"], 4);
        assert_eq!(changed["add_ons_total"], 20.0);

        let pending = body(store.change_subscription(
            id,
            &json!({"timeframe": "renewal", "add_ons": []}),
            now,
        ));
        assert_eq!(pending["activated"], false);
        assert_eq!(
            body(store.get_subscription(id))["add_ons"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(matches!(
            store.delete_subscription_change(id, now),
            Ok(Reply::NoContent)
        ));
        assert_eq!(error(store.get_subscription_change(id)).kind, "not_found");
    }
}
