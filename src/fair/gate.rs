//! A few places for async work that keeps the runtime's threads busy while it
//! runs. The runtime shares its threads among ready tasks, not callers: a caller
//! with sixty-four submissions being sent gets sixteen times the CPU of one
//! with four. Through the gate, only a few sends run at once and a freed place
//! goes to the next caller in turn, so every caller sending gets an equal share
//! of the places, however many it has waiting.
//!
//! A place is held only while work keeps the CPU busy: the holder gives it up
//! once it has run for the gate's `hold` (by then it waits on a remote peer,
//! not the CPU), so a slow Smile ID never caps the sends in flight.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::turns::Turns;

struct State {
    /// Places taken now.
    taken: usize,
    /// Callers' waiting work, each to be told when a place is theirs.
    waiting: Turns<oneshot::Sender<()>>,
}

/// The gate; clones share its places.
#[derive(Clone)]
pub struct FairGate {
    state: Arc<Mutex<State>>,
    places: usize,
    hold: Duration,
}

/// A place taken; given back (to the next caller in turn) when dropped.
pub struct GateSlot {
    gate: Option<FairGate>,
}

impl FairGate {
    /// A gate of `places` places, each held for `hold` at most.
    pub fn new(places: usize, hold: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                taken: 0,
                waiting: Turns::default(),
            })),
            places: places.max(1),
            hold,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `work` once a place is `caller`'s, holding it until `work` ends or
    /// has run for the gate's `hold`.
    pub async fn run<T>(&self, caller: &str, work: impl Future<Output = T>) -> T {
        let slot = self.enter(caller).await;
        let work = std::pin::pin!(work);
        let mut work = work;
        tokio::select! {
            done = &mut work => done,
            () = tokio::time::sleep(self.hold) => {
                drop(slot);
                work.await
            }
        }
    }

    /// Waits for a place in `caller`'s turn.
    pub async fn enter(&self, caller: &str) -> GateSlot {
        let handed = {
            let mut state = self.lock();
            if state.taken < self.places && state.waiting.is_empty() {
                state.taken += 1;
                return GateSlot {
                    gate: Some(self.clone()),
                };
            }
            let (hand, handed) = oneshot::channel();
            state.waiting.push(caller, hand);
            handed
        };
        let mut waiting = Waiting {
            handed: Some(handed),
            gate: self,
        };
        let got = match waiting.handed.as_mut() {
            Some(handed) => handed.await.is_ok(),
            None => false,
        };
        waiting.handed = None;
        // The gate keeps every hand until it hands it a place; were one lost,
        // the work would run without a place rather than wait for ever.
        GateSlot {
            gate: got.then(|| self.clone()),
        }
    }

    /// Hands a place given back to the next caller in turn, or frees it.
    fn give_back(&self) {
        let mut state = self.lock();
        while let Some(hand) = state.waiting.next() {
            // A waiter that went away cannot take it: the next one in turn can.
            if hand.send(()).is_ok() {
                return;
            }
        }
        state.taken = state.taken.saturating_sub(1);
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.lock().taken
    }
}

/// A wait for a place; a place handed to a wait dropped before it saw it is given on.
struct Waiting<'a> {
    handed: Option<oneshot::Receiver<()>>,
    gate: &'a FairGate,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut handed) = self.handed.take() {
            handed.close();
            if handed.try_recv().is_ok() {
                self.gate.give_back();
            }
        }
    }
}

impl Drop for GateSlot {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const LONG: Duration = Duration::from_mins(1);

    #[tokio::test]
    async fn a_freed_place_goes_to_the_next_caller_in_turn() {
        let gate = FairGate::new(1, LONG);
        let first = gate.enter("greedy").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for (caller, index) in std::iter::repeat_n("greedy", 5).zip(0..).chain([("honest", 0)]) {
            let (gate, order) = (gate.clone(), order.clone());
            waiting.push(crate::task::spawn(async move {
                let _slot = gate.enter(caller).await;
                order.lock().expect("order").push((caller, index));
            }));
            tokio::task::yield_now().await;
        }
        drop(first);
        for task in waiting {
            task.await.expect("task");
        }
        let order = order.lock().expect("order").clone();
        assert_eq!(order[..2], [("greedy", 0), ("honest", 0)], "{order:?}");
        assert_eq!(gate.taken(), 0, "every place is back");
    }

    #[tokio::test]
    async fn no_more_than_its_places_run_at_once() {
        let gate = FairGate::new(3, LONG);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..20)
            .map(|index| {
                let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
                crate::task::spawn(async move {
                    let caller = if index % 2 == 0 { "a" } else { "b" };
                    gate.run(caller, async {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await;
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(gate.taken(), 0);
    }

    #[tokio::test]
    async fn work_running_past_its_hold_lets_the_next_in() {
        let gate = FairGate::new(1, Duration::from_millis(20));
        let slow = crate::task::spawn({
            let gate = gate.clone();
            async move { gate.run("slow", tokio::time::sleep(LONG)).await }
        });
        tokio::task::yield_now().await;
        let quick = tokio::time::timeout(Duration::from_secs(5), gate.run("quick", async { 7 })).await;
        assert_eq!(quick.expect("the slow work gave its place up"), 7);
        slow.abort();
    }

    #[tokio::test]
    async fn a_wait_given_up_passes_its_place_on() {
        let gate = FairGate::new(1, LONG);
        let first = gate.enter("a").await;
        // A waiter that goes away while it waits, and one after it.
        let gone = tokio::time::timeout(Duration::from_millis(10), gate.enter("b")).await;
        assert!(gone.is_err());
        let next = crate::task::spawn({
            let gate = gate.clone();
            async move { gate.enter("c").await }
        });
        tokio::task::yield_now().await;
        drop(first);
        let slot = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("the place reached c")
            .expect("task");
        assert_eq!(gate.taken(), 1);
        drop(slot);
        assert_eq!(gate.taken(), 0);
    }
}
