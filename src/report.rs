//! `report`: one traffic-reporting run in this process (a manual run or a backfill), or a dry
//! run that prints what would be reported.

use std::path::Path;

use anyhow::Context;
use billing_bridge_pipeline::usage::directory::Directory;
use billing_bridge_pipeline::usage::{RunRequest, RunSummary, parse_instant, run};
use billing_bridge_pipeline::{Bridge, Notices};
use billing_bridge_upstream::RetryPolicy;

pub struct Options<'a> {
    pub config: Option<&'a Path>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub dry_run: bool,
    pub json: bool,
}

fn print_table(summary: &RunSummary) {
    if summary.windows.is_empty() {
        println!("No window is due: every closed window up to the watermark is reported.");
    }
    println!(
        "{:<22} {:<22} {:>8} {:>12} {:>10} {:>10}  state",
        "window start", "window end", "records", "units", "unmatched", "skipped"
    );
    for w in &summary.windows {
        let state = match (&w.note, w.complete, w.repoll) {
            (Some(note), _, _) => note.clone(),
            (None, true, true) => "done (re-polled)".into(),
            (None, true, false) => "done".into(),
            (None, false, _) => "incomplete".into(),
        };
        println!(
            "{:<22} {:<22} {:>8} {:>12} {:>10} {:>10}  {state}",
            w.start, w.end, w.records, w.units, w.unmatched_units, w.skipped_units
        );
        for p in &w.pairs {
            println!(
                "    {} {} (amplify {}): traffic {} reported {} -> {}",
                p.recurly_subscription,
                p.add_on,
                p.amplify_subscription,
                p.observed,
                p.reported,
                p.to_report
            );
            for part in &p.parts {
                let sent = if part.how == "trial" {
                    "kept, not sent (trial)"
                } else {
                    part.how
                };
                println!(
                    "      {} – {}: {} unit(s) dated {}: {sent}",
                    part.from, part.to, part.units, part.usage_timestamp
                );
            }
        }
        for u in &w.unmatched {
            println!(
                "    unmatched {} units: subscription {} resource {} (reason {})",
                u.units, u.subscription_id, u.asset_resource, u.reason
            );
        }
    }
    let verb = if summary.dry_run {
        "would report"
    } else {
        "reported"
    };
    println!(
        "{verb} {} record(s), {} unit(s); {} unit(s) unmatched, {} skipped, {} of trials; watermark {}",
        summary.records,
        summary.units,
        summary.unmatched_units,
        summary.skipped_units,
        summary.trial_units,
        summary.watermark.as_deref().unwrap_or("none yet")
    );
    if let Some(e) = &summary.error {
        println!("error: {e}");
    }
}

/// Exit status: 0 when every window is complete, 1 otherwise.
pub async fn run_report(options: Options<'_>) -> anyhow::Result<i32> {
    let config = crate::serve::load(options.config)?;
    // Reporting needs Amplify and Recurly; the webhook and mail settings are `serve`'s business.
    let problems: Vec<String> = config
        .problems()
        .into_iter()
        .filter(|p| {
            p.starts_with("amplify") || p.starts_with("recurly") || p.starts_with("reporting")
        })
        .collect();
    if !problems.is_empty() {
        anyhow::bail!(
            "configuration is incomplete:\n  - {}",
            problems.join("\n  - ")
        );
    }
    let range = match (options.from, options.to) {
        (Some(from), Some(to)) => Some((
            parse_instant(from)
                .map_err(anyhow::Error::msg)
                .context("--from")?,
            parse_instant(to)
                .map_err(anyhow::Error::msg)
                .context("--to")?,
        )),
        (None, None) => None,
        _ => anyhow::bail!("give both --from and --to, or neither"),
    };
    let (bridge, channels) = Bridge::build(config, RetryPolicy::default())?;
    let bridge = std::sync::Arc::new(bridge);
    let notices = Notices::new(bridge.clone());
    let summary = run(
        &bridge,
        &notices,
        &mut Directory::default(),
        RunRequest {
            range,
            dry_run: options.dry_run,
        },
    )
    .await?;
    // The run's cards go out before the process exits; any a channel cannot take now stay in
    // the outbox, for `serve` to retry.
    billing_bridge_pipeline::notices::deliver_due(&bridge, &channels).await;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(if summary.complete { 0 } else { 1 })
}
