//! Memory budgets: bytes a kind of work may hold at once across the process,
//! so no flood of requests, however shaped, can take more than its share.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::shares::{Share, Shares};

/// A budget of bytes, counted in KiB.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    kib: Arc<Semaphore>,
    capacity_kib: u32,
}

/// Why a reservation was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// More than the whole budget: it can never fit.
    TooLarge,
    /// Not free within the wait.
    Busy,
}

impl MemoryBudget {
    pub fn new(bytes: usize) -> Self {
        let capacity_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        Self {
            kib: Arc::new(Semaphore::new(capacity_kib as usize)),
            capacity_kib,
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        u64::from(self.capacity_kib) * 1024
    }

    fn kib_of(bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1)
    }

    /// Reserves `bytes`, waiting up to `wait` for others to give theirs back;
    /// the reservation lasts as long as the permit.
    pub async fn reserve(&self, bytes: u64, wait: Duration) -> Result<OwnedSemaphorePermit, Refused> {
        let kib = Self::kib_of(bytes);
        if kib > self.capacity_kib {
            return Err(Refused::TooLarge);
        }
        match tokio::time::timeout(wait, self.kib.clone().acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refused::Busy),
        }
    }

    /// Reserves `bytes` only if they are free now.
    pub fn try_reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit, Refused> {
        let kib = Self::kib_of(bytes);
        if kib > self.capacity_kib {
            return Err(Refused::TooLarge);
        }
        self.kib.clone().try_acquire_many_owned(kib).map_err(|_| Refused::Busy)
    }
}

/// A budget of which one caller may hold only part: while some callers'
/// submissions wait on Smile ID (slow, or failing and being retried), there is
/// room for another's.
#[derive(Debug)]
pub struct CallerBudget {
    whole: MemoryBudget,
    /// What each identified caller holds, in KiB.
    each: Shares<String>,
}

/// Bytes of a caller's part, held until dropped; [`Part::of_whole`] then
/// takes them of the whole budget. Apart, so that a submission waiting for
/// its turn holds its caller's part, and none of what everyone shares.
#[derive(Debug)]
pub struct Part {
    whole: MemoryBudget,
    bytes: u64,
    own: Option<Share<String>>,
}

/// Memory held until dropped.
#[derive(Debug)]
pub struct Held {
    _whole: OwnedSemaphorePermit,
    _own: Option<Share<String>>,
}

impl CallerBudget {
    /// `bytes` in all, of which one caller may hold an equal part among the
    /// callers holding some and one more (a half alone, a third beside
    /// another), or `at_least` (what one request may need) if that is more.
    pub fn leaving_room(bytes: usize, at_least: usize) -> Self {
        let whole = MemoryBudget::new(bytes);
        let at_least = u64::from(MemoryBudget::kib_of(at_least as u64));
        Self {
            each: Shares::leaving_room(u64::from(whole.capacity_kib), at_least),
            whole,
        }
    }

    /// `bytes` of `caller`'s part, waiting up to `wait` for the caller's own
    /// to be given back; `None` if they were not. Unidentified callers
    /// (authentication off) are one caller with no one else to leave room
    /// for: their part is the whole.
    pub async fn part(&self, caller: Option<&str>, bytes: u64, wait: Duration) -> Option<Part> {
        let own = match caller {
            Some(caller) => Some(
                self.each
                    .take_within(&caller.to_owned(), u64::from(MemoryBudget::kib_of(bytes)), wait)
                    .await?,
            ),
            None => None,
        };
        Some(Part {
            whole: self.whole.clone(),
            bytes,
            own,
        })
    }
}

impl Part {
    /// Takes the part's bytes of the whole budget, waiting up to `wait` for
    /// anyone's to be given back.
    pub async fn of_whole(self, wait: Duration) -> Result<Held, Refused> {
        let whole = self.whole.reserve(self.bytes, wait).await?;
        Ok(Held {
            _whole: whole,
            _own: self.own,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_budget_refuses_what_never_fits_and_what_is_taken() {
        let budget = MemoryBudget::new(1024 * 1024);
        assert_eq!(budget.try_reserve(2 * 1024 * 1024).err(), Some(Refused::TooLarge));
        let held = budget.try_reserve(1024 * 1024).expect("all of it");
        assert_eq!(budget.try_reserve(1).err(), Some(Refused::Busy));
        assert_eq!(
            budget.reserve(1, Duration::from_secs(1)).await.err(),
            Some(Refused::Busy)
        );
        drop(held);
        assert!(budget.reserve(1024, Duration::from_secs(1)).await.is_ok());
    }

    /// `bytes` of `caller`'s part, then of the whole, each waited for up to a second.
    async fn reserve(budget: &CallerBudget, caller: Option<&str>, bytes: u64) -> Result<Held, &'static str> {
        let wait = Duration::from_secs(1);
        let part = budget.part(caller, bytes, wait).await.ok_or("over its part")?;
        part.of_whole(wait).await.map_err(|_| "the whole is held")
    }

    #[tokio::test(start_paused = true)]
    async fn each_caller_holds_at_most_an_equal_part_with_room_left_for_one_more() {
        const KIB: u64 = 1024;
        let budget = CallerBudget::leaving_room(12 * 1024, 1024);
        let greedy = [
            reserve(&budget, Some("greedy"), 3 * KIB).await.expect("a first part"),
            reserve(&budget, Some("greedy"), 3 * KIB).await.expect("alone, a half"),
        ];
        assert_eq!(reserve(&budget, Some("greedy"), 1).await.err(), Some("over its part"));
        let second = reserve(&budget, Some("second"), 4 * KIB)
            .await
            .expect("beside greedy, a third");
        assert_eq!(reserve(&budget, Some("second"), 1).await.err(), Some("over its part"));
        let third = reserve(&budget, Some("third"), 2 * KIB)
            .await
            .expect("the room left over");
        assert_eq!(reserve(&budget, None, 1).await.err(), Some("the whole is held"));
        drop((greedy, second, third));
        let anyone = [
            reserve(&budget, None, 6 * KIB)
                .await
                .expect("unidentified callers have no part"),
            reserve(&budget, None, 6 * KIB)
                .await
                .expect("unidentified callers have no part"),
        ];
        drop(anyone);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_may_always_hold_one_request_however_small_the_budget() {
        let budget = CallerBudget::leaving_room(4 * 1024, 3 * 1024);
        let held = reserve(&budget, Some("big"), 3 * 1024).await.expect("one request");
        assert_eq!(reserve(&budget, Some("big"), 1024).await.err(), Some("over its part"));
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_takes_nothing_of_the_whole_until_asked() {
        let budget = CallerBudget::leaving_room(2 * 1024, 1024);
        let parts = [
            budget.part(Some("a"), 1024, Duration::ZERO).await.expect("a's part"),
            budget.part(Some("b"), 1024, Duration::ZERO).await.expect("b's part"),
        ];
        let held = reserve(&budget, None, 2 * 1024).await.expect("the whole is free");
        drop(held);
        for part in parts {
            part.of_whole(Duration::ZERO).await.expect("room now");
        }
    }
}
