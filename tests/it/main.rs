//! Integration tests: one binary, real servers on 127.0.0.1:0, talking HTTP.

mod amplify_conformance;
mod cli;
mod dashboards;
mod ingest;
mod intake_refusals;
mod notify_conformance;
mod notify_delivery;
mod provisioning;
mod provisioning_plans;
mod provisioning_reliability;
mod provisioning_subscriptions;
mod raw_mode;
mod recurly_client;
mod recurly_conformance;
mod reporting;
mod reporting_cli;
mod reporting_late;
mod reporting_resilience;
mod sandbox_control;
mod scale_out;
mod support;
mod tracing_export;
