//! Amplify Engage as billing-bridge sees it: the Central API (catalog and management resources,
//! subresources, attributes), the Platform user lookup, the Traceability summary, and the
//! webhook envelope Amplify posts. Facts from `shared/reference/amplify-api.md`.

mod client;
mod envelope;
mod error;
mod time;

pub use client::{AmplifyClient, AmplifySettings, PlatformUser, SummaryQuery};
pub use envelope::{EventType, WebhookEnvelope};
pub use error::AmplifyError;
pub use time::{format_amplify_timestamp, parse_amplify_timestamp};
