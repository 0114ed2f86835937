//! The UsageReporter's work for one window: compare what the traffic says with what the ledger
//! holds, write the new reports as intents (durably) before sending them, send every unsettled
//! report under its deterministic `Idempotency-Key`, and settle what Recurly acknowledged. A
//! report is only ever the difference between the traffic and what was reported before, so a
//! window run twice, a crashed run resumed, or late traffic re-polled never counts a unit twice.

use std::collections::BTreeMap;

use billing_bridge_billing::recurly::{NewUsage, RecurlyError};
use billing_bridge_domain::codes::usage_add_on_code;
use billing_bridge_domain::usage::{
    Aggregate, Dated, Window, allocate, date_part, merchant_tag, moved_usage_key, pieces,
    redated_after_renewal, to_report, usage_key, usage_timestamp_ms,
};
use billing_bridge_notify::{ProviderCard, Tone};
use billing_bridge_store::Lease;
use billing_bridge_store::ledger::{Intent, Pair, Report, ReportState, Settled, WindowLedger};
use billing_bridge_upstream::Transient;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;

use super::directory::Directory;
use super::{PairLine, PartLine, RunError, UnmatchedLine, WindowSummary};
use crate::Bridge;
use crate::metrics::{UnmatchedReason, UsageRecordOutcome};
use crate::notices::{Notice, Notices};
use crate::periods::Billing;

/// Usage dates stay this far behind the clock: Recurly refuses usage in the future (§6).
pub const CLOCK_SKEW_MS: i64 = 60_000;
/// Settlements are written in batches of this many.
const SETTLE_BATCH: usize = 512;

/// What the traffic of a window comes to, per billing pair.
#[derive(Debug, Default)]
pub struct WindowUsage {
    /// (Recurly subscription, add-on) → (Amplify subscription, units observed).
    pub pairs: BTreeMap<Pair, (String, u64)>,
    pub aggregate: Aggregate,
}

/// Maps the aggregate of (Amplify subscription, quota) onto billing pairs.
pub fn window_usage(aggregate: Aggregate, directory: &Directory) -> WindowUsage {
    let mut pairs: BTreeMap<Pair, (String, u64)> = BTreeMap::new();
    for ((amplify, quota), units) in &aggregate.units {
        // A quota whose id makes no valid add-on code was never provisioned, so nothing bills it.
        if let (Some(billed), Ok(add_on)) = (directory.get(amplify), usage_add_on_code(quota)) {
            let entry = pairs
                .entry((billed.recurly_subscription.clone(), add_on))
                .or_insert_with(|| (amplify.clone(), 0));
            entry.1 += units;
        }
    }
    WindowUsage { pairs, aggregate }
}

#[derive(Clone, Debug, Serialize)]
struct Send {
    pair: Pair,
    report: Report,
    /// Written in an earlier run (a crash or an outage came between).
    resumed: bool,
}

enum Sent {
    Acked,
    /// Refused as dated in a period Recurly renewed meanwhile, then taken re-dated into the
    /// open period.
    AckedMoved,
    /// A trial's units: Recurly never bills usage dated in a trial, so nothing is sent.
    Trial,
    Skipped,
    /// Recurly refused it for a reason only a person can fix: it stays pending (sent again
    /// every run) and the provider is told once.
    Refused(String),
    Failed(String),
}

fn is_refusal(e: &RecurlyError) -> bool {
    matches!(e, RecurlyError::Api { status, .. } if (400..500).contains(status))
        && !e.is_transient()
}

/// Sends one report; a refusal is checked against the subscription's state: an ended
/// subscription is skipped, anything else stays pending and is reported as failed.
async fn send(bridge: &Bridge, window: Window, s: &Send) -> Sent {
    if s.report.how == Some(Dated::Trial) {
        return Sent::Trial;
    }
    let (subscription, add_on) = &s.pair;
    let key = usage_key(subscription, add_on, window, s.report.report);
    let usage = NewUsage {
        amount: s.report.amount,
        usage_timestamp: DateTime::<Utc>::from_timestamp_millis(s.report.usage_ms)
            .unwrap_or_else(Utc::now),
        merchant_tag: merchant_tag(window, &s.report.amplify_subscription, s.report.report),
    };
    if s.resumed {
        let age_ms = bridge.clock.now_ms() - s.report.created_ms;
        let trust_ms = bridge.config.reporting.trust_idempotency_for.as_millis() as i64;
        if age_ms > trust_ms {
            // The idempotency key may have expired at Recurly: look before sending again.
            match bridge.recurly.usage(subscription, add_on).await {
                Ok(records) => {
                    if records
                        .iter()
                        .any(|r| r.merchant_tag.as_deref() == Some(usage.merchant_tag.as_str()))
                    {
                        return Sent::Acked;
                    }
                }
                Err(e) => return Sent::Failed(e.to_string()),
            }
        }
    }
    match bridge
        .recurly
        .create_usage(subscription, add_on, &usage, &key)
        .await
    {
        Ok(_) => Sent::Acked,
        Err(e) if is_refusal(&e) => match bridge.recurly.subscription(subscription).await {
            Ok(None) => Sent::Skipped,
            Ok(Some(sub)) if matches!(sub.state.as_str(), "expired" | "failed") => Sent::Skipped,
            Ok(Some(sub)) => {
                // The period may have renewed between reading it and sending: a volume or
                // stairstep record dated before the renewal is then re-dated, never refused.
                let billing = bridge.periods.keep(&sub, bridge.clock.now_ms());
                let redated = billing.period.and_then(|p| {
                    redated_after_renewal(s.report.usage_ms, &p, billing.pricing_of(add_on))
                });
                let Some(at) = redated else {
                    return Sent::Refused(e.to_string());
                };
                let moved = NewUsage {
                    usage_timestamp: DateTime::<Utc>::from_timestamp_millis(at)
                        .unwrap_or(usage.usage_timestamp),
                    ..usage
                };
                let key = moved_usage_key(subscription, add_on, window, s.report.report);
                match bridge
                    .recurly
                    .create_usage(subscription, add_on, &moved, &key)
                    .await
                {
                    Ok(_) => Sent::AckedMoved,
                    Err(again) if is_refusal(&again) => Sent::Refused(again.to_string()),
                    Err(again) => Sent::Failed(again.to_string()),
                }
            }
            Err(lookup) => Sent::Failed(format!("{e}; then {lookup}")),
        },
        Err(e) => Sent::Failed(e.to_string()),
    }
}

fn refused_card(amplify_name: &str, pair: &Pair, error: &str) -> ProviderCard {
    ProviderCard {
        title: format!("Usage refused by Recurly: {amplify_name}"),
        tone: Tone::Attention,
        text: format!(
            "Recurly refused a usage record, so this window's usage is not billed yet and later windows wait. Every run sends it again until Recurly takes it. {error}"
        ),
        facts: vec![
            ("Recurly subscription".into(), pair.0.clone()),
            ("Add-on".into(), pair.1.clone()),
        ],
        link: None,
    }
}

fn skipped_card(amplify_name: &str, title: &str, recurly: &str) -> ProviderCard {
    ProviderCard {
        // Named as the other subscription cards are: by the resource name.
        title: format!("Usage not billed: {amplify_name}"),
        tone: Tone::Attention,
        text: "The Recurly subscription of this Amplify subscription has ended, so its API traffic is no longer reported as usage. If the consumer still calls the API, check the subscription in Amplify and Recurly.".into(),
        facts: vec![
            ("Amplify subscription".into(), format!("{title} ({amplify_name})")),
            ("Recurly subscription".into(), recurly.to_owned()),
        ],
        link: None,
    }
}

/// A window to report: its traffic and what the ledger holds of it.
pub struct Due<'a> {
    pub window: Window,
    pub usage: &'a WindowUsage,
    pub ledger: WindowLedger,
    pub dating: &'a Dating,
}

/// How a window's units are dated, per Recurly subscription: its billing (period, trial,
/// pricing), where the window is cut for it, and the traffic after the cut per pair.
#[derive(Debug, Default)]
pub struct Dating {
    pub billing: BTreeMap<String, std::sync::Arc<Billing>>,
    pub cuts: BTreeMap<String, i64>,
    pub after: BTreeMap<Pair, u64>,
    /// Only the part before each cut is reported (the window is still open: its renewal has
    /// passed, the rest of it has not).
    pub before_only: bool,
}

/// One part of a pair's window to report: (the part, units, `from_ms`).
fn parts_of(
    window: Window,
    pair: &Pair,
    observed: u64,
    ledger: &WindowLedger,
    dating: &Dating,
) -> Vec<(Window, u64, Option<i64>)> {
    let reported = ledger.reported(pair);
    match dating.cuts.get(&pair.0) {
        None => vec![(window, to_report(observed, reported), None)],
        Some(&cut) => {
            let split = pieces(window, Some(cut));
            if dating.before_only {
                return vec![(split[0], to_report(observed, reported), None)];
            }
            let after_observed = dating.after.get(pair).copied().unwrap_or(0).min(observed);
            let (before, after) = allocate(
                observed,
                after_observed,
                reported,
                ledger.reported_from(pair, cut),
            );
            vec![(split[0], before, None), (split[1], after, Some(cut))]
        }
    }
}

/// Reports one window. With `lease` `None` (a dry run) nothing is written or sent.
pub async fn report_window(
    bridge: &Bridge,
    notices: &Notices,
    directory: &Directory,
    lease: Option<&Lease>,
    due: Due<'_>,
    summary: &mut WindowSummary,
) -> Result<(), RunError> {
    let Due {
        window,
        usage,
        ledger,
        dating,
    } = due;
    let now = bridge.clock.now_ms();
    let dry_run = lease.is_none();
    summary.unmatched_units = usage.aggregate.unmatched_units();
    // Counted once per window: re-polls and backfills of a reported window see the same rows.
    if !dry_run && !summary.repoll {
        bridge.metrics.unmatched(
            UnmatchedReason::Subscription,
            usage.aggregate.unmatched_subscription,
        );
        bridge.metrics.unmatched(
            UnmatchedReason::Resource,
            usage.aggregate.unmatched_resource,
        );
        bridge.metrics.unmatched(
            UnmatchedReason::AmbiguousResource,
            usage.aggregate.unmatched_ambiguous,
        );
    }
    if ledger.pruned {
        summary.complete = true;
        summary.note =
            Some("reported long ago; its details were pruned, so it is not polled again".into());
        return Ok(());
    }
    let mut sends: Vec<Send> = ledger
        .pending()
        .map(|(pair, report)| Send {
            pair: pair.clone(),
            report: report.clone(),
            resumed: true,
        })
        .collect();
    let mut intents = Vec::new();
    let mut next_report: BTreeMap<&Pair, u32> = BTreeMap::new();
    for (pair, (amplify, observed)) in &usage.pairs {
        let reported = ledger.reported(pair);
        let billing = dating.billing.get(&pair.0);
        let cut = dating.cuts.contains_key(&pair.0);
        let mut line = PairLine {
            amplify_subscription: amplify.clone(),
            recurly_subscription: pair.0.clone(),
            add_on: pair.1.clone(),
            observed: *observed,
            reported,
            to_report: 0,
            parts: Vec::new(),
        };
        for (part, amount, from_ms) in parts_of(window, pair, *observed, &ledger, dating) {
            if amount == 0 {
                continue;
            }
            let (usage_ms, how) = match billing.and_then(|b| b.period.as_ref()) {
                Some(period) => date_part(
                    part,
                    cut,
                    period,
                    billing.map(|b| b.pricing_of(&pair.1)).unwrap_or_else(|| {
                        billing_bridge_domain::usage::Pricing::from_tier_type(None)
                    }),
                    now,
                    CLOCK_SKEW_MS,
                ),
                None => (
                    usage_timestamp_ms(window, now, CLOCK_SKEW_MS),
                    Dated::InPeriod,
                ),
            };
            line.to_report += amount;
            line.parts.push(PartLine {
                from: super::rfc3339(part.start_ms),
                to: super::rfc3339(part.end_ms),
                units: amount,
                usage_timestamp: super::rfc3339(usage_ms),
                how: how.as_str(),
            });
            let number = next_report
                .entry(pair)
                .or_insert_with(|| ledger.next_report(pair));
            let report = Report {
                report: *number,
                amount,
                usage_ms,
                created_ms: now,
                amplify_subscription: amplify.clone(),
                state: ReportState::Pending,
                from_ms,
                how: Some(how),
            };
            *number += 1;
            intents.push(Intent {
                pair: pair.clone(),
                report: report.clone(),
            });
            sends.push(Send {
                pair: pair.clone(),
                report,
                resumed: false,
            });
        }
        if dry_run {
            summary.pairs.push(line);
        }
    }
    if dry_run {
        for ((subscription, resource), (reason, units)) in &usage.aggregate.unmatched {
            summary.unmatched.push(UnmatchedLine {
                subscription_id: subscription.clone(),
                asset_resource: resource.clone(),
                units: *units,
                reason: UnmatchedReason::from(*reason).as_str(),
            });
        }
        let sent = sends.iter().filter(|s| s.report.how != Some(Dated::Trial));
        summary.records = sent.clone().count();
        summary.units = sent.map(|s| s.report.amount).sum();
        summary.trial_units = sends
            .iter()
            .filter(|s| s.report.how == Some(Dated::Trial))
            .map(|s| s.report.amount)
            .sum();
        summary.complete = true;
        return Ok(());
    }
    let lease = lease.expect("not a dry run");
    if !intents.is_empty() {
        bridge.store.record_intents(lease, window, intents).await?;
    }
    let concurrency = bridge.config.reporting.concurrency.max(1);
    let mut results = futures_util::stream::iter(sends.iter())
        .map(|s| async move { (s, send(bridge, window, s).await) })
        .buffer_unordered(concurrency);
    let mut settled = Vec::new();
    let mut failed = 0usize;
    let mut first_error = None;
    let ttl = bridge.config.reporting.lease_ttl;
    let mut extended = std::time::Instant::now();
    while let Some((s, outcome)) = results.next().await {
        if extended.elapsed() > ttl / 3 {
            bridge.store.extend_lease(lease, ttl).await?;
            extended = std::time::Instant::now();
        }
        let state = match outcome {
            Sent::Acked | Sent::AckedMoved => {
                summary.records += 1;
                summary.units += s.report.amount;
                bridge.metrics.usage_units_reported.inc_by(s.report.amount);
                bridge.metrics.usage_record(UsageRecordOutcome::Created);
                let how = match outcome {
                    Sent::AckedMoved => Some(Dated::MovedToOpenPeriod),
                    _ => s.report.how,
                };
                if let Some(how) = how {
                    bridge.metrics.dated(how, s.report.amount);
                }
                ReportState::Acked
            }
            Sent::Trial => {
                summary.trial_units += s.report.amount;
                bridge.metrics.dated(Dated::Trial, s.report.amount);
                ReportState::Skipped
            }
            Sent::Skipped => {
                summary.skipped_units += s.report.amount;
                bridge.metrics.usage_skipped_units.inc_by(s.report.amount);
                bridge.metrics.usage_record(UsageRecordOutcome::Skipped);
                if bridge
                    .store
                    .first_time(&format!("usage-skipped:{}", s.pair.0))
                    .await
                    .unwrap_or(false)
                {
                    let billed = directory.get(&s.report.amplify_subscription);
                    let name =
                        billed.map_or(s.report.amplify_subscription.as_str(), |b| b.name.as_str());
                    let title = billed.map_or(name, |b| b.title.as_str());
                    notices
                        .notify(Notice::Provider(skipped_card(name, title, &s.pair.0)))
                        .await;
                }
                ReportState::Skipped
            }
            Sent::Refused(error) => {
                failed += 1;
                bridge.metrics.usage_record(UsageRecordOutcome::Failed);
                bridge.metrics.usage_refused_units.inc_by(s.report.amount);
                tracing::warn!(subscription = %s.pair.0, add_on = %s.pair.1, window = window.start_ms, %error, "usage record refused by Recurly");
                if bridge
                    .store
                    .first_time(&format!("usage-refused:{}:{}", s.pair.0, s.pair.1))
                    .await
                    .unwrap_or(false)
                {
                    let name = directory
                        .get(&s.report.amplify_subscription)
                        .map_or(s.report.amplify_subscription.as_str(), |b| b.name.as_str());
                    notices
                        .notify(Notice::Provider(refused_card(name, &s.pair, &error)))
                        .await;
                }
                first_error.get_or_insert(error);
                continue;
            }
            Sent::Failed(error) => {
                failed += 1;
                bridge.metrics.usage_record(UsageRecordOutcome::Failed);
                tracing::warn!(subscription = %s.pair.0, add_on = %s.pair.1, window = window.start_ms, %error, "usage record not acknowledged; the next run sends it again");
                first_error.get_or_insert(error);
                continue;
            }
        };
        settled.push(Settled {
            pair: s.pair.clone(),
            report: s.report.report,
            state,
        });
        if settled.len() >= SETTLE_BATCH {
            bridge
                .store
                .settle(lease, window, std::mem::take(&mut settled))
                .await?;
        }
    }
    if !settled.is_empty() {
        bridge.store.settle(lease, window, settled).await?;
    }
    summary.complete = failed == 0;
    if failed > 0 {
        summary.note = Some(format!(
            "{failed} usage record(s) not acknowledged; the next run sends them again. First error: {}",
            first_error.unwrap_or_default()
        ));
    }
    Ok(())
}
