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
    idempotency_key(
        "usage",
        &[
            billing_subscription,
            add_on_code,
            &window.start_ms.to_string(),
            &window.end_ms.to_string(),
            &report.to_string(),
        ],
    )
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficRow {
    pub subscription_id: String,
    pub asset_resource: String,
    /// The quota the traffic names itself (raw transactions carry `quota.id`); when it is one
    /// of the subscription's plan's quotas it wins over the asset resource.
    pub quota: Option<String>,
    pub units: u64,
}

/// Where a subscription's traffic is billed: for each asset resource, the quota that counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BilledSubscription {
    pub quota_by_resource: BTreeMap<String, String>,
}

/// Why traffic matched no billing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unmatched {
    /// The subscription is not billed (not linked to a billing subscription).
    Subscription,
    /// No quota of the subscription's plan counts the asset resource.
    Resource,
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
}

impl Aggregate {
    pub fn total(&self) -> u64 {
        self.units.values().sum::<u64>() + self.unmatched_subscription + self.unmatched_resource
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
        match billed(&row.subscription_id) {
            None => {
                result.unmatched_subscription += row.units;
                result
                    .unmatched
                    .entry((row.subscription_id.clone(), row.asset_resource.clone()))
                    .or_insert((Unmatched::Subscription, 0))
                    .1 += row.units;
            }
            Some(sub) => match row
                .quota
                .as_ref()
                .filter(|q| sub.quota_by_resource.values().any(|known| known == *q))
                .or_else(|| sub.quota_by_resource.get(&row.asset_resource))
            {
                None => {
                    result.unmatched_resource += row.units;
                    result
                        .unmatched
                        .entry((row.subscription_id.clone(), row.asset_resource.clone()))
                        .or_insert((Unmatched::Resource, 0))
                        .1 += row.units;
                }
                Some(quota) => {
                    *result
                        .units
                        .entry((row.subscription_id.clone(), quota.clone()))
                        .or_default() += row.units;
                }
            },
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

    #[test]
    fn a_row_naming_a_quota_of_the_plan_is_counted_there_and_any_other_by_its_resource() {
        let billed = BilledSubscription {
            quota_by_resource: [
                ("r0".to_owned(), "q0".to_owned()),
                ("r1".to_owned(), "q1".to_owned()),
            ]
            .into_iter()
            .collect(),
        };
        let row = |quota: Option<&str>, resource: &str| TrafficRow {
            subscription_id: "s".into(),
            asset_resource: resource.into(),
            quota: quota.map(str::to_owned),
            units: 1,
        };
        let rows = [
            row(Some("q1"), "r0"),
            row(Some("elsewhere"), "r0"),
            row(None, "r1"),
            row(Some("elsewhere"), "r9"),
        ];
        let got = aggregate(&rows, |_| Some(&billed));
        assert_eq!(got.units[&("s".to_owned(), "q1".to_owned())], 2);
        assert_eq!(got.units[&("s".to_owned(), "q0".to_owned())], 1);
        assert_eq!(got.unmatched_resource, 1);
    }

    proptest! {
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
            let billed: BTreeMap<String, BilledSubscription> = (0..3u8)
                .map(|s| (format!("s{s}"), BilledSubscription {
                    quota_by_resource: (0..3u8).map(|r| (format!("r{r}"), format!("q{}", r % 2))).collect(),
                }))
                .collect();
            let rows: Vec<TrafficRow> = rows.iter()
                .map(|(s, r, u)| TrafficRow { subscription_id: format!("s{s}"), asset_resource: format!("r{r}"), quota: None, units: *u })
                .collect();
            let aggregate = aggregate(&rows, |s| billed.get(s));
            prop_assert_eq!(aggregate.total(), rows.iter().map(|r| r.units).sum::<u64>());
            let listed: u64 = aggregate.unmatched.values().map(|(_, u)| u).sum();
            prop_assert_eq!(listed, aggregate.unmatched_subscription + aggregate.unmatched_resource);
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
