//! The reconciler: polls Smile ID for jobs whose result has not arrived, so no
//! final result is lost when a callback never comes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tracing::{debug, warn};

use super::error::JobError;
use super::model::{Job, JobState, SmileIdKnows, Submission};
use super::ports::StatusFailure;
use super::service::JobService;
use crate::smileid::StatusOptions;

/// How often the backlog metrics are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(10);

/// When the reconciler asks Smile ID about jobs without a final result.
#[derive(Clone, Copy, Debug)]
pub struct ReconcilePolicy {
    /// First poll this long after submission.
    pub first_delay: Duration,
    /// Polls back off (doubling) up to this interval.
    pub max_delay: Duration,
    /// After this long without a final result the job is FAILED (RESULT_NOT_RECEIVED).
    pub give_up_after: Duration,
    /// A job Smile ID never received, that no attempt is sending, is FAILED
    /// (SUBMISSION_ABANDONED) after this long.
    pub abandon_after: Duration,
    /// How often the reconciler looks for due jobs.
    pub tick: Duration,
    /// How long a replica holds a job it is polling.
    pub lease: Duration,
    pub batch: u32,
}

impl Default for ReconcilePolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_mins(2),
            max_delay: Duration::from_mins(15),
            give_up_after: Duration::from_hours(24),
            abandon_after: Duration::from_mins(15),
            tick: Duration::from_secs(1),
            lease: Duration::from_mins(1),
            batch: 50,
        }
    }
}

impl ReconcilePolicy {
    pub(crate) fn delay(&self, attempts: u32) -> Duration {
        self.first_delay
            .saturating_mul(2u32.saturating_pow(attempts.min(16)))
            .min(self.max_delay)
    }
}

impl JobService {
    /// Polls the jobs that are due once; returns how many were polled.
    pub async fn reconcile_due(&self) -> Result<usize, JobError> {
        let policy = self.config.reconcile;
        let jobs = self.store.claim_due(Utc::now(), policy.lease, policy.batch).await?;
        let count = jobs.len();
        for job in jobs {
            if self.shutdown.is_cancelled() {
                break;
            }
            let job_id = job.job_id.clone();
            if let Err(error) = self.reconcile_job(job).await {
                warn!(job_id = %job_id, error = %error, "reconciling a job failed");
            }
            // A failed release only delays the next poll until the lease expires.
            if let Err(error) = self.store.release_lease(&job_id).await {
                warn!(job_id = %job_id, error = %error, "releasing a reconciler lease failed");
            }
        }
        Ok(count)
    }

    #[tracing::instrument(name = "job.reconcile", skip_all, fields(job_id = %job.job_id))]
    async fn reconcile_job(&self, job: Job) -> Result<(), JobError> {
        self.metrics.reconcile_polls.inc();
        let job_id = job.job_id.as_str();
        let now = Utc::now();
        let policy = self.config.reconcile;
        if job.state == JobState::Submitting {
            // A submission being sent is its sender's to finish; look again after its lease.
            let held_until = match job.submission {
                Submission::InFlight { lease_until } if lease_until > now && self.store.is_shared() => {
                    Some(lease_until)
                }
                _ if self.sending.contains(job_id) => Some(now + self.config.submit_lease),
                _ => None,
            };
            if let Some(until) = held_until {
                self.transition(job_id, |job| job.poll_at(until)).await?;
                return Ok(());
            }
        }
        let knows = if job.state == JobState::Submitting && job.submission == Submission::NotSent {
            SmileIdKnows::NoSuchJob
        } else {
            let options = StatusOptions {
                history: true,
                image_links: false,
            };
            match self.smile.job_status(&job.user_id, job_id, options).await {
                Ok(status) => {
                    debug!(job_id, complete = status.complete, "reconciler fetched status");
                    self.apply_status(job.clone(), status).await?;
                    SmileIdKnows::Job
                }
                Err(StatusFailure::NotFound) => {
                    debug!(job_id, "smile id has no such job");
                    SmileIdKnows::NoSuchJob
                }
                Err(error) => {
                    warn!(job_id, error = %error, "reconciler could not fetch status");
                    SmileIdKnows::Unknown
                }
            }
        };
        self.transition(job_id, |job| job.polled(now, &policy, knows)).await?;
        Ok(())
    }

    /// Reports the backlog (jobs due, oldest unfinished job) to the metrics.
    async fn measure_backlog(&self) {
        let now = Utc::now();
        match self.store.backlog(now).await {
            Ok(backlog) => {
                self.metrics
                    .reconciler_due_jobs
                    .set(i64::try_from(backlog.due).unwrap_or(i64::MAX));
                let age = backlog.oldest_unfinished.map_or(0.0, |created| {
                    (now - created).to_std().unwrap_or_default().as_secs_f64()
                });
                self.metrics.oldest_unfinished_job_age.set(age);
            }
            Err(error) => debug!(error = %error, "could not measure the reconciler backlog"),
        }
    }

    /// Runs the reconciler until shutdown.
    pub async fn run_reconciler(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.reconcile.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut measured: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            if measured.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY) {
                self.measure_backlog().await;
                measured = Some(tokio::time::Instant::now());
            }
            match self.reconcile_due().await {
                Ok(0) => {}
                Ok(polled) => debug!(polled, "reconciler pass"),
                Err(error) => warn!(error = %error, "reconciler pass failed"),
            }
        }
    }
}
