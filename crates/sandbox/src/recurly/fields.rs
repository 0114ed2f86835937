//! Every field Recurly's OpenAPI (v2021-02-25) documents for the objects the sandbox answers
//! with, so an answer carries each one, `null` or `[]` when unset, as Recurly's own answers do.
//!
//! The table is the spec's `properties` (with `allOf` parts merged) of each schema the sandbox
//! emits; `tests/it` checks every recorded answer against the spec itself, so a field missing
//! here shows up there.

use serde_json::{Map, Value};

/// How an unset field is sent, and the schema of what it holds when set.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// A string, number, boolean, or an object the sandbox never fills in: `null`.
    Scalar,
    /// An object of the named schema: `null` when unset, completed in turn when set.
    Object(&'static str),
    /// A list: `[]` when unset; items of the named schema are completed in turn.
    Array(Option<&'static str>),
    /// A list the spec says has at least one item (`minItems: 1`): `null` when unset, since an
    /// empty one would break the spec.
    NonEmptyArray(Option<&'static str>),
}

use Field::{Array, NonEmptyArray, Object, Scalar};

/// The top-level schema of an answer, by its `object` tag.
fn schema_of_object(object: &str) -> Option<&'static str> {
    Some(match object {
        "plan" => "Plan",
        "add_on" => "AddOn",
        "account" => "Account",
        "subscription" => "Subscription",
        "subscription_change" => "SubscriptionChange",
        "usage" => "Usage",
        "measured_unit" => "MeasuredUnit",
        "invoice" => "Invoice",
        "line_item" => "LineItem",
        _ => return None,
    })
}

/// Adds every documented field an answer leaves out: to the object itself, or to each item of a
/// list page, and recursively to the objects they hold.
pub(crate) fn complete_answer(body: &mut Value) {
    let Some(object) = body.get("object").and_then(Value::as_str) else {
        return;
    };
    if object == "list" {
        if let Some(items) = body.get_mut("data").and_then(Value::as_array_mut) {
            items.iter_mut().for_each(complete_answer);
        }
        return;
    }
    if let Some(schema) = schema_of_object(object) {
        complete(schema, body);
    }
}

fn complete(schema: &str, value: &mut Value) {
    let Some(fields) = SCHEMAS
        .iter()
        .find(|(name, _)| *name == schema)
        .map(|(_, f)| *f)
    else {
        return;
    };
    let Value::Object(map) = value else {
        return;
    };
    for (key, field) in fields {
        complete_field(map, key, *field);
    }
}

fn complete_field(map: &mut Map<String, Value>, key: &str, field: Field) {
    let entry = map.entry(key).or_insert_with(|| match field {
        Array(_) => Value::Array(Vec::new()),
        Scalar | Object(_) | NonEmptyArray(_) => Value::Null,
    });
    match (field, entry) {
        (Object(schema), value @ Value::Object(_)) => complete(schema, value),
        (Array(Some(schema)) | NonEmptyArray(Some(schema)), Value::Array(items)) => {
            items.iter_mut().for_each(|item| complete(schema, item))
        }
        _ => {}
    }
}

/// Generated from `components.schemas` of the spec; keep in its order to ease comparison.
const SCHEMAS: &[(&str, &[(&str, Field)])] = &[
    (
        "Plan",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("code", Scalar),
            ("state", Scalar),
            ("name", Scalar),
            ("description", Scalar),
            ("interval_unit", Scalar),
            ("interval_length", Scalar),
            ("trial_unit", Scalar),
            ("trial_length", Scalar),
            ("trial_requires_billing_info", Scalar),
            ("total_billing_cycles", Scalar),
            ("auto_renew", Scalar),
            ("pricing_model", Scalar),
            ("ramp_intervals", Array(Some("PlanRampInterval"))),
            ("custom_fields", Array(Some("CustomField"))),
            ("revenue_schedule_type", Scalar),
            ("setup_fee_revenue_schedule_type", Scalar),
            ("accounting_code", Scalar),
            ("setup_fee_accounting_code", Scalar),
            ("avalara_transaction_type", Scalar),
            ("avalara_service_type", Scalar),
            ("tax_code", Scalar),
            ("tax_exempt", Scalar),
            ("currencies", NonEmptyArray(Some("PlanPricing"))),
            ("hosted_pages", Object("PlanHostedPages")),
            ("allow_any_item_on_subscriptions", Scalar),
            ("dunning_campaign_id", Scalar),
            ("created_at", Scalar),
            ("updated_at", Scalar),
            ("deleted_at", Scalar),
        ],
    ),
    (
        "PlanPricing",
        &[
            ("currency", Scalar),
            ("setup_fee", Scalar),
            ("unit_amount", Scalar),
            ("tax_inclusive", Scalar),
        ],
    ),
    (
        "PlanHostedPages",
        &[
            ("success_url", Scalar),
            ("cancel_url", Scalar),
            ("bypass_confirmation", Scalar),
            ("display_quantity", Scalar),
        ],
    ),
    (
        "PlanRampInterval",
        &[
            ("starting_billing_cycle", Scalar),
            ("currencies", Array(Some("PlanRampPricing"))),
        ],
    ),
    (
        "PlanRampPricing",
        &[("currency", Scalar), ("unit_amount", Scalar)],
    ),
    ("CustomField", &[("name", Scalar), ("value", Scalar)]),
    (
        "AddOn",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("plan_id", Scalar),
            ("code", Scalar),
            ("state", Scalar),
            ("name", Scalar),
            ("add_on_type", Scalar),
            ("usage_type", Scalar),
            ("usage_calculation_type", Scalar),
            ("usage_percentage", Scalar),
            ("measured_unit_id", Scalar),
            ("accounting_code", Scalar),
            ("revenue_schedule_type", Scalar),
            ("avalara_transaction_type", Scalar),
            ("avalara_service_type", Scalar),
            ("tax_code", Scalar),
            ("display_quantity", Scalar),
            ("default_quantity", Scalar),
            ("optional", Scalar),
            ("currencies", NonEmptyArray(Some("AddOnPricing"))),
            ("item", Scalar),
            ("tier_type", Scalar),
            ("usage_timeframe", Scalar),
            ("tiers", Array(Some("Tier"))),
            ("percentage_tiers", Array(Some("PercentageTiersByCurrency"))),
            ("external_sku", Scalar),
            ("created_at", Scalar),
            ("updated_at", Scalar),
            ("deleted_at", Scalar),
        ],
    ),
    (
        "AddOnPricing",
        &[
            ("currency", Scalar),
            ("unit_amount", Scalar),
            ("unit_amount_decimal", Scalar),
            ("tax_inclusive", Scalar),
        ],
    ),
    (
        "Tier",
        &[
            ("ending_quantity", Scalar),
            ("usage_percentage", Scalar),
            ("currencies", NonEmptyArray(Some("TierPricing"))),
        ],
    ),
    (
        "TierPricing",
        &[
            ("currency", Scalar),
            ("unit_amount", Scalar),
            ("unit_amount_decimal", Scalar),
        ],
    ),
    (
        "PercentageTiersByCurrency",
        &[
            ("currency", Scalar),
            ("tiers", NonEmptyArray(Some("PercentageTier"))),
        ],
    ),
    (
        "PercentageTier",
        &[("ending_amount", Scalar), ("usage_percentage", Scalar)],
    ),
    (
        "Account",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("state", Scalar),
            ("hosted_login_token", Scalar),
            ("shipping_addresses", Array(None)),
            ("has_live_subscription", Scalar),
            ("has_active_subscription", Scalar),
            ("has_future_subscription", Scalar),
            ("has_canceled_subscription", Scalar),
            ("has_paused_subscription", Scalar),
            ("has_past_due_invoice", Scalar),
            ("created_at", Scalar),
            ("updated_at", Scalar),
            ("deleted_at", Scalar),
            ("code", Scalar),
            ("username", Scalar),
            ("email", Scalar),
            ("override_business_entity_id", Scalar),
            ("preferred_locale", Scalar),
            ("preferred_time_zone", Scalar),
            ("cc_emails", Scalar),
            ("first_name", Scalar),
            ("last_name", Scalar),
            ("company", Scalar),
            ("vat_number", Scalar),
            ("tax_exempt", Scalar),
            ("exemption_certificate", Scalar),
            ("external_accounts", Array(None)),
            ("parent_account_id", Scalar),
            ("bill_to", Scalar),
            ("dunning_campaign_id", Scalar),
            ("invoice_template_id", Scalar),
            ("address", Object("Address")),
            ("billing_info", Scalar),
            ("custom_fields", Array(Some("CustomField"))),
        ],
    ),
    (
        "Address",
        &[
            ("phone", Scalar),
            ("street1", Scalar),
            ("street2", Scalar),
            ("city", Scalar),
            ("region", Scalar),
            ("postal_code", Scalar),
            ("country", Scalar),
            ("geo_code", Scalar),
        ],
    ),
    (
        "AccountMini",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("code", Scalar),
            ("email", Scalar),
            ("first_name", Scalar),
            ("last_name", Scalar),
            ("company", Scalar),
            ("parent_account_id", Scalar),
            ("bill_to", Scalar),
            ("dunning_campaign_id", Scalar),
        ],
    ),
    (
        "Invoice",
        &[
            ("id", Scalar),
            ("uuid", Scalar),
            ("object", Scalar),
            ("type", Scalar),
            ("origin", Scalar),
            ("state", Scalar),
            ("account", Object("AccountMini")),
            ("billing_info_id", Scalar),
            ("subscription_ids", Array(None)),
            ("previous_invoice_id", Scalar),
            ("number", Scalar),
            ("collection_method", Scalar),
            ("po_number", Scalar),
            ("net_terms", Scalar),
            ("net_terms_type", Scalar),
            ("address", Scalar),
            ("shipping_address", Scalar),
            ("currency", Scalar),
            ("discount", Scalar),
            ("subtotal", Scalar),
            ("tax", Scalar),
            ("total", Scalar),
            ("refundable_amount", Scalar),
            ("paid", Scalar),
            ("balance", Scalar),
            ("tax_info", Scalar),
            ("used_tax_service", Scalar),
            ("vat_number", Scalar),
            ("vat_reverse_charge_notes", Scalar),
            ("terms_and_conditions", Scalar),
            ("customer_notes", Scalar),
            ("line_items", Array(Some("LineItem"))),
            ("has_more_line_items", Scalar),
            ("transactions", Array(None)),
            ("credit_payments", Array(None)),
            ("created_at", Scalar),
            ("updated_at", Scalar),
            ("due_at", Scalar),
            ("closed_at", Scalar),
            ("dunning_campaign_id", Scalar),
            ("dunning_events_sent", Scalar),
            ("final_dunning_event", Scalar),
            ("business_entity_id", Scalar),
        ],
    ),
    (
        "LineItem",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("uuid", Scalar),
            ("type", Scalar),
            ("item_code", Scalar),
            ("item_id", Scalar),
            ("external_sku", Scalar),
            ("revenue_schedule_type", Scalar),
            ("state", Scalar),
            ("legacy_category", Scalar),
            ("account", Object("AccountMini")),
            ("bill_for_account_id", Scalar),
            ("subscription_id", Scalar),
            ("plan_id", Scalar),
            ("plan_code", Scalar),
            ("add_on_id", Scalar),
            ("add_on_code", Scalar),
            ("invoice_id", Scalar),
            ("invoice_number", Scalar),
            ("previous_line_item_id", Scalar),
            ("original_line_item_invoice_id", Scalar),
            ("origin", Scalar),
            ("accounting_code", Scalar),
            ("product_code", Scalar),
            ("credit_reason_code", Scalar),
            ("currency", Scalar),
            ("amount", Scalar),
            ("description", Scalar),
            ("quantity", Scalar),
            ("quantity_decimal", Scalar),
            ("unit_amount", Scalar),
            ("unit_amount_decimal", Scalar),
            ("tax_inclusive", Scalar),
            ("subtotal", Scalar),
            ("discount", Scalar),
            ("tax", Scalar),
            ("taxable", Scalar),
            ("tax_exempt", Scalar),
            ("avalara_transaction_type", Scalar),
            ("avalara_service_type", Scalar),
            ("tax_code", Scalar),
            ("tax_info", Scalar),
            ("proration_rate", Scalar),
            ("refund", Scalar),
            ("refunded_quantity", Scalar),
            ("refunded_quantity_decimal", Scalar),
            ("credit_applied", Scalar),
            ("shipping_address", Scalar),
            ("start_date", Scalar),
            ("end_date", Scalar),
            ("custom_fields", Array(Some("CustomField"))),
            ("created_at", Scalar),
            ("updated_at", Scalar),
        ],
    ),
    (
        "PlanMini",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("code", Scalar),
            ("name", Scalar),
        ],
    ),
    (
        "Subscription",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("uuid", Scalar),
            ("account", Object("AccountMini")),
            ("plan", Object("PlanMini")),
            ("state", Scalar),
            ("shipping", Scalar),
            ("coupon_redemptions", Array(None)),
            ("pending_change", Object("SubscriptionChange")),
            ("current_period_started_at", Scalar),
            ("current_period_ends_at", Scalar),
            ("current_term_started_at", Scalar),
            ("current_term_ends_at", Scalar),
            ("trial_started_at", Scalar),
            ("trial_ends_at", Scalar),
            ("remaining_billing_cycles", Scalar),
            ("total_billing_cycles", Scalar),
            ("renewal_billing_cycles", Scalar),
            ("auto_renew", Scalar),
            (
                "ramp_intervals",
                Array(Some("SubscriptionRampIntervalResponse")),
            ),
            ("paused_at", Scalar),
            ("remaining_pause_cycles", Scalar),
            ("currency", Scalar),
            ("revenue_schedule_type", Scalar),
            ("unit_amount", Scalar),
            ("tax_inclusive", Scalar),
            ("quantity", Scalar),
            ("add_ons", Array(Some("SubscriptionAddOn"))),
            ("add_ons_total", Scalar),
            ("subtotal", Scalar),
            ("tax", Scalar),
            ("tax_info", Scalar),
            ("total", Scalar),
            ("collection_method", Scalar),
            ("po_number", Scalar),
            ("net_terms", Scalar),
            ("net_terms_type", Scalar),
            ("terms_and_conditions", Scalar),
            ("customer_notes", Scalar),
            ("expiration_reason", Scalar),
            ("custom_fields", Array(Some("CustomField"))),
            ("created_at", Scalar),
            ("updated_at", Scalar),
            ("activated_at", Scalar),
            ("canceled_at", Scalar),
            ("expires_at", Scalar),
            ("bank_account_authorized_at", Scalar),
            ("gateway_code", Scalar),
            ("billing_info_id", Scalar),
            ("active_invoice_id", Scalar),
            ("started_with_gift", Scalar),
            ("converted_at", Scalar),
            ("action_result", Scalar),
        ],
    ),
    (
        "SubscriptionAddOn",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("subscription_id", Scalar),
            ("add_on", Object("AddOnMini")),
            ("add_on_source", Scalar),
            ("quantity", Scalar),
            ("unit_amount", Scalar),
            ("unit_amount_decimal", Scalar),
            ("revenue_schedule_type", Scalar),
            ("tier_type", Scalar),
            ("usage_calculation_type", Scalar),
            ("usage_timeframe", Scalar),
            ("tiers", NonEmptyArray(Some("SubscriptionAddOnTier"))),
            (
                "percentage_tiers",
                NonEmptyArray(Some("SubscriptionAddOnPercentageTier")),
            ),
            ("usage_percentage", Scalar),
            ("created_at", Scalar),
            ("updated_at", Scalar),
            ("expired_at", Scalar),
        ],
    ),
    (
        "AddOnMini",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("code", Scalar),
            ("name", Scalar),
            ("add_on_type", Scalar),
            ("usage_type", Scalar),
            ("usage_percentage", Scalar),
            ("measured_unit_id", Scalar),
            ("item_id", Scalar),
            ("external_sku", Scalar),
            ("accounting_code", Scalar),
        ],
    ),
    (
        "SubscriptionAddOnTier",
        &[
            ("ending_quantity", Scalar),
            ("unit_amount", Scalar),
            ("unit_amount_decimal", Scalar),
            ("usage_percentage", Scalar),
        ],
    ),
    (
        "SubscriptionAddOnPercentageTier",
        &[("ending_amount", Scalar), ("usage_percentage", Scalar)],
    ),
    (
        "SubscriptionChange",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("subscription_id", Scalar),
            ("plan", Object("PlanMini")),
            ("add_ons", Array(Some("SubscriptionAddOn"))),
            ("unit_amount", Scalar),
            ("tax_inclusive", Scalar),
            ("quantity", Scalar),
            ("shipping", Scalar),
            ("activate_at", Scalar),
            ("activated", Scalar),
            ("revenue_schedule_type", Scalar),
            ("invoice_collection", Scalar),
            ("custom_fields", Array(Some("CustomField"))),
            ("created_at", Scalar),
            ("updated_at", Scalar),
            ("deleted_at", Scalar),
            ("billing_info", Scalar),
            (
                "ramp_intervals",
                Array(Some("SubscriptionRampIntervalResponse")),
            ),
        ],
    ),
    (
        "SubscriptionRampIntervalResponse",
        &[
            ("starting_billing_cycle", Scalar),
            ("remaining_billing_cycles", Scalar),
            ("starting_on", Scalar),
            ("ending_on", Scalar),
            ("unit_amount", Scalar),
        ],
    ),
    (
        "Usage",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("merchant_tag", Scalar),
            ("amount", Scalar),
            ("usage_type", Scalar),
            ("tier_type", Scalar),
            ("tiers", Array(Some("SubscriptionAddOnTier"))),
            (
                "percentage_tiers",
                Array(Some("SubscriptionAddOnPercentageTier")),
            ),
            ("measured_unit_id", Scalar),
            ("recording_timestamp", Scalar),
            ("usage_timestamp", Scalar),
            ("usage_percentage", Scalar),
            ("unit_amount", Scalar),
            ("unit_amount_decimal", Scalar),
            ("billed_at", Scalar),
            ("created_at", Scalar),
            ("updated_at", Scalar),
        ],
    ),
    (
        "MeasuredUnit",
        &[
            ("id", Scalar),
            ("object", Scalar),
            ("name", Scalar),
            ("display_name", Scalar),
            ("state", Scalar),
            ("description", Scalar),
            ("created_at", Scalar),
            ("updated_at", Scalar),
            ("deleted_at", Scalar),
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_unset_field_is_null_and_an_unset_list_is_empty() {
        let mut usage = json!({"id": "u1", "object": "usage", "amount": 3.0, "tier_type": "flat"});
        complete_answer(&mut usage);
        assert_eq!(usage["tiers"], json!([]));
        assert_eq!(usage["percentage_tiers"], json!([]));
        assert_eq!(usage["billed_at"], Value::Null);
        assert!(usage.as_object().unwrap().contains_key("merchant_tag"));
        assert_eq!(usage["amount"], 3.0, "set fields are kept");
    }

    #[test]
    fn nested_objects_and_list_items_are_completed_too() {
        let mut page = json!({"object": "list", "data": [{
            "id": "s1", "object": "subscription",
            "account": {"id": "a1", "object": "account", "code": "c"},
            "add_ons": [{"id": "x", "add_on": {"id": "y", "code": "calls"},
                          "tiers": [{"ending_quantity": 5}]}]}]});
        complete_answer(&mut page);
        let sub = &page["data"][0];
        assert_eq!(sub["pending_change"], Value::Null);
        assert_eq!(sub["coupon_redemptions"], json!([]));
        assert_eq!(sub["account"]["dunning_campaign_id"], Value::Null);
        assert_eq!(sub["add_ons"][0]["add_on"]["external_sku"], Value::Null);
        assert_eq!(
            sub["add_ons"][0]["tiers"][0]["unit_amount_decimal"],
            Value::Null
        );
        assert_eq!(
            sub["add_ons"][0]["percentage_tiers"],
            Value::Null,
            "a list the spec wants non-empty is null when unset"
        );
        assert!(
            sub["account"].get("has_live_subscription").is_none(),
            "an AccountMini is not an Account"
        );
    }

    #[test]
    fn every_schema_the_table_names_is_in_it() {
        for (_, fields) in SCHEMAS {
            for (key, field) in *fields {
                if let Object(schema) | Array(Some(schema)) | NonEmptyArray(Some(schema)) = field {
                    assert!(
                        SCHEMAS.iter().any(|(name, _)| name == schema),
                        "{key} names {schema}, which the table lacks"
                    );
                }
            }
        }
    }
}
