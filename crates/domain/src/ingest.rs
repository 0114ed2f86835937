//! The rules for pushed transactions (docs/ingest.md): which timestamps a batch may hold (no
//! older than the horizon behind the clock, no further ahead than the allowed skew) and how its
//! transactions are grouped, by the window their timestamp falls in, then by their group.

use std::collections::HashMap;

use crate::transactions::Group;
use crate::usage::Window;

/// What decides where a pushed transaction goes, fixed for one batch at the time it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The oldest timestamp taken (epoch ms): `now - horizon`.
    pub oldest_ms: i64,
    /// The newest timestamp taken (epoch ms): `now + future_skew`.
    pub newest_ms: i64,
    /// The reporting window's length.
    pub window_ms: i64,
}

/// Where a transaction's timestamp puts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In the window starting at `start_ms`.
    Window { start_ms: i64 },
    /// Older than the horizon: its window is no longer reported.
    TooOld,
    /// Further ahead of the clock than the allowed skew.
    InFuture,
}

impl Placement {
    /// The refusal reason an answer names, for a timestamp not taken.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Placement::Window { .. } => None,
            Placement::TooOld => Some("too_old"),
            Placement::InFuture => Some("in_future"),
        }
    }
}

impl Admission {
    /// The admission of a batch arriving at `now_ms`: the horizon and the skew both bounds
    /// included.
    pub fn at(now_ms: i64, horizon_ms: i64, future_skew_ms: i64, window_ms: i64) -> Admission {
        Admission {
            oldest_ms: now_ms.saturating_sub(horizon_ms),
            newest_ms: now_ms.saturating_add(future_skew_ms),
            window_ms,
        }
    }

    pub fn place(&self, timestamp_ms: i64) -> Placement {
        if timestamp_ms < self.oldest_ms {
            Placement::TooOld
        } else if timestamp_ms > self.newest_ms {
            Placement::InFuture
        } else {
            Placement::Window {
                start_ms: Window::containing(timestamp_ms, self.window_ms).start_ms,
            }
        }
    }
}

/// One window's part of a batch: its distinct groups in order of first appearance, and each
/// transaction's item with the position of its group.
#[derive(Debug, PartialEq)]
pub struct BatchWindow<'a, T> {
    pub start_ms: i64,
    pub groups: Vec<Group<'a>>,
    pub items: Vec<(T, u32)>,
}

/// A batch's transactions grouped by window (in order of first appearance), then by group.
/// `T` is whatever the caller keeps of each transaction (its key, its position in the batch).
pub struct BatchWindows<'a, T> {
    windows: Vec<(BatchWindow<'a, T>, GroupIndex<'a>)>,
}

/// A window's groups by value (a fast hash: the keys are short ids, not attacker-chosen keys
/// that could collide on purpose to any effect beyond one slow batch).
type GroupIndex<'a> = HashMap<Group<'a>, u32, foldhash::fast::RandomState>;

impl<T> Default for BatchWindows<'_, T> {
    fn default() -> Self {
        BatchWindows {
            windows: Vec::new(),
        }
    }
}

impl<'a, T> BatchWindows<'a, T> {
    /// Adds a transaction of `group` to the window starting at `start_ms`.
    pub fn add(&mut self, start_ms: i64, group: Group<'a>, item: T) {
        // A batch spans few windows (usually one or two): a scan beats a map.
        let at = match self
            .windows
            .iter()
            .position(|(w, _)| w.start_ms == start_ms)
        {
            Some(at) => at,
            None => {
                self.windows.push((
                    BatchWindow {
                        start_ms,
                        groups: Vec::new(),
                        items: Vec::new(),
                    },
                    GroupIndex::default(),
                ));
                self.windows.len() - 1
            }
        };
        let (window, index) = &mut self.windows[at];
        let slot = match index.get(&group) {
            Some(slot) => *slot,
            None => {
                let slot = window.groups.len() as u32;
                window.groups.push(group.clone());
                index.insert(group, slot);
                slot
            }
        };
        window.items.push((item, slot));
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn into_windows(self) -> Vec<BatchWindow<'a, T>> {
        self.windows.into_iter().map(|(w, _)| w).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn group(subscription: &str) -> Group<'_> {
        Group {
            subscription: subscription.into(),
            quota: "q1".into(),
            resource_id: "ar-1".into(),
            resource_name: "pets".into(),
            success: true,
        }
    }

    #[test]
    fn the_horizon_and_the_skew_bound_what_is_taken_both_bounds_included() {
        let now = 100 * HOUR + 1_234;
        let rules = Admission::at(now, 12 * HOUR, 5 * 60_000, HOUR);
        assert_eq!(
            rules.place(now - 12 * HOUR),
            Placement::Window {
                start_ms: 88 * HOUR
            }
        );
        assert_eq!(rules.place(now - 12 * HOUR - 1), Placement::TooOld);
        assert_eq!(
            rules.place(now + 5 * 60_000),
            Placement::Window {
                start_ms: 100 * HOUR
            }
        );
        assert_eq!(rules.place(now + 5 * 60_000 + 1), Placement::InFuture);
        assert_eq!(
            rules.place(now),
            Placement::Window {
                start_ms: 100 * HOUR
            }
        );
        assert_eq!(Placement::TooOld.refusal(), Some("too_old"));
        assert_eq!(Placement::InFuture.refusal(), Some("in_future"));
        assert_eq!(Placement::Window { start_ms: 0 }.refusal(), None);
    }

    #[test]
    fn a_timestamp_on_a_window_boundary_starts_that_window() {
        let rules = Admission::at(10 * HOUR, 10 * HOUR, 0, HOUR);
        assert_eq!(
            rules.place(3 * HOUR),
            Placement::Window { start_ms: 3 * HOUR }
        );
        assert_eq!(
            rules.place(3 * HOUR - 1),
            Placement::Window { start_ms: 2 * HOUR }
        );
    }

    #[test]
    fn extreme_clocks_and_settings_do_not_overflow() {
        assert_eq!(
            Admission::at(i64::MIN + 5, i64::MAX, 0, HOUR).oldest_ms,
            i64::MIN
        );
        assert_eq!(
            Admission::at(i64::MAX - 5, 0, i64::MAX, HOUR).newest_ms,
            i64::MAX
        );
    }

    #[test]
    fn transactions_are_grouped_by_window_then_group_in_order_of_first_appearance() {
        let mut batch = BatchWindows::default();
        assert!(batch.is_empty());
        batch.add(HOUR, group("s1"), 'a');
        batch.add(0, group("s2"), 'b');
        batch.add(HOUR, group("s2"), 'c');
        batch.add(HOUR, group("s1"), 'd');
        batch.add(0, group("s2"), 'e');
        assert!(!batch.is_empty());
        let windows = batch.into_windows();
        assert_eq!(
            windows,
            vec![
                BatchWindow {
                    start_ms: HOUR,
                    groups: vec![group("s1"), group("s2")],
                    items: vec![('a', 0), ('c', 1), ('d', 0)],
                },
                BatchWindow {
                    start_ms: 0,
                    groups: vec![group("s2")],
                    items: vec![('b', 0), ('e', 0)],
                },
            ]
        );
    }
}
