//! The catalog: plans, their add-ons and measured units, with Recurly's code rules (codes stay
//! taken after deletion) and the 201 that the spec documents for plan and add-on updates.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::paging::{ListQuery, paginate};
use super::store::*;
use super::validation::{self as v, AddOnContext, Checker, TAKEN, object_body};

impl Store {
    // ---- plans -------------------------------------------------------------------------

    pub(super) fn plan(&self, key: &str) -> Result<&Record> {
        lookup(&self.plans, &self.plan_by_code, key, "code-")
            .ok_or_else(|| ApiError::not_found("Plan", key))
    }

    pub(super) fn plan_code_taken(&self, code: &str, except: Option<&str>) -> bool {
        self.plan_by_code
            .get(code)
            .filter(|id| Some(id.as_str()) != except)
            .and_then(|id| self.plans.get(id))
            .is_some_and(|p| p.active() || deleted_codes_stay_taken())
    }

    pub(super) fn unit_context_checks(
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

    pub(super) fn insert_add_on(
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

    pub(super) fn plan_add_on(&self, plan_id: &str, key: &str) -> Result<&Record> {
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

    pub(super) fn plan_currencies(plan: &Record) -> Vec<String> {
        plan.field("currencies")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["currency"].as_str().map(str::to_owned))
            .collect()
    }

    pub(super) fn add_on_code_taken(
        &self,
        plan_id: &str,
        code: &str,
        except: Option<&str>,
    ) -> bool {
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

    pub(super) fn unit(&self, key: &str) -> Result<&Record> {
        lookup(&self.units, &self.unit_by_name, key, "name-")
            .ok_or_else(|| ApiError::not_found("MeasuredUnit", key))
    }

    pub(super) fn unit_name_taken(&self, name: &str, except: Option<&str>) -> bool {
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
}
