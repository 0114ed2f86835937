//! Pushed transactions (docs/ingest.md) in the embedded store: per window, the counts per group;
//! per generation, the fingerprints of the ids taken (`IdSet`); and, when the store has a state
//! file, a log per window beside it (`<state_file>.ingest/<window start>.log`) that every accepted
//! transaction is appended to and synced before the batch is acknowledged.
//!
//! Generations: ids are kept by when they arrived, in generations as long as the horizon (plus
//! the allowed clock skew), not by the window of their timestamp, so a `transactionId` sent again
//! with another timestamp is still a duplicate. An id is new when neither the current nor the
//! previous generation holds it: any event the horizon still admits arrived first no earlier than
//! the previous generation's start, so older generations are dropped.
//!
//! A window's log (format version 2; framing, checksums, torn tails and damage as `framing.rs`
//! says) holds two kinds of record, each payload starting with its kind byte:
//! - `1` batch: `i64 generation`, `u32 n` new groups, each `subscription, quota, resource id,
//!   resource name`
//!   (`u32` length + UTF-8, never cut) and `u8 success`; then `u32 m` transactions, each
//!   `u16 shard, u64 value, u32 group`. Groups are numbered per file in the order they are first
//!   written, so a group's strings are written once per file, not once per batch.
//! - `2` counts: `u32 n` new groups, each as above followed by `u64 count`.
//!
//! Raw ids are kept only while they can still make a repeat a duplicate: once every batch in a
//! window's file belongs to a generation that is forgotten, the file is rewritten as one counts
//! record (its ids dropped). The whole file goes when the window is past its re-polls.
//! A file written by the release before (no header, `u16` lengths) is read and rewritten in this
//! format when the store opens.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use billing_bridge_domain::transactions::{Group, GroupKey, IdSet, TxKey};
use parking_lot::Mutex;

use crate::StoreError;
use crate::framing::{self, Format, Reader};

pub(crate) const FORMAT: Format = Format {
    magic: b"BBINGEST",
    version: 2,
    what: "ingest log",
};
const BATCH: u8 = 1;
const COUNTS: u8 = 2;

/// One window's part of a batch: its groups and its transactions (each naming its group).
#[derive(Clone, Debug, Default)]
pub struct IngestWindow {
    pub start_ms: i64,
    pub groups: Vec<GroupKey>,
    pub transactions: Vec<(TxKey, u32)>,
}

/// What a batch came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    /// Transactions refused because their window already holds the most groups it may and
    /// theirs is not one of them: (window's position in the batch, transaction's position in
    /// that window).
    pub too_many_groups: Vec<(usize, usize)>,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("ingest log {}: {what}: {e}", path.display()))
}

/// One window: its groups numbered as in its file, and their counts.
#[derive(Debug, Default)]
struct WindowState {
    ids: HashMap<GroupKey, u32>,
    /// By group number; its length is the next number.
    counts: Vec<u64>,
    transactions: u64,
    /// The newest generation whose ids the window's file holds; `None` when it holds counts
    /// only.
    raw_generation: Option<i64>,
}

impl WindowState {
    fn define(&mut self, group: GroupKey) -> Result<u32, String> {
        let id = self.counts.len() as u32;
        if self.ids.insert(group, id).is_some() {
            return Err("a group is defined twice".to_owned());
        }
        self.counts.push(0);
        Ok(id)
    }

    /// Groups in number order, with their counts.
    fn numbered(&self) -> Vec<(&GroupKey, u64)> {
        let mut groups: Vec<(&GroupKey, u32)> = self.ids.iter().map(|(g, id)| (g, *id)).collect();
        groups.sort_by_key(|(_, id)| *id);
        groups
            .into_iter()
            .map(|(g, id)| (g, self.counts[id as usize]))
            .collect()
    }
}

fn put_group(out: &mut Vec<u8>, g: &Group<'_>) -> Result<(), String> {
    for part in [&g.subscription, &g.quota, &g.resource_id, &g.resource_name] {
        framing::put_string(out, part)?;
    }
    out.push(u8::from(g.success));
    Ok(())
}

fn read_group(r: &mut Reader<'_>) -> Result<GroupKey, String> {
    let subscription = r.string()?;
    let quota = r.string()?;
    let resource_id = r.string()?;
    let resource_name = r.string()?;
    let success = match r.u8()? {
        0 => false,
        1 => true,
        other => return Err(format!("a group's success flag is {other}")),
    };
    Ok(Group {
        subscription: Cow::Owned(subscription),
        quota: Cow::Owned(quota),
        resource_id: Cow::Owned(resource_id),
        resource_name: Cow::Owned(resource_name),
        success,
    })
}

/// A batch record: its new groups (numbered on from those the file defines) and transactions.
fn encode_batch(
    generation: i64,
    new_groups: &[&GroupKey],
    transactions: &[(TxKey, u32)],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut payload = Vec::with_capacity(17 + new_groups.len() * 64 + transactions.len() * 14);
    payload.push(BATCH);
    payload.extend_from_slice(&generation.to_le_bytes());
    payload.extend_from_slice(&(new_groups.len() as u32).to_le_bytes());
    for g in new_groups {
        put_group(&mut payload, g)?;
    }
    payload.extend_from_slice(&(transactions.len() as u32).to_le_bytes());
    for (key, group) in transactions {
        payload.extend_from_slice(&key.shard.to_le_bytes());
        payload.extend_from_slice(&key.value.to_le_bytes());
        payload.extend_from_slice(&group.to_le_bytes());
    }
    framing::frame(&payload, out)
}

/// A counts record defining every group of `window`, in number order, with its count.
fn encode_counts(window: &WindowState, out: &mut Vec<u8>) -> Result<(), String> {
    let groups = window.numbered();
    let mut payload = Vec::with_capacity(5 + groups.len() * 72);
    payload.push(COUNTS);
    payload.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    for (g, n) in groups {
        put_group(&mut payload, g)?;
        payload.extend_from_slice(&n.to_le_bytes());
    }
    framing::frame(&payload, out)
}

/// Applies one record to its window and the generations' ids.
fn apply_record(
    payload: &[u8],
    window: &mut WindowState,
    generations: &mut BTreeMap<i64, IdSet>,
) -> Result<(), String> {
    let mut r = Reader::new(payload);
    match r.u8()? {
        BATCH => {
            let generation = r.i64()?;
            for _ in 0..r.u32()? {
                window.define(read_group(&mut r)?)?;
            }
            let n = r.u32()? as usize;
            // Every transaction takes 14 bytes: a count the payload cannot hold is damage.
            if n.saturating_mul(14) > payload.len() {
                return Err(format!("{n} transactions cannot fit in the record"));
            }
            let ids = generations.entry(generation).or_default();
            for _ in 0..n {
                let key = TxKey {
                    shard: r.u16()?,
                    value: r.u64()?,
                };
                let group = r.u32()? as usize;
                let count = window
                    .counts
                    .get_mut(group)
                    .ok_or_else(|| format!("a transaction names group {group}, never defined"))?;
                // The writer logs an id once per generation; a repeat would not count twice.
                if ids.insert(key) {
                    *count += 1;
                    window.transactions += 1;
                }
            }
            window.raw_generation = Some(
                window
                    .raw_generation
                    .map_or(generation, |g| g.max(generation)),
            );
        }
        COUNTS => {
            for _ in 0..r.u32()? {
                let id = window.define(read_group(&mut r)?)?;
                let n = r.u64()?;
                window.counts[id as usize] += n;
                window.transactions += n;
            }
        }
        kind => return Err(format!("unknown record kind {kind}")),
    }
    r.done()
}

/// The release before this format: records of `u32 length` then `i64 generation`, `u32` groups
/// (`u16`-length strings, `u8 success`), `u32` transactions (`u16 shard, u64 value, u32
/// group`); no header, no checksum. Returns the window and its batches, as they would be
/// written now. A record cut short at the end is dropped (it was never acknowledged).
type Batches = Vec<(i64, Vec<(TxKey, u32)>)>;

fn read_v1(
    path: &Path,
    bytes: &[u8],
    generations: &mut BTreeMap<i64, IdSet>,
) -> Result<(WindowState, Batches), StoreError> {
    let mut window = WindowState::default();
    let mut batches = Vec::new();
    let mut at = 0usize;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(payload) = bytes.get(at + 4..at + 4 + len) else {
            tracing::warn!(path = %path.display(), offset = at, "Ingest log: a record cut short by a crash is dropped (it was never acknowledged).");
            break;
        };
        let batch = read_v1_record(payload, &mut window, generations, path, at as u64)
            .map_err(|e| framing::corrupt(path, at as u64, e))?;
        batches.push(batch);
        at += 4 + len;
    }
    if at < bytes.len() && bytes.len() - at < 4 {
        tracing::warn!(path = %path.display(), offset = at, "Ingest log: a record cut short by a crash is dropped (it was never acknowledged).");
    }
    Ok((window, batches))
}

fn read_v1_record(
    payload: &[u8],
    window: &mut WindowState,
    generations: &mut BTreeMap<i64, IdSet>,
    path: &Path,
    offset: u64,
) -> Result<(i64, Vec<(TxKey, u32)>), String> {
    let mut r = Reader::new(payload);
    let generation = r.i64()?;
    let mut groups = Vec::new();
    for _ in 0..r.u32()? {
        let mut parts = [String::new(), String::new(), String::new()];
        for part in &mut parts {
            let len = r.u16()? as usize;
            let bytes = r.take(len)?;
            // That release cut strings at 65,535 bytes, sometimes inside a character: keep
            // the transactions (under the name as cut) rather than lose them.
            *part = match std::str::from_utf8(bytes) {
                Ok(s) => s.to_owned(),
                Err(_) => {
                    tracing::warn!(path = %path.display(), offset, "Ingest log: a name cut inside a character by an earlier release is read with a replacement character.");
                    String::from_utf8_lossy(bytes).into_owned()
                }
            };
        }
        let success = r.u8()? == 1;
        // That release knew one resource string, matched as a name.
        let [subscription, quota, resource] = parts;
        groups.push(Group {
            subscription: Cow::Owned(subscription),
            quota: Cow::Owned(quota),
            resource_id: Cow::Owned(String::new()),
            resource_name: Cow::Owned(resource),
            success,
        });
    }
    let ids = generations.entry(generation).or_default();
    let mut kept = Vec::new();
    for _ in 0..r.u32()? {
        let key = TxKey {
            shard: r.u16()?,
            value: r.u64()?,
        };
        let group = r.u32()? as usize;
        let group = groups
            .get(group)
            .ok_or_else(|| format!("a transaction names group {group}, never defined"))?;
        if ids.insert(key) {
            let id = match window.ids.get(group) {
                Some(id) => *id,
                None => window.define(group.clone())?,
            };
            window.counts[id as usize] += 1;
            window.transactions += 1;
            kept.push((key, id));
        }
    }
    window.raw_generation = Some(
        window
            .raw_generation
            .map_or(generation, |g| g.max(generation)),
    );
    Ok((generation, kept))
}

/// Syncs a directory, so a name created, replaced or removed in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, "cannot sync the directory", e))
}

/// Writes `bytes` as the whole of `path`: beside it, synced, renamed over it, the directory
/// synced; a crash leaves the old file or the new one.
fn replace_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp).map_err(|e| io(&tmp, "cannot create", e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&tmp, "cannot write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, "cannot replace", e))?;
    sync_dir(dir)
}

/// Window logs kept open for appending; older ones are reopened when written again, so a long
/// horizon of short windows does not run the process out of file descriptors.
const OPEN_LOGS: usize = 64;

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

    /// The window's file, open for appending; a new one gets its header and its name is synced
    /// into the directory before anything in it is acknowledged.
    fn file(&mut self, start_ms: i64) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.files.get(&start_ms) {
            return Ok(f.clone());
        }
        let path = self.path(start_ms);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, "cannot open", e))?;
        let len = file
            .metadata()
            .map_err(|e| io(&path, "cannot read", e))?
            .len();
        if len == 0 {
            file.write_all(&framing::file_header(FORMAT))
                .map_err(|e| io(&path, "cannot write", e))?;
            sync_dir(&self.dir)?;
        }
        let file = Arc::new(file);
        self.files.insert(start_ms, file.clone());
        if self.files.len() > OPEN_LOGS
            && let Some(oldest) = self.files.keys().copied().find(|s| *s != start_ms)
        {
            // A handle still waiting for its sync is kept open by the dirty list.
            self.files.remove(&oldest);
        }
        Ok(file)
    }
}

struct State {
    windows: BTreeMap<i64, WindowState>,
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
    /// A failed write or sync leaves the log's state unknown: nothing more is acknowledged.
    failed: AtomicBool,
}

type Replayed = (BTreeMap<i64, WindowState>, BTreeMap<i64, IdSet>);

/// Reads every window's log in `dir`: a torn tail is cut off, a file of the release before is
/// rewritten in this format, damage is an error naming the file and offset.
fn replay(dir: &Path) -> Result<Replayed, StoreError> {
    let mut windows = BTreeMap::new();
    let mut generations = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, "cannot list", e))?;
    let mut logs: Vec<(i64, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, "cannot list", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".log.tmp") {
            // A rewrite cut short: the file it was to replace is intact.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if let Some(start) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<i64>().ok())
        {
            logs.push((start, entry.path()));
        }
    }
    logs.sort();
    for (start, path) in logs {
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io(&path, "cannot read", e))?;
        let header = framing::file_header(FORMAT);
        // A file of the release before starts with a record's length: "BBINGEST" would be a
        // 1.3 GB record. So a file whose first bytes are nearly the magic is this format with a
        // damaged header, never an old file to be read as such.
        let nearly_magic = bytes.len() >= 8
            && bytes[..8]
                .iter()
                .zip(FORMAT.magic)
                .filter(|(a, b)| a == b)
                .count()
                >= 6;
        // Zeros only: space a crash allocated to a new file before its header was written
        // (a batch is acknowledged only once its file is synced, header included): nothing in
        // it was acknowledged. (The state file is only ever created whole, by a rename.)
        let zeros = !bytes.is_empty() && bytes.iter().all(|b| *b == 0);
        let current = nearly_magic
            || zeros
            || (bytes.len() < framing::FILE_HEADER_LEN && header.starts_with(&bytes));
        let window = if current {
            let scan = if zeros {
                framing::Scan {
                    records: Vec::new(),
                    valid_len: 0,
                    torn: true,
                }
            } else {
                framing::scan(&path, &bytes, FORMAT)?
            };
            let mut window = WindowState::default();
            for (offset, payload) in &scan.records {
                apply_record(payload, &mut window, &mut generations)
                    .map_err(|e| framing::corrupt(&path, *offset, e))?;
            }
            if scan.torn {
                tracing::warn!(
                    path = %path.display(),
                    offset = scan.valid_len,
                    bytes = bytes.len() as u64 - scan.valid_len,
                    "Ingest log: a write cut short by a crash is cut off (it was never acknowledged)."
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io(&path, "cannot open", e))?;
                file.set_len(scan.valid_len)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io(&path, "cannot cut the torn tail", e))?;
            }
            window
        } else {
            let (window, batches) = read_v1(&path, &bytes, &mut generations)?;
            let mut out = framing::file_header(FORMAT).to_vec();
            let numbered = window.numbered();
            let mut defined = 0usize;
            for (generation, txs) in &batches {
                let upto = txs
                    .iter()
                    .map(|(_, g)| *g as usize + 1)
                    .max()
                    .unwrap_or(0)
                    .max(defined);
                let new: Vec<&GroupKey> = numbered[defined..upto].iter().map(|(g, _)| *g).collect();
                defined = upto;
                encode_batch(*generation, &new, txs, &mut out)
                    .map_err(|e| framing::corrupt(&path, 0, e))?;
            }
            replace_file(dir, &path, &out)?;
            tracing::info!(path = %path.display(), "Ingest log: rewritten in format version 2.");
            window
        };
        windows.insert(start, window);
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
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "cannot create", e))?;
        if created && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
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

    /// Takes a batch: ids new to generations `generation` and `generation - 1` are counted,
    /// unless their group would make their window hold more than `max_groups` groups.
    pub(crate) async fn ingest(
        &self,
        generation: i64,
        max_groups: usize,
        batch: &[IngestWindow],
    ) -> Result<IngestOutcome, StoreError> {
        if let Some(window) = batch.iter().find(|w| {
            w.transactions
                .iter()
                .any(|(_, g)| *g as usize >= w.groups.len())
        }) {
            return Err(StoreError::Unavailable(format!(
                "ingest: a transaction of window {} names a group the batch does not hold",
                window.start_ms
            )));
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the ingest log could not be written or synced earlier; restart to recover"
                    .to_owned(),
            ));
        }
        let mut outcome = IngestOutcome::default();
        let written = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let mut current = state.generations.remove(&generation).unwrap_or_default();
            let result = Self::take(
                state,
                generation,
                max_groups,
                &mut current,
                batch,
                &mut outcome,
            );
            state.generations.insert(generation, current);
            if let Err(e) = result {
                if state.log.is_some() {
                    self.failed.store(true, Ordering::Release);
                    tracing::error!(error = %e, "Ingest log: a write failed; no more batches are acknowledged until a restart.");
                }
                return Err(e);
            }
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
        max_groups: usize,
        current: &mut IdSet,
        batch: &[IngestWindow],
        outcome: &mut IngestOutcome,
    ) -> Result<(), StoreError> {
        let previous = state.generations.get(&(generation - 1));
        for (position, window) in batch.iter().enumerate() {
            let existing = state.windows.get(&window.start_ms);
            let known = existing.map_or(0, |w| w.counts.len());
            // The batch's group index → the window's group number, once decided.
            let mut numbers: Vec<Option<u32>> = vec![None; window.groups.len()];
            let mut new_groups: Vec<&GroupKey> = Vec::new();
            let mut accepted: Vec<(TxKey, u32)> = Vec::new();
            let mut per_group: Vec<u64> = Vec::new();
            for (i, (key, group)) in window.transactions.iter().enumerate() {
                if previous.is_some_and(|p| p.contains(*key)) || current.contains(*key) {
                    outcome.duplicates += 1;
                    continue;
                }
                // Checked before the lock was taken.
                let g = *group as usize;
                let spec = &window.groups[g];
                let number = match numbers[g] {
                    Some(n) => n,
                    None => {
                        let n = match existing.and_then(|w| w.ids.get(spec)) {
                            Some(n) => *n,
                            None if known + new_groups.len() >= max_groups => {
                                outcome.too_many_groups.push((position, i));
                                continue;
                            }
                            None => {
                                new_groups.push(spec);
                                (known + new_groups.len() - 1) as u32
                            }
                        };
                        numbers[g] = Some(n);
                        n
                    }
                };
                current.insert(*key);
                accepted.push((*key, number));
            }
            if accepted.is_empty() {
                continue;
            }
            if let Some(log) = &mut state.log {
                let mut record = Vec::new();
                let path = log.path(window.start_ms);
                let wrote = encode_batch(generation, &new_groups, &accepted, &mut record)
                    .map_err(|e| {
                        StoreError::Unavailable(format!("ingest log {}: {e}", path.display()))
                    })
                    .and_then(|()| log.file(window.start_ms))
                    .and_then(|f| {
                        (&*f)
                            .write_all(&record)
                            .map_err(|e| io(&path, "cannot write", e))?;
                        Ok(f)
                    });
                match wrote {
                    Ok(f) => {
                        if !log.dirty.iter().any(|d| Arc::ptr_eq(d, &f)) {
                            log.dirty.push(f);
                        }
                    }
                    Err(e) => {
                        // Not written: not counted either, so a resend is taken. A write cut
                        // short leaves a torn record that later appends must not follow: nothing
                        // more is taken until a restart cuts it off.
                        for (key, _) in &accepted {
                            current.remove(*key);
                        }
                        return Err(e);
                    }
                }
            }
            let entry = state.windows.entry(window.start_ms).or_default();
            for spec in new_groups {
                entry
                    .define(spec.clone())
                    .expect("a new group is not defined yet");
            }
            per_group.resize(entry.counts.len(), 0);
            for (_, n) in &accepted {
                per_group[*n as usize] += 1;
            }
            for (n, add) in per_group.iter().enumerate() {
                entry.counts[n] += add;
            }
            entry.transactions += accepted.len() as u64;
            entry.raw_generation = Some(
                entry
                    .raw_generation
                    .map_or(generation, |g| g.max(generation)),
            );
            outcome.accepted += accepted.len() as u64;
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
            tracing::error!(error = %e, "Ingest log: a sync failed; no more batches are acknowledged until a restart.");
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
            .map(|w| {
                w.ids
                    .iter()
                    .map(|(g, n)| (g.clone(), w.counts[*n as usize]))
                    .filter(|(_, n)| *n > 0)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts of the windows holding transactions, oldest first.
    pub(crate) fn windows(&self) -> Vec<i64> {
        let state = self.state.lock();
        state
            .windows
            .iter()
            .filter(|(_, w)| w.transactions > 0)
            .map(|(s, _)| *s)
            .collect()
    }

    /// Drops the ids of generations before `generation`, and rewrites the log of every window
    /// whose ids all belong to them as its counts alone (one window at a time, so batches go on
    /// meanwhile).
    pub(crate) fn forget_generations(&self, generation: i64) -> Result<(), StoreError> {
        {
            let mut state = self.state.lock();
            let keep = state.generations.split_off(&generation);
            state.generations = keep;
        }
        loop {
            let mut state = self.state.lock();
            let state = &mut *state;
            let Some(log) = &mut state.log else {
                return Ok(());
            };
            let Some((start, window)) = state
                .windows
                .iter_mut()
                .find(|(_, w)| w.raw_generation.is_some_and(|g| g < generation))
            else {
                return Ok(());
            };
            let mut out = framing::file_header(FORMAT).to_vec();
            let path = log.path(*start);
            encode_counts(window, &mut out).map_err(|e| {
                StoreError::Unavailable(format!("ingest log {}: {e}", path.display()))
            })?;
            // Whatever happens next, later batches open the file by its name again: once
            // renamed over, the old file's handle writes where no replay reads.
            log.files.remove(start);
            replace_file(&log.dir, &path, &out)?;
            window.raw_generation = None;
        }
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

    /// Bytes of the window logs on disk (for the soak bench and tests).
    #[cfg(test)]
    fn log_bytes(&self) -> u64 {
        let state = self.state.lock();
        let Some(log) = &state.log else { return 0 };
        state
            .windows
            .keys()
            .filter_map(|s| std::fs::metadata(log.path(*s)).ok())
            .map(|m| m.len())
            .sum()
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
            resource_id: Cow::Borrowed(""),
            resource_name: Cow::Borrowed("r"),
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

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bb-ingest-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    const NO_LIMIT: usize = usize::MAX;

    #[tokio::test]
    async fn accepted_transactions_survive_a_restart_and_a_torn_tail_is_cut_before_appending() {
        let dir = temp_dir("restart");
        {
            let ingest = Ingest::with_log(&dir).unwrap();
            let got = ingest
                .ingest(7, NO_LIMIT, &batch(0, &["a", "b", "a", "c"]))
                .await
                .unwrap();
            assert_eq!((got.accepted, got.duplicates), (3, 1));
        }
        // A torn record at the end (a crash mid-write): a sound header, half a payload.
        let whole = std::fs::metadata(dir.join("0.log")).unwrap().len();
        let mut record = Vec::new();
        encode_batch(7, &[], &[(tx_key("x"), 0)], &mut record).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("0.log"))
            .unwrap();
        f.write_all(&record[..record.len() - 3]).unwrap();
        drop(f);
        {
            let ingest = Ingest::with_log(&dir).unwrap();
            assert_eq!(std::fs::metadata(dir.join("0.log")).unwrap().len(), whole);
            assert_eq!(total(&ingest, 0), 3);
            let again = ingest
                .ingest(7, NO_LIMIT, &batch(0, &["c", "d"]))
                .await
                .unwrap();
            assert_eq!((again.accepted, again.duplicates), (1, 1));
        }
        // What was appended after the cut is read back too.
        let ingest = Ingest::with_log(&dir).unwrap();
        assert_eq!(total(&ingest, 0), 4);
        ingest.prune(3_600_000, 3_600_000);
        assert!(ingest.counts(0).is_empty());
        assert!(!dir.join("0.log").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_id_is_a_duplicate_in_any_window_while_its_generation_or_the_next_is_current() {
        let ingest = Ingest::new();
        ingest.ingest(1, NO_LIMIT, &batch(0, &["a"])).await.unwrap();
        // The same id in another window, one generation later: still a duplicate.
        let got = ingest
            .ingest(2, NO_LIMIT, &batch(3_600_000, &["a", "b"]))
            .await
            .unwrap();
        assert_eq!((got.accepted, got.duplicates), (1, 1));
        assert_eq!(total(&ingest, 3_600_000), 1);
        // Two generations later the first copy is forgotten (the horizon refuses it by then).
        ingest.forget_generations(2).unwrap();
        let got = ingest.ingest(3, NO_LIMIT, &batch(0, &["a"])).await.unwrap();
        assert_eq!(got.accepted, 1);
        assert_eq!(total(&ingest, 0), 2);
    }

    #[tokio::test]
    async fn a_name_longer_than_any_limit_is_kept_whole() {
        let dir = temp_dir("long");
        // 70,000 bytes of two-byte characters, and a second one equal to it up to the old cut.
        let long = "é".repeat(35_000);
        let longer = format!("{long}x");
        {
            let ingest = Ingest::with_log(&dir).unwrap();
            let window = IngestWindow {
                start_ms: 0,
                groups: vec![group(&long), group(&longer)],
                transactions: vec![(tx_key("a"), 0), (tx_key("b"), 1)],
            };
            ingest.ingest(1, NO_LIMIT, &[window]).await.unwrap();
        }
        let ingest = Ingest::with_log(&dir).unwrap();
        let mut names: Vec<(String, u64)> = ingest
            .counts(0)
            .into_iter()
            .map(|(g, n)| (g.subscription.into_owned(), n))
            .collect();
        names.sort();
        assert_eq!(names, vec![(long, 1), (longer, 1)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_window_refuses_new_groups_past_its_limit_and_still_takes_known_ones() {
        let ingest = Ingest::new();
        let window = |ids: &[(&str, &str)]| {
            let mut groups = Vec::new();
            let transactions = ids
                .iter()
                .map(|(id, sub)| {
                    let g = group(sub);
                    let at = groups.iter().position(|x| *x == g).unwrap_or_else(|| {
                        groups.push(g);
                        groups.len() - 1
                    });
                    (tx_key(id), at as u32)
                })
                .collect();
            vec![IngestWindow {
                start_ms: 0,
                groups,
                transactions,
            }]
        };
        let got = ingest
            .ingest(
                1,
                2,
                &window(&[("a", "s1"), ("b", "s2"), ("c", "s3"), ("d", "s1")]),
            )
            .await
            .unwrap();
        assert_eq!(got.accepted, 3);
        assert_eq!(got.too_many_groups, vec![(0, 2)]);
        // A refused id was not taken: it counts once its group has room (never, here), and a
        // known group still takes new ids.
        let got = ingest
            .ingest(1, 2, &window(&[("c", "s3"), ("e", "s2")]))
            .await
            .unwrap();
        assert_eq!(
            (got.accepted, got.too_many_groups.clone()),
            (1, vec![(0, 0)])
        );
        assert_eq!(ingest.counts(0).len(), 2);
    }

    #[tokio::test]
    async fn a_window_whose_ids_are_forgotten_is_rewritten_as_its_counts() {
        let dir = temp_dir("compact");
        let ids: Vec<String> = (0..2_000).map(|i| format!("id-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let ingest = Ingest::with_log(&dir).unwrap();
        ingest.ingest(5, NO_LIMIT, &batch(0, &refs)).await.unwrap();
        ingest
            .ingest(6, NO_LIMIT, &batch(3_600_000, &["late"]))
            .await
            .unwrap();
        let before = ingest.log_bytes();
        ingest.forget_generations(6).unwrap();
        let after = ingest.log_bytes();
        assert!(after * 20 < before, "{after} bytes after, {before} before");
        // A late event for the compacted window is appended after its counts.
        ingest
            .ingest(6, NO_LIMIT, &batch(0, &["new"]))
            .await
            .unwrap();
        drop(ingest);
        let ingest = Ingest::with_log(&dir).unwrap();
        assert_eq!(total(&ingest, 0), 2_001);
        assert_eq!(total(&ingest, 3_600_000), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn windows_past_the_open_file_limit_are_reopened_and_appended_to() {
        let dir = temp_dir("many");
        let hour = 3_600_000;
        {
            let ingest = Ingest::with_log(&dir).unwrap();
            for w in 0..(OPEN_LOGS as i64 + 6) {
                let id = format!("first-{w}");
                ingest
                    .ingest(1, NO_LIMIT, &batch(w * hour, &[&id]))
                    .await
                    .unwrap();
            }
            assert!(ingest.state.lock().log.as_ref().unwrap().files.len() <= OPEN_LOGS);
            // The oldest window's file was closed: written again, it is reopened.
            ingest
                .ingest(1, NO_LIMIT, &batch(0, &["second-0", "third-0"]))
                .await
                .unwrap();
        }
        let ingest = Ingest::with_log(&dir).unwrap();
        assert_eq!(total(&ingest, 0), 3);
        assert_eq!(total(&ingest, (OPEN_LOGS as i64 + 5) * hour), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_new_log_of_zeros_from_a_crash_is_started_again() {
        let dir = temp_dir("zeros");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.log"), [0u8; 4096]).unwrap();
        let ingest = Ingest::with_log(&dir).unwrap();
        assert!(ingest.windows().is_empty());
        ingest.ingest(1, NO_LIMIT, &batch(0, &["a"])).await.unwrap();
        drop(ingest);
        assert_eq!(total(&Ingest::with_log(&dir).unwrap(), 0), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
