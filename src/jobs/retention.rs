//! Retention: finished jobs, with their events, are deleted once they have been
//! finished for the configured period (`SELFIE_AUTH_RETENTION`; off by
//! default), in bounded batches, by one replica at a time. A deleted job is
//! NOT_FOUND; its WatchJob streams have ended already, with its final event.
//!
//! Retention by last activity (`SELFIE_AUTH_RETENTION_AFTER_LAST_ACTIVITY`,
//! off by default) erases all of a user's jobs once none has changed for the
//! period; open streams get an ERASED event for each.

use std::sync::Arc;

use chrono::Utc;
use tracing::{info, warn};

use super::core::JobCore;
use super::error::JobError;
use super::settings::RetentionPolicy;

/// Jobs deleted in one transaction at most.
const BATCH: u32 = 500;
/// Idle users looked up at once.
const USER_BATCH: u32 = 100;

/// What a retention pass erases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Jobs finished longer than the period ago (`SELFIE_AUTH_RETENTION`).
    FinishedJobs,
    /// Every job of users idle longer than the period (`SELFIE_AUTH_RETENTION_AFTER_LAST_ACTIVITY`).
    IdleUsers,
}

impl Expiry {
    fn as_str(self) -> &'static str {
        match self {
            Self::FinishedJobs => "finished_jobs",
            Self::IdleUsers => "idle_users",
        }
    }
}

/// The moment before which data of `policy` has expired (none: the period
/// reaches before any time there is).
fn cutoff(policy: RetentionPolicy) -> Option<chrono::DateTime<Utc>> {
    let keep_for = chrono::Duration::from_std(policy.keep_for).unwrap_or(chrono::Duration::MAX);
    Utc::now().checked_sub_signed(keep_for)
}

/// Erases expired data: one replica at a time, in bounded batches.
pub struct Retention {
    core: Arc<JobCore>,
}

impl Retention {
    pub fn new(core: Arc<JobCore>) -> Self {
        Self { core }
    }

    /// Erases what `expiry` names every `policy.every` until shutdown.
    pub async fn run(&self, expiry: Expiry, policy: RetentionPolicy) {
        let mut tick = tokio::time::interval(policy.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.core.shutdown.cancelled() => return,
            }
            let erased = match expiry {
                Expiry::FinishedJobs => self.delete_expired(policy).await,
                Expiry::IdleUsers => self.erase_idle_users(policy).await,
            };
            match erased {
                Ok(0) => {}
                Ok(count) => info!(count, expired = expiry.as_str(), "expired data erased"),
                Err(error) => {
                    warn!(expired = expiry.as_str(), error = %error, "erasing expired data failed; trying again later");
                }
            }
        }
    }

    /// Deletes every job finished longer than `policy.keep_for` ago, a batch at
    /// a time; answers how many this replica deleted.
    pub async fn delete_expired(&self, policy: RetentionPolicy) -> Result<usize, JobError> {
        let Some(before) = cutoff(policy) else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let deleted = self.core.store.delete_finished(before, BATCH).await?;
            total += deleted.len();
            self.core.metrics.jobs_deleted(deleted.len() as u64);
            if deleted.len() < BATCH as usize || self.core.shutdown.is_cancelled() {
                return Ok(total);
            }
        }
    }

    /// Erases the jobs and events of every user whose jobs are all finished
    /// and none of which changed for `policy.keep_for` (BIPA's "within 3
    /// years of the individual's last interaction"); the user's record stays,
    /// so who owns the user and a deletion's tombstone are kept. Answers how
    /// many users this replica erased.
    pub async fn erase_idle_users(&self, policy: RetentionPolicy) -> Result<usize, JobError> {
        let Some(before) = cutoff(policy) else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let idle = self.core.store.idle_users(before, USER_BATCH).await?;
            for user_id in &idle {
                let erasure = self.core.store.erase_jobs_of(user_id).await?;
                self.core.metrics.jobs_deleted(erasure.jobs.len() as u64);
                if !erasure.jobs.is_empty() {
                    self.core.fanout.publish_erasure(erasure);
                }
            }
            total += idle.len();
            if idle.len() < USER_BATCH as usize || self.core.shutdown.is_cancelled() {
                return Ok(total);
            }
        }
    }
}
