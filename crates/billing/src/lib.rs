//! The billing platform side of billing-bridge. Today that is Recurly v3: a client that speaks
//! Recurly's protocol (version header, Basic auth, idempotency keys, error types, rate-limit
//! headers, paging) and the request bodies a provider-neutral billing plan becomes.

pub mod recurly;
