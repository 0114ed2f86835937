//! Black-box conformance of the sandbox's Amplify emulator (auth, Central catalog and management,
//! webhooks, WatchTopics, Platform, Traceability) against `shared/reference/amplify-api.md`, section numbers cited.

mod auth;
mod captured_shapes;
mod catalog;
pub(crate) mod client;
mod lists;
mod platform;
mod receiver;
mod traceability;
mod watchtopics;
mod webhooks;
