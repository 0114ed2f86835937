//! The Store contract, run against every implementation: the embedded memory store and the
//! Redis store on a real `redis-server` (started by the test on a free loopback port). Where
//! `redis-server` is missing the Redis half fails under CI (`CI` set) and is skipped otherwise.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use billing_bridge_domain::events::{ResourceEvent, ResourceKind};
use billing_bridge_domain::usage::Window;
use billing_bridge_store::ledger::{Intent, Report, ReportState, Settled};
use billing_bridge_store::{Claim, Store, StoreError};

struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
    }
    found
}

/// `redis-server` on `port` keeping its append-only file in `dir`, every write synced.
fn spawn_redis(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

async fn start_redis_on(port: u16) -> RedisServer {
    let dir = std::env::temp_dir().join(format!("bb-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = spawn_redis(port, &dir);
    // The guard kills and reaps it however the test ends.
    let server = RedisServer { child, port, dir };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("redis-server did not listen on {port}");
}

fn redis_store(port: u16, capacity: usize, consumer: &str, reclaim_after: Duration) -> Store {
    Store::redis(
        &format!("redis://127.0.0.1:{port}/"),
        capacity,
        consumer.into(),
        reclaim_after,
    )
    .unwrap()
}

/// Runs `check` against a memory store and a Redis store built with the same capacity.
macro_rules! both {
    ($capacity:expr, $check:expr) => {{
        $check(Store::memory($capacity)).await;
        if redis_available() {
            let server = start_redis_on(free_port()).await;
            $check(redis_store(
                server.port,
                $capacity,
                "c1",
                Duration::from_secs(30),
            ))
            .await;
        }
    }};
}

fn event(id: &str) -> ResourceEvent {
    ResourceEvent {
        event_id: id.into(),
        kind: ResourceKind::ProductPlan,
        name: "silver".into(),
        resource_id: "p1".into(),
        self_link: "/catalog/v1/productplans/silver".into(),
        deleted: false,
        correlation_id: None,
        billing_id: None,
        attempt: 0,
        trace_parent: None,
    }
}

const W: Window = Window {
    start_ms: 0,
    end_ms: 3_600_000,
};

fn intent(sub: &str, n: u32, amount: u64) -> Intent {
    Intent {
        pair: (sub.into(), "amplify-quota-q1".into()),
        report: Report {
            report: n,
            amount,
            usage_ms: 3_599_000,
            created_ms: 1,
            amplify_subscription: format!("amplify-{sub}"),
            state: ReportState::Pending,
        },
    }
}

#[tokio::test]
async fn an_event_is_claimed_once_and_a_released_claim_can_be_taken_again() {
    both!(10, |store: Store| async move {
        let hold = Duration::from_secs(30);
        assert_eq!(store.claim_event("e1", hold).await.unwrap(), Claim::Claimed);
        assert_eq!(
            store.claim_event("e1", hold).await.unwrap(),
            Claim::InFlight
        );
        store.abandon_event("e1").await.unwrap();
        assert_eq!(store.claim_event("e1", hold).await.unwrap(), Claim::Claimed);
        store
            .finish_event("e1", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.claim_event("e1", hold).await.unwrap(), Claim::Done);
        store.abandon_event("e1").await.unwrap();
        assert_eq!(store.claim_event("e1", hold).await.unwrap(), Claim::Done);
        // A processing mark expires: a sender's retry is then processed.
        assert_eq!(
            store
                .claim_event("e2", Duration::from_millis(50))
                .await
                .unwrap(),
            Claim::Claimed
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(store.claim_event("e2", hold).await.unwrap(), Claim::Claimed);
    });
}

#[tokio::test]
async fn the_queue_is_bounded_ordered_and_counts_handed_out_events_until_acknowledged() {
    both!(2, |store: Store| async move {
        store.enqueue(event("a")).await.unwrap();
        store.enqueue(event("b")).await.unwrap();
        assert_eq!(
            store.enqueue(event("c")).await,
            Err(StoreError::QueueFull { capacity: 2 })
        );
        let first = store
            .next_event(Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.event, event("a"));
        assert!(store.enqueue(event("c")).await.is_err());
        assert_eq!(store.queue_depth().await.unwrap(), 1);
        store.ack(&first.tag).await.unwrap();
        store.enqueue(event("c")).await.unwrap();
        let second = store
            .next_event(Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.event.event_id, "b");
        assert_eq!(store.queue_depth().await.unwrap(), 1);
    });
}

#[tokio::test]
async fn a_waiting_consumer_wakes_when_an_event_arrives() {
    both!(10, |store: Store| async move {
        let store = std::sync::Arc::new(store);
        let consumer = {
            let store = store.clone();
            tokio::spawn(async move { store.next_event(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.enqueue(event("late")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), consumer)
            .await
            .expect("woken well before the 5 s wait")
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.event.event_id, "late");
        assert!(
            store
                .next_event(Duration::from_millis(50))
                .await
                .unwrap()
                .is_none()
        );
    });
}

#[tokio::test]
async fn one_lease_holder_at_a_time_and_a_lost_lease_cannot_write() {
    both!(10, |store: Store| async move {
        let ttl = Duration::from_secs(30);
        let first = store
            .acquire_lease("reporting", ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .acquire_lease("reporting", ttl)
                .await
                .unwrap()
                .is_none()
        );
        store.extend_lease(&first, ttl).await.unwrap();
        store.release_lease(&first).await.unwrap();
        let second = store
            .acquire_lease("reporting", ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(second.token > first.token, "fencing tokens only grow");
        // The first holder, back from a pause, finds its writes refused.
        assert!(matches!(
            store
                .record_intents(&first, W, vec![intent("s1", 0, 5)])
                .await,
            Err(StoreError::LeaseLost(_))
        ));
        assert!(matches!(
            store.mark_done(&first, W, Some(W.end_ms)).await,
            Err(StoreError::LeaseLost(_))
        ));
        assert!(store.extend_lease(&first, ttl).await.is_err());
        assert!(store.window_ledger(W).await.unwrap().pairs.is_empty());
        // A lease left to expire is free again.
        store.release_lease(&second).await.unwrap();
        let short = store
            .acquire_lease("reporting", Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            store
                .acquire_lease("reporting", ttl)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .record_intents(&short, W, vec![intent("s1", 0, 5)])
                .await
                .is_err()
        );
    });
}

#[tokio::test]
async fn the_ledger_keeps_reports_states_done_windows_and_the_watermark() {
    both!(10, |store: Store| async move {
        let lease = store
            .acquire_lease("reporting", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        store
            .record_intents(&lease, W, vec![intent("s1", 0, 7), intent("s2", 0, 3)])
            .await
            .unwrap();
        // A replayed intent (a resumed run) is written once.
        store
            .record_intents(&lease, W, vec![intent("s1", 0, 7)])
            .await
            .unwrap();
        let ledger = store.window_ledger(W).await.unwrap();
        let s1 = ("s1".to_owned(), "amplify-quota-q1".to_owned());
        assert_eq!(ledger.reported(&s1), 7);
        assert_eq!(ledger.next_report(&s1), 1);
        assert_eq!(ledger.pending().count(), 2);
        assert!(!ledger.done);
        store
            .settle(
                &lease,
                W,
                vec![Settled {
                    pair: s1.clone(),
                    report: 0,
                    state: ReportState::Acked,
                }],
            )
            .await
            .unwrap();
        store
            .record_intents(&lease, W, vec![intent("s1", 1, 2)])
            .await
            .unwrap();
        let ledger = store.window_ledger(W).await.unwrap();
        assert_eq!(ledger.reported(&s1), 9);
        assert_eq!(ledger.pairs[&s1][0].state, ReportState::Acked);
        assert_eq!(ledger.pairs[&s1][1].state, ReportState::Pending);
        assert_eq!(ledger.pairs[&s1][0].amplify_subscription, "amplify-s1");
        assert_eq!(store.watermark().await.unwrap(), None);
        store.mark_done(&lease, W, Some(W.end_ms)).await.unwrap();
        let later = Window {
            start_ms: W.end_ms,
            end_ms: 2 * W.end_ms,
        };
        store
            .mark_done(&lease, later, Some(later.end_ms))
            .await
            .unwrap();
        // The watermark never moves back.
        store.mark_done(&lease, W, Some(W.end_ms)).await.unwrap();
        assert_eq!(store.watermark().await.unwrap(), Some(later.end_ms));
        assert_eq!(
            store.windows_done(&[W, later, later.next()]).await.unwrap(),
            vec![true, true, false]
        );
        assert!(store.first_time("card:s1").await.unwrap());
        assert!(!store.first_time("card:s1").await.unwrap());
    });
}

#[tokio::test]
async fn pruning_drops_details_of_settled_done_windows_only() {
    both!(10, |store: Store| async move {
        let lease = store
            .acquire_lease("reporting", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        let later = W.next();
        for w in [W, later] {
            store
                .record_intents(&lease, w, vec![intent("s1", 0, 1)])
                .await
                .unwrap();
            store.mark_done(&lease, w, None).await.unwrap();
        }
        store
            .settle(
                &lease,
                W,
                vec![Settled {
                    pair: ("s1".into(), "amplify-quota-q1".into()),
                    report: 0,
                    state: ReportState::Acked,
                }],
            )
            .await
            .unwrap();
        store.prune_ledger(later.end_ms).await.unwrap();
        let old = store.window_ledger(W).await.unwrap();
        assert!(old.pruned && old.done && old.pairs.is_empty());
        let pending = store.window_ledger(later).await.unwrap();
        assert!(!pending.pruned, "a window with a pending report keeps it");
        assert_eq!(pending.pending().count(), 1);
    });
}

#[tokio::test]
async fn a_dead_consumers_events_are_taken_over_by_another() {
    if !redis_available() {
        return;
    }
    let server = start_redis_on(free_port()).await;
    let reclaim = Duration::from_millis(200);
    let dead = redis_store(server.port, 10, "instance-a", reclaim);
    let alive = redis_store(server.port, 10, "instance-b", reclaim);
    dead.enqueue(event("orphan")).await.unwrap();
    let taken = dead
        .next_event(Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.event.event_id, "orphan");
    // Instance A dies without acknowledging. Before the timeout B leaves it alone.
    drop(dead);
    assert!(
        alive
            .next_event(Duration::from_millis(20))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(reclaim).await;
    let reclaimed = alive
        .next_event(Duration::from_millis(20))
        .await
        .unwrap()
        .expect("taken over after the idle timeout");
    assert_eq!(reclaimed.event.event_id, "orphan");
    alive.ack(&reclaimed.tag).await.unwrap();
    assert!(
        alive
            .next_event(Duration::from_millis(20))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(alive.queue_depth().await.unwrap(), 0);
}

#[tokio::test]
async fn redis_down_is_unavailable_and_work_resumes_when_it_returns() {
    if !redis_available() {
        return;
    }
    let port = free_port();
    let store = redis_store(port, 10, "c1", Duration::from_secs(30));
    let started = std::time::Instant::now();
    assert!(matches!(
        store.claim_event("e1", Duration::from_secs(30)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.enqueue(event("e1")).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails fast: {:?}",
        started.elapsed()
    );
    let _server = start_redis_on(port).await;
    let mut ok = false;
    for _ in 0..50 {
        if store.enqueue(event("e1")).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the store reconnects by itself");
    assert_eq!(
        store
            .next_event(Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap()
            .event
            .event_id,
        "e1"
    );
}

#[tokio::test]
async fn acknowledged_work_survives_a_redis_restart() {
    if !redis_available() {
        return;
    }
    let port = free_port();
    let server = start_redis_on(port).await;
    let store = redis_store(port, 10, "c1", Duration::from_secs(30));
    let lease = store
        .acquire_lease("reporting", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    store
        .record_intents(&lease, W, vec![intent("s1", 0, 42)])
        .await
        .unwrap();
    store.enqueue(event("kept")).await.unwrap();
    store
        .finish_event("e-done", Duration::from_secs(60))
        .await
        .unwrap();
    // SIGKILL, then the same data directory: with appendfsync always nothing acknowledged is lost.
    let dir = server.dir.clone();
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    let restarted = spawn_redis(port, &dir);
    let _guard = RedisServer {
        child: restarted,
        port,
        dir,
    };
    std::mem::forget(server); // its directory now belongs to the restarted server
    let mut ledger = None;
    for _ in 0..100 {
        if let Ok(l) = store.window_ledger(W).await {
            ledger = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ledger = ledger.expect("Redis is back");
    assert_eq!(
        ledger.reported(&("s1".into(), "amplify-quota-q1".into())),
        42
    );
    assert_eq!(
        store
            .claim_event("e-done", Duration::from_secs(1))
            .await
            .unwrap(),
        Claim::Done
    );
    assert_eq!(
        store
            .next_event(Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap()
            .event
            .event_id,
        "kept"
    );
}

#[tokio::test]
async fn the_links_snapshot_is_kept_and_replaced() {
    both!(10, |store: Store| async move {
        assert_eq!(store.links().await.unwrap(), None);
        store.save_links("{\"v\":1}".into()).await.unwrap();
        store.save_links("{\"v\":2}".into()).await.unwrap();
        assert_eq!(store.links().await.unwrap().as_deref(), Some("{\"v\":2}"));
    });
}

fn ingest_window(start_ms: i64, ids: &[&str]) -> billing_bridge_store::IngestWindow {
    use billing_bridge_domain::transactions::{Group, tx_key};
    let group = |sub: &str, success: bool| Group {
        subscription: sub.to_owned().into(),
        quota: "q1".into(),
        resource: "pets/v1".into(),
        success,
    };
    billing_bridge_store::IngestWindow {
        start_ms,
        groups: vec![group("s1", true), group("s2", false)],
        transactions: ids
            .iter()
            .enumerate()
            .map(|(i, id)| (tx_key(id), (i % 2) as u32))
            .collect(),
    }
}

async fn ingested_total(store: &Store, start_ms: i64) -> (u64, Vec<(String, bool, u64)>) {
    let window = Window {
        start_ms,
        end_ms: start_ms + 3_600_000,
    };
    let mut groups: Vec<(String, bool, u64)> = store
        .ingested(window)
        .await
        .unwrap()
        .into_iter()
        .map(|(g, n)| (g.subscription.to_string(), g.success, n))
        .collect();
    groups.sort();
    (groups.iter().map(|g| g.2).sum(), groups)
}

#[tokio::test]
async fn pushed_transactions_count_each_id_once_across_windows_while_its_generation_is_kept() {
    both!(10, |store: Store| async move {
        let hour = 3_600_000;
        let first = store
            .ingest(
                5,
                &[
                    ingest_window(0, &["a", "b", "a"]),
                    ingest_window(hour, &["c"]),
                ],
            )
            .await
            .unwrap();
        assert_eq!((first.accepted, first.duplicates), (3, 1));
        // The next generation: ids of the previous one are still duplicates, in any window.
        let again = store
            .ingest(
                6,
                &[
                    ingest_window(0, &["b", "d", "e"]),
                    ingest_window(hour, &["a"]),
                ],
            )
            .await
            .unwrap();
        assert_eq!((again.accepted, again.duplicates), (2, 2));
        let (total, groups) = ingested_total(&store, 0).await;
        assert_eq!(total, 4, "{groups:?}");
        assert_eq!(
            groups,
            vec![("s1".to_owned(), true, 2), ("s2".to_owned(), false, 2)],
            "each transaction under its own group"
        );
        assert_eq!(store.ingested_windows().await.unwrap(), vec![0, hour]);
        // Generation 5 is dropped: its ids count again in generation 7 (the horizon refuses
        // such old events before they reach the store); generation 6's do not.
        store.forget_ingested_ids(6).await.unwrap();
        let later = store
            .ingest(7, &[ingest_window(hour, &["a", "d"])])
            .await
            .unwrap();
        assert_eq!((later.accepted, later.duplicates), (1, 1));
        assert_eq!(ingested_total(&store, hour).await.0, 2);
        store.prune_ingested(hour, hour).await.unwrap();
        assert_eq!(ingested_total(&store, 0).await.0, 0);
        assert_eq!(ingested_total(&store, hour).await.0, 2);
        assert_eq!(store.ingested_windows().await.unwrap(), vec![hour]);
    });
}
