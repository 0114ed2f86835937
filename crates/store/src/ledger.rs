//! The usage ledger (design.md §1): for every (billing subscription, add-on, window) the reports
//! made, each written as an intent *before* its usage record is sent and settled once the billing
//! platform acknowledged it; which windows are done; the watermark (end of the last window
//! reported in order); and one-time marks. Every change is an [`Op`], so an implementation
//! either applies them in memory (and journals them) or maps them onto its own commands.
//! The embedded store's named queues (delayed redelivery) are journaled here too, as
//! [`Op::QueuePut`], [`Op::QueueRetry`] and [`Op::QueueAck`] over a [`QueueState`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use billing_bridge_domain::trust::SubscriptionLink;
use billing_bridge_domain::usage::{Dated, Window};
use serde::{Deserialize, Serialize};

/// (billing subscription id, add-on code).
pub type Pair = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportState {
    /// Written before the usage record is sent; resent under the same key until settled.
    #[serde(rename = "p")]
    Pending,
    /// The billing platform holds the record.
    #[serde(rename = "a")]
    Acked,
    /// Not sent: the billing subscription has ended. Counted, never resent.
    #[serde(rename = "s")]
    Skipped,
}

/// One report of a pair in a window: 0 the first, then one per late delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    #[serde(rename = "n")]
    pub report: u32,
    #[serde(rename = "u")]
    pub amount: u64,
    /// The record's usage date, fixed with the intent so a resend is the same record.
    #[serde(rename = "t")]
    pub usage_ms: i64,
    /// When the intent was written (wall clock, epoch ms).
    #[serde(rename = "c")]
    pub created_ms: i64,
    #[serde(rename = "m")]
    pub amplify_subscription: String,
    #[serde(rename = "s")]
    pub state: ReportState,
    /// For the part of a window cut at a period boundary that comes after the cut: where it
    /// starts. `None`: the report counts the window from its start (all of it, or the part
    /// before the cut).
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// How its usage date was chosen around a renewal (`None`: written before that rule).
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub how: Option<Dated>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub pair: Pair,
    pub report: Report,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub pair: Pair,
    pub report: u32,
    pub state: ReportState,
}

/// What the ledger knows of one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowLedger {
    /// Every record of the window was settled at least once.
    pub done: bool,
    /// Done long ago: its per-pair reports were dropped to bound memory, so late traffic can
    /// no longer be told apart and the window is not polled again.
    pub pruned: bool,
    pub pairs: HashMap<Pair, Vec<Report>>,
}

impl WindowLedger {
    /// Units already reported (or promised, while pending) for a pair.
    pub fn reported(&self, pair: &Pair) -> u64 {
        self.pairs
            .get(pair)
            .map(|reports| reports.iter().map(|r| r.amount).sum())
            .unwrap_or(0)
    }

    /// The number the next report of a pair takes.
    pub fn next_report(&self, pair: &Pair) -> u32 {
        self.pairs.get(pair).map(|r| r.len() as u32).unwrap_or(0)
    }

    /// Units reported for the part of a pair's window from `from_ms` on (after a cut).
    pub fn reported_from(&self, pair: &Pair, from_ms: i64) -> u64 {
        self.pairs
            .get(pair)
            .map(|reports| {
                reports
                    .iter()
                    .filter(|r| r.from_ms == Some(from_ms))
                    .map(|r| r.amount)
                    .sum()
            })
            .unwrap_or(0)
    }

    pub fn pending(&self) -> impl Iterator<Item = (&Pair, &Report)> {
        self.pairs.iter().flat_map(|(pair, reports)| {
            reports
                .iter()
                .filter(|r| r.state == ReportState::Pending)
                .map(move |r| (pair, r))
        })
    }
}

/// One change to the ledger; also the journal's line format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "i")]
    Intents(Window, Vec<Intent>),
    #[serde(rename = "s")]
    Settled(Window, Vec<Settled>),
    #[serde(rename = "d")]
    Done(Window),
    #[serde(rename = "w")]
    Watermark(i64),
    #[serde(rename = "o")]
    Once(String),
    /// Drop the per-pair reports of done windows that end at or before this instant.
    #[serde(rename = "p")]
    Prune(i64),
    /// The cached links between Amplify subscriptions and billing (a snapshot, replacing the last).
    #[serde(rename = "l")]
    Links(String),
    /// The bridge created (or took up) this Recurly subscription for an Amplify subscription.
    #[serde(rename = "b")]
    Linked(SubscriptionLink),
    /// The link of this Amplify subscription id is done with (its billing ended).
    #[serde(rename = "u")]
    Unlinked(String),
    /// The last sequence id read from a WatchTopic (its name), replacing the one before.
    #[serde(rename = "t")]
    WatchSequence(String, i64),
    /// An item added to a named queue (the queue's name, the item as it stands).
    #[serde(rename = "q")]
    QueuePut(String, QueuedItem),
    /// A taken item handed back for later: queue, item number, new due time (epoch ms), attempt.
    /// One record, so the hand-back and the new due time are durable together.
    #[serde(rename = "r")]
    QueueRetry(String, u64, i64, u32),
    /// An item done with: queue, item number.
    #[serde(rename = "a")]
    QueueAck(String, u64),
}

/// One item of a named queue, as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedItem {
    /// Assigned by the store, growing: among items due at the same time the older goes first.
    #[serde(rename = "n")]
    pub number: u64,
    /// The caller's stable id.
    #[serde(rename = "i")]
    pub id: String,
    #[serde(rename = "b")]
    pub body: String,
    /// When it may be taken (epoch ms).
    #[serde(rename = "d")]
    pub due_ms: i64,
    /// Times it was handed back for later.
    #[serde(rename = "a")]
    pub attempt: u32,
}

/// A named queue: its items, and the heap of their due times.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    pub items: BTreeMap<u64, QueuedItem>,
    /// (due ms, number), earliest first.
    pub due: BTreeSet<(i64, u64)>,
    /// The number the next item takes.
    pub next: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub windows: BTreeMap<Window, WindowLedger>,
    pub watermark: Option<i64>,
    pub once: HashSet<String>,
    pub links: Option<String>,
    /// Amplify subscription id → the billing subscription the bridge made for it.
    pub subscriptions: BTreeMap<String, SubscriptionLink>,
    /// WatchTopic name → the last sequence id the bridge processed.
    pub watch_sequences: BTreeMap<String, i64>,
    /// Queue name → its items not yet acknowledged.
    pub queues: BTreeMap<String, QueueState>,
}

impl Ledger {
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Intents(window, intents) => {
                let entry = self.windows.entry(window).or_default();
                for Intent { pair, report } in intents {
                    let reports = entry.pairs.entry(pair).or_default();
                    // Replaying a journal may apply an intent twice: a report number is
                    // written once.
                    if !reports.iter().any(|r| r.report == report.report) {
                        reports.push(report);
                    }
                }
            }
            Op::Settled(window, settled) => {
                if let Some(entry) = self.windows.get_mut(&window) {
                    for s in settled {
                        if let Some(report) = entry
                            .pairs
                            .get_mut(&s.pair)
                            .and_then(|rs| rs.iter_mut().find(|r| r.report == s.report))
                        {
                            report.state = s.state;
                        }
                    }
                }
            }
            Op::Done(window) => self.windows.entry(window).or_default().done = true,
            Op::Watermark(end) => {
                self.watermark = Some(self.watermark.map_or(end, |w| w.max(end)));
            }
            Op::Once(key) => {
                self.once.insert(key);
            }
            Op::Links(snapshot) => self.links = Some(snapshot),
            Op::Linked(link) => {
                self.subscriptions.insert(link.amplify_id.clone(), link);
            }
            Op::Unlinked(id) => {
                self.subscriptions.remove(&id);
            }
            Op::WatchSequence(topic, sequence) => {
                self.watch_sequences.insert(topic, sequence);
            }
            Op::QueuePut(queue, item) => {
                let state = self.queues.entry(queue).or_default();
                state.next = state.next.max(item.number + 1);
                // Replaying a journal may apply a put twice: an item number is written once.
                if !state.items.contains_key(&item.number) {
                    state.due.insert((item.due_ms, item.number));
                    state.items.insert(item.number, item);
                }
            }
            Op::QueueRetry(queue, number, due_ms, attempt) => {
                if let Some(state) = self.queues.get_mut(&queue)
                    && let Some(item) = state.items.get_mut(&number)
                {
                    state.due.remove(&(item.due_ms, number));
                    item.due_ms = due_ms;
                    item.attempt = attempt;
                    state.due.insert((due_ms, number));
                }
            }
            Op::QueueAck(queue, number) => {
                if let Some(state) = self.queues.get_mut(&queue)
                    && let Some(item) = state.items.remove(&number)
                {
                    state.due.remove(&(item.due_ms, number));
                }
            }
            Op::Prune(before) => {
                for (window, entry) in self.windows.range_mut(..) {
                    if window.end_ms <= before && entry.done && entry.pending().next().is_none() {
                        entry.pairs = HashMap::new();
                        entry.pruned = true;
                    }
                }
            }
        }
    }

    /// The operations that rebuild this state: what a compacted journal holds.
    pub fn snapshot(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        if let Some(w) = self.watermark {
            ops.push(Op::Watermark(w));
        }
        for key in &self.once {
            ops.push(Op::Once(key.clone()));
        }
        if let Some(links) = &self.links {
            ops.push(Op::Links(links.clone()));
        }
        for link in self.subscriptions.values() {
            ops.push(Op::Linked(link.clone()));
        }
        for (topic, sequence) in &self.watch_sequences {
            ops.push(Op::WatchSequence(topic.clone(), *sequence));
        }
        for (queue, state) in &self.queues {
            for item in state.items.values() {
                ops.push(Op::QueuePut(queue.clone(), item.clone()));
            }
        }
        let mut pruned_before = None;
        for (window, entry) in &self.windows {
            let intents: Vec<Intent> = entry
                .pairs
                .iter()
                .flat_map(|(pair, reports)| {
                    reports.iter().map(|r| Intent {
                        pair: pair.clone(),
                        report: r.clone(),
                    })
                })
                .collect();
            if !intents.is_empty() {
                ops.push(Op::Intents(*window, intents));
            }
            if entry.done {
                ops.push(Op::Done(*window));
            }
            if entry.pruned {
                pruned_before = Some(window.end_ms);
            }
        }
        if let Some(before) = pruned_before {
            // Windows are pruned oldest first, so one prune up to the newest pruned window
            // rebuilds the same state; later windows either keep reports or are not done.
            ops.push(Op::Prune(before));
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: i64) -> Window {
        Window {
            start_ms: i * 10,
            end_ms: i * 10 + 10,
        }
    }

    fn report(n: u32, amount: u64, state: ReportState) -> Report {
        Report {
            report: n,
            amount,
            usage_ms: 5,
            created_ms: 1,
            amplify_subscription: "s".into(),
            state,
            from_ms: None,
            how: None,
        }
    }

    fn pair() -> Pair {
        ("sub".into(), "addon".into())
    }

    #[test]
    fn intents_settle_and_a_replayed_intent_is_not_counted_twice() {
        let mut ledger = Ledger::default();
        let intent = Op::Intents(
            w(0),
            vec![Intent {
                pair: pair(),
                report: report(0, 7, ReportState::Pending),
            }],
        );
        ledger.apply(intent.clone());
        ledger.apply(intent);
        let entry = &ledger.windows[&w(0)];
        assert_eq!(entry.reported(&pair()), 7);
        assert_eq!(entry.next_report(&pair()), 1);
        assert_eq!(entry.pending().count(), 1);
        ledger.apply(Op::Settled(
            w(0),
            vec![Settled {
                pair: pair(),
                report: 0,
                state: ReportState::Acked,
            }],
        ));
        assert_eq!(ledger.windows[&w(0)].pending().count(), 0);
        assert_eq!(ledger.windows[&w(0)].reported(&pair()), 7);
    }

    #[test]
    fn the_watermark_only_moves_forward() {
        let mut ledger = Ledger::default();
        ledger.apply(Op::Watermark(20));
        ledger.apply(Op::Watermark(10));
        assert_eq!(ledger.watermark, Some(20));
    }

    #[test]
    fn pruning_keeps_done_flags_and_spares_windows_with_pending_reports() {
        let mut ledger = Ledger::default();
        for i in 0..3 {
            let state = if i == 1 {
                ReportState::Pending
            } else {
                ReportState::Acked
            };
            ledger.apply(Op::Intents(
                w(i),
                vec![Intent {
                    pair: pair(),
                    report: report(0, 1, state),
                }],
            ));
            ledger.apply(Op::Done(w(i)));
        }
        ledger.apply(Op::Prune(30));
        assert!(ledger.windows[&w(0)].pruned && ledger.windows[&w(0)].pairs.is_empty());
        assert!(!ledger.windows[&w(1)].pruned, "a pending report is kept");
        assert!(ledger.windows[&w(2)].pruned);
        assert!(ledger.windows.values().all(|e| e.done));
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_state() {
        let mut ledger = Ledger::default();
        ledger.apply(Op::Once("told".into()));
        for i in 0..4 {
            ledger.apply(Op::Intents(
                w(i),
                vec![Intent {
                    pair: pair(),
                    report: report(0, i as u64 + 1, ReportState::Acked),
                }],
            ));
            if i < 3 {
                ledger.apply(Op::Done(w(i)));
            }
        }
        ledger.apply(Op::Watermark(30));
        ledger.apply(Op::Prune(20));
        for id in ["s1", "s2"] {
            ledger.apply(Op::Linked(SubscriptionLink {
                amplify_id: id.into(),
                amplify_name: format!("sub-{id}"),
                recurly_subscription: format!("r-{id}"),
                plan_code: "amplify-plan-p1".into(),
                account_code: "amplify-team-t1".into(),
            }));
        }
        ledger.apply(Op::Unlinked("s1".into()));
        for (n, id) in ["a", "b", "c"].iter().enumerate() {
            ledger.apply(Op::QueuePut(
                "notices".into(),
                QueuedItem {
                    number: n as u64,
                    id: (*id).into(),
                    body: format!("body {id}"),
                    due_ms: 100,
                    attempt: 0,
                },
            ));
        }
        ledger.apply(Op::QueueRetry("notices".into(), 0, 500, 1));
        ledger.apply(Op::QueueAck("notices".into(), 1));
        let mut rebuilt = Ledger::default();
        for op in ledger.snapshot() {
            rebuilt.apply(op);
        }
        assert_eq!(rebuilt.windows, ledger.windows);
        assert_eq!(rebuilt.watermark, ledger.watermark);
        assert_eq!(rebuilt.once, ledger.once);
        assert_eq!(rebuilt.subscriptions, ledger.subscriptions);
        assert_eq!(rebuilt.queues, ledger.queues);
        assert_eq!(
            rebuilt.queues["notices"].due.iter().collect::<Vec<_>>(),
            [&(100, 2), &(500, 0)],
            "the heap keeps due times after a retry and forgets acknowledged items"
        );
        assert_eq!(rebuilt.queues["notices"].next, 3);
        assert_eq!(
            rebuilt.subscriptions.keys().collect::<Vec<_>>(),
            ["s2"],
            "an unlinked subscription stays forgotten"
        );
    }
}
