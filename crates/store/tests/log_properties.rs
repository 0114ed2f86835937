//! Property tests that attack the embedded store's files (issue 13): a log or state file cut at
//! every byte offset of its last record, then appended to and reopened, gives back exactly what
//! was acknowledged; a bit flipped anywhere stops the open with an error naming the file and an
//! offset at or before the flip, and changes nothing; random bytes never panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use billing_bridge_domain::transactions::{Group, GroupKey, tx_key};
use billing_bridge_domain::usage::Window;
use billing_bridge_store::ledger::{Intent, Report, ReportState};
use billing_bridge_store::{IngestWindow, Store, StoreError, ingest_log_dir};
use proptest::prelude::*;

const HOUR: i64 = 3_600_000;
const NO_LIMIT: usize = 1_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn temp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    // Memory-backed when the system has one: the files' format is under test, not the disk,
    // and thousands of opens each syncing a real disk would take minutes.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "bb-props-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// One pushed batch, in one window: (id, group) pairs.
#[derive(Clone, Debug)]
struct Batch {
    window: i64,
    txs: Vec<(String, GroupKey)>,
}

impl Batch {
    fn ingest_window(&self) -> IngestWindow {
        let mut window = IngestWindow {
            start_ms: self.window * HOUR,
            ..IngestWindow::default()
        };
        for (id, group) in &self.txs {
            let at = match window.groups.iter().position(|g| g == group) {
                Some(at) => at,
                None => {
                    window.groups.push(group.clone());
                    window.groups.len() - 1
                }
            };
            window.transactions.push((tx_key(id), at as u32));
        }
        window
    }
}

fn group() -> impl Strategy<Value = GroupKey> {
    (
        prop_oneof![4 => "s[0-3]", 4 => "\\PC{0,12}", 1 => "ü{100,200}"],
        prop_oneof!["", "q[0-2]"],
        prop_oneof!["r[0-2]", "\\PC{0,8}"],
        any::<bool>(),
    )
        .prop_map(|(subscription, quota, resource, success)| Group {
            subscription: subscription.into(),
            quota: quota.into(),
            resource_id: "".into(),
            resource_name: resource.into(),
            success,
        })
}

/// Batches with ids unique across them (each batch's ids are new), in windows 0..2.
fn batches(max: usize) -> impl Strategy<Value = Vec<Batch>> {
    prop::collection::vec(
        (0..2i64, prop::collection::vec(group(), 1..4), 1..6usize),
        2..max,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(b, (window, groups, n))| Batch {
                window,
                txs: (0..n)
                    .map(|i| (format!("b{b}-t{i}"), groups[i % groups.len()].clone()))
                    .collect(),
            })
            .collect()
    })
}

/// A last batch kept small (its record is cut at every offset): one or two groups, short names
/// or one long multi-byte one.
fn last_batch() -> impl Strategy<Value = Batch> {
    (0..2i64, prop::collection::vec(group(), 1..3), 1..4usize).prop_map(|(window, groups, n)| {
        Batch {
            window,
            txs: (0..n)
                .map(|i| (format!("last-t{i}"), groups[i % groups.len()].clone()))
                .collect(),
        }
    })
}

type Counts = BTreeMap<(i64, GroupKey), u64>;

fn model(batches: &[Batch]) -> Counts {
    let mut counts = Counts::new();
    for b in batches {
        for (_, g) in &b.txs {
            *counts.entry((b.window * HOUR, g.clone())).or_default() += 1;
        }
    }
    counts
}

async fn held(store: &Store) -> Counts {
    let mut counts = Counts::new();
    for start in store.ingested_windows().await.unwrap() {
        let window = Window {
            start_ms: start,
            end_ms: start + HOUR,
        };
        for (g, n) in store.ingested(window).await.unwrap() {
            *counts.entry((start, g)).or_default() += n;
        }
    }
    counts
}

async fn ingest(store: &Store, batch: &Batch) {
    let outcome = store
        .ingest(1, NO_LIMIT, &[batch.ingest_window()])
        .await
        .unwrap();
    assert_eq!(outcome.accepted, batch.txs.len() as u64);
}

/// Pushes `acked` then `last` into a fresh store; the log directory, and the file and byte range
/// of the last batch's record.
fn written(acked: &[Batch], last: &Batch) -> (PathBuf, PathBuf, u64, u64) {
    let dir = temp_dir();
    let state = dir.join("state");
    let file = ingest_log_dir(&state).join(format!("{}.log", last.window * HOUR));
    runtime().block_on(async {
        let store = Store::memory_with_journal(10, &state).unwrap();
        for b in acked {
            ingest(&store, b).await;
        }
        let before = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        ingest(&store, last).await;
        let after = std::fs::metadata(&file).unwrap().len();
        (dir, file, before, after)
    })
}

fn corrupt_at(result: Result<Store, StoreError>) -> Option<(String, u64)> {
    match result {
        Err(StoreError::Corrupt { file, offset, .. }) => Some((file, offset)),
        Err(other) => panic!("damage is reported as such, not as {other}"),
        Ok(_) => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn an_ingest_log_cut_anywhere_in_its_last_record_gives_back_what_was_acknowledged(
        acked in batches(6),
        last in last_batch(),
        more in batches(3),
    ) {
        let (acked, last) = (&acked[..], &last);
        let (dir, file, before, after) = written(acked, last);
        let file_name = file.strip_prefix(&dir).unwrap().to_owned();
        for cut in before.max(1)..after {
            let copy = temp_dir();
            copy_dir(&dir, &copy);
            let state = copy.join("state");
            let torn = copy.join(&file_name);
            std::fs::OpenOptions::new().write(true).open(&torn).unwrap().set_len(cut).unwrap();
            runtime().block_on(async {
                {
                    let store = Store::memory_with_journal(10, &state).unwrap();
                    prop_assert_eq!(held(&store).await, model(acked), "cut at {}", cut);
                    // Appended after the cut: read back on the next open, with all before it.
                    for b in &more {
                        let renamed = Batch {
                            txs: b.txs.iter().map(|(id, g)| (format!("more-{id}"), g.clone())).collect(),
                            ..b.clone()
                        };
                        ingest(&store, &renamed).await;
                    }
                }
                let store = Store::memory_with_journal(10, &state).unwrap();
                let mut want = model(acked);
                for (key, n) in model(&more) {
                    *want.entry(key).or_default() += n;
                }
                prop_assert_eq!(held(&store).await, want, "cut at {} then appended", cut);
                // Acknowledged ids are still duplicates; the torn batch was never taken.
                for b in acked {
                    let again = store.ingest(1, NO_LIMIT, &[b.ingest_window()]).await.unwrap();
                    prop_assert_eq!(again.accepted, 0);
                }
                let again = store.ingest(1, NO_LIMIT, &[last.ingest_window()]).await.unwrap();
                prop_assert_eq!(again.accepted, last.txs.len() as u64);
                Ok(())
            })?;
            let _ = std::fs::remove_dir_all(&copy);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bit_flipped_anywhere_in_an_ingest_log_is_an_error_at_or_before_it(
        all in batches(5),
        at in any::<prop::sample::Index>(),
        bit in 0..8u8,
    ) {
        let (acked, last) = all.split_at(all.len() - 1);
        let (dir, file, _, after) = written(acked, &last[0]);
        let mut bytes = std::fs::read(&file).unwrap();
        let pos = at.index(after as usize);
        bytes[pos] ^= 1 << bit;
        std::fs::write(&file, &bytes).unwrap();
        let found = corrupt_at(Store::memory_with_journal(10, &dir.join("state")));
        let (named, offset) = found.expect("a flipped bit is never read as data");
        prop_assert_eq!(named, file.display().to_string());
        prop_assert!(offset <= pos as u64, "offset {} after the flip at {}", offset, pos);
        prop_assert_eq!(std::fs::read(&file).unwrap(), bytes, "nothing is changed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn random_bytes_as_an_ingest_log_or_a_state_file_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        magic in any::<bool>(),
        as_state in any::<bool>(),
    ) {
        let dir = temp_dir();
        let state = dir.join("state");
        let mut content = Vec::new();
        if magic {
            content.extend_from_slice(if as_state { b"BBSTATE\0" } else { b"BBINGEST" });
            content.extend_from_slice(&2u32.to_le_bytes());
        }
        content.extend_from_slice(&bytes);
        if as_state {
            std::fs::write(&state, &content).unwrap();
        } else {
            let log = ingest_log_dir(&state);
            std::fs::create_dir_all(&log).unwrap();
            std::fs::write(log.join("0.log"), &content).unwrap();
        }
        // Either it opens or it says where the damage is; it never panics.
        let _ = corrupt_at(Store::memory_with_journal(10, &state));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn report(amount: u64) -> Report {
    Report {
        report: 0,
        amount,
        usage_ms: 5,
        created_ms: 6,
        amplify_subscription: "m".into(),
        state: ReportState::Pending,
        from_ms: None,
        how: None,
    }
}

/// What a state file holds, as the store reads it: the reported amounts per window and pair,
/// and the links snapshot.
async fn ledger_of(store: &Store, windows: usize) -> (Vec<Vec<(String, u64)>>, Option<String>) {
    let mut all = Vec::new();
    for w in 0..windows as i64 {
        let ledger = store
            .window_ledger(Window {
                start_ms: w * HOUR,
                end_ms: (w + 1) * HOUR,
            })
            .await
            .unwrap();
        let mut pairs: Vec<(String, u64)> = ledger
            .pairs
            .keys()
            .map(|pair| (pair.1.clone(), ledger.reported(pair)))
            .collect();
        pairs.sort();
        all.push(pairs);
    }
    (all, store.links().await.unwrap())
}

async fn write_ops(store: &Store, ops: &[(usize, String, u64)]) {
    let lease = store
        .acquire_lease("reporting", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    for (w, add_on, amount) in ops {
        store
            .record_intents(
                &lease,
                Window {
                    start_ms: *w as i64 * HOUR,
                    end_ms: (*w as i64 + 1) * HOUR,
                },
                vec![Intent {
                    pair: ("sub".into(), add_on.clone()),
                    report: report(*amount),
                }],
            )
            .await
            .unwrap();
    }
    store.release_lease(&lease).await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn a_state_file_cut_anywhere_in_its_last_record_gives_back_what_was_acknowledged(
        ops in prop::collection::vec((0..3usize, "[a-z]{1,3}|ü{1,40}", 1..1000u64), 1..6),
        links in "\\PC{0,60}",
        after in "\\PC{0,20}",
    ) {
        let dir = temp_dir();
        let state = dir.join("state");
        let rt = runtime();
        let (before, end, want) = rt.block_on(async {
            let store = Store::memory_with_journal(10, &state).unwrap();
            write_ops(&store, &ops).await;
            let want = ledger_of(&store, 3).await;
            let before = std::fs::metadata(&state).unwrap().len();
            store.save_links(links.clone()).await.unwrap();
            (before, std::fs::metadata(&state).unwrap().len(), want)
        });
        for cut in before..end {
            let copy = temp_dir();
            copy_dir(&dir, &copy);
            let state = copy.join("state");
            std::fs::OpenOptions::new().write(true).open(&state).unwrap().set_len(cut).unwrap();
            rt.block_on(async {
                {
                    let store = Store::memory_with_journal(10, &state).unwrap();
                    prop_assert_eq!(&ledger_of(&store, 3).await, &want, "cut at {}", cut);
                    store.save_links(after.clone()).await.unwrap();
                }
                let store = Store::memory_with_journal(10, &state).unwrap();
                let (windows, kept) = ledger_of(&store, 3).await;
                prop_assert_eq!(&windows, &want.0);
                prop_assert_eq!(kept.as_deref(), Some(after.as_str()));
                Ok(())
            })?;
            let _ = std::fs::remove_dir_all(&copy);
        }
        // A bit flipped anywhere in the whole file is an error at or before it.
        let bytes = std::fs::read(&state).unwrap();
        for pos in (0..bytes.len()).step_by(7) {
            let copy = temp_dir();
            let flipped_path = copy.join("state");
            let mut flipped = bytes.clone();
            flipped[pos] ^= 0x10;
            std::fs::write(&flipped_path, &flipped).unwrap();
            let (named, offset) = corrupt_at(Store::memory_with_journal(10, &flipped_path))
                .expect("a flipped bit is never read as data");
            prop_assert_eq!(named, flipped_path.display().to_string());
            prop_assert!(offset <= pos as u64);
            let _ = std::fs::remove_dir_all(&copy);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
