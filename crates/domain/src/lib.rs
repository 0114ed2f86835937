//! Plain types and rules of billing-bridge, with no I/O: which Amplify plans are billed, how a
//! plan and its quotas become a billing plan with usage add-ons, and the codes that link them.
//!
//! Everything here takes data and returns decisions, so it is tested on its own (unit and
//! property tests) and the actors and handlers around it only move messages and do I/O.

pub mod amplify;
pub mod codes;
pub mod events;
pub mod ingest;
pub mod money;
pub mod plan;
pub mod tiers;
pub mod transactions;
pub mod trust;
pub mod usage;
