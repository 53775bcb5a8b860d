//! Submit, look up, apply results, reconcile: the job logic, free of any transport.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::{JobError, UnavailableReason};
use super::model::{EventKind, EventNotice, Job, JobEvent, JobProblem, JobState, ProblemReason, TakeOver};
use super::ports::{Created, EventFanout, Saved, SharedStore, SmileId, SmileJob, SubmitFailure};
use super::reconciler::ReconcilePolicy;
use super::validate::{DecodeBudget, ImageLimits, Prepared, SubmitRequest, prepare};
use crate::metrics::Metrics;
use crate::smileid::ErrorCode;

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The public URL Smile ID posts results to.
    pub callback_url: Option<String>,
    /// Confirm each callback with job_status before trusting it (its signature does not cover the body).
    pub confirm_callbacks: bool,
    pub heartbeat_interval: Duration,
    pub reconcile: ReconcilePolicy,
    pub image_limits: ImageLimits,
    /// How long a submission attempt owns a SUBMITTING job before a retry may take over.
    pub submit_lease: Duration,
    /// How long `wait_for_result` waits when the call has no deadline.
    pub default_wait: Duration,
    /// Accept `partner_params.sandbox_result` (not against Smile ID production).
    pub sandbox_params_allowed: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            callback_url: None,
            confirm_callbacks: true,
            heartbeat_interval: Duration::from_secs(15),
            reconcile: ReconcilePolicy::default(),
            image_limits: ImageLimits::default(),
            submit_lease: Duration::from_secs(90),
            default_wait: Duration::from_secs(60),
            sandbox_params_allowed: true,
        }
    }
}

/// What SubmitAuthentication returns.
#[derive(Debug)]
pub struct SubmitOutput {
    pub job: Job,
    pub created: bool,
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
    decode_budget: DecodeBudget,
    /// Serialises submissions of one job_id within this process.
    submit_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl JobService {
    pub fn new(ports: Ports, config: ServiceConfig, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Arc<Self> {
        let Ports { store, fanout, smile } = ports;
        let decode_budget = DecodeBudget::new(config.image_limits.decode_memory_bytes);
        Arc::new(Self {
            decode_budget,
            store,
            fanout,
            smile,
            config,
            shutdown,
            metrics,
            submit_locks: Mutex::default(),
        })
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    #[tracing::instrument(name = "job.submit", skip_all, fields(job_id = tracing::field::Empty))]
    pub async fn submit(
        &self,
        request: SubmitRequest,
        wait_until: Option<tokio::time::Instant>,
    ) -> Result<SubmitOutput, JobError> {
        let mut prepared = prepare(
            request,
            self.config.image_limits,
            &self.decode_budget,
            self.config.sandbox_params_allowed,
        )
        .await?;
        if prepared.job_id.is_empty() {
            prepared.job_id = generate_job_id();
        }
        tracing::Span::current().record("job_id", prepared.job_id.as_str());
        let lock = self.submit_lock(&prepared.job_id);
        let output = {
            let _guard = lock.lock().await;
            self.submit_locked(&prepared).await
        };
        self.release_submit_lock(&prepared.job_id, lock);
        let output = output?;
        match wait_until {
            Some(deadline) if !output.job.state.is_terminal() => {
                let job = self.wait_for_final(&output.job.job_id, deadline).await?;
                Ok(SubmitOutput {
                    job,
                    created: output.created,
                })
            }
            _ => Ok(output),
        }
    }

    async fn submit_locked(&self, prepared: &Prepared) -> Result<SubmitOutput, JobError> {
        let now = Utc::now();
        let lease_until = now + self.config.submit_lease;
        let fresh = Job::submitting(prepared, now, lease_until, now + self.config.reconcile.first_delay);
        let existing = match self.store.create(&fresh).await? {
            Created::New(event) => {
                self.publish(&event);
                self.metrics.jobs_created.inc();
                info!(job_id = %event.job.job_id, "job created");
                let job = self.attempt(event.job, prepared, false).await?;
                return Ok(SubmitOutput { job, created: true });
            }
            Created::Existing(existing) => existing,
        };
        if existing.content_hash != prepared.content_hash {
            return Err(JobError::JobIdReused {
                job_id: prepared.job_id.clone(),
            });
        }
        let mut job = existing;
        let job = match job.take_over(now, lease_until) {
            TakeOver::Report => job,
            TakeOver::Resubmit { may_resume } => match self.store.save(&mut job, None).await? {
                Saved::Written(_) => self.attempt(job, prepared, may_resume).await?,
                // Another replica took it over first; report the job as it stands.
                Saved::Conflict => self.load(&job.job_id).await?,
            },
        };
        if let (JobState::Failed, Some(problem)) = (job.state, &job.problem) {
            return Err(JobError::Rejected(problem.clone()));
        }
        Ok(SubmitOutput { job, created: false })
    }

    /// Sends the job to Smile ID and records the outcome.
    async fn attempt(&self, job: Job, prepared: &Prepared, may_resume: bool) -> Result<Job, JobError> {
        let submission = SmileJob {
            user_id: &job.user_id,
            job_id: &job.job_id,
            partner_params: &job.partner_params,
            callback_url: self.config.callback_url.as_deref(),
            selfie_jpeg: &prepared.selfie_jpeg,
            liveness_jpegs: &prepared.liveness_jpegs,
            may_resume,
        };
        let job_id = job.job_id.as_str();
        let failure = match self.smile.submit(submission).await {
            Ok(accepted) => {
                self.metrics.submissions_accepted.inc();
                info!(job_id, smile_job_id = %accepted.smile_job_id, resumed = accepted.resumed, "job submitted to smile id");
                let first_poll = Utc::now() + self.config.reconcile.first_delay;
                return self
                    .transition(job_id, |job| job.accepted(&accepted.smile_job_id, first_poll))
                    .await;
            }
            Err(failure) => failure,
        };
        warn!(job_id, error = %failure, "smile id submission failed");
        match failure {
            SubmitFailure::Refused { code, message } => {
                let problem = refusal_problem(&code, &message);
                self.transition(job_id, |job| job.refused(problem.clone())).await?;
                self.metrics.submissions_refused.inc();
                Err(JobError::Rejected(problem))
            }
            SubmitFailure::NotSent { retry_after, .. } => {
                let message = "Smile ID could not be reached; nothing was sent. Retry with the same job_id";
                let problem = JobProblem {
                    reason: ProblemReason::UpstreamUnavailable,
                    message: message.into(),
                    smile_code: None,
                };
                let give_up = job.created_at + self.config.reconcile.give_up_after;
                self.transition(job_id, |job| job.not_sent(problem.clone(), give_up))
                    .await?;
                Err(JobError::Unavailable {
                    reason: UnavailableReason::UpstreamUnavailable,
                    message: message.into(),
                    retry_after: Some(retry_after.unwrap_or(Duration::from_secs(1))),
                })
            }
            SubmitFailure::Unknown { smile_job_id, .. } => {
                let problem = JobProblem {
                    reason: ProblemReason::SubmissionOutcomeUnknown,
                    message: "the submission may or may not have reached Smile ID; the result is being \
                              reconciled. Resubmitting the same job_id and content resumes it"
                        .into(),
                    smile_code: None,
                };
                let soon = Utc::now() + self.config.reconcile.first_delay;
                self.transition(job_id, |job| {
                    job.outcome_unknown(smile_job_id.as_deref(), problem.clone(), soon)
                })
                .await
            }
        }
    }

    /// Tells this process's streams about a stored event.
    pub(crate) fn publish(&self, event: &JobEvent) {
        self.fanout.publish(EventNotice::from(event));
    }

    pub async fn get(&self, job_id: &str) -> Result<Job, JobError> {
        self.load(job_id).await
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
        mut change: impl FnMut(&mut Job) -> Option<EventKind>,
    ) -> Result<Job, JobError> {
        for _ in 0..32 {
            let mut job = self.load(job_id).await?;
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

    fn submit_lock(&self, job_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .submit_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(job_id.to_owned()).or_default().clone()
    }

    fn release_submit_lock(&self, job_id: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self
            .submit_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(lock);
        // Only the map holds it now: nobody else is waiting on this job_id.
        if locks.get(job_id).is_some_and(|held| Arc::strong_count(held) == 1) {
            locks.remove(job_id);
        }
    }
}

fn generate_job_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!(
        "job-{}",
        Alphanumeric.sample_string(&mut rand::rng(), 24).to_ascii_lowercase()
    )
}

/// What a Smile ID refusal means for the stored job.
fn refusal_problem(code: &ErrorCode, message: &str) -> JobProblem {
    let (reason, message) = match code {
        ErrorCode::UserNotEnrolled => (
            ProblemReason::UserNotEnrolled,
            "the user is not enrolled for SmartSelfie Authentication".to_owned(),
        ),
        ErrorCode::UserDisabled
        | ErrorCode::UserDeleted
        | ErrorCode::ReEnrollmentRequired
        | ErrorCode::NoPhotoOnFile => (
            ProblemReason::UserNotAuthenticatable,
            format!("the user cannot be authenticated: {}", code.text()),
        ),
        ErrorCode::Unauthorized | ErrorCode::ProductionNotEnabled => (
            ProblemReason::UpstreamAuthFailed,
            "Smile ID refused this service's credentials; check the partner id, API key and environment".to_owned(),
        ),
        _ => (
            ProblemReason::UpstreamRejected,
            format!("Smile ID refused the job: {message}"),
        ),
    };
    JobProblem {
        reason,
        message,
        smile_code: Some(code.code().to_owned()),
    }
}
