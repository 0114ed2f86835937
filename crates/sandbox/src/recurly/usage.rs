//! Usage records per (subscription, add-on): create, list, edit, delete, and the totals the
//! sandbox control route reports.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::paging::{ListQuery, Page, Row, paginate, parse_time};
use super::store::*;
use super::validation::{self as v, Checker, object_body};

/// The fields of a UsageCreate body, each checked.
struct UsageInput {
    amount: Option<f64>,
    merchant_tag: Option<String>,
    usage_at: Option<DateTime<Utc>>,
    recorded_at: Option<DateTime<Utc>>,
}

/// One line of `GET /_sandbox/recurly/usage_totals`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct UsageTotal {
    pub subscription_id: String,
    pub subscription_uuid: String,
    pub account_code: String,
    pub plan_code: String,
    pub add_on_code: String,
    pub records: u64,
    pub amount: f64,
}

impl Store {
    // ---- usage -------------------------------------------------------------------------

    /// The subscription and the plan add-on a usage path names (`{id}` or `code-{code}`).
    pub(super) fn usage_target(
        &self,
        sub_key: &str,
        add_on_key: &str,
    ) -> Result<(&Record, &Value)> {
        let sub = self.subscription(sub_key)?;
        let plan_id = sub.field("plan")["id"].as_str().unwrap_or_default();
        let code = add_on_key.strip_prefix("code-");
        let on_subscription = sub
            .field("add_ons")
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| match code {
                Some(code) => a["add_on"]["code"] == json!(code),
                None => a["add_on"]["id"] == json!(add_on_key) || a["id"] == json!(add_on_key),
            });
        match on_subscription {
            Some(add_on) => Ok((sub, add_on)),
            None => {
                self.plan_add_on(plan_id, add_on_key)?;
                Err(ApiError::validation_message(
                    "The add-on is not on this subscription.",
                    "add_on_id",
                ))
            }
        }
    }

    fn usage_fields(
        input: &Map<String, Value>,
        checker: &mut Checker,
        now: DateTime<Utc>,
    ) -> UsageInput {
        let amount = match input.get("amount") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_f64() {
                Some(n) if DECIMAL_QUANTITY_FEATURE => Some((n * 1e9).round() / 1e9),
                Some(n) => Some(n.trunc()),
                None => {
                    checker.fail("amount", "must be a number");
                    None
                }
            },
        };
        let merchant_tag = checker.string(input, "", "merchant_tag", usize::MAX, false);
        let mut time = |key: &str| -> Option<DateTime<Utc>> {
            let text = input.get(key).filter(|v| !v.is_null())?;
            let parsed = text.as_str().and_then(parse_time);
            if parsed.is_none() {
                checker.fail(key, "is not a valid date-time");
            }
            parsed
        };
        let usage_at = time("usage_timestamp");
        let recorded_at = time("recording_timestamp");
        if usage_at.is_some_and(|t| t > now + USAGE_CLOCK_SKEW_ALLOWANCE) {
            checker.fail("usage_timestamp", "can't be in the future");
        }
        UsageInput {
            amount,
            merchant_tag,
            usage_at,
            recorded_at,
        }
    }

    pub fn create_usage(
        &mut self,
        sub_key: &str,
        add_on_key: &str,
        input: &Value,
        now: DateTime<Utc>,
    ) -> Result<Reply> {
        let (sub, add_on) = self.usage_target(sub_key, add_on_key)?;
        let input = object_body(input, v::USAGE_CREATE_FIELDS)?;
        if add_on["add_on"]["add_on_type"] != "usage" {
            return Err(ApiError::validation_message(
                "Usage can only be logged on usage add-ons.",
                "add_on_id",
            ));
        }
        if matches!(sub.text("state"), "expired" | "failed") {
            return Err(ApiError::validation_message(
                "Usage cannot be logged on an expired subscription.",
                "subscription_id",
            ));
        }
        let mut checker = Checker::default();
        let UsageInput {
            amount,
            merchant_tag,
            usage_at,
            recorded_at,
        } = Self::usage_fields(input, &mut checker, now);
        if amount.is_none() && input.get("amount").is_none_or(Value::is_null) {
            checker.fail("amount", "can't be blank");
        }
        checker.finish()?;
        let usage_at = usage_at.unwrap_or(now);
        let recorded_at = recorded_at.unwrap_or(now);
        self.check_correction(&sub.id, add_on, usage_at)?;
        let amount = amount.unwrap_or_default();
        let mut body = Map::new();
        body.insert("amount".into(), json!(amount));
        if let Some(tag) = merchant_tag {
            body.insert("merchant_tag".into(), json!(tag));
        }
        let priced = &add_on["add_on"];
        if let Some(usage_type) = priced.get("usage_type") {
            body.insert("usage_type".into(), usage_type.clone());
        }
        for key in [
            "tier_type",
            "tiers",
            "usage_percentage",
            "unit_amount",
            "unit_amount_decimal",
        ] {
            if let Some(value) = add_on.get(key) {
                body.insert(key.into(), value.clone());
            }
        }
        if let Some(unit) = priced.get("measured_unit_id") {
            body.insert("measured_unit_id".into(), unit.clone());
        }
        // Unbilled until a renewal invoices it; Recurly sends the unset field as null (§6).
        body.insert("billed_at".into(), Value::Null);
        body.insert("usage_timestamp".into(), json!(timestamp(usage_at)));
        body.insert("recording_timestamp".into(), json!(timestamp(recorded_at)));
        let mut fields = Map::new();
        fields.insert("subscription_uuid".into(), sub.field("uuid").clone());
        fields.insert("add_on_code".into(), priced["code"].clone());
        let subscription_id = sub.id.clone();
        let add_on_id = priced["id"].as_str().unwrap_or_default().to_owned();
        let seq = self.next_seq();
        let record = Record::new(seq, now, "usage", body);
        let id = record.id.clone();
        let body = record.body.clone();
        self.usage_by_add_on
            .entry((subscription_id.clone(), add_on_id.clone()))
            .or_default()
            .push(id.clone());
        self.usage.insert(
            id.clone(),
            UsageRecord {
                record,
                subscription_id,
                add_on_id,
                usage_at,
                recorded_at,
                amount,
                billed_at: None,
            },
        );
        self.notify(now, "usage", "created", &id, fields);
        Ok(Reply::Json(201, Value::Object(body)))
    }

    pub fn list_usage(&self, sub_key: &str, add_on_key: &str, query: &ListQuery) -> Result<Reply> {
        let (sub, add_on) = self.usage_target(sub_key, add_on_key)?;
        // `billing_status` defaults to `unbilled` (reference §6).
        let wanted: Option<bool> = match query.param("billing_status") {
            None | Some("unbilled") => Some(false),
            Some("all") => None,
            Some("billed") => Some(true),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "billing_status must be unbilled, billed or all, not '{other}'"
                )));
            }
        };
        let pair = (
            sub.id.clone(),
            add_on["add_on"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let records = self
            .usage_by_add_on
            .get(&pair)
            .into_iter()
            .flatten()
            .filter_map(|id| self.usage.get(id))
            .filter(|u| wanted.is_none_or(|billed| u.billed_at.is_some() == billed));
        let by_recording = query.sort == "recorded_timestamp";
        let rows = records
            .map(|u| Row {
                key: if by_recording {
                    u.recorded_at
                } else {
                    u.usage_at
                },
                seq: u.record.seq,
                id: u.record.id.clone(),
                item: u,
            })
            .collect();
        let page = paginate(rows, query);
        Ok(Reply::List(Page {
            data: page
                .data
                .into_iter()
                .map(|u| Value::Object(u.record.body.clone()))
                .collect(),
            has_more: page.has_more,
            next: page.next,
            total: page.total,
        }))
    }

    pub(super) fn usage_record(&self, id: &str) -> Result<&UsageRecord> {
        self.usage
            .get(id)
            .ok_or_else(|| ApiError::not_found("Usage", id))
    }

    pub fn get_usage(&self, id: &str) -> Result<Reply> {
        Ok(Reply::raw(200, &self.usage_record(id)?.record.body))
    }

    pub fn update_usage(&mut self, id: &str, input: &Value, now: DateTime<Utc>) -> Result<Reply> {
        self.usage_record(id)?;
        let input = object_body(input, v::USAGE_CREATE_FIELDS)?;
        let mut checker = Checker::default();
        let UsageInput {
            amount,
            merchant_tag,
            usage_at,
            recorded_at,
        } = Self::usage_fields(input, &mut checker, now);
        checker.finish()?;
        let usage = self.usage_record(id)?;
        if usage.billed_at.is_some()
            && (amount.is_some() || usage_at.is_some() || recorded_at.is_some())
        {
            return Err(ApiError::validation_message(
                super::billing::BILLED_USAGE_IMMUTABLE,
                "amount",
            ));
        }
        if let Some(at) = usage_at {
            let add_on = self
                .subscriptions
                .get(&usage.subscription_id)
                .and_then(|s| {
                    s.field("add_ons")
                        .as_array()?
                        .iter()
                        .find(|a| a["add_on"]["id"] == json!(usage.add_on_id))
                        .cloned()
                })
                .unwrap_or(Value::Null);
            self.check_correction(&usage.subscription_id, &add_on, at)?;
        }
        let usage = self.usage.get_mut(id).expect("usage looked up above");
        if let Some(amount) = amount {
            usage.amount = amount;
            usage.record.body.insert("amount".into(), json!(amount));
        }
        if let Some(tag) = merchant_tag {
            usage.record.body.insert("merchant_tag".into(), json!(tag));
        }
        if let Some(t) = usage_at {
            usage.usage_at = t;
            usage
                .record
                .body
                .insert("usage_timestamp".into(), json!(timestamp(t)));
        }
        if let Some(t) = recorded_at {
            usage.recorded_at = t;
            usage
                .record
                .body
                .insert("recording_timestamp".into(), json!(timestamp(t)));
        }
        usage.record.touch(now);
        Ok(Reply::Json(200, Value::Object(usage.record.body.clone())))
    }

    pub fn delete_usage(&mut self, id: &str) -> Result<Reply> {
        if self.usage_record(id)?.billed_at.is_some() {
            return Err(ApiError::validation_message(
                super::billing::BILLED_USAGE_UNDELETABLE,
                "usage_id",
            ));
        }
        let usage = self
            .usage
            .remove(id)
            .ok_or_else(|| ApiError::not_found("Usage", id))?;
        if let Some(ids) = self
            .usage_by_add_on
            .get_mut(&(usage.subscription_id, usage.add_on_id))
        {
            ids.retain(|u| u != id);
        }
        Ok(Reply::NoContent)
    }

    /// Every usage record summed per subscription and add-on, for tests proving reported usage.
    pub fn usage_totals(&self) -> Vec<UsageTotal> {
        let mut totals: Vec<UsageTotal> = self
            .usage_by_add_on
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .filter_map(|((sub_id, add_on_id), ids)| {
                let sub = self.subscriptions.get(sub_id)?;
                let add_on = self.add_ons.get(add_on_id);
                let records = ids.iter().filter_map(|id| self.usage.get(id));
                Some(UsageTotal {
                    subscription_id: sub_id.clone(),
                    subscription_uuid: sub.text("uuid").to_owned(),
                    account_code: sub.field("account")["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    plan_code: sub.field("plan")["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    add_on_code: add_on
                        .map(|a| a.text("code").to_owned())
                        .unwrap_or_default(),
                    records: ids.len() as u64,
                    amount: records.fold(0.0, |total, u| total + u.amount),
                })
            })
            .collect();
        totals.sort_by(|a, b| {
            (&a.account_code, &a.subscription_id, &a.add_on_code).cmp(&(
                &b.account_code,
                &b.subscription_id,
                &b.add_on_code,
            ))
        });
        totals
    }
}
