//! A few turns at once, handed to callers in turn.
//!
//! Every stage a submission passes through queues first in, first out: the
//! runtime's tasks, the job store's writer, the connection to Smile ID. With
//! dozens of one caller's submissions at each, another caller's waits behind
//! all of them at every stage. Through a gate, only a few submissions are in
//! those stages at once and a free turn goes to the next caller in line, so
//! the queues behind it stay short and a caller with much waiting waits
//! behind its own work. Each caller's first few submissions in flight go
//! ahead of anyone's further ones ([`Precedence`]): those run at the lowest
//! CPU priority, and a turn held there would hold everyone up.
//!
//! While several callers have submissions in flight ([`FairGate::present`]),
//! none holds more than its share of the turns, even when a turn is free:
//! a caller with a few submissions in flight spends part of each outside the
//! gate (with Smile ID, on its connection), and turns it leaves free would
//! otherwise all go to a caller with many, whose work then crowds the
//! stages the few share with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::turns::Turns;

struct State {
    /// Turns no one holds.
    free: usize,
    /// Turns in all.
    turns: usize,
    /// Waiting with [`Precedence::Ahead`].
    ahead: Turns<oneshot::Sender<Turn>>,
    /// Waiting with [`Precedence::Further`], served when no one waits ahead.
    further: Turns<oneshot::Sender<Turn>>,
    /// The turns each caller holds.
    held: HashMap<Arc<str>, usize>,
    /// The submissions each caller has in flight.
    present: HashMap<String, usize>,
}

impl State {
    /// The most turns any one caller may hold: all of them for a caller
    /// alone, an equal part (rounded up) while others have work in flight.
    fn share(&self) -> usize {
        self.turns.div_ceil(self.present.len().max(1))
    }

    fn may_take(&self, caller: &str) -> bool {
        below_share(&self.held, caller, self.share())
    }

    /// Hands free turns to the callers waiting that may take one: those
    /// ahead first, each in its turn.
    fn hand_out(&mut self, shared: &Shared) {
        while self.free > 0 {
            let share = self.share();
            let held = &self.held;
            let may = |caller: &str| below_share(held, caller, share);
            let Some((caller, waiter)) = self.ahead.next_of(may).or_else(|| self.further.next_of(may)) else {
                return;
            };
            let caller: Arc<str> = caller.into();
            match waiter.send(self.take(shared, caller)) {
                Ok(()) => {}
                // That caller went away: the turn is free again.
                Err(mut unwanted) => {
                    let caller = unwanted.caller.clone();
                    unwanted.gate = None;
                    self.give_back(&caller);
                }
            }
        }
    }

    fn take(&mut self, shared: &Shared, caller: Arc<str>) -> Turn {
        self.free -= 1;
        *self.held.entry(caller.clone()).or_default() += 1;
        Turn {
            gate: Some(shared.clone()),
            caller,
        }
    }

    fn give_back(&mut self, caller: &str) {
        self.free += 1;
        if let Some(held) = self.held.get_mut(caller) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(caller);
            }
        }
    }
}

fn below_share(held: &HashMap<Arc<str>, usize>, caller: &str, share: usize) -> bool {
    held.get(caller).copied().unwrap_or(0) < share
}

/// Where a submission stands in line for a turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precedence {
    /// One of its caller's first few in flight.
    #[default]
    Ahead,
    /// One beyond those: it waits while anyone's first few wait.
    Further,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub struct FairGate {
    shared: Shared,
}

/// A turn through the gate, handed to the next caller in line when dropped.
pub struct Turn {
    /// `None` once handed on, or for a turn of a gate that is gone.
    gate: Option<Shared>,
    caller: Arc<str>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Turn")
    }
}

/// A submission in flight, counted towards its caller's presence until
/// dropped, except while it steps away.
pub struct Present {
    gate: Shared,
    caller: String,
    counted: bool,
}

impl std::fmt::Debug for Present {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Present")
    }
}

impl FairGate {
    /// A gate letting `turns` through at once (at least one).
    pub fn new(turns: usize) -> Self {
        let turns = turns.max(1);
        Self {
            shared: Arc::new(Mutex::new(State {
                free: turns,
                turns,
                ahead: Turns::default(),
                further: Turns::default(),
                held: HashMap::new(),
                present: HashMap::new(),
            })),
        }
    }

    /// Counts a submission of `caller` in flight until the answer is
    /// dropped: while other callers have one too, each holds at most its share.
    pub fn present(&self, caller: &str) -> Present {
        let mut present = Present {
            gate: self.shared.clone(),
            caller: caller.to_owned(),
            counted: false,
        };
        present.back();
        present
    }

    /// Waits for `caller`'s turn. Callers waiting take turns, those ahead
    /// first; each caller's own wait in the order they came.
    pub async fn turn(&self, caller: &str, precedence: Precedence) -> Turn {
        let handed = {
            let mut state = lock(&self.shared);
            // Turns are never left free while a caller that may take one
            // waits, so a free turn is this caller's if its share allows.
            if state.free > 0 && state.may_take(caller) {
                return state.take(&self.shared, caller.into());
            }
            let (hand, handed) = oneshot::channel();
            match precedence {
                Precedence::Ahead => state.ahead.push(caller, hand),
                Precedence::Further => state.further.push(caller, hand),
            }
            handed
        };
        // A waiter's sender goes only with a turn in it, or with the gate's
        // state, when nothing would be waited for.
        handed.await.unwrap_or(Turn {
            gate: None,
            caller: caller.into(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(gate) = self.gate.take() else {
            return;
        };
        let mut state = lock(&gate);
        state.give_back(&self.caller);
        state.hand_out(&gate);
    }
}

impl Present {
    /// Stops counting the submission until [`Present::back`]: one that only
    /// waits (to retry, say) has no work for others to make room for.
    pub fn away(&mut self) {
        if !std::mem::replace(&mut self.counted, false) {
            return;
        }
        let mut state = lock(&self.gate);
        if let Some(count) = state.present.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                state.present.remove(&self.caller);
            }
        }
        // One caller fewer, maybe: the others' shares may have grown.
        state.hand_out(&self.gate);
    }

    /// Counts the submission again.
    pub fn back(&mut self) {
        if !std::mem::replace(&mut self.counted, true) {
            *lock(&self.gate).present.entry(self.caller.clone()).or_default() += 1;
        }
    }
}

impl Drop for Present {
    fn drop(&mut self) {
        self.away();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn soon<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(200), future).await.ok()
    }

    /// The order in which `line`, waiting in that order for a gate of one
    /// turn, had their turns (by their places in `line`).
    async fn turns_taken(line: [(&'static str, Precedence); 4]) -> Vec<usize> {
        let gate = Arc::new(FairGate::new(1));
        let first = gate.turn("first", Precedence::Ahead).await;
        let (order, mut waiters) = (Arc::new(Mutex::new(Vec::new())), Vec::new());
        for (index, (caller, precedence)) in line.into_iter().enumerate() {
            let (gate, order) = (gate.clone(), order.clone());
            waiters.push(crate::task::spawn(async move {
                let turn = gate.turn(caller, precedence).await;
                order.lock().expect("order").push(index);
                drop(turn);
            }));
            tokio::task::yield_now().await;
        }
        drop(first);
        for waiter in waiters {
            soon(waiter)
                .await
                .expect("every waiter has its turn")
                .expect("no panic");
        }
        std::mem::take(&mut *order.lock().expect("order"))
    }

    #[tokio::test]
    async fn a_free_turn_goes_to_the_next_caller_in_line() {
        let line = [
            ("greedy", Precedence::Ahead),
            ("greedy", Precedence::Ahead),
            ("greedy", Precedence::Ahead),
            ("honest", Precedence::Ahead),
        ];
        assert_eq!(turns_taken(line).await, [0, 3, 1, 2]);
    }

    #[tokio::test]
    async fn those_ahead_have_their_turns_before_anyone_further() {
        let line = [
            ("greedy", Precedence::Further),
            ("greedy", Precedence::Ahead),
            ("greedy", Precedence::Further),
            ("honest", Precedence::Ahead),
        ];
        assert_eq!(turns_taken(line).await, [1, 3, 0, 2]);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_gives_its_place_to_the_next() {
        let gate = FairGate::new(1);
        let held = gate.turn("a", Precedence::Ahead).await;
        let mut gone = Box::pin(gate.turn("b", Precedence::Ahead));
        assert!(soon(&mut gone).await.is_none(), "the only turn is held");
        drop(gone);
        let next = crate::task::spawn({
            let gate = Arc::new(gate);
            async move {
                let turn = gate.turn("c", Precedence::Ahead).await;
                drop(turn);
                gate
            }
        });
        tokio::task::yield_now().await;
        drop(held);
        let gate = soon(next).await.expect("c had its turn").expect("no panic");
        assert!(
            soon(gate.turn("d", Precedence::Ahead)).await.is_some(),
            "the turn came back once c was done"
        );
    }

    #[tokio::test]
    async fn a_caller_alone_may_hold_every_turn() {
        let gate = FairGate::new(4);
        let _present = gate.present("batch");
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(soon(gate.turn("batch", Precedence::Ahead)).await.expect("a free turn"));
        }
    }

    #[tokio::test]
    async fn while_another_caller_has_work_in_flight_none_holds_more_than_its_share() {
        let gate = Arc::new(FairGate::new(4));
        let honest = gate.present("honest");
        let _greedy = [gate.present("greedy"), gate.present("greedy"), gate.present("greedy")];
        let greedy_turns = [
            gate.turn("greedy", Precedence::Ahead).await,
            gate.turn("greedy", Precedence::Ahead).await,
        ];
        // Two turns are free, yet the greedy caller holds its share of two.
        let mut third = crate::task::spawn({
            let gate = gate.clone();
            async move { gate.turn("greedy", Precedence::Ahead).await }
        });
        assert!(soon(&mut third).await.is_none(), "a third turn is beyond its share");
        // The honest caller, which holds none, has both at once.
        let honest_turns = [
            soon(gate.turn("honest", Precedence::Ahead))
                .await
                .expect("its share is free"),
            soon(gate.turn("honest", Precedence::Ahead))
                .await
                .expect("its share is free"),
        ];
        drop(honest_turns);
        assert!(soon(&mut third).await.is_none(), "the honest caller is still present");
        // Once the honest caller has nothing in flight, the greedy one may have them all.
        drop(honest);
        let third = soon(third).await.expect("its share grew").expect("no panic");
        let fourth = soon(gate.turn("greedy", Precedence::Ahead))
            .await
            .expect("every turn is its share");
        drop((greedy_turns, third, fourth));
        // No turn is lost on the way.
        let mut again = Vec::new();
        for _ in 0..4 {
            again.push(
                soon(gate.turn("greedy", Precedence::Ahead))
                    .await
                    .expect("every turn came back"),
            );
        }
    }

    #[tokio::test]
    async fn a_submission_that_steps_away_shrinks_no_one_elses_share_until_it_is_back() {
        let gate = Arc::new(FairGate::new(2));
        let mut waiting = gate.present("retrying");
        let _busy = gate.present("busy");
        let first = gate.turn("busy", Precedence::Ahead).await;
        let mut second = crate::task::spawn({
            let gate = gate.clone();
            async move { gate.turn("busy", Precedence::Ahead).await }
        });
        assert!(
            soon(&mut second).await.is_none(),
            "one turn is the busy caller's share of two"
        );
        // Waiting to retry, it is not counted: the turn kept free for it is handed out.
        waiting.away();
        waiting.away();
        let second = soon(second).await.expect("its share grew").expect("no panic");
        waiting.back();
        waiting.back();
        drop(second);
        assert!(
            soon(gate.turn("busy", Precedence::Ahead)).await.is_none(),
            "back, it halves the share again, once"
        );
        drop((waiting, first));
        // Stepping away twice and back twice counted once each way: gone now, it
        // leaves the busy caller every turn.
        let both = [
            soon(gate.turn("busy", Precedence::Ahead)).await.expect("a free turn"),
            soon(gate.turn("busy", Precedence::Ahead))
                .await
                .expect("every turn is its share"),
        ];
        drop(both);
    }

    #[tokio::test]
    async fn a_turn_beyond_one_callers_share_goes_to_the_next_that_may_take_it() {
        let gate = Arc::new(FairGate::new(2));
        let _present = [gate.present("greedy"), gate.present("honest")];
        let held = gate.turn("honest", Precedence::Ahead).await;
        let greedy = gate.turn("greedy", Precedence::Ahead).await;
        // In line: the greedy caller first, beyond its share, then the honest one.
        let waiting_greedy = crate::task::spawn({
            let gate = gate.clone();
            async move { gate.turn("greedy", Precedence::Ahead).await }
        });
        tokio::task::yield_now().await;
        let waiting_honest = crate::task::spawn({
            let gate = gate.clone();
            async move { gate.turn("honest", Precedence::Ahead).await }
        });
        tokio::task::yield_now().await;
        drop(held);
        let honest = soon(waiting_honest).await.expect("the freed turn is within its share");
        assert!(!waiting_greedy.is_finished(), "the greedy caller holds its share");
        drop((greedy, honest));
        soon(waiting_greedy)
            .await
            .expect("its own turn came back")
            .expect("no panic");
    }

    #[tokio::test]
    async fn turns_at_once_are_as_many_as_the_gate_has() {
        let gate = FairGate::new(2);
        let (one, two) = (
            gate.turn("a", Precedence::Ahead).await,
            gate.turn("a", Precedence::Ahead).await,
        );
        assert!(
            soon(gate.turn("b", Precedence::Ahead)).await.is_none(),
            "both turns are held"
        );
        drop(one);
        let three = soon(gate.turn("b", Precedence::Ahead)).await.expect("one came back");
        drop((two, three));
    }
}
