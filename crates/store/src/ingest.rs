//! Pushed transactions (docs/ingest.md) in the embedded store: per window, the counts per group
//! (`domain::transactions::WindowCounts`); per generation, the fingerprints of the ids taken
//! (`IdSet`); and, when the store has a state file, a log beside it
//! (`<state_file>.ingest/<window start>.log`) that every accepted transaction is appended to and
//! synced before the batch is acknowledged.
//!
//! Generations: ids are kept by when they arrived, in generations as long as the horizon (plus
//! the allowed clock skew), not by the window of their timestamp, so a `transactionId` sent again
//! with another timestamp is still a duplicate. An id is new when neither the current nor the
//! previous generation holds it: any event the horizon still admits arrived first no earlier than
//! the previous generation's start, so older generations are dropped.
//!
//! A log record is `u32 length` then: `i64 generation`, `u32 groups`, each `(u16 len, subscription)(u16 len,
//! quota)(u16 len, resource)(u8 success)`; `u32 transactions`, each `(u16 shard)(u64 value)(u32
//! group)`; little-endian. A record cut short by a crash is ignored on replay (its batch was
//! never acknowledged). A window's file is deleted when the window is pruned.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use billing_bridge_domain::transactions::{Group, GroupKey, IdSet, TxKey, WindowCounts};
use parking_lot::Mutex;

use crate::StoreError;

/// One window's part of a batch: its groups and its transactions (each naming its group).
#[derive(Clone, Debug, Default)]
pub struct IngestWindow {
    pub start_ms: i64,
    pub groups: Vec<GroupKey>,
    pub transactions: Vec<(TxKey, u32)>,
}

/// What a batch came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub duplicates: u64,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("ingest log {}: {what}: {e}", path.display()))
}

struct Log {
    dir: PathBuf,
    files: BTreeMap<i64, Arc<File>>,
    /// Files written since the last sync.
    dirty: Vec<Arc<File>>,
}

impl Log {
    fn path(&self, start_ms: i64) -> PathBuf {
        self.dir.join(format!("{start_ms}.log"))
    }

    fn file(&mut self, start_ms: i64) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.files.get(&start_ms) {
            return Ok(f.clone());
        }
        let path = self.path(start_ms);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, "cannot open", e))?;
        // The new name must survive a crash too.
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        let file = Arc::new(file);
        self.files.insert(start_ms, file.clone());
        Ok(file)
    }
}

struct State {
    windows: BTreeMap<i64, WindowCounts>,
    /// Ids taken, by generation of arrival.
    generations: BTreeMap<i64, IdSet>,
    log: Option<Log>,
    /// Increments with every logged write.
    written: u64,
}

pub(crate) struct Ingest {
    state: Mutex<State>,
    /// Serializes syncs, so one sync covers every write before it (group commit).
    sync: tokio::sync::Mutex<()>,
    synced: AtomicU64,
    /// A failed sync leaves the log's state unknown: nothing more is acknowledged.
    failed: AtomicBool,
}

fn encode(generation: i64, window: &IngestWindow, accepted: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + window.groups.len() * 64 + accepted.len() * 14);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(window.groups.len() as u32).to_le_bytes());
    for g in &window.groups {
        for part in [&g.subscription, &g.quota, &g.resource] {
            let bytes = &part.as_bytes()[..part.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out.push(u8::from(g.success));
    }
    out.extend_from_slice(&(accepted.len() as u32).to_le_bytes());
    for &i in accepted {
        let (key, group) = window.transactions[i];
        out.extend_from_slice(&key.shard.to_le_bytes());
        out.extend_from_slice(&key.value.to_le_bytes());
        out.extend_from_slice(&group.to_le_bytes());
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Reads a record's payload into `counts` and the ids into their generation; `None` when it is
/// malformed.
fn replay_record(
    payload: &[u8],
    counts: &mut WindowCounts,
    generations: &mut BTreeMap<i64, IdSet>,
) -> Option<()> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let part = payload.get(at..at + n)?;
        at += n;
        Some(part)
    };
    let u16_of = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let generation = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let groups_n = u32_of(take(4)?) as usize;
    let mut groups = Vec::with_capacity(groups_n.min(65_536));
    for _ in 0..groups_n {
        let mut parts = [String::new(), String::new(), String::new()];
        for part in &mut parts {
            let len = u16_of(take(2)?) as usize;
            *part = String::from_utf8(take(len)?.to_vec()).ok()?;
        }
        let success = take(1)?[0] == 1;
        let [subscription, quota, resource] = parts;
        groups.push(Group {
            subscription: Cow::Owned(subscription),
            quota: Cow::Owned(quota),
            resource: Cow::Owned(resource),
            success,
        });
    }
    let ids = generations.entry(generation).or_default();
    let txs = u32_of(take(4)?) as usize;
    for _ in 0..txs {
        let shard = u16_of(take(2)?);
        let value = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let group = groups.get(u32_of(take(4)?) as usize)?;
        if ids.insert(TxKey { shard, value }) {
            counts.add(group, 1);
        }
    }
    Some(())
}

type Replayed = (BTreeMap<i64, WindowCounts>, BTreeMap<i64, IdSet>);

fn replay(dir: &Path) -> Result<Replayed, StoreError> {
    let mut windows = BTreeMap::new();
    let mut generations = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, "cannot list", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io(&path, "cannot read", e))?;
        let counts = windows.entry(start).or_default();
        let mut at = 0usize;
        while let Some(len) = bytes.get(at..at + 4) {
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let Some(payload) = bytes.get(at + 4..at + 4 + len) else {
                tracing::warn!(path = %path.display(), "ingest log: a record cut short by a crash is ignored");
                break;
            };
            if replay_record(payload, counts, &mut generations).is_none() {
                tracing::warn!(path = %path.display(), "ingest log: an unreadable record is ignored");
            }
            at += 4 + len;
        }
    }
    Ok((windows, generations))
}

impl Ingest {
    pub(crate) fn new() -> Self {
        Ingest {
            state: Mutex::new(State {
                windows: BTreeMap::new(),
                generations: BTreeMap::new(),
                log: None,
                written: 0,
            }),
            sync: tokio::sync::Mutex::new(()),
            synced: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// The ingest state kept in `dir` (created if need be), replayed.
    pub(crate) fn with_log(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "cannot create", e))?;
        let (windows, generations) = replay(dir)?;
        let ingest = Self::new();
        {
            let mut state = ingest.state.lock();
            state.windows = windows;
            state.generations = generations;
            state.log = Some(Log {
                dir: dir.to_owned(),
                files: BTreeMap::new(),
                dirty: Vec::new(),
            });
        }
        Ok(ingest)
    }

    /// Takes a batch: ids new to generations `generation` and `generation - 1` are counted.
    pub(crate) async fn ingest(
        &self,
        generation: i64,
        batch: &[IngestWindow],
    ) -> Result<IngestOutcome, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the ingest log could not be synced earlier; restart to recover".to_owned(),
            ));
        }
        let mut outcome = IngestOutcome::default();
        let written = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let mut current = state.generations.remove(&generation).unwrap_or_default();
            let result = Self::take(state, generation, &mut current, batch, &mut outcome);
            state.generations.insert(generation, current);
            result?;
            if state.log.is_none() || outcome.accepted == 0 {
                return Ok(outcome);
            }
            state.written += 1;
            state.written
        };
        self.sync_up_to(written).await?;
        Ok(outcome)
    }

    fn take(
        state: &mut State,
        generation: i64,
        current: &mut IdSet,
        batch: &[IngestWindow],
        outcome: &mut IngestOutcome,
    ) -> Result<(), StoreError> {
        let previous = state.generations.get(&(generation - 1));
        for window in batch {
            let accepted: Vec<usize> = window
                .transactions
                .iter()
                .enumerate()
                .filter(|(_, (key, _))| {
                    !previous.is_some_and(|p| p.contains(*key)) && current.insert(*key)
                })
                .map(|(i, _)| i)
                .collect();
            if accepted.is_empty() {
                outcome.duplicates += window.transactions.len() as u64;
                continue;
            }
            if let Some(log) = &mut state.log {
                let record = encode(generation, window, &accepted);
                let wrote = log.file(window.start_ms).and_then(|f| {
                    (&*f)
                        .write_all(&record)
                        .map_err(|e| io(&log.path(window.start_ms), "cannot write", e))?;
                    Ok(f)
                });
                match wrote {
                    Ok(f) => {
                        if !log.dirty.iter().any(|d| Arc::ptr_eq(d, &f)) {
                            log.dirty.push(f);
                        }
                    }
                    Err(e) => {
                        // Not written: not counted either, so a resend is taken.
                        for &i in &accepted {
                            current.remove(window.transactions[i].0);
                        }
                        return Err(e);
                    }
                }
            }
            // Counted per group once, not per transaction.
            let counts = state.windows.entry(window.start_ms).or_default();
            let mut per_group = vec![0u64; window.groups.len()];
            for &i in &accepted {
                per_group[window.transactions[i].1 as usize] += 1;
            }
            for (group, n) in window.groups.iter().zip(per_group) {
                if n > 0 {
                    counts.add(group, n);
                }
            }
            outcome.accepted += accepted.len() as u64;
            outcome.duplicates += (window.transactions.len() - accepted.len()) as u64;
        }
        Ok(())
    }

    /// Returns once every write up to `written` is on disk; one sync covers many batches.
    async fn sync_up_to(&self, written: u64) -> Result<(), StoreError> {
        let _turn = self.sync.lock().await;
        if self.synced.load(Ordering::Acquire) >= written {
            return Ok(());
        }
        let (files, upto) = {
            let mut state = self.state.lock();
            let upto = state.written;
            let files = state
                .log
                .as_mut()
                .map(|l| std::mem::take(&mut l.dirty))
                .unwrap_or_default();
            (files, upto)
        };
        let synced =
            tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| f.sync_data()))
                .await
                .map_err(|e| StoreError::Unavailable(format!("ingest log sync: {e}")))
                .and_then(|r| {
                    r.map_err(|e| StoreError::Unavailable(format!("ingest log cannot sync: {e}")))
                });
        if let Err(e) = synced {
            self.failed.store(true, Ordering::Release);
            tracing::error!(error = %e, "ingest log: a sync failed; no more batches are acknowledged until a restart");
            return Err(e);
        }
        self.synced.store(upto, Ordering::Release);
        Ok(())
    }

    /// A window's counts per group.
    pub(crate) fn counts(&self, start_ms: i64) -> Vec<(GroupKey, u64)> {
        let state = self.state.lock();
        state
            .windows
            .get(&start_ms)
            .map(|w| w.groups().map(|(g, n)| (g.clone(), n)).collect())
            .unwrap_or_default()
    }

    /// Starts of the windows holding transactions, oldest first.
    pub(crate) fn windows(&self) -> Vec<i64> {
        let state = self.state.lock();
        state
            .windows
            .iter()
            .filter(|(_, w)| w.transactions() > 0)
            .map(|(s, _)| *s)
            .collect()
    }

    /// Drops the ids of generations before `generation`.
    pub(crate) fn forget_generations(&self, generation: i64) {
        let mut state = self.state.lock();
        let keep = state.generations.split_off(&generation);
        state.generations = keep;
    }

    /// Drops windows ending at or before `before_ms`, and their log files.
    pub(crate) fn prune(&self, before_ms: i64, len_ms: i64) {
        let mut state = self.state.lock();
        let keep = state.windows.split_off(&(before_ms - len_ms + 1));
        let dropped = std::mem::replace(&mut state.windows, keep);
        if let Some(log) = &mut state.log {
            for start in dropped.keys() {
                log.files.remove(start);
                let _ = std::fs::remove_file(log.path(*start));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_bridge_domain::transactions::tx_key;

    fn group(sub: &str) -> GroupKey {
        Group {
            subscription: Cow::Owned(sub.to_owned()),
            quota: Cow::Borrowed("q"),
            resource: Cow::Borrowed("r"),
            success: true,
        }
    }

    fn batch(start_ms: i64, ids: &[&str]) -> Vec<IngestWindow> {
        vec![IngestWindow {
            start_ms,
            groups: vec![group("s1"), group("s2")],
            transactions: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (tx_key(id), (i % 2) as u32))
                .collect(),
        }]
    }

    fn total(ingest: &Ingest, start_ms: i64) -> u64 {
        ingest.counts(start_ms).iter().map(|(_, n)| n).sum()
    }

    #[tokio::test]
    async fn accepted_transactions_survive_a_restart_and_repeats_stay_duplicates() {
        let dir = std::env::temp_dir().join(format!("bb-ingest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let ingest = Ingest::with_log(&dir).unwrap();
            let got = ingest
                .ingest(7, &batch(0, &["a", "b", "a", "c"]))
                .await
                .unwrap();
            assert_eq!((got.accepted, got.duplicates), (3, 1));
        }
        // A torn record at the end (a crash mid-write) is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("0.log"))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let ingest = Ingest::with_log(&dir).unwrap();
        assert_eq!(total(&ingest, 0), 3);
        let again = ingest.ingest(7, &batch(0, &["c", "d"])).await.unwrap();
        assert_eq!((again.accepted, again.duplicates), (1, 1));
        ingest.prune(3_600_000, 3_600_000);
        assert!(ingest.counts(0).is_empty());
        assert!(!dir.join("0.log").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_id_is_a_duplicate_in_any_window_while_its_generation_or_the_next_is_current() {
        let ingest = Ingest::new();
        ingest.ingest(1, &batch(0, &["a"])).await.unwrap();
        // The same id in another window, one generation later: still a duplicate.
        let got = ingest
            .ingest(2, &batch(3_600_000, &["a", "b"]))
            .await
            .unwrap();
        assert_eq!((got.accepted, got.duplicates), (1, 1));
        assert_eq!(total(&ingest, 3_600_000), 1);
        // Two generations later the first copy is forgotten (the horizon refuses it by then).
        ingest.forget_generations(2);
        let got = ingest.ingest(3, &batch(0, &["a"])).await.unwrap();
        assert_eq!(got.accepted, 1);
        assert_eq!(total(&ingest, 0), 2);
    }
}
