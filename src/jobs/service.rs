//! Submit, look up, apply results, reconcile: the job logic, free of any transport.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::{JobError, UnavailableReason};
use super::model::{EventKind, Job, JobProblem, JobState, ProblemReason, Submission};
use super::reconciler::ReconcilePolicy;
use super::validate::{ImageLimits, Prepared, SubmitRequest, prepare};
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::smileid::wire::JOB_TYPE_AUTHENTICATION;
use crate::smileid::{ErrorCode, JobSubmission, PartnerParams, SmileIdClient, SmileIdError, SubmitOutcome};
use crate::store::{Created, Saved, SharedStore};

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

pub struct JobService {
    pub(crate) store: SharedStore,
    pub(crate) bus: EventBus,
    pub(crate) smile: SmileIdClient,
    pub(crate) config: ServiceConfig,
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    /// Serialises submissions of one job_id within this process.
    submit_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl JobService {
    pub fn new(
        store: SharedStore,
        bus: EventBus,
        smile: SmileIdClient,
        config: ServiceConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            bus,
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
        let mut prepared = prepare(request, self.config.image_limits, self.config.sandbox_params_allowed).await?;
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
        let fresh = Job {
            job_id: prepared.job_id.clone(),
            user_id: prepared.user_id.clone(),
            smile_job_id: None,
            state: JobState::Submitting,
            submission: Submission::InFlight {
                lease_until: now + self.config.submit_lease,
            },
            results: Vec::new(),
            problem: None,
            partner_params: prepared.partner_params.clone(),
            content_hash: prepared.content_hash.clone(),
            created_at: now,
            updated_at: now,
            // If this process dies mid-submission, the reconciler still looks at the job.
            next_poll_at: Some(now + self.config.reconcile.first_delay),
            poll_attempts: 0,
            version: 0,
            last_sequence: 0,
        };
        let (job, may_resume) = match self.store.create(&fresh).await? {
            Created::New(event) => {
                self.bus.publish(&event);
                self.metrics.jobs_created.inc();
                info!(job_id = %event.job.job_id, "job created");
                (event.job, false)
            }
            Created::Existing(existing) => {
                if existing.content_hash != prepared.content_hash {
                    return Err(JobError::JobIdReused {
                        job_id: prepared.job_id.clone(),
                    });
                }
                match self.take_over(existing, now).await? {
                    TakeOver::Done(job) => {
                        if let (JobState::Failed, Some(problem)) = (job.state, &job.problem) {
                            return Err(JobError::Rejected(problem.clone()));
                        }
                        return Ok(SubmitOutput { job, created: false });
                    }
                    TakeOver::Resubmit { job, may_resume } => {
                        let job = self.attempt(job, prepared, may_resume).await?;
                        return Ok(SubmitOutput { job, created: false });
                    }
                }
            }
        };
        let job = self.attempt(job, prepared, may_resume).await?;
        Ok(SubmitOutput { job, created: true })
    }

    /// Decides what a repeated submission of an existing job does.
    async fn take_over(&self, existing: Job, now: DateTime<Utc>) -> Result<TakeOver, JobError> {
        if existing.state != JobState::Submitting {
            return Ok(TakeOver::Done(existing));
        }
        let may_resume = match &existing.submission {
            Submission::InFlight { lease_until } if *lease_until > now => return Ok(TakeOver::Done(existing)),
            Submission::Accepted => return Ok(TakeOver::Done(existing)),
            Submission::NotSent => false,
            Submission::InFlight { .. } | Submission::OutcomeUnknown => true,
        };
        let lease_until = now + self.config.submit_lease;
        let mut job = existing;
        job.submission = Submission::InFlight { lease_until };
        job.updated_at = now;
        match self.store.save(&mut job, None).await? {
            Saved::Written(_) => Ok(TakeOver::Resubmit { job, may_resume }),
            // Another replica took it over first; report the job as it stands.
            Saved::Conflict => Ok(TakeOver::Done(self.load(&job.job_id).await?)),
        }
    }

    /// Sends the job to Smile ID and records the outcome.
    async fn attempt(&self, job: Job, prepared: &Prepared, may_resume: bool) -> Result<Job, JobError> {
        let partner_params = PartnerParams {
            user_id: job.user_id.clone(),
            job_id: job.job_id.clone(),
            job_type: JOB_TYPE_AUTHENTICATION,
            extra: job.partner_params.clone(),
        };
        let submission = JobSubmission {
            partner_params: &partner_params,
            callback_url: self.config.callback_url.as_deref(),
            selfie_jpeg: &prepared.selfie_jpeg,
            liveness_jpegs: &prepared.liveness_jpegs,
            may_resume,
        };
        let job_id = job.job_id.clone();
        match self.smile.submit(&submission).await {
            Ok(submitted) => {
                self.metrics.submissions_accepted.inc();
                info!(job_id = %job_id, smile_job_id = %submitted.smile_job_id, resumed = submitted.resumed, "job submitted to smile id");
                let first_poll = Utc::now() + self.config.reconcile.first_delay;
                self.transition(&job_id, |job| {
                    job.smile_job_id.get_or_insert_with(|| submitted.smile_job_id.clone());
                    if job.state != JobState::Submitting {
                        // A callback overtook the upload response.
                        return None;
                    }
                    job.state = JobState::Submitted;
                    job.submission = Submission::Accepted;
                    job.problem = None;
                    job.next_poll_at = Some(first_poll);
                    Some(EventKind::Submitted)
                })
                .await
            }
            Err(error) => {
                warn!(job_id = %job_id, stage = ?error.stage, outcome = ?error.outcome, error = %error.source, "smile id submission failed");
                match error.outcome {
                    SubmitOutcome::Refused => {
                        let problem = refusal_problem(&error.source);
                        let failed = problem.clone();
                        self.transition(&job_id, move |job| {
                            job.state = JobState::Failed;
                            job.problem = Some(failed.clone());
                            job.next_poll_at = None;
                            Some(EventKind::Failed)
                        })
                        .await?;
                        self.metrics.submissions_refused.inc();
                        Err(JobError::Rejected(problem))
                    }
                    SubmitOutcome::NotSent => {
                        let give_up = job.created_at + self.config.reconcile.give_up_after;
                        let message = "Smile ID could not be reached; nothing was sent. Retry with the same job_id";
                        self.transition(&job_id, |job| {
                            job.submission = Submission::NotSent;
                            job.problem = Some(JobProblem {
                                reason: ProblemReason::UpstreamUnavailable,
                                message: message.into(),
                                smile_code: None,
                            });
                            // Nothing exists at Smile ID; only the give-up check remains.
                            job.next_poll_at = Some(give_up);
                            None
                        })
                        .await?;
                        Err(JobError::Unavailable {
                            reason: UnavailableReason::UpstreamUnavailable,
                            message: message.into(),
                            retry_after: Some(error.source.retry_after().unwrap_or(Duration::from_secs(1))),
                        })
                    }
                    SubmitOutcome::Unknown => {
                        let soon = Utc::now() + self.config.reconcile.first_delay;
                        self.transition(&job_id, |job| {
                            if job.state != JobState::Submitting {
                                return None;
                            }
                            if let Some(id) = &error.smile_job_id {
                                job.smile_job_id.get_or_insert_with(|| id.clone());
                            }
                            job.submission = Submission::OutcomeUnknown;
                            job.problem = Some(JobProblem {
                                reason: ProblemReason::SubmissionOutcomeUnknown,
                                message: "the submission may or may not have reached Smile ID; the result is being \
                                          reconciled. Resubmitting the same job_id and content resumes it"
                                    .into(),
                                smile_code: None,
                            });
                            job.next_poll_at = Some(soon);
                            None
                        })
                        .await
                    }
                }
            }
        }
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
                    self.bus.publish(&event);
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

enum TakeOver {
    /// Nothing to send: report the job as it stands.
    Done(Job),
    /// This call now owns the submission.
    Resubmit { job: Job, may_resume: bool },
}

fn generate_job_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!(
        "job-{}",
        Alphanumeric.sample_string(&mut rand::rng(), 24).to_ascii_lowercase()
    )
}

/// What a Smile ID refusal means for the stored job.
fn refusal_problem(error: &SmileIdError) -> JobProblem {
    let SmileIdError::Refused { code, message, .. } = error else {
        return JobProblem {
            reason: ProblemReason::UpstreamRejected,
            message: error.to_string(),
            smile_code: None,
        };
    };
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
