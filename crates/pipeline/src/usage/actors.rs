//! The reporting actors. The UsageReporter owns the directory of billed subscriptions and runs
//! one reporting run at a time (polling each window's traffic, aggregating it and reporting it,
//! see the module's functions); the ReportScheduler starts runs on the cron schedule and keeps
//! the reporting-lag gauge current between runs.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use croner::Cron;

use super::directory::Directory;
use super::{RunError, RunRequest, RunSummary, run};
use crate::Bridge;
use crate::notices::Notices;

/// How often the lag gauge is brought up to date between runs.
const LAG_EVERY: Duration = Duration::from_secs(15);

#[derive(Message)]
#[rtype(result = "Result<RunSummary, RunError>")]
pub struct RunReport(pub RunRequest);

pub struct UsageReporter {
    pub bridge: Arc<Bridge>,
    pub notifier: Notices,
    directory: Arc<tokio::sync::Mutex<Directory>>,
}

impl UsageReporter {
    pub fn new(bridge: Arc<Bridge>, notifier: Notices) -> Self {
        Self {
            bridge,
            notifier,
            directory: Arc::default(),
        }
    }
}

impl Actor for UsageReporter {
    type Context = Context<Self>;
}

impl Handler<RunReport> for UsageReporter {
    type Result = ResponseFuture<Result<RunSummary, RunError>>;

    fn handle(&mut self, msg: RunReport, _ctx: &mut Self::Context) -> Self::Result {
        let (bridge, notifier, directory) = (
            self.bridge.clone(),
            self.notifier.clone(),
            self.directory.clone(),
        );
        Box::pin(async move {
            // Runs are one at a time (the lease); a second request finds it held.
            let Ok(mut directory) = directory.try_lock() else {
                return Err(RunError::Busy);
            };
            let summary = run(&bridge, &notifier, &mut directory, msg.0).await?;
            tracing::info!(
                windows = summary.windows.len(),
                records = summary.records,
                units = summary.units,
                unmatched = summary.unmatched_units,
                complete = summary.complete,
                "reporting run"
            );
            Ok(summary)
        })
    }
}

pub struct ReportScheduler {
    pub bridge: Arc<Bridge>,
    pub reporter: Addr<UsageReporter>,
    pub schedule: Option<Cron>,
}

impl ReportScheduler {
    fn schedule_next(&self, ctx: &mut Context<Self>) {
        let Some(cron) = &self.schedule else {
            return;
        };
        let now = Utc::now();
        let Ok(next) = cron.find_next_occurrence(&now, false) else {
            tracing::warn!("the reporting schedule has no next time; no more scheduled runs");
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        ctx.run_later(wait, |act, ctx| {
            let reporter = act.reporter.clone();
            ctx.spawn(
                async move {
                    match reporter.send(RunReport(RunRequest::default())).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(RunError::Busy)) => {
                            tracing::info!(
                                "scheduled reporting run skipped: another run is in progress"
                            )
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "scheduled reporting run failed"),
                        Err(e) => tracing::error!(error = %e, "usage reporter unavailable"),
                    }
                }
                .into_actor(act),
            );
            act.schedule_next(ctx);
        });
    }
}

impl Actor for ReportScheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.schedule_next(ctx);
        ctx.run_interval(LAG_EVERY, |act, ctx| {
            let bridge = act.bridge.clone();
            ctx.spawn(
                async move {
                    if let Ok(Some(end)) = bridge.store.watermark().await {
                        let lag = (Utc::now().timestamp_millis() - end).max(0) / 1000;
                        bridge.metrics.usage_reporting_lag.set(lag);
                    }
                }
                .into_actor(act),
            );
        });
    }
}
