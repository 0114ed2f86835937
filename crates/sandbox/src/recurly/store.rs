//! The Recurly site's data (plans, add-ons, measured units, accounts, subscriptions, usage),
//! indexed by id and natural key, and every operation on it as a plain method.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Months, SecondsFormat, Utc};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::paging::{ListQuery, Page, Row, paginate, parse_time};
use super::validation::{self as v, AddOnContext, Checker, TAKEN, object_body};

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

/// Closing an account expires its live subscriptions at once [I: Recurly's UI describes
/// closing an account as terminating its subscriptions].
pub(crate) fn closing_an_account_expires_its_subscriptions() -> bool {
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
    fn new(seq: u64, now: DateTime<Utc>, object: &str, mut body: Map<String, Value>) -> Record {
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

    fn touch(&mut self, now: DateTime<Utc>) {
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

    fn active(&self) -> bool {
        self.text("state") == "active"
    }

    fn deactivate(&mut self, now: DateTime<Utc>) {
        self.touch(now);
        self.body.insert("state".into(), json!("inactive"));
        self.body.insert("deleted_at".into(), json!(timestamp(now)));
    }

    /// The body to merge an update into: the stored fields without the read-only ones.
    fn editable(&self) -> Map<String, Value> {
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
}

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

/// What a handler answers: a status and JSON body, or a list page (HEAD needs its total).
pub(crate) enum Reply {
    Json(u16, Value),
    /// A body serialized straight from the stored record, sparing a deep copy on hot reads.
    Raw(u16, String),
    List(Page<Value>),
    NoContent,
}

impl Reply {
    fn raw(status: u16, body: &Map<String, Value>) -> Reply {
        Reply::Raw(status, serde_json::to_string(body).unwrap_or_default())
    }
}

type Result<T> = std::result::Result<T, ApiError>;

#[derive(Default)]
pub(crate) struct Store {
    seq: u64,
    plans: HashMap<String, Record>,
    plan_by_code: HashMap<String, String>,
    add_ons: HashMap<String, Record>,
    plan_add_ons: HashMap<String, Vec<String>>,
    add_on_by_code: HashMap<(String, String), String>,
    units: HashMap<String, Record>,
    unit_by_name: HashMap<String, String>,
    accounts: HashMap<String, Record>,
    account_by_code: HashMap<String, String>,
    subscriptions: HashMap<String, Record>,
    subscription_by_uuid: HashMap<String, String>,
    account_subscriptions: HashMap<String, Vec<String>>,
    usage: HashMap<String, UsageRecord>,
    usage_by_add_on: HashMap<(String, String), Vec<String>>,
}

/// `{id}` or `{prefix}{natural key}` in a path, e.g. `code-basic`.
fn lookup<'a>(
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

fn rows<'a>(records: impl Iterator<Item = &'a Record>, query: &ListQuery) -> Vec<Row<&'a Record>> {
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

fn state_filter(query: &ListQuery) -> Result<Option<&str>> {
    match query.param("state") {
        None => Ok(None),
        Some(s @ ("active" | "inactive")) => Ok(Some(s)),
        Some(other) => Err(ApiError::bad_request(format!(
            "state must be active or inactive, not '{other}'"
        ))),
    }
}

fn list_of(page: Page<&Record>, render: impl Fn(&Record) -> Value) -> Reply {
    Reply::List(Page {
        data: page.data.into_iter().map(render).collect(),
        has_more: page.has_more,
        next: page.next,
        total: page.total,
    })
}

/// `start` plus `length` days or months; an interval past the calendar's end stays at `start`
/// rather than overflowing (plans may ask for up to 2³¹ units).
fn add_interval(start: DateTime<Utc>, unit: &str, length: i64) -> DateTime<Utc> {
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
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    // ---- plans -------------------------------------------------------------------------

    fn plan(&self, key: &str) -> Result<&Record> {
        lookup(&self.plans, &self.plan_by_code, key, "code-")
            .ok_or_else(|| ApiError::not_found("Plan", key))
    }

    fn plan_code_taken(&self, code: &str, except: Option<&str>) -> bool {
        self.plan_by_code
            .get(code)
            .filter(|id| Some(id.as_str()) != except)
            .and_then(|id| self.plans.get(id))
            .is_some_and(|p| p.active() || deleted_codes_stay_taken())
    }

    fn unit_context_checks(
        &self,
    ) -> (
        impl Fn(&str) -> bool + '_,
        impl Fn(&str) -> Option<String> + '_,
    ) {
        (
            // A stored add-on may keep pointing at a unit deleted since.
            move |id: &str| self.units.contains_key(id),
            move |name: &str| {
                self.unit_by_name
                    .get(name)
                    .filter(|id| self.units.get(*id).is_some_and(Record::active))
                    .cloned()
            },
        )
    }

    pub fn create_plan(&mut self, input: &Value, now: DateTime<Utc>) -> Result<Reply> {
        let input = object_body(input, v::PLAN_CREATE_FIELDS)?;
        let mut checker = Checker::default();
        let mut plan = v::plan_fields(input, &mut checker);
        if let Some(code) = plan.get("code").and_then(Value::as_str)
            && self.plan_code_taken(code, None)
        {
            checker.fail("code", TAKEN);
        }
        let currencies: Vec<String> = plan["currencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["currency"].as_str().map(str::to_owned))
            .collect();
        let mut add_ons = Vec::new();
        let items = match input.get("add_ons") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(_) => {
                checker.fail("add_ons", "must be an array");
                Vec::new()
            }
        };
        {
            let (unit_id_exists, unit_id_by_name) = self.unit_context_checks();
            let ctx = AddOnContext {
                plan_currencies: &currencies,
                unit_id_exists: &unit_id_exists,
                unit_id_by_name: &unit_id_by_name,
            };
            for (i, item) in items.iter().enumerate() {
                let item = object_body(item, v::ADD_ON_CREATE_FIELDS)?;
                let fields = v::add_on_fields(item, &format!("add_ons[{i}]."), &ctx, &mut checker);
                let code = fields.get("code").cloned();
                if code.is_some()
                    && add_ons
                        .iter()
                        .any(|a: &Map<String, Value>| a.get("code") == code.as_ref())
                {
                    checker.fail(format!("add_ons[{i}].code"), TAKEN);
                }
                add_ons.push(fields);
            }
        }
        checker.finish()?;
        plan.insert("state".into(), json!("active"));
        let seq = self.next_seq();
        let record = Record::new(seq, now, "plan", plan);
        let plan_id = record.id.clone();
        self.plan_by_code
            .insert(record.text("code").to_owned(), plan_id.clone());
        let body = record.body.clone();
        self.plans.insert(plan_id.clone(), record);
        for fields in add_ons {
            self.insert_add_on(&plan_id, fields, now);
        }
        Ok(Reply::Json(201, Value::Object(body)))
    }

    pub fn get_plan(&self, key: &str) -> Result<Reply> {
        Ok(Reply::raw(200, &self.plan(key)?.body))
    }

    pub fn list_plans(&self, query: &ListQuery) -> Result<Reply> {
        let state = state_filter(query)?;
        let matching = self
            .plans
            .values()
            .filter(|p| state.is_none_or(|s| p.text("state") == s));
        Ok(list_of(paginate(rows(matching, query), query), |r| {
            Value::Object(r.body.clone())
        }))
    }

    /// PUT /plans/{id}: answered with 201, as the OpenAPI description documents it.
    pub fn update_plan(&mut self, key: &str, input: &Value, now: DateTime<Utc>) -> Result<Reply> {
        let plan = self.plan(key)?;
        let update = object_body(input, v::PLAN_UPDATE_FIELDS)?;
        if !plan.active() {
            return Err(ApiError::new(
                "validation",
                "A deleted plan cannot be changed.",
            ));
        }
        let mut merged = plan.editable();
        for (k, value) in update.iter().filter(|(k, _)| k.as_str() != "id") {
            merged.insert(k.clone(), value.clone());
        }
        let mut checker = Checker::default();
        let mut fields = v::plan_fields(&merged, &mut checker);
        let plan_id = plan.id.clone();
        let old_code = plan.text("code").to_owned();
        if let Some(code) = fields.get("code").and_then(Value::as_str)
            && code != old_code
            && self.plan_code_taken(code, Some(&plan_id))
        {
            checker.fail("code", TAKEN);
        }
        checker.finish()?;
        let plan = self.plans.get_mut(&plan_id).expect("plan looked up above");
        for key in ["id", "object", "state", "created_at"] {
            fields.insert(key.into(), plan.field(key).clone());
        }
        plan.body = fields;
        plan.touch(now);
        let new_code = plan.text("code").to_owned();
        let body = plan.body.clone();
        if new_code != old_code {
            self.plan_by_code.remove(&old_code);
            self.plan_by_code.insert(new_code, plan_id);
        }
        Ok(Reply::Json(201, Value::Object(body)))
    }

    pub fn delete_plan(&mut self, key: &str, now: DateTime<Utc>) -> Result<Reply> {
        let id = self.plan(key)?.id.clone();
        let plan = self.plans.get_mut(&id).expect("plan looked up above");
        if !plan.active() {
            return Err(ApiError::new("validation", "Plan may already be inactive."));
        }
        plan.deactivate(now);
        if !deleted_codes_stay_taken() {
            let code = plan.text("code").to_owned();
            self.plan_by_code.remove(&code);
        }
        Ok(Reply::Json(200, Value::Object(plan.body.clone())))
    }

    // ---- add-ons -----------------------------------------------------------------------

    fn insert_add_on(
        &mut self,
        plan_id: &str,
        mut fields: Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Map<String, Value> {
        fields.insert("plan_id".into(), json!(plan_id));
        fields.insert("state".into(), json!("active"));
        let seq = self.next_seq();
        let record = Record::new(seq, now, "add_on", fields);
        let id = record.id.clone();
        self.add_on_by_code.insert(
            (plan_id.to_owned(), record.text("code").to_owned()),
            id.clone(),
        );
        self.plan_add_ons
            .entry(plan_id.to_owned())
            .or_default()
            .push(id.clone());
        let body = record.body.clone();
        self.add_ons.insert(id, record);
        body
    }

    fn plan_add_on(&self, plan_id: &str, key: &str) -> Result<&Record> {
        let found = match key.strip_prefix("code-") {
            Some(code) => self
                .add_on_by_code
                .get(&(plan_id.to_owned(), code.to_owned()))
                .and_then(|id| self.add_ons.get(id)),
            None => self
                .add_ons
                .get(key)
                .filter(|a| a.text("plan_id") == plan_id),
        };
        found.ok_or_else(|| ApiError::not_found("AddOn", key))
    }

    fn plan_currencies(plan: &Record) -> Vec<String> {
        plan.field("currencies")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["currency"].as_str().map(str::to_owned))
            .collect()
    }

    fn add_on_code_taken(&self, plan_id: &str, code: &str, except: Option<&str>) -> bool {
        self.add_on_by_code
            .get(&(plan_id.to_owned(), code.to_owned()))
            .filter(|id| Some(id.as_str()) != except)
            .and_then(|id| self.add_ons.get(id))
            .is_some_and(|a| a.active() || deleted_codes_stay_taken())
    }

    pub fn create_add_on(
        &mut self,
        plan_key: &str,
        input: &Value,
        now: DateTime<Utc>,
    ) -> Result<Reply> {
        let plan = self.plan(plan_key)?;
        let input = object_body(input, v::ADD_ON_CREATE_FIELDS)?;
        if !plan.active() {
            return Err(ApiError::new(
                "validation",
                "A deleted plan cannot be changed.",
            ));
        }
        let plan_id = plan.id.clone();
        let currencies = Self::plan_currencies(plan);
        let mut checker = Checker::default();
        let fields = {
            let (unit_id_exists, unit_id_by_name) = self.unit_context_checks();
            let ctx = AddOnContext {
                plan_currencies: &currencies,
                unit_id_exists: &unit_id_exists,
                unit_id_by_name: &unit_id_by_name,
            };
            v::add_on_fields(input, "", &ctx, &mut checker)
        };
        if let Some(code) = fields.get("code").and_then(Value::as_str)
            && self.add_on_code_taken(&plan_id, code, None)
        {
            checker.fail("code", TAKEN);
        }
        checker.finish()?;
        Ok(Reply::Json(
            201,
            Value::Object(self.insert_add_on(&plan_id, fields, now)),
        ))
    }

    pub fn get_add_on(&self, plan_key: &str, key: &str) -> Result<Reply> {
        let plan = self.plan(plan_key)?;
        Ok(Reply::raw(200, &self.plan_add_on(&plan.id, key)?.body))
    }

    pub fn list_plan_add_ons(&self, plan_key: &str, query: &ListQuery) -> Result<Reply> {
        let plan = self.plan(plan_key)?;
        let state = state_filter(query)?;
        let matching = self
            .plan_add_ons
            .get(&plan.id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.add_ons.get(id))
            .filter(|a| state.is_none_or(|s| a.text("state") == s));
        Ok(list_of(paginate(rows(matching, query), query), |r| {
            Value::Object(r.body.clone())
        }))
    }

    pub fn list_all_add_ons(&self, query: &ListQuery) -> Result<Reply> {
        let state = state_filter(query)?;
        let matching = self
            .add_ons
            .values()
            .filter(|a| state.is_none_or(|s| a.text("state") == s));
        Ok(list_of(paginate(rows(matching, query), query), |r| {
            Value::Object(r.body.clone())
        }))
    }

    /// `GET /add_ons/{add_on_id}`: by id, or `code-` (a code may exist on several plans; the
    /// earliest created wins).
    pub fn get_any_add_on(&self, key: &str) -> Result<Reply> {
        let found = match key.strip_prefix("code-") {
            Some(code) => self
                .add_ons
                .values()
                .filter(|a| a.text("code") == code)
                .min_by_key(|a| a.seq),
            None => self.add_ons.get(key),
        };
        let add_on = found.ok_or_else(|| ApiError::not_found("AddOn", key))?;
        Ok(Reply::raw(200, &add_on.body))
    }

    /// PUT /plans/{id}/add_ons/{id}: answered with 201, as the OpenAPI description documents it.
    pub fn update_add_on(
        &mut self,
        plan_key: &str,
        key: &str,
        input: &Value,
        now: DateTime<Utc>,
    ) -> Result<Reply> {
        let plan = self.plan(plan_key)?;
        let plan_id = plan.id.clone();
        let currencies = Self::plan_currencies(plan);
        let add_on = self.plan_add_on(&plan_id, key)?;
        let update = object_body(input, v::ADD_ON_UPDATE_FIELDS)?;
        if !add_on.active() {
            return Err(ApiError::new(
                "validation",
                "A deleted add-on cannot be changed.",
            ));
        }
        let mut merged = add_on.editable();
        if update.contains_key("measured_unit_name") && !update.contains_key("measured_unit_id") {
            merged.remove("measured_unit_id");
        }
        if update.contains_key("tiers") || update.contains_key("currencies") {
            merged.remove("tiers");
            merged.remove("currencies");
        }
        for (k, value) in update.iter().filter(|(k, _)| k.as_str() != "id") {
            merged.insert(k.clone(), value.clone());
        }
        let add_on_id = add_on.id.clone();
        let old_code = add_on.text("code").to_owned();
        let mut checker = Checker::default();
        let mut fields = {
            let (unit_id_exists, unit_id_by_name) = self.unit_context_checks();
            let ctx = AddOnContext {
                plan_currencies: &currencies,
                unit_id_exists: &unit_id_exists,
                unit_id_by_name: &unit_id_by_name,
            };
            v::add_on_fields(&merged, "", &ctx, &mut checker)
        };
        if let Some(code) = fields.get("code").and_then(Value::as_str)
            && code != old_code
            && self.add_on_code_taken(&plan_id, code, Some(&add_on_id))
        {
            checker.fail("code", TAKEN);
        }
        checker.finish()?;
        let add_on = self
            .add_ons
            .get_mut(&add_on_id)
            .expect("add-on looked up above");
        for key in ["id", "object", "state", "plan_id", "created_at"] {
            fields.insert(key.into(), add_on.field(key).clone());
        }
        add_on.body = fields;
        add_on.touch(now);
        let new_code = add_on.text("code").to_owned();
        let body = add_on.body.clone();
        if new_code != old_code {
            self.add_on_by_code.remove(&(plan_id.clone(), old_code));
            self.add_on_by_code.insert((plan_id, new_code), add_on_id);
        }
        Ok(Reply::Json(201, Value::Object(body)))
    }

    pub fn delete_add_on(
        &mut self,
        plan_key: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Reply> {
        let plan_id = self.plan(plan_key)?.id.clone();
        let id = self.plan_add_on(&plan_id, key)?.id.clone();
        let add_on = self.add_ons.get_mut(&id).expect("add-on looked up above");
        if !add_on.active() {
            return Err(ApiError::new(
                "validation",
                "Add-on may already be inactive.",
            ));
        }
        add_on.deactivate(now);
        let body = add_on.body.clone();
        if !deleted_codes_stay_taken() {
            let code = add_on.text("code").to_owned();
            self.add_on_by_code.remove(&(plan_id, code));
        }
        Ok(Reply::Json(200, Value::Object(body)))
    }

    // ---- measured units ----------------------------------------------------------------

    fn unit(&self, key: &str) -> Result<&Record> {
        lookup(&self.units, &self.unit_by_name, key, "name-")
            .ok_or_else(|| ApiError::not_found("MeasuredUnit", key))
    }

    fn unit_name_taken(&self, name: &str, except: Option<&str>) -> bool {
        self.unit_by_name
            .get(name)
            .filter(|id| Some(id.as_str()) != except)
            .and_then(|id| self.units.get(id))
            .is_some_and(|u| u.active() || deleted_codes_stay_taken())
    }

    pub fn create_unit(&mut self, input: &Value, now: DateTime<Utc>) -> Result<Reply> {
        let input = object_body(input, v::MEASURED_UNIT_FIELDS)?;
        let mut checker = Checker::default();
        let mut fields = v::measured_unit_fields(input, &mut checker);
        if let Some(name) = fields.get("name").and_then(Value::as_str)
            && self.unit_name_taken(name, None)
        {
            checker.fail("name", TAKEN);
        }
        checker.finish()?;
        fields.insert("state".into(), json!("active"));
        let seq = self.next_seq();
        let record = Record::new(seq, now, "measured_unit", fields);
        self.unit_by_name
            .insert(record.text("name").to_owned(), record.id.clone());
        let body = record.body.clone();
        self.units.insert(record.id.clone(), record);
        Ok(Reply::Json(201, Value::Object(body)))
    }

    pub fn get_unit(&self, key: &str) -> Result<Reply> {
        Ok(Reply::raw(200, &self.unit(key)?.body))
    }

    pub fn list_units(&self, query: &ListQuery) -> Result<Reply> {
        let state = state_filter(query)?;
        let matching = self
            .units
            .values()
            .filter(|u| state.is_none_or(|s| u.text("state") == s));
        Ok(list_of(paginate(rows(matching, query), query), |r| {
            Value::Object(r.body.clone())
        }))
    }

    pub fn update_unit(&mut self, key: &str, input: &Value, now: DateTime<Utc>) -> Result<Reply> {
        let unit = self.unit(key)?;
        let update = object_body(input, v::MEASURED_UNIT_FIELDS)?;
        let mut merged = unit.editable();
        for (k, value) in update {
            merged.insert(k.clone(), value.clone());
        }
        let id = unit.id.clone();
        let old_name = unit.text("name").to_owned();
        let mut checker = Checker::default();
        let mut fields = v::measured_unit_fields(&merged, &mut checker);
        if let Some(name) = fields.get("name").and_then(Value::as_str)
            && name != old_name
            && self.unit_name_taken(name, Some(&id))
        {
            checker.fail("name", TAKEN);
        }
        checker.finish()?;
        let unit = self.units.get_mut(&id).expect("unit looked up above");
        for key in ["id", "object", "state", "created_at", "deleted_at"] {
            if let Some(value) = unit.body.get(key) {
                fields.insert(key.into(), value.clone());
            }
        }
        unit.body = fields;
        unit.touch(now);
        let new_name = unit.text("name").to_owned();
        let body = unit.body.clone();
        if new_name != old_name {
            self.unit_by_name.remove(&old_name);
            self.unit_by_name.insert(new_name, id);
        }
        Ok(Reply::Json(200, Value::Object(body)))
    }

    pub fn delete_unit(&mut self, key: &str, now: DateTime<Utc>) -> Result<Reply> {
        let id = self.unit(key)?.id.clone();
        let unit = self.units.get_mut(&id).expect("unit looked up above");
        if !unit.active() {
            return Err(ApiError::new(
                "validation",
                "Measured unit may already be inactive.",
            ));
        }
        unit.deactivate(now);
        Ok(Reply::Json(200, Value::Object(unit.body.clone())))
    }

    // ---- accounts ----------------------------------------------------------------------

    fn account(&self, key: &str) -> Result<&Record> {
        lookup(&self.accounts, &self.account_by_code, key, "code-")
            .ok_or_else(|| ApiError::not_found("Account", key))
    }

    fn subscriptions_of<'a>(&'a self, account_id: &str) -> impl Iterator<Item = &'a Record> + 'a {
        self.account_subscriptions
            .get(account_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.subscriptions.get(id))
    }

    /// The Account body with its `has_*_subscription` flags worked out now.
    fn render_account(&self, account: &Record, now: DateTime<Utc>) -> Value {
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
        body.insert("has_past_due_invoice".into(), json!(false));
        Value::Object(body)
    }

    /// Validates an AccountCreate; `prefix` is `account.` when it sits inside a subscription.
    fn account_fields_for_create(
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

    fn insert_account(&mut self, mut fields: Map<String, Value>, now: DateTime<Utc>) -> String {
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

    fn account_create_fields() -> Vec<&'static str> {
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
            // No invoices exist in the sandbox, so nothing is past due.
            !past_due
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
        if closing_an_account_expires_its_subscriptions() {
            let live: Vec<String> = self
                .subscriptions_of(&id)
                .filter(|s| !matches!(s.text("state"), "expired" | "failed"))
                .map(|s| s.id.clone())
                .collect();
            for sub_id in live {
                self.expire_subscription(&sub_id, true, now);
            }
        }
        let account = self.accounts.get_mut(&id).expect("account looked up above");
        account.deactivate(now);
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

    // ---- subscriptions -----------------------------------------------------------------

    fn subscription(&self, key: &str) -> Result<&Record> {
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
        let body = record.body.clone();
        self.subscriptions.insert(sub_id, record);
        Ok(Reply::Json(201, Value::Object(body)))
    }

    /// SubscriptionAddOnCreate[] → SubscriptionAddOn bodies (without subscription id and times).
    fn subscription_add_ons(
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

    fn subscription_state_filter(query: &ListQuery) -> Result<Option<String>> {
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
        let expires = sub.field(ends).clone();
        sub.touch(now);
        sub.body.insert("state".into(), json!(next_state));
        sub.body.insert("canceled_at".into(), json!(timestamp(now)));
        sub.body.insert("expires_at".into(), expires);
        Ok(Reply::Json(200, Value::Object(sub.body.clone())))
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
        Ok(Reply::Json(200, Value::Object(sub.body.clone())))
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
        self.expire_subscription(&id, charge, now);
        Ok(Reply::Json(
            200,
            Value::Object(self.subscriptions[&id].body.clone()),
        ))
    }

    fn expire_subscription(&mut self, id: &str, charge: bool, now: DateTime<Utc>) {
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

    // ---- usage -------------------------------------------------------------------------

    /// The subscription and the plan add-on a usage path names (`{id}` or `code-{code}`).
    fn usage_target(&self, sub_key: &str, add_on_key: &str) -> Result<(&Record, &Value)> {
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
        // Nothing is billed in the sandbox; Recurly sends the unset field as null (reference §6).
        body.insert("billed_at".into(), Value::Null);
        body.insert("usage_timestamp".into(), json!(timestamp(usage_at)));
        body.insert("recording_timestamp".into(), json!(timestamp(recorded_at)));
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
            id,
            UsageRecord {
                record,
                subscription_id,
                add_on_id,
                usage_at,
                recorded_at,
                amount,
            },
        );
        Ok(Reply::Json(201, Value::Object(body)))
    }

    pub fn list_usage(&self, sub_key: &str, add_on_key: &str, query: &ListQuery) -> Result<Reply> {
        let (sub, add_on) = self.usage_target(sub_key, add_on_key)?;
        let billed_only = match query.param("billing_status") {
            None | Some("unbilled") | Some("all") => false,
            Some("billed") => true,
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
        // Nothing is ever billed in the sandbox, so `billed` is always empty.
        let records = self
            .usage_by_add_on
            .get(&pair)
            .into_iter()
            .flatten()
            .filter(|_| !billed_only)
            .filter_map(|id| self.usage.get(id));
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

    fn usage_record(&self, id: &str) -> Result<&UsageRecord> {
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

/// `(add_ons_total, subtotal)`: fixed add-ons at their price × quantity (usage is billed in
/// arrears), plus the plan price × quantity.
fn subscription_totals(add_ons: &[Value], unit_amount: f64, quantity: i64) -> (f64, f64) {
    // Folded from +0.0: `f64` sums start at -0.0, which an empty list would print.
    let add_ons_total = add_ons
        .iter()
        .filter(|a| a["add_on"]["add_on_type"] == "fixed")
        .map(|a| a["unit_amount"].as_f64().unwrap_or(0.0) * a["quantity"].as_f64().unwrap_or(0.0))
        .fold(0.0, |total, amount| total + amount);
    (add_ons_total, unit_amount * quantity as f64 + add_ons_total)
}

/// `live`: active, canceled, future, or in trial (FilterSubscriptionStateEnum).
fn subscription_is_live(sub: &Record, now: DateTime<Utc>) -> bool {
    matches!(sub.text("state"), "active" | "canceled" | "future") || in_trial(sub, now)
}

fn in_trial(sub: &Record, now: DateTime<Utc>) -> bool {
    let at = |key: &str| {
        sub.body
            .get(key)
            .and_then(Value::as_str)
            .and_then(parse_time)
    };
    matches!((at("trial_started_at"), at("trial_ends_at")), (Some(start), Some(end)) if start <= now && end > now)
}

fn subscription_matches_state(sub: &Record, want: &str, now: DateTime<Utc>) -> bool {
    match want {
        "live" => subscription_is_live(sub, now),
        "in_trial" => in_trial(sub, now),
        state => sub.text("state") == state,
    }
}

fn account_mini(account: &Record) -> Value {
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
fn subscription_add_on(add_on: &Record, currency: &str) -> Map<String, Value> {
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
