//! The billing cycle on the sandbox clock: renewals whose invoices bill the ended period's usage
//! priced by each add-on's tiers, usage corrections, final usage invoices, and dunning.
//!
//! Due work sits in an agenda ordered by time; [`Store::process_due`] runs everything due up to a
//! time, each task at its own time, and leaves the notifications it causes in the outbox.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::paging::{ListQuery, parse_time};
use super::store::*;
use crate::config::DunningSettings;

/// Recurly numbers invoices per site from 1000 upward [I: every example in the docs starts there].
pub(crate) const FIRST_INVOICE_NUMBER: u64 = 1000;
/// Message of the 422 for a back-dated record on a volume or stairstep add-on, or one priced
/// over the subscription term [I: reference §6 says these corrections are "not accepted", not
/// with which words].
pub(crate) const USAGE_CORRECTION_REFUSED: &str = "Usage cannot be logged for a billing period that has already been invoiced on an add-on with volume or stairstep pricing, or one billed over the subscription term.";
/// Message of the 422 for changing a billed record's amount or timestamps (reference §6: "once
/// billed, only merchant_tag can be edited") [I: the words].
pub(crate) const BILLED_USAGE_IMMUTABLE: &str =
    "Billed usage can only have its merchant tag changed.";
/// Message of the 422 for deleting a billed record (reference §6) [I: the words].
pub(crate) const BILLED_USAGE_UNDELETABLE: &str = "Billed usage cannot be deleted.";
/// `expiration_reason` of a subscription that ran out of dunning attempts [I].
pub(crate) const EXPIRED_FOR_NONPAYMENT: &str = "nonpayment";
/// `expiration_reason` of a canceled subscription that reached its end [I].
pub(crate) const EXPIRED_AFTER_CANCELING: &str = "canceled";
/// `expiration_reason` of a subscription with `auto_renew: false` at its term's end [I].
pub(crate) const EXPIRED_NONRENEWING: &str = "nonrenewing";
/// Origin of the invoice that bills the last period's usage when a subscription ends [I: Recurly
/// names "final usage invoices" among charge invoices, not their `origin`].
pub(crate) const FINAL_USAGE_INVOICE_ORIGIN: &str = "termination";

/// When on its renewal day a subscription renews. Recurly runs a daily billing run in the
/// morning (reference §6: usage logged "after that morning's billing run lands on the next
/// invoice"); the sandbox renews at the period's end instant itself [I].
pub(crate) fn renewal_runs_at(period_end: DateTime<Utc>) -> DateTime<Utc> {
    period_end
}

/// Whether collecting an invoice of this origin can fail while the account's payments are set
/// to fail: renewals and final usage invoices are charged to the card on file; the sign-up
/// invoice is taken as paid when the subscription is created [I].
pub(crate) fn collection_can_fail(origin: &str) -> bool {
    origin == "renewal" || origin == FINAL_USAGE_INVOICE_ORIGIN
}

/// Line description of a period's usage of an add-on [I].
pub(crate) fn usage_line_description(add_on_name: &str) -> String {
    format!("{add_on_name} usage")
}

/// Line description of a usage correction: it starts with "Usage correction" so a reader can
/// tell it from the period's own usage line; its `start_date`/`end_date` are the corrected
/// period's [I: Recurly groups corrections "by the cycle it corrects", reference §6].
pub(crate) fn correction_line_description(add_on_name: &str) -> String {
    format!("Usage correction: {add_on_name}")
}

/// The notification an invoice event sends: JSON `charge_invoice` events (`created`, `past_due`,
/// `paid`, `failed`) of a site with the Credit Invoices feature (Recurly's charge invoice
/// notifications page; the reference §7 does not list invoice events).
pub(crate) const INVOICE_OBJECT_TYPE: &str = "charge_invoice";

/// Due work, run at its time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Task {
    /// A subscription's current period ends: renew, or expire when canceled or not renewing.
    PeriodEnd(String),
    /// Retry collecting a past-due invoice.
    Collect(String),
    /// A `future` subscription starts.
    Start(String),
}

/// A period that was invoiced, and how much of each usage add-on it billed (corrections are
/// priced against it).
#[derive(Clone, Debug)]
struct BilledPeriod {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    quantities: HashMap<String, f64>,
}

/// Something a notification is sent for (reference §7), with the fields of its JSON envelope
/// beyond `id`, `object_type`, `site_id`, `event_type` and `event_time`.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub at: DateTime<Utc>,
    pub object_type: &'static str,
    pub event_type: &'static str,
    pub id: String,
    pub fields: Map<String, Value>,
}

/// One piece of due work done, as `POST /_sandbox/clock` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Processed {
    #[serde(skip)]
    pub time: DateTime<Utc>,
    pub at: String,
    pub what: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
}

impl Processed {
    pub fn new(
        time: DateTime<Utc>,
        what: &'static str,
        subscription_id: Option<&str>,
        invoice_id: Option<&str>,
    ) -> Self {
        Self {
            time,
            at: super::clock::rfc3339_ms(time),
            what,
            subscription_id: subscription_id.map(str::to_owned),
            invoice_id: invoice_id.map(str::to_owned),
        }
    }
}

/// The billing side of the store.
#[derive(Default)]
pub(crate) struct Billing {
    invoices: HashMap<String, Record>,
    invoice_by_number: HashMap<String, String>,
    invoice_lines: HashMap<String, Vec<Record>>,
    subscription_invoices: HashMap<String, Vec<String>>,
    account_invoices: HashMap<String, Vec<String>>,
    issued: u64,
    agenda: BTreeSet<(DateTime<Utc>, u64, Task)>,
    agenda_seq: u64,
    billed: HashMap<String, Vec<BilledPeriod>>,
    /// Accounts (by code) whose payments fail (`PUT /_sandbox/recurly/accounts/{code}/payments`).
    failing_accounts: HashSet<String>,
    /// Failed collection attempts per invoice in dunning.
    failed_attempts: HashMap<String, u32>,
    pub settings: DunningSettings,
    pub outbox: Vec<Event>,
}

fn time_of(record: &Record, key: &str) -> Option<DateTime<Utc>> {
    record
        .body
        .get(key)
        .and_then(Value::as_str)
        .and_then(parse_time)
}

/// Money is billed in cents: half away from zero, as invoices print it.
fn cents(amount: f64) -> f64 {
    (amount * 100.0).round() / 100.0
}

/// A unit price: the 9-decimal string when set, else the 2-decimal number.
fn unit_price(priced: &Value) -> f64 {
    priced
        .get("unit_amount_decimal")
        .and_then(Value::as_str)
        .and_then(|d| d.parse().ok())
        .or_else(|| priced.get("unit_amount").and_then(Value::as_f64))
        .unwrap_or(0.0)
}

/// A tier's upper bound; the last tier's is open (reference §3: it defaults to 999,999,999).
fn tier_end(tier: &Value) -> f64 {
    tier.get("ending_quantity")
        .and_then(Value::as_f64)
        .unwrap_or(f64::INFINITY)
}

/// The price of `quantity` units of a subscription's usage add-on, by its `tier_type`
/// (reference §3; Recurly's usage-based pricing guide):
/// - `flat`: every unit at the add-on's unit price;
/// - `tiered` (graduated): each unit at the price of the tier it falls in;
/// - `volume`: every unit at the price of the tier the total falls in;
/// - `stairstep`: the flat price of the tier the total falls in (nothing for 0 units).
///
/// Percentage add-ons take `usage_percentage` of the amount, which is logged in cents.
pub(crate) fn price(add_on: &Value, quantity: f64) -> f64 {
    if add_on["usage_type"] == "percentage" {
        let percent = add_on["usage_percentage"].as_f64().unwrap_or(0.0);
        return cents(quantity / 100.0 * percent / 100.0);
    }
    let tiers: &[Value] = add_on["tiers"].as_array().map_or(&[], Vec::as_slice);
    let amount = match add_on["tier_type"].as_str().unwrap_or("flat") {
        "tiered" if !tiers.is_empty() => {
            let mut below = 0.0;
            let mut amount = 0.0;
            for tier in tiers {
                let end = tier_end(tier);
                let units = quantity.min(end) - below;
                if units > 0.0 {
                    amount += units * unit_price(tier);
                }
                below = end;
                if quantity <= end {
                    break;
                }
            }
            amount
        }
        kind @ ("volume" | "stairstep") if !tiers.is_empty() => {
            let tier = tiers
                .iter()
                .find(|t| quantity <= tier_end(t))
                .unwrap_or(&tiers[tiers.len() - 1]);
            match kind {
                "volume" => quantity * unit_price(tier),
                _ if quantity > 0.0 => unit_price(tier),
                _ => 0.0,
            }
        }
        _ => quantity * unit_price(add_on),
    };
    cents(amount)
}

impl Store {
    // ---- agenda ------------------------------------------------------------------------

    pub(super) fn schedule(&mut self, at: DateTime<Utc>, task: Task) {
        self.billing.agenda_seq += 1;
        let seq = self.billing.agenda_seq;
        self.billing.agenda.insert((at, seq, task));
    }

    /// When the next due work is, if any.
    pub(crate) fn next_due(&self) -> Option<DateTime<Utc>> {
        self.billing.agenda.first().map(|(at, _, _)| *at)
    }

    /// Runs every task due at or before `now`, in time order, each at its own time.
    pub(crate) fn process_due(&mut self, now: DateTime<Utc>) -> Vec<Processed> {
        let mut done = Vec::new();
        while let Some((at, _, _)) = self.billing.agenda.first()
            && *at <= now
        {
            let Some((at, _, task)) = self.billing.agenda.pop_first() else {
                break;
            };
            match task {
                Task::PeriodEnd(id) => self.period_end(&id, at, &mut done),
                Task::Collect(invoice) => {
                    let sub = self
                        .billing
                        .invoices
                        .get(&invoice)
                        .map(invoice_subscription);
                    done.push(Processed::new(
                        at,
                        "dunning_attempt",
                        sub.as_deref(),
                        Some(&invoice),
                    ));
                    self.collect(&invoice, at, &mut done);
                }
                Task::Start(id) => self.start_future(&id, at),
            }
        }
        done
    }

    pub(super) fn notify(
        &mut self,
        at: DateTime<Utc>,
        object_type: &'static str,
        event_type: &'static str,
        id: &str,
        fields: Map<String, Value>,
    ) {
        self.billing.outbox.push(Event {
            at,
            object_type,
            event_type,
            id: id.to_owned(),
            fields,
        });
    }

    pub(super) fn notify_subscription(
        &mut self,
        id: &str,
        event_type: &'static str,
        at: DateTime<Utc>,
    ) {
        let Some(sub) = self.subscriptions.get(id) else {
            return;
        };
        let mut fields = Map::new();
        fields.insert("uuid".into(), sub.field("uuid").clone());
        self.notify(at, "subscription", event_type, id, fields);
    }

    fn notify_invoice(&mut self, id: &str, event_type: &'static str, at: DateTime<Utc>) {
        let Some(invoice) = self.billing.invoices.get(id) else {
            return;
        };
        let mut fields = Map::new();
        fields.insert("uuid".into(), invoice.field("uuid").clone());
        let number = invoice.text("number").parse::<u64>().ok();
        fields.insert("invoice_number".into(), json!(number));
        self.notify(at, INVOICE_OBJECT_TYPE, event_type, id, fields);
    }

    // ---- subscriptions through their cycle --------------------------------------------

    /// A subscription was created: its first period is scheduled and, unless it starts with a
    /// trial, its sign-up invoice charges the first period (no usage: usage is billed in arrears,
    /// reference §6).
    pub(super) fn subscription_created(&mut self, id: &str, now: DateTime<Utc>) {
        self.notify_subscription(id, "created", now);
        let sub = &self.subscriptions[id];
        if sub.text("state") == "future" {
            if let Some(start) = time_of(sub, "current_period_started_at") {
                self.schedule(start, Task::Start(id.to_owned()));
            }
            return;
        }
        self.open_first_period(id, now);
    }

    fn open_first_period(&mut self, id: &str, now: DateTime<Utc>) {
        let sub = &self.subscriptions[id];
        let (Some(start), Some(end)) = (
            time_of(sub, "current_period_started_at"),
            time_of(sub, "current_period_ends_at"),
        ) else {
            return;
        };
        let trial = time_of(sub, "trial_ends_at").is_some();
        self.schedule(renewal_runs_at(end), Task::PeriodEnd(id.to_owned()));
        if !trial {
            let lines = self.recurring_lines(id, start, end);
            let invoice = self.issue_invoice(id, "purchase", lines, now);
            let mut ignored = Vec::new();
            self.collect(&invoice, now, &mut ignored);
        }
    }

    fn start_future(&mut self, id: &str, at: DateTime<Utc>) {
        let Some(sub) = self.subscriptions.get_mut(id) else {
            return;
        };
        if sub.text("state") != "future" {
            return;
        }
        sub.touch(at);
        sub.body.insert("state".into(), json!("active"));
        sub.body.insert("activated_at".into(), json!(timestamp(at)));
        self.open_first_period(id, at);
    }

    fn period_end(&mut self, id: &str, at: DateTime<Utc>, done: &mut Vec<Processed>) {
        let Some(sub) = self.subscriptions.get(id) else {
            return;
        };
        // A period moved since (reactivated, changed, terminated) leaves a stale task behind.
        if time_of(sub, "current_period_ends_at").map(renewal_runs_at) != Some(at) {
            return;
        }
        let term_ended = time_of(sub, "current_term_ends_at").is_none_or(|e| e <= at);
        match sub.text("state") {
            "active" if term_ended && sub.field("auto_renew") == &json!(false) => {
                self.expire_at_end(id, at, EXPIRED_NONRENEWING, done)
            }
            "active" => self.renew(id, at, done),
            "canceled" if time_of(sub, "expires_at").is_none_or(|e| e <= at) => {
                self.expire_at_end(id, at, EXPIRED_AFTER_CANCELING, done)
            }
            "canceled" => self.renew(id, at, done),
            _ => {}
        }
    }

    fn interval_of(&self, sub: &Record) -> (String, i64) {
        let plan = sub.field("plan")["id"]
            .as_str()
            .and_then(|p| self.plans.get(p));
        let unit = plan
            .map(|p| p.text("interval_unit").to_owned())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "months".to_owned());
        let length = plan
            .and_then(|p| p.field("interval_length").as_i64())
            .unwrap_or(1);
        (unit, length)
    }

    /// Bills the ended period `[start, at)` in arrears and the next one in advance.
    fn renew(&mut self, id: &str, at: DateTime<Utc>, done: &mut Vec<Processed>) {
        let start = time_of(&self.subscriptions[id], "current_period_started_at").unwrap_or(at);
        // The ended period's usage is billed with the add-ons it had, before a change lands.
        let usage = self.usage_lines(id, start, at, at);
        self.apply_pending_change(id, at);
        let sub = &self.subscriptions[id];
        let term_end = time_of(sub, "current_term_ends_at");
        let (unit, length) = self.interval_of(sub);
        let cycles = sub
            .field("renewal_billing_cycles")
            .as_i64()
            .or_else(|| sub.field("total_billing_cycles").as_i64())
            .unwrap_or(1)
            .max(1);
        let next_end = add_interval(at, &unit, length);
        let mut lines = self.recurring_lines(id, at, next_end);
        lines.extend(usage);

        let sub = self.subscriptions.get_mut(id).expect("looked up above");
        sub.touch(at);
        sub.body
            .insert("current_period_started_at".into(), json!(timestamp(at)));
        sub.body
            .insert("current_period_ends_at".into(), json!(timestamp(next_end)));
        if term_end.is_none_or(|e| e <= at) {
            let term_end = add_interval(at, &unit, length.saturating_mul(cycles));
            sub.body
                .insert("current_term_started_at".into(), json!(timestamp(at)));
            sub.body
                .insert("current_term_ends_at".into(), json!(timestamp(term_end)));
            if sub
                .body
                .get("remaining_billing_cycles")
                .is_some_and(|r| !r.is_null())
            {
                sub.body
                    .insert("remaining_billing_cycles".into(), json!(cycles - 1));
            }
        } else if let Some(left) = sub.field("remaining_billing_cycles").as_i64() {
            sub.body
                .insert("remaining_billing_cycles".into(), json!((left - 1).max(0)));
        }
        self.schedule(renewal_runs_at(next_end), Task::PeriodEnd(id.to_owned()));
        self.notify_subscription(id, "renewed", at);
        let invoice = self.issue_invoice(id, "renewal", lines, at);
        done.push(Processed::new(at, "renewal", Some(id), Some(&invoice)));
        self.collect(&invoice, at, done);
    }

    /// A change made for `renewal` or `bill_date` (or `term_end`, when the term ends) takes
    /// effect at the renewal it waited for (reference §3: `timeframe`).
    fn apply_pending_change(&mut self, id: &str, at: DateTime<Utc>) {
        let Some(sub) = self.subscriptions.get_mut(id) else {
            return;
        };
        let Some(change) = sub.body.get("pending_change").cloned() else {
            return;
        };
        let due = change["activate_at"]
            .as_str()
            .and_then(parse_time)
            .is_none_or(|t| t <= at);
        if !due {
            return;
        }
        sub.body.remove("pending_change");
        for key in ["plan", "add_ons", "unit_amount", "quantity"] {
            if let Some(value) = change.get(key).filter(|v| !v.is_null()) {
                sub.body.insert(key.into(), value.clone());
            }
        }
        let add_ons = sub.field("add_ons").as_array().cloned().unwrap_or_default();
        let (add_ons_total, subtotal) = super::subscriptions::subscription_totals(
            &add_ons,
            sub.field("unit_amount").as_f64().unwrap_or(0.0),
            sub.field("quantity").as_i64().unwrap_or(1),
        );
        sub.body
            .insert("add_ons_total".into(), json!(add_ons_total));
        sub.body.insert("subtotal".into(), json!(subtotal));
        sub.body.insert("total".into(), json!(subtotal));
    }

    /// A canceled (or non-renewing) subscription reaches its end: the last period's usage goes on
    /// a final invoice, then it expires.
    fn expire_at_end(
        &mut self,
        id: &str,
        at: DateTime<Utc>,
        reason: &str,
        done: &mut Vec<Processed>,
    ) {
        self.final_usage_invoice(id, at, done);
        self.expire_subscription(id, true, at);
        self.mark_expired(id, reason, at, done);
    }

    fn mark_expired(
        &mut self,
        id: &str,
        reason: &str,
        at: DateTime<Utc>,
        done: &mut Vec<Processed>,
    ) {
        if let Some(sub) = self.subscriptions.get_mut(id) {
            sub.body.insert("expiration_reason".into(), json!(reason));
        }
        self.notify_subscription(id, "expired", at);
        done.push(Processed::new(at, "expired", Some(id), None));
    }

    /// Bills the current period's unbilled usage up to `at` on an invoice of its own and
    /// collects it, when the subscription has usage add-ons.
    pub(super) fn final_usage_invoice(
        &mut self,
        id: &str,
        at: DateTime<Utc>,
        done: &mut Vec<Processed>,
    ) {
        let Some(sub) = self.subscriptions.get(id) else {
            return;
        };
        let start = time_of(sub, "current_period_started_at").unwrap_or(at);
        let lines = self.usage_lines(id, start, at, at);
        if !lines.is_empty() {
            let invoice = self.issue_invoice(id, FINAL_USAGE_INVOICE_ORIGIN, lines, at);
            self.collect(&invoice, at, done);
        }
    }

    /// `DELETE /subscriptions/{id}?charge=true` bills the cycle's usage on a final invoice
    /// (reference §5); the subscription then expires.
    pub(super) fn terminated(&mut self, id: &str, charge: bool, at: DateTime<Utc>) {
        let mut done = Vec::new();
        if charge {
            self.final_usage_invoice(id, at, &mut done);
        }
    }

    /// The plan and its fixed add-ons for the period `[start, end)`, charged in advance.
    fn recurring_lines(
        &self,
        id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Vec<Map<String, Value>> {
        let sub = &self.subscriptions[id];
        let quantity = sub.field("quantity").as_i64().unwrap_or(1);
        let unit_amount = sub.field("unit_amount").as_f64().unwrap_or(0.0);
        let plan = sub.field("plan");
        let mut plan_line = line_body(sub, start, end);
        plan_line.insert("origin".into(), json!("plan"));
        plan_line.insert(
            "description".into(),
            json!(plan["name"].as_str().unwrap_or_default()),
        );
        plan_line.insert("quantity".into(), json!(quantity));
        plan_line.insert("unit_amount".into(), json!(unit_amount));
        set_amount(&mut plan_line, cents(unit_amount * quantity as f64));
        let mut lines = vec![plan_line];
        for add_on in sub.field("add_ons").as_array().into_iter().flatten() {
            if add_on["add_on"]["add_on_type"] != "fixed" {
                continue;
            }
            let quantity = add_on["quantity"].as_i64().unwrap_or(1);
            let unit = add_on["unit_amount"].as_f64().unwrap_or(0.0);
            let mut line = line_body(sub, start, end);
            add_on_fields(&mut line, add_on);
            line.insert("origin".into(), json!("add_on"));
            line.insert("description".into(), add_on["add_on"]["name"].clone());
            line.insert("quantity".into(), json!(quantity));
            line.insert("unit_amount".into(), json!(unit));
            set_amount(&mut line, cents(unit * quantity as f64));
            lines.push(line);
        }
        lines
    }

    /// The usage lines of the period `[start, end)` for every usage add-on (a line even at 0,
    /// reference §6), plus a correction line per earlier invoiced period that got late records;
    /// every record billed gets `billed_at = at`. Usage dated in a trial is never billed.
    fn usage_lines(
        &mut self,
        id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Vec<Map<String, Value>> {
        let sub = &self.subscriptions[id];
        let trial = match (
            time_of(sub, "trial_started_at"),
            time_of(sub, "trial_ends_at"),
        ) {
            (Some(s), Some(e)) => Some((s, e)),
            _ => None,
        };
        let in_trial = |t: DateTime<Utc>| trial.is_some_and(|(s, e)| s <= t && t < e);
        let period_is_trial = trial.is_some_and(|(s, e)| s <= start && end <= e);
        let add_ons: Vec<Value> = sub
            .field("add_ons")
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["add_on"]["add_on_type"] == "usage")
            .cloned()
            .collect();
        let sub = sub.clone();
        let mut billed_periods = self.billing.billed.remove(id).unwrap_or_default();
        let mut quantities = HashMap::new();
        let mut lines = Vec::new();
        for add_on in &add_ons {
            let add_on_id = add_on["add_on"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let name = add_on["add_on"]["name"].as_str().unwrap_or_default();
            let ids = self
                .usage_by_add_on
                .get(&(id.to_owned(), add_on_id.clone()))
                .cloned()
                .unwrap_or_default();
            let mut current: Vec<(DateTime<Utc>, f64)> = Vec::new();
            let mut late: BTreeMap<usize, f64> = BTreeMap::new();
            let mut billed_now = Vec::new();
            for usage_id in ids {
                let Some(u) = self.usage.get(&usage_id) else {
                    continue;
                };
                if u.billed_at.is_some() || u.usage_at >= end || in_trial(u.usage_at) {
                    continue;
                }
                match billed_periods
                    .iter()
                    .position(|p| p.start <= u.usage_at && u.usage_at < p.end)
                {
                    Some(i) => *late.entry(i).or_default() += u.amount,
                    None => current.push((u.usage_at, u.amount)),
                }
                billed_now.push(usage_id);
            }
            let quantity = if add_on["usage_calculation_type"] == "last_in_period" {
                current
                    .iter()
                    .max_by_key(|(t, _)| *t)
                    .map_or(0.0, |(_, a)| *a)
            } else {
                current.iter().map(|(_, a)| a).fold(0.0, |t, a| t + a)
            };
            let mut line = usage_line(&sub, add_on, start, end, quantity, price(add_on, quantity));
            line.insert("description".into(), json!(usage_line_description(name)));
            lines.push(line);
            quantities.insert(add_on_id.clone(), quantity);
            for (i, amount) in late {
                let period = &mut billed_periods[i];
                let before = period.quantities.get(&add_on_id).copied().unwrap_or(0.0);
                let charge = cents(price(add_on, before + amount) - price(add_on, before));
                period.quantities.insert(add_on_id.clone(), before + amount);
                let mut line = usage_line(&sub, add_on, period.start, period.end, amount, charge);
                line.insert(
                    "description".into(),
                    json!(correction_line_description(name)),
                );
                lines.push(line);
            }
            for usage_id in billed_now {
                if let Some(u) = self.usage.get_mut(&usage_id) {
                    u.billed_at = Some(at);
                    u.record.touch(at);
                    u.record
                        .body
                        .insert("billed_at".into(), json!(timestamp(at)));
                }
            }
        }
        if !period_is_trial && !add_ons.is_empty() {
            billed_periods.push(BilledPeriod {
                start,
                end,
                quantities,
            });
        }
        self.billing.billed.insert(id.to_owned(), billed_periods);
        lines
    }

    /// Whether `at` falls in a period of the subscription that was already invoiced.
    pub(super) fn in_invoiced_period(&self, sub_id: &str, at: DateTime<Utc>) -> bool {
        self.billing
            .billed
            .get(sub_id)
            .into_iter()
            .flatten()
            .any(|p| p.start <= at && at < p.end)
    }

    /// Refuses a record dated in an invoiced period when its add-on takes no corrections
    /// (reference §6: volume, stairstep, and `usage_timeframe=subscription_term`).
    pub(super) fn check_correction(
        &self,
        sub_id: &str,
        add_on: &Value,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let refuses = matches!(add_on["tier_type"].as_str(), Some("volume" | "stairstep"))
            || add_on["usage_timeframe"] == "subscription_term";
        if refuses && self.in_invoiced_period(sub_id, at) {
            return Err(ApiError::validation_message(
                USAGE_CORRECTION_REFUSED,
                "usage_timestamp",
            ));
        }
        Ok(())
    }

    // ---- invoices ----------------------------------------------------------------------

    fn issue_invoice(
        &mut self,
        sub_id: &str,
        origin: &str,
        lines: Vec<Map<String, Value>>,
        at: DateTime<Utc>,
    ) -> String {
        self.billing.issued += 1;
        let number = (FIRST_INVOICE_NUMBER + self.billing.issued - 1).to_string();
        let sub = &self.subscriptions[sub_id];
        let total = cents(
            lines
                .iter()
                .map(|l| l["amount"].as_f64().unwrap_or(0.0))
                .fold(0.0, |t, a| t + a),
        );
        let net_terms = sub.field("net_terms").as_i64().unwrap_or(0);
        let previous = self
            .billing
            .subscription_invoices
            .get(sub_id)
            .and_then(|ids| ids.last())
            .cloned();
        let account = sub.field("account").clone();
        let account_code = account["code"].as_str().unwrap_or_default().to_owned();
        let body = json!({
            "uuid": uuid::Uuid::new_v4().simple().to_string(),
            "type": "charge",
            "origin": origin,
            "state": "pending",
            "account": account,
            "subscription_ids": [sub_id],
            "previous_invoice_id": previous,
            "number": number,
            "collection_method": sub.field("collection_method"),
            "po_number": sub.field("po_number"),
            "net_terms": net_terms,
            "net_terms_type": sub.field("net_terms_type"),
            "currency": sub.field("currency"),
            "discount": 0.0,
            "subtotal": total,
            "tax": 0.0,
            "total": total,
            "refundable_amount": 0.0,
            "paid": 0.0,
            "balance": total,
            "used_tax_service": false,
            "has_more_line_items": false,
            "transactions": [],
            "credit_payments": [],
            "due_at": timestamp(at + Duration::days(net_terms)),
            "dunning_events_sent": 0,
            "final_dunning_event": false,
        });
        let Value::Object(fields) = body else {
            unreachable!("built as an object")
        };
        let seq = self.next_seq();
        let mut invoice = Record::new(seq, at, "invoice", fields);
        let mut records = Vec::new();
        for mut line in lines {
            line.insert("invoice_id".into(), json!(invoice.id));
            line.insert("invoice_number".into(), json!(number));
            let seq = self.next_seq();
            records.push(Record::new(seq, at, "line_item", line));
        }
        invoice.body.insert(
            "line_items".into(),
            Value::Array(
                records
                    .iter()
                    .map(|r| Value::Object(r.body.clone()))
                    .collect(),
            ),
        );
        let id = invoice.id.clone();
        self.billing.invoice_by_number.insert(number, id.clone());
        self.billing.invoice_lines.insert(id.clone(), records);
        self.billing
            .subscription_invoices
            .entry(sub_id.to_owned())
            .or_default()
            .push(id.clone());
        let account_id = self
            .account_by_code
            .get(&account_code)
            .cloned()
            .unwrap_or(account_code);
        self.billing
            .account_invoices
            .entry(account_id)
            .or_default()
            .push(id.clone());
        self.billing.invoices.insert(id.clone(), invoice);
        self.notify_invoice(&id, "created", at);
        id
    }

    /// One collection attempt: paid, or past due and retried, or failed after the last attempt
    /// (the subscription then expires).
    fn collect(&mut self, invoice_id: &str, at: DateTime<Utc>, done: &mut Vec<Processed>) {
        let Some(invoice) = self.billing.invoices.get(invoice_id) else {
            return;
        };
        let was = invoice.text("state").to_owned();
        if was != "pending" && was != "past_due" {
            return;
        }
        let account_code = invoice.field("account")["code"]
            .as_str()
            .unwrap_or_default();
        let fails = collection_can_fail(invoice.text("origin"))
            && self.billing.failing_accounts.contains(account_code);
        let sub_id = invoice_subscription(invoice);
        let invoice = self
            .billing
            .invoices
            .get_mut(invoice_id)
            .expect("looked up above");
        invoice.touch(at);
        if !fails {
            let total = invoice.field("total").clone();
            for (key, value) in [
                ("state", json!("paid")),
                ("paid", total.clone()),
                ("refundable_amount", total),
                ("balance", json!(0.0)),
                ("closed_at", json!(timestamp(at))),
            ] {
                invoice.body.insert(key.into(), value);
            }
            self.billing.failed_attempts.remove(invoice_id);
            self.notify_invoice(invoice_id, "paid", at);
            return;
        }
        let failed = self
            .billing
            .failed_attempts
            .entry(invoice_id.to_owned())
            .or_default();
        *failed += 1;
        let failed = *failed;
        invoice
            .body
            .insert("dunning_events_sent".into(), json!(failed));
        if failed >= self.billing.settings.attempts.max(1) {
            invoice.body.insert("state".into(), json!("failed"));
            invoice
                .body
                .insert("closed_at".into(), json!(timestamp(at)));
            invoice
                .body
                .insert("final_dunning_event".into(), json!(true));
            self.billing.failed_attempts.remove(invoice_id);
            self.notify_invoice(invoice_id, "failed", at);
            let live = self
                .subscriptions
                .get(&sub_id)
                .is_some_and(|s| matches!(s.text("state"), "active" | "canceled"));
            if live {
                self.expire_subscription(&sub_id, true, at);
                self.mark_expired(&sub_id, EXPIRED_FOR_NONPAYMENT, at, done);
            }
            return;
        }
        invoice.body.insert("state".into(), json!("past_due"));
        if was != "past_due" {
            self.notify_invoice(invoice_id, "past_due", at);
        }
        let retry = at
            + Duration::seconds(
                i64::try_from(self.billing.settings.retry_interval_secs).unwrap_or(i64::MAX / 1000),
            );
        self.schedule(retry, Task::Collect(invoice_id.to_owned()));
    }

    /// `PUT /_sandbox/recurly/accounts/{code}/payments`.
    pub(crate) fn set_payments_failing(&mut self, account_code: &str, fail: bool) {
        if fail {
            self.billing
                .failing_accounts
                .insert(account_code.to_owned());
        } else {
            self.billing.failing_accounts.remove(account_code);
        }
    }

    /// Whether one of the account's invoices is `past_due` (Account `has_past_due_invoice`, the
    /// `past_due` filter of `list_accounts`).
    pub(super) fn has_past_due_invoice(&self, account_id: &str) -> bool {
        self.billing
            .account_invoices
            .get(account_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.billing.invoices.get(id))
            .any(|i| i.text("state") == "past_due")
    }

    fn invoice(&self, key: &str) -> Result<&Record> {
        let found = match key.strip_prefix("number-") {
            Some(number) => self
                .billing
                .invoice_by_number
                .get(number)
                .and_then(|id| self.billing.invoices.get(id)),
            None => self.billing.invoices.get(key),
        };
        found.ok_or_else(|| ApiError::not_found("Invoice", key))
    }

    pub fn get_invoice(&self, key: &str) -> Result<Reply> {
        Ok(Reply::raw(200, &self.invoice(key)?.body))
    }

    /// `GET /subscriptions/{id}/invoices` and `GET /accounts/{id}/invoices`, with the `state`
    /// and `type` filters of the spec.
    pub fn list_invoices(
        &self,
        subscription: Option<&str>,
        account: Option<&str>,
        query: &ListQuery,
    ) -> Result<Reply> {
        let ids = match (subscription, account) {
            (Some(key), _) => {
                let sub = self.subscription(key)?;
                self.billing.subscription_invoices.get(&sub.id)
            }
            (None, Some(key)) => {
                let account = self.account(key)?;
                self.billing.account_invoices.get(&account.id)
            }
            (None, None) => None,
        };
        let state = match query.param("state") {
            None => None,
            Some(s @ ("pending" | "past_due" | "paid" | "failed")) => Some(s),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "state must be pending, past_due, paid or failed, not '{other}'"
                )));
            }
        };
        let charge_only = match query.param("type") {
            None | Some("charge" | "non-legacy") => true,
            Some("credit" | "legacy") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "type must be charge, credit, legacy or non-legacy, not '{other}'"
                )));
            }
        };
        let matching = ids
            .into_iter()
            .flatten()
            .filter_map(|id| self.billing.invoices.get(id))
            .filter(|_| charge_only)
            .filter(|i| state.is_none_or(|s| i.text("state") == s));
        Ok(list_of(
            super::paging::paginate(rows(matching, query), query),
            |r| Value::Object(r.body.clone()),
        ))
    }

    /// `GET /invoices/{id}/line_items`, with the `state`, `type` and `original` filters.
    pub fn list_line_items(&self, key: &str, query: &ListQuery) -> Result<Reply> {
        let invoice = self.invoice(key)?;
        let state = query.param("state");
        let kind = query.param("type");
        let lines = self
            .billing
            .invoice_lines
            .get(&invoice.id)
            .into_iter()
            .flatten()
            .filter(|l| state.is_none_or(|s| l.text("state") == s))
            .filter(|l| kind.is_none_or(|k| l.text("type") == k));
        Ok(list_of(
            super::paging::paginate(rows(lines, query), query),
            |r| Value::Object(r.body.clone()),
        ))
    }
}

fn invoice_subscription(invoice: &Record) -> String {
    invoice.field("subscription_ids")[0]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The fields every line of a subscription's invoice shares.
fn line_body(sub: &Record, start: DateTime<Utc>, end: DateTime<Utc>) -> Map<String, Value> {
    let plan = sub.field("plan");
    let body = json!({
        "uuid": uuid::Uuid::new_v4().simple().to_string(),
        "type": "charge",
        "state": "invoiced",
        "legacy_category": "charge",
        "account": sub.field("account"),
        "subscription_id": sub.id,
        "plan_id": plan["id"],
        "plan_code": plan["code"],
        "currency": sub.field("currency"),
        "tax_inclusive": false,
        "discount": 0.0,
        "tax": 0.0,
        "taxable": false,
        "tax_exempt": false,
        "refund": false,
        "credit_applied": 0.0,
        "revenue_schedule_type": sub.field("revenue_schedule_type"),
        "custom_fields": [],
        "start_date": timestamp(start),
        "end_date": timestamp(end),
    });
    let Value::Object(map) = body else {
        unreachable!("built as an object")
    };
    map
}

fn add_on_fields(line: &mut Map<String, Value>, add_on: &Value) {
    line.insert("add_on_id".into(), add_on["add_on"]["id"].clone());
    line.insert("add_on_code".into(), add_on["add_on"]["code"].clone());
    if let Some(code) = add_on["add_on"]["accounting_code"].as_str() {
        line.insert("accounting_code".into(), json!(code));
    }
}

fn set_amount(line: &mut Map<String, Value>, amount: f64) {
    line.insert("amount".into(), json!(amount));
    line.insert("subtotal".into(), json!(amount));
}

/// A usage line: `quantity` units over `[start, end)` costing `amount`; `unit_amount` is the
/// add-on's unit price for per-unit pricing and the average for tiers [I].
fn usage_line(
    sub: &Record,
    add_on: &Value,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    quantity: f64,
    amount: f64,
) -> Map<String, Value> {
    let mut line = line_body(sub, start, end);
    add_on_fields(&mut line, add_on);
    line.insert("origin".into(), json!("add_on"));
    line.insert("quantity".into(), json!(quantity.round() as i64));
    line.insert("quantity_decimal".into(), json!(format_quantity(quantity)));
    let tiered =
        add_on["tiers"].as_array().is_some_and(|t| !t.is_empty()) && add_on["tier_type"] != "flat";
    if tiered {
        let average = if quantity > 0.0 {
            amount / quantity
        } else {
            0.0
        };
        line.insert("unit_amount".into(), json!(cents(average)));
    } else {
        line.insert("unit_amount".into(), json!(unit_price(add_on)));
        if let Some(decimal) = add_on["unit_amount_decimal"].as_str() {
            line.insert("unit_amount_decimal".into(), json!(decimal));
        }
    }
    set_amount(&mut line, amount);
    line
}

fn format_quantity(quantity: f64) -> String {
    if quantity.fract() == 0.0 {
        format!("{quantity:.0}")
    } else {
        format!("{quantity}")
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

    /// A store with a monthly plan holding a graduated and a volume add-on, and a subscription
    /// to it created at `now`.
    fn subscribed(now: DateTime<Utc>) -> (Store, String) {
        let mut store = Store::default();
        body(store.create_unit(&json!({"name": "calls", "display_name": "Calls"}), now));
        let tiers = json!([
            {"ending_quantity": 100, "currencies": [{"currency": "USD", "unit_amount": 1}]},
            {"ending_quantity": 999999999, "currencies": [{"currency": "USD", "unit_amount": 0.5}]}]);
        let add_on = |code: &str, kind: &str| {
            json!({"code": code, "name": code, "add_on_type": "usage", "usage_type": "price",
                   "tier_type": kind, "measured_unit_name": "calls", "tiers": tiers})
        };
        body(store.create_plan(
            &json!({"code": "p", "name": "P", "currencies": [{"currency": "USD", "unit_amount": 0}],
                    "add_ons": [add_on("grad", "tiered"), add_on("vol", "volume")]}),
            now,
        ));
        let sub = body(store.create_subscription(
            &json!({"plan_code": "p", "currency": "USD", "account": {"code": "a"},
                    "add_ons": [{"code": "grad"}, {"code": "vol"}]}),
            now,
        ));
        (store, sub["id"].as_str().unwrap().to_owned())
    }

    #[test]
    fn a_renewal_bills_the_period_and_later_records_become_corrections_or_refusals() {
        let now = Utc::now();
        let (mut store, id) = subscribed(now);
        let end = time_of(&store.subscriptions[&id], "current_period_ends_at").unwrap();
        assert_eq!(store.next_due(), Some(end));
        for code in ["code-grad", "code-vol"] {
            body(store.create_usage(&id, code, &json!({"amount": 150}), now));
        }
        let done = store.process_due(end);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].what, "renewal");
        let invoice = &store.billing.invoices[done[0].invoice_id.as_deref().unwrap()];
        let amounts: Vec<f64> = invoice
            .field("line_items")
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["add_on_code"].is_string())
            .map(|l| l["amount"].as_f64().unwrap())
            .collect();
        assert_eq!(
            amounts,
            [125.0, 75.0],
            "graduated 100 + 50 × 0.5; volume 150 × 0.5"
        );
        let late = json!({"amount": 10, "usage_timestamp": timestamp(end - Duration::minutes(5))});
        let later = end + Duration::minutes(1);
        body(store.create_usage(&id, "code-grad", &late, later));
        let refused = store.create_usage(&id, "code-vol", &late, later);
        assert_eq!(
            refused.err().map(|e| e.message),
            Some(USAGE_CORRECTION_REFUSED.to_owned())
        );
        assert!(
            store.process_due(end + Duration::days(20)).is_empty(),
            "nothing due yet"
        );
    }

    #[test]
    fn dunning_retries_then_expires_the_subscription() {
        let now = Utc::now();
        let (mut store, id) = subscribed(now);
        store.billing.settings = DunningSettings {
            attempts: 2,
            retry_interval_secs: 60,
        };
        store.set_payments_failing("a", true);
        let end = store.next_due().unwrap();
        let what = |done: Vec<Processed>| done.iter().map(|p| p.what).collect::<Vec<_>>();
        assert_eq!(what(store.process_due(end)), ["renewal"]);
        assert_eq!(store.subscriptions[&id].text("state"), "active");
        assert_eq!(
            what(store.process_due(end + Duration::seconds(60))),
            ["dunning_attempt", "expired"]
        );
        assert_eq!(store.subscriptions[&id].text("state"), "expired");
        let kinds: Vec<(&str, &str)> = store
            .billing
            .outbox
            .iter()
            .map(|e| (e.object_type, e.event_type))
            .collect();
        assert!(kinds.contains(&("charge_invoice", "past_due")), "{kinds:?}");
        assert!(kinds.contains(&("subscription", "expired")), "{kinds:?}");
    }

    fn tiers(kind: &str) -> Value {
        json!({"tier_type": kind, "usage_type": "price", "tiers": [
            {"ending_quantity": 100, "unit_amount": 1.0},
            {"ending_quantity": 200, "unit_amount_decimal": "0.5"},
            {"ending_quantity": null, "unit_amount": 0.25}]})
    }

    #[test]
    fn each_pricing_model_prices_its_own_way() {
        let flat = json!({"usage_type": "price", "unit_amount_decimal": "0.002"});
        assert_eq!(price(&flat, 1500.0), 3.0);
        // 100 × 1 + 100 × 0.5 + 50 × 0.25
        assert_eq!(price(&tiers("tiered"), 250.0), 162.5);
        assert_eq!(price(&tiers("tiered"), 100.0), 100.0);
        assert_eq!(price(&tiers("volume"), 250.0), 62.5);
        assert_eq!(price(&tiers("volume"), 150.0), 75.0);
        assert_eq!(price(&tiers("stairstep"), 150.0), 0.5);
        assert_eq!(price(&tiers("stairstep"), 0.0), 0.0);
        let percent = json!({"usage_type": "percentage", "usage_percentage": 10.0});
        assert_eq!(price(&percent, 5000.0), 5.0);
    }
}
