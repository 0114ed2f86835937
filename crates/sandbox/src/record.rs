//! The request recorder behind `GET /_sandbox/requests`: every request an upstream received, with
//! its body and the answer it got, so tests can check what a client really sent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::Upstream;

/// One request as an upstream saw it, and its answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Taken when the answer was ready, from the same counter as `arrived`.
    pub seq: u64,
    /// Taken when the request arrived (before any injected latency): two requests overlapped
    /// when one arrived before the other's `seq`, whatever the clock did.
    #[serde(default)]
    pub arrived: u64,
    pub upstream: Upstream,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: BTreeMap<String, String>,
    /// The body as JSON when it parses, otherwise as a string; `null` when empty.
    pub body: serde_json::Value,
    pub status: u16,
    pub response_headers: BTreeMap<String, String>,
    pub response_body: serde_json::Value,
    /// Set when the answer came from fault injection rather than the emulator.
    pub injected: Option<String>,
}

/// Decodes a captured body for the record: JSON if it is JSON, text otherwise.
pub fn body_value(bytes: &[u8]) -> serde_json::Value {
    if bytes.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[derive(Debug, Default)]
pub struct Recorder {
    seq: AtomicU64,
    entries: Mutex<VecDeque<RecordedRequest>>,
}

impl Recorder {
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn push(&self, limit: usize, entry: RecordedRequest) {
        if limit == 0 {
            return;
        }
        let mut entries = self.entries.lock();
        while entries.len() >= limit {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Recorded requests in arrival order, optionally of one upstream and after a sequence number.
    pub fn list(&self, upstream: Option<Upstream>, after: u64) -> Vec<RecordedRequest> {
        self.entries
            .lock()
            .iter()
            .filter(|e| e.seq > after && upstream.is_none_or(|u| e.upstream == u))
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.entries.lock().clear();
    }
}
