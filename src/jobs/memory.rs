//! Memory budgets: bytes a kind of work may hold at once across the process,
//! so no flood of requests, however shaped, can take more than its share.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
}
