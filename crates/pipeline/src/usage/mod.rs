//! Traffic reporting (design.md §1, the money path): on a schedule or on demand, each closed
//! window's Traceability traffic is read (`traffic`, the TrafficPoller's adapter), mapped to
//! billed subscriptions and quotas (`directory` and `domain::usage::aggregate`, the
//! UsageAggregator) and reported to Recurly exactly once through the ledger (`reporter`, the
//! UsageReporter). `actors` wraps them as actors and runs the cron schedule; [`run`] is one run.

pub mod actors;
pub mod directory;
pub mod reporter;
pub mod search;
pub mod traffic;

use std::time::Instant;

use billing_bridge_amplify::Lane;
use billing_bridge_config::{BilledCount, TrafficSource};
use billing_bridge_domain::transactions::{Counted, IdSet, traffic_rows};
use billing_bridge_domain::usage::{TrafficRow, Window, aggregate, closed_windows, split_point};
use billing_bridge_store::{Lease, StoreError};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::Bridge;
use crate::metrics::{RunOutcome, WindowKind};
use crate::notices::Notices;
pub use crate::settings::parse_instant;
use directory::Directory;

/// The lease that makes one run at a time (across instances, with a shared store).
pub const LEASE: &str = "reporting";
/// A backfill covers at most this many windows, so a typo cannot start a year-long run.
const MAX_BACKFILL_WINDOWS: usize = 10_000;

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    /// Report every window overlapping `[from, to)` (epoch ms) rather than those after the
    /// watermark.
    pub range: Option<(i64, i64)>,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("a reporting run is already in progress")]
    Busy,
    #[error("traffic reporting is switched off ([reporting] enabled = false)")]
    Disabled,
    #[error("{0}")]
    BadRequest(String),
    #[error("traffic could not be read: {0}")]
    Traffic(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PairLine {
    pub amplify_subscription: String,
    pub recurly_subscription: String,
    pub add_on: String,
    pub observed: u64,
    pub reported: u64,
    pub to_report: u64,
    /// What is to be reported, part by part, each with its usage date and how it was chosen.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartLine>,
}

/// One record to send (or, for a trial, to keep without sending): a window or part of one.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PartLine {
    pub from: String,
    pub to: String,
    pub units: u64,
    pub usage_timestamp: String,
    /// `in_period`, `split`, `moved_to_open_period`, `correction` or `trial` (not sent).
    pub how: &'static str,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct UnmatchedLine {
    pub subscription_id: String,
    pub asset_resource: String,
    pub units: u64,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WindowSummary {
    pub start: String,
    pub end: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub repoll: bool,
    pub complete: bool,
    pub records: usize,
    pub units: u64,
    pub skipped_units: u64,
    pub unmatched_units: u64,
    /// Units of a trial: never billed by Recurly, so not sent.
    pub trial_units: u64,
    /// Only the part before a renewal was reported: the window is still open.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub early: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairLine>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatched: Vec<UnmatchedLine>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    pub dry_run: bool,
    pub complete: bool,
    pub records: usize,
    pub units: u64,
    pub skipped_units: u64,
    pub unmatched_units: u64,
    pub trial_units: u64,
    pub watermark: Option<String>,
    pub windows: Vec<WindowSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

fn window_len_ms(bridge: &Bridge) -> i64 {
    bridge.config.reporting.window.as_millis() as i64
}

/// Reported windows every run reads again for late traffic: `repoll_windows`, or with pushed
/// traffic every window the ingest horizon still lets events into (reading them costs no
/// upstream call, and a late event is then never left unbilled).
pub fn repolled_windows(config: &billing_bridge_config::BridgeConfig) -> usize {
    match config.reporting.source {
        TrafficSource::Push => config
            .reporting
            .repoll_windows
            .max(config.ingest.windows_reached(config.reporting.window)),
        _ => config.reporting.repoll_windows,
    }
}

/// A window's traffic, from the configured source.
async fn window_traffic(
    bridge: &Bridge,
    window: Window,
    seen: &mut IdSet,
) -> Result<Vec<TrafficRow>, RunError> {
    let config = &bridge.config.reporting;
    let polled = match config.source {
        TrafficSource::Summary => {
            traffic::poll(
                &bridge.amplify.lane(Lane::Reporting),
                window,
                config.billed_count,
                config.page_size,
            )
            .await
        }
        TrafficSource::Search => {
            search::poll(
                &bridge.amplify.lane(Lane::Reporting),
                window,
                config.billed_count,
                config.page_size,
                seen,
            )
            .await
        }
        TrafficSource::Push => {
            let groups = bridge.store.ingested(window).await?;
            let counted = counted(config.billed_count);
            return Ok(traffic_rows(groups.iter().map(|(g, n)| (g, *n)), counted));
        }
    };
    polled.map_err(|e| RunError::Traffic(e.to_string()))
}

/// Which of a raw transaction group's calls are billed.
pub fn counted(billed: BilledCount) -> Counted {
    match billed {
        BilledCount::Total => Counted::All,
        BilledCount::Success => Counted::SuccessOnly,
    }
}

/// Which windows a run takes on, oldest first, each marked as a re-poll or not; and the
/// watermark the store holds.
async fn plan_windows(
    bridge: &Bridge,
    request: &RunRequest,
    now_ms: i64,
) -> Result<(Vec<(Window, bool)>, Option<i64>), RunError> {
    let config = &bridge.config.reporting;
    let stored = bridge.store.watermark().await?;
    let len = window_len_ms(bridge);
    let delay = config.delay.as_millis() as i64;
    if let Some((from, to)) = request.range {
        if to <= from {
            return Err(RunError::BadRequest(format!(
                "the range is empty: to ({}) is not after from ({})",
                rfc3339(to),
                rfc3339(from)
            )));
        }
        let mut windows = Vec::new();
        let mut w = Window::containing(from, len);
        while w.start_ms < to {
            if w.end_ms + delay > now_ms {
                return Err(RunError::BadRequest(format!(
                    "the window {} – {} is not closed yet: it can be reported from {}",
                    rfc3339(w.start_ms),
                    rfc3339(w.end_ms),
                    rfc3339(w.end_ms + delay)
                )));
            }
            if windows.len() >= MAX_BACKFILL_WINDOWS {
                return Err(RunError::BadRequest(format!(
                    "the range covers more than {MAX_BACKFILL_WINDOWS} windows; report it in parts"
                )));
            }
            windows.push(w);
            w = w.next();
        }
        // Windows reported before only get their late traffic: they count as re-polls.
        let done = bridge.store.windows_done(&windows).await?;
        return Ok((windows.into_iter().zip(done).collect(), stored));
    }
    let push = config.source == TrafficSource::Push;
    // Pushed traffic may sit in windows before the watermark or before the first run: those are
    // reported too, as long as the horizon still reaches them.
    let ingested = if push {
        let reach = now_ms - repolled_windows(&bridge.config) as i64 * len;
        let mut starts = bridge.store.ingested_windows().await?;
        starts.retain(|s| *s >= reach);
        starts
    } else {
        Vec::new()
    };
    let watermark = match stored {
        Some(w) => Some(w),
        None => match &config.start_at {
            Some(start) => Some(
                Window::containing(parse_instant(start).map_err(RunError::BadRequest)?, len)
                    .start_ms,
            ),
            None => ingested.first().copied(),
        },
    };
    let mut windows = Vec::new();
    if let Some(end) = watermark {
        let k = repolled_windows(&bridge.config) as i64;
        let repoll: Vec<Window> = (1..=k)
            .rev()
            .map(|i| Window {
                start_ms: end - i * len,
                end_ms: end - (i - 1) * len,
            })
            .collect();
        let done = bridge.store.windows_done(&repoll).await?;
        windows.extend(
            repoll
                .into_iter()
                .zip(done)
                .filter(|(w, d)| *d || ingested.contains(&w.start_ms)),
        );
    }
    windows.extend(
        closed_windows(watermark, now_ms, len, delay, config.max_windows_per_run)
            .into_iter()
            .map(|w| (w, false)),
    );
    Ok((windows, stored))
}

/// One reporting run. Holds the reporting lease (not for a dry run), so runs never overlap.
pub async fn run(
    bridge: &Bridge,
    notices: &Notices,
    directory: &mut Directory,
    request: RunRequest,
) -> Result<RunSummary, RunError> {
    if !bridge.config.reporting.enabled {
        return Err(RunError::Disabled);
    }
    let started = Instant::now();
    let lease = if request.dry_run {
        None
    } else {
        match bridge
            .store
            .acquire_lease(LEASE, bridge.config.reporting.lease_ttl)
            .await?
        {
            Some(lease) => Some(lease),
            None => {
                bridge.metrics.run_ended(RunOutcome::Busy, 0.0);
                return Err(RunError::Busy);
            }
        }
    };
    if lease.is_some() {
        bridge.metrics.lease(LEASE, true);
    }
    let (trigger, from, to) = match request.range {
        Some((from, to)) if request.dry_run => ("dry_run_backfill", rfc3339(from), rfc3339(to)),
        Some((from, to)) => ("backfill", rfc3339(from), rfc3339(to)),
        None if request.dry_run => ("dry_run", String::new(), String::new()),
        None => ("due_windows", String::new(), String::new()),
    };
    let span = crate::trace::reporting_run_span(trigger, &from, &to);
    let run = std::pin::pin!(tracing::Instrument::instrument(
        run_windows(bridge, notices, directory, &request, lease.as_ref()),
        span.clone(),
    ));
    // A window can take longer than the lease (a large run waits for Amplify's reporting lane):
    // the lease is renewed every third of its time while the run goes on. Its ledger writes stay
    // fenced by the lease's token, so a lease lost anyway still stops them.
    let result = match lease.as_ref() {
        Some(lease) => {
            bridge
                .holding(lease, bridge.config.reporting.lease_ttl, run)
                .await
        }
        None => run.await,
    };
    let outcome = match &result {
        Ok(summary) if summary.complete => RunOutcome::Complete,
        Ok(summary) if summary.error.is_some() => RunOutcome::Failed,
        Ok(_) => RunOutcome::Incomplete,
        Err(RunError::Busy) => RunOutcome::Busy,
        Err(_) => RunOutcome::Failed,
    };
    span.record("outcome", outcome.as_str());
    if let Some(lease) = &lease {
        let _ = bridge.store.release_lease(lease).await;
        bridge.metrics.lease(LEASE, false);
    }
    // A dry run is counted only when it fails.
    if !request.dry_run || result.is_err() {
        bridge
            .metrics
            .run_ended(outcome, started.elapsed().as_secs_f64());
    }
    result
}

async fn run_windows(
    bridge: &Bridge,
    notices: &Notices,
    directory: &mut Directory,
    request: &RunRequest,
    lease: Option<&Lease>,
) -> Result<RunSummary, RunError> {
    let now_ms = bridge.clock.now_ms();
    // The directory's age is wall time (its snapshots outlive the process).
    let wall_ms = Utc::now().timestamp_millis();
    let (windows, mut watermark) = plan_windows(bridge, request, now_ms).await?;
    let config = &bridge.config.reporting;
    let api_version = bridge.config.amplify.api_version.clone();
    let mut summary = RunSummary {
        dry_run: request.dry_run,
        complete: true,
        ..RunSummary::default()
    };
    // Raw transaction ids read so far in this run (source = "search"), oldest window first.
    let mut seen = IdSet::default();
    for (window, repoll) in windows {
        let mut line = WindowSummary {
            start: rfc3339(window.start_ms),
            end: rfc3339(window.end_ms),
            start_ms: window.start_ms,
            end_ms: window.end_ms,
            repoll,
            ..WindowSummary::default()
        };
        let ledger = bridge.store.window_ledger(window).await?;
        let outcome = async {
            if ledger.pruned {
                return Ok((
                    reporter::WindowUsage::default(),
                    reporter::Dating::default(),
                ));
            }
            let rows = window_traffic(bridge, window, &mut seen).await?;
            directory
                .resolve(
                    &bridge.store,
                    &bridge.amplify.lane(Lane::Reporting),
                    &api_version,
                    rows.iter().map(|r| r.subscription_id.as_str()),
                )
                .await
                .map_err(|e| RunError::Traffic(format!("subscriptions could not be read: {e}")))?;
            let mut aggregated = aggregate(&rows, |s| directory.billing_of(s));
            if aggregated.unmatched_resource > 0 && !directory.refreshed_since(wall_ms) {
                // A billed subscription called a resource none of its plan's quotas lists:
                // perhaps a quota was added to the plan since the directory was read.
                directory
                    .refresh(
                        &bridge.store,
                        &bridge.amplify.lane(Lane::Reporting),
                        &api_version,
                    )
                    .await
                    .map_err(|e| {
                        RunError::Traffic(format!("subscriptions could not be read: {e}"))
                    })?;
                aggregated = aggregate(&rows, |s| directory.billing_of(s));
            }
            let usage = reporter::window_usage(aggregated, directory);
            let dating = dating_of(bridge, directory, &api_version, window, &usage).await?;
            Ok::<_, RunError>((usage, dating))
        }
        .await;
        let (usage, dating) = match outcome {
            Ok(found) => found,
            Err(RunError::Traffic(e)) => {
                tracing::warn!(window = %line.start, error = %e, "reporting run stops: traffic could not be read");
                summary.complete = false;
                summary.error = Some(e);
                summary.windows.push(line);
                break;
            }
            Err(e) => return Err(e),
        };
        reporter::report_window(
            bridge,
            notices,
            directory,
            lease,
            reporter::Due {
                window,
                usage: &usage,
                ledger,
                dating: &dating,
            },
            &mut line,
        )
        .await?;
        summary.records += line.records;
        summary.units += line.units;
        summary.skipped_units += line.skipped_units;
        summary.unmatched_units += line.unmatched_units;
        summary.trial_units += line.trial_units;
        let complete = line.complete;
        summary.windows.push(line);
        if !complete {
            summary.complete = false;
            // Later windows wait: the watermark only ever moves over complete windows.
            break;
        }
        if let Some(lease) = lease {
            let advances = watermark.is_none_or(|w| w == window.start_ms)
                && request.range.is_none()
                || watermark == Some(window.start_ms);
            bridge
                .store
                .mark_done(lease, window, advances.then_some(window.end_ms))
                .await?;
            if advances {
                watermark = Some(window.end_ms);
            }
            bridge.metrics.window_reported(if repoll {
                WindowKind::Repoll
            } else {
                WindowKind::First
            });
            bridge
                .store
                .extend_lease(lease, bridge.config.reporting.lease_ttl)
                .await?;
        }
    }
    let len = window_len_ms(bridge);
    let ready = now_ms - config.delay.as_millis() as i64;
    let open = Window::containing(ready, len);
    if summary.complete && request.range.is_none() && watermark == Some(open.start_ms) {
        // Caught up: a renewal inside the window still open gets the part before it reported
        // now, not only once the whole window closes.
        let mut line = WindowSummary {
            start: rfc3339(open.start_ms),
            end: rfc3339(open.end_ms),
            start_ms: open.start_ms,
            end_ms: open.end_ms,
            early: true,
            ..WindowSummary::default()
        };
        match report_before_renewals(
            bridge,
            notices,
            directory,
            lease,
            &api_version,
            open,
            ready,
            &mut line,
        )
        .await
        {
            Ok(true) => {
                summary.records += line.records;
                summary.units += line.units;
                summary.trial_units += line.trial_units;
                if !line.complete {
                    summary.complete = false;
                }
                summary.windows.push(line);
            }
            Ok(false) => {}
            Err(RunError::Traffic(e)) => {
                tracing::warn!(window = %line.start, error = %e, "the part before a renewal waits: traffic could not be read");
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(end) = watermark {
        bridge
            .metrics
            .usage_reporting_lag
            .set((now_ms - end).max(0) / 1000);
        if lease.is_some() {
            let repolled = repolled_windows(&bridge.config) as i64;
            let keep = repolled + config.keep_details_windows as i64;
            bridge.store.prune_ledger(end - keep * len).await?;
            if config.source == TrafficSource::Push {
                // Pushed counts matter only while a run may read their window again: past the
                // re-polls (which reach the whole ingest horizon) they are dropped, whatever the
                // ledger keeps (`keep_details_windows` is a ledger setting only).
                bridge
                    .store
                    .prune_ingested(end - repolled * len, len)
                    .await?;
            }
        }
    }
    summary.watermark = watermark.map(rfc3339);
    Ok(summary)
}

/// The traffic of `part` (a window or a part of one) per billing pair.
async fn usage_in(
    bridge: &Bridge,
    directory: &mut Directory,
    api_version: &str,
    part: Window,
) -> Result<reporter::WindowUsage, RunError> {
    // A part is read on its own: its ids must not hide those of the whole window.
    let mut seen = IdSet::default();
    let rows = window_traffic(bridge, part, &mut seen).await?;
    directory
        .resolve(
            &bridge.store,
            &bridge.amplify,
            api_version,
            rows.iter().map(|r| r.subscription_id.as_str()),
        )
        .await
        .map_err(|e| RunError::Traffic(format!("subscriptions could not be read: {e}")))?;
    let aggregated = aggregate(&rows, |s| directory.billing_of(s));
    Ok(reporter::window_usage(aggregated, directory))
}

/// Whether the traffic source can count a part of a window. Pushed traffic is counted per
/// window as it arrives, so a window holding a renewal is dated whole, in the open period.
fn can_cut(bridge: &Bridge) -> bool {
    bridge.config.reporting.source != TrafficSource::Push
}

/// The billing (period, trial, pricing) of every Recurly subscription with traffic in the
/// window, where the window is cut for each, and the traffic after each cut.
async fn dating_of(
    bridge: &Bridge,
    directory: &mut Directory,
    api_version: &str,
    window: Window,
    usage: &reporter::WindowUsage,
) -> Result<reporter::Dating, RunError> {
    let mut dating = reporter::Dating::default();
    let subscriptions: std::collections::BTreeSet<&String> =
        usage.pairs.keys().map(|(s, _)| s).collect();
    let ids: Vec<&str> = subscriptions.iter().map(|s| s.as_str()).collect();
    bridge
        .periods
        .prefetch(&bridge.recurly, &ids, window.end_ms, bridge.clock.now_ms())
        .await
        .map_err(|e| {
            RunError::Traffic(format!(
                "billing periods could not be read from Recurly: {e}"
            ))
        })?;
    for id in subscriptions {
        let billing = bridge
            .periods
            .get(&bridge.recurly, id, window.end_ms, bridge.clock.now_ms())
            .await
            .map_err(|e| {
                RunError::Traffic(format!(
                    "billing periods could not be read from Recurly: {e}"
                ))
            })?;
        // A subscription Recurly does not know is skipped when its record is refused.
        let Some(billing) = billing else { continue };
        if let Some(cut) = billing
            .period
            .and_then(|p| split_point(window, &p))
            .filter(|_| can_cut(bridge))
        {
            dating.cuts.insert(id.clone(), cut);
        }
        dating.billing.insert(id.clone(), billing);
    }
    let points: std::collections::BTreeSet<i64> = dating.cuts.values().copied().collect();
    for cut in points {
        let after = usage_in(
            bridge,
            directory,
            api_version,
            Window {
                start_ms: cut,
                end_ms: window.end_ms,
            },
        )
        .await?;
        for (pair, (_, units)) in after.pairs {
            if dating.cuts.get(&pair.0) == Some(&cut) {
                dating.after.insert(pair, units);
            }
        }
    }
    Ok(dating)
}

/// Reports, in the window still open, the part before each renewal that has passed (by `ready`,
/// the delay for late traffic included). `Ok(false)`: no renewal falls in it.
#[allow(clippy::too_many_arguments)]
async fn report_before_renewals(
    bridge: &Bridge,
    notices: &Notices,
    directory: &mut Directory,
    lease: Option<&Lease>,
    api_version: &str,
    open: Window,
    ready: i64,
    line: &mut WindowSummary,
) -> Result<bool, RunError> {
    if !can_cut(bridge) {
        return Ok(false);
    }
    // A period that ended in the window is read again, to see its renewal.
    for id in bridge.periods.ending_between(open.start_ms, ready) {
        if let Err(e) = bridge
            .periods
            .read(&bridge.recurly, &id, bridge.clock.now_ms())
            .await
        {
            return Err(RunError::Traffic(format!(
                "billing periods could not be read from Recurly: {e}"
            )));
        }
    }
    let renewed = bridge.periods.renewed_between(open.start_ms, ready);
    if renewed.is_empty() {
        return Ok(false);
    }
    let mut usage = reporter::WindowUsage::default();
    let mut dating = reporter::Dating {
        before_only: true,
        ..reporter::Dating::default()
    };
    let points: std::collections::BTreeSet<i64> = renewed.iter().map(|(_, at)| *at).collect();
    for cut in points {
        let before = usage_in(
            bridge,
            directory,
            api_version,
            Window {
                start_ms: open.start_ms,
                end_ms: cut,
            },
        )
        .await?;
        for (pair, found) in before.pairs {
            if renewed.iter().any(|(id, at)| *id == pair.0 && *at == cut) {
                usage.pairs.insert(pair, found);
            }
        }
    }
    for (id, cut) in &renewed {
        let billing = bridge
            .periods
            .get(&bridge.recurly, id, *cut, bridge.clock.now_ms())
            .await
            .map_err(|e| {
                RunError::Traffic(format!(
                    "billing periods could not be read from Recurly: {e}"
                ))
            })?;
        if let Some(billing) = billing {
            dating.billing.insert(id.clone(), billing);
            dating.cuts.insert(id.clone(), *cut);
        }
    }
    let ledger = bridge.store.window_ledger(open).await?;
    reporter::report_window(
        bridge,
        notices,
        directory,
        lease,
        reporter::Due {
            window: open,
            usage: &usage,
            ledger,
            dating: &dating,
        },
        line,
    )
    .await?;
    Ok(true)
}
