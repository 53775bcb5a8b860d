//! Shares of a limited resource held per key — a peer address, a caller — so
//! that no one key takes more than its share of what everyone needs.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// What one key holds, and who waits for it to give some back.
#[derive(Debug, Default)]
struct Held {
    amount: u64,
    /// Calls waiting for this key to give some back.
    waiting: u64,
    /// Made by the first to wait; only this key's waiters hear of its releases.
    released: Option<Arc<Notify>>,
}

impl Held {
    /// Whether the key may be forgotten: it holds nothing and nobody waits on it.
    fn is_idle(&self) -> bool {
        self.amount == 0 && self.waiting == 0
    }
}

type Used<K> = Arc<Mutex<HashMap<K, Held>>>;

/// How much one key may hold.
#[derive(Clone, Copy, Debug)]
enum Limit {
    /// The same, however many keys hold some.
    Fixed(u64),
    /// An equal part of `total` among the keys holding some and one more, or
    /// `at_least` if that is more: however many keys hold their part, one
    /// that comes later finds room.
    LeavingRoom { total: u64, at_least: u64 },
}

impl Limit {
    /// The most any key may ever hold.
    fn ceiling(self) -> u64 {
        match self {
            Self::Fixed(limit) => limit,
            Self::LeavingRoom { total, at_least } => (total / 2).max(at_least),
        }
    }

    /// What `key` may hold now.
    fn of<K: Hash + Eq>(self, used: &HashMap<K, Held>, key: &K) -> u64 {
        match self {
            Self::Fixed(limit) => limit,
            Self::LeavingRoom { total, at_least } => {
                let others = used
                    .iter()
                    .filter(|(holder, held)| held.amount > 0 && *holder != key)
                    .count() as u64;
                // Itself, the others, and one to come.
                (total / (others + 2)).max(at_least)
            }
        }
    }
}

/// How much of a resource each key holds, against a limit per key.
#[derive(Debug)]
pub struct Shares<K: Hash + Eq> {
    used: Used<K>,
    limit: Limit,
}

impl<K: Hash + Eq> Clone for Shares<K> {
    fn clone(&self) -> Self {
        Self {
            used: self.used.clone(),
            limit: self.limit,
        }
    }
}

/// What one holder took; given back when dropped.
#[derive(Debug)]
pub struct Share<K: Hash + Eq> {
    used: Used<K>,
    key: K,
    amount: u64,
    limit: Limit,
}

fn lock<K>(used: &Mutex<HashMap<K, Held>>) -> MutexGuard<'_, HashMap<K, Held>> {
    used.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K: Hash + Eq + Clone> Shares<K> {
    /// Each key may hold up to `limit`.
    pub fn new(limit: u64) -> Self {
        Self {
            used: Arc::default(),
            limit: Limit::Fixed(limit),
        }
    }

    /// Each key may hold an equal part of `total` among the keys holding
    /// some and one more (a half while it holds alone, a third beside
    /// another), or `at_least` if that is more. A key over its part as
    /// others come keeps what it holds, and gets no more until it is under.
    pub fn leaving_room(total: u64, at_least: u64) -> Self {
        Self {
            used: Arc::default(),
            limit: Limit::LeavingRoom { total, at_least },
        }
    }

    /// The most one key may hold.
    pub fn limit(&self) -> u64 {
        self.limit.ceiling()
    }

    /// `amount` more for `key`, unless that would take it over its limit.
    pub fn take(&self, key: &K, amount: u64) -> Option<Share<K>> {
        self.take_or_listen(key, amount).ok()
    }

    /// `amount` more for `key`, or else a place among `key`'s waiters, which
    /// hear of its releases (`None` when `amount` is over the limit, and
    /// nothing would help).
    fn take_or_listen(&self, key: &K, amount: u64) -> Result<Share<K>, Option<Waiting<'_, K>>> {
        if amount > self.limit.ceiling() {
            return Err(None);
        }
        let mut used = lock(&self.used);
        let limit = self.limit.of(&used, key);
        let held = used.entry(key.clone()).or_default();
        let Some(total) = held.amount.checked_add(amount).filter(|total| *total <= limit) else {
            held.waiting += 1;
            return Err(Some(Waiting {
                shares: self,
                key: key.clone(),
                released: held.released.get_or_insert_default().clone(),
            }));
        };
        held.amount = total;
        Ok(Share {
            used: self.used.clone(),
            key: key.clone(),
            amount,
            limit: self.limit,
        })
    }

    /// `amount` more for `key`, waiting up to `wait` for others of `key` to
    /// give theirs back. Only releases of `key` wake it (and, where parts
    /// grow as keys leave, another key holding nothing any more), so the
    /// calls of a caller waiting over its share cost nothing when others' end.
    pub async fn take_within(&self, key: &K, amount: u64, wait: Duration) -> Option<Share<K>> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let waiting = match self.take_or_listen(key, amount) {
                Ok(share) => {
                    self.pass_on(key);
                    return Some(share);
                }
                Err(waiting) => waiting?,
            };
            // A release between the try and the wait leaves its notice for us.
            tokio::time::timeout_at(until, waiting.released.notified()).await.ok()?;
        }
    }

    /// Wakes another waiter of `key` if a release left room for more than
    /// the one it woke.
    fn pass_on(&self, key: &K) {
        let used = lock(&self.used);
        if let Some(held) = used.get(key)
            && held.waiting > 0
            && held.amount < self.limit.of(&used, key)
            && let Some(released) = &held.released
        {
            released.notify_one();
        }
    }

    /// What `key` holds now.
    #[cfg(test)]
    fn held(&self, key: &K) -> u64 {
        lock(&self.used).get(key).map_or(0, |held| held.amount)
    }
}

impl<K: Hash + Eq> Drop for Share<K> {
    fn drop(&mut self) {
        let mut used = lock(&self.used);
        let Some(held) = used.get_mut(&self.key) else {
            return;
        };
        held.amount = held.amount.saturating_sub(self.amount);
        let mut released: Vec<_> = held.released.clone().filter(|_| held.waiting > 0).into_iter().collect();
        let left = held.amount == 0;
        // Keys come and go: only those holding something, or waited on, are kept.
        if held.is_idle() {
            used.remove(&self.key);
        }
        if left && matches!(self.limit, Limit::LeavingRoom { .. }) {
            // One key fewer holds some: every other key's part grew.
            released.extend(
                used.values()
                    .filter(|held| held.waiting > 0)
                    .filter_map(|held| held.released.clone()),
            );
        }
        drop(used);
        for released in released {
            released.notify_one();
        }
    }
}

/// A call's place among a key's waiters, given up when dropped.
struct Waiting<'a, K: Hash + Eq + Clone> {
    shares: &'a Shares<K>,
    key: K,
    released: Arc<Notify>,
}

impl<K: Hash + Eq + Clone> Drop for Waiting<'_, K> {
    fn drop(&mut self) {
        let mut used = lock(&self.shares.used);
        if let Some(held) = used.get_mut(&self.key) {
            held.waiting = held.waiting.saturating_sub(1);
            if held.is_idle() {
                used.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// Counts how often the task it stands for is woken.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_limit_as_large_as_it_goes_still_refuses_what_would_pass_it() {
        let shares = Shares::new(u64::MAX);
        let all = shares.take(&"k", u64::MAX).expect("the whole limit");
        assert!(shares.take(&"k", 1).is_none(), "one more would pass the limit");
        drop(all);
        assert!(shares.take(&"k", 1).is_some());
    }

    #[tokio::test]
    async fn a_caller_waiting_over_its_share_is_woken_by_its_own_releases_only() {
        let shares = Shares::new(1);
        let flood = shares.take(&"flood", 1).expect("within");
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut waiting = pin!(shares.take_within(&"flood", 1, Duration::from_mins(1)));
        let mut context = Context::from_waker(&waker);
        assert!(
            waiting.as_mut().poll(&mut context).is_pending(),
            "flood holds its share"
        );
        for _ in 0..1000 {
            drop(shares.take(&"honest", 1).expect("honest has its own"));
        }
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            0,
            "others' releases wake no one of flood's"
        );
        drop(flood);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "its own release wakes it");
        assert!(matches!(waiting.as_mut().poll(&mut context), Poll::Ready(Some(_))));
    }

    #[tokio::test]
    async fn waiters_who_find_the_key_forgotten_and_taken_again_still_hear_of_its_releases() {
        let shares = Shares::new(2);
        let (one, two) = (shares.take(&"a", 1).expect("1"), shares.take(&"a", 1).expect("2"));
        let waiter = |shares: &Shares<&'static str>| {
            let shares = shares.clone();
            crate::task::spawn(async move { shares.take_within(&"a", 1, Duration::from_secs(5)).await })
        };
        let mut waiters = vec![waiter(&shares), waiter(&shares), waiter(&shares)];
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Both given back at once: "a" holds nothing for a moment, and two waiters take its places.
        drop((one, two));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let third = waiters
            .iter()
            .position(|waiter| !waiter.is_finished())
            .expect("one still waits");
        let third = waiters.remove(third);
        let mut taken = Vec::new();
        for waiter in waiters {
            taken.push(waiter.await.expect("join").expect("a place"));
        }
        drop(taken.pop());
        let share = tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .expect("the third waiter hears of the place given back")
            .expect("join");
        assert!(share.is_some());
    }

    #[tokio::test]
    async fn a_share_given_back_goes_to_one_waiting_for_it() {
        let shares = Shares::new(1);
        let held = shares.take(&"a", 1).expect("within");
        let waiting = crate::task::spawn({
            let shares = shares.clone();
            async move { shares.take_within(&"a", 1, Duration::from_secs(5)).await.is_some() }
        });
        assert!(
            shares.take_within(&"a", 1, Duration::from_millis(50)).await.is_none(),
            "nothing given back within the wait"
        );
        assert!(
            shares.take_within(&"b", 1, Duration::ZERO).await.is_some(),
            "b has its own"
        );
        drop(held);
        assert!(waiting.await.expect("join"), "the waiter took what was given back");
    }

    #[tokio::test]
    async fn parts_that_leave_room_shrink_as_keys_come_and_grow_as_they_go() {
        let shares = Shares::leaving_room(12, 2);
        let first = shares.take(&"a", 5).expect("alone, within a half");
        assert!(shares.take(&"a", 2).is_none(), "over a's half");
        let beside = shares.take(&"b", 4).expect("beside a, a third");
        assert!(shares.take(&"b", 1).is_none(), "over b's third");
        let waiting = crate::task::spawn({
            let shares = shares.clone();
            async move { shares.take_within(&"a", 1, Duration::from_secs(5)).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a keeps what it holds, and gets no more beside b"
        );
        let third = shares.take(&"c", 3).expect("beside two, a quarter");
        assert!(shares.take(&"c", 1).is_none(), "over c's quarter");
        drop(third);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "c gone, b still holds some");
        drop(beside);
        let took = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("b holding nothing wakes a's waiter")
            .expect("join");
        assert!(took, "alone again, a's half has room for one more");
        let crowd: Vec<_> = ["d", "e", "f", "g", "h"]
            .iter()
            .map(|key| shares.take(key, 2).expect("never less than at_least"))
            .collect();
        drop((first, crowd));
    }

    #[test]
    fn a_key_holds_up_to_its_limit_and_gets_it_back() {
        let shares = Shares::new(3);
        let first = shares.take(&"a", 2).expect("within");
        assert!(shares.take(&"a", 2).is_none(), "over a's limit");
        let other = shares.take(&"b", 3).expect("b has its own");
        let last = shares.take(&"a", 1).expect("exactly the limit");
        drop(first);
        assert_eq!(shares.held(&"a"), 1);
        assert!(shares.take(&"a", 2).is_some());
        drop((other, last));
        assert_eq!(shares.held(&"b"), 0);
        assert!(
            shares.used.lock().expect("lock").len() <= 1,
            "keys holding nothing are forgotten"
        );
    }
}
