//! Black-box conformance of the sandbox's Recurly v3 emulator, with every expectation taken from
//! `shared/reference/` (the reference notes and Recurly's own OpenAPI description).
//!
//! Each test starts its own sandbox and ends with [`client::Recurly::finish`], which checks every
//! recorded Recurly exchange against the OpenAPI contract. Product tests can run the same check
//! on the bridge's traffic with [`client::assert_recurly_traffic_conforms`].

#![allow(dead_code)]

mod accounts_and_units;
mod billing_cycle;
pub mod client;
mod contract_check;
mod documented_shapes;
mod limits_and_faults;
mod pagination;
mod plans;
mod subscriptions;
mod usage;
mod versions_and_auth;
