//! Recurly API v3 (v2021-02-25), as described in `shared/reference/recurly-teams-sendgrid.md`
//! and Recurly's own OpenAPI description.

mod body;
mod client;
mod error;
mod model;

pub use body::{add_on_create, measured_unit_display_name, plan_create};
pub use client::{NewSubscription, NewUsage, RecurlyClient, RecurlySettings, SiteKind};
pub use error::RecurlyError;
pub use model::{
    Account, AddOn, AddOnPricing, Invoice, MeasuredUnit, Plan, Subscription, Tier, Usage,
};
