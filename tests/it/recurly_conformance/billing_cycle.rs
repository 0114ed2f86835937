//! The billing cycle on the sandbox's clock (reference §5, §6, §7; `issue15-contract.md`):
//! renewals that invoice the ended period's usage priced by each add-on's model, the first-invoice
//! and trial rules, usage corrections, dunning, and signed webhook notifications with retries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use billing_bridge_sandbox::{DunningSettings, RecurlySettings};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::client::{Recurly, list_data};
use crate::support::wait_for;

// ---- fixtures -------------------------------------------------------------------------------

/// Graduated, volume and per-unit add-ons share these tiers: 1–100 at $1, 101–200 at $0.50,
/// the rest at $0.25.
const UNIT_TIERS: [(u64, f64); 3] = [(100, 1.0), (200, 0.5), (999_999_999, 0.25)];
/// Stairstep tiers price the whole step: up to 100 for $10, up to 200 for $18, beyond for $30.
const STEP_TIERS: [(u64, f64); 3] = [(100, 10.0), (200, 18.0), (999_999_999, 30.0)];

/// A usage add-on `code` of `tier_type` (reference §3 pricing rules), measured in `api_calls`.
fn add_on(code: &str, tier_type: &str) -> Value {
    let mut add_on = json!({
        "code": code, "name": format!("Add-on {code}"),
        "add_on_type": "usage", "usage_type": "price",
        "usage_calculation_type": "cumulative", "tier_type": tier_type,
        "measured_unit_name": "api_calls",
    });
    let tiers = match tier_type {
        "flat" => {
            add_on["currencies"] = json!([{"currency": "USD", "unit_amount_decimal": "0.01"}]);
            return add_on;
        }
        "stairstep" => STEP_TIERS,
        _ => UNIT_TIERS,
    };
    add_on["tiers"] = tiers
        .iter()
        .map(|(end, price)| {
            json!({"ending_quantity": end, "currencies": [{"currency": "USD", "unit_amount": price}]})
        })
        .collect();
    add_on
}

const MODELS: [(&str, &str); 4] = [
    ("per_unit", "flat"),
    ("graduated", "tiered"),
    ("by_volume", "volume"),
    ("stairs", "stairstep"),
];

/// A monthly $5 plan `code` with one usage add-on per pricing model, an account and an active
/// subscription to it with every add-on listed (reference §5). Answers the subscription.
async fn metered_subscription(r: &Recurly, account: &str, plan: &str, extra: Value) -> Value {
    if r.get("/measured_units/name-api_calls").await.status == 404 {
        r.create_measured_unit("api_calls").await;
    }
    let add_ons: Vec<Value> = MODELS.iter().map(|(c, t)| add_on(c, t)).collect();
    r.create_plan(&json!({
        "code": plan, "name": format!("Plan {plan}"),
        "interval_unit": "months", "interval_length": 1,
        "currencies": [{"currency": "USD", "unit_amount": 5}],
        "add_ons": add_ons,
    }))
    .await;
    r.create_account(account).await;
    let mut body = json!({
        "plan_code": plan, "currency": "USD", "account": {"code": account},
        "add_ons": MODELS.iter().map(|(c, _)| json!({"code": c})).collect::<Vec<_>>(),
        "collection_method": "automatic",
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    r.post("/subscriptions", &body).await.expect(201)
}

fn at(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a date-time: {value}"))
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

async fn log_usage(r: &Recurly, sub: &Value, add_on: &str, body: Value) -> Value {
    let path = format!("/subscriptions/{}/add_ons/code-{add_on}/usage", id(sub));
    r.post(&path, &body).await.expect(201)
}

/// `POST /_sandbox/clock` with `body`; answers `{now, processed}`.
async fn move_clock(r: &Recurly, body: Value) -> Value {
    let reply =
        r.sb.http
            .post(r.sb.at("/_sandbox/clock"))
            .json(&body)
            .send()
            .await
            .expect("the clock route answers");
    assert_eq!(reply.status(), 200, "POST /_sandbox/clock {body}");
    reply.json().await.expect("JSON")
}

async fn move_to(r: &Recurly, to: DateTime<Utc>) -> Value {
    move_clock(r, json!({"to": rfc3339(to)})).await
}

async fn control(r: &Recurly, method: reqwest::Method, path: &str, body: Value) -> Value {
    let reply =
        r.sb.http
            .request(method, r.sb.at(path))
            .json(&body)
            .send()
            .await
            .expect("the control route answers");
    assert!(reply.status().is_success(), "{path}: {}", reply.status());
    reply.json().await.unwrap_or(Value::Null)
}

async fn invoices_of(r: &Recurly, sub: &Value) -> Vec<Value> {
    let list = r
        .get(&format!("/subscriptions/{}/invoices?order=asc", id(sub)))
        .await
        .expect(200);
    list_data(&list).clone()
}

/// A usage line of an invoice.
#[derive(Clone, Debug)]
struct Line {
    code: String,
    quantity: i64,
    amount: f64,
    description: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

/// The usage lines of an invoice (those naming an add-on).
fn usage_lines(invoice: &Value) -> Vec<Line> {
    invoice["line_items"]
        .as_array()
        .expect("an invoice lists its line items")
        .iter()
        .filter(|l| l["add_on_code"].is_string())
        .map(|l| Line {
            code: l["add_on_code"].as_str().unwrap().to_owned(),
            quantity: l["quantity"].as_i64().expect("a quantity"),
            amount: l["amount"].as_f64().expect("an amount"),
            description: l["description"].as_str().unwrap_or_default().to_owned(),
            start: at(&l["start_date"]),
            end: at(&l["end_date"]),
        })
        .collect()
}

fn line_for<'a>(lines: &'a [Line], code: &str, correction: bool) -> &'a Line {
    lines
        .iter()
        .find(|l| l.code == code && l.description.starts_with("Usage correction") == correction)
        .unwrap_or_else(|| panic!("a {code} line (correction: {correction}) in {lines:?}"))
}

// ---- clock ----------------------------------------------------------------------------------

#[tokio::test]
async fn the_clock_reads_moves_forward_only_and_resets() {
    let r = Recurly::start().await;
    let read = |v: &Value| at(&v["now"]);
    let before = Utc::now();
    let now = read(&control(&r, reqwest::Method::GET, "/_sandbox/clock", Value::Null).await);
    assert!(
        (now - before).num_seconds().abs() < 5,
        "{now} starts at real time"
    );
    let moved = move_clock(&r, json!({"advance_secs": 86_400})).await;
    assert!(read(&moved) >= now + Duration::days(1), "{moved}");
    let back =
        r.sb.http
            .post(r.sb.at("/_sandbox/clock"))
            .json(&json!({"to": rfc3339(now)}))
            .send()
            .await
            .unwrap();
    assert_eq!(back.status(), 400, "the clock never moves back");
    // Recurly writes its timestamps with this clock.
    r.create_account("clocked").await;
    let account = r.get("/accounts/code-clocked").await.expect(200);
    // (`created_at` is to the second.)
    assert!(
        at(&account["created_at"]) >= now + Duration::days(1) - Duration::seconds(1),
        "{account}"
    );
    let reset =
        r.sb.http
            .post(r.sb.at("/_sandbox/reset"))
            .send()
            .await
            .unwrap();
    assert_eq!(reset.status(), 204);
    let after = read(&control(&r, reqwest::Method::GET, "/_sandbox/clock", Value::Null).await);
    assert!(
        after < now + Duration::hours(1),
        "reset puts the clock back: {after}"
    );
    r.create_account("after-reset").await;
    let account = r.get("/accounts/code-after-reset").await.expect(200);
    assert!(
        at(&account["created_at"]) < now + Duration::hours(1),
        "{account}"
    );
    r.finish().await;
}

// ---- periods, invoices and tier math ---------------------------------------------------------

#[tokio::test]
async fn a_renewal_invoices_the_periods_usage_priced_by_each_model_and_advances_the_period() {
    let r = Recurly::start().await;
    let sub = metered_subscription(&r, "consumer-1", "metered", json!({})).await;
    let start = at(&sub["current_period_started_at"]);
    let end = at(&sub["current_period_ends_at"]);
    assert!(end > start + Duration::days(27), "a monthly period: {sub}");

    // §6: the first invoice of a non-trial subscription has no usage lines.
    let first = invoices_of(&r, &sub).await;
    assert_eq!(first.len(), 1, "the sign-up invoice: {first:?}");
    assert_eq!(first[0]["origin"], "purchase");
    assert!(usage_lines(&first[0]).is_empty(), "{}", first[0]);
    assert_eq!(
        first[0]["total"].as_f64(),
        Some(5.0),
        "the plan's first month"
    );

    let mut records = Vec::new();
    for (code, _) in MODELS {
        for amount in [150, 100] {
            records.push(log_usage(&r, &sub, code, json!({"amount": amount})).await);
        }
    }

    let renewed = move_to(&r, end + Duration::seconds(1)).await;
    let renewal = renewed["processed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"] == "renewal")
        .unwrap_or_else(|| panic!("a renewal was processed: {renewed}"));
    assert_eq!(renewal["subscription_id"], sub["id"]);

    let after = r
        .get(&format!("/subscriptions/{}", id(&sub)))
        .await
        .expect(200);
    assert_eq!(after["state"], "active");
    assert_eq!(at(&after["current_period_started_at"]), end, "{after}");
    assert!(at(&after["current_period_ends_at"]) > end + Duration::days(27));

    let invoice = r
        .get(&format!(
            "/invoices/{}",
            renewal["invoice_id"].as_str().unwrap()
        ))
        .await
        .expect(200);
    assert_eq!(invoice["origin"], "renewal");
    assert_eq!(invoice["state"], "paid");
    let lines = usage_lines(&invoice);
    // 250 units: per unit 250 × $0.01; graduated 100 × $1 + 100 × $0.50 + 50 × $0.25;
    // volume 250 × $0.25; stairstep the third step's $30.
    for (code, amount) in [
        ("per_unit", 2.5),
        ("graduated", 162.5),
        ("by_volume", 62.5),
        ("stairs", 30.0),
    ] {
        let line = line_for(&lines, code, false);
        assert_eq!(line.quantity, 250, "{code}: the period's usage");
        assert_eq!(line.amount, amount, "{code}: priced by its model");
        assert_eq!(
            (line.start, line.end),
            (start, end),
            "{code}: the ended period"
        );
    }
    assert_eq!(lines.len(), 4, "one line per add-on: {lines:?}");
    // The plan is charged for the new period in advance.
    assert_eq!(
        invoice["total"].as_f64(),
        Some(5.0 + 2.5 + 162.5 + 62.5 + 30.0)
    );

    // Each billed record has `billed_at`; none is left unbilled.
    for record in &records {
        let usage = r.get(&format!("/usage/{}", id(record))).await.expect(200);
        assert_eq!(at(&usage["billed_at"]), end, "{usage}");
    }
    let unbilled = r
        .get(&format!(
            "/subscriptions/{}/add_ons/code-graduated/usage",
            id(&sub)
        ))
        .await
        .expect(200);
    assert!(list_data(&unbilled).is_empty(), "{unbilled}");
    let billed = r
        .get(&format!(
            "/subscriptions/{}/add_ons/code-graduated/usage?billing_status=billed",
            id(&sub)
        ))
        .await
        .expect(200);
    assert_eq!(list_data(&billed).len(), 2);

    // The same invoice by number, by account and through its line items.
    let number = invoice["number"].as_str().unwrap();
    let by_number = r
        .get(&format!("/invoices/number-{number}"))
        .await
        .expect(200);
    assert_eq!(by_number["id"], invoice["id"]);
    let of_account = r
        .get("/accounts/code-consumer-1/invoices")
        .await
        .expect(200);
    assert_eq!(list_data(&of_account).len(), 2);
    let items = r
        .get(&format!("/invoices/{}/line_items?limit=200", id(&invoice)))
        .await
        .expect(200);
    assert_eq!(
        list_data(&items).len(),
        5,
        "plan + four usage lines: {items}"
    );
    r.get("/invoices/nosuchinvoice")
        .await
        .expect_error(404, "not_found");

    // §6: later invoices always carry the usage lines, even at 0.
    let second_end = at(&after["current_period_ends_at"]);
    move_to(&r, second_end + Duration::seconds(1)).await;
    let all = invoices_of(&r, &sub).await;
    assert_eq!(all.len(), 3, "{all:?}");
    let lines = usage_lines(&all[2]);
    for (code, _) in MODELS {
        let line = line_for(&lines, code, false);
        assert_eq!(
            (line.quantity, line.amount),
            (0, 0.0),
            "{code}: an empty period"
        );
        assert_eq!((line.start, line.end), (end, second_end));
    }
    r.finish().await;
}

#[tokio::test]
async fn usage_in_a_trial_is_never_billed_and_the_trial_has_no_sign_up_invoice() {
    let r = Recurly::start().await;
    let trial_end = Utc::now() + Duration::days(7);
    let sub = metered_subscription(
        &r,
        "trialist",
        "trial-plan",
        json!({"trial_ends_at": rfc3339(trial_end)}),
    )
    .await;
    assert_eq!(
        sub["state"], "active",
        "a trial is an active subscription in v3"
    );
    assert!(sub["trial_started_at"].is_string(), "{sub}");
    let ends = at(&sub["trial_ends_at"]);
    assert_eq!(
        at(&sub["current_period_ends_at"]),
        ends,
        "the trial is the first period"
    );
    assert!(
        invoices_of(&r, &sub).await.is_empty(),
        "nothing to charge during a trial"
    );

    let in_trial = log_usage(&r, &sub, "graduated", json!({"amount": 500})).await;
    move_to(&r, ends + Duration::seconds(1)).await;
    let invoices = invoices_of(&r, &sub).await;
    assert_eq!(invoices.len(), 1, "{invoices:?}");
    let line = line_for(&usage_lines(&invoices[0]), "graduated", false).clone();
    assert_eq!(
        (line.quantity, line.amount),
        (0, 0.0),
        "trial usage is not billed"
    );
    let usage = r
        .get(&format!("/usage/{}", id(&in_trial)))
        .await
        .expect(200);
    assert!(usage["billed_at"].is_null(), "and never will be: {usage}");

    let paid = log_usage(&r, &sub, "graduated", json!({"amount": 70})).await;
    let after = r
        .get(&format!("/subscriptions/{}", id(&sub)))
        .await
        .expect(200);
    move_to(
        &r,
        at(&after["current_period_ends_at"]) + Duration::seconds(1),
    )
    .await;
    let invoices = invoices_of(&r, &sub).await;
    let line = line_for(&usage_lines(&invoices[1]), "graduated", false).clone();
    assert_eq!(
        (line.quantity, line.amount),
        (70, 70.0),
        "the first paid period's usage"
    );
    let usage = r.get(&format!("/usage/{}", id(&paid))).await.expect(200);
    assert!(usage["billed_at"].is_string());
    let usage = r
        .get(&format!("/usage/{}", id(&in_trial)))
        .await
        .expect(200);
    assert!(usage["billed_at"].is_null(), "{usage}");
    r.finish().await;
}

#[tokio::test]
async fn back_dated_usage_is_a_correction_on_the_next_invoice_for_tiered_and_refused_for_volume() {
    let r = Recurly::start().await;
    let sub = metered_subscription(&r, "late", "late-plan", json!({})).await;
    let start = at(&sub["current_period_started_at"]);
    let end = at(&sub["current_period_ends_at"]);
    log_usage(&r, &sub, "graduated", json!({"amount": 150})).await;
    log_usage(&r, &sub, "per_unit", json!({"amount": 150})).await;
    move_to(&r, end + Duration::seconds(1)).await;

    // A record dated in the invoiced period (reference §6).
    let back_dated = json!({"amount": 60, "usage_timestamp": rfc3339(end - Duration::minutes(1))});
    let accepted = log_usage(&r, &sub, "graduated", back_dated.clone()).await;
    assert!(accepted["billed_at"].is_null());
    log_usage(&r, &sub, "per_unit", back_dated.clone()).await;
    for code in ["by_volume", "stairs"] {
        let path = format!("/subscriptions/{}/add_ons/code-{code}/usage", id(&sub));
        let error = r
            .post(&path, &back_dated)
            .await
            .expect_error(422, "validation");
        assert_eq!(error["params"][0]["param"], "usage_timestamp", "{error}");
        // The open period still takes usage.
        log_usage(&r, &sub, code, json!({"amount": 5})).await;
    }

    let after = r
        .get(&format!("/subscriptions/{}", id(&sub)))
        .await
        .expect(200);
    let second_end = at(&after["current_period_ends_at"]);
    move_to(&r, second_end + Duration::seconds(1)).await;
    let invoices = invoices_of(&r, &sub).await;
    assert_eq!(invoices.len(), 3);
    let lines = usage_lines(&invoices[2]);
    // Charged at the tiers already billed: units 151–210 of the corrected period.
    let correction = line_for(&lines, "graduated", true);
    assert_eq!(correction.quantity, 60);
    assert_eq!(correction.amount, 50.0 * 0.5 + 10.0 * 0.25);
    assert_eq!(
        (correction.start, correction.end),
        (start, end),
        "grouped by the cycle it corrects"
    );
    let correction = line_for(&lines, "per_unit", true);
    assert_eq!((correction.quantity, correction.amount), (60, 0.6));
    assert_eq!(
        line_for(&lines, "graduated", false).quantity,
        0,
        "the period's own line"
    );
    assert_eq!(line_for(&lines, "by_volume", false).quantity, 5);
    let usage = r
        .get(&format!("/usage/{}", id(&accepted)))
        .await
        .expect(200);
    assert_eq!(at(&usage["billed_at"]), second_end);
    r.finish().await;
}

#[tokio::test]
async fn a_canceled_subscription_bills_its_last_period_and_expires_at_its_end() {
    let r = Recurly::start().await;
    let sub = metered_subscription(&r, "leaving", "leaving-plan", json!({})).await;
    let end = at(&sub["current_period_ends_at"]);
    log_usage(&r, &sub, "per_unit", json!({"amount": 40})).await;
    let canceled = r
        .put(
            &format!("/subscriptions/{}/cancel", id(&sub)),
            &json!({"timeframe": "bill_date"}),
        )
        .await
        .expect(200);
    assert_eq!(canceled["state"], "canceled");
    assert_eq!(at(&canceled["expires_at"]), end);

    let moved = move_to(&r, end + Duration::seconds(1)).await;
    assert!(
        moved["processed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["what"] == "expired" && p["subscription_id"] == sub["id"]),
        "{moved}"
    );
    let expired = r
        .get(&format!("/subscriptions/{}", id(&sub)))
        .await
        .expect(200);
    assert_eq!(expired["state"], "expired");
    assert_eq!(at(&expired["expires_at"]), end);
    let invoices = invoices_of(&r, &sub).await;
    assert_eq!(invoices.len(), 2, "sign-up and the final usage invoice");
    let line = line_for(&usage_lines(&invoices[1]), "per_unit", false).clone();
    assert_eq!((line.quantity, line.amount), (40, 0.4));
    r.finish().await;
}

#[tokio::test]
async fn a_change_for_the_renewal_lands_after_the_ended_period_is_billed() {
    let r = Recurly::start().await;
    let sub = metered_subscription(&r, "changer", "change-plan", json!({})).await;
    let end = at(&sub["current_period_ends_at"]);
    // §3: `add_ons` replaces the list; `timeframe: renewal` waits for the period's end.
    let change = r
        .post(
            &format!("/subscriptions/{}/change", id(&sub)),
            &json!({"timeframe": "renewal", "add_ons": [{"code": "per_unit"}]}),
        )
        .await
        .expect(201);
    assert_eq!(change["activated"], false);
    log_usage(&r, &sub, "graduated", json!({"amount": 10})).await;
    move_to(&r, end + Duration::seconds(1)).await;
    let changed = r
        .get(&format!("/subscriptions/{}", id(&sub)))
        .await
        .expect(200);
    assert!(changed["pending_change"].is_null(), "{changed}");
    assert_eq!(changed["add_ons"].as_array().unwrap().len(), 1);
    let invoices = invoices_of(&r, &sub).await;
    let lines = usage_lines(&invoices[1]);
    assert_eq!(
        lines.len(),
        4,
        "the ended period is billed with its own add-ons"
    );
    assert_eq!(line_for(&lines, "graduated", false).quantity, 10);
    move_to(
        &r,
        at(&changed["current_period_ends_at"]) + Duration::seconds(1),
    )
    .await;
    let invoices = invoices_of(&r, &sub).await;
    let codes: Vec<String> = usage_lines(&invoices[2])
        .into_iter()
        .map(|l| l.code)
        .collect();
    assert_eq!(codes, ["per_unit"]);
    r.finish().await;
}

#[tokio::test]
async fn invoice_routes_take_faults_and_are_recorded_but_control_routes_are_not() {
    let r = Recurly::start().await;
    let sub = metered_subscription(&r, "faulty", "fault-plan", json!({})).await;
    let path = format!("/subscriptions/{}/invoices", id(&sub));
    r.inject_faults(json!({"error_rate": 1.0, "error_status": 500, "path_contains": "/invoices"}))
        .await;
    r.get(&path)
        .await
        .expect_error(500, "internal_server_error");
    let cleared =
        r.sb.http
            .delete(r.sb.at("/_sandbox/faults/recurly"))
            .send()
            .await
            .unwrap();
    assert_eq!(cleared.status(), 204);
    r.get(&path).await.expect(200);
    move_clock(&r, json!({"advance_secs": 60})).await;
    notifications(&r).await;
    let recorded = super::client::recorded_exchanges(&r.sb).await;
    let paths: Vec<&str> = recorded.iter().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(
        paths.iter().filter(|p| p.ends_with("/invoices")).count(),
        2,
        "{paths:?}"
    );
    let all =
        r.sb.http
            .get(r.sb.at("/_sandbox/requests"))
            .send()
            .await
            .unwrap();
    let all: Value = all.json().await.unwrap();
    assert!(
        !all.to_string().contains("/_sandbox/"),
        "control routes are not upstream traffic"
    );
    r.finish().await;
}

// ---- dunning ----------------------------------------------------------------------------------

async fn dunning_site(attempts: u32) -> Recurly {
    Recurly::start_with(RecurlySettings {
        dunning: DunningSettings {
            attempts,
            retry_interval_secs: 3600,
        },
        ..RecurlySettings::default()
    })
    .await
}

async fn set_payments(r: &Recurly, account: &str, fail: bool) {
    let path = format!("/_sandbox/recurly/accounts/{account}/payments");
    control(r, reqwest::Method::PUT, &path, json!({"fail": fail})).await;
}

#[tokio::test]
async fn failed_payments_put_the_invoice_past_due_and_expire_after_the_last_attempt() {
    let r = dunning_site(3).await;
    let receiver = Receiver::start().await;
    receiver.register(&r, "dunning-secret").await;
    let sub = metered_subscription(&r, "broke", "dunning-plan", json!({})).await;
    let end = at(&sub["current_period_ends_at"]);
    set_payments(&r, "broke", true).await;

    move_to(&r, end + Duration::seconds(1)).await;
    let invoice = invoices_of(&r, &sub).await.pop().unwrap();
    assert_eq!(invoice["origin"], "renewal");
    assert_eq!(invoice["state"], "past_due");
    let live = r
        .get(&format!("/subscriptions/{}", id(&sub)))
        .await
        .expect(200);
    assert_eq!(live["state"], "active", "still active while in dunning");
    let account = r.get("/accounts/code-broke").await.expect(200);
    assert_eq!(account["has_past_due_invoice"], true);
    let past_due = r.get("/accounts?past_due=true").await.expect(200);
    assert_eq!(list_data(&past_due).len(), 1, "{past_due}");

    let second = move_to(&r, end + Duration::seconds(3601)).await;
    assert!(
        second["processed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["what"] == "dunning_attempt"),
        "{second}"
    );
    let still = r
        .get(&format!("/invoices/{}", id(&invoice)))
        .await
        .expect(200);
    assert_eq!(still["state"], "past_due");
    assert_eq!(
        r.get(&format!("/subscriptions/{}", id(&sub)))
            .await
            .expect(200)["state"],
        "active"
    );

    let third = move_to(&r, end + Duration::seconds(7201)).await;
    let what: Vec<&str> = third["processed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["what"].as_str())
        .collect();
    assert!(
        what.contains(&"dunning_attempt") && what.contains(&"expired"),
        "{third}"
    );
    let failed = r
        .get(&format!("/invoices/{}", id(&invoice)))
        .await
        .expect(200);
    assert_eq!(failed["state"], "failed");
    let expired = r
        .get(&format!("/subscriptions/{}", id(&sub)))
        .await
        .expect(200);
    assert_eq!(expired["state"], "expired");
    assert!(expired["expires_at"].is_string(), "{expired}");

    // The endpoint heard of it: the invoice past due, then the subscription expired.
    let events = receiver.envelopes();
    let seen = |object: &str, event: &str, id: &Value| {
        events
            .iter()
            .any(|e| e["object_type"] == object && e["event_type"] == event && &e["id"] == id)
    };
    assert!(
        seen("charge_invoice", "past_due", &invoice["id"]),
        "{events:?}"
    );
    assert!(
        seen("charge_invoice", "failed", &invoice["id"]),
        "{events:?}"
    );
    assert!(seen("subscription", "expired", &sub["id"]), "{events:?}");
    r.finish().await;
}

#[tokio::test]
async fn a_payment_that_succeeds_again_pays_the_past_due_invoice() {
    let r = dunning_site(3).await;
    let sub = metered_subscription(&r, "recovers", "recovery-plan", json!({})).await;
    let end = at(&sub["current_period_ends_at"]);
    set_payments(&r, "recovers", true).await;
    move_to(&r, end + Duration::seconds(1)).await;
    let invoice = invoices_of(&r, &sub).await.pop().unwrap();
    assert_eq!(invoice["state"], "past_due");

    set_payments(&r, "recovers", false).await;
    move_to(&r, end + Duration::seconds(3601)).await;
    let paid = r
        .get(&format!("/invoices/{}", id(&invoice)))
        .await
        .expect(200);
    assert_eq!(paid["state"], "paid", "{paid}");
    assert_eq!(paid["balance"].as_f64(), Some(0.0));
    // No more attempts, and the subscription carries on.
    move_to(&r, end + Duration::days(3)).await;
    let sub = r
        .get(&format!("/subscriptions/{}", id(&sub)))
        .await
        .expect(200);
    assert_eq!(sub["state"], "active");
    r.finish().await;
}

// ---- notifications ----------------------------------------------------------------------------

/// A request a webhook endpoint got: its headers (names in lower case) and raw body.
type Request = (HashMap<String, String>, String);

/// A webhook endpoint: keeps each request's headers and raw body and answers `status`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Request>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> Receiver {
        use actix_web::{App, HttpRequest, HttpResponse, HttpServer, http::StatusCode, web};
        let got: Arc<Mutex<Vec<Request>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let (kept, answer) = (got.clone(), status.clone());
        let server = HttpServer::new(move || {
            let (kept, answer) = (kept.clone(), answer.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (kept, answer) = (kept.clone(), answer.clone());
                async move {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let raw = String::from_utf8_lossy(&body).into_owned();
                    kept.lock().unwrap().push((headers, raw));
                    let status = StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap();
                    HttpResponse::build(status).finish()
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("the receiver binds a free port");
        let url = format!("http://{}/recurly-hooks", server.addrs()[0]);
        tokio::spawn(server.run());
        Receiver { url, got, status }
    }

    async fn register(&self, r: &Recurly, secret: &str) -> String {
        let reply =
            r.sb.http
                .post(r.sb.at("/_sandbox/recurly/webhook_endpoints"))
                .json(&json!({"url": self.url, "secret": secret}))
                .send()
                .await
                .unwrap();
        assert_eq!(reply.status(), 201);
        let body: Value = reply.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    fn requests(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }

    fn envelopes(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .map(|(_, raw)| serde_json::from_str(raw).expect("a JSON envelope"))
            .collect()
    }

    /// Requests whose envelope is `event_type` of `object_type` `id`.
    fn of(&self, object_type: &str, event_type: &str, id: &Value) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|(_, raw)| {
                let e: Value = serde_json::from_str(raw).unwrap_or_default();
                e["object_type"] == object_type && e["event_type"] == event_type && &e["id"] == id
            })
            .collect()
    }
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn notifications(r: &Recurly) -> Vec<Value> {
    control(
        r,
        reqwest::Method::GET,
        "/_sandbox/recurly/notifications",
        Value::Null,
    )
    .await
    .as_array()
    .expect("a list")
    .clone()
}

fn notification_of<'a>(
    all: &'a [Value],
    object_type: &str,
    event_type: &str,
    id: &Value,
) -> &'a Value {
    all.iter()
        .find(|n| {
            n["body"]["object_type"] == object_type
                && n["body"]["event_type"] == event_type
                && &n["body"]["id"] == id
        })
        .unwrap_or_else(|| panic!("a {object_type}.{event_type} notification in {all:?}"))
}

#[tokio::test]
async fn a_notification_is_a_signed_json_envelope_naming_what_changed() {
    let r = Recurly::start().await;
    let receiver = Receiver::start().await;
    receiver.register(&r, "endpoint-secret").await;
    let sub = r.create_subscription("notified", "gold").await;
    let got = wait_for(
        "the subscription.created notification",
        StdDuration::from_secs(10),
        || {
            let got = receiver.of("subscription", "created", &sub["id"]);
            async move { got.into_iter().next() }
        },
    )
    .await;
    let (headers, raw) = got;
    let envelope: Value = serde_json::from_str(&raw).unwrap();
    // §7: a thin envelope.
    assert_eq!(envelope["uuid"], sub["uuid"]);
    assert!(envelope["site_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        envelope["event_time"]
            .as_str()
            .is_some_and(|t| t.parse::<DateTime<Utc>>().is_ok())
    );
    assert_eq!(headers["content-type"], "application/json");
    // `recurly-signature: <ts>,<hex hmac-sha256("{ts}.{body}")>`.
    let signature = &headers["recurly-signature"];
    let (ts, mac) = signature.split_once(',').expect("ts,signature");
    let ts_ms: i64 = ts.parse().expect("a millisecond timestamp");
    assert!(
        (Utc::now().timestamp_millis() - ts_ms).abs() < 60_000,
        "{ts_ms} is the sending time"
    );
    assert_eq!(mac, hmac_hex("endpoint-secret", &format!("{ts}.{raw}")));
    assert_ne!(mac, hmac_hex("another-secret", &format!("{ts}.{raw}")));
    assert!(headers["recurly-notification-id"].len() >= 8);

    // Usage events name the subscription and add-on (§7).
    let usage = log_usage(&r, &sub, "api_calls", json!({"amount": 3})).await;
    let got = wait_for(
        "the usage.created notification",
        StdDuration::from_secs(10),
        || {
            let got = receiver.of("usage", "created", &usage["id"]);
            async move { got.into_iter().next() }
        },
    )
    .await;
    let envelope: Value = serde_json::from_str(&got.1).unwrap();
    assert_eq!(envelope["subscription_uuid"], sub["uuid"]);
    assert_eq!(envelope["add_on_code"], "api_calls");
    let all = notifications(&r).await;
    let listed = notification_of(&all, "subscription", "created", &sub["id"]);
    assert_eq!(listed["status"], "delivered");
    assert_eq!(listed["delivered"], true);
    assert_eq!(listed["attempts"], 1);
    r.finish().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_on_the_schedule_with_one_id_until_it_answers_2xx() {
    let r = Recurly::start().await;
    let receiver = Receiver::start().await;
    receiver.status.store(500, Ordering::SeqCst);
    receiver.register(&r, "retry-secret").await;
    r.create_account("closing").await;
    let account = r.delete("/accounts/code-closing").await.expect(200);
    let first = wait_for("the first attempt", StdDuration::from_secs(10), || {
        let got = receiver.of("account", "closed", &account["id"]);
        async move { got.into_iter().next() }
    })
    .await;
    let notification_id = first.0["recurly-notification-id"].clone();

    let listed = wait_for(
        "the failed attempt recorded",
        StdDuration::from_secs(10),
        || {
            let r = &r;
            let account_id = account["id"].clone();
            async move {
                let all = notifications(r).await;
                let n = notification_of(&all, "account", "closed", &account_id).clone();
                (n["attempts"] == 1 && n["next_attempt_at"].is_string()).then_some(n)
            }
        },
    )
    .await;
    let t0 = at(&listed["deliveries"][0]["at"]);
    // §7: retries at 10 + x·2^(x+5) s: 74 s after the first attempt, then 266 s later.
    assert_eq!(at(&listed["next_attempt_at"]), t0 + Duration::seconds(74));
    move_to(&r, t0 + Duration::seconds(73)).await;
    assert_eq!(
        receiver.of("account", "closed", &account["id"]).len(),
        1,
        "not yet due"
    );
    move_to(&r, t0 + Duration::seconds(74)).await;
    assert_eq!(
        receiver.of("account", "closed", &account["id"]).len(),
        2,
        "the first retry"
    );
    let all = notifications(&r).await;
    let listed = notification_of(&all, "account", "closed", &account["id"]);
    assert_eq!(
        at(&listed["next_attempt_at"]),
        t0 + Duration::seconds(74 + 266)
    );

    receiver.status.store(204, Ordering::SeqCst);
    let moved = move_to(&r, t0 + Duration::seconds(74 + 266)).await;
    assert!(
        moved["processed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["what"] == "notification"),
        "{moved}"
    );
    let got = receiver.of("account", "closed", &account["id"]);
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|(h, _)| h["recurly-notification-id"] == notification_id),
        "one notification id across retries"
    );
    let all = notifications(&r).await;
    let listed = notification_of(&all, "account", "closed", &account["id"]);
    assert_eq!(listed["status"], "delivered");
    assert_eq!(listed["attempts"], 3);
    // Delivered once it got a 2xx: no more attempts however far the clock moves.
    move_to(&r, t0 + Duration::days(30)).await;
    assert_eq!(receiver.of("account", "closed", &account["id"]).len(), 3);
    r.finish().await;
}

#[tokio::test]
async fn a_notification_no_endpoint_accepts_is_failed_after_ten_retries() {
    let r = Recurly::start().await;
    let receiver = Receiver::start().await;
    receiver.status.store(503, Ordering::SeqCst);
    receiver.register(&r, "never-secret").await;
    r.create_account("unheard").await;
    let account = r.delete("/accounts/code-unheard").await.expect(200);
    wait_for("the first attempt", StdDuration::from_secs(10), || {
        let got = receiver.of("account", "closed", &account["id"]);
        async move { (!got.is_empty()).then_some(()) }
    })
    .await;
    // The ten retries span Σ (10 + x·2^(x+5)) s, about 6.8 days of the sandbox clock.
    move_clock(&r, json!({"advance_secs": 10 * 86_400})).await;
    assert_eq!(receiver.of("account", "closed", &account["id"]).len(), 11);
    let all = notifications(&r).await;
    let listed = notification_of(&all, "account", "closed", &account["id"]);
    assert_eq!(listed["status"], "failed");
    assert_eq!(listed["attempts"], 11);
    assert!(listed["next_attempt_at"].is_null());
    let times: Vec<DateTime<Utc>> = listed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| at(&d["at"]))
        .collect();
    for (x, pair) in times.windows(2).enumerate() {
        let x = x as i64 + 1;
        assert_eq!(
            pair[1] - pair[0],
            Duration::seconds(10 + x * (1 << (x + 5))),
            "retry {x}"
        );
    }
    r.finish().await;
}

#[tokio::test]
async fn drop_next_loses_the_next_notifications_for_good() {
    let r = Recurly::start().await;
    let receiver = Receiver::start().await;
    receiver.register(&r, "drop-secret").await;
    let sub = r.create_subscription("dropped", "gold").await;
    wait_for(
        "the sign-up notifications",
        StdDuration::from_secs(10),
        || {
            let got = receiver.of("subscription", "created", &sub["id"]);
            async move { (!got.is_empty()).then_some(()) }
        },
    )
    .await;
    control(
        &r,
        reqwest::Method::PUT,
        "/_sandbox/recurly/notifications/drop_next",
        json!({"count": 1}),
    )
    .await;
    let lost = log_usage(&r, &sub, "api_calls", json!({"amount": 1})).await;
    let kept = log_usage(&r, &sub, "api_calls", json!({"amount": 2})).await;
    // Narrowed to one kind, it lets others through and drops the next of that kind.
    control(
        &r,
        reqwest::Method::PUT,
        "/_sandbox/recurly/notifications/drop_next",
        json!({"count": 1, "object_type": "subscription", "event_type": "canceled"}),
    )
    .await;
    let after = log_usage(&r, &sub, "api_calls", json!({"amount": 3})).await;
    r.put(&format!("/subscriptions/{}/cancel", id(&sub)), &json!({}))
        .await
        .expect(200);
    wait_for(
        "the usage notification after the narrowed drop",
        StdDuration::from_secs(10),
        || {
            let got = receiver.of("usage", "created", &after["id"]);
            async move { (!got.is_empty()).then_some(()) }
        },
    )
    .await;
    wait_for(
        "the second usage notification",
        StdDuration::from_secs(10),
        || {
            let got = receiver.of("usage", "created", &kept["id"]);
            async move { (!got.is_empty()).then_some(()) }
        },
    )
    .await;
    move_to(&r, Utc::now() + Duration::days(3)).await;
    assert!(
        receiver.of("usage", "created", &lost["id"]).is_empty(),
        "dropped, never sent"
    );
    let all = notifications(&r).await;
    let listed = notification_of(&all, "usage", "created", &lost["id"]);
    assert_eq!(listed["status"], "dropped");
    assert_eq!(listed["attempts"], 0);
    assert!(
        receiver
            .of("subscription", "canceled", &sub["id"])
            .is_empty()
    );
    let canceled = notification_of(&all, "subscription", "canceled", &sub["id"]);
    assert_eq!(canceled["status"], "dropped");
    r.finish().await;
}
