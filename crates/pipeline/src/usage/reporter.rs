//! The UsageReporter's work for one window: compare what the traffic says with what the ledger
//! holds, write the new reports as intents (durably) before sending them, send every unsettled
//! report under its deterministic `Idempotency-Key`, and settle what Recurly acknowledged. A
//! report is only ever the difference between the traffic and what was reported before, so a
//! window run twice, a crashed run resumed, or late traffic re-polled never counts a unit twice.

use std::collections::BTreeMap;

use billing_bridge_billing::recurly::{NewUsage, RecurlyError};
use billing_bridge_domain::codes::usage_add_on_code;
use billing_bridge_domain::usage::{
    Aggregate, Window, merchant_tag, to_report, usage_key, usage_timestamp_ms,
};
use billing_bridge_notify::{ProviderCard, Tone};
use billing_bridge_store::Lease;
use billing_bridge_store::ledger::{Intent, Pair, Report, ReportState, Settled, WindowLedger};
use billing_bridge_upstream::Transient;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;

use super::directory::Directory;
use super::{PairLine, RunError, UnmatchedLine, WindowSummary};
use crate::Bridge;
use crate::metrics::{UnmatchedReason, UsageRecordOutcome};
use crate::notices::{Notice, NoticeSink};

/// Usage dates stay this far behind the clock: Recurly refuses usage in the future (§6).
const CLOCK_SKEW_MS: i64 = 60_000;
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
    let (subscription, add_on) = &s.pair;
    let key = usage_key(subscription, add_on, window, s.report.report);
    let usage = NewUsage {
        amount: s.report.amount,
        usage_timestamp: DateTime::<Utc>::from_timestamp_millis(s.report.usage_ms)
            .unwrap_or_else(Utc::now),
        merchant_tag: merchant_tag(window, &s.report.amplify_subscription, s.report.report),
    };
    if s.resumed {
        let age_ms = Utc::now().timestamp_millis() - s.report.created_ms;
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
            Ok(Some(_)) => Sent::Refused(e.to_string()),
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
}

/// Reports one window. With `lease` `None` (a dry run) nothing is written or sent.
pub async fn report_window(
    bridge: &Bridge,
    notices: &impl NoticeSink,
    directory: &Directory,
    lease: Option<&Lease>,
    due: Due<'_>,
    summary: &mut WindowSummary,
) -> Result<(), RunError> {
    let Due {
        window,
        usage,
        ledger,
    } = due;
    let now = Utc::now().timestamp_millis();
    let dry_run = lease.is_none();
    summary.unmatched_units =
        usage.aggregate.unmatched_subscription + usage.aggregate.unmatched_resource;
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
    let usage_ms = usage_timestamp_ms(window, now, CLOCK_SKEW_MS);
    let mut intents = Vec::new();
    for (pair, (amplify, observed)) in &usage.pairs {
        let reported = ledger.reported(pair);
        let amount = to_report(*observed, reported);
        if dry_run {
            summary.pairs.push(PairLine {
                amplify_subscription: amplify.clone(),
                recurly_subscription: pair.0.clone(),
                add_on: pair.1.clone(),
                observed: *observed,
                reported,
                to_report: amount,
            });
        }
        if amount == 0 {
            continue;
        }
        let report = Report {
            report: ledger.next_report(pair),
            amount,
            usage_ms,
            created_ms: now,
            amplify_subscription: amplify.clone(),
            state: ReportState::Pending,
        };
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
        for ((subscription, resource), (reason, units)) in &usage.aggregate.unmatched {
            summary.unmatched.push(UnmatchedLine {
                subscription_id: subscription.clone(),
                asset_resource: resource.clone(),
                units: *units,
                reason: UnmatchedReason::from(*reason).as_str(),
            });
        }
        summary.records = sends.len();
        summary.units = sends.iter().map(|s| s.report.amount).sum();
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
            Sent::Acked => {
                summary.records += 1;
                summary.units += s.report.amount;
                bridge.metrics.usage_units_reported.inc_by(s.report.amount);
                bridge.metrics.usage_record(UsageRecordOutcome::Created);
                ReportState::Acked
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
                    notices.notify(Notice::Provider(skipped_card(name, title, &s.pair.0)));
                }
                ReportState::Skipped
            }
            Sent::Refused(error) => {
                failed += 1;
                bridge.metrics.usage_record(UsageRecordOutcome::Failed);
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
                    notices.notify(Notice::Provider(refused_card(name, &s.pair, &error)));
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
