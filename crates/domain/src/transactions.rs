//! Raw transactions (docs/ingest.md): the two shapes agents publish a transaction summary in
//! (reference §5.3's LogEvent, §5.4's InsightsEvent v4), each read by its own reader into one
//! compact record, and the aggregation core that counts them per (window, subscription, quota,
//! asset resource, success), each transaction id once whichever shape carried it.
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
use serde::{Deserialize, Deserializer};

use crate::usage::{TrafficRow, Window};

/// The LogEvent type that carries a transaction's outcome (reference §5.3).
pub const TRANSACTION_SUMMARY: &str = "transactionSummary";
/// The InsightsEvent name that carries a transaction's outcome (reference §5.4); legs are
/// `api.transaction.event` and, like every other name, not billed.
pub const INSIGHTS_SUMMARY: &str = "api.transaction.summary";
/// The InsightsEvent envelope version this reader knows (reference §5.4).
pub const INSIGHTS_VERSION: &str = "4";
/// What LogEvents carry for a reference the agent could not resolve (reference §5.3); v4
/// leaves it out instead.
pub const UNKNOWN: &str = "unknown";
/// The status counted when only successful calls are billed.
pub const SUCCESS: &str = "Success";
/// Longest transaction id, subscription id, quota id, or asset resource id or name taken, in
/// UTF-8 bytes. Amplify ids are 32 hex characters and names are short; anything this long is
/// not a reference, and keeping it whole (never cut: a cut id could merge two transactions or
/// bill the wrong subscription) would let one event inflate every key it lands in.
pub const MAX_FIELD_BYTES: usize = 512;
/// A `timestamp` below this is epoch seconds, not milliseconds: an agent that never calls
/// `SetTimestamp` sends `time.Now().Unix()` (reference §5.4), and v4 copies it. 10¹¹ ms is
/// March 1973, before any traffic; 10¹¹ s is the year 5138, so no real time reads both ways.
pub const SECONDS_BELOW: i64 = 100_000_000_000;

/// A string borrowed from the event's bytes unless it has escapes. serde borrows a `Cow<str>`
/// only when it is a field's whole type, not inside an `Option`, where it would copy every id
/// of every event.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Both shapes' top-level fields, so one pass over the bytes reads either; the shape's own
/// reader ([`read_log_event`], [`read_insights_event`]) then takes the fields it defines.
#[derive(Deserialize)]
struct EventIn<'a> {
    // LogEvent (§5.3).
    #[serde(rename = "type", borrow, default)]
    kind: Option<Text<'a>>,
    #[serde(rename = "transactionId", borrow, default)]
    transaction_id: Option<Text<'a>>,
    #[serde(rename = "transactionSummary", borrow, default)]
    summary: Option<SummaryIn<'a>>,
    // InsightsEvent (§5.4).
    #[serde(borrow, default)]
    event: Option<Text<'a>>,
    #[serde(borrow, default)]
    version: Option<Text<'a>>,
    #[serde(borrow, default)]
    session: Option<IdIn<'a>>,
    #[serde(borrow, default)]
    data: Option<SummaryIn<'a>>,
    // Both.
    #[serde(default)]
    timestamp: Option<i64>,
}

/// `transactionSummary` (§5.3) and v4's `data` (§5.4) name these alike.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SummaryIn<'a> {
    #[serde(borrow, default)]
    status: Option<Text<'a>>,
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
    id: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct ResourceIn<'a> {
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct ConsumerIn<'a> {
    #[serde(borrow, default)]
    subscription: Option<IdIn<'a>>,
}

/// One transaction, as far as billing is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction<'a> {
    /// `transactionId` (§5.3) or `session.id` (§5.4): one key space, so a transaction sent in
    /// both shapes is one.
    pub id: Cow<'a, str>,
    /// Epoch milliseconds (a seconds `timestamp` is converted, see [`SECONDS_BELOW`]).
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
    /// `assetResource.id`; empty when absent or [`UNKNOWN`].
    pub resource_id: Cow<'a, str>,
    /// `assetResource.name` (§5.3 only: the resource's own name); empty when absent or
    /// [`UNKNOWN`].
    pub resource_name: Cow<'a, str>,
    /// `status == "Success"`.
    pub success: bool,
}

/// An owned [`Group`].
pub type GroupKey = Group<'static>;

fn owned(part: &str) -> Cow<'static, str> {
    Cow::Owned(part.to_owned())
}

impl Group<'_> {
    pub fn to_owned_key(&self) -> GroupKey {
        Group {
            subscription: owned(&self.subscription),
            quota: owned(&self.quota),
            resource_id: owned(&self.resource_id),
            resource_name: owned(&self.resource_name),
            success: self.success,
        }
    }

    fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3Default::new();
        for part in [
            &self.subscription,
            &self.quota,
            &self.resource_id,
            &self.resource_name,
        ] {
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
    /// Not a transaction summary (a `transactionEvent`, an `api.transaction.event` leg, …): not
    /// billed.
    Ignored,
}

/// A field's value, unless absent, empty or [`UNKNOWN`]; refused when over
/// [`MAX_FIELD_BYTES`] (never cut), naming the field.
fn field<'a>(
    v: Option<Text<'a>>,
    prefix: &str,
    name: &str,
) -> Result<Option<Cow<'a, str>>, String> {
    match v {
        Some(Text(s)) if s.len() > MAX_FIELD_BYTES => {
            Err(too_long(&format!("{prefix}.{name}"), s.len()))
        }
        Some(Text(s)) if !s.is_empty() && s != UNKNOWN => Ok(Some(s)),
        _ => Ok(None),
    }
}

fn too_long(name: &str, bytes: usize) -> String {
    format!("{name} is {bytes} bytes, over the {MAX_FIELD_BYTES}-byte limit")
}

/// Epoch milliseconds of a `timestamp` in milliseconds or, below [`SECONDS_BELOW`], seconds.
pub fn timestamp_ms(timestamp: i64) -> i64 {
    if timestamp < SECONDS_BELOW {
        timestamp.saturating_mul(1000)
    } else {
        timestamp
    }
}

/// The fields both shapes' summaries share, under the shape's name for the object (`prefix`).
fn group_of<'a>(
    summary: SummaryIn<'a>,
    prefix: &str,
    with_name: bool,
) -> Result<Group<'a>, String> {
    let (resource_id, resource_name) = match summary.asset_resource {
        Some(r) => (
            field(r.id, prefix, "assetResource.id")?,
            if with_name {
                field(r.name, prefix, "assetResource.name")?
            } else {
                None
            },
        ),
        None => (None, None),
    };
    let subscription = field(
        summary
            .consumer_details
            .and_then(|c| c.subscription)
            .and_then(|s| s.id),
        prefix,
        "consumerDetails.subscription.id",
    )?;
    let quota = field(summary.quota.and_then(|q| q.id), prefix, "quota.id")?;
    Ok(Group {
        subscription: subscription.unwrap_or(Cow::Borrowed(UNKNOWN)),
        quota: quota.unwrap_or(Cow::Borrowed("")),
        resource_id: resource_id.unwrap_or(Cow::Borrowed("")),
        resource_name: resource_name.unwrap_or(Cow::Borrowed("")),
        success: summary.status.is_some_and(|s| s.0 == SUCCESS),
    })
}

fn transaction_id<'a>(id: Option<Text<'a>>, name: &str) -> Result<Cow<'a, str>, String> {
    match id {
        Some(Text(id)) if id.len() > MAX_FIELD_BYTES => Err(too_long(name, id.len())),
        Some(Text(id)) if !id.is_empty() => Ok(id),
        _ => Err(format!("{name} is required (a non-empty string)")),
    }
}

/// Reads a LogEvent (reference §5.3): `type`, `transactionId`, `timestamp`,
/// `transactionSummary` with the resource's id and own name.
fn read_log_event(event: EventIn<'_>) -> Result<Parsed<'_>, String> {
    if event.kind.is_none_or(|k| k.0 != TRANSACTION_SUMMARY) {
        return Ok(Parsed::Ignored);
    }
    let id = transaction_id(event.transaction_id, "transactionId")?;
    let timestamp = event
        .timestamp
        .ok_or("timestamp is required (epoch milliseconds or seconds)")?;
    let summary = event
        .summary
        .ok_or("transactionSummary is required (an object)")?;
    Ok(Parsed::Transaction(Transaction {
        id,
        timestamp_ms: timestamp_ms(timestamp),
        group: group_of(summary, "transactionSummary", true)?,
    }))
}

/// Reads an InsightsEvent (reference §5.4): `event`, `version` "4", `session.id` (the
/// transaction id; the top-level `id` is new on every build and is not read), `timestamp`,
/// `data` with the resource's id only.
fn read_insights_event(event: EventIn<'_>) -> Result<Parsed<'_>, String> {
    if event.event.is_none_or(|e| e.0 != INSIGHTS_SUMMARY) {
        return Ok(Parsed::Ignored);
    }
    match event.version.as_ref().map(|v| &*v.0) {
        Some(INSIGHTS_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "version {other:?} of {INSIGHTS_SUMMARY} is not understood (version \"{INSIGHTS_VERSION}\" is)"
            ));
        }
        None => return Err(format!("version is required (\"{INSIGHTS_VERSION}\")")),
    }
    let id = transaction_id(event.session.and_then(|s| s.id), "session.id")?;
    let timestamp = event
        .timestamp
        .ok_or("timestamp is required (epoch milliseconds or seconds)")?;
    let data = event.data.ok_or("data is required (an object)")?;
    Ok(Parsed::Transaction(Transaction {
        id,
        timestamp_ms: timestamp_ms(timestamp),
        group: group_of(data, "data", false)?,
    }))
}

/// Reads one event in either shape (docs/ingest.md). An error says what is wrong, for the
/// sender.
pub fn parse_event(bytes: &[u8]) -> Result<Parsed<'_>, String> {
    let event: EventIn<'_> = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("not a transaction event: {e}"),
        _ => format!("not JSON: {e}"),
    })?;
    if event.kind.is_some() {
        read_log_event(event)
    } else if event.event.is_some() {
        read_insights_event(event)
    } else {
        Err(format!(
            "type (\"{TRANSACTION_SUMMARY}\") or event (\"{INSIGHTS_SUMMARY}\") is required"
        ))
    }
}

/// The transaction id of an event [`parse_event`] refused, when it can still be read (a JSON
/// object whose `transactionId`, or v4 `session.id`, is a string of at most
/// [`MAX_FIELD_BYTES`]), so the sender can tell which of its transactions was refused. Only
/// called on the refusal path, so reading the event a second time costs nothing that matters.
pub fn refused_transaction_id(bytes: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Ids<'a> {
        #[serde(rename = "transactionId", borrow, default)]
        transaction_id: Option<Text<'a>>,
        #[serde(borrow, default)]
        session: Option<IdIn<'a>>,
    }
    let ids: Ids<'_> = serde_json::from_slice(bytes).ok()?;
    ids.transaction_id
        .or_else(|| ids.session.and_then(|s| s.id))
        .map(|t| t.0)
        .filter(|id| !id.is_empty() && id.len() <= MAX_FIELD_BYTES)
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
    let mut rows: BTreeMap<(&str, &str, &str, &str), u64> = BTreeMap::new();
    for (group, n) in groups {
        if counted == Counted::SuccessOnly && !group.success {
            continue;
        }
        *rows
            .entry((
                &group.subscription,
                &group.quota,
                &group.resource_id,
                &group.resource_name,
            ))
            .or_default() += n;
    }
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    rows.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(
            |((subscription, quota, resource_id, resource_name), units)| TrafficRow {
                subscription_id: subscription.to_owned(),
                resource_id: some(resource_id),
                resource_name: some(resource_name),
                quota: some(quota),
                units,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_refused_event_names_its_id_when_it_can_be_read_and_is_short() {
        let long = "é".repeat(300);
        let cases: [(&[u8], Option<&str>); 6] = [
            (
                br#"{"transactionId":"t-1","timestamp":"soon"}"#,
                Some("t-1"),
            ),
            (
                br#"{"event":"api.transaction.summary","session":{"id":"s-1"}}"#,
                Some("s-1"),
            ),
            (br#"{"transactionId":"","timestamp":1}"#, None),
            (br#"{"transactionId":7}"#, None),
            (b"not json", None),
            (
                format!(r#"{{"transactionId":"{long}"}}"#)
                    .into_bytes()
                    .leak(),
                None,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                refused_transaction_id(bytes).as_deref(),
                expected,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    fn event(id: &str, ts: i64, sub: &str, quota: &str, status: &str) -> String {
        serde_json::json!({
            "version": "1.0", "timestamp": ts, "transactionId": id, "type": "transactionSummary",
            "transactionSummary": {
                "status": status, "statusDetail": "200", "duration": 12,
                "quota": {"id": quota}, "assetResource": {"id": "ar-1", "name": "pets"},
                "consumerDetails": {"subscription": {"id": sub, "name": "x"}}
            }
        })
        .to_string()
    }

    /// The §5.4 shape, as `BuildTransactionV2Data` writes it.
    fn v4(id: &str, ts: i64, data: serde_json::Value) -> String {
        serde_json::json!({
            "id": format!("fresh-{id}-{ts}"), "org": "100000142", "event": "api.transaction.summary",
            "version": "4", "timestamp": ts, "distribution": {"environment": "env-1"},
            "data": data, "session": {"id": id}
        })
        .to_string()
    }

    fn read(text: &str) -> Transaction<'_> {
        match parse_event(text.as_bytes()) {
            Ok(Parsed::Transaction(tx)) => tx,
            other => panic!("a transaction, not {other:?}"),
        }
    }

    fn parts<'a>(g: &'a Group<'_>) -> (&'a str, &'a str, &'a str, &'a str, bool) {
        (
            &g.subscription,
            &g.quota,
            &g.resource_id,
            &g.resource_name,
            g.success,
        )
    }

    #[test]
    fn a_log_event_reads_into_its_group() {
        let text = event("t-1", 1_796_229_002_000, "s1", "q1", "Success");
        let tx = read(&text);
        assert_eq!(tx.id, "t-1");
        assert_eq!(tx.timestamp_ms, 1_796_229_002_000);
        assert_eq!(parts(&tx.group), ("s1", "q1", "ar-1", "pets", true));
        assert!(
            matches!(tx.id, Cow::Borrowed(_)),
            "ids are borrowed from the body"
        );
        let unknown = event("t-2", 1_796_229_002_000, "unknown", "unknown", "Failure");
        let tx = read(&unknown);
        assert_eq!((&*tx.group.subscription, &*tx.group.quota), (UNKNOWN, ""));
        assert!(!tx.group.success);
    }

    #[test]
    fn an_insights_event_reads_its_session_id_and_resource_id() {
        let text = v4(
            "t-1",
            1_796_229_002_000,
            serde_json::json!({"version": "2", "status": "Success", "duration": 61,
                "assetResource": {"id": "ar-1"}, "quota": {"id": "q1"},
                "consumerDetails": {"consumerOrgId": "o", "subscription": {"id": "s1"}}}),
        );
        let tx = read(&text);
        assert_eq!(tx.id, "t-1", "session.id, not the fresh top-level id");
        assert_eq!(tx.timestamp_ms, 1_796_229_002_000);
        assert_eq!(parts(&tx.group), ("s1", "q1", "ar-1", "", true));
        // Unresolved references are absent in v4.
        let bare = v4(
            "t-2",
            1_796_229_002_000,
            serde_json::json!({"status": "Failure"}),
        );
        assert_eq!(parts(&read(&bare).group), (UNKNOWN, "", "", "", false));
    }

    #[test]
    fn one_transaction_in_both_shapes_counts_once() {
        let log = event("same", 1_796_229_002_000, "s1", "q1", "Success");
        let insights = v4(
            "same",
            1_796_229_002_000,
            serde_json::json!({"status": "Success", "quota": {"id": "q1"},
                "consumerDetails": {"subscription": {"id": "s1"}}}),
        );
        let rebuilt = v4(
            "same",
            1_796_229_002_000,
            serde_json::json!({"status": "Success"}),
        );
        let mut agg = Aggregator::new(3_600_000);
        assert!(agg.insert(&read(&insights)));
        assert!(
            !agg.insert(&read(&log)),
            "the LogEvent repeats the v4 event"
        );
        assert!(
            !agg.insert(&read(&rebuilt)),
            "a rebuilt v4 event has a new id only"
        );
        assert_eq!(agg.windows().map(|(_, w)| w.transactions()).sum::<u64>(), 1);
    }

    #[test]
    fn other_types_are_ignored_and_bad_events_say_why() {
        assert_eq!(
            parse_event(br#"{"type":"transactionEvent","transactionId":"x"}"#).unwrap(),
            Parsed::Ignored
        );
        assert_eq!(
            parse_event(
                br#"{"id":"u","event":"api.transaction.event","version":"4","timestamp":1,"data":{},"session":{"id":"x"}}"#
            )
            .unwrap(),
            Parsed::Ignored
        );
        let cases: [(&[u8], &str); 10] = [
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
            (br#"{"timestamp":1,"transactionId":"a"}"#, "type"),
            (
                br#"{"event":"api.transaction.summary","version":"4","timestamp":1,"data":{}}"#,
                "session.id",
            ),
            (
                br#"{"event":"api.transaction.summary","version":"4","timestamp":1,"session":{"id":"a"}}"#,
                "data",
            ),
            (
                br#"{"event":"api.transaction.summary","version":"5","timestamp":1,"data":{},"session":{"id":"a"}}"#,
                "version \"5\"",
            ),
            (
                br#"{"event":"api.transaction.summary","timestamp":1,"data":{},"session":{"id":"a"}}"#,
                "version is required",
            ),
        ];
        for (bytes, says) in cases {
            let error = parse_event(bytes).unwrap_err();
            assert!(error.contains(says), "{error:?} should mention {says}");
        }
    }

    #[test]
    fn a_field_over_the_limit_is_refused_by_name_counting_bytes() {
        // "€" is 3 bytes: 170 of them fit (510 bytes), 171 do not (513), though both are far
        // fewer than 512 characters.
        let fits = "€".repeat(170);
        let over = "€".repeat(171);
        let log = |id: &str, sub: &str, name: &str| {
            serde_json::json!({"type": "transactionSummary", "transactionId": id, "timestamp": 1,
                "transactionSummary": {"assetResource": {"id": "ar", "name": name},
                    "consumerDetails": {"subscription": {"id": sub}}}})
            .to_string()
        };
        let tx_text = log(&fits, &fits, &fits);
        let tx = read(&tx_text);
        assert_eq!((tx.id.len(), tx.group.resource_name.len()), (510, 510));
        for (text, field) in [
            (log(&over, "s", "n"), "transactionId is 513 bytes"),
            (
                log("t", &over, "n"),
                "transactionSummary.consumerDetails.subscription.id is 513 bytes",
            ),
            (
                log("t", "s", &over),
                "transactionSummary.assetResource.name is 513 bytes",
            ),
            (
                v4(&over, 1, serde_json::json!({})),
                "session.id is 513 bytes",
            ),
            (
                v4("t", 1, serde_json::json!({"quota": {"id": over}})),
                "data.quota.id is 513 bytes",
            ),
            (
                v4("t", 1, serde_json::json!({"assetResource": {"id": over}})),
                "data.assetResource.id is 513 bytes",
            ),
        ] {
            let error = parse_event(text.as_bytes()).unwrap_err();
            assert!(error.contains(field), "{error:?} should say {field:?}");
            assert!(error.contains("512-byte limit"), "{error:?}");
        }
    }

    #[test]
    fn seconds_are_read_as_seconds() {
        // An agent that never sets a timestamp sends time.Now().Unix().
        let text = event("t", 1_796_229_002, "s", "q", "Success");
        assert_eq!(read(&text).timestamp_ms, 1_796_229_002_000);
        let text = v4("t", 1_796_229_002, serde_json::json!({}));
        assert_eq!(read(&text).timestamp_ms, 1_796_229_002_000);
        assert_eq!(timestamp_ms(SECONDS_BELOW - 1), (SECONDS_BELOW - 1) * 1000);
        assert_eq!(timestamp_ms(SECONDS_BELOW), SECONDS_BELOW);
    }

    proptest! {
        #[test]
        fn a_time_reads_the_same_in_seconds_and_in_milliseconds(secs in 100_000_000i64..SECONDS_BELOW / 1000 * 10) {
            // Any time from 1973 to 5138, sent in seconds or in ms, lands on the same ms.
            prop_assert_eq!(timestamp_ms(secs), secs * 1000);
            prop_assert_eq!(timestamp_ms(timestamp_ms(secs)), secs * 1000);
        }

        #[test]
        fn a_field_is_taken_whole_or_refused(name in "[a-zé€😀]{0,300}") {
            let text = serde_json::json!({"type": "transactionSummary", "transactionId": "t", "timestamp": 1,
                "transactionSummary": {"assetResource": {"name": name}}}).to_string();
            match parse_event(text.as_bytes()) {
                Ok(Parsed::Transaction(tx)) => {
                    prop_assert!(name.len() <= MAX_FIELD_BYTES);
                    let want = if name.is_empty() { "" } else { name.as_str() };
                    prop_assert_eq!(&*tx.group.resource_name, want, "never cut");
                }
                Ok(Parsed::Ignored) => prop_assert!(false, "a summary is not ignored"),
                Err(e) => {
                    prop_assert!(name.len() > MAX_FIELD_BYTES, "{}", e);
                    prop_assert!(e.contains("transactionSummary.assetResource.name"));
                }
            }
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
                        resource_id: Cow::Borrowed("r"),
                        resource_name: Cow::Borrowed(""),
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
            resource_id: "r".into(),
            resource_name: "".into(),
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
