//! Amplify Engage as billing-bridge sees it: the Central API (catalog and management resources,
//! subresources, attributes), the Platform user lookup, the Traceability summary, and the
//! webhook envelope Amplify posts. Amplify's `…+0000` timestamps are kept as the strings they are:
//! nothing the bridge decides depends on them. Facts from `shared/reference/amplify-api.md`.

mod client;
mod envelope;
mod error;

pub use client::{AmplifyClient, AmplifySettings, PlatformUser, SummaryQuery};
pub use envelope::{EventType, WebhookEnvelope};
pub use error::AmplifyError;
