//! Submission: a stored job is the service's to finish.
//!
//! The work of sending a job to Smile ID runs in a task of its own, so it
//! reaches a definite outcome even when the caller cancels or its deadline
//! passes; the caller only waits for it. Transient failures are retried within
//! a budget while the images are still in memory (they are never written
//! anywhere). A repeated submission of a job being sent joins that attempt; one
//! of a job nobody is sending resumes it at once. While an attempt runs it
//! renews its lease on the job, so that after a crash another replica may take
//! the job over within one lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;
use tracing::{info, warn};

use super::core::JobCore;
use super::error::{JobError, Limit, UnavailableReason};
use super::fingerprint::same_content;
use super::memory::{CallerBudget, Held, MemoryBudget};
use super::model::{
    Job, JobKind, JobProblem, JobState, Prepared, ProblemReason, Refusal, RefusalCause, TakeOver, scoped_job_id,
};
use super::ports::{Created, Saved, SmileId, SmileJob, SubmitFailure};
use super::settings::ServiceConfig;
use super::validate::{SubmitRequest, caller_key, prepare};
use crate::fair::{FairGate, FairLane, KeepThreads, Precedence, Present, Turn};

/// What SubmitAuthentication returns.
#[derive(Clone, Debug)]
pub struct SubmitOutput {
    pub job: Job,
    pub created: bool,
}

type Outcome = Result<SubmitOutput, JobError>;

struct Attempt {
    /// Tells this attempt from a later one of the same job.
    id: u64,
    content_hash: String,
    outcome: Shared<BoxFuture<'static, Outcome>>,
}

/// A submission as its caller names it: by whom, and the job_id it gave.
/// Another caller's submission of the same job_id is another attempt.
type AttemptKey = (Option<String>, String);

#[derive(Default)]
struct Attempts {
    by_caller: HashMap<AttemptKey, Attempt>,
    /// The key each attempt's job is stored under, once the store has told,
    /// and the attempt's id.
    stored: HashMap<String, u64>,
}

/// The submissions this process is sending: by caller and job_id, for a
/// repeated submission to join, and by the key their jobs are stored under,
/// for the reconciler to leave alone.
#[derive(Default)]
pub struct Sending {
    attempts: Mutex<Attempts>,
    next_id: AtomicU64,
}

impl Sending {
    fn lock(&self) -> MutexGuard<'_, Attempts> {
        self.attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an attempt of this process is sending the job stored as `job_id`.
    pub fn contains(&self, job_id: &str) -> bool {
        self.lock().stored.contains_key(job_id)
    }

    /// Records that attempt `id` sends the job stored as `job_id` for as
    /// long as the guard it answers is kept, unless another attempt does (`None`).
    fn stored_as(&self, job_id: &str, id: u64) -> Option<StoredAs<'_>> {
        let ours = *self.lock().stored.entry(job_id.to_owned()).or_insert(id) == id;
        ours.then(|| StoredAs {
            sending: self,
            job_id: job_id.to_owned(),
        })
    }

    fn finished(&self, key: &AttemptKey, id: u64) {
        let mut attempts = self.lock();
        if attempts.by_caller.get(key).is_some_and(|attempt| attempt.id == id) {
            attempts.by_caller.remove(key);
        }
    }
}

/// An attempt's hold on the key its job is stored under.
struct StoredAs<'a> {
    sending: &'a Sending,
    job_id: String,
}

impl Drop for StoredAs<'_> {
    fn drop(&mut self) {
        self.sending.lock().stored.remove(&self.job_id);
    }
}

/// Whether `prepared` comes from the caller that created a job owned by `owner`:
/// another caller's job is never joined or resumed. (A job_id another
/// identified caller holds is scoped before this.) Unidentified callers
/// (authentication off) are everyone.
fn same_submitter(owner: Option<&str>, prepared: &Prepared) -> bool {
    prepared.owner.is_none() || prepared.owner.as_deref() == owner
}

/// Longest wait for room to hold a submission's images.
const SUBMISSION_MEMORY_WAIT: Duration = Duration::from_secs(2);

/// How far below the runtime's threads image checks run: a flood of
/// submissions takes the CPU reads and callbacks leave, not theirs.
const IMAGE_CHECK_NICE: u8 = 10;

/// Backoff between attempts of one submission.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LONGEST_RETRY: Duration = Duration::from_secs(10);

/// Where an attempt stands at the gate: the turn it is stored in, the
/// precedence its later turns are taken with, and its caller's presence,
/// which lasts until the attempt ends though the call may end first.
struct Standing {
    turn: Turn,
    precedence: Precedence,
    present: Present,
}

/// Sends submissions to Smile ID, each to a definite outcome.
pub struct Submitter {
    core: Arc<JobCore>,
    smile: Arc<dyn SmileId>,
    config: Arc<ServiceConfig>,
    /// Memory all image decoding may use at once.
    decode_budget: MemoryBudget,
    /// Images held by submissions being sent (and retried), of which each
    /// caller may hold an equal part, with room left for one more.
    submission_budget: CallerBudget,
    /// Where images are checked and fingerprinted, each caller in turn.
    image_checks: FairLane,
    /// Submissions being checked and stored at once, let in caller by caller.
    turns: FairGate,
    /// The submissions this process is sending now.
    sending: Arc<Sending>,
}

impl Submitter {
    pub fn new(core: Arc<JobCore>, smile: Arc<dyn SmileId>, config: Arc<ServiceConfig>) -> Self {
        Self {
            decode_budget: MemoryBudget::new(config.image_limits.decode_memory_bytes),
            submission_budget: CallerBudget::leaving_room(
                config.submission_memory_bytes,
                config.image_limits.max_total_bytes,
            ),
            image_checks: FairLane::per_core("image-check", IMAGE_CHECK_NICE),
            turns: FairGate::new(config.submission_turns),
            sending: Arc::default(),
            core,
            smile,
            config,
        }
    }

    /// The submissions this process is sending, which the reconciler leaves alone.
    pub fn sending(&self) -> Arc<Sending> {
        self.sending.clone()
    }

    /// Checks a submission, then starts sending it (or joins the attempt
    /// already sending it) and waits until `deadline` for the outcome. A
    /// submission still running at the deadline goes on; the caller is told to
    /// retry. Waiting for the result is the watcher's.
    #[tracing::instrument(name = "job.submit", skip_all, fields(job_id = tracing::field::Empty))]
    pub async fn submit(self: &Arc<Self>, request: SubmitRequest, deadline: Instant) -> Result<SubmitOutput, JobError> {
        let outcome = self.check_and_send(request, deadline).await;
        if let Err(JobError::Overloaded { limit, .. }) = &outcome {
            self.core.metrics.shed(*limit);
        }
        outcome
    }

    async fn check_and_send(self: &Arc<Self>, request: SubmitRequest, deadline: Instant) -> Outcome {
        let precedence = request.precedence;
        let caller = caller_key(request.owner.as_deref());
        let present = self.turns.present(caller);
        // The images stay in memory until Smile ID has them, retries included:
        // the caller's part is found before the turn, so that a caller waiting
        // for its own to be given back holds no turn meanwhile; the memory all
        // callers share, once the turn is had, so that submissions waiting
        // for one hold none of it.
        let image_bytes = request.selfie.len() + request.liveness.iter().map(bytes::Bytes::len).sum::<usize>();
        let memory_wait = || SUBMISSION_MEMORY_WAIT.min(deadline.saturating_duration_since(Instant::now()));
        let part = self
            .submission_budget
            .part(request.owner.as_deref(), image_bytes as u64, memory_wait())
            .await
            .ok_or_else(|| {
                JobError::overloaded(
                    Limit::CallerSubmissionMemory,
                    "this caller's submissions being sent to Smile ID hold its share of the server's memory for \
                     images; retry once some have finished",
                )
            })?;
        let asked = Instant::now();
        let turn = tokio::time::timeout_at(deadline, self.turns.turn(caller, precedence)).await;
        // Those that gave up waited too, and longest.
        self.core.metrics.turn_waited(asked.elapsed());
        let turn = turn.map_err(|_| {
            JobError::overloaded(
                Limit::SubmissionTurns,
                "other submissions held every turn until the call's deadline neared; retry shortly",
            )
        })?;
        let held = part.of_whole(memory_wait()).await.map_err(|_| {
            JobError::overloaded(
                Limit::SubmissionMemory,
                "the server holds as many submissions as it can; retry shortly",
            )
        })?;
        let mut prepared = prepare(
            request,
            self.config.image_limits,
            &self.decode_budget,
            &self.image_checks,
            self.config.sandbox_params_allowed,
        )
        .await?;
        if prepared.job_id.is_empty() {
            prepared.job_id = generate_job_id();
        }
        tracing::Span::current().record("job_id", prepared.job_id.as_str());
        let standing = Standing {
            turn,
            precedence,
            present,
        };
        let (outcome, joined) = self.start_or_join(prepared, held, standing)?;
        let mut output = match tokio::time::timeout_at(deadline, outcome).await {
            Ok(outcome) => outcome?,
            Err(_) => return Err(in_progress(self.config.submit_lease.min(Duration::from_secs(1)))),
        };
        if joined {
            output.created = false;
        }
        Ok(output)
    }

    /// The outcome of the attempt sending this job: a new one, or the one
    /// already running (`true`).
    fn start_or_join(
        self: &Arc<Self>,
        mut prepared: Prepared,
        held: Held,
        standing: Standing,
    ) -> Result<(Shared<BoxFuture<'static, Outcome>>, bool), JobError> {
        let key: AttemptKey = (prepared.owner.clone(), prepared.job_id.clone());
        let mut attempts = self.sending.lock();
        if let Some(running) = attempts.by_caller.get(&key) {
            if running.content_hash != prepared.content_hash {
                return Err(JobError::JobIdReused {
                    job_id: prepared.job_id.clone(),
                });
            }
            return Ok((running.outcome.clone(), true));
        }
        let id = self.sending.next_id.fetch_add(1, Ordering::Relaxed);
        let content_hash = prepared.content_hash.clone();
        let service = self.clone();
        let finished = key.clone();
        // The attempt belongs to the call's trace, though it may outlive the call,
        // and keeps the threads it runs on until it ends.
        let keep = KeepThreads::here();
        let task = crate::task::spawn(async move {
            let _keep = keep;
            let outcome = service.send(&mut prepared, id, standing).await;
            service.sending.finished(&finished, id);
            drop((prepared, held));
            outcome
        });
        let outcome = async move {
            task.await
                .unwrap_or_else(|_| Err(JobError::Internal("a submission task ended abnormally".into())))
        }
        .boxed()
        .shared();
        attempts.by_caller.insert(
            key,
            Attempt {
                id,
                content_hash,
                outcome: outcome.clone(),
            },
        );
        Ok((outcome, false))
    }

    /// Creates the job or takes it over, then sends it (as attempt `id`) to a
    /// definite outcome. Its later turns are taken with the first one's precedence.
    async fn send(&self, prepared: &mut Prepared, id: u64, standing: Standing) -> Outcome {
        let Standing {
            turn,
            precedence,
            mut present,
        } = standing;
        let now = Utc::now();
        let lease_until = now + self.config.submit_lease;
        let mut fresh = Job::submitting(prepared, now, lease_until, now + self.config.reconcile.first_delay);
        let mut created = self.core.store.create(&fresh).await?;
        if let (Some(owner), Created::Existing(held)) = (prepared.owner.as_deref(), &created)
            && held.owner.as_deref() != Some(owner)
        {
            // Another caller's job_id is this caller's own, scoped, as if the
            // other did not exist. Learnt from the create, not read before
            // every submission: few job_ids are another caller's.
            fresh.job_id = scoped_job_id(&prepared.job_id, owner);
            created = self.core.store.create(&fresh).await?;
        }
        // Stored: the job's turn goes to the next caller while Smile ID has it.
        drop(turn);
        let stored_as = self.sending.stored_as(&fresh.job_id, id);
        let (job, created, may_resume) = match created {
            Created::New(event) => {
                self.core.publish(&event);
                self.core.metrics.job_created();
                info!(job_id = ?event.job.job_id, "job created");
                if event.job.kind == JobKind::Enrollment {
                    self.use_reenrollment(&event.job.user_id).await;
                }
                (event.job, true, false)
            }
            Created::UserErased => {
                return Err(JobError::UserDeleted {
                    user_id: prepared.user_id.clone(),
                });
            }
            Created::Existing(mut job) => {
                if !same_content(prepared, &job.content_hash) || !same_submitter(job.owner.as_deref(), prepared) {
                    return Err(JobError::JobIdReused {
                        job_id: prepared.job_id.clone(),
                    });
                }
                if stored_as.is_none() {
                    // An unidentified caller's submission of a job another
                    // attempt here is sending: it is that attempt's to finish.
                    return report(job);
                }
                match job.take_over(now, lease_until, self.core.store.is_shared()) {
                    TakeOver::Report => return report(job),
                    TakeOver::Resubmit { may_resume } => match self.core.store.save(&mut job, None).await? {
                        Saved::Written(_) => (job, false, may_resume),
                        // Another replica took it over first.
                        Saved::Conflict => return report(self.core.load(&job.job_id).await?),
                    },
                }
            }
        };
        prepared.release_submitted();
        let job = tokio::select! {
            sent = self.send_with_retries(&job, prepared, may_resume, (precedence, &mut present)) => sent?,
            never = self.renew_lease(&job.job_id) => match never {},
        };
        Ok(SubmitOutput { job, created })
    }

    /// Records that an enrolment used the user's leave to enrol again. Best
    /// effort: the leave is Smile ID's to keep, this is what GetUser shows.
    async fn use_reenrollment(&self, user_id: &str) {
        let Ok(Some(mut user)) = self.core.store.user(user_id).await else {
            return;
        };
        if user.reenrollment_allowed {
            user.reenrollment_allowed = false;
            if let Err(error) = self.core.store.put_user(&mut user).await {
                warn!(user_id, error = %error, "could not record that a re-enrolment was used");
            }
        }
    }

    /// Keeps this attempt's lease on the job alive; never returns.
    async fn renew_lease(&self, job_id: &str) -> std::convert::Infallible {
        let every = self.config.submit_lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let lease_until = Utc::now() + self.config.submit_lease;
            if let Err(error) = self.core.transition(job_id, |job| job.renew_lease(lease_until)).await {
                warn!(job_id, error = %error, "could not renew a submission lease");
            }
        }
    }

    /// Sends the job until Smile ID accepts or refuses it, retrying transient
    /// failures within the retry budget.
    async fn send_with_retries(
        &self,
        job: &Job,
        prepared: &Prepared,
        mut may_resume: bool,
        (precedence, present): (Precedence, &mut Present),
    ) -> Result<Job, JobError> {
        let give_up_at = Instant::now() + self.config.submit_retry_budget;
        let mut backoff = FIRST_RETRY;
        let job_id = job.job_id.as_str();
        loop {
            let submission = SmileJob {
                kind: job.kind,
                user_id: &job.user_id,
                job_id,
                partner_params: &job.partner_params,
                callback_url: self.config.callback_url.as_deref(),
                selfie_jpeg: &prepared.selfie_jpeg,
                liveness_jpegs: &prepared.liveness_jpegs,
                may_resume,
                allow_new_enroll: prepared.allow_new_enroll,
                precedence,
            };
            let failure = match self.smile.submit(submission).await {
                Ok(accepted) => {
                    self.core.metrics.submission("accepted");
                    info!(job_id, smile_job_id = ?accepted.smile_job_id, resumed = accepted.resumed, "job submitted to smile id");
                    let first_poll = Utc::now() + self.config.reconcile.first_delay;
                    // Written in the caller's turn, as the job was created, so
                    // the store's queue holds few of any one caller's writes.
                    let asked = Instant::now();
                    let _turn = self.turns.turn(caller_key(prepared.owner.as_deref()), precedence).await;
                    self.core.metrics.turn_waited(asked.elapsed());
                    // The job as created is current unless its lease was renewed
                    // meanwhile, which costs one conflict: no read before the write.
                    return self
                        .core
                        .transition_from(job.clone(), |job| job.accepted(&accepted.smile_job_id, first_poll))
                        .await;
                }
                Err(failure) => failure,
            };
            warn!(job_id, error = %failure, "smile id submission failed");
            let retry_after = match &failure {
                SubmitFailure::Refused(refusal) => {
                    let problem = refusal_problem(refusal, job.kind);
                    self.core.transition(job_id, |job| job.refused(problem.clone())).await?;
                    self.core.metrics.submission("refused");
                    return Err(JobError::Rejected(problem));
                }
                SubmitFailure::NotSent { retry_after, .. } => *retry_after,
                SubmitFailure::Unknown { .. } => {
                    // A Smile ID job may exist now: resume it rather than make a second.
                    may_resume = true;
                    None
                }
            };
            let wait = retry_after.unwrap_or(backoff);
            backoff = (backoff * 2).min(LONGEST_RETRY);
            if Instant::now() + wait >= give_up_at || self.core.shutdown.is_cancelled() {
                return Err(self.stop_retrying(job, failure, may_resume).await?);
            }
            // Waiting out the backoff, the submission has no work here: others'
            // shares do not shrink for it meanwhile.
            present.away();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.core.shutdown.cancelled() => return Err(self.stop_retrying(job, failure, may_resume).await?),
            }
            present.back();
        }
    }

    /// Records where a submission stands once its retries are spent, and the
    /// retryable error its callers get: a resubmission picks up from there.
    async fn stop_retrying(&self, job: &Job, failure: SubmitFailure, may_resume: bool) -> Result<JobError, JobError> {
        let retry_after = match &failure {
            SubmitFailure::NotSent {
                retry_after: Some(wait),
                ..
            } => *wait,
            _ => Duration::from_secs(1),
        };
        if let (SubmitFailure::NotSent { .. }, false) = (&failure, may_resume) {
            let message = "Smile ID could not be reached; nothing was sent. Retry with the same job_id";
            let problem = JobProblem {
                reason: ProblemReason::UpstreamUnavailable,
                message: message.into(),
                smile_code: None,
            };
            let abandon_at = job.created_at + self.config.reconcile.abandon_after;
            self.core
                .transition(&job.job_id, |job| job.not_sent(problem.clone(), abandon_at))
                .await?;
            return Ok(JobError::Unavailable {
                reason: UnavailableReason::UpstreamUnavailable,
                message: message.into(),
                retry_after: Some(retry_after),
            });
        }
        let smile_job_id = match &failure {
            SubmitFailure::Unknown { smile_job_id, .. } => smile_job_id.clone(),
            _ => None,
        };
        let message = "the submission may or may not have reached Smile ID and is being reconciled; \
                       resubmitting the same job_id and content resumes it";
        let problem = JobProblem {
            reason: ProblemReason::SubmissionOutcomeUnknown,
            message: message.into(),
            smile_code: None,
        };
        let soon = Utc::now() + self.config.reconcile.first_delay;
        self.core
            .transition(&job.job_id, |job| {
                job.outcome_unknown(smile_job_id.as_deref(), problem.clone(), soon)
            })
            .await?;
        Ok(JobError::Unavailable {
            reason: UnavailableReason::SubmissionOutcomeUnknown,
            message: message.into(),
            retry_after: Some(retry_after),
        })
    }
}

/// What a repeated submission of a job nobody here is sending reports.
fn report(job: Job) -> Outcome {
    match (job.state, &job.problem) {
        (JobState::Failed, Some(problem)) => Err(JobError::Rejected(problem.clone())),
        // Another replica is sending it.
        (JobState::Submitting, _) => Err(in_progress(Duration::from_secs(1))),
        _ => Ok(SubmitOutput { job, created: false }),
    }
}

fn in_progress(retry_after: Duration) -> JobError {
    JobError::Unavailable {
        reason: UnavailableReason::SubmissionInProgress,
        message: "the job is still being submitted to Smile ID; retry with the same job_id to get its outcome".into(),
        retry_after: Some(retry_after),
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
fn refusal_problem(refusal: &Refusal, kind: JobKind) -> JobProblem {
    let (reason, message) = match refusal.cause {
        RefusalCause::UserDisabled if kind == JobKind::Enrollment => (
            ProblemReason::UserNotEnrollable,
            format!("the user cannot be enrolled: {}", refusal.code_text),
        ),
        RefusalCause::UserNotEnrolled => (
            ProblemReason::UserNotEnrolled,
            "the user is not enrolled for SmartSelfie Authentication".to_owned(),
        ),
        RefusalCause::UserAlreadyEnrolled => (
            ProblemReason::UserAlreadyEnrolled,
            "the user is enrolled already; authenticate them, or ask Smile ID to re-enrol them".to_owned(),
        ),
        RefusalCause::UserDisabled | RefusalCause::UserNotAuthenticatable => (
            ProblemReason::UserNotAuthenticatable,
            format!("the user cannot be authenticated: {}", refusal.code_text),
        ),
        RefusalCause::Credentials => (
            ProblemReason::UpstreamAuthFailed,
            "Smile ID refused this service's credentials; check the partner id, API key and environment".to_owned(),
        ),
        RefusalCause::Other => (
            ProblemReason::UpstreamRejected,
            format!("Smile ID refused the job: {}", refusal.message),
        ),
    };
    JobProblem {
        reason,
        message,
        smile_code: Some(refusal.code.clone()),
    }
}
