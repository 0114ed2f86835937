//! A state file and an ingest log written by the release before the versioned formats
//! (`tests/fixtures/v1`, see its README) are still read after the upgrade, whole, and rewritten
//! in the current format.

use std::path::{Path, PathBuf};

use billing_bridge_domain::transactions::{Group, tx_key};
use billing_bridge_domain::usage::Window;
use billing_bridge_store::ledger::{Report, ReportState};
use billing_bridge_store::{IngestWindow, Store};

const HOUR: i64 = 3_600_000;
const W1: i64 = 1_764_590_400_000;

fn copy_fixtures() -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let to = std::env::temp_dir().join(format!("bb-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(to.join("state.ingest")).unwrap();
    std::fs::copy(from.join("state"), to.join("state")).unwrap();
    for entry in std::fs::read_dir(from.join("state.ingest")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            to.join("state.ingest").join(entry.file_name()),
        )
        .unwrap();
    }
    to
}

async fn counts(store: &Store, start_ms: i64) -> Vec<(String, String, String, bool, u64)> {
    let mut got: Vec<_> = store
        .ingested(Window {
            start_ms,
            end_ms: start_ms + HOUR,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|(g, n)| {
            (
                g.subscription.into_owned(),
                g.quota.into_owned(),
                g.resource_name.into_owned(),
                g.success,
                n,
            )
        })
        .collect();
    got.sort();
    got
}

fn expected(per_group: [u64; 4]) -> Vec<(String, String, String, bool, u64)> {
    let mut want = vec![
        (
            "sub-1".into(),
            "q-1".into(),
            "pets/v1".into(),
            true,
            per_group[0],
        ),
        (
            "sub-1".into(),
            "q-1".into(),
            "pets/v1".into(),
            false,
            per_group[1],
        ),
        (
            "sub-2".into(),
            "".into(),
            "ünïcödé/ресурс/😀".into(),
            true,
            per_group[2],
        ),
        (
            "unknown".into(),
            "".into(),
            "unknown".into(),
            true,
            per_group[3],
        ),
    ];
    want.retain(|g| g.4 > 0);
    want.sort();
    want
}

async fn check(store: &Store) {
    // The ingest log: ids tx-0..tx-14 in W1 (group i % 4), tx-100..tx-102 in W1 + 1h.
    assert_eq!(store.ingested_windows().await.unwrap(), vec![W1, W1 + HOUR]);
    assert_eq!(counts(store, W1).await, expected([4, 4, 4, 3]));
    assert_eq!(counts(store, W1 + HOUR).await, expected([1, 1, 1, 0]));
    // The state file: the ledger, the watermark, a one-time mark and the links.
    let w = Window {
        start_ms: W1,
        end_ms: W1 + HOUR,
    };
    let ledger = store.window_ledger(w).await.unwrap();
    assert!(ledger.done && !ledger.pruned);
    let report = |amount, state| Report {
        report: 0,
        amount,
        usage_ms: W1 + HOUR - 1,
        created_ms: W1 + HOUR + 5,
        amplify_subscription: "sub-1".into(),
        state,
        from_ms: None,
        how: None,
    };
    assert_eq!(ledger.pairs.len(), 2);
    assert_eq!(
        ledger.pairs[&("rs-1".into(), "amplify-quota-q-1".into())],
        vec![report(7, ReportState::Acked)]
    );
    assert_eq!(
        ledger.pairs[&("rs-2".into(), "amplify-quota-ü".into())],
        vec![report(3, ReportState::Pending)]
    );
    assert_eq!(store.watermark().await.unwrap(), Some(W1 + HOUR));
    assert!(!store.first_time("told:plan-9").await.unwrap());
    assert_eq!(
        store.links().await.unwrap().as_deref(),
        Some("{\"links\":[\"a\",\"ü\"]}")
    );
}

#[tokio::test]
async fn files_written_by_the_release_before_are_read_whole_and_upgraded() {
    let dir = copy_fixtures();
    let state = dir.join("state");
    {
        let store = Store::memory_with_journal(10, &state).unwrap();
        check(&store).await;
        // Every id taken before is still a duplicate (generation 491 holds tx-8..tx-14, 490 the
        // rest): nothing is counted twice after the upgrade.
        let resend = IngestWindow {
            start_ms: W1,
            groups: vec![Group {
                subscription: "sub-1".into(),
                quota: "q-1".into(),
                resource_id: "".into(),
                resource_name: "pets/v1".into(),
                success: true,
            }],
            transactions: (0..15).map(|i| (tx_key(&format!("tx-{i}")), 0)).collect(),
        };
        let again = store.ingest(491, 100, &[resend]).await.unwrap();
        assert_eq!((again.accepted, again.duplicates), (0, 15));
    }
    // Both files now carry a version; reopened, they hold the same.
    assert!(std::fs::read(&state).unwrap().starts_with(b"BBSTATE\0"));
    for entry in std::fs::read_dir(dir.join("state.ingest")).unwrap() {
        assert!(
            std::fs::read(entry.unwrap().path())
                .unwrap()
                .starts_with(b"BBINGEST")
        );
    }
    let store = Store::memory_with_journal(10, &state).unwrap();
    check(&store).await;
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
