//! The contract checker against bodies whose verdict the spec makes plain.

use serde_json::{Value, json};

use super::*;

fn contract() -> &'static RecurlyContract {
    RecurlyContract::get()
}

fn usage_plan() -> Value {
    json!({
        "code": "acme-weather-basic",
        "name": "ACME Weather API – Basic",
        "interval_unit": "months", "interval_length": 1,
        "currencies": [{"currency": "USD", "unit_amount": 0, "setup_fee": 0}],
        "add_ons": [{
            "code": "api_calls", "name": "API calls",
            "add_on_type": "usage", "usage_type": "price",
            "usage_calculation_type": "cumulative", "tier_type": "tiered",
            "measured_unit_name": "api_calls",
            "tiers": [
                {"ending_quantity": 1000, "currencies": [{"currency": "USD", "unit_amount": 0}]},
                {"ending_quantity": 999999999,
                 "currencies": [{"currency": "USD", "unit_amount_decimal": "0.002"}]}
            ]
        }]
    })
}

fn messages(result: Result<(), Violations>) -> Vec<String> {
    result
        .expect_err("the body should violate the contract")
        .0
        .into_iter()
        .map(|v| format!("{} {}", v.pointer, v.message))
        .collect()
}

#[test]
fn a_plan_create_with_a_tiered_usage_add_on_passes() {
    contract()
        .validate_request("POST", "/plans", &usage_plan())
        .unwrap();
}

#[test]
fn an_invented_field_in_a_request_is_a_violation() {
    let mut plan = usage_plan();
    plan["add_ons"][0]["price_per_call"] = json!(1);
    let found = messages(contract().validate_request("POST", "/plans", &plan));
    assert!(
        found
            .iter()
            .any(|m| m.starts_with("/add_ons/0") && m.contains("price_per_call")),
        "{found:?}"
    );
}

#[test]
fn a_value_outside_an_enum_is_a_violation() {
    let mut plan = usage_plan();
    plan["interval_unit"] = json!("weeks");
    let found = messages(contract().validate_request("POST", "/plans", &plan));
    assert!(
        found.iter().any(|m| m.starts_with("/interval_unit")),
        "{found:?}"
    );
}

#[test]
fn a_missing_required_field_and_a_bad_pattern_are_violations() {
    let plan = json!({"code": "no spaces allowed", "currencies": [{"currency": "USD"}]});
    let found = messages(contract().validate_request("POST", "/plans", &plan));
    assert!(found.iter().any(|m| m.contains("\"name\"")), "{found:?}");
    assert!(found.iter().any(|m| m.starts_with("/code")), "{found:?}");
}

#[test]
fn read_only_fields_may_not_be_sent_but_are_answered() {
    let update = json!({"id": "abc", "name": "Renamed"});
    let found = messages(contract().validate_request("PUT", "/plans/code-gold", &update));
    assert!(found.iter().any(|m| m.contains("'id'")), "{found:?}");
    let plan =
        json!({"id": "abc", "object": "plan", "code": "gold", "name": "Gold", "state": "active"});
    contract()
        .validate_response("GET", "/plans/code-gold", 200, &plan)
        .unwrap();
}

#[test]
fn null_is_accepted_in_responses_but_not_in_requests() {
    let usage = json!({"id": "u1", "object": "usage", "amount": 3.0, "billed_at": null,
                       "usage_timestamp": "2024-05-01T00:59:59Z"});
    contract()
        .validate_response("GET", "/usage/u1", 200, &usage)
        .unwrap();
    let create = json!({"amount": 3, "merchant_tag": null});
    let found = messages(contract().validate_request(
        "POST",
        "/subscriptions/s1/add_ons/code-calls/usage",
        &create,
    ));
    assert!(
        found.iter().any(|m| m.starts_with("/merchant_tag")),
        "{found:?}"
    );
}

#[test]
fn date_times_are_checked_in_responses() {
    let usage = json!({"id": "u1", "usage_timestamp": "yesterday"});
    let found = messages(contract().validate_response("GET", "/usage/u1", 200, &usage));
    assert!(
        found.iter().any(|m| m.starts_with("/usage_timestamp")),
        "{found:?}"
    );
}

#[test]
fn templated_paths_match_ids_codes_and_query_strings() {
    let c = contract();
    for (method, path) in [
        ("GET", "/plans/code-abc"),
        ("GET", "/plans/abc123"),
        ("GET", "/plans/code-abc/add_ons?limit=2"),
        ("GET", "/plans/code-abc/add_ons/code-calls"),
        ("POST", "/subscriptions/uuid-1/add_ons/code-calls/usage"),
        ("GET", "/accounts/code-x/subscriptions?state=active"),
        ("PUT", "/subscriptions/s1/cancel"),
    ] {
        let op = c.operation(method, path).unwrap();
        assert_eq!(op.method, method, "{path}");
    }
    assert_eq!(
        c.operation("GET", "/plans/code-abc").unwrap().id,
        "get_plan"
    );
    assert_eq!(
        c.operation("GET", "/plans/code-abc/add_ons").unwrap().id,
        "list_plan_add_ons"
    );
}

#[test]
fn an_undescribed_path_method_or_status_is_a_violation() {
    let c = contract();
    assert!(
        c.validate_request("POST", "/plans/code-a/publish", &json!({}))
            .is_err()
    );
    assert!(
        c.validate_request("PATCH", "/plans/code-a", &json!({}))
            .is_err()
    );
    // create_plan answers 201, never 200.
    let found = messages(c.validate_response("POST", "/plans", 200, &json!({"code": "a"})));
    assert!(found.iter().any(|m| m.contains("status 200")), "{found:?}");
}

#[test]
fn error_answers_are_checked_inside_their_error_wrapper() {
    let c = contract();
    let error = json!({"error": {"type": "validation", "message": "Code has already been taken.",
                                 "params": [{"param": "code", "message": "has already been taken"}]}});
    c.validate_response("POST", "/plans", 422, &error).unwrap();
    // `default` covers any error status, such as a 406 or 429.
    let version = json!({"error": {"type": "invalid_api_version", "message": "bad accept",
                                   "acceptable_accept_headers": ["application/vnd.recurly.v2021-02-25"]}});
    c.validate_response("GET", "/plans", 406, &version).unwrap();

    let unwrapped = json!({"type": "validation", "message": "x"});
    assert!(
        c.validate_response("POST", "/plans", 422, &unwrapped)
            .is_err()
    );
    let bad_type = json!({"error": {"type": "no_such_type", "message": "x"}});
    let found = messages(c.validate_response("POST", "/plans", 422, &bad_type));
    assert!(
        found.iter().any(|m| m.starts_with("/error/type")),
        "{found:?}"
    );
}

#[test]
fn all_of_compositions_accept_the_fields_of_every_part_and_nothing_else() {
    let c = contract();
    // `Account` = `AccountReadOnly` + `AccountResponse`; `AccountCreate` = own fields + `AccountUpdate`.
    let account = json!({"id": "a1", "object": "account", "code": "c1", "state": "active",
                         "email": "a@b.example", "first_name": "A", "created_at": "2024-01-01T00:00:00Z"});
    c.validate_response("GET", "/accounts/code-c1", 200, &account)
        .unwrap();
    let create = json!({"code": "c1", "email": "a@b.example", "first_name": "A",
                        "address": {"country": "US"}});
    c.validate_request("POST", "/accounts", &create).unwrap();
    let found =
        messages(c.validate_request("POST", "/accounts", &json!({"code": "c1", "nickname": "x"})));
    assert!(found.iter().any(|m| m.contains("nickname")), "{found:?}");
    // `ErrorMayHaveTransaction` = `Error` + `transaction_error`.
    let declined = json!({"error": {"type": "transaction", "message": "declined",
                                    "transaction_error": {"category": "soft", "code": "declined"}}});
    c.validate_response("POST", "/subscriptions", 422, &declined)
        .unwrap();
}

#[test]
fn a_body_where_the_spec_has_none_is_a_violation() {
    let c = contract();
    // delete_usage answers 204 with no body.
    c.validate_response("DELETE", "/usage/u1", 204, &Value::Null)
        .unwrap();
    assert!(
        c.validate_response("DELETE", "/usage/u1", 204, &json!({"id": "u1"}))
            .is_err()
    );
    assert!(
        c.validate_request("GET", "/plans", &json!({"limit": 1}))
            .is_err()
    );
}

#[test]
fn recorded_exchanges_are_judged_by_policy() {
    let invalid_refused = json!({"seq": 1, "method": "POST", "path": "/recurly/plans",
        "body": {"code": "x"}, "status": 422,
        "response_body": {"error": {"type": "validation", "message": "Name can't be blank"}}});
    let invalid_accepted = json!({"seq": 2, "method": "POST", "path": "/recurly/plans",
        "body": {"code": "x"}, "status": 201,
        "response_body": {"id": "p1", "object": "plan", "code": "x"}});
    let server = ExchangePolicy::ServerMustRefuseInvalid;
    check_recorded_exchanges(std::slice::from_ref(&invalid_refused), "/recurly", server).unwrap();
    let err = check_recorded_exchanges(&[invalid_accepted], "/recurly", server).unwrap_err();
    assert!(err.0[0].message.contains("accepted"), "{err}");
    assert!(err.0[0].operation.starts_with("#2 "), "{err}");
    let client = ExchangePolicy::ClientMustConform;
    assert!(check_recorded_exchanges(&[invalid_refused], "/recurly", client).is_err());
}

#[test]
fn a_head_on_a_list_is_checked_as_its_get_and_has_no_body() {
    let c = contract();
    c.validate_response("HEAD", "/plans?state=active", 200, &Value::Null)
        .unwrap();
    assert!(
        c.validate_response("HEAD", "/plans", 200, &json!({"object": "list"}))
            .is_err()
    );
}

#[test]
fn gateway_errors_may_come_without_a_body() {
    let c = contract();
    c.validate_response("GET", "/plans", 503, &Value::Null)
        .unwrap();
    c.validate_response("GET", "/plans", 502, &json!("<html>Bad Gateway</html>"))
        .unwrap();
    assert!(
        c.validate_response("GET", "/plans", 500, &Value::Null)
            .is_err()
    );
    assert!(
        c.validate_response("GET", "/plans", 503, &json!({"oops": 1}))
            .is_err()
    );
}

#[test]
fn an_answer_missing_a_documented_field_is_flagged_nested_ones_too() {
    let c = contract();
    let complete: Value = json!({
        "id": "m1", "object": "measured_unit", "name": "calls", "display_name": "Calls",
        "state": "active", "description": null, "created_at": "2024-05-01T00:00:00Z",
        "updated_at": "2024-05-01T00:00:00Z", "deleted_at": null
    });
    assert_eq!(
        c.missing_response_fields("GET", "/measured_units/m1", 200, &complete),
        Ok(())
    );
    let mut partial = complete.clone();
    partial.as_object_mut().unwrap().remove("deleted_at");
    let missing = messages(c.missing_response_fields("GET", "/measured_units/m1", 200, &partial));
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0].contains("/deleted_at"), "{missing:?}");

    // Inside a list page too.
    let list = json!({"object": "list", "has_more": false, "next": null, "data": [partial]});
    let missing = messages(c.missing_response_fields("GET", "/measured_units", 200, &list));
    assert!(
        missing.iter().any(|m| m.contains("/data/0/deleted_at")),
        "{missing:?}"
    );
    // Errors and HEAD answers are not judged here.
    assert_eq!(
        c.missing_response_fields("GET", "/measured_units/m1", 404, &json!({})),
        Ok(())
    );
    assert_eq!(
        c.missing_response_fields("HEAD", "/measured_units", 200, &Value::Null),
        Ok(())
    );
}

#[test]
fn a_null_field_counts_as_present_and_is_not_looked_into() {
    let c = contract();
    let usage: Value = json!({
        "id": "u1", "object": "usage", "merchant_tag": null, "amount": 5.0, "usage_type": "price",
        "tier_type": "tiered", "tiers": [{"ending_quantity": 10, "unit_amount": null}],
        "percentage_tiers": [], "measured_unit_id": "m1",
        "recording_timestamp": "2024-05-01T00:00:00Z", "usage_timestamp": "2024-05-01T00:00:00Z",
        "usage_percentage": null, "unit_amount": null, "unit_amount_decimal": null,
        "billed_at": null, "created_at": "2024-05-01T00:00:00Z", "updated_at": "2024-05-01T00:00:00Z"
    });
    let missing = messages(c.missing_response_fields("GET", "/usage/u1", 200, &usage));
    // The tier lacks `unit_amount_decimal` and `usage_percentage`; nothing else is missing.
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(
        missing.iter().all(|m| m.contains("/tiers/0/")),
        "{missing:?}"
    );
}
