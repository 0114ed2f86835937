//! Several passes in flight, never two for one resource: a pass takes one of `concurrency`
//! slots, and a pass for a resource that is already being passed waits behind it, in the order
//! the events came (its slot goes back meanwhile, so other resources do not wait for it).
//! Within one process this is what orders the passes of a resource; across processes sharing a
//! Redis store, the resource's lease in the store (see `actors`) does.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Runs work items keyed by resource: at most `concurrency` at once, one at a time per key, in
/// arrival order per key.
pub struct Lanes<T> {
    slots: Arc<Semaphore>,
    /// Keys being worked on, each with the items waiting behind the running one.
    busy: Arc<Mutex<HashMap<String, VecDeque<T>>>>,
}

/// A free slot, taken before the next item is fetched, so nothing is fetched that cannot start.
pub struct Slot {
    _held: OwnedSemaphorePermit,
}

impl<T: 'static> Lanes<T> {
    pub fn new(concurrency: usize) -> Self {
        Lanes {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            busy: Arc::default(),
        }
    }

    /// Waits for a free slot.
    pub async fn slot(&self) -> Slot {
        Slot {
            _held: self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed"),
        }
    }

    /// Runs `work(item)` in `slot` on the current thread's executor, or, when an item of `key`
    /// is being worked on, queues it behind that one and frees the slot. The items of a key
    /// run one after the other in the slot of the first.
    pub fn run<F, Fut>(&self, slot: Slot, key: String, item: T, work: F)
    where
        F: Fn(T) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        {
            let mut busy = self.busy.lock().expect("lanes lock");
            if let Some(waiting) = busy.get_mut(&key) {
                waiting.push_back(item);
                return;
            }
            busy.insert(key.clone(), VecDeque::new());
        }
        let busy = self.busy.clone();
        actix_rt::spawn(async move {
            let _slot = slot;
            let mut item = item;
            loop {
                work(item).await;
                let mut lanes = busy.lock().expect("lanes lock");
                match lanes.get_mut(&key).and_then(VecDeque::pop_front) {
                    Some(next) => item = next,
                    None => {
                        lanes.remove(&key);
                        return;
                    }
                }
            }
        });
    }

    /// Items being worked on or waiting behind them.
    pub fn in_flight(&self) -> usize {
        let busy = self.busy.lock().expect("lanes lock");
        busy.len() + busy.values().map(VecDeque::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use tokio::sync::oneshot;

    use super::*;

    /// What a test's work items did: `(key, item, "start" | "end")` in order.
    type Log = Rc<RefCell<Vec<(String, u32, &'static str)>>>;

    /// Work that logs its start, then waits for the test to let it end.
    fn gated(
        log: &Log,
        gates: &Rc<RefCell<HashMap<u32, oneshot::Receiver<()>>>>,
    ) -> impl Fn((String, u32)) -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Clone + 'static
    {
        let (log, gates) = (log.clone(), gates.clone());
        move |(key, n)| {
            let (log, gate) = (log.clone(), gates.borrow_mut().remove(&n));
            Box::pin(async move {
                log.borrow_mut().push((key.clone(), n, "start"));
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                log.borrow_mut().push((key, n, "end"));
            })
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[actix_rt::test]
    async fn items_of_one_key_run_one_at_a_time_in_order_and_others_run_beside_them() {
        let lanes: Lanes<(String, u32)> = Lanes::new(3);
        let log: Log = Rc::default();
        let gates = Rc::new(RefCell::new(HashMap::new()));
        let mut open = HashMap::new();
        for n in 1..=4 {
            let (tx, rx) = oneshot::channel();
            gates.borrow_mut().insert(n, rx);
            open.insert(n, tx);
        }
        let work = gated(&log, &gates);
        // 1, 2 and 4 are of key "a"; 3 of key "b".
        for (key, n) in [("a", 1), ("a", 2), ("b", 3), ("a", 4)] {
            let slot = lanes.slot().await;
            let work = work.clone();
            lanes.run(slot, key.to_owned(), (key.to_owned(), n), work);
        }
        settle().await;
        let started = |log: &Log| -> Vec<u32> {
            log.borrow()
                .iter()
                .filter(|e| e.2 == "start")
                .map(|e| e.1)
                .collect()
        };
        // "a" runs its first item only; "b" runs beside it.
        assert_eq!(started(&log), vec![1, 3]);
        assert_eq!(lanes.in_flight(), 4);
        // Two items run; the items queued behind "a" gave their slots back.
        assert_eq!(
            lanes.slots.available_permits(),
            1,
            "a queued item holds no slot"
        );

        open.remove(&1).unwrap().send(()).unwrap();
        settle().await;
        assert_eq!(started(&log), vec![1, 3, 2], "2 starts once 1 ended");
        open.remove(&3).unwrap().send(()).unwrap();
        open.remove(&2).unwrap().send(()).unwrap();
        settle().await;
        open.remove(&4).unwrap().send(()).unwrap();
        settle().await;
        assert_eq!(lanes.in_flight(), 0);
        // Never two of "a" at once: each start of "a" follows the end of the one before.
        let a: Vec<(u32, &str)> = log
            .borrow()
            .iter()
            .filter(|e| e.0 == "a")
            .map(|e| (e.1, e.2))
            .collect();
        assert_eq!(
            a,
            vec![
                (1, "start"),
                (1, "end"),
                (2, "start"),
                (2, "end"),
                (4, "start"),
                (4, "end")
            ]
        );
    }

    #[actix_rt::test]
    async fn no_more_than_the_concurrency_runs_at_once() {
        let lanes: Lanes<(String, u32)> = Lanes::new(2);
        let log: Log = Rc::default();
        let gates = Rc::new(RefCell::new(HashMap::new()));
        let mut open = Vec::new();
        for n in 1..=2 {
            let (tx, rx) = oneshot::channel();
            gates.borrow_mut().insert(n, rx);
            open.push(tx);
        }
        let work = gated(&log, &gates);
        for n in 1..=2 {
            let slot = lanes.slot().await;
            lanes.run(slot, format!("k{n}"), (format!("k{n}"), n), work.clone());
        }
        settle().await;
        assert_eq!(
            lanes.slots.available_permits(),
            0,
            "two items hold both slots"
        );
        open.remove(0).send(()).unwrap();
        settle().await;
        assert_eq!(
            lanes.slots.available_permits(),
            1,
            "an ended item frees its slot"
        );
        open.remove(0).send(()).unwrap();
        settle().await;
        assert_eq!(lanes.slots.available_permits(), 2);
    }
}
