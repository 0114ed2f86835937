//! Subscriptions: create on an existing or new account, billing periods and terms, cancel,
//! reactivate, terminate (with Recurly's usage zero-out), changes, and the state filters.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::paging::{ListQuery, paginate, parse_time};
use super::store::*;
use super::validation::{self as v, Checker, TAKEN, object_body};

impl Store {
    // ---- subscriptions -----------------------------------------------------------------

    pub(super) fn subscription(&self, key: &str) -> Result<&Record> {
        lookup(
            &self.subscriptions,
            &self.subscription_by_uuid,
            key,
            "uuid-",
        )
        .ok_or_else(|| ApiError::not_found("Subscription", key))
    }

    pub fn create_subscription(&mut self, input: &Value, now: DateTime<Utc>) -> Result<Reply> {
        let input = object_body(input, v::SUBSCRIPTION_CREATE_FIELDS)?;
        let mut checker = Checker::default();

        let plan_key = checker.string(input, "", "plan_id", 13, false).or_else(|| {
            checker
                .string(input, "", "plan_code", v::CODE_MAX, false)
                .map(|c| format!("code-{c}"))
        });
        let plan = match plan_key {
            None => {
                checker.fail("plan_code", "can't be blank");
                None
            }
            Some(key) => match self.plan(&key) {
                Ok(plan) if plan.active() => Some(plan),
                Ok(_) => {
                    checker.fail("plan_code", "is inactive");
                    None
                }
                Err(_) => {
                    checker.fail("plan_code", "is invalid");
                    None
                }
            },
        };
        let currency = checker.string(input, "", "currency", 3, true);
        let plan_pricing = match (plan, &currency) {
            (Some(plan), Some(currency)) => {
                let pricing = plan
                    .field("currencies")
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["currency"] == json!(currency));
                if pricing.is_none() {
                    checker.fail("currency", "is not one of the plan's currencies");
                }
                pricing.cloned()
            }
            _ => None,
        };

        // The account: an existing code attaches, a new one creates the account (reference §5).
        let mut new_account = None;
        let mut account_id = None;
        match input.get("account") {
            Some(Value::Object(account)) => {
                let allowed = Self::account_create_fields();
                if let Some(unknown) = account.keys().find(|k| !allowed.contains(&k.as_str())) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid or unpermitted parameter: account.{unknown}"
                    )));
                }
                match account
                    .get("code")
                    .and_then(Value::as_str)
                    .and_then(|c| self.account_by_code.get(c))
                {
                    Some(id) if self.accounts[id].active() => account_id = Some(id.clone()),
                    Some(_) => checker.fail("account.code", "belongs to a closed account"),
                    None => {
                        new_account =
                            Some(self.account_fields_for_create(account, "account.", &mut checker))
                    }
                }
            }
            _ => checker.fail("account", "can't be blank"),
        }

        let add_ons = match plan {
            Some(plan) => self.subscription_add_ons(
                input,
                plan,
                currency.as_deref().unwrap_or_default(),
                &mut checker,
            )?,
            None => Vec::new(),
        };
        let quantity = checker
            .integer(input, "", "quantity", 0, i64::from(i32::MAX))
            .unwrap_or(1);
        let unit_amount = checker.amount(input, "", "unit_amount", 2);
        let collection = checker.one_of(input, "", "collection_method", &["automatic", "manual"]);
        let net_terms = checker.integer(input, "", "net_terms", 0, 999).unwrap_or(0);
        let net_terms_type = checker.one_of(input, "", "net_terms_type", &["net", "eom"]);
        let auto_renew = checker.boolean(input, "", "auto_renew");
        let total_cycles =
            checker.integer(input, "", "total_billing_cycles", 1, i64::from(i32::MAX));
        let renewal_cycles =
            checker.integer(input, "", "renewal_billing_cycles", 1, i64::from(i32::MAX));
        let po_number = checker.string(input, "", "po_number", 50, false);
        let revenue = checker.one_of(
            input,
            "",
            "revenue_schedule_type",
            v::REVENUE_SCHEDULE_TYPES,
        );
        let mut time = |key: &str| -> Option<DateTime<Utc>> {
            let text = input.get(key).filter(|v| !v.is_null())?;
            let parsed = text.as_str().and_then(parse_time);
            if parsed.is_none() {
                checker.fail(key, "is not a valid date-time");
            }
            parsed
        };
        let starts_at = time("starts_at");
        let trial_ends_at = time("trial_ends_at");
        let next_bill_date = time("next_bill_date");
        if input
            .get("coupon_codes")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
        {
            checker.fail("coupon_codes", "is invalid");
        }
        if ONE_LIVE_SUBSCRIPTION_PER_PLAN
            && let (Some(account_id), Some(plan)) = (&account_id, plan)
            && self
                .subscriptions_of(account_id)
                .any(|s| s.field("plan")["id"] == json!(plan.id) && subscription_is_live(s, now))
        {
            return Err(ApiError::validation_message(
                "You already have a subscription to this plan.",
                "plan_code",
            ));
        }
        checker.finish()?;
        let plan = plan.expect("validated above").clone();
        let currency = currency.expect("validated above");

        let account_id = match (account_id, new_account) {
            (Some(id), _) => id,
            (None, Some(fields)) => self.insert_account(fields, now),
            (None, None) => unreachable!("account validated above"),
        };
        let account = &self.accounts[&account_id];

        let start = starts_at.filter(|s| *s > now).unwrap_or(now);
        let state = if start > now { "future" } else { "active" };
        let interval_unit = plan.text("interval_unit").to_owned();
        let interval_length = plan.field("interval_length").as_i64().unwrap_or(1);
        let trial_end = trial_ends_at.filter(|t| *t > start).or_else(|| {
            let length = plan.field("trial_length").as_i64().unwrap_or(0);
            (length > 0).then(|| add_interval(start, plan.text("trial_unit"), length))
        });
        let period_end = next_bill_date
            .filter(|t| *t > start)
            .or(trial_end)
            .unwrap_or_else(|| add_interval(start, &interval_unit, interval_length));
        let total_cycles = total_cycles.or_else(|| plan.field("total_billing_cycles").as_i64());
        let term_end = match total_cycles {
            Some(cycles) if cycles > 1 && trial_end.is_none() => add_interval(
                start,
                &interval_unit,
                interval_length.saturating_mul(cycles),
            ),
            _ => period_end,
        };
        let unit_amount = unit_amount.unwrap_or_else(|| {
            plan_pricing
                .as_ref()
                .and_then(|p| p["unit_amount"].as_f64())
                .unwrap_or(0.0)
        });

        let sub_id = new_id();
        let add_ons: Vec<Value> = add_ons
            .into_iter()
            .map(|mut a| {
                a.insert("subscription_id".into(), json!(sub_id));
                a.insert("created_at".into(), json!(timestamp(now)));
                a.insert("updated_at".into(), json!(timestamp(now)));
                Value::Object(a)
            })
            .collect();
        let (add_ons_total, subtotal) = subscription_totals(&add_ons, unit_amount, quantity);
        let mut body = json!({
            "uuid": uuid::Uuid::new_v4().simple().to_string(),
            "account": account_mini(account),
            "plan": {"id": plan.id, "object": "plan", "code": plan.text("code"), "name": plan.text("name")},
            "state": state,
            "current_period_started_at": timestamp(start),
            "current_period_ends_at": timestamp(period_end),
            "current_term_started_at": timestamp(start),
            "current_term_ends_at": timestamp(term_end),
            "auto_renew": auto_renew.unwrap_or_else(|| plan.field("auto_renew").as_bool().unwrap_or(true)),
            "currency": currency,
            "revenue_schedule_type": revenue.as_deref().unwrap_or("evenly"),
            "unit_amount": unit_amount,
            "tax_inclusive": false,
            "quantity": quantity,
            "add_ons": add_ons,
            "add_ons_total": add_ons_total,
            "subtotal": subtotal,
            "tax": 0.0,
            "total": subtotal,
            "collection_method": collection.as_deref().unwrap_or("automatic"),
            "net_terms": net_terms,
            "net_terms_type": net_terms_type.as_deref().unwrap_or("net"),
            "custom_fields": input.get("custom_fields").filter(|c| c.is_array()).cloned().unwrap_or(json!([])),
            "coupon_redemptions": [],
            "started_with_gift": false,
        });
        if let Some(cycles) = total_cycles {
            body["total_billing_cycles"] = json!(cycles);
            body["remaining_billing_cycles"] = json!(cycles - 1);
        }
        if let Some(cycles) = renewal_cycles {
            body["renewal_billing_cycles"] = json!(cycles);
        }
        if let Some(trial_end) = trial_end {
            body["trial_started_at"] = json!(timestamp(start));
            body["trial_ends_at"] = json!(timestamp(trial_end));
        }
        if state == "active" {
            body["activated_at"] = json!(timestamp(start));
        }
        if let Some(po) = po_number {
            body["po_number"] = json!(po);
        }
        for key in [
            "terms_and_conditions",
            "customer_notes",
            "gateway_code",
            "billing_info_id",
        ] {
            if let Some(text) = input.get(key).and_then(Value::as_str) {
                body[key] = json!(text);
            }
        }
        let Value::Object(fields) = body else {
            unreachable!("built as an object")
        };
        let seq = self.next_seq();
        let mut record = Record::new(seq, now, "subscription", fields);
        record.id = sub_id.clone();
        record.body.insert("id".into(), json!(sub_id));
        self.subscription_by_uuid
            .insert(record.text("uuid").to_owned(), sub_id.clone());
        self.account_subscriptions
            .entry(account_id)
            .or_default()
            .push(sub_id.clone());
        self.subscriptions.insert(sub_id.clone(), record);
        self.subscription_created(&sub_id, now);
        let body = self.subscriptions[&sub_id].body.clone();
        Ok(Reply::Json(201, Value::Object(body)))
    }

    /// SubscriptionAddOnCreate[] → SubscriptionAddOn bodies (without subscription id and times).
    pub(super) fn subscription_add_ons(
        &self,
        input: &Map<String, Value>,
        plan: &Record,
        currency: &str,
        checker: &mut Checker,
    ) -> Result<Vec<Map<String, Value>>> {
        let items = match input.get("add_ons") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => {
                checker.fail("add_ons", "must be an array");
                return Ok(Vec::new());
            }
        };
        let mut out: Vec<Map<String, Value>> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let prefix = format!("add_ons[{i}].");
            let item = object_body(item, v::SUBSCRIPTION_ADD_ON_FIELDS)?;
            let Some(code) = checker.string(item, &prefix, "code", v::CODE_MAX, true) else {
                continue;
            };
            if checker
                .one_of(item, &prefix, "add_on_source", &["plan_add_on", "item"])
                .as_deref()
                == Some("item")
            {
                checker.fail(
                    format!("{prefix}add_on_source"),
                    "item add-ons are not available on this site",
                );
                continue;
            }
            let add_on = match self.plan_add_on(&plan.id, &format!("code-{code}")) {
                Ok(a) if a.active() => a,
                _ => {
                    checker.fail(format!("{prefix}code"), "is invalid");
                    continue;
                }
            };
            if out.iter().any(|a| a["add_on"]["id"] == json!(add_on.id)) {
                checker.fail(format!("{prefix}code"), TAKEN);
                continue;
            }
            let usage = add_on.text("add_on_type") == "usage";
            let default_quantity = if usage {
                1
            } else {
                add_on.field("default_quantity").as_i64().unwrap_or(1)
            };
            let quantity = checker
                .integer(item, &prefix, "quantity", 0, i64::from(i32::MAX))
                .unwrap_or(default_quantity);
            if usage && quantity != 1 {
                checker.fail(
                    format!("{prefix}quantity"),
                    "Usage-based add-ons can only have a quantity of 1",
                );
            }
            let unit_amount = checker.amount(item, &prefix, "unit_amount", 2);
            let unit_amount_decimal = checker.decimal_string(item, &prefix, "unit_amount_decimal");
            if unit_amount_decimal.is_some() && !usage {
                checker.fail(
                    format!("{prefix}unit_amount_decimal"),
                    "is only allowed on usage add-ons",
                );
            }
            let revenue = checker.one_of(
                item,
                &prefix,
                "revenue_schedule_type",
                v::REVENUE_SCHEDULE_TYPES,
            );
            let mut body = subscription_add_on(add_on, currency);
            body.insert("quantity".into(), json!(quantity));
            if unit_amount.is_some() || unit_amount_decimal.is_some() {
                body.remove("unit_amount");
                body.remove("unit_amount_decimal");
            }
            if let Some(amount) = unit_amount {
                body.insert("unit_amount".into(), json!(amount));
            }
            if let Some(decimal) = unit_amount_decimal {
                body.insert("unit_amount_decimal".into(), json!(decimal));
            }
            if let Some(percentage) = item.get("usage_percentage").and_then(Value::as_f64) {
                body.insert("usage_percentage".into(), json!(percentage));
            }
            if let Some(revenue) = revenue {
                body.insert("revenue_schedule_type".into(), json!(revenue));
            }
            out.push(body);
        }
        Ok(out)
    }

    /// POST /subscriptions/{id}/change. `timeframe=now` applies at once; the other timeframes
    /// wait for a renewal the sandbox never reaches, so they stay as `pending_change`.
    pub fn change_subscription(
        &mut self,
        key: &str,
        input: &Value,
        now: DateTime<Utc>,
    ) -> Result<Reply> {
        let sub = self.subscription(key)?;
        let input = object_body(input, v::SUBSCRIPTION_CHANGE_FIELDS)?;
        if matches!(sub.text("state"), "expired" | "failed") {
            return Err(ApiError::new(
                "validation",
                "Expired subscriptions cannot be changed.",
            ));
        }
        let mut checker = Checker::default();
        let timeframe = checker
            .one_of(
                input,
                "",
                "timeframe",
                &["now", "bill_date", "renewal", "term_end"],
            )
            .unwrap_or_else(|| "now".into());
        let current_plan_id = sub.field("plan")["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let plan_key = checker
            .string(input, "", "plan_id", 13, false)
            .or_else(|| {
                checker
                    .string(input, "", "plan_code", v::CODE_MAX, false)
                    .map(|c| format!("code-{c}"))
            })
            .unwrap_or_else(|| current_plan_id.clone());
        let plan = match self.plan(&plan_key) {
            Ok(plan) if plan.active() => plan,
            Ok(_) => {
                return Err(ApiError::validation_message(
                    "The plan is inactive.",
                    "plan_code",
                ));
            }
            Err(_) => {
                return Err(ApiError::validation_message(
                    "The plan could not be found.",
                    "plan_code",
                ));
            }
        };
        let currency = sub.text("currency").to_owned();
        let pricing = plan
            .field("currencies")
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["currency"] == json!(currency))
            .cloned();
        if pricing.is_none() {
            checker.fail("plan_code", "is not priced in the subscription's currency");
        }
        let plan_changes = plan.id != current_plan_id;
        let account_id = sub.field("account")["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if plan_changes
            && ONE_LIVE_SUBSCRIPTION_PER_PLAN
            && self.subscriptions_of(&account_id).any(|s| {
                s.id != sub.id
                    && s.field("plan")["id"] == json!(plan.id)
                    && subscription_is_live(s, now)
            })
        {
            return Err(ApiError::validation_message(
                "You already have a subscription to this plan.",
                "plan_code",
            ));
        }

        // Existing add-ons are named by their subscription add-on id; they keep that id.
        let current: Vec<Value> = sub.field("add_ons").as_array().cloned().unwrap_or_default();
        let items: Vec<Value> = match input.get("add_ons") {
            Some(Value::Array(items)) => items.clone(),
            None | Some(Value::Null) => current
                .iter()
                .map(|a| json!({"code": a["add_on"]["code"], "quantity": a["quantity"]}))
                .collect(),
            Some(_) => {
                checker.fail("add_ons", "must be an array");
                Vec::new()
            }
        };
        let mut named = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(fields) = item.as_object() else {
                checker.fail(format!("add_ons[{i}]"), "must be an object");
                continue;
            };
            let mut fields = fields.clone();
            if let Some(id) = fields.remove("id") {
                match current.iter().find(|a| a["id"] == id) {
                    Some(existing) => {
                        fields
                            .entry("code")
                            .or_insert(existing["add_on"]["code"].clone());
                        fields
                            .entry("quantity")
                            .or_insert(existing["quantity"].clone());
                    }
                    None => checker.fail(format!("add_ons[{i}].id"), "is invalid"),
                }
            }
            named.push(Value::Object(fields));
        }
        let mut wanted = Map::new();
        wanted.insert("add_ons".into(), Value::Array(named));
        let add_ons = self.subscription_add_ons(&wanted, plan, &currency, &mut checker)?;
        let quantity = checker.integer(input, "", "quantity", 0, i64::from(i32::MAX));
        let unit_amount = checker.amount(input, "", "unit_amount", 2);
        let collection = checker.one_of(input, "", "collection_method", &["automatic", "manual"]);
        let net_terms = checker.integer(input, "", "net_terms", 0, 999);
        let po_number = checker.string(input, "", "po_number", 50, false);
        let revenue = checker.one_of(
            input,
            "",
            "revenue_schedule_type",
            v::REVENUE_SCHEDULE_TYPES,
        );
        if input
            .get("coupon_codes")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
        {
            checker.fail("coupon_codes", "is invalid");
        }
        checker.finish()?;

        let sub_id = sub.id.clone();
        let add_ons: Vec<Value> = add_ons
            .into_iter()
            .map(|mut a| {
                let kept = current
                    .iter()
                    .find(|c| c["add_on"]["id"] == a["add_on"]["id"]);
                match kept {
                    Some(kept) => {
                        a.insert("id".into(), kept["id"].clone());
                        a.insert("created_at".into(), kept["created_at"].clone());
                    }
                    None => {
                        a.insert("created_at".into(), json!(timestamp(now)));
                    }
                }
                a.insert("subscription_id".into(), json!(sub_id));
                a.insert("updated_at".into(), json!(timestamp(now)));
                Value::Object(a)
            })
            .collect();
        let unit_amount = unit_amount
            .or_else(|| {
                (!plan_changes)
                    .then(|| sub.field("unit_amount").as_f64())
                    .flatten()
            })
            .or_else(|| pricing.as_ref().and_then(|p| p["unit_amount"].as_f64()))
            .unwrap_or(0.0);
        let quantity = quantity
            .or_else(|| sub.field("quantity").as_i64())
            .unwrap_or(1);
        let activate_at = match timeframe.as_str() {
            "now" => json!(timestamp(now)),
            "term_end" => sub.field("current_term_ends_at").clone(),
            _ => sub.field("current_period_ends_at").clone(),
        };
        let plan_mini = json!({"id": plan.id, "object": "plan", "code": plan.text("code"), "name": plan.text("name")});
        let mut change = json!({
            "id": new_id(),
            "object": "subscription_change",
            "subscription_id": sub_id,
            "plan": plan_mini,
            "add_ons": add_ons,
            "unit_amount": unit_amount,
            "tax_inclusive": false,
            "quantity": quantity,
            "activate_at": activate_at,
            "activated": timeframe == "now",
            "created_at": timestamp(now),
            "updated_at": timestamp(now),
        });
        if let Some(revenue) = &revenue {
            change["revenue_schedule_type"] = json!(revenue);
        }
        let sub = self
            .subscriptions
            .get_mut(&sub_id)
            .expect("subscription looked up above");
        sub.touch(now);
        if timeframe != "now" {
            sub.body.insert("pending_change".into(), change.clone());
            return Ok(Reply::Json(201, change));
        }
        sub.body.remove("pending_change");
        let (add_ons_total, subtotal) = subscription_totals(&add_ons, unit_amount, quantity);
        for (key, value) in [
            ("plan", change["plan"].clone()),
            ("add_ons", Value::Array(add_ons)),
            ("unit_amount", json!(unit_amount)),
            ("quantity", json!(quantity)),
            ("add_ons_total", json!(add_ons_total)),
            ("subtotal", json!(subtotal)),
            ("total", json!(subtotal)),
        ] {
            sub.body.insert(key.into(), value);
        }
        if let Some(collection) = collection {
            sub.body
                .insert("collection_method".into(), json!(collection));
        }
        if let Some(net_terms) = net_terms {
            sub.body.insert("net_terms".into(), json!(net_terms));
        }
        if let Some(po) = po_number {
            sub.body.insert("po_number".into(), json!(po));
        }
        if let Some(revenue) = revenue {
            sub.body
                .insert("revenue_schedule_type".into(), json!(revenue));
        }
        Ok(Reply::Json(201, change))
    }

    pub fn get_subscription_change(&self, key: &str) -> Result<Reply> {
        let sub = self.subscription(key)?;
        match sub.body.get("pending_change") {
            Some(change) => Ok(Reply::Json(200, change.clone())),
            None => Err(ApiError::new(
                "not_found",
                "The subscription has no pending change.",
            )),
        }
    }

    pub fn delete_subscription_change(&mut self, key: &str, now: DateTime<Utc>) -> Result<Reply> {
        let id = self.subscription(key)?.id.clone();
        let sub = self
            .subscriptions
            .get_mut(&id)
            .expect("subscription looked up above");
        if sub.body.remove("pending_change").is_none() {
            return Err(ApiError::new(
                "not_found",
                "The subscription has no pending change.",
            ));
        }
        sub.touch(now);
        Ok(Reply::NoContent)
    }

    pub fn get_subscription(&self, key: &str) -> Result<Reply> {
        Ok(Reply::raw(200, &self.subscription(key)?.body))
    }

    pub(super) fn subscription_state_filter(query: &ListQuery) -> Result<Option<String>> {
        match query.param("state") {
            None => Ok(None),
            Some(
                s @ ("active" | "canceled" | "expired" | "future" | "in_trial" | "live" | "paused"
                | "failed"),
            ) => Ok(Some(s.to_owned())),
            Some(other) => Err(ApiError::bad_request(format!(
                "state '{other}' is not a subscription state filter"
            ))),
        }
    }

    pub fn list_subscriptions(
        &self,
        account_key: Option<&str>,
        query: &ListQuery,
        now: DateTime<Utc>,
    ) -> Result<Reply> {
        let state = Self::subscription_state_filter(query)?;
        let keep = |s: &&Record| {
            state
                .as_deref()
                .is_none_or(|want| subscription_matches_state(s, want, now))
        };
        let matching: Vec<&Record> = match account_key {
            Some(key) => {
                let account = self.account(key)?;
                self.subscriptions_of(&account.id).filter(keep).collect()
            }
            None => self.subscriptions.values().filter(keep).collect(),
        };
        Ok(list_of(
            paginate(rows(matching.into_iter(), query), query),
            |r| Value::Object(r.body.clone()),
        ))
    }

    pub fn cancel_subscription(
        &mut self,
        key: &str,
        input: &Value,
        now: DateTime<Utc>,
    ) -> Result<Reply> {
        let id = self.subscription(key)?.id.clone();
        let timeframe = match input {
            Value::Null => None,
            body => {
                let body = object_body(body, &["timeframe"])?;
                let mut checker = Checker::default();
                let timeframe = checker.one_of(body, "", "timeframe", &["bill_date", "term_end"]);
                checker.finish()?;
                timeframe
            }
        };
        let sub = self
            .subscriptions
            .get_mut(&id)
            .expect("subscription looked up above");
        let next_state = match sub.text("state") {
            "active" => "canceled",
            // A canceled future subscription never starts (reference §5).
            "future" => "failed",
            _ => {
                return Err(ApiError::new(
                    "validation",
                    "Only active and future subscriptions can be canceled",
                ));
            }
        };
        let ends = if timeframe.as_deref() == Some("bill_date") {
            "current_period_ends_at"
        } else {
            "current_term_ends_at"
        };
        mark_canceled(sub, next_state, ends, now);
        let body = sub.body.clone();
        self.notify_subscription(&id, "canceled", now);
        Ok(Reply::Json(200, Value::Object(body)))
    }

    /// Closing an account "cancels any active subscriptions (canceled subscriptions will remain
    /// active until the end of the current billing cycle before expiring)" (OpenAPI
    /// `deactivate_account`): each active one becomes `canceled`, expiring when its current
    /// period ends; its add-ons still take usage until then.
    pub(super) fn cancel_for_closed_account(&mut self, account_id: &str, now: DateTime<Utc>) {
        let active: Vec<String> = self
            .subscriptions_of(account_id)
            .filter(|s| s.text("state") == "active")
            .map(|s| s.id.clone())
            .collect();
        for id in active {
            let sub = self.subscriptions.get_mut(&id).expect("listed above");
            mark_canceled(sub, "canceled", "current_period_ends_at", now);
            self.notify_subscription(&id, "canceled", now);
        }
    }

    pub fn reactivate_subscription(&mut self, key: &str, now: DateTime<Utc>) -> Result<Reply> {
        let id = self.subscription(key)?.id.clone();
        let sub = self
            .subscriptions
            .get_mut(&id)
            .expect("subscription looked up above");
        if sub.text("state") != "canceled" {
            return Err(ApiError::new(
                "validation",
                "Only canceled subscriptions can be reactivated",
            ));
        }
        sub.touch(now);
        sub.body.insert("state".into(), json!("active"));
        sub.body.remove("canceled_at");
        sub.body.remove("expires_at");
        let body = sub.body.clone();
        self.notify_subscription(&id, "reactivated", now);
        Ok(Reply::Json(200, Value::Object(body)))
    }

    /// DELETE /subscriptions/{id}?refund=&charge=: expires it now. With `charge=false` Recurly
    /// zeroes the cycle's unbilled usage with a negative record per add-on (reference §5).
    pub fn terminate_subscription(
        &mut self,
        key: &str,
        refund: Option<&str>,
        charge: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Reply> {
        let id = self.subscription(key)?.id.clone();
        if !matches!(refund, None | Some("none" | "partial" | "full")) {
            return Err(ApiError::validation_message(
                "Please provide valid values for these parameters: refund.",
                "refund",
            ));
        }
        let charge = match charge {
            None | Some("true") => true,
            Some("false") => false,
            Some(_) => {
                return Err(ApiError::validation_message(
                    "Please provide valid values for these parameters: charge.",
                    "charge",
                ));
            }
        };
        if matches!(self.subscriptions[&id].text("state"), "expired" | "failed") {
            return Err(ApiError::new(
                "validation",
                "Cannot expire an inactive subscription.",
            ));
        }
        self.terminated(&id, charge, now);
        self.expire_subscription(&id, charge, now);
        self.notify_subscription(&id, "expired", now);
        Ok(Reply::Json(
            200,
            Value::Object(self.subscriptions[&id].body.clone()),
        ))
    }

    pub(super) fn expire_subscription(&mut self, id: &str, charge: bool, now: DateTime<Utc>) {
        if !charge {
            let add_on_ids: Vec<String> = self.subscriptions[id]
                .field("add_ons")
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["add_on"]["add_on_type"] == "usage")
                .filter_map(|a| a["add_on"]["id"].as_str().map(str::to_owned))
                .collect();
            for add_on_id in add_on_ids {
                let unbilled: f64 = self
                    .usage_by_add_on
                    .get(&(id.to_owned(), add_on_id.clone()))
                    .into_iter()
                    .flatten()
                    .filter_map(|u| self.usage.get(u))
                    .filter(|u| u.billed_at.is_none())
                    .map(|u| u.amount)
                    .fold(0.0, |total, amount| total + amount);
                if unbilled != 0.0 {
                    let zero_out = json!({"amount": -unbilled, "merchant_tag": "Recurly: unbilled usage removed at termination"});
                    let _ = self.create_usage(id, &add_on_id, &zero_out, now);
                }
            }
        }
        let sub = self.subscriptions.get_mut(id).expect("caller looked it up");
        sub.touch(now);
        sub.body.insert("state".into(), json!("expired"));
        sub.body.insert("expires_at".into(), json!(timestamp(now)));
        sub.body
            .insert("current_period_ends_at".into(), json!(timestamp(now)));
        sub.body
            .insert("current_term_ends_at".into(), json!(timestamp(now)));
        if !sub.body.contains_key("canceled_at") {
            sub.body.insert("canceled_at".into(), json!(timestamp(now)));
        }
    }
}

/// Cancels `sub` into `state`, to expire at the time its field `ends` holds.
fn mark_canceled(sub: &mut Record, state: &str, ends: &str, now: DateTime<Utc>) {
    let expires = sub.field(ends).clone();
    sub.touch(now);
    sub.body.insert("state".into(), json!(state));
    sub.body.insert("canceled_at".into(), json!(timestamp(now)));
    sub.body.insert("expires_at".into(), expires);
}

/// `(add_ons_total, subtotal)`: fixed add-ons at their price × quantity (usage is billed in
/// arrears), plus the plan price × quantity.
pub(super) fn subscription_totals(
    add_ons: &[Value],
    unit_amount: f64,
    quantity: i64,
) -> (f64, f64) {
    // Folded from +0.0: `f64` sums start at -0.0, which an empty list would print.
    let add_ons_total = add_ons
        .iter()
        .filter(|a| a["add_on"]["add_on_type"] == "fixed")
        .map(|a| a["unit_amount"].as_f64().unwrap_or(0.0) * a["quantity"].as_f64().unwrap_or(0.0))
        .fold(0.0, |total, amount| total + amount);
    (add_ons_total, unit_amount * quantity as f64 + add_ons_total)
}

/// `live`: active, canceled, future, or in trial (FilterSubscriptionStateEnum).
pub(super) fn subscription_is_live(sub: &Record, now: DateTime<Utc>) -> bool {
    matches!(sub.text("state"), "active" | "canceled" | "future") || in_trial(sub, now)
}

pub(super) fn in_trial(sub: &Record, now: DateTime<Utc>) -> bool {
    let at = |key: &str| {
        sub.body
            .get(key)
            .and_then(Value::as_str)
            .and_then(parse_time)
    };
    matches!((at("trial_started_at"), at("trial_ends_at")), (Some(start), Some(end)) if start <= now && end > now)
}

pub(super) fn subscription_matches_state(sub: &Record, want: &str, now: DateTime<Utc>) -> bool {
    match want {
        "live" => subscription_is_live(sub, now),
        "in_trial" => in_trial(sub, now),
        state => sub.text("state") == state,
    }
}

pub(super) fn account_mini(account: &Record) -> Value {
    let mut mini = json!({"id": account.id, "object": "account", "code": account.text("code")});
    for key in [
        "email",
        "first_name",
        "last_name",
        "company",
        "parent_account_id",
        "bill_to",
        "dunning_campaign_id",
    ] {
        if let Some(value) = account.body.get(key) {
            mini[key] = value.clone();
        }
    }
    mini
}

/// A plan add-on as a SubscriptionAddOn priced in `currency`, embedding its AddOnMini.
pub(super) fn subscription_add_on(add_on: &Record, currency: &str) -> Map<String, Value> {
    let a = &add_on.body;
    let mut mini = json!({
        "id": add_on.id,
        "object": "add_on",
        "code": add_on.field("code"),
        "name": add_on.field("name"),
        "add_on_type": add_on.field("add_on_type"),
    });
    for key in [
        "usage_type",
        "usage_percentage",
        "measured_unit_id",
        "accounting_code",
    ] {
        if let Some(value) = a.get(key) {
            mini[key] = value.clone();
        }
    }
    let mut body = Map::new();
    body.insert("id".into(), json!(new_id()));
    body.insert("object".into(), json!("subscription_add_on"));
    body.insert("add_on".into(), mini);
    body.insert("add_on_source".into(), json!("plan_add_on"));
    for key in [
        "revenue_schedule_type",
        "tier_type",
        "usage_calculation_type",
        "usage_timeframe",
        "usage_percentage",
    ] {
        if let Some(value) = a.get(key) {
            body.insert(key.into(), value.clone());
        }
    }
    let in_currency = |pricing: &Value| -> Option<Value> {
        pricing
            .as_array()?
            .iter()
            .find(|p| p["currency"] == json!(currency))
            .cloned()
    };
    if let Some(price) = a.get("currencies").and_then(in_currency) {
        if let Some(amount) = price.get("unit_amount") {
            body.insert("unit_amount".into(), amount.clone());
        }
        if let Some(decimal) = price.get("unit_amount_decimal") {
            body.insert("unit_amount_decimal".into(), decimal.clone());
        }
    }
    if let Some(tiers) = a.get("tiers").and_then(Value::as_array) {
        let tiers: Vec<Value> = tiers
            .iter()
            .map(|tier| {
                let mut flat = json!({"ending_quantity": tier["ending_quantity"]});
                if let Some(price) = in_currency(&tier["currencies"]) {
                    for key in ["unit_amount", "unit_amount_decimal"] {
                        if let Some(value) = price.get(key) {
                            flat[key] = value.clone();
                        }
                    }
                }
                flat
            })
            .collect();
        body.insert("tiers".into(), Value::Array(tiers));
    }
    body
}
