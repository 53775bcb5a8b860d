//! The queue work is taken from: callers in turn, each caller's own work
//! oldest first.

use std::collections::{HashMap, VecDeque};

pub(super) struct Turns<T> {
    /// Each waiting caller's work, oldest first.
    by_caller: HashMap<String, VecDeque<T>>,
    /// The callers with work waiting, in the order of their next turn.
    order: VecDeque<String>,
}

impl<T> Default for Turns<T> {
    fn default() -> Self {
        Self {
            by_caller: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T> Turns<T> {
    pub(super) fn push(&mut self, caller: &str, work: T) {
        let queue = self.by_caller.entry(caller.to_owned()).or_default();
        queue.push_back(work);
        if queue.len() == 1 {
            self.order.push_back(caller.to_owned());
        }
    }

    /// The oldest work of the first caller in line that `may` take a turn,
    /// with that caller, who goes to the back of the line; those passed
    /// over keep their places.
    pub(super) fn next_of(&mut self, may: impl Fn(&str) -> bool) -> Option<(String, T)> {
        let place = self.order.iter().position(|caller| may(caller))?;
        let caller = self.order.remove(place)?;
        let queue = self.by_caller.get_mut(&caller)?;
        let work = queue.pop_front()?;
        if queue.is_empty() {
            self.by_caller.remove(&caller);
        } else {
            self.order.push_back(caller.clone());
        }
        Some((caller, work))
    }

    /// The next caller's oldest work; that caller goes to the back of the line.
    pub(super) fn next(&mut self) -> Option<T> {
        let caller = self.order.pop_front()?;
        let queue = self.by_caller.get_mut(&caller)?;
        let work = queue.pop_front();
        if queue.is_empty() {
            self.by_caller.remove(&caller);
        } else {
            self.order.push_back(caller);
        }
        work
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_take_turns_and_each_keeps_its_order() {
        let mut turns = Turns::default();
        for index in 0..3 {
            turns.push("greedy", ("greedy", index));
        }
        turns.push("honest", ("honest", 0));
        turns.push("other", ("other", 0));
        let order: Vec<_> = std::iter::from_fn(|| turns.next()).collect();
        assert_eq!(
            order,
            [("greedy", 0), ("honest", 0), ("other", 0), ("greedy", 1), ("greedy", 2)]
        );
        assert!(turns.order.is_empty());
        assert!(turns.by_caller.is_empty(), "callers with nothing waiting are forgotten");
    }

    #[test]
    fn callers_passed_over_keep_their_places() {
        let mut turns = Turns::default();
        turns.push("greedy", 0);
        turns.push("greedy", 1);
        turns.push("honest", 0);
        assert_eq!(turns.next_of(|caller| caller != "greedy"), Some(("honest".into(), 0)));
        assert_eq!(turns.next_of(|caller| caller != "greedy"), None);
        assert_eq!(turns.next_of(|_| true), Some(("greedy".into(), 0)));
        assert_eq!(turns.next(), Some(1));
        assert!(turns.order.is_empty() && turns.by_caller.is_empty());
    }
}
