//! Shares of a limited resource held per key — a peer address, a caller — so
//! that no one key takes more than its share of what everyone needs.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// How much of a resource each key holds, against one limit per key.
#[derive(Debug)]
pub struct Shares<K: Hash + Eq> {
    used: Arc<Mutex<HashMap<K, u64>>>,
    released: Arc<Notify>,
    limit: u64,
}

impl<K: Hash + Eq> Clone for Shares<K> {
    fn clone(&self) -> Self {
        Self {
            used: self.used.clone(),
            released: self.released.clone(),
            limit: self.limit,
        }
    }
}

/// What one holder took; given back when dropped.
#[derive(Debug)]
pub struct Share<K: Hash + Eq> {
    used: Arc<Mutex<HashMap<K, u64>>>,
    released: Arc<Notify>,
    key: K,
    amount: u64,
}

fn lock<K>(used: &Mutex<HashMap<K, u64>>) -> MutexGuard<'_, HashMap<K, u64>> {
    used.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K: Hash + Eq + Clone> Shares<K> {
    /// Each key may hold up to `limit`.
    pub fn new(limit: u64) -> Self {
        Self {
            used: Arc::default(),
            released: Arc::default(),
            limit,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// `amount` more for `key`, unless that would take it over its limit.
    pub fn take(&self, key: &K, amount: u64) -> Option<Share<K>> {
        let mut used = lock(&self.used);
        let held = used.get(key).copied().unwrap_or(0);
        if held.saturating_add(amount) > self.limit {
            return None;
        }
        used.insert(key.clone(), held + amount);
        Some(Share {
            used: self.used.clone(),
            released: self.released.clone(),
            key: key.clone(),
            amount,
        })
    }

    /// `amount` more for `key`, waiting up to `wait` for others of `key` to
    /// give theirs back.
    pub async fn take_within(&self, key: &K, amount: u64, wait: Duration) -> Option<Share<K>> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Listening before trying: a share given back in between still wakes us.
            released.as_mut().enable();
            if let Some(share) = self.take(key, amount) {
                return Some(share);
            }
            tokio::time::timeout_at(until, released).await.ok()?;
        }
    }

    /// What `key` holds now.
    #[cfg(test)]
    fn held(&self, key: &K) -> u64 {
        lock(&self.used).get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq> Drop for Share<K> {
    fn drop(&mut self) {
        let mut used = lock(&self.used);
        if let Some(held) = used.get_mut(&self.key) {
            *held = held.saturating_sub(self.amount);
            // Keys come and go: only those holding something are kept.
            if *held == 0 {
                used.remove(&self.key);
            }
        }
        drop(used);
        self.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
