//! The Store contract, run against every implementation: the embedded memory store and the
//! Redis store on a real `redis-server` (started by the test on a unix socket of its own). Where
//! `redis-server` is missing the Redis half fails under CI (`CI` set) and is skipped otherwise.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use billing_bridge_domain::events::{ResourceEvent, ResourceKind};
use billing_bridge_domain::usage::Window;
use billing_bridge_store::ledger::{Intent, Report, ReportState, Settled};
use billing_bridge_store::{Claim, Store, StoreError};

/// A `redis-server` listening on a unix socket in a directory of its own and on no TCP port
/// (`--port 0`), so no port is ever picked for it; its append-only file, every write synced, in
/// the same directory. Killed, and the directory removed, on drop.
struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    /// Its directory, nothing started yet (a store may be built against it before).
    fn new() -> RedisServer {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bb-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        RedisServer { child: None, dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Starts the server (again, after [`RedisServer::kill`], on the same files); returns once
    /// it answers.
    async fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        // The guard kills and reaps it however the test ends.
        self.child = Some(child);
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not listen on {}", self.socket().display());
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

async fn start_redis() -> RedisServer {
    let mut server = RedisServer::new();
    server.start().await;
    server
}

fn redis_store(
    server: &RedisServer,
    capacity: usize,
    consumer: &str,
    reclaim_after: Duration,
) -> Store {
    Store::redis(&server.url(), capacity, consumer.into(), reclaim_after).unwrap()
}

/// Runs `check` against a memory store and a Redis store built with the same capacity.
macro_rules! both {
    ($capacity:expr, $check:expr) => {{
        $check(Store::memory($capacity)).await;
        if redis_available() {
            let server = start_redis().await;
            $check(redis_store(
                &server,
                $capacity,
                "c1",
                Duration::from_secs(30),
            ))
            .await;
        }
    }};
}

fn subscription_event(id: &str) -> ResourceEvent {
    ResourceEvent {
        kind: ResourceKind::Subscription,
        name: "sub-1".into(),
        self_link: "/catalog/v1/subscriptions/sub-1".into(),
        ..event(id)
    }
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
            from_ms: None,
            how: None,
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
async fn each_kind_has_its_own_bounded_ordered_queue_counting_events_until_finished() {
    both!(2, |store: Store| async move {
        store.enqueue(event("a")).await.unwrap();
        store.enqueue(event("b")).await.unwrap();
        assert_eq!(
            store.enqueue(event("c")).await,
            Err(StoreError::QueueFull { capacity: 2 })
        );
        // Subscriptions wait in a queue of their own: a full plan queue does not hold them.
        store.enqueue(subscription_event("s1")).await.unwrap();
        let sub = store
            .next_event(ResourceKind::Subscription, Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sub.event, subscription_event("s1"));
        let first = store
            .next_event(ResourceKind::ProductPlan, Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.event, event("a"));
        // Handed out but not finished still counts against the capacity.
        assert!(store.enqueue(event("c")).await.is_err());
        assert_eq!(store.queue_depth().await.unwrap(), 3);
        store.ack(&first).await.unwrap();
        store.ack(&sub).await.unwrap();
        store.enqueue(event("c")).await.unwrap();
        let second = store
            .next_event(ResourceKind::ProductPlan, Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.event.event_id, "b");
        // Handed back for a later pass: still counted, due again with its attempt.
        store
            .retry_event(&second, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(store.queue_depth().await.unwrap(), 2);
        assert!(store.enqueue(event("d")).await.is_err());
        let third = store
            .next_event(ResourceKind::ProductPlan, Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(third.event.event_id, "c");
        store.ack(&third).await.unwrap();
        let again = store
            .next_event(ResourceKind::ProductPlan, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("the retry comes due");
        assert_eq!(
            (again.event.event_id.as_str(), again.event.attempt),
            ("b", 1)
        );
        store.ack(&again).await.unwrap();
        assert_eq!(store.queue_depth().await.unwrap(), 0);
    });
}

#[tokio::test]
async fn a_waiting_consumer_wakes_when_an_event_arrives() {
    both!(10, |store: Store| async move {
        let store = std::sync::Arc::new(store);
        let consumer = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .next_event(ResourceKind::ProductPlan, Duration::from_secs(5))
                    .await
            })
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
                .next_event(ResourceKind::ProductPlan, Duration::from_millis(50))
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
    let server = start_redis().await;
    let reclaim = Duration::from_millis(200);
    let dead = redis_store(&server, 10, "instance-a", reclaim);
    let alive = redis_store(&server, 10, "instance-b", reclaim);
    dead.enqueue(event("orphan")).await.unwrap();
    let taken = dead
        .next_event(ResourceKind::ProductPlan, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.event.event_id, "orphan");
    // Instance A dies without acknowledging. Before the timeout B leaves it alone.
    drop(dead);
    assert!(
        alive
            .next_event(ResourceKind::ProductPlan, Duration::from_millis(20))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(reclaim).await;
    let reclaimed = alive
        .next_event(ResourceKind::ProductPlan, Duration::from_millis(20))
        .await
        .unwrap()
        .expect("taken over after the idle timeout");
    assert_eq!(reclaimed.event.event_id, "orphan");
    alive.ack(&reclaimed).await.unwrap();
    assert!(
        alive
            .next_event(ResourceKind::ProductPlan, Duration::from_millis(20))
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
    let mut server = RedisServer::new();
    let store = redis_store(&server, 10, "c1", Duration::from_secs(30));
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
    server.start().await;
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
            .next_event(ResourceKind::ProductPlan, Duration::from_millis(100))
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
    let mut server = start_redis().await;
    let store = redis_store(&server, 10, "c1", Duration::from_secs(30));
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
    server.kill();
    server.start().await;
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
            .next_event(ResourceKind::ProductPlan, Duration::from_millis(100))
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

#[tokio::test]
async fn the_last_watch_topic_sequence_is_kept_per_topic_and_replaced() {
    both!(10, |store: Store| async move {
        assert_eq!(store.watch_sequence("bridge-events").await.unwrap(), None);
        store.set_watch_sequence("bridge-events", 41).await.unwrap();
        store.set_watch_sequence("other", 7).await.unwrap();
        store.set_watch_sequence("bridge-events", 42).await.unwrap();
        assert_eq!(
            store.watch_sequence("bridge-events").await.unwrap(),
            Some(42)
        );
        assert_eq!(store.watch_sequence("other").await.unwrap(), Some(7));
    });
}

#[test]
fn the_last_watch_topic_sequence_survives_a_restart_of_the_journaled_store() {
    let dir = std::env::temp_dir().join(format!("bb-watch-seq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.jsonl");
    let _ = std::fs::remove_file(&path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::memory_with_journal(10, &path).unwrap();
        store.set_watch_sequence("bridge-events", 5).await.unwrap();
        store.set_watch_sequence("bridge-events", 9).await.unwrap();
    });
    // Reopened: replayed, compacted, and still the last one.
    runtime.block_on(async {
        let store = Store::memory_with_journal(10, &path).unwrap();
        assert_eq!(
            store.watch_sequence("bridge-events").await.unwrap(),
            Some(9)
        );
    });
    runtime.block_on(async {
        let store = Store::memory_with_journal(10, &path).unwrap();
        assert_eq!(
            store.watch_sequence("bridge-events").await.unwrap(),
            Some(9)
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn subscription_links_are_kept_listed_and_forgotten() {
    use billing_bridge_domain::trust::SubscriptionLink;
    let link = |id: &str, recurly: &str| SubscriptionLink {
        amplify_id: id.into(),
        amplify_name: format!("sub-{id}"),
        recurly_subscription: recurly.into(),
        plan_code: "amplify-plan-p1".into(),
        account_code: "amplify-team-t1".into(),
    };
    both!(10, |store: Store| async move {
        assert_eq!(store.subscription_link("s1").await.unwrap(), None);
        store.link_subscription(&link("s1", "r1")).await.unwrap();
        store.link_subscription(&link("s2", "r2")).await.unwrap();
        store.link_subscription(&link("s1", "r3")).await.unwrap();
        assert_eq!(
            store.subscription_link("s1").await.unwrap(),
            Some(link("s1", "r3")),
            "a later link replaces the earlier one"
        );
        let mut all = store.subscription_links().await.unwrap();
        all.sort_by(|a, b| a.amplify_id.cmp(&b.amplify_id));
        assert_eq!(all, vec![link("s1", "r3"), link("s2", "r2")]);
        store.unlink_subscription("s1").await.unwrap();
        assert_eq!(store.subscription_link("s1").await.unwrap(), None);
        assert_eq!(
            store.subscription_links().await.unwrap(),
            vec![link("s2", "r2")]
        );
    });
}

const NO_LIMIT: usize = 100_000;

fn ingest_window(start_ms: i64, ids: &[&str]) -> billing_bridge_store::IngestWindow {
    use billing_bridge_domain::transactions::{Group, tx_key};
    let group = |sub: &str, success: bool| Group {
        subscription: sub.to_owned().into(),
        quota: "q1".into(),
        resource_id: "ar-1".into(),
        resource_name: "pets".into(),
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
        .map(|(g, n)| {
            // The resource's id and name both come back as they were taken.
            assert_eq!((&*g.resource_id, &*g.resource_name), ("ar-1", "pets"));
            (g.subscription.to_string(), g.success, n)
        })
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
                NO_LIMIT,
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
                NO_LIMIT,
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
            .ingest(7, NO_LIMIT, &[ingest_window(hour, &["a", "d"])])
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

/// A window of transactions `(id, subscription)`, one group per subscription.
fn window_of(start_ms: i64, txs: &[(&str, &str)]) -> billing_bridge_store::IngestWindow {
    use billing_bridge_domain::transactions::{Group, tx_key};
    let mut window = billing_bridge_store::IngestWindow {
        start_ms,
        ..Default::default()
    };
    for (id, sub) in txs {
        let group = Group {
            subscription: sub.to_string().into(),
            quota: "q1".into(),
            resource_id: "ar-1".into(),
            resource_name: "pets".into(),
            success: true,
        };
        let at = match window.groups.iter().position(|g| *g == group) {
            Some(at) => at,
            None => {
                window.groups.push(group);
                window.groups.len() - 1
            }
        };
        window.transactions.push((tx_key(id), at as u32));
    }
    window
}

#[tokio::test]
async fn a_window_at_its_group_limit_refuses_new_groups_and_takes_known_ones() {
    both!(10, |store: Store| async move {
        let hour = 3_600_000;
        let first = store
            .ingest(
                1,
                2,
                &[
                    window_of(0, &[("a", "s1"), ("b", "s2"), ("c", "s3"), ("d", "s1")]),
                    window_of(hour, &[("e", "s3")]),
                ],
            )
            .await
            .unwrap();
        assert_eq!((first.accepted, first.duplicates), (4, 0));
        assert_eq!(
            first.too_many_groups,
            vec![(0, 2)],
            "s3 is a third group in window 0"
        );
        // A refused id was not taken; a repeat of a taken one is a duplicate, not a refusal.
        let second = store
            .ingest(
                1,
                2,
                &[window_of(0, &[("a", "s1"), ("c", "s3"), ("f", "s2")])],
            )
            .await
            .unwrap();
        assert_eq!((second.accepted, second.duplicates), (1, 1));
        assert_eq!(second.too_many_groups, vec![(0, 1)]);
        let (total, groups) = ingested_total(&store, 0).await;
        assert_eq!(total, 4);
        assert_eq!(groups.len(), 2, "{groups:?}");
        // Another window has its own room.
        assert_eq!(ingested_total(&store, hour).await.0, 1);
    });
}

#[tokio::test]
async fn names_holding_separators_or_long_multibyte_text_stay_apart_and_whole() {
    both!(10, |store: Store| async move {
        let long = "ü".repeat(35_000);
        let cut_alike = format!("{long}z");
        let names = ["a\u{1f}b", "a", "b\u{1e}0", &long, &cut_alike];
        let txs: Vec<(String, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("id-{i}"), *n))
            .collect();
        let txs: Vec<(&str, &str)> = txs.iter().map(|(id, n)| (id.as_str(), *n)).collect();
        let got = store
            .ingest(1, NO_LIMIT, &[window_of(0, &txs)])
            .await
            .unwrap();
        assert_eq!(got.accepted, names.len() as u64);
        let mut want: Vec<(String, bool, u64)> =
            names.iter().map(|n| (n.to_string(), true, 1)).collect();
        want.sort();
        assert_eq!(ingested_total(&store, 0).await.1, want);
    });
}

/// Takes from `queue` until an item comes, for at most `within`.
async fn take_within(
    store: &Store,
    queue: &str,
    within: Duration,
) -> Option<billing_bridge_store::Taken> {
    store.queue_take(queue, within).await.unwrap()
}

#[tokio::test]
async fn a_queued_item_is_acknowledged_or_handed_back_and_comes_due_again_by_itself() {
    both!(10, |store: Store| async move {
        let q = "notices";
        store.queue_put(q, "n-a", "{\"a\":1}").await.unwrap();
        store
            .queue_put(q, "n-b", "b\u{1f}with a separator")
            .await
            .unwrap();
        store.queue_put("other", "n-x", "x").await.unwrap();
        let a = take_within(&store, q, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(
            (a.id.as_str(), a.body.as_str(), a.attempt),
            ("n-a", "{\"a\":1}", 0)
        );
        let b = take_within(&store, q, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(
            (b.id.as_str(), b.body.as_str()),
            ("n-b", "b\u{1f}with a separator")
        );
        // Handed back for later: not takeable before its time, and still counted.
        let delay = Duration::from_millis(400);
        let handed_back = std::time::Instant::now();
        store.queue_retry(q, &a, delay).await.unwrap();
        store.queue_ack(q, &b).await.unwrap();
        assert_eq!(store.queue_len(q).await.unwrap(), 1);
        assert!(
            take_within(&store, q, Duration::from_millis(20))
                .await
                .is_none()
        );
        // Comes due by itself while a consumer waits.
        let again = take_within(&store, q, Duration::from_secs(5))
            .await
            .expect("due again");
        assert!(
            handed_back.elapsed() >= delay - Duration::from_millis(50),
            "{:?}",
            handed_back.elapsed()
        );
        assert_eq!(
            (again.id.as_str(), again.body.as_str(), again.attempt),
            ("n-a", "{\"a\":1}", 1)
        );
        store.queue_ack(q, &again).await.unwrap();
        // A hand-out already acknowledged is not scheduled again.
        store.queue_retry(q, &again, Duration::ZERO).await.unwrap();
        assert_eq!(store.queue_len(q).await.unwrap(), 0);
        assert!(
            take_within(&store, q, Duration::from_millis(50))
                .await
                .is_none()
        );
        assert_eq!(
            store.queue_len("other").await.unwrap(),
            1,
            "queues are apart"
        );
    });
}

#[tokio::test]
async fn an_item_a_dead_consumer_took_and_never_finished_comes_back() {
    let reclaim = Duration::from_millis(200);
    // One embedded store serves one process: its other consumer takes from the same store.
    let memory = std::sync::Arc::new(Store::memory(10).with_reclaim_after(reclaim));
    check(memory.clone(), memory).await;
    if redis_available() {
        let server = start_redis().await;
        check(
            std::sync::Arc::new(redis_store(&server, 10, "instance-a", reclaim)),
            std::sync::Arc::new(redis_store(&server, 10, "instance-b", reclaim)),
        )
        .await;
    }

    async fn check(dead: std::sync::Arc<Store>, alive: std::sync::Arc<Store>) {
        dead.queue_put("notices", "n-1", "card").await.unwrap();
        let taken = take_within(&dead, "notices", Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(taken.id, "n-1");
        // Its consumer dies without acknowledging: left alone until the idle timeout.
        assert!(
            take_within(&alive, "notices", Duration::from_millis(20))
                .await
                .is_none()
        );
        let again = take_within(&alive, "notices", Duration::from_secs(5))
            .await
            .expect("taken over after the idle timeout");
        assert_eq!((again.id.as_str(), again.body.as_str()), ("n-1", "card"));
        alive.queue_ack("notices", &again).await.unwrap();
        assert_eq!(alive.queue_len("notices").await.unwrap(), 0);
    }
}

#[test]
fn scheduled_retries_and_unfinished_items_survive_a_restart_of_the_journaled_store() {
    let dir = std::env::temp_dir().join(format!("bb-queue-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state");
    let _ = std::fs::remove_file(&path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let delay = Duration::from_millis(600);
    let handed_back = runtime.block_on(async {
        let store = Store::memory_with_journal(10, &path).unwrap();
        for id in ["later", "in-flight", "done"] {
            store
                .queue_put("notices", id, &format!("body of {id}"))
                .await
                .unwrap();
        }
        let later = take_within(&store, "notices", Duration::from_millis(50))
            .await
            .unwrap();
        store.queue_retry("notices", &later, delay).await.unwrap();
        let handed_back = std::time::Instant::now();
        let in_flight = take_within(&store, "notices", Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(in_flight.id, "in-flight");
        let done = take_within(&store, "notices", Duration::from_millis(50))
            .await
            .unwrap();
        store.queue_ack("notices", &done).await.unwrap();
        handed_back
        // The process dies here: `in-flight` was never finished.
    });
    runtime.block_on(async {
        let store = Store::memory_with_journal(10, &path).unwrap();
        assert_eq!(store.queue_len("notices").await.unwrap(), 2);
        let first = take_within(&store, "notices", Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!((first.id.as_str(), first.attempt), ("in-flight", 0));
        store.queue_ack("notices", &first).await.unwrap();
        let retried = take_within(&store, "notices", Duration::from_secs(5))
            .await
            .expect("the scheduled retry comes due");
        assert!(handed_back.elapsed() >= delay - Duration::from_millis(50));
        assert_eq!(
            (retried.id.as_str(), retried.body.as_str(), retried.attempt),
            ("later", "body of later", 1)
        );
        store.queue_ack("notices", &retried).await.unwrap();
    });
    // Reopened once more (compacted on each open): nothing left.
    runtime.block_on(async {
        let store = Store::memory_with_journal(10, &path).unwrap();
        assert_eq!(store.queue_len("notices").await.unwrap(), 0);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn scheduled_retries_and_unfinished_items_survive_a_redis_restart_and_a_reconnect() {
    if !redis_available() {
        return;
    }
    let mut server = start_redis().await;
    let reclaim = Duration::from_millis(300);
    let store = redis_store(&server, 10, "before", reclaim);
    store.queue_put("notices", "later", "l").await.unwrap();
    store.queue_put("notices", "in-flight", "f").await.unwrap();
    let later = take_within(&store, "notices", Duration::from_millis(50))
        .await
        .unwrap();
    store
        .queue_retry("notices", &later, Duration::from_millis(800))
        .await
        .unwrap();
    let in_flight = take_within(&store, "notices", Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(in_flight.id, "in-flight");
    drop(store);
    // SIGKILL, then the same data directory.
    server.kill();
    server.start().await;
    // A new connection, as a restarted bridge makes.
    let store = redis_store(&server, 10, "after", reclaim);
    let mut len = None;
    for _ in 0..100 {
        if let Ok(n) = store.queue_len("notices").await {
            len = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(len, Some(2), "both kept");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let taken = take_within(&store, "notices", Duration::from_secs(5))
            .await
            .expect("each comes back");
        seen.push((taken.id.clone(), taken.attempt));
        store.queue_ack("notices", &taken).await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, [("in-flight".to_owned(), 0), ("later".to_owned(), 1)]);
    assert_eq!(store.queue_len("notices").await.unwrap(), 0);
}

#[tokio::test]
async fn events_an_earlier_release_left_in_its_one_redis_queue_are_taken_from_their_kind_queue() {
    if !redis_available() {
        return;
    }
    let server = start_redis().await;
    // As the release before per-kind queues wrote them: one stream, the event in field `e`.
    for e in [event("old-plan"), subscription_event("old-sub")] {
        let body = serde_json::to_string(&e).unwrap();
        let status = Command::new("redis-cli")
            .arg("-s")
            .arg(server.socket())
            .args(["XADD", "billing-bridge:queue", "*", "e"])
            .arg(body)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let store = redis_store(&server, 10, "upgraded", Duration::from_secs(30));
    let plan = store
        .next_event(ResourceKind::ProductPlan, Duration::from_millis(100))
        .await
        .unwrap()
        .expect("the old plan event");
    assert_eq!(plan.event, event("old-plan"));
    let sub = store
        .next_event(ResourceKind::Subscription, Duration::from_millis(100))
        .await
        .unwrap()
        .expect("the old subscription event");
    assert_eq!(sub.event, subscription_event("old-sub"));
    store.ack(&plan).await.unwrap();
    store.ack(&sub).await.unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}
