//! Amplify Engage as billing-bridge sees it: the Central API (catalog and management resources,
//! subresources, attributes), WatchTopic reads, the Platform user lookup, the Traceability
//! summary, the webhook envelope Amplify posts, and the process's request budget by lane.
//! Amplify's `…+0000` timestamps are kept as the strings they are: nothing the bridge decides
//! depends on them. Facts from `shared/reference/amplify-api.md`.

mod budget;
mod client;
mod envelope;
mod error;

pub use budget::{Budget, Lane, Schedule, Ticket, Turn};
pub use client::{AmplifyClient, AmplifySettings, PlatformUser, SummaryQuery};
pub use envelope::{EnvelopeHead, EventType, WebhookEnvelope};
pub use error::AmplifyError;
