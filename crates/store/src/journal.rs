//! The memory store's journal: every ledger [`Op`] appended as one checksummed record (JSON
//! payload, framed as `framing.rs` says) to the state file, so the usage ledger, the watermark
//! and one-time marks survive a restart or a SIGKILL. On open the file is replayed: a torn tail
//! (a kill in the middle of a write) is dropped, damage anywhere else stops the start with
//! [`StoreError::Corrupt`]; then the file is rewritten compacted, and compacted again whenever
//! it has grown well past its live size. The file is locked while open, so two processes never
//! write it at once. A state file of the release before this format (JSON lines, no header) is
//! read and rewritten in this format.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::StoreError;
use crate::framing::{self, Format};
use crate::ledger::{Ledger, Op};

/// Compact when the file is this many times the size of its last compaction (and at least
/// this many bytes), so the journal stays proportional to live state.
const GROWTH_BEFORE_COMPACTION: u64 = 4;
const MIN_COMPACTION_BYTES: u64 = 1 << 20;

/// Version 1 was JSON lines with no header; 2 is the framed format.
pub(crate) const FORMAT: Format = Format {
    magic: b"BBSTATE\0",
    version: 2,
    what: "state file",
};

pub struct Journal {
    path: PathBuf,
    file: File,
    /// The file's length: everything written since the last compaction.
    bytes: u64,
    compacted_bytes: u64,
    /// A write or sync failed in a way that leaves the file's end unknown: nothing more is
    /// appended until a compaction rewrites it (or a restart replays it).
    broken: bool,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("state file {}: {what}: {e}", path.display()))
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| io(path, "cannot open", e))
}

fn lock(path: &Path, file: &File) -> Result<(), StoreError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(StoreError::InUse(path.display().to_string())),
        Err(TryLockError::Error(e)) => Err(io(path, "cannot lock", e)),
    }
}

/// The ledger a state file holds, in either format.
fn replay(path: &Path, bytes: &[u8]) -> Result<Ledger, StoreError> {
    let mut ledger = Ledger::default();
    if bytes
        .first()
        .is_some_and(|b| *b == b'{' || b.is_ascii_whitespace())
    {
        replay_json_lines(path, bytes, &mut ledger)?;
        return Ok(ledger);
    }
    let scan = framing::scan(path, bytes, FORMAT)?;
    for (offset, payload) in &scan.records {
        let op = serde_json::from_slice::<Op>(payload).map_err(|e| {
            framing::corrupt(
                path,
                *offset,
                format!("a record holds no ledger operation: {e}"),
            )
        })?;
        ledger.apply(op);
    }
    if scan.torn {
        tracing::warn!(
            path = %path.display(),
            offset = scan.valid_len,
            bytes = bytes.len() as u64 - scan.valid_len,
            "State file: a write cut short by a crash is dropped (it was never acknowledged)."
        );
    }
    Ok(ledger)
}

/// Version 1: one JSON `Op` a line. Only the last line can be torn (every open rewrote the
/// file); a whole line that does not read is damage.
fn replay_json_lines(path: &Path, bytes: &[u8], ledger: &mut Ledger) -> Result<(), StoreError> {
    let mut at = 0usize;
    while at < bytes.len() {
        let (line, whole) = match bytes[at..].iter().position(|b| *b == b'\n') {
            Some(end) => (&bytes[at..at + end], true),
            None => (&bytes[at..], false),
        };
        let offset = at as u64;
        at += line.len() + 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<Op>(line) {
            Ok(op) => ledger.apply(op),
            Err(_) if !whole => tracing::warn!(
                path = %path.display(),
                offset,
                "State file: a line cut short by a crash is dropped (it was never acknowledged)."
            ),
            Err(e) => {
                return Err(framing::corrupt(
                    path,
                    offset,
                    format!("a line holds no ledger operation: {e}"),
                ));
            }
        }
    }
    Ok(())
}

impl Journal {
    /// Opens (or creates) the journal, replays it into a ledger and compacts it.
    pub fn open(path: &Path) -> Result<(Journal, Ledger), StoreError> {
        let mut file = open_append(path)?;
        lock(path, &file)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io(path, "cannot read", e))?;
        let ledger = replay(path, &bytes)?;
        let mut journal = Journal {
            path: path.to_owned(),
            file,
            bytes: 0,
            compacted_bytes: 0,
            broken: false,
        };
        journal.compact(&ledger)?;
        Ok((journal, ledger))
    }

    /// Appends one operation; with `sync`, returns only once it is on disk.
    pub fn append(&mut self, op: &Op, sync: bool) -> Result<(), StoreError> {
        let mut line = Vec::new();
        framing::frame(
            &serde_json::to_vec(op).expect("ledger ops serialize"),
            &mut line,
        )
        .map_err(|e| io(&self.path, "cannot write", std::io::Error::other(e)))?;
        if self.broken {
            return Err(io(
                &self.path,
                "cannot write",
                std::io::Error::other("an earlier write failed; restart to recover"),
            ));
        }
        // One write per record, so a kill leaves at most this record torn.
        if let Err(e) = self.file.write_all(&line) {
            // Part of the record may be there: later records must not follow it.
            if self.file.set_len(self.bytes).is_err() {
                self.broken = true;
            }
            return Err(io(&self.path, "cannot write", e));
        }
        self.bytes += line.len() as u64;
        if sync && let Err(e) = self.file.sync_data() {
            // After a failed sync nothing is known of what reached the disk.
            self.broken = true;
            return Err(io(&self.path, "cannot sync", e));
        }
        Ok(())
    }

    pub fn needs_compaction(&self) -> bool {
        self.bytes >= MIN_COMPACTION_BYTES
            && self.bytes
                >= self
                    .compacted_bytes
                    .saturating_mul(GROWTH_BEFORE_COMPACTION)
    }

    /// Rewrites the file as the snapshot of `ledger`: written beside it, synced, renamed over
    /// it, so a crash leaves either the old journal or the new one.
    pub fn compact(&mut self, ledger: &Ledger) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("compacting");
        let mut bytes = framing::FILE_HEADER_LEN as u64;
        {
            let mut out = std::io::BufWriter::new(
                File::create(&tmp).map_err(|e| io(&tmp, "cannot create", e))?,
            );
            out.write_all(&framing::file_header(FORMAT))
                .map_err(|e| io(&tmp, "cannot write", e))?;
            let mut line = Vec::new();
            for op in ledger.snapshot() {
                line.clear();
                framing::frame(
                    &serde_json::to_vec(&op).expect("ledger ops serialize"),
                    &mut line,
                )
                .map_err(|e| io(&tmp, "cannot write", std::io::Error::other(e)))?;
                bytes += line.len() as u64;
                out.write_all(&line)
                    .map_err(|e| io(&tmp, "cannot write", e))?;
            }
            let file = out
                .into_inner()
                .map_err(|e| io(&tmp, "cannot write", e.into_error()))?;
            file.sync_all().map_err(|e| io(&tmp, "cannot sync", e))?;
        }
        let new = open_append(&tmp)?;
        lock(&tmp, &new)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io(&self.path, "cannot replace", e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = File::open(dir)
        {
            let _ = dir.sync_all();
        }
        self.file = new;
        self.bytes = bytes;
        self.compacted_bytes = bytes;
        self.broken = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Intent, Report, ReportState};
    use billing_bridge_domain::usage::Window;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bb-journal-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state")
    }

    fn intents(n: u64) -> Op {
        Op::Intents(
            Window {
                start_ms: 0,
                end_ms: 10,
            },
            vec![Intent {
                pair: ("s".into(), format!("a{n}")),
                report: Report {
                    report: 0,
                    amount: n,
                    usage_ms: 5,
                    created_ms: 1,
                    amplify_subscription: "m".into(),
                    state: ReportState::Pending,
                    from_ms: None,
                    how: None,
                },
            }],
        )
    }

    #[test]
    fn what_was_appended_is_there_after_reopening_and_a_torn_record_is_dropped() {
        let path = temp_path("reopen");
        {
            let (mut journal, _) = Journal::open(&path).unwrap();
            journal.append(&intents(1), true).unwrap();
            journal.append(&Op::Watermark(10), true).unwrap();
        }
        // A kill in the middle of a write leaves part of a record.
        let mut record = Vec::new();
        framing::frame(br#"{"w":99}"#, &mut record).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&record[..record.len() - 2]).unwrap();
        drop(file);
        let (mut journal, ledger) = Journal::open(&path).unwrap();
        assert_eq!(ledger.watermark, Some(10));
        let window = ledger.windows.values().next().unwrap();
        assert_eq!(window.reported(&("s".into(), "a1".into())), 1);
        // Appends after the cut are read back.
        journal.append(&Op::Watermark(20), true).unwrap();
        drop(journal);
        assert_eq!(Journal::open(&path).unwrap().1.watermark, Some(20));
    }

    #[test]
    fn damage_before_the_end_stops_the_open_naming_the_offset_and_changes_nothing() {
        let path = temp_path("damaged");
        {
            let (mut journal, _) = Journal::open(&path).unwrap();
            journal.append(&Op::Watermark(10), true).unwrap();
            journal.append(&Op::Watermark(20), true).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let first = framing::FILE_HEADER_LEN;
        bytes[first + framing::RECORD_HEADER_LEN + 3] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let Err(StoreError::Corrupt { file, offset, .. }) = Journal::open(&path) else {
            panic!("damage is an error");
        };
        assert_eq!((file, offset), (path.display().to_string(), first as u64));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the file is left as it was"
        );
    }

    #[test]
    fn a_second_process_cannot_open_a_journal_in_use() {
        let path = temp_path("locked");
        let (_journal, _) = Journal::open(&path).unwrap();
        // Another open file description, as another process would have.
        assert!(matches!(Journal::open(&path), Err(StoreError::InUse(_))));
    }

    #[test]
    fn compaction_keeps_the_state_and_shrinks_the_file() {
        let path = temp_path("compact");
        let (mut journal, mut ledger) = Journal::open(&path).unwrap();
        for _ in 0..200 {
            let op = intents(7);
            journal.append(&op, false).unwrap();
            ledger.apply(op);
        }
        let before = std::fs::metadata(&path).unwrap().len();
        journal.compact(&ledger).unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after * 10 < before, "{after} vs {before}");
        journal.append(&Op::Watermark(10), true).unwrap();
        journal.append(&Op::Links("old".into()), false).unwrap();
        journal.append(&Op::Links("new".into()), false).unwrap();
        drop(journal);
        let (_, reopened) = Journal::open(&path).unwrap();
        assert_eq!(reopened.windows, ledger.windows);
        assert_eq!(reopened.watermark, Some(10));
        assert_eq!(reopened.links.as_deref(), Some("new"));
    }
}
