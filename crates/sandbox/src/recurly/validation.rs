//! Recurly's request validation for plans, add-ons, measured units and accounts, as plain
//! functions from the request JSON to the stored resource JSON (or the 422 params).

use serde_json::{Map, Value, json};

use super::errors::{ApiError, Invalid};

pub(crate) const CODE_MAX: usize = 50;
pub(crate) const NAME_MAX: usize = 255;
pub(crate) const ACCOUNTING_CODE_MAX: usize = 20;
pub(crate) const AMOUNT_MAX: f64 = 1_000_000.0;
/// The last tier's `ending_quantity` when it is left out (reference §3, usage-based pricing guide).
pub(crate) const LAST_TIER_ENDING_QUANTITY: i64 = 999_999_999;
pub(crate) const TAKEN: &str = "has already been taken";

pub(crate) const INTERVAL_UNITS: &[&str] = &["days", "months"];
pub(crate) const PRICING_MODELS: &[&str] = &["fixed", "ramp"];
pub(crate) const REVENUE_SCHEDULE_TYPES: &[&str] =
    &["at_range_end", "at_range_start", "evenly", "never"];
pub(crate) const ADD_ON_TYPES: &[&str] = &["fixed", "usage"];
pub(crate) const USAGE_TYPES: &[&str] = &["price", "percentage"];
pub(crate) const USAGE_CALCULATION_TYPES: &[&str] = &["cumulative", "last_in_period"];
pub(crate) const TIER_TYPES: &[&str] = &["flat", "tiered", "stairstep", "volume"];
pub(crate) const USAGE_TIMEFRAMES: &[&str] = &["billing_period", "subscription_term"];

/// Request fields each body schema of the OpenAPI description allows.
pub(crate) const PLAN_CREATE_FIELDS: &[&str] = &[
    "code",
    "name",
    "description",
    "accounting_code",
    "interval_unit",
    "interval_length",
    "trial_unit",
    "trial_length",
    "trial_requires_billing_info",
    "total_billing_cycles",
    "auto_renew",
    "pricing_model",
    "ramp_intervals",
    "custom_fields",
    "revenue_schedule_type",
    "setup_fee_revenue_schedule_type",
    "setup_fee_accounting_code",
    "avalara_transaction_type",
    "avalara_service_type",
    "tax_code",
    "tax_exempt",
    "currencies",
    "hosted_pages",
    "add_ons",
    "allow_any_item_on_subscriptions",
    "dunning_campaign_id",
];
pub(crate) const PLAN_UPDATE_FIELDS: &[&str] = &[
    "id",
    "code",
    "name",
    "description",
    "accounting_code",
    "trial_unit",
    "trial_length",
    "trial_requires_billing_info",
    "total_billing_cycles",
    "auto_renew",
    "ramp_intervals",
    "custom_fields",
    "revenue_schedule_type",
    "setup_fee_revenue_schedule_type",
    "setup_fee_accounting_code",
    "avalara_transaction_type",
    "avalara_service_type",
    "tax_code",
    "tax_exempt",
    "currencies",
    "hosted_pages",
    "allow_any_item_on_subscriptions",
    "dunning_campaign_id",
];
pub(crate) const ADD_ON_CREATE_FIELDS: &[&str] = &[
    "item_code",
    "item_id",
    "code",
    "name",
    "add_on_type",
    "usage_type",
    "usage_calculation_type",
    "usage_percentage",
    "measured_unit_id",
    "measured_unit_name",
    "plan_id",
    "accounting_code",
    "revenue_schedule_type",
    "display_quantity",
    "default_quantity",
    "optional",
    "avalara_transaction_type",
    "avalara_service_type",
    "tax_code",
    "currencies",
    "tier_type",
    "usage_timeframe",
    "tiers",
    "percentage_tiers",
];
pub(crate) const ADD_ON_UPDATE_FIELDS: &[&str] = &[
    "id",
    "code",
    "name",
    "usage_percentage",
    "usage_calculation_type",
    "measured_unit_id",
    "measured_unit_name",
    "accounting_code",
    "revenue_schedule_type",
    "avalara_transaction_type",
    "avalara_service_type",
    "tax_code",
    "display_quantity",
    "default_quantity",
    "optional",
    "currencies",
    "tiers",
    "percentage_tiers",
];
pub(crate) const MEASURED_UNIT_FIELDS: &[&str] = &["name", "display_name", "description"];
pub(crate) const ACCOUNT_UPDATE_FIELDS: &[&str] = &[
    "username",
    "email",
    "preferred_locale",
    "preferred_time_zone",
    "cc_emails",
    "first_name",
    "last_name",
    "company",
    "vat_number",
    "tax_exempt",
    "exemption_certificate",
    "override_business_entity_id",
    "parent_account_code",
    "parent_account_id",
    "bill_to",
    "transaction_type",
    "dunning_campaign_id",
    "invoice_template_id",
    "address",
    "billing_info",
    "custom_fields",
];
pub(crate) const ACCOUNT_CREATE_EXTRA_FIELDS: &[&str] = &[
    "code",
    "acquisition",
    "external_accounts",
    "shipping_addresses",
];
pub(crate) const SUBSCRIPTION_CREATE_FIELDS: &[&str] = &[
    "plan_code",
    "plan_id",
    "account",
    "billing_info_id",
    "shipping",
    "collection_method",
    "currency",
    "unit_amount",
    "tax_inclusive",
    "quantity",
    "add_ons",
    "coupon_codes",
    "custom_fields",
    "trial_ends_at",
    "starts_at",
    "next_bill_date",
    "total_billing_cycles",
    "renewal_billing_cycles",
    "auto_renew",
    "ramp_intervals",
    "revenue_schedule_type",
    "terms_and_conditions",
    "customer_notes",
    "credit_customer_notes",
    "po_number",
    "net_terms",
    "net_terms_type",
    "gateway_code",
    "transaction_type",
    "gift_card_redemption_code",
];
pub(crate) const SUBSCRIPTION_ADD_ON_FIELDS: &[&str] = &[
    "code",
    "add_on_source",
    "quantity",
    "unit_amount",
    "unit_amount_decimal",
    "tiers",
    "percentage_tiers",
    "usage_percentage",
    "revenue_schedule_type",
];
pub(crate) const SUBSCRIPTION_CHANGE_FIELDS: &[&str] = &[
    "timeframe",
    "plan_id",
    "plan_code",
    "unit_amount",
    "tax_inclusive",
    "quantity",
    "shipping",
    "coupon_codes",
    "add_ons",
    "collection_method",
    "revenue_schedule_type",
    "custom_fields",
    "po_number",
    "net_terms",
    "net_terms_type",
    "transaction_type",
    "billing_info",
    "ramp_intervals",
];
pub(crate) const USAGE_CREATE_FIELDS: &[&str] = &[
    "merchant_tag",
    "amount",
    "recording_timestamp",
    "usage_timestamp",
];

/// A write body must be a JSON object holding only fields its schema knows. Unknown fields
/// are refused with 400 rather than ignored [U: Recurly's handling is undocumented], so a client
/// sending e.g. `interval_unit` in a PlanUpdate finds out here and not in production.
pub(crate) fn object_body<'a>(
    body: &'a Value,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("Bad request, perhaps invalid JSON?"))?;
    let unknown: Vec<&str> = object
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        Ok(object)
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid or unpermitted parameter: {}",
            unknown.join(", ")
        )))
    }
}

/// Collects every field problem of one request, each named by its param path.
#[derive(Default)]
pub(crate) struct Checker {
    pub errors: Vec<Invalid>,
}

impl Checker {
    pub fn fail(&mut self, param: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Invalid::new(param, message));
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.errors))
        }
    }

    pub fn string(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
        max: usize,
        required: bool,
    ) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(format!("{prefix}{key}"), "can't be blank");
                }
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() && required => {
                self.fail(format!("{prefix}{key}"), "can't be blank");
                None
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                self.fail(
                    format!("{prefix}{key}"),
                    format!("is too long (maximum is {max} characters)"),
                );
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.fail(format!("{prefix}{key}"), "must be a string");
                None
            }
        }
    }

    pub fn one_of(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
        allowed: &[&str],
    ) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Some(s.clone()),
            Some(_) => {
                self.fail(
                    format!("{prefix}{key}"),
                    format!("is not included in the list ({})", allowed.join(", ")),
                );
                None
            }
        }
    }

    pub fn integer(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) if n < min => {
                    self.fail(
                        format!("{prefix}{key}"),
                        format!("must be greater than or equal to {min}"),
                    );
                    None
                }
                Some(n) if n > max => {
                    self.fail(
                        format!("{prefix}{key}"),
                        format!("must be less than or equal to {max}"),
                    );
                    None
                }
                Some(n) => Some(n),
                None => {
                    self.fail(format!("{prefix}{key}"), "must be an integer");
                    None
                }
            },
        }
    }

    pub fn boolean(&mut self, obj: &Map<String, Value>, prefix: &str, key: &str) -> Option<bool> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.fail(format!("{prefix}{key}"), "must be true or false");
                None
            }
        }
    }

    /// A money amount in major units: 0–1,000,000 with at most `max_decimals` places.
    pub fn amount(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
        max_decimals: u32,
    ) -> Option<f64> {
        let value = obj.get(key).filter(|v| !v.is_null())?;
        let param = format!("{prefix}{key}");
        match value.as_f64() {
            Some(n) if !(0.0..=AMOUNT_MAX).contains(&n) => {
                self.fail(param, "must be between 0 and 1000000");
                None
            }
            Some(n) if !has_at_most_decimals(n, max_decimals) => {
                self.fail(
                    param,
                    format!("must have at most {max_decimals} decimal places"),
                );
                None
            }
            Some(n) => Some(n),
            None => {
                self.fail(param, "must be a number");
                None
            }
        }
    }

    /// `unit_amount_decimal`: a decimal string, 0–1,000,000, at most 9 places.
    pub fn decimal_string(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
    ) -> Option<String> {
        let value = obj.get(key).filter(|v| !v.is_null())?;
        let param = format!("{prefix}{key}");
        let Some(text) = value.as_str() else {
            self.fail(param, "must be a string");
            return None;
        };
        match parse_decimal(text) {
            Some((n, places)) if places > 9 => {
                let _ = n;
                self.fail(param, "must have at most 9 decimal places");
                None
            }
            Some((n, _)) if !(0.0..=AMOUNT_MAX).contains(&n) => {
                self.fail(param, "must be between 0 and 1000000");
                None
            }
            Some(_) => Some(text.to_owned()),
            None => {
                self.fail(param, "is not a number");
                None
            }
        }
    }
}

fn has_at_most_decimals(n: f64, places: u32) -> bool {
    let scaled = n * 10f64.powi(places as i32);
    (scaled - scaled.round()).abs() < 1e-6
}

/// `"0.002"` → (0.002, 3). Plain decimal notation only, as Recurly documents the field.
pub(crate) fn parse_decimal(text: &str) -> Option<(f64, usize)> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(fraction)
        || (text.contains('.') && fraction.is_empty())
    {
        return None;
    }
    Some((text.parse().ok()?, fraction.len()))
}

/// ISO 4217 codes are three upper-case letters.
pub(crate) fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.chars().all(|c| c.is_ascii_uppercase())
}

/// Plan codes: `/^[a-z0-9_+-]+$/i` (OpenAPI `Plan.code`).
pub(crate) fn is_plan_code(code: &str) -> bool {
    !code.is_empty()
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'))
}

/// `accounting_code` when the request leaves it out. Recurly documents only that it "defaults to
/// the plan's (add-on's) code", not what happens when that code breaks the accounting code's own
/// rule (lowercase, at most 20 characters) [U: reference §3.1]. A plan or add-on code may be 50
/// characters, so refusing would make valid codes unusable without an accounting code; the
/// sandbox accepts it and answers the code when it fits the rule, else `null` (the answer's
/// schema cannot hold it).
pub(crate) fn defaulted_accounting_code(code: &str) -> Option<String> {
    let mut probe = Checker::default();
    check_accounting_code(&mut probe, String::new(), code);
    probe.errors.is_empty().then(|| code.to_owned())
}

/// The `accounting_code` a plan or add-on gets: an explicit one is checked (errors under
/// `param`), an absent one defaulted.
fn accounting_code_field(
    checker: &mut Checker,
    param: String,
    explicit: Option<&str>,
    code: &str,
) -> Value {
    match explicit {
        Some(given) => {
            check_accounting_code(checker, param, given);
            json!(given)
        }
        None => json!(defaulted_accounting_code(code)),
    }
}

/// `/^[a-z0-9_+-]+$/` (case-sensitive) and at most 20 characters.
pub(crate) fn check_accounting_code(checker: &mut Checker, param: String, value: &str) {
    let allowed = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '+' | '-'));
    if value.is_empty() || !allowed {
        checker.fail(param, "is invalid");
    } else if value.chars().count() > ACCOUNTING_CODE_MAX {
        checker.fail(
            param,
            format!("is too long (maximum is {ACCOUNTING_CODE_MAX} characters)"),
        );
    }
}

fn array<'a>(
    checker: &mut Checker,
    obj: &'a Map<String, Value>,
    prefix: &str,
    key: &str,
) -> Option<&'a Vec<Value>> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(items),
        Some(_) => {
            checker.fail(format!("{prefix}{key}"), "must be an array");
            None
        }
    }
}

fn object_of<'a>(
    checker: &mut Checker,
    item: &'a Value,
    param: String,
) -> Option<&'a Map<String, Value>> {
    let object = item.as_object();
    if object.is_none() {
        checker.fail(param, "must be an object");
    }
    object
}

/// Validates a plan (PlanCreate, or a stored plan merged with a PlanUpdate) and returns the
/// Plan fields derived from it, minus id, state and timestamps.
pub(crate) fn plan_fields(input: &Map<String, Value>, checker: &mut Checker) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(code) = checker.string(input, "", "code", CODE_MAX, true) {
        if is_plan_code(&code) {
            let accounting = accounting_code_field(
                checker,
                "accounting_code".into(),
                input.get("accounting_code").and_then(Value::as_str),
                &code,
            );
            out.insert("accounting_code".into(), accounting);
        } else {
            checker.fail("code", "is invalid");
        }
        out.insert("code".into(), json!(code));
    }
    if let Some(name) = checker.string(input, "", "name", NAME_MAX, true) {
        out.insert("name".into(), json!(name));
    }
    if let Some(description) = checker.string(input, "", "description", usize::MAX, false) {
        out.insert("description".into(), json!(description));
    }
    let interval_unit = checker.one_of(input, "", "interval_unit", INTERVAL_UNITS);
    out.insert(
        "interval_unit".into(),
        json!(interval_unit.as_deref().unwrap_or("months")),
    );
    let interval_length = checker.integer(input, "", "interval_length", 1, i64::from(i32::MAX));
    out.insert(
        "interval_length".into(),
        json!(interval_length.unwrap_or(1)),
    );
    let trial_unit = checker.one_of(input, "", "trial_unit", INTERVAL_UNITS);
    out.insert(
        "trial_unit".into(),
        json!(trial_unit.as_deref().unwrap_or("months")),
    );
    let trial_length = checker.integer(input, "", "trial_length", 0, i64::from(i32::MAX));
    out.insert("trial_length".into(), json!(trial_length.unwrap_or(0)));
    let requires_billing = checker.boolean(input, "", "trial_requires_billing_info");
    out.insert(
        "trial_requires_billing_info".into(),
        json!(requires_billing.unwrap_or(true)),
    );
    if let Some(cycles) = checker.integer(input, "", "total_billing_cycles", 0, i64::from(i32::MAX))
    {
        out.insert("total_billing_cycles".into(), json!(cycles));
    }
    out.insert(
        "auto_renew".into(),
        json!(checker.boolean(input, "", "auto_renew").unwrap_or(true)),
    );
    let pricing_model = checker.one_of(input, "", "pricing_model", PRICING_MODELS);
    out.insert(
        "pricing_model".into(),
        json!(pricing_model.as_deref().unwrap_or("fixed")),
    );
    if let Some(ramps) = array(checker, input, "", "ramp_intervals") {
        out.insert("ramp_intervals".into(), Value::Array(ramps.clone()));
    }
    let custom_fields = array(checker, input, "", "custom_fields")
        .cloned()
        .unwrap_or_default();
    out.insert("custom_fields".into(), Value::Array(custom_fields));
    for key in ["revenue_schedule_type", "setup_fee_revenue_schedule_type"] {
        let value = checker.one_of(input, "", key, REVENUE_SCHEDULE_TYPES);
        out.insert(key.into(), json!(value.as_deref().unwrap_or("evenly")));
    }
    if let Some(code) = checker.string(input, "", "setup_fee_accounting_code", usize::MAX, false) {
        check_accounting_code(checker, "setup_fee_accounting_code".into(), &code);
        out.insert("setup_fee_accounting_code".into(), json!(code));
    }
    for key in ["avalara_transaction_type", "avalara_service_type"] {
        if let Some(n) = checker.integer(input, "", key, 0, i64::MAX) {
            out.insert(key.into(), json!(n));
        }
    }
    if let Some(tax_code) = checker.string(input, "", "tax_code", CODE_MAX, false) {
        out.insert("tax_code".into(), json!(tax_code));
    }
    out.insert(
        "tax_exempt".into(),
        json!(checker.boolean(input, "", "tax_exempt").unwrap_or(false)),
    );
    out.insert(
        "currencies".into(),
        Value::Array(plan_pricing(input, checker)),
    );
    let mut hosted = Map::new();
    if let Some(pages) = input.get("hosted_pages").filter(|v| !v.is_null()) {
        if let Some(pages) = object_of(checker, pages, "hosted_pages".into()) {
            for key in ["success_url", "cancel_url"] {
                if let Some(url) = checker.string(pages, "hosted_pages.", key, usize::MAX, false) {
                    hosted.insert(key.into(), json!(url));
                }
            }
            for key in ["bypass_confirmation", "display_quantity"] {
                hosted.insert(
                    key.into(),
                    json!(
                        checker
                            .boolean(pages, "hosted_pages.", key)
                            .unwrap_or(false)
                    ),
                );
            }
        }
    } else {
        hosted.insert("bypass_confirmation".into(), json!(false));
        hosted.insert("display_quantity".into(), json!(false));
    }
    out.insert("hosted_pages".into(), Value::Object(hosted));
    let any_item = checker.boolean(input, "", "allow_any_item_on_subscriptions");
    out.insert(
        "allow_any_item_on_subscriptions".into(),
        json!(any_item.unwrap_or(false)),
    );
    if let Some(id) = checker.string(input, "", "dunning_campaign_id", usize::MAX, false) {
        out.insert("dunning_campaign_id".into(), json!(id));
    }
    out
}

/// `currencies: PlanPricing[]`, at least one, each currency once.
fn plan_pricing(input: &Map<String, Value>, checker: &mut Checker) -> Vec<Value> {
    let Some(items) = array(checker, input, "", "currencies") else {
        checker.fail("currencies", "can't be blank");
        return Vec::new();
    };
    if items.is_empty() {
        checker.fail("currencies", "can't be blank");
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("currencies[{i}].");
        let Some(pricing) = object_of(checker, item, format!("currencies[{i}]")) else {
            continue;
        };
        let currency = currency_field(checker, pricing, &prefix);
        let ramp = input.get("pricing_model").and_then(Value::as_str) == Some("ramp");
        let unit_amount = checker.amount(pricing, &prefix, "unit_amount", 2);
        let setup_fee = checker
            .amount(pricing, &prefix, "setup_fee", 2)
            .unwrap_or(0.0);
        if let Some(currency) = currency {
            if seen.contains(&currency) {
                checker.fail(format!("{prefix}currency"), TAKEN);
            }
            seen.push(currency.clone());
            let mut priced = json!({"currency": currency, "setup_fee": setup_fee});
            if !ramp {
                priced["unit_amount"] = json!(unit_amount.unwrap_or(0.0));
            }
            out.push(priced);
        }
    }
    out
}

fn currency_field(
    checker: &mut Checker,
    pricing: &Map<String, Value>,
    prefix: &str,
) -> Option<String> {
    let currency = checker.string(pricing, prefix, "currency", 3, true)?;
    if is_currency_code(&currency) {
        Some(currency)
    } else {
        checker.fail(
            format!("{prefix}currency"),
            "is not a valid ISO 4217 currency code",
        );
        None
    }
}

/// What an add-on needs from the rest of the site to be validated.
pub(crate) struct AddOnContext<'a> {
    /// The currencies of the plan the add-on belongs to.
    pub plan_currencies: &'a [String],
    /// Resolves a measured unit by id or by name to its id.
    pub unit_id_exists: &'a dyn Fn(&str) -> bool,
    pub unit_id_by_name: &'a dyn Fn(&str) -> Option<String>,
}

/// A `measured_unit_name` that names no measured unit is refused rather than creating one:
/// whether Recurly auto-creates it is undocumented [U: reference §3], and refusing makes a client
/// that forgets to create the unit fail in the sandbox instead of in production.
pub(crate) fn unknown_measured_unit_name_is_refused() -> bool {
    true
}

/// Validates an add-on (AddOnCreate, or a stored add-on merged with an AddOnUpdate) and returns
/// the AddOn fields derived from it, minus id, plan_id, state and timestamps.
pub(crate) fn add_on_fields(
    input: &Map<String, Value>,
    prefix: &str,
    ctx: &AddOnContext<'_>,
    checker: &mut Checker,
) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(code) = checker.string(input, prefix, "code", CODE_MAX, true) {
        let accounting = accounting_code_field(
            checker,
            format!("{prefix}accounting_code"),
            input.get("accounting_code").and_then(Value::as_str),
            &code,
        );
        out.insert("accounting_code".into(), accounting);
        out.insert("code".into(), json!(code));
    }
    if let Some(name) = checker.string(input, prefix, "name", NAME_MAX, true) {
        out.insert("name".into(), json!(name));
    }
    let add_on_type = checker
        .one_of(input, prefix, "add_on_type", ADD_ON_TYPES)
        .unwrap_or_else(|| "fixed".into());
    let usage = add_on_type == "usage";
    out.insert("add_on_type".into(), json!(add_on_type));
    let tier_type = checker
        .one_of(input, prefix, "tier_type", TIER_TYPES)
        .unwrap_or_else(|| "flat".into());
    let mut percentage = false;
    if usage {
        match checker.one_of(input, prefix, "usage_type", USAGE_TYPES) {
            Some(usage_type) => {
                percentage = usage_type == "percentage";
                out.insert("usage_type".into(), json!(usage_type));
            }
            None if input.get("usage_type").is_none_or(Value::is_null) => {
                checker.fail(format!("{prefix}usage_type"), "can't be blank")
            }
            None => {}
        }
        let calculation = checker.one_of(
            input,
            prefix,
            "usage_calculation_type",
            USAGE_CALCULATION_TYPES,
        );
        out.insert(
            "usage_calculation_type".into(),
            json!(calculation.as_deref().unwrap_or("cumulative")),
        );
        let timeframe = checker.one_of(input, prefix, "usage_timeframe", USAGE_TIMEFRAMES);
        out.insert(
            "usage_timeframe".into(),
            json!(timeframe.as_deref().unwrap_or("billing_period")),
        );
        if let Some(unit_id) = measured_unit(input, prefix, ctx, checker) {
            out.insert("measured_unit_id".into(), json!(unit_id));
        }
        if percentage && tier_type == "flat" {
            match input.get("usage_percentage").and_then(Value::as_f64) {
                Some(p) if (0.0..=100.0).contains(&p) && has_at_most_decimals(p, 4) => {
                    out.insert("usage_percentage".into(), json!(p));
                }
                Some(_) => checker.fail(
                    format!("{prefix}usage_percentage"),
                    "must be between 0 and 100 with at most 4 decimal places",
                ),
                None => checker.fail(format!("{prefix}usage_percentage"), "can't be blank"),
            }
        }
    } else {
        for key in [
            "usage_type",
            "usage_percentage",
            "measured_unit_id",
            "measured_unit_name",
        ] {
            if input.get(key).is_some_and(|v| !v.is_null()) {
                checker.fail(format!("{prefix}{key}"), "is only allowed on usage add-ons");
            }
        }
    }
    out.insert("tier_type".into(), json!(tier_type));
    let revenue = checker.one_of(
        input,
        prefix,
        "revenue_schedule_type",
        REVENUE_SCHEDULE_TYPES,
    );
    out.insert(
        "revenue_schedule_type".into(),
        json!(revenue.as_deref().unwrap_or("evenly")),
    );
    for key in ["avalara_transaction_type", "avalara_service_type"] {
        if let Some(n) = checker.integer(input, prefix, key, 0, i64::MAX) {
            out.insert(key.into(), json!(n));
        }
    }
    if let Some(tax_code) = checker.string(input, prefix, "tax_code", CODE_MAX, false) {
        out.insert("tax_code".into(), json!(tax_code));
    }
    out.insert(
        "display_quantity".into(),
        json!(
            checker
                .boolean(input, prefix, "display_quantity")
                .unwrap_or(false)
        ),
    );
    out.insert(
        "default_quantity".into(),
        json!(
            checker
                .integer(input, prefix, "default_quantity", 0, i64::from(i32::MAX))
                .unwrap_or(1)
        ),
    );
    out.insert(
        "optional".into(),
        json!(checker.boolean(input, prefix, "optional").unwrap_or(true)),
    );
    if array(checker, input, prefix, "percentage_tiers").is_some_and(|t| !t.is_empty()) {
        checker.fail(
            format!("{prefix}percentage_tiers"),
            "require the percentage tiers feature, which this site does not have",
        );
    }

    let currencies = array(checker, input, prefix, "currencies").filter(|c| !c.is_empty());
    let tiers = array(checker, input, prefix, "tiers").filter(|t| !t.is_empty());
    if tier_type == "flat" {
        if tiers.is_some() {
            checker.fail(
                format!("{prefix}tiers"),
                "are only allowed when tier_type is tiered, volume or stairstep",
            );
        }
        match (currencies, percentage) {
            (Some(_), true) => checker.fail(
                format!("{prefix}currencies"),
                "are not allowed on percentage add-ons",
            ),
            (Some(items), false) => {
                let priced =
                    add_on_pricing(items, &format!("{prefix}currencies"), usage, ctx, checker);
                out.insert("currencies".into(), Value::Array(priced));
            }
            (None, true) => {}
            (None, false) => checker.fail(format!("{prefix}currencies"), "can't be blank"),
        }
    } else {
        if currencies.is_some() {
            checker.fail(format!("{prefix}currencies"), "are not allowed when tier_type is tiered, volume or stairstep; price each tier instead");
        }
        match tiers {
            Some(items) => {
                let tiers = tier_list(items, prefix, usage, ctx, checker);
                out.insert("tiers".into(), Value::Array(tiers));
            }
            None => checker.fail(format!("{prefix}tiers"), "can't be blank"),
        }
    }
    out
}

fn measured_unit(
    input: &Map<String, Value>,
    prefix: &str,
    ctx: &AddOnContext<'_>,
    checker: &mut Checker,
) -> Option<String> {
    // When both are given, the id wins (AddOnCreate.measured_unit_id).
    if let Some(id) = checker.string(input, prefix, "measured_unit_id", 13, false) {
        if (ctx.unit_id_exists)(&id) {
            return Some(id);
        }
        checker.fail(format!("{prefix}measured_unit_id"), "is invalid");
        return None;
    }
    if let Some(name) = checker.string(input, prefix, "measured_unit_name", NAME_MAX, false) {
        let found = (ctx.unit_id_by_name)(&name);
        if found.is_none() && unknown_measured_unit_name_is_refused() {
            checker.fail(
                format!("{prefix}measured_unit_name"),
                "does not name an existing measured unit",
            );
        }
        return found;
    }
    checker.fail(format!("{prefix}measured_unit_id"), "can't be blank");
    None
}

/// `AddOnPricing[]` / `TierPricing[]`: each currency one of the plan's and given once, priced by
/// `unit_amount` (2 places) or, on usage add-ons only, `unit_amount_decimal` (9 places).
fn add_on_pricing(
    items: &[Value],
    param: &str,
    usage: bool,
    ctx: &AddOnContext<'_>,
    checker: &mut Checker,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("{param}[{i}].");
        let Some(pricing) = object_of(checker, item, format!("{param}[{i}]")) else {
            continue;
        };
        let currency = currency_field(checker, pricing, &prefix);
        let unit_amount = checker.amount(pricing, &prefix, "unit_amount", 2);
        let decimal = checker.decimal_string(pricing, &prefix, "unit_amount_decimal");
        if decimal.is_some() && !usage {
            checker.fail(
                format!("{prefix}unit_amount_decimal"),
                "is only allowed on usage add-ons",
            );
        }
        let has_amount = |key: &str| pricing.get(key).is_some_and(|v| !v.is_null());
        if !has_amount("unit_amount") && !has_amount("unit_amount_decimal") {
            checker.fail(format!("{prefix}unit_amount"), "can't be blank");
        }
        let Some(currency) = currency else { continue };
        if !ctx.plan_currencies.contains(&currency) {
            checker.fail(
                format!("{prefix}currency"),
                "must be one of the plan's currencies",
            );
        }
        if seen.contains(&currency) {
            checker.fail(format!("{prefix}currency"), TAKEN);
        }
        seen.push(currency.clone());
        let mut priced = json!({"currency": currency});
        if let Some(amount) = unit_amount {
            priced["unit_amount"] = json!(amount);
        }
        if let Some(decimal) = decimal {
            priced["unit_amount_decimal"] = json!(decimal);
        }
        out.push(priced);
    }
    out
}

/// Tier rules: ending quantities 1–999,999,999 and ascending, only the last may be left out
/// (it then defaults to 999,999,999), and every tier priced in every plan currency.
fn tier_list(
    items: &[Value],
    prefix: &str,
    usage: bool,
    ctx: &AddOnContext<'_>,
    checker: &mut Checker,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut previous: Option<i64> = None;
    for (i, item) in items.iter().enumerate() {
        let tier_prefix = format!("{prefix}tiers[{i}].");
        let Some(tier) = object_of(checker, item, format!("{prefix}tiers[{i}]")) else {
            continue;
        };
        let last = i + 1 == items.len();
        let ending = match checker.integer(
            tier,
            &tier_prefix,
            "ending_quantity",
            1,
            LAST_TIER_ENDING_QUANTITY,
        ) {
            Some(n) => Some(n),
            None if last && tier.get("ending_quantity").is_none_or(Value::is_null) => {
                Some(LAST_TIER_ENDING_QUANTITY)
            }
            None => {
                if tier.get("ending_quantity").is_none_or(Value::is_null) {
                    checker.fail(
                        format!("{tier_prefix}ending_quantity"),
                        "can't be blank (only the last tier may leave it out)",
                    );
                }
                None
            }
        };
        if let (Some(ending), Some(before)) = (ending, previous)
            && ending <= before
        {
            checker.fail(
                format!("{tier_prefix}ending_quantity"),
                "must be greater than the previous tier's ending quantity",
            );
        }
        previous = ending.or(previous);
        let pricing_param = format!("{tier_prefix}currencies");
        let currencies = match array(checker, tier, &tier_prefix, "currencies") {
            Some(c) => add_on_pricing(c, &pricing_param, usage, ctx, checker),
            None => Vec::new(),
        };
        for currency in ctx.plan_currencies {
            if !currencies.iter().any(|p| p["currency"] == json!(currency)) {
                checker.fail(
                    pricing_param.clone(),
                    format!("must include a price in {currency}"),
                );
            }
        }
        out.push(json!({"ending_quantity": ending.unwrap_or(LAST_TIER_ENDING_QUANTITY), "currencies": currencies}));
    }
    out
}

/// MeasuredUnitCreate: `name` ≤255 and `display_name` ≤50 matching `/^[\w ]+$/`.
pub(crate) fn measured_unit_fields(
    input: &Map<String, Value>,
    checker: &mut Checker,
) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(name) = checker.string(input, "", "name", NAME_MAX, true) {
        out.insert("name".into(), json!(name));
    }
    if let Some(display) = checker.string(input, "", "display_name", 50, true) {
        if display
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == ' ')
        {
            out.insert("display_name".into(), json!(display));
        } else {
            checker.fail("display_name", "is invalid");
        }
    }
    if let Some(description) = checker.string(input, "", "description", usize::MAX, false) {
        out.insert("description".into(), json!(description));
    }
    out
}

/// AccountCreate / AccountUpdate: the fields the sandbox keeps, with their limits.
pub(crate) fn account_fields(
    input: &Map<String, Value>,
    prefix: &str,
    checker: &mut Checker,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, max) in [
        ("username", NAME_MAX),
        ("email", NAME_MAX),
        ("cc_emails", NAME_MAX),
        ("first_name", NAME_MAX),
        ("last_name", NAME_MAX),
        ("company", NAME_MAX),
        ("vat_number", 20),
        ("exemption_certificate", 30),
        ("preferred_locale", 10),
        ("preferred_time_zone", NAME_MAX),
        ("dunning_campaign_id", NAME_MAX),
        ("invoice_template_id", NAME_MAX),
        ("override_business_entity_id", NAME_MAX),
    ] {
        if let Some(value) = checker.string(input, prefix, key, max, false) {
            if key == "email" && !value.is_empty() && !looks_like_email(&value) {
                checker.fail(format!("{prefix}email"), "is invalid");
            }
            out.insert(key.into(), json!(value));
        }
    }
    if let Some(bill_to) = checker.one_of(input, prefix, "bill_to", &["self", "parent"]) {
        out.insert("bill_to".into(), json!(bill_to));
    }
    if let Some(exempt) = checker.boolean(input, prefix, "tax_exempt") {
        out.insert("tax_exempt".into(), json!(exempt));
    }
    if let Some(address) = input.get("address").filter(|v| !v.is_null())
        && let Some(address) = object_of(checker, address, format!("{prefix}address"))
    {
        let mut kept = Map::new();
        for key in [
            "phone",
            "street1",
            "street2",
            "city",
            "region",
            "postal_code",
            "country",
            "geo_code",
        ] {
            if let Some(value) =
                checker.string(address, &format!("{prefix}address."), key, NAME_MAX, false)
            {
                kept.insert(key.into(), json!(value));
            }
        }
        out.insert("address".into(), Value::Object(kept));
    }
    if let Some(fields) = array(checker, input, prefix, "custom_fields") {
        out.insert("custom_fields".into(), Value::Array(fields.clone()));
    }
    out
}

fn looks_like_email(address: &str) -> bool {
    address.rsplit_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !address.contains(' ')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(checker: &Checker) -> Vec<&str> {
        checker.errors.iter().map(|e| e.param.as_str()).collect()
    }

    fn context<'a>(currencies: &'a [String]) -> AddOnContext<'a> {
        AddOnContext {
            plan_currencies: currencies,
            unit_id_exists: &|id| id == "mu1",
            unit_id_by_name: &|name| (name == "api_calls").then(|| "mu1".to_owned()),
        }
    }

    fn add_on(value: Value) -> (Map<String, Value>, Checker) {
        let currencies = vec!["USD".to_owned()];
        let mut checker = Checker::default();
        let out = add_on_fields(
            value.as_object().unwrap(),
            "",
            &context(&currencies),
            &mut checker,
        );
        (out, checker)
    }

    fn usage_add_on(extra: Value) -> Value {
        let mut base = json!({"code": "api_calls", "name": "API calls", "add_on_type": "usage",
            "usage_type": "price", "measured_unit_name": "api_calls"});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    #[test]
    fn an_absent_accounting_code_never_refuses_a_long_or_capitalised_code() {
        for code in ["acme-weather-basic-2026", "Basic"] {
            let mut checker = Checker::default();
            let input = json!({"code": code, "name": "x", "currencies": [{"currency": "USD", "unit_amount": 0}]});
            let plan = plan_fields(input.as_object().unwrap(), &mut checker);
            assert!(checker.errors.is_empty(), "{code}: {:?}", checker.errors);
            assert_eq!(plan["accounting_code"], Value::Null, "{code}");
        }
        let mut checker = Checker::default();
        let input = json!({"code": "basic", "name": "x", "currencies": [{"currency": "USD", "unit_amount": 0}]});
        let plan = plan_fields(input.as_object().unwrap(), &mut checker);
        assert_eq!(
            plan["accounting_code"], "basic",
            "a code that fits is the default"
        );
        // An explicit one is still held to the rule.
        let mut checker = Checker::default();
        let input = json!({"code": "basic", "accounting_code": "acme-weather-basic-2026", "name": "x",
            "currencies": [{"currency": "USD", "unit_amount": 0}]});
        plan_fields(input.as_object().unwrap(), &mut checker);
        assert_eq!(params(&checker), ["accounting_code"]);
    }

    #[test]
    fn an_explicit_accounting_code_rescues_a_long_code() {
        let mut checker = Checker::default();
        let input = json!({"code": "acme-weather-basic-2026", "accounting_code": "acme_basic", "name": "x",
            "currencies": [{"currency": "USD", "unit_amount": 10.5}]});
        let plan = plan_fields(input.as_object().unwrap(), &mut checker);
        assert!(checker.errors.is_empty(), "{:?}", checker.errors);
        assert_eq!(plan["interval_unit"], "months");
        assert_eq!(plan["currencies"][0]["unit_amount"], 10.5);
    }

    #[test]
    fn plan_fields_are_checked_one_by_one() {
        let mut checker = Checker::default();
        let input = json!({"code": "a b", "currencies": [{"currency": "usd", "unit_amount": 1.005}],
            "interval_unit": "weeks", "interval_length": 0});
        plan_fields(input.as_object().unwrap(), &mut checker);
        assert_eq!(
            params(&checker),
            [
                "code",
                "name",
                "interval_unit",
                "interval_length",
                "currencies[0].currency",
                "currencies[0].unit_amount"
            ]
        );
    }

    #[test]
    fn tiered_usage_add_on_with_an_open_last_tier_is_accepted() {
        let (out, checker) = add_on(usage_add_on(json!({"tier_type": "tiered", "tiers": [
            {"ending_quantity": 1000, "currencies": [{"currency": "USD", "unit_amount": 0}]},
            {"currencies": [{"currency": "USD", "unit_amount_decimal": "0.002"}]}]})));
        assert!(checker.errors.is_empty(), "{:?}", checker.errors);
        assert_eq!(
            out["tiers"][1]["ending_quantity"],
            LAST_TIER_ENDING_QUANTITY
        );
        assert_eq!(out["measured_unit_id"], "mu1");
    }

    #[test]
    fn tiers_must_ascend_and_be_priced_in_every_plan_currency() {
        let (_, checker) = add_on(usage_add_on(json!({"tier_type": "volume", "tiers": [
            {"ending_quantity": 1000, "currencies": [{"currency": "USD", "unit_amount": 1}]},
            {"ending_quantity": 500, "currencies": []},
            {"currencies": [{"currency": "USD", "unit_amount": 1}]}]})));
        assert_eq!(
            params(&checker),
            ["tiers[1].ending_quantity", "tiers[1].currencies"]
        );
    }

    #[test]
    fn flat_add_ons_take_currencies_and_tiered_ones_take_tiers() {
        let (_, checker) = add_on(usage_add_on(
            json!({"tier_type": "flat", "tiers": [{"currencies": []}]}),
        ));
        assert_eq!(params(&checker), ["tiers", "currencies"]);
        let (_, checker) = add_on(usage_add_on(json!({"tier_type": "tiered",
            "currencies": [{"currency": "USD", "unit_amount": 1}]})));
        assert_eq!(params(&checker), ["currencies", "tiers"]);
    }

    #[test]
    fn decimal_prices_are_for_usage_add_ons_and_nine_places_at_most() {
        let (_, checker) = add_on(usage_add_on(
            json!({"currencies": [{"currency": "USD", "unit_amount_decimal": "0.0000000001"}]}),
        ));
        assert_eq!(params(&checker), ["currencies[0].unit_amount_decimal"]);
        let (_, checker) = add_on(json!({"code": "seats", "name": "Seats",
            "currencies": [{"currency": "USD", "unit_amount_decimal": "0.5"}]}));
        assert_eq!(params(&checker), ["currencies[0].unit_amount_decimal"]);
    }

    #[test]
    fn usage_add_ons_need_a_usage_type_and_an_existing_measured_unit() {
        let (_, checker) = add_on(
            json!({"code": "calls", "name": "Calls", "add_on_type": "usage",
            "measured_unit_name": "nope", "currencies": [{"currency": "USD", "unit_amount": 1}]}),
        );
        assert_eq!(params(&checker), ["usage_type", "measured_unit_name"]);
        let (_, checker) = add_on(
            json!({"code": "calls", "name": "Calls", "add_on_type": "usage", "usage_type": "price",
            "currencies": [{"currency": "USD", "unit_amount": 1}]}),
        );
        assert_eq!(params(&checker), ["measured_unit_id"]);
    }

    #[test]
    fn unknown_fields_are_refused_with_bad_request() {
        let err = object_body(
            &json!({"code": "x", "interval_unit": "months"}),
            PLAN_UPDATE_FIELDS,
        )
        .unwrap_err();
        assert_eq!(err.kind, "bad_request");
        assert!(err.message.contains("interval_unit"));
    }
}
