//! The reconciler: polls Smile ID for jobs whose result has not arrived, so no
//! final result is lost when a callback never comes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tracing::{debug, warn};

use super::core::JobCore;
use super::error::JobError;
use super::model::{Job, JobState, SmileIdKnows, Submission};
use super::ports::{SmileId, StatusExtras, StatusFailure};
use super::results::ResultIntake;
use super::settings::ServiceConfig;
use super::submission::Sending;

/// How often the backlog metrics are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(10);

/// Polls Smile ID for the jobs that are due, one replica per job at a time.
pub struct Reconciler {
    core: Arc<JobCore>,
    smile: Arc<dyn SmileId>,
    /// Applies what job_status says, as for a callback.
    intake: Arc<ResultIntake>,
    /// Jobs this process is sending, left to their sender.
    sending: Arc<Sending>,
    config: Arc<ServiceConfig>,
}

impl Reconciler {
    pub fn new(
        core: Arc<JobCore>,
        smile: Arc<dyn SmileId>,
        intake: Arc<ResultIntake>,
        sending: Arc<Sending>,
        config: Arc<ServiceConfig>,
    ) -> Self {
        Self {
            core,
            smile,
            intake,
            sending,
            config,
        }
    }

    /// Polls the jobs that are due once; returns how many were polled.
    pub async fn reconcile_due(&self) -> Result<usize, JobError> {
        let policy = self.config.reconcile;
        let jobs = self
            .core
            .store
            .claim_due(Utc::now(), policy.lease, policy.batch)
            .await?;
        let count = jobs.len();
        for job in jobs {
            if self.core.shutdown.is_cancelled() {
                break;
            }
            let job_id = job.job_id.clone();
            if let Err(error) = self.reconcile_job(job).await {
                warn!(job_id = %job_id, error = %error, "reconciling a job failed");
            }
            // A failed release only delays the next poll until the lease expires.
            if let Err(error) = self.core.store.release_lease(&job_id).await {
                warn!(job_id = %job_id, error = %error, "releasing a reconciler lease failed");
            }
        }
        Ok(count)
    }

    #[tracing::instrument(name = "job.reconcile", skip_all, fields(job_id = %job.job_id))]
    async fn reconcile_job(&self, job: Job) -> Result<(), JobError> {
        self.core.metrics.reconcile_poll();
        let job_id = job.job_id.as_str();
        let now = Utc::now();
        let policy = self.config.reconcile;
        if job.state == JobState::Submitting {
            // A submission being sent is its sender's to finish; look again after its lease.
            let held_until = match job.submission {
                Submission::InFlight { lease_until } if lease_until > now && self.core.store.is_shared() => {
                    Some(lease_until)
                }
                _ if self.sending.contains(job_id) => Some(now + self.config.submit_lease),
                _ => None,
            };
            if let Some(until) = held_until {
                self.core.transition(job_id, |job| job.poll_at(until)).await?;
                return Ok(());
            }
        }
        let knows = if job.state == JobState::Submitting && job.submission == Submission::NotSent {
            SmileIdKnows::NoSuchJob
        } else {
            match self.smile.job_status(&job.user_id, job_id, StatusExtras::HISTORY).await {
                Ok(status) => {
                    debug!(job_id, complete = status.complete, "reconciler fetched status");
                    self.intake.apply_status(job.clone(), status).await?;
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
        self.core
            .transition(job_id, |job| job.polled(now, &policy, knows))
            .await?;
        Ok(())
    }

    /// Reports the backlog (jobs due, oldest unfinished job) to the metrics.
    async fn measure_backlog(&self) {
        let now = Utc::now();
        match self.core.store.backlog(now).await {
            Ok(backlog) => {
                let age = backlog
                    .oldest_unfinished
                    .map_or(Duration::ZERO, |created| (now - created).to_std().unwrap_or_default());
                self.core.metrics.backlog(backlog.due, age);
            }
            Err(error) => debug!(error = %error, "could not measure the reconciler backlog"),
        }
    }

    /// Runs the reconciler until shutdown.
    pub async fn run(&self) {
        let mut tick = tokio::time::interval(self.config.reconcile.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut measured: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.core.shutdown.cancelled() => return,
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
