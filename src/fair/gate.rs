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

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::turns::Turns;

struct State {
    free: usize,
    /// Waiting with [`Precedence::Ahead`].
    ahead: Turns<oneshot::Sender<Turn>>,
    /// Waiting with [`Precedence::Further`], served when no one waits ahead.
    further: Turns<oneshot::Sender<Turn>>,
}

impl State {
    fn next_waiting(&mut self) -> Option<oneshot::Sender<Turn>> {
        self.ahead.next().or_else(|| self.further.next())
    }
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
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Turn")
    }
}

impl FairGate {
    /// A gate letting `turns` through at once (at least one).
    pub fn new(turns: usize) -> Self {
        Self {
            shared: Arc::new(Mutex::new(State {
                free: turns.max(1),
                ahead: Turns::default(),
                further: Turns::default(),
            })),
        }
    }

    /// Waits for `caller`'s turn. Callers waiting take turns, those ahead
    /// first; each caller's own wait in the order they came.
    pub async fn turn(&self, caller: &str, precedence: Precedence) -> Turn {
        let handed = {
            let mut state = lock(&self.shared);
            if state.free > 0 && state.ahead.is_empty() && state.further.is_empty() {
                state.free -= 1;
                return Turn {
                    gate: Some(self.shared.clone()),
                };
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
        handed.await.unwrap_or(Turn { gate: None })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(gate) = self.gate.take() else {
            return;
        };
        let mut state = lock(&gate);
        while let Some(next) = state.next_waiting() {
            match next.send(Turn {
                gate: Some(gate.clone()),
            }) {
                Ok(()) => return,
                // That caller went away: its turn goes to the next.
                Err(mut unwanted) => unwanted.gate = None,
            }
        }
        state.free += 1;
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
