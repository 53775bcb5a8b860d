//! The job service as the transports see it: a thin front over the shared
//! core and one type per responsibility — submission, result intake,
//! watching, reconciling and retention — each owning its state.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::core::JobCore;
use super::error::JobError;
use super::listing::{self, JobPage};
use super::model::{Job, LogFilter, SmileResult};
use super::ports::{EventFanout, JobFilter, JobMetrics, SharedStore, SmileId, StatusExtras};
use super::reconciler::Reconciler;
use super::results::{CallbackOutcome, Fetched, ResultIntake};
use super::retention::{Expiry, Retention};
use super::settings::{RetentionPolicy, ServiceConfig};
use super::submission::{SubmitOutput, Submitter};
use super::validate::SubmitRequest;
use super::watch::{LogStart, WatchStream, Watcher};
use crate::users::UserService;

/// The ports a [`JobService`] works through.
#[derive(Clone)]
pub struct Ports {
    pub store: SharedStore,
    pub fanout: Arc<dyn EventFanout>,
    pub smile: Arc<dyn SmileId>,
    pub metrics: Arc<dyn JobMetrics>,
}

pub struct JobService {
    core: Arc<JobCore>,
    smile: Arc<dyn SmileId>,
    config: Arc<ServiceConfig>,
    submitter: Arc<Submitter>,
    intake: Arc<ResultIntake>,
    watcher: Arc<Watcher>,
    reconciler: Reconciler,
    retention: Retention,
}

impl JobService {
    pub fn new(ports: Ports, config: ServiceConfig, shutdown: CancellationToken) -> Arc<Self> {
        let Ports {
            store,
            fanout,
            smile,
            metrics,
        } = ports;
        let config = Arc::new(config);
        let core = JobCore::new(store, fanout, metrics, shutdown);
        let submitter = Arc::new(Submitter::new(core.clone(), smile.clone(), config.clone()));
        let intake = Arc::new(ResultIntake::new(core.clone(), smile.clone(), config.confirm_callbacks));
        let watcher = Arc::new(Watcher::new(core.clone(), &config));
        let reconciler = Reconciler::new(
            core.clone(),
            smile.clone(),
            intake.clone(),
            submitter.sending(),
            config.clone(),
        );
        Arc::new(Self {
            retention: Retention::new(core.clone()),
            core,
            smile,
            config,
            submitter,
            intake,
            watcher,
            reconciler,
        })
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The user lifecycle over the same ports.
    pub fn users(&self) -> UserService {
        UserService::new(
            self.core.store.clone(),
            self.core.fanout.clone(),
            self.smile.clone(),
            self.config.users,
            self.core.shutdown.clone(),
        )
    }

    // === reads ===

    pub async fn get(&self, job_id: &str) -> Result<Job, JobError> {
        self.core.load(job_id).await
    }

    /// The job `job_id` names for the caller `owner`: its own, scoped one when
    /// another caller holds the job_id, else the job_id's.
    pub async fn get_for(&self, job_id: &str, owner: Option<&str>) -> Result<Job, JobError> {
        self.core.get_for(job_id, owner).await
    }

    /// One page of jobs matching `filter`, and the token of the next.
    pub async fn list_jobs(&self, filter: &JobFilter, page_size: u32, page_token: &str) -> Result<JobPage, JobError> {
        listing::list_jobs(&self.core.store, filter, page_size, page_token).await
    }

    /// The caller that enrolled `user_id` through this service, if any.
    pub async fn user_owner(&self, user_id: &str) -> Result<Option<String>, JobError> {
        Ok(self.core.store.user_owner(user_id).await?)
    }

    /// Makes `owner` the owner of `user_id` unless another caller is; answers
    /// with the user's owner.
    pub async fn claim_user(&self, user_id: &str, owner: &str) -> Result<String, JobError> {
        Ok(self.core.store.claim_user(user_id, owner).await?)
    }

    // === submission ===

    /// Checks a submission, then sends it (or joins the attempt sending it)
    /// and waits until `deadline` for Smile ID to take it.
    pub async fn submit(&self, request: SubmitRequest, deadline: Instant) -> Result<SubmitOutput, JobError> {
        self.submitter.submit(request, deadline).await
    }

    /// Waits until `deadline` for a submitted job's final result (holding a
    /// stream slot the caller took), then fetches the `extras` asked for; the
    /// extras are best effort, since the job itself is the answer.
    pub async fn settle(
        &self,
        job: Job,
        deadline: Instant,
        extras: StatusExtras,
    ) -> Result<(Job, Option<Fetched>), JobError> {
        let job = if job.state.is_terminal() {
            job
        } else {
            self.watcher.wait_for_final(&job.job_id, deadline).await?
        };
        if extras.any()
            && let Ok((job, fetched)) = self.intake.refresh(&job.job_id, extras).await
        {
            return Ok((job, Some(fetched)));
        }
        Ok((job, None))
    }

    // === results ===

    /// Asks Smile ID for the job's status, applies what it says, and returns
    /// the job with the extras Smile ID returned.
    pub async fn refresh(&self, job_id: &str, extras: StatusExtras) -> Result<(Job, Fetched), JobError> {
        self.intake.refresh(job_id, extras).await
    }

    /// Applies a result from a callback whose signature was verified; answers
    /// only after the outcome is durable.
    pub async fn handle_callback(&self, result: SmileResult) -> Result<CallbackOutcome, JobError> {
        self.intake.handle_callback(result).await
    }

    // === streams ===

    /// A slot among the streams (and waits for results) this process holds open at once.
    pub fn hold_stream(&self) -> Result<OwnedSemaphorePermit, JobError> {
        self.watcher.hold_stream()
    }

    /// Waits until the job is final or `deadline`, then returns it as it stands.
    pub async fn wait_for_final(&self, job_id: &str, deadline: Instant) -> Result<Job, JobError> {
        self.watcher.wait_for_final(job_id, deadline).await
    }

    /// Streams one job's events after `after_sequence`; ends after its final event.
    pub async fn watch_job(&self, job_id: &str, after_sequence: u64) -> Result<WatchStream, JobError> {
        self.watcher.watch_job(job_id, after_sequence).await
    }

    /// Streams the log of every job `filter` matches, from `start`.
    pub async fn watch_log(&self, filter: LogFilter, start: LogStart) -> Result<WatchStream, JobError> {
        self.watcher.watch_log(filter, start).await
    }

    // === background work ===

    /// Polls the jobs that are due once; returns how many were polled.
    pub async fn reconcile_due(&self) -> Result<usize, JobError> {
        self.reconciler.reconcile_due().await
    }

    /// Runs the reconciler until shutdown.
    pub async fn run_reconciler(&self) {
        self.reconciler.run().await;
    }

    /// Erases what `expiry` names every `policy.every` until shutdown.
    pub async fn run_retention(&self, expiry: Expiry, policy: RetentionPolicy) {
        self.retention.run(expiry, policy).await;
    }

    /// Deletes every job finished longer than `policy.keep_for` ago.
    pub async fn delete_expired(&self, policy: RetentionPolicy) -> Result<usize, JobError> {
        self.retention.delete_expired(policy).await
    }

    /// Erases the jobs of every user idle longer than `policy.keep_for`.
    pub async fn erase_idle_users(&self, policy: RetentionPolicy) -> Result<usize, JobError> {
        self.retention.erase_idle_users(policy).await
    }
}
