//! The job service: its configuration, its ports, and the read-modify-write
//! every change of a job goes through. Submission, results, reconciliation and
//! streams live in modules of their own.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::{JobError, UnavailableReason};
use super::memory::MemoryBudget;
use super::model::{EventKind, EventNotice, Job, JobEvent, scoped_job_id};
use super::ports::{EventFanout, Saved, SharedStore, SmileId, StoreError};
use super::reconciler::ReconcilePolicy;
use super::results::Confirmations;
use super::submission::Sending;
use super::validate::ImageLimits;
use super::watch::LogReads;
use crate::metrics::Metrics;
use crate::users::{UserConfig, UserService};

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The public URL Smile ID posts results to.
    pub callback_url: Option<String>,
    /// Confirm each callback with job_status before trusting it (its signature does not cover the body).
    pub confirm_callbacks: bool,
    pub heartbeat_interval: Duration,
    pub reconcile: ReconcilePolicy,
    pub image_limits: ImageLimits,
    /// How long a submission attempt owns a SUBMITTING job; renewed while it
    /// runs, so a replica that dies hands the job over after at most this long.
    pub submit_lease: Duration,
    /// How long the service keeps retrying a submission Smile ID could not take
    /// (unreachable, 5xx, timeouts), holding its images in memory.
    pub submit_retry_budget: Duration,
    /// Bytes of images all submissions being sent may hold at once.
    pub submission_memory_bytes: usize,
    /// Streams (WatchJob, WatchJobs, submissions waiting for their result) open at once.
    pub max_open_streams: usize,
    /// How long a call without a deadline waits for its submission (and, with
    /// `wait_for_result`, for the result).
    pub default_wait: Duration,
    /// Accept `partner_params.sandbox_result` (not against Smile ID production).
    pub sandbox_params_allowed: bool,
    /// How user operations are carried out.
    pub users: UserConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            callback_url: None,
            confirm_callbacks: true,
            heartbeat_interval: Duration::from_secs(15),
            reconcile: ReconcilePolicy::default(),
            image_limits: ImageLimits::default(),
            submit_lease: Duration::from_secs(15),
            submit_retry_budget: Duration::from_mins(2),
            submission_memory_bytes: 256 * 1024 * 1024,
            max_open_streams: 10_000,
            default_wait: Duration::from_mins(1),
            sandbox_params_allowed: true,
            users: UserConfig::default(),
        }
    }
}

/// The job service as the transports hold it: empty until the store is open
/// (the process serves health before its database answers), so a call or a
/// callback that comes too early is told the database is unavailable.
#[derive(Clone)]
pub struct JobServiceHandle(watch::Receiver<Option<Arc<JobService>>>);

/// Fills a [`JobServiceHandle`] once the service exists.
pub struct JobServiceSlot(watch::Sender<Option<Arc<JobService>>>);

impl JobServiceHandle {
    pub fn empty() -> (Self, JobServiceSlot) {
        let (sender, receiver) = watch::channel(None);
        (Self(receiver), JobServiceSlot(sender))
    }

    pub fn get(&self) -> Result<Arc<JobService>, JobError> {
        self.0.borrow().clone().ok_or_else(|| {
            JobError::Store(StoreError::Unavailable(
                "the service is starting and its job database is not open yet".into(),
            ))
        })
    }
}

impl JobServiceSlot {
    pub fn fill(&self, service: Arc<JobService>) {
        self.0.send_replace(Some(service));
    }
}

/// The ports a [`JobService`] works through.
#[derive(Clone)]
pub struct Ports {
    pub store: SharedStore,
    pub fanout: Arc<dyn EventFanout>,
    pub smile: Arc<dyn SmileId>,
}

pub struct JobService {
    pub(crate) store: SharedStore,
    pub(crate) fanout: Arc<dyn EventFanout>,
    pub(crate) smile: Arc<dyn SmileId>,
    pub(crate) config: ServiceConfig,
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) decode_budget: MemoryBudget,
    /// Images held by submissions being sent (and retried).
    pub(crate) submission_budget: MemoryBudget,
    /// The submissions this process is sending now.
    pub(crate) sending: Sending,
    pub(crate) confirmations: Confirmations,
    pub(crate) log_reads: LogReads,
    pub(crate) open_streams: Arc<tokio::sync::Semaphore>,
}

impl JobService {
    pub fn new(ports: Ports, config: ServiceConfig, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Arc<Self> {
        let Ports { store, fanout, smile } = ports;
        let decode_budget = MemoryBudget::new(config.image_limits.decode_memory_bytes);
        let submission_budget = MemoryBudget::new(config.submission_memory_bytes);
        let open_streams = Arc::new(tokio::sync::Semaphore::new(config.max_open_streams));
        Arc::new(Self {
            decode_budget,
            submission_budget,
            store,
            fanout,
            smile,
            config,
            shutdown,
            metrics,
            sending: Sending::default(),
            confirmations: Confirmations::default(),
            log_reads: LogReads::default(),
            open_streams,
        })
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The user lifecycle over the same ports.
    pub fn users(&self) -> UserService {
        UserService::new(
            self.store.clone(),
            self.fanout.clone(),
            self.smile.clone(),
            self.config.users,
            self.shutdown.clone(),
        )
    }

    /// Tells this process's streams about a stored event.
    pub(crate) fn publish(&self, event: &JobEvent) {
        self.fanout.publish(EventNotice::from(event));
    }

    pub async fn get(&self, job_id: &str) -> Result<Job, JobError> {
        self.load(job_id).await
    }

    /// The job `job_id` names for the caller `owner`: its own, scoped one when
    /// another caller holds the job_id, else the job_id's (which the caller
    /// may see only with leave to see others' jobs).
    pub async fn get_for(&self, job_id: &str, owner: Option<&str>) -> Result<Job, JobError> {
        let found = self.load(job_id).await;
        match (owner, &found) {
            (Some(owner), Ok(job)) if job.owner.as_deref() != Some(owner) => {
                match self.store.get(&scoped_job_id(job_id, owner)).await? {
                    Some(own) => Ok(own),
                    None => found,
                }
            }
            _ => found,
        }
    }

    /// The key `owner`'s submission of `job_id` is stored under: the job_id,
    /// or its scoped form when another caller holds it.
    pub(crate) async fn key_for(&self, job_id: &str, owner: &str) -> Result<String, JobError> {
        Ok(match self.store.get(job_id).await? {
            Some(job) if job.owner.as_deref() != Some(owner) => scoped_job_id(job_id, owner),
            _ => job_id.to_owned(),
        })
    }

    /// The caller that enrolled `user_id` through this service, if any.
    pub async fn user_owner(&self, user_id: &str) -> Result<Option<String>, JobError> {
        Ok(self.store.user_owner(user_id).await?)
    }

    /// Makes `owner` the owner of `user_id` unless another caller is; answers
    /// with the user's owner.
    pub async fn claim_user(&self, user_id: &str, owner: &str) -> Result<String, JobError> {
        Ok(self.store.claim_user(user_id, owner).await?)
    }

    pub(crate) async fn load(&self, job_id: &str) -> Result<Job, JobError> {
        self.store.get(job_id).await?.ok_or_else(|| JobError::NotFound {
            job_id: job_id.to_owned(),
        })
    }

    /// Read-modify-write with compare-and-set, retried on conflict. `change`
    /// returns the event to record; a change that alters nothing writes nothing.
    pub(crate) async fn transition(
        &self,
        job_id: &str,
        change: impl FnMut(&mut Job) -> Option<EventKind>,
    ) -> Result<Job, JobError> {
        let job = self.load(job_id).await?;
        self.transition_from(job, change).await
    }

    /// [`transition`](Self::transition) starting from a copy of the job the
    /// caller has read already; a stale copy costs one conflict and a reload.
    pub(crate) async fn transition_from(
        &self,
        known: Job,
        mut change: impl FnMut(&mut Job) -> Option<EventKind>,
    ) -> Result<Job, JobError> {
        let job_id = known.job_id.clone();
        let mut known = Some(known);
        for _ in 0..32 {
            let mut job = match known.take() {
                Some(job) => job,
                None => self.load(&job_id).await?,
            };
            let before = job.clone();
            let event = change(&mut job);
            if event.is_none() && job == before {
                return Ok(job);
            }
            job.updated_at = Utc::now();
            match self.store.save(&mut job, event).await? {
                Saved::Written(Some(event)) => {
                    self.publish(&event);
                    self.metrics.events_written.inc();
                    return Ok(job);
                }
                Saved::Written(None) => return Ok(job),
                Saved::Conflict => tokio::task::yield_now().await,
            }
        }
        Err(JobError::Unavailable {
            reason: UnavailableReason::Contention,
            message: "the job is being updated concurrently; retry".into(),
            retry_after: Some(Duration::from_millis(100)),
        })
    }
}
