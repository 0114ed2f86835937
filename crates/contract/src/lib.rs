//! Checks JSON bodies against the upstreams' own API descriptions, so that neither the sandbox
//! nor the bridge's clients can drift from the real contract unnoticed.
