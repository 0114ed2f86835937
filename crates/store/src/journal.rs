//! The memory store's journal: every ledger [`Op`] appended as one JSON line to a file, so the
//! usage ledger, the watermark and one-time marks survive a restart or a SIGKILL. On open the
//! file is replayed (a torn last line, from a kill in the middle of a write, is ignored) and
//! rewritten compacted; it is compacted again whenever it has grown well past its live size.
//! The file is locked while open, so two processes never write it at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::StoreError;
use crate::ledger::{Ledger, Op};

/// Compact when the file is this many times the size of its last compaction (and at least
/// this many bytes), so the journal stays proportional to live state.
const GROWTH_BEFORE_COMPACTION: u64 = 4;
const MIN_COMPACTION_BYTES: u64 = 1 << 20;

pub struct Journal {
    path: PathBuf,
    file: File,
    bytes: u64,
    compacted_bytes: u64,
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

impl Journal {
    /// Opens (or creates) the journal, replays it into a ledger and compacts it.
    pub fn open(path: &Path) -> Result<(Journal, Ledger), StoreError> {
        let file = open_append(path)?;
        lock(path, &file)?;
        let mut ledger = Ledger::default();
        let mut ignored = 0usize;
        for line in BufReader::new(&file).lines() {
            let line = line.map_err(|e| io(path, "cannot read", e))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Op>(&line) {
                Ok(op) => ledger.apply(op),
                Err(_) => ignored += 1,
            }
        }
        if ignored > 0 {
            tracing::warn!(
                path = %path.display(),
                lines = ignored,
                "state file: unreadable lines ignored (a write cut short by a crash)"
            );
        }
        let mut journal = Journal {
            path: path.to_owned(),
            file,
            bytes: 0,
            compacted_bytes: 0,
        };
        journal.compact(&ledger)?;
        Ok((journal, ledger))
    }

    /// Appends one operation; with `sync`, returns only once it is on disk.
    pub fn append(&mut self, op: &Op, sync: bool) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(op).expect("ledger ops serialize");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| io(&self.path, "cannot write", e))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| io(&self.path, "cannot sync", e))?;
        }
        self.bytes += line.len() as u64;
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
        let mut bytes = 0u64;
        {
            let mut out = std::io::BufWriter::new(
                File::create(&tmp).map_err(|e| io(&tmp, "cannot create", e))?,
            );
            for op in ledger.snapshot() {
                let mut line = serde_json::to_vec(&op).expect("ledger ops serialize");
                line.push(b'\n');
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
                },
            }],
        )
    }

    #[test]
    fn what_was_appended_is_there_after_reopening_and_a_torn_line_is_ignored() {
        let path = temp_path("reopen");
        {
            let (mut journal, _) = Journal::open(&path).unwrap();
            journal.append(&intents(1), true).unwrap();
            journal.append(&Op::Watermark(10), true).unwrap();
        }
        // A kill in the middle of a write leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"i\":[{\"start_ms\":0,").unwrap();
        drop(file);
        let (_, ledger) = Journal::open(&path).unwrap();
        assert_eq!(ledger.watermark, Some(10));
        let window = ledger.windows.values().next().unwrap();
        assert_eq!(window.reported(&("s".into(), "a1".into())), 1);
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
