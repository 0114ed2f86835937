//! The rules of usage reporting, as plain functions: reporting windows and which are closed,
//! where a window's usage record is dated, its ledger key and merchant tag, how traffic rows
//! become units per (subscription, quota), and what is left to report after earlier reports.

use std::collections::BTreeMap;

use crate::codes::idempotency_key;

/// A half-open window `[start, end)` in epoch milliseconds.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    /// The window of length `len_ms` (aligned to the epoch) that holds `at_ms`.
    pub fn containing(at_ms: i64, len_ms: i64) -> Window {
        let start_ms = at_ms.div_euclid(len_ms) * len_ms;
        Window {
            start_ms,
            end_ms: start_ms + len_ms,
        }
    }

    pub fn previous(self) -> Window {
        let len = self.end_ms - self.start_ms;
        Window {
            start_ms: self.start_ms - len,
            end_ms: self.start_ms,
        }
    }

    pub fn next(self) -> Window {
        let len = self.end_ms - self.start_ms;
        Window {
            start_ms: self.end_ms,
            end_ms: self.end_ms + len,
        }
    }
}

/// Windows that are closed and past the safety delay for late traffic, after `watermark` (the
/// end of the last reported window; `None`: start with the window before now's), oldest first,
/// at most `limit` of them, so a long outage is caught up a bounded amount per run.
pub fn closed_windows(
    watermark_ms: Option<i64>,
    now_ms: i64,
    len_ms: i64,
    delay_ms: i64,
    limit: usize,
) -> Vec<Window> {
    let ready_before = now_ms - delay_ms;
    let mut window = match watermark_ms {
        Some(end) => Window {
            start_ms: end,
            end_ms: end + len_ms,
        },
        None => Window::containing(ready_before, len_ms).previous(),
    };
    let mut windows = Vec::new();
    while window.end_ms <= ready_before && windows.len() < limit {
        windows.push(window);
        window = window.next();
    }
    windows
}

/// Recurly refuses usage dated in the future, even by clock skew (reference §6): a window's
/// record is dated one second before its end, and never later than `now - skew`.
pub fn usage_timestamp_ms(window: Window, now_ms: i64, skew_ms: i64) -> i64 {
    (window.end_ms - 1_000)
        .min(now_ms - skew_ms)
        .max(window.start_ms)
}

/// The ledger key of one report: the billing subscription, the add-on, the window and which
/// report of that window it is (0 the first, then deltas for late traffic). The same key is the
/// `Idempotency-Key`, so a report retried after a crash cannot count twice.
pub fn usage_key(
    billing_subscription: &str,
    add_on_code: &str,
    window: Window,
    report: u32,
) -> String {
    report_key("usage", billing_subscription, add_on_code, window, report)
}

fn report_key(
    purpose: &str,
    billing_subscription: &str,
    add_on_code: &str,
    window: Window,
    report: u32,
) -> String {
    idempotency_key(
        purpose,
        &[
            billing_subscription,
            add_on_code,
            &window.start_ms.to_string(),
            &window.end_ms.to_string(),
            &report.to_string(),
        ],
    )
}

/// The key of a report re-dated into the open period after Recurly refused it (see
/// [`redated_after_renewal`]): derived from the report's own key, so a resend re-dates the same
/// way and Recurly's idempotency answers with the same record.
pub fn moved_usage_key(
    billing_subscription: &str,
    add_on_code: &str,
    window: Window,
    report: u32,
) -> String {
    report_key(
        "usage-moved",
        billing_subscription,
        add_on_code,
        window,
        report,
    )
}

/// A record dated before a renewal that Recurly refused: when the period renewed after its date
/// was chosen (the renewal came between reading the period and sending) and the add-on takes no
/// corrections, the date it must take instead: the open period's start.
pub fn redated_after_renewal(usage_ms: i64, period: &Period, pricing: Pricing) -> Option<i64> {
    (period.renewed && usage_ms < period.start_ms && !pricing.takes_corrections())
        .then_some(period.start_ms)
}

/// `merchant_tag` for a report: says, for a person reading the invoice, which window and which
/// Amplify subscription it counts.
pub fn merchant_tag(window: Window, amplify_subscription: &str, report: u32) -> String {
    let suffix = if report == 0 {
        String::new()
    } else {
        format!(" late#{report}")
    };
    format!(
        "amplify:{amplify_subscription} window:{}-{}{suffix}",
        window.start_ms, window.end_ms
    )
}

/// One row of traffic: a subscription's count on one asset resource in a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficRow {
    pub subscription_id: String,
    /// The AssetResource's id, when the traffic carries one (every source may).
    pub resource_id: Option<String>,
    /// The resource's name, when the traffic carries one: its own name as agents send it
    /// (reference §5.4), or `<asset>/<resource>` as quotas list it.
    pub resource_name: Option<String>,
    /// The quota the traffic names itself (raw transactions carry `quota.id`); when it is one
    /// of the subscription's plan's quotas it wins over the asset resource.
    pub quota: Option<String>,
    pub units: u64,
}

/// What stands for a resource a row does not name.
pub const UNKNOWN_RESOURCE: &str = "unknown";

impl TrafficRow {
    /// The resource as a person reads it: its name, else its id.
    pub fn resource_label(&self) -> &str {
        self.resource_name
            .as_deref()
            .or(self.resource_id.as_deref())
            .unwrap_or(UNKNOWN_RESOURCE)
    }
}

/// One resource a quota lists (`spec.resources[].name`, `<asset>/<resource>`, reference §3.3),
/// with its AssetResource id when Amplify gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaResource {
    pub listed: String,
    pub id: Option<String>,
}

/// The resource's own name, as agents send it (reference §5.4): the part after the asset.
pub fn own_name(listed: &str) -> &str {
    listed.rsplit_once('/').map_or(listed, |(_, own)| own)
}

/// Where a subscription's traffic is billed: its plan's quotas, and the quota that counts each
/// asset resource, by id and by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BilledSubscription {
    /// Every quota id of the plan.
    #[serde(default)]
    pub quotas: std::collections::BTreeSet<String>,
    /// AssetResource id → quota.
    #[serde(default)]
    pub quota_by_resource_id: BTreeMap<String, String>,
    /// Resource name → quota: each `<asset>/<resource>` as listed (unique in a plan, a resource
    /// belongs to one quota) and each own name that one quota alone lists.
    pub quota_by_resource: BTreeMap<String, String>,
    /// Own names (or ids) that two quotas of the plan list: never guessed.
    #[serde(default)]
    pub ambiguous: std::collections::BTreeSet<String>,
}

impl BilledSubscription {
    /// Adds a quota of the plan with the resources it lists.
    pub fn add_quota(&mut self, quota: &str, resources: &[QuotaResource]) {
        self.quotas.insert(quota.to_owned());
        for resource in resources {
            if let Some(id) = resource.id.as_deref().filter(|id| !id.is_empty()) {
                claim(
                    &mut self.quota_by_resource_id,
                    &mut self.ambiguous,
                    id,
                    quota,
                );
            }
            let listed = resource.listed.as_str();
            if listed.is_empty() {
                continue;
            }
            let own = own_name(listed);
            if own != listed {
                self.quota_by_resource
                    .insert(listed.to_owned(), quota.to_owned());
            }
            if !own.is_empty() {
                claim(&mut self.quota_by_resource, &mut self.ambiguous, own, quota);
            }
        }
    }

    /// The quota a row is billed to: the quota it names when the plan has it, else the quota
    /// listing its resource id, else its resource name; a name two quotas share is ambiguous.
    pub fn quota_of(&self, row: &TrafficRow) -> Result<&str, Unmatched> {
        if let Some(quota) = row.quota.as_deref()
            && let Some(known) = self.quotas.get(quota)
        {
            return Ok(known);
        }
        let id = row.resource_id.as_deref();
        let name = row.resource_name.as_deref();
        if let Some(quota) = id.and_then(|id| self.quota_by_resource_id.get(id)) {
            return Ok(quota);
        }
        if let Some(quota) = name.and_then(|name| self.quota_by_resource.get(name)) {
            return Ok(quota);
        }
        if [id, name]
            .into_iter()
            .flatten()
            .any(|key| self.ambiguous.contains(key))
        {
            return Err(Unmatched::AmbiguousResource);
        }
        Err(Unmatched::Resource)
    }
}

/// Maps `key` to `quota` unless another quota has it: then neither keeps it.
fn claim(
    map: &mut BTreeMap<String, String>,
    ambiguous: &mut std::collections::BTreeSet<String>,
    key: &str,
    quota: &str,
) {
    if ambiguous.contains(key) {
        return;
    }
    match map.get(key) {
        Some(known) if known != quota => {
            map.remove(key);
            ambiguous.insert(key.to_owned());
        }
        Some(_) => {}
        None => {
            map.insert(key.to_owned(), quota.to_owned());
        }
    }
}

/// Why traffic matched no billing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unmatched {
    /// The subscription is not billed (not linked to a billing subscription).
    Subscription,
    /// No quota of the subscription's plan counts the asset resource.
    Resource,
    /// The resource is named only by an own name that two quotas of the plan list.
    AmbiguousResource,
}

/// Units per (subscription, quota), and what matched nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub units: BTreeMap<(String, String), u64>,
    /// Unmatched units per (subscription, asset resource), with the reason: shown, not billed.
    pub unmatched: BTreeMap<(String, String), (Unmatched, u64)>,
    /// Units whose subscription is not billed.
    pub unmatched_subscription: u64,
    /// Units of a billed subscription on a resource no quota of its plan counts.
    pub unmatched_resource: u64,
    /// Units of a billed subscription on a resource named only ambiguously.
    pub unmatched_ambiguous: u64,
}

impl Aggregate {
    pub fn total(&self) -> u64 {
        self.units.values().sum::<u64>() + self.unmatched_units()
    }

    /// Every unit that matched nothing, whatever the reason.
    pub fn unmatched_units(&self) -> u64 {
        self.unmatched_subscription + self.unmatched_resource + self.unmatched_ambiguous
    }
}

/// Sums rows per (subscription, quota). Nothing is dropped: every unit lands in a pair or in an
/// unmatched count, so the total always equals the traffic. `billed` finds a subscription's
/// billing (a map's `get`, or a directory's lookup).
pub fn aggregate<'a>(
    rows: &[TrafficRow],
    billed: impl Fn(&str) -> Option<&'a BilledSubscription>,
) -> Aggregate {
    let mut result = Aggregate::default();
    for row in rows {
        let matched = billed(&row.subscription_id)
            .ok_or(Unmatched::Subscription)
            .and_then(|sub| sub.quota_of(row));
        match matched {
            Ok(quota) => {
                *result
                    .units
                    .entry((row.subscription_id.clone(), quota.to_owned()))
                    .or_default() += row.units;
            }
            Err(reason) => {
                *match reason {
                    Unmatched::Subscription => &mut result.unmatched_subscription,
                    Unmatched::Resource => &mut result.unmatched_resource,
                    Unmatched::AmbiguousResource => &mut result.unmatched_ambiguous,
                } += row.units;
                result
                    .unmatched
                    .entry((row.subscription_id.clone(), row.resource_label().to_owned()))
                    .or_insert((reason, 0))
                    .1 += row.units;
            }
        }
    }
    result
}

/// What is still to report for a pair and window, given what was already reported: traffic that
/// arrived late is reported once, as the difference. Traffic never shrinks a report (Amplify's
/// counts only grow; a smaller count is a glitch, not a refund).
pub fn to_report(observed: u64, reported: u64) -> u64 {
    observed.saturating_sub(reported)
}

/// How an add-on prices usage, as Recurly's `tier_type` says; it decides what Recurly does with a
/// record dated in a period it already invoiced (reference §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pricing {
    /// `flat`: one price per unit (a "fixed" add-on).
    PerUnit,
    Tiered,
    Volume,
    Stairstep,
}

impl Pricing {
    /// Recurly's `tier_type`; an unknown one is read as volume, the model that takes no
    /// corrections, so a record is never sent where it could be refused.
    pub fn from_tier_type(tier_type: Option<&str>) -> Pricing {
        match tier_type {
            Some("flat") => Pricing::PerUnit,
            Some("tiered") => Pricing::Tiered,
            Some("stairstep") => Pricing::Stairstep,
            _ => Pricing::Volume,
        }
    }

    /// Recurly bills a back-dated record as a usage correction on the next invoice for fixed
    /// and tiered add-ons, and refuses it for volume and stairstep ones (reference §6).
    pub fn takes_corrections(self) -> bool {
        matches!(self, Pricing::PerUnit | Pricing::Tiered)
    }
}

/// A billing subscription's open period as Recurly states it (`current_period_started_at`,
/// `current_period_ends_at`, `trial_ends_at`), epoch ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Period {
    pub start_ms: i64,
    pub end_ms: i64,
    pub trial_ends_ms: Option<i64>,
    /// The open period follows an earlier one (invoiced at its end), so usage dated before
    /// `start_ms` falls in a closed period. False for a subscription's first period.
    pub renewed: bool,
}

/// How one part of a window's units is dated; every part is counted under one of these
/// (`billing_bridge_usage_dated_units_total{how}`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Dated {
    /// The whole window lies in the open period: dated inside it, as always.
    InPeriod,
    /// A part of a window cut at a period boundary, dated inside its own part.
    Split,
    /// Units of a closed period for a volume or stairstep add-on: dated at the open period's
    /// start, so they are billed one period late instead of refused.
    MovedToOpenPeriod,
    /// Units of a closed period for a fixed or tiered add-on: dated where they happened, so
    /// Recurly bills them as a usage correction on the next invoice.
    Correction,
    /// Units of a trial: Recurly never bills usage dated in a trial, so they are not sent.
    Trial,
}

impl Dated {
    pub const ALL: [Dated; 5] = [
        Dated::InPeriod,
        Dated::Split,
        Dated::MovedToOpenPeriod,
        Dated::Correction,
        Dated::Trial,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dated::InPeriod => "in_period",
            Dated::Split => "split",
            Dated::MovedToOpenPeriod => "moved_to_open_period",
            Dated::Correction => "correction",
            Dated::Trial => "trial",
        }
    }

    /// Whether a record is sent to the billing platform at all.
    pub fn is_sent(self) -> bool {
        self != Dated::Trial
    }
}

/// Where a window is cut for a subscription: at the open period's start when the period
/// follows an invoiced one and starts inside the window, or at its end when that lies inside
/// the window (the period ended and the renewal is not seen yet). At most one cut: periods last
/// days, windows at most hours.
pub fn split_point(window: Window, period: &Period) -> Option<i64> {
    let inside = |at: i64| window.start_ms < at && at < window.end_ms;
    if period.renewed && inside(period.start_ms) {
        Some(period.start_ms)
    } else if inside(period.end_ms) {
        Some(period.end_ms)
    } else {
        None
    }
}

/// The parts of a window cut at `at` (the window itself when not cut).
pub fn pieces(window: Window, at: Option<i64>) -> Vec<Window> {
    match at {
        Some(at) if window.start_ms < at && at < window.end_ms => vec![
            Window {
                start_ms: window.start_ms,
                end_ms: at,
            },
            Window {
                start_ms: at,
                end_ms: window.end_ms,
            },
        ],
        _ => vec![window],
    }
}

/// What is still to report for a window cut in two, given the window's traffic, the traffic
/// after the cut, and what was reported for the whole window and for the part after the cut:
/// (before, after). The two always add up to what the whole window still owes, so a window
/// reported first uncut, or the part before a cut reported early, never counts a unit twice.
pub fn allocate(
    observed_total: u64,
    observed_after: u64,
    reported_total: u64,
    reported_after: u64,
) -> (u64, u64) {
    let owed = to_report(observed_total, reported_total);
    let after = owed.min(to_report(observed_after, reported_after));
    (owed - after, after)
}

/// The usage date of one part of a window, and how it was chosen (see [`Dated`]). `cut` says
/// whether the window was cut at a period boundary.
pub fn date_part(
    part: Window,
    cut: bool,
    period: &Period,
    pricing: Pricing,
    now_ms: i64,
    skew_ms: i64,
) -> (i64, Dated) {
    let in_window = usage_timestamp_ms(part, now_ms, skew_ms);
    if period.trial_ends_ms.is_some_and(|t| part.end_ms <= t) {
        return (in_window, Dated::Trial);
    }
    let dated_in_window = if cut { Dated::Split } else { Dated::InPeriod };
    if part.end_ms <= period.start_ms {
        if !period.renewed {
            // Before a subscription's first period nothing was invoiced: dated as it happened.
            return (in_window, dated_in_window);
        }
        if pricing.takes_corrections() {
            return (in_window, Dated::Correction);
        }
        return (period.start_ms, Dated::MovedToOpenPeriod);
    }
    // A part reaching from a closed period into the open one (a window not cut: pushed traffic
    // is counted per window) is dated whole in the open period: a window ending less than a
    // second after the renewal would otherwise be dated before it.
    let at = if period.renewed {
        in_window.max(period.start_ms)
    } else {
        in_window
    };
    (at, dated_in_window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn only_closed_windows_past_the_delay_are_reported_oldest_first_and_bounded() {
        let now = 10 * HOUR + 10 * 60_000; // 10:10
        let delay = 15 * 60_000;
        // 09:00-10:00 is closed but within the 15-minute delay at 10:10.
        assert_eq!(
            closed_windows(Some(8 * HOUR), now, HOUR, delay, 10),
            vec![Window {
                start_ms: 8 * HOUR,
                end_ms: 9 * HOUR
            }]
        );
        assert_eq!(closed_windows(Some(9 * HOUR), now, HOUR, delay, 10), vec![]);
        let caught_up = closed_windows(Some(0), now, HOUR, delay, 3);
        assert_eq!(
            caught_up.len(),
            3,
            "a long outage is caught up a bounded amount per run"
        );
        assert_eq!(caught_up[0].start_ms, 0);
        assert_eq!(caught_up[2].end_ms, 3 * HOUR);
        // No watermark yet: start with the last window that is ready.
        assert_eq!(
            closed_windows(None, now, HOUR, delay, 10),
            vec![Window {
                start_ms: 8 * HOUR,
                end_ms: 9 * HOUR
            }]
        );
    }

    #[test]
    fn keys_and_tags_name_the_window_and_the_report() {
        let w = Window {
            start_ms: 0,
            end_ms: HOUR,
        };
        assert_eq!(usage_key("s1", "a1", w, 0), usage_key("s1", "a1", w, 0));
        assert_ne!(usage_key("s1", "a1", w, 0), usage_key("s1", "a1", w, 1));
        assert_ne!(
            usage_key("s1", "a1", w, 0),
            usage_key("s1", "a1", w.next(), 0)
        );
        assert_eq!(
            merchant_tag(w, "sub-9", 0),
            "amplify:sub-9 window:0-3600000"
        );
        assert_eq!(
            merchant_tag(w, "sub-9", 2),
            "amplify:sub-9 window:0-3600000 late#2"
        );
    }

    fn listed(quota: &str, names: &[(&str, Option<&str>)]) -> (String, Vec<QuotaResource>) {
        (
            quota.to_owned(),
            names
                .iter()
                .map(|(name, id)| QuotaResource {
                    listed: (*name).to_owned(),
                    id: id.map(str::to_owned),
                })
                .collect(),
        )
    }

    fn plan(quotas: &[(String, Vec<QuotaResource>)]) -> BilledSubscription {
        let mut plan = BilledSubscription::default();
        for (quota, resources) in quotas {
            plan.add_quota(quota, resources);
        }
        plan
    }

    fn row(quota: Option<&str>, id: Option<&str>, name: Option<&str>) -> TrafficRow {
        TrafficRow {
            subscription_id: "s".into(),
            resource_id: id.map(str::to_owned),
            resource_name: name.map(str::to_owned),
            quota: quota.map(str::to_owned),
            units: 1,
        }
    }

    #[test]
    fn a_row_naming_a_quota_of_the_plan_is_counted_there_and_any_other_by_its_resource() {
        let billed = plan(&[
            listed("q0", &[("api/r0", None)]),
            listed("q1", &[("api/r1", None)]),
        ]);
        let rows = [
            row(Some("q1"), None, Some("api/r0")),
            row(Some("elsewhere"), None, Some("api/r0")),
            row(None, None, Some("api/r1")),
            row(Some("elsewhere"), None, Some("api/r9")),
        ];
        let got = aggregate(&rows, |_| Some(&billed));
        assert_eq!(got.units[&("s".to_owned(), "q1".to_owned())], 2);
        assert_eq!(got.units[&("s".to_owned(), "q0".to_owned())], 1);
        assert_eq!(got.unmatched_resource, 1);
    }

    #[test]
    fn resources_are_found_by_id_then_listed_name_then_own_name() {
        // Two assets each have a resource "list"; "get" is listed once.
        let billed = plan(&[
            listed(
                "q-pets",
                &[("pets/list", Some("id-pl")), ("pets/get", None)],
            ),
            listed("q-stores", &[("stores/list", Some("id-sl"))]),
        ]);
        let quota = |r: TrafficRow| billed.quota_of(&r).map(str::to_owned);
        // The id decides, whatever the name says.
        assert_eq!(
            quota(row(None, Some("id-sl"), Some("list"))),
            Ok("q-stores".into())
        );
        assert_eq!(quota(row(None, Some("id-pl"), None)), Ok("q-pets".into()));
        // As the quota lists it, or by an own name one quota alone lists.
        assert_eq!(
            quota(row(None, None, Some("stores/list"))),
            Ok("q-stores".into())
        );
        assert_eq!(
            quota(row(None, Some("id-unknown"), Some("get"))),
            Ok("q-pets".into())
        );
        // An own name two quotas list is never guessed.
        assert_eq!(
            quota(row(None, None, Some("list"))),
            Err(Unmatched::AmbiguousResource)
        );
        assert_eq!(
            quota(row(None, Some("id-unknown"), Some("list"))),
            Err(Unmatched::AmbiguousResource)
        );
        assert_eq!(
            quota(row(None, Some("id-x"), Some("put"))),
            Err(Unmatched::Resource)
        );
        assert_eq!(quota(row(None, None, None)), Err(Unmatched::Resource));
        // A quota id of the plan wins even over an ambiguous name.
        assert_eq!(
            quota(row(Some("q-stores"), None, Some("list"))),
            Ok("q-stores".into())
        );
        // Two resources of one quota sharing an own name are not ambiguous.
        let one = plan(&[listed("q", &[("a/list", None), ("b/list", None)])]);
        assert_eq!(one.quota_of(&row(None, None, Some("list"))), Ok("q"));
    }

    #[test]
    fn ambiguous_units_are_unmatched_and_listed_with_their_reason() {
        let billed = plan(&[
            listed("q1", &[("pets/list", None)]),
            listed("q2", &[("stores/list", None)]),
        ]);
        let mut ambiguous = row(None, None, Some("list"));
        ambiguous.units = 12;
        let got = aggregate(&[ambiguous, row(None, None, Some("pets/list"))], |_| {
            Some(&billed)
        });
        assert_eq!(got.unmatched_ambiguous, 12);
        assert_eq!(got.unmatched_resource, 0);
        assert_eq!(
            got.unmatched[&("s".to_owned(), "list".to_owned())],
            (Unmatched::AmbiguousResource, 12)
        );
        assert_eq!(got.total(), 13);
    }

    fn period(start: i64, end: i64, renewed: bool) -> Period {
        Period {
            start_ms: start,
            end_ms: end,
            trial_ends_ms: None,
            renewed,
        }
    }

    #[test]
    fn a_window_is_cut_at_a_renewal_or_at_an_end_not_yet_renewed() {
        let w = Window {
            start_ms: 10 * HOUR,
            end_ms: 11 * HOUR,
        };
        let half = 10 * HOUR + HOUR / 2;
        assert_eq!(split_point(w, &period(half, 100 * HOUR, true)), Some(half));
        // A first period has no invoiced period before it: nothing to cut.
        assert_eq!(split_point(w, &period(half, 100 * HOUR, false)), None);
        assert_eq!(split_point(w, &period(0, half, false)), Some(half));
        assert_eq!(split_point(w, &period(10 * HOUR, 11 * HOUR, true)), None);
        assert_eq!(
            pieces(w, Some(half)),
            vec![
                Window {
                    start_ms: 10 * HOUR,
                    end_ms: half
                },
                Window {
                    start_ms: half,
                    end_ms: 11 * HOUR
                }
            ]
        );
        assert_eq!(pieces(w, None), vec![w]);
        assert_eq!(pieces(w, Some(10 * HOUR)), vec![w]);
    }

    #[test]
    fn units_of_a_closed_period_are_corrected_or_moved_by_pricing_and_trials_are_not_sent() {
        let renewal = 100 * HOUR;
        let open = period(renewal, 200 * HOUR, true);
        let now = renewal + 2 * HOUR;
        let before = Window {
            start_ms: renewal - HOUR,
            end_ms: renewal,
        };
        let after = Window {
            start_ms: renewal,
            end_ms: renewal + HOUR,
        };
        for pricing in [Pricing::PerUnit, Pricing::Tiered] {
            assert_eq!(
                date_part(before, true, &open, pricing, now, 60_000),
                (renewal - 1_000, Dated::Correction)
            );
        }
        for pricing in [Pricing::Volume, Pricing::Stairstep] {
            assert_eq!(
                date_part(before, true, &open, pricing, now, 60_000),
                (renewal, Dated::MovedToOpenPeriod)
            );
        }
        assert_eq!(
            date_part(after, true, &open, Pricing::Volume, now, 60_000),
            (renewal + HOUR - 1_000, Dated::Split)
        );
        assert_eq!(
            date_part(after, false, &open, Pricing::Volume, now, 60_000).1,
            Dated::InPeriod
        );
        let trial = Period {
            trial_ends_ms: Some(renewal),
            ..open
        };
        assert_eq!(
            date_part(before, true, &trial, Pricing::Tiered, now, 60_000).1,
            Dated::Trial
        );
        assert!(!Dated::Trial.is_sent() && Dated::Correction.is_sent());
        // Traffic before a subscription's first period: nothing was invoiced, dated as it was.
        let first = period(renewal, 200 * HOUR, false);
        assert_eq!(
            date_part(before, false, &first, Pricing::Volume, now, 60_000),
            (renewal - 1_000, Dated::InPeriod)
        );
        assert_eq!(Pricing::from_tier_type(Some("flat")), Pricing::PerUnit);
        assert_eq!(Pricing::from_tier_type(None), Pricing::Volume);
    }

    #[test]
    fn a_volume_record_refused_after_a_renewal_is_redated_to_the_open_period() {
        let open = period(100 * HOUR, 200 * HOUR, true);
        let before = 100 * HOUR - 1_000;
        assert_eq!(
            redated_after_renewal(before, &open, Pricing::Volume),
            Some(100 * HOUR)
        );
        assert_eq!(redated_after_renewal(before, &open, Pricing::Tiered), None);
        assert_eq!(
            redated_after_renewal(100 * HOUR, &open, Pricing::Stairstep),
            None
        );
        let first = period(100 * HOUR, 200 * HOUR, false);
        assert_eq!(redated_after_renewal(before, &first, Pricing::Volume), None);
        let w = Window {
            start_ms: 0,
            end_ms: HOUR,
        };
        assert_ne!(moved_usage_key("s", "a", w, 0), usage_key("s", "a", w, 0));
        assert_eq!(
            moved_usage_key("s", "a", w, 0),
            moved_usage_key("s", "a", w, 0)
        );
    }

    #[test]
    fn a_window_ending_within_a_second_after_a_renewal_is_dated_in_the_open_period() {
        // Not cut (pushed traffic): a record dated a second before the window's end would fall
        // before the renewal, in the invoiced period, and a volume add-on would refuse it.
        let open = period(1_000_000, 11_000_000, true);
        let part = Window {
            start_ms: 1_000_000 - 3_514,
            end_ms: 1_000_001,
        };
        for pricing in [Pricing::Volume, Pricing::Tiered] {
            let (at, how) = date_part(part, false, &open, pricing, 2_000_000, 60_000);
            assert_eq!((at, how), (1_000_000, Dated::InPeriod), "{pricing:?}");
        }
        // A first period: nothing before it was invoiced; dated as it happened.
        let first = period(1_000_000, 11_000_000, false);
        let (at, _) = date_part(part, false, &first, Pricing::Volume, 2_000_000, 60_000);
        assert_eq!(at, 1_000_001 - 1_000);
    }

    #[test]
    fn an_early_report_of_the_part_before_a_cut_is_not_counted_again() {
        // 40 units before the cut were reported as soon as the period ended; the window closed
        // with 100 units, 55 of them after the cut (5 before it arrived late).
        assert_eq!(allocate(100, 55, 40, 0), (5, 55));
        // Reported whole before the cut was known: nothing more.
        assert_eq!(allocate(100, 55, 100, 0), (0, 0));
        // Late traffic after the cut.
        assert_eq!(allocate(110, 65, 100, 55), (0, 10));
    }

    proptest! {
        #[test]
        fn the_parts_of_a_cut_window_sum_to_its_units(
            start in 0i64..1_000, len in 2i64..10_000, cut in 0i64..12_000,
            events in prop::collection::vec(0i64..10_000, 0..300),
        ) {
            let w = Window { start_ms: start, end_ms: start + len };
            let at: Vec<i64> = events.iter().map(|e| start + e % len).collect();
            let parts = pieces(w, Some(start + cut % (len + 2) - 1));
            prop_assert_eq!(parts.first().unwrap().start_ms, w.start_ms);
            prop_assert_eq!(parts.last().unwrap().end_ms, w.end_ms);
            let counted: usize = parts
                .iter()
                .map(|p| at.iter().filter(|t| p.start_ms <= **t && **t < p.end_ms).count())
                .sum();
            prop_assert_eq!(counted, at.len());
        }

        #[test]
        fn reporting_a_cut_window_in_steps_adds_up_to_its_units(
            steps in prop::collection::vec((0u64..500, 0u64..500), 1..8),
            early in 0u64..500,
        ) {
            // Before the window closes only the part before the cut is seen (early); then the
            // window's count grows, before and after the cut, as late traffic arrives.
            let (mut before, mut after) = (early, 0u64);
            let (mut reported_before, mut reported_after) = allocate(early, 0, 0, 0);
            prop_assert_eq!(reported_before, early);
            for (more_before, more_after) in steps {
                before += more_before;
                after += more_after;
                let (b, a) = allocate(before + after, after, reported_before + reported_after, reported_after);
                reported_before += b;
                reported_after += a;
                prop_assert_eq!(reported_before + reported_after, before + after);
            }
        }

        #[test]
        fn a_part_is_never_dated_in_the_future_nor_in_a_closed_period_unless_corrected(
            renewal in 1_000_000i64..2_000_000, offset in -500_000i64..500_000, len in 1_000i64..100_000,
            late in 0i64..1_000_000, pricing in 0usize..4, renewed: bool,
        ) {
            let pricing = [Pricing::PerUnit, Pricing::Tiered, Pricing::Volume, Pricing::Stairstep][pricing];
            let open = period(renewal, renewal + 10_000_000, renewed);
            let part = Window { start_ms: renewal + offset, end_ms: renewal + offset + len };
            let now = part.end_ms.max(renewal) + 60_000 + late;
            let (at, how) = date_part(part, false, &open, pricing, now, 60_000);
            prop_assert!(at <= now - 60_000 || at == renewal);
            match how {
                Dated::Correction => prop_assert!(pricing.takes_corrections() && at < renewal),
                Dated::MovedToOpenPeriod => prop_assert_eq!(at, renewal),
                _ => prop_assert!((at >= renewal || !renewed) && at >= part.start_ms && at < part.end_ms),
            }
        }

        #[test]
        fn usage_is_dated_inside_its_window_and_never_in_the_future(start in 0i64..1_000_000, len in 2_000i64..10_000_000, now_offset in 0i64..20_000_000, skew in 0i64..120_000) {
            let w = Window { start_ms: start * 1_000, end_ms: start * 1_000 + len };
            let now = w.start_ms + now_offset;
            let at = usage_timestamp_ms(w, now, skew);
            prop_assert!(at >= w.start_ms && at < w.end_ms);
            prop_assert!(at <= (now - skew).max(w.start_ms));
        }

        #[test]
        fn aggregation_loses_no_unit(rows in prop::collection::vec((0u8..6, 0u8..5, 0u64..1_000), 0..200)) {
            // Subscriptions 0..3 are billed, with resources 0..3 each counted by a quota.
            // Resource 4 is listed by two quotas under two assets: ambiguous by its own name.
            let billed: BTreeMap<String, BilledSubscription> = (0..3u8)
                .map(|s| (format!("s{s}"), plan(&[
                    listed("q0", &[("a/r0", None), ("a/r2", None), ("a/r4", None)]),
                    listed("q1", &[("a/r1", None), ("b/r4", None)]),
                ])))
                .collect();
            let rows: Vec<TrafficRow> = rows.iter()
                .map(|(s, r, u)| TrafficRow { subscription_id: format!("s{s}"), resource_name: Some(format!("r{r}")), units: *u, ..TrafficRow::default() })
                .collect();
            let aggregate = aggregate(&rows, |s| billed.get(s));
            prop_assert_eq!(aggregate.total(), rows.iter().map(|r| r.units).sum::<u64>());
            let shown: u64 = aggregate.unmatched.values().map(|(_, u)| u).sum();
            prop_assert_eq!(shown, aggregate.unmatched_units());
        }

        #[test]
        fn reporting_deltas_adds_up_to_the_final_count(counts in prop::collection::vec(0u64..1_000, 1..8)) {
            // Successive observations of a window's growing count (late traffic keeps arriving).
            let mut observed = 0;
            let mut reported = 0;
            for more in counts {
                observed += more;
                reported += to_report(observed, reported);
            }
            prop_assert_eq!(reported, observed);
        }
    }
}
