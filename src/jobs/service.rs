//! Submit, look up, apply results, reconcile: the job logic, free of any transport.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error::{JobError, UnavailableReason};
use super::model::{EventKind, Job, JobProblem, JobState, ProblemReason, Submission};
use super::validate::{ImageLimits, Prepared, SubmitRequest, prepare};
use crate::events::{BusMessage, EventBus};
use crate::metrics::Metrics;
use crate::smileid::wire::JOB_TYPE_AUTHENTICATION;
use crate::smileid::{
    ErrorCode, JobStatus, JobSubmission, PartnerParams, ResultEntry, SmileIdClient, SmileIdError, StatusOptions,
    SubmitOutcome, VerifiedCallback,
};
use crate::store::{Created, Saved, SharedStore};

/// When the reconciler asks Smile ID about jobs without a final result.
#[derive(Clone, Copy, Debug)]
pub struct ReconcilePolicy {
    /// First poll this long after submission.
    pub first_delay: Duration,
    /// Polls back off (doubling) up to this interval.
    pub max_delay: Duration,
    /// After this long without a final result the job is FAILED (RESULT_NOT_RECEIVED).
    pub give_up_after: Duration,
    /// How often the reconciler looks for due jobs.
    pub tick: Duration,
    /// How long a replica holds a job it is polling.
    pub lease: Duration,
    pub batch: u32,
}

impl Default for ReconcilePolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(120),
            max_delay: Duration::from_secs(15 * 60),
            give_up_after: Duration::from_secs(24 * 3600),
            tick: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            batch: 50,
        }
    }
}

impl ReconcilePolicy {
    fn delay(&self, attempts: u32) -> Duration {
        self.first_delay
            .saturating_mul(2u32.saturating_pow(attempts.min(16)))
            .min(self.max_delay)
    }
}

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
        }
    }
}

/// What SubmitAuthentication returns.
#[derive(Debug)]
pub struct SubmitOutput {
    pub job: Job,
    pub created: bool,
}

/// Extra data fetched from Smile ID on request; never stored.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub history: Vec<ResultEntry>,
    pub image_links: std::collections::BTreeMap<String, String>,
}

/// What became of a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The job changed.
    Applied,
    /// Nothing new (a duplicate, or a late result after the final one).
    Unchanged,
    /// The result could not be confirmed now; the reconciler will fetch it.
    Deferred,
    /// No job of ours matches.
    UnknownJob,
}

pub struct JobService {
    pub(crate) store: SharedStore,
    pub(crate) bus: EventBus,
    smile: SmileIdClient,
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
        let mut prepared = prepare(request, self.config.image_limits).await?;
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

    /// Asks Smile ID for the job's status, applies what it says, and returns the
    /// job with the history and image links Smile ID returned.
    pub async fn refresh(&self, job_id: &str, options: StatusOptions) -> Result<(Job, Fetched), JobError> {
        let job = self.load(job_id).await?;
        let status = self.smile.job_status(&job.user_id, &job.job_id, options).await;
        match status {
            Ok(status) => {
                let fetched = Fetched {
                    history: status.history.clone(),
                    image_links: status.image_links.clone(),
                };
                let job = self.apply_status(&job.job_id, status).await?;
                Ok((job, fetched))
            }
            Err(SmileIdError::NotFound) => Ok((job, Fetched::default())),
            Err(error) => Err(upstream_unavailable(&error)),
        }
    }

    /// Applies a verified callback; answers only after the outcome is durable.
    #[tracing::instrument(name = "job.callback", skip_all, fields(job_id = callback.result.job_id().unwrap_or_default()))]
    pub async fn handle_callback(&self, callback: VerifiedCallback) -> Result<CallbackOutcome, JobError> {
        let result = callback.result;
        let Some(job_id) = result.job_id().map(str::to_owned) else {
            self.metrics.callbacks_unknown_job.inc();
            warn!(smile_job_id = %result.smile_job_id, "callback without PartnerParams.job_id");
            return Ok(CallbackOutcome::UnknownJob);
        };
        let Some(job) = self.store.get(&job_id).await? else {
            self.metrics.callbacks_unknown_job.inc();
            warn!(job_id = %job_id, smile_job_id = %result.smile_job_id, "callback for an unknown job");
            return Ok(CallbackOutcome::UnknownJob);
        };
        let smile_job_mismatch = matches!(&job.smile_job_id, Some(known) if !result.smile_job_id.is_empty() && *known != result.smile_job_id);
        if smile_job_mismatch
            || result
                .partner_params
                .get("user_id")
                .is_some_and(|user| *user != job.user_id)
        {
            self.metrics.callbacks_unknown_job.inc();
            warn!(job_id = %job_id, smile_job_id = %result.smile_job_id, "callback does not match the stored job");
            return Ok(CallbackOutcome::UnknownJob);
        }
        if job.state.is_terminal() {
            return Ok(CallbackOutcome::Unchanged);
        }
        if !self.config.confirm_callbacks {
            let before = job.last_sequence;
            let after = self.apply_results(&job_id, vec![result]).await?;
            return Ok(if after.last_sequence > before {
                CallbackOutcome::Applied
            } else {
                CallbackOutcome::Unchanged
            });
        }
        let options = StatusOptions {
            history: true,
            image_links: false,
        };
        match self.smile.job_status(&job.user_id, &job_id, options).await {
            Ok(status) => {
                let before = job.last_sequence;
                let after = self.apply_status(&job_id, status).await?;
                Ok(if after.last_sequence > before {
                    CallbackOutcome::Applied
                } else {
                    CallbackOutcome::Unchanged
                })
            }
            Err(error) => {
                warn!(job_id = %job_id, error = %error, "could not confirm a callback; the reconciler will fetch the result");
                let now = Utc::now();
                self.transition(&job_id, |job| {
                    if !job.state.is_terminal() {
                        job.next_poll_at = Some(now);
                    }
                    None
                })
                .await?;
                Ok(CallbackOutcome::Deferred)
            }
        }
    }

    /// Applies a job_status answer: every result in order, then the latest.
    async fn apply_status(&self, job_id: &str, status: JobStatus) -> Result<Job, JobError> {
        let mut results = status.history;
        if let Some(latest) = status.result {
            results.push(latest);
        }
        // Smile ID does not promise history order; a provisional result must precede a final one.
        results.sort_by_key(|result| result.is_final);
        self.apply_results(job_id, results).await
    }

    async fn apply_results(&self, job_id: &str, results: Vec<ResultEntry>) -> Result<Job, JobError> {
        let mut job = self.load(job_id).await?;
        for result in results {
            let now = Utc::now();
            job = self
                .transition(job_id, |job| job.apply_result(result.clone(), now))
                .await?;
        }
        Ok(job)
    }

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
        let job_id = job.job_id.clone();
        // A NOT_SENT job has nothing at Smile ID to ask about.
        if job.submission != Submission::NotSent {
            match self
                .smile
                .job_status(
                    &job.user_id,
                    &job_id,
                    StatusOptions {
                        history: true,
                        image_links: false,
                    },
                )
                .await
            {
                Ok(status) => {
                    debug!(job_id = %job_id, complete = status.job_complete, "reconciler fetched status");
                    self.apply_status(&job_id, status).await?;
                }
                Err(SmileIdError::NotFound) => debug!(job_id = %job_id, "smile id does not know the job yet"),
                Err(error) => warn!(job_id = %job_id, error = %error, "reconciler could not fetch status"),
            }
        }
        let policy = self.config.reconcile;
        let now = Utc::now();
        self.transition(&job_id, |job| {
            if job.state.is_terminal() {
                job.next_poll_at = None;
                return None;
            }
            let age = (now - job.created_at).to_std().unwrap_or_default();
            if age >= policy.give_up_after {
                job.state = JobState::Failed;
                job.next_poll_at = None;
                job.problem = Some(JobProblem {
                    reason: ProblemReason::ResultNotReceived,
                    message: format!(
                        "no final result from Smile ID within {}",
                        humantime::format_duration(policy.give_up_after)
                    ),
                    smile_code: None,
                });
                return Some(EventKind::Failed);
            }
            job.poll_attempts += 1;
            let next = now + policy.delay(job.poll_attempts);
            let give_up_at = job.created_at + policy.give_up_after;
            job.next_poll_at = Some(next.min(give_up_at));
            None
        })
        .await?;
        Ok(())
    }

    /// Runs the reconciler until shutdown.
    pub async fn run_reconciler(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.reconcile.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            match self.reconcile_due().await {
                Ok(0) => {}
                Ok(polled) => debug!(polled, "reconciler pass"),
                Err(error) => warn!(error = %error, "reconciler pass failed"),
            }
        }
    }

    /// Waits until the job is final or `deadline`, then returns it as it stands.
    pub async fn wait_for_final(&self, job_id: &str, deadline: tokio::time::Instant) -> Result<Job, JobError> {
        let mut notices = self.bus.subscribe();
        loop {
            let job = self.load(job_id).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            loop {
                tokio::select! {
                    notice = notices.recv() => match notice {
                        Ok(BusMessage::Event(notice)) if notice.job_id == job_id => break,
                        Ok(BusMessage::Resync) => break,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(job),
                    },
                    () = tokio::time::sleep_until(deadline) => return self.load(job_id).await,
                    () = self.shutdown.cancelled() => return Ok(job),
                    // Events may come from other replicas without a notice here.
                    () = tokio::time::sleep(self.config.heartbeat_interval) => break,
                }
            }
        }
    }

    pub(crate) async fn load(&self, job_id: &str) -> Result<Job, JobError> {
        self.store.get(job_id).await?.ok_or_else(|| JobError::NotFound {
            job_id: job_id.to_owned(),
        })
    }

    /// Read-modify-write with compare-and-set, retried on conflict. `change`
    /// returns the event to record; a change that alters nothing writes nothing.
    async fn transition(
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

fn upstream_unavailable(error: &SmileIdError) -> JobError {
    match error {
        SmileIdError::Refused { .. } | SmileIdError::BadSignature | SmileIdError::Malformed(_) => {
            JobError::Internal(format!("smile id job_status failed: {error}"))
        }
        _ => JobError::Unavailable {
            reason: UnavailableReason::UpstreamUnavailable,
            message: "Smile ID could not be reached".into(),
            retry_after: Some(error.retry_after().unwrap_or(Duration::from_secs(1))),
        },
    }
}
