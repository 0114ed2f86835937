//! (written by the conformance work for this area)
