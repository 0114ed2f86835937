//! Accounts: create (also from a subscription), look up by id or `code-`, update, close and
//! reopen, with their `has_*_subscription` flags worked out at read time.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::paging::{ListQuery, paginate};
use super::store::*;
use super::subscriptions::subscription_is_live;
use super::validation::{self as v, Checker, TAKEN, object_body};

impl Store {
    // ---- accounts ----------------------------------------------------------------------

    pub(super) fn account(&self, key: &str) -> Result<&Record> {
        lookup(&self.accounts, &self.account_by_code, key, "code-")
            .ok_or_else(|| ApiError::not_found("Account", key))
    }

    pub(super) fn subscriptions_of<'a>(
        &'a self,
        account_id: &str,
    ) -> impl Iterator<Item = &'a Record> + 'a {
        self.account_subscriptions
            .get(account_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.subscriptions.get(id))
    }

    /// The Account body with its `has_*_subscription` flags worked out now.
    pub(super) fn render_account(&self, account: &Record, now: DateTime<Utc>) -> Value {
        let mut body = account.body.clone();
        let states: Vec<&str> = self
            .subscriptions_of(&account.id)
            .map(|s| s.text("state"))
            .collect();
        let has = |state: &str| states.contains(&state);
        let live = self
            .subscriptions_of(&account.id)
            .any(|s| subscription_is_live(s, now));
        body.insert("has_live_subscription".into(), json!(live));
        body.insert("has_active_subscription".into(), json!(has("active")));
        body.insert("has_future_subscription".into(), json!(has("future")));
        body.insert("has_canceled_subscription".into(), json!(has("canceled")));
        body.insert("has_paused_subscription".into(), json!(has("paused")));
        body.insert(
            "has_past_due_invoice".into(),
            json!(self.has_past_due_invoice(&account.id)),
        );
        Value::Object(body)
    }

    /// Validates an AccountCreate; `prefix` is `account.` when it sits inside a subscription.
    pub(super) fn account_fields_for_create(
        &self,
        input: &Map<String, Value>,
        prefix: &str,
        checker: &mut Checker,
    ) -> Map<String, Value> {
        let mut fields = v::account_fields(input, prefix, checker);
        if let Some(code) = checker.string(input, prefix, "code", v::CODE_MAX, true) {
            if self.account_by_code.contains_key(&code) {
                checker.fail(format!("{prefix}code"), TAKEN);
            }
            fields.insert("code".into(), json!(code));
        }
        let parent = input
            .get("parent_account_code")
            .and_then(Value::as_str)
            .map(|c| format!("code-{c}"))
            .or_else(|| {
                input
                    .get("parent_account_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        if let Some(parent) = parent {
            match self.account(&parent) {
                Ok(p) => {
                    fields.insert("parent_account_id".into(), json!(p.id));
                }
                Err(_) => checker.fail(format!("{prefix}parent_account_code"), "is invalid"),
            }
        }
        fields
    }

    pub(super) fn insert_account(
        &mut self,
        mut fields: Map<String, Value>,
        now: DateTime<Utc>,
    ) -> String {
        fields.insert("state".into(), json!("active"));
        fields.entry("bill_to").or_insert(json!("self"));
        fields.entry("tax_exempt").or_insert(json!(false));
        fields.entry("custom_fields").or_insert(json!([]));
        fields.insert("shipping_addresses".into(), json!([]));
        fields.insert(
            "hosted_login_token".into(),
            json!(uuid::Uuid::new_v4().simple().to_string()),
        );
        let seq = self.next_seq();
        let record = Record::new(seq, now, "account", fields);
        let id = record.id.clone();
        self.account_by_code
            .insert(record.text("code").to_owned(), id.clone());
        self.accounts.insert(id.clone(), record);
        id
    }

    pub(super) fn account_create_fields() -> Vec<&'static str> {
        v::ACCOUNT_UPDATE_FIELDS
            .iter()
            .chain(v::ACCOUNT_CREATE_EXTRA_FIELDS)
            .copied()
            .collect()
    }

    pub fn create_account(&mut self, input: &Value, now: DateTime<Utc>) -> Result<Reply> {
        let input = object_body(input, &Self::account_create_fields())?;
        let mut checker = Checker::default();
        let fields = self.account_fields_for_create(input, "", &mut checker);
        checker.finish()?;
        let id = self.insert_account(fields, now);
        Ok(Reply::Json(
            201,
            self.render_account(&self.accounts[&id], now),
        ))
    }

    pub fn get_account(&self, key: &str, now: DateTime<Utc>) -> Result<Reply> {
        Ok(Reply::Json(
            200,
            self.render_account(self.account(key)?, now),
        ))
    }

    pub fn list_accounts(&self, query: &ListQuery, now: DateTime<Utc>) -> Result<Reply> {
        let email = query.param("email");
        let subscriber = match query.param("subscriber") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err(ApiError::bad_request("subscriber must be true or false")),
        };
        let past_due = query.param("past_due").is_some();
        let matching = self.accounts.values().filter(|a| {
            let subscribed = || {
                self.subscriptions_of(&a.id)
                    .any(|s| matches!(s.text("state"), "active" | "canceled" | "future"))
            };
            (!past_due || self.has_past_due_invoice(&a.id))
                && email.is_none_or(|e| a.text("email") == e)
                && subscriber.is_none_or(|want| subscribed() == want)
        });
        Ok(list_of(paginate(rows(matching, query), query), |r| {
            self.render_account(r, now)
        }))
    }

    pub fn update_account(
        &mut self,
        key: &str,
        input: &Value,
        now: DateTime<Utc>,
    ) -> Result<Reply> {
        let account = self.account(key)?;
        let update = object_body(input, v::ACCOUNT_UPDATE_FIELDS)?;
        let mut checker = Checker::default();
        let fields = v::account_fields(update, "", &mut checker);
        checker.finish()?;
        let id = account.id.clone();
        let account = self.accounts.get_mut(&id).expect("account looked up above");
        account.body.extend(fields);
        account.touch(now);
        Ok(Reply::Json(
            200,
            self.render_account(&self.accounts[&id], now),
        ))
    }

    pub fn deactivate_account(&mut self, key: &str, now: DateTime<Utc>) -> Result<Reply> {
        let id = self.account(key)?.id.clone();
        if !self.accounts[&id].active() {
            return Err(ApiError::new(
                "validation",
                "Account may already be inactive.",
            ));
        }
        self.cancel_for_closed_account(&id, now);
        let account = self.accounts.get_mut(&id).expect("account looked up above");
        account.deactivate(now);
        let mut fields = serde_json::Map::new();
        fields.insert("account_code".into(), account.field("code").clone());
        self.notify(now, "account", "closed", &id, fields);
        Ok(Reply::Json(
            200,
            self.render_account(&self.accounts[&id], now),
        ))
    }

    pub fn reactivate_account(&mut self, key: &str, now: DateTime<Utc>) -> Result<Reply> {
        let id = self.account(key)?.id.clone();
        let account = self.accounts.get_mut(&id).expect("account looked up above");
        if account.active() {
            return Err(ApiError::new("validation", "Account is already active."));
        }
        account.touch(now);
        account.body.insert("state".into(), json!("active"));
        account.body.remove("deleted_at");
        Ok(Reply::Json(
            200,
            self.render_account(&self.accounts[&id], now),
        ))
    }
}
