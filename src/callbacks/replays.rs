//! Callbacks already taken, by their signed timestamp and job: Smile ID signs
//! only a timestamp, so one genuine signature could otherwise be replayed with
//! any body for as long as the time window lasts, each replay costing a
//! job_status poll. A delivery seen before is answered and not processed again.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What identifies one delivery: the signed timestamp and the job it names.
type Delivery = (String, String);

/// Deliveries taken within the last `keep`, at most `capacity` of them (the
/// oldest forgotten first; a forgotten one costs one more poll at most).
pub struct SeenDeliveries {
    keep: Duration,
    capacity: usize,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    set: HashSet<Delivery>,
    order: VecDeque<(Instant, Delivery)>,
}

impl SeenDeliveries {
    pub fn new(keep: Duration, capacity: usize) -> Self {
        Self {
            keep,
            capacity,
            seen: Mutex::default(),
        }
    }

    /// Marks the delivery as being taken; false if it was taken before.
    pub fn first_time(&self, timestamp: &str, job_id: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        while let Some((at, _)) = seen.order.front() {
            if now.duration_since(*at) < self.keep && seen.order.len() < self.capacity {
                break;
            }
            if let Some((_, old)) = seen.order.pop_front() {
                seen.set.remove(&old);
            }
        }
        let delivery = (timestamp.to_owned(), job_id.to_owned());
        if !seen.set.insert(delivery.clone()) {
            return false;
        }
        seen.order.push_back((now, delivery));
        true
    }

    /// Forgets a delivery that could not be taken, so that its retry is.
    pub fn forget(&self, timestamp: &str, job_id: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let delivery = (timestamp.to_owned(), job_id.to_owned());
        if seen.set.remove(&delivery) {
            seen.order.retain(|(_, kept)| *kept != delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_taken_once_until_forgotten() {
        let seen = SeenDeliveries::new(Duration::from_mins(10), 3);
        assert!(seen.first_time("t1", "job-1"));
        assert!(!seen.first_time("t1", "job-1"), "a replay");
        assert!(seen.first_time("t1", "job-2"), "another job");
        assert!(seen.first_time("t2", "job-1"), "another signature");
        seen.forget("t2", "job-1");
        assert!(seen.first_time("t2", "job-1"), "a retry after a failure");
        assert!(seen.first_time("t3", "job-1"), "over capacity, the oldest goes");
        assert!(seen.first_time("t1", "job-1"));
    }

    #[test]
    fn deliveries_are_forgotten_after_the_window() {
        let seen = SeenDeliveries::new(Duration::ZERO, 10);
        assert!(seen.first_time("t1", "job-1"));
        assert!(seen.first_time("t1", "job-1"));
    }
}
