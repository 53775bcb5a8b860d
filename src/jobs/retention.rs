//! Retention: finished jobs, with their events, are deleted once they have been
//! finished for the configured period (`SELFIE_AUTH_RETENTION`; off by
//! default), in bounded batches, by one replica at a time. A deleted job is
//! NOT_FOUND; its WatchJob streams have ended already, with its final event.
//!
//! Retention by last activity (`SELFIE_AUTH_RETENTION_AFTER_LAST_ACTIVITY`,
//! off by default) erases all of a user's jobs once none has changed for the
//! period; open streams get an ERASED event for each.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use super::error::JobError;
use super::service::JobService;

/// Jobs deleted in one transaction at most.
const BATCH: u32 = 500;
/// Idle users looked up at once.
const USER_BATCH: u32 = 100;

/// How long finished jobs are kept, and how often expired ones are looked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep_for: Duration,
    pub every: Duration,
}

impl RetentionPolicy {
    /// Keeps finished jobs for `keep_for`, looking a few times per period
    /// (between once a second and every five minutes).
    pub fn keeping(keep_for: Duration) -> Self {
        Self {
            keep_for,
            every: (keep_for / 4).clamp(Duration::from_secs(1), Duration::from_secs(300)),
        }
    }
}

impl JobService {
    /// Deletes expired jobs every `policy.every` until shutdown.
    pub async fn run_retention(self: Arc<Self>, policy: RetentionPolicy) {
        let mut tick = tokio::time::interval(policy.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            match self.delete_expired(policy).await {
                Ok(0) => {}
                Ok(deleted) => info!(deleted, "expired jobs deleted"),
                Err(error) => warn!(error = %error, "deleting expired jobs failed; trying again later"),
            }
        }
    }

    /// Deletes every job finished longer than `policy.keep_for` ago, a batch at
    /// a time; answers how many this replica deleted.
    pub async fn delete_expired(&self, policy: RetentionPolicy) -> Result<usize, JobError> {
        let keep_for = chrono::Duration::from_std(policy.keep_for).unwrap_or(chrono::Duration::MAX);
        let Some(before) = Utc::now().checked_sub_signed(keep_for) else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let deleted = self.store.delete_finished(before, BATCH).await?;
            total += deleted.len();
            self.metrics.jobs_deleted.inc_by(deleted.len() as u64);
            if deleted.len() < BATCH as usize || self.shutdown.is_cancelled() {
                return Ok(total);
            }
        }
    }

    /// Erases the jobs of users idle longer than `policy.keep_for` every
    /// `policy.every` until shutdown.
    pub async fn run_activity_retention(self: Arc<Self>, policy: RetentionPolicy) {
        let mut tick = tokio::time::interval(policy.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            match self.erase_idle_users(policy).await {
                Ok(0) => {}
                Ok(users) => info!(users, "jobs of idle users erased"),
                Err(error) => warn!(error = %error, "erasing idle users' jobs failed; trying again later"),
            }
        }
    }

    /// Erases the jobs and events of every user whose jobs are all finished
    /// and none of which changed for `policy.keep_for` (BIPA's "within 3
    /// years of the individual's last interaction"); the user's record stays,
    /// so who owns the user and a deletion's tombstone are kept. Answers how
    /// many users this replica erased.
    pub async fn erase_idle_users(&self, policy: RetentionPolicy) -> Result<usize, JobError> {
        let keep_for = chrono::Duration::from_std(policy.keep_for).unwrap_or(chrono::Duration::MAX);
        let Some(before) = Utc::now().checked_sub_signed(keep_for) else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let idle = self.store.idle_users(before, USER_BATCH).await?;
            for user_id in &idle {
                let erasure = self.store.erase_jobs_of(user_id).await?;
                self.metrics.jobs_deleted.inc_by(erasure.jobs.len() as u64);
                if !erasure.jobs.is_empty() {
                    self.fanout.publish_erasure(erasure);
                }
            }
            total += idle.len();
            if idle.len() < USER_BATCH as usize || self.shutdown.is_cancelled() {
                return Ok(total);
            }
        }
    }
}
