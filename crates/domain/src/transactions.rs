//! Raw transactions (docs/ingest.md): agent-sdk `transactionSummary` events (reference §5.3)
//! read into compact records, and the aggregation core that counts them per (window,
//! subscription, quota, asset resource, success), each `transactionId` once.
//!
//! The core keeps a fingerprint of every transaction id it has counted (xxh3-128: a 16-bit shard
//! and a 64-bit value kept in that shard's set, 74 bits in all in memory, 80 in Redis), so ten
//! million ids take about 150 MB rather than the gigabyte their strings would; two different ids
//! are mistaken for each other with a probability of about n²/2⁷⁵ (10⁻⁸ for 10⁷ ids).
//! The same fingerprint keys the Redis store's sets.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasherDefault;

use nohash_hasher::NoHashHasher;
use serde::Deserialize;

use crate::usage::{TrafficRow, Window};

/// The event type that carries a transaction's outcome (reference §5.3).
pub const TRANSACTION_SUMMARY: &str = "transactionSummary";
/// What agents write for a reference they could not resolve (reference §5.3).
pub const UNKNOWN: &str = "unknown";
/// The status counted when only successful calls are billed.
pub const SUCCESS: &str = "Success";

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "transactionId", borrow, default)]
    transaction_id: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(rename = "transactionSummary", borrow, default)]
    summary: Option<SummaryIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SummaryIn<'a> {
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    quota: Option<IdIn<'a>>,
    #[serde(borrow, default)]
    asset_resource: Option<ResourceIn<'a>>,
    #[serde(borrow, default)]
    consumer_details: Option<ConsumerIn<'a>>,
}

#[derive(Deserialize)]
struct IdIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResourceIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ConsumerIn<'a> {
    #[serde(borrow, default)]
    subscription: Option<IdIn<'a>>,
}

/// One transaction, as far as billing is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction<'a> {
    pub id: Cow<'a, str>,
    pub timestamp_ms: i64,
    pub group: Group<'a>,
}

/// What a transaction is counted under, besides its window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group<'a> {
    /// `consumerDetails.subscription.id`, or [`UNKNOWN`].
    pub subscription: Cow<'a, str>,
    /// `quota.id`; empty when absent or [`UNKNOWN`].
    pub quota: Cow<'a, str>,
    /// `assetResource.name`, else `.id`, else [`UNKNOWN`].
    pub resource: Cow<'a, str>,
    /// `status == "Success"`.
    pub success: bool,
}

/// An owned [`Group`].
pub type GroupKey = Group<'static>;

impl Group<'_> {
    pub fn to_owned_key(&self) -> GroupKey {
        Group {
            subscription: Cow::Owned(self.subscription.clone().into_owned()),
            quota: Cow::Owned(self.quota.clone().into_owned()),
            resource: Cow::Owned(self.resource.clone().into_owned()),
            success: self.success,
        }
    }

    fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3Default::new();
        for part in [&self.subscription, &self.quota, &self.resource] {
            h.update(part.as_bytes());
            h.update(&[0xff]);
        }
        h.update(&[u8::from(self.success)]);
        h.digest()
    }
}

/// How one event reads.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Transaction(Transaction<'a>),
    /// Not a `transactionSummary` (a `transactionEvent`, say): not billed.
    Ignored,
}

fn present<'a>(v: Option<Cow<'a, str>>) -> Option<Cow<'a, str>> {
    v.filter(|s| !s.is_empty() && s != UNKNOWN)
}

/// Reads one event (reference §5.3). An error says what is wrong, for the sender.
pub fn parse_event(bytes: &[u8]) -> Result<Parsed<'_>, String> {
    let event: EventIn<'_> = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("not a transaction event: {e}"),
        _ => format!("not JSON: {e}"),
    })?;
    match event.kind.as_deref() {
        Some(TRANSACTION_SUMMARY) => {}
        Some(_) => return Ok(Parsed::Ignored),
        None => return Err("type is required (\"transactionSummary\")".to_owned()),
    }
    let id = event
        .transaction_id
        .filter(|id| !id.is_empty())
        .ok_or("transactionId is required (a non-empty string)")?;
    let timestamp_ms = event
        .timestamp
        .ok_or("timestamp is required (epoch milliseconds)")?;
    let summary = event
        .summary
        .ok_or("transactionSummary is required (an object)")?;
    let resource = summary
        .asset_resource
        .and_then(|r| present(r.name).or(present(r.id)));
    Ok(Parsed::Transaction(Transaction {
        id,
        timestamp_ms,
        group: Group {
            subscription: present(
                summary
                    .consumer_details
                    .and_then(|c| c.subscription)
                    .and_then(|s| s.id),
            )
            .unwrap_or(Cow::Borrowed(UNKNOWN)),
            quota: present(summary.quota.and_then(|q| q.id)).unwrap_or(Cow::Borrowed("")),
            resource: resource.unwrap_or(Cow::Borrowed(UNKNOWN)),
            success: summary.status.as_deref() == Some(SUCCESS),
        },
    }))
}

/// The fingerprint of a transaction id: a 16-bit shard and a 64-bit value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxKey {
    pub shard: u16,
    pub value: u64,
}

pub fn tx_key(id: &str) -> TxKey {
    let h = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
    TxKey {
        shard: (h >> 112) as u16,
        value: h as u64,
    }
}

type NoHash = BuildHasherDefault<NoHashHasher<u64>>;

/// Sets per [`IdSet`]: enough that each stays small (a set doubling never needs much memory at
/// once), few enough that an empty one costs little (24 KiB).
const SHARDS: usize = 1024;

/// A set of transaction id fingerprints, sharded so that no single table grows (and doubles) to
/// the size of the whole set.
#[derive(Debug)]
pub struct IdSet(Vec<HashSet<u64, NoHash>>);

impl Default for IdSet {
    fn default() -> Self {
        IdSet((0..SHARDS).map(|_| HashSet::default()).collect())
    }
}

impl IdSet {
    /// Adds the id; says whether it is new.
    pub fn insert(&mut self, key: TxKey) -> bool {
        self.0[key.shard as usize % SHARDS].insert(key.value)
    }

    pub fn remove(&mut self, key: TxKey) {
        self.0[key.shard as usize % SHARDS].remove(&key.value);
    }

    pub fn contains(&self, key: TxKey) -> bool {
        self.0[key.shard as usize % SHARDS].contains(&key.value)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(HashSet::is_empty)
    }
}

/// One window's counts per group (the ids are kept apart, in an [`IdSet`]).
#[derive(Debug, Default)]
pub struct WindowCounts {
    groups: HashMap<u64, Vec<(GroupKey, u64)>, NoHash>,
    transactions: u64,
}

impl WindowCounts {
    /// Adds `n` to a group's count.
    pub fn add(&mut self, group: &Group<'_>, n: u64) {
        let entry = self.groups.entry(group.fingerprint()).or_default();
        match entry.iter_mut().find(|(k, _)| k == group) {
            Some((_, count)) => *count += n,
            None => entry.push((group.to_owned_key(), n)),
        }
        self.transactions += n;
    }

    /// Transactions counted.
    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    /// Every group with its count.
    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, u64)> {
        self.groups
            .values()
            .flat_map(|entry| entry.iter().map(|(k, n)| (k, *n)))
    }
}

/// The aggregation core: transactions counted per window, each id once (in the window it first
/// came with).
#[derive(Debug, Default)]
pub struct Aggregator {
    len_ms: i64,
    ids: IdSet,
    windows: BTreeMap<i64, WindowCounts>,
}

impl Aggregator {
    pub fn new(len_ms: i64) -> Self {
        Aggregator {
            len_ms,
            ..Aggregator::default()
        }
    }

    /// Counts the transaction unless its id was counted before; says whether it counted.
    pub fn insert(&mut self, tx: &Transaction<'_>) -> bool {
        if !self.ids.insert(tx_key(&tx.id)) {
            return false;
        }
        let start = Window::containing(tx.timestamp_ms, self.len_ms).start_ms;
        self.windows.entry(start).or_default().add(&tx.group, 1);
        true
    }

    pub fn window(&self, start_ms: i64) -> Option<&WindowCounts> {
        self.windows.get(&start_ms)
    }

    pub fn windows(&self) -> impl Iterator<Item = (i64, &WindowCounts)> {
        self.windows.iter().map(|(s, w)| (*s, w))
    }
}

/// How many of a group's transactions are billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    All,
    SuccessOnly,
}

/// A window's counts as traffic rows for the aggregator (`domain::usage::aggregate`): one row per
/// (subscription, quota, resource) with units, success and failure folded as `counted` says.
pub fn traffic_rows<'a>(
    groups: impl IntoIterator<Item = (&'a GroupKey, u64)>,
    counted: Counted,
) -> Vec<TrafficRow> {
    let mut rows: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for (group, n) in groups {
        if counted == Counted::SuccessOnly && !group.success {
            continue;
        }
        *rows
            .entry((&group.subscription, &group.quota, &group.resource))
            .or_default() += n;
    }
    rows.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|((subscription, quota, resource), units)| TrafficRow {
            subscription_id: subscription.to_owned(),
            asset_resource: resource.to_owned(),
            quota: (!quota.is_empty()).then(|| quota.to_owned()),
            units,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(id: &str, ts: i64, sub: &str, quota: &str, status: &str) -> String {
        serde_json::json!({
            "version": "1.0", "timestamp": ts, "transactionId": id, "type": "transactionSummary",
            "transactionSummary": {
                "status": status, "statusDetail": "200", "duration": 12,
                "quota": {"id": quota}, "assetResource": {"id": "ar-1", "name": "pets/v1"},
                "consumerDetails": {"subscription": {"id": sub, "name": "x"}}
            }
        })
        .to_string()
    }

    #[test]
    fn an_event_reads_into_its_group() {
        let text = event("t-1", 1_000, "s1", "q1", "Success");
        let Parsed::Transaction(tx) = parse_event(text.as_bytes()).unwrap() else {
            panic!("a transaction")
        };
        assert_eq!(tx.id, "t-1");
        assert_eq!(tx.timestamp_ms, 1_000);
        assert_eq!(
            (
                &*tx.group.subscription,
                &*tx.group.quota,
                &*tx.group.resource,
                tx.group.success
            ),
            ("s1", "q1", "pets/v1", true)
        );
        let unknown = event("t-2", 1_000, "unknown", "unknown", "Failure");
        let Parsed::Transaction(tx) = parse_event(unknown.as_bytes()).unwrap() else {
            panic!("a transaction")
        };
        assert_eq!((&*tx.group.subscription, &*tx.group.quota), (UNKNOWN, ""));
        assert!(!tx.group.success);
    }

    #[test]
    fn other_types_are_ignored_and_bad_events_say_why() {
        assert_eq!(
            parse_event(br#"{"type":"transactionEvent","transactionId":"x"}"#).unwrap(),
            Parsed::Ignored
        );
        let cases: [(&[u8], &str); 5] = [
            (b"{nope", "not JSON"),
            (
                br#"{"type":"transactionSummary","timestamp":1,"transactionSummary":{}}"#,
                "transactionId",
            ),
            (
                br#"{"type":"transactionSummary","transactionId":"a","transactionSummary":{}}"#,
                "timestamp",
            ),
            (
                br#"{"type":"transactionSummary","transactionId":"a","timestamp":1}"#,
                "transactionSummary",
            ),
            (
                br#"{"type":"transactionSummary","transactionId":"a","timestamp":"soon","transactionSummary":{}}"#,
                "invalid type",
            ),
        ];
        for (bytes, says) in cases {
            let error = parse_event(bytes).unwrap_err();
            assert!(error.contains(says), "{error:?} should mention {says}");
        }
    }

    #[test]
    fn an_id_counts_once_and_a_removed_id_counts_again() {
        let hour = 3_600_000;
        let mut agg = Aggregator::new(hour);
        let a = event("same", 10, "s1", "q1", "Success");
        let Parsed::Transaction(tx) = parse_event(a.as_bytes()).unwrap() else {
            unreachable!()
        };
        assert!(agg.insert(&tx));
        assert!(!agg.insert(&tx), "a repeat is not counted");
        assert_eq!(agg.window(0).unwrap().transactions(), 1);
        let mut ids = IdSet::default();
        assert!(ids.insert(tx_key("a")));
        assert!(ids.insert(tx_key("b")));
        assert!(ids.contains(tx_key("b")));
        ids.remove(tx_key("b"));
        assert_eq!(ids.len(), 1);
        assert!(ids.insert(tx_key("b")), "a removed id counts again");
    }

    proptest! {
        #[test]
        fn counts_equal_the_distinct_ids_per_group(ids in prop::collection::vec(0u16..300, 0..400)) {
            // An id always comes with the same group and time, as a resent transaction does.
            let mut agg = Aggregator::new(1_000);
            let mut expected: BTreeMap<(String, String, bool), std::collections::BTreeSet<u16>> = BTreeMap::new();
            for id in &ids {
                let (sub, quota, ok) = (format!("s{}", id % 4), format!("q{}", id % 3), id % 2 == 0);
                let tx = Transaction {
                    id: Cow::Owned(format!("tx-{id}")),
                    timestamp_ms: i64::from(id % 5) * 1_000,
                    group: Group {
                        subscription: Cow::Owned(sub.clone()),
                        quota: Cow::Owned(quota.clone()),
                        resource: Cow::Borrowed("r"),
                        success: ok,
                    },
                };
                agg.insert(&tx);
                expected.entry((sub, quota, ok)).or_default().insert(*id);
            }
            let mut got: BTreeMap<(String, String, bool), u64> = BTreeMap::new();
            for (_, w) in agg.windows() {
                for (g, n) in w.groups() {
                    *got.entry((g.subscription.to_string(), g.quota.to_string(), g.success)).or_default() += n;
                }
            }
            let want: BTreeMap<(String, String, bool), u64> =
                expected.into_iter().map(|(k, ids)| (k, ids.len() as u64)).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn rows_fold_success_as_configured() {
        let mut w = WindowCounts::default();
        let ok = Group {
            subscription: "s".into(),
            quota: "q".into(),
            resource: "r".into(),
            success: true,
        };
        let failed = Group {
            success: false,
            ..ok.clone()
        };
        w.add(&ok, 5);
        w.add(&failed, 2);
        let all = traffic_rows(w.groups(), Counted::All);
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].units, all[0].quota.as_deref()), (7, Some("q")));
        let success = traffic_rows(w.groups(), Counted::SuccessOnly);
        assert_eq!(success[0].units, 5);
    }
}
