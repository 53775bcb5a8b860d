//! The job: what selfie-auth knows about one SmartSelfie Authentication.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use bytes::Bytes;

use super::reason::ErrorReason;
use super::settings::ReconcilePolicy;

mod event;
mod result;
#[cfg(test)]
mod tests;

pub use event::{ErasedJob, Erasure, EventKind, EventNotice, JobEvent, LogFilter};
pub use result::{Decision, Refusal, RefusalCause, SmileResult};

/// What a job asks of Smile ID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobKind {
    /// SmartSelfie Authentication (job_type 2): is this the enrolled user?
    #[default]
    Authentication,
    /// SmartSelfie Registration (job_type 4): enrols the user.
    Enrollment,
}

impl JobKind {
    /// The name stores keep, as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authentication => "AUTHENTICATION",
            Self::Enrollment => "ENROLLMENT",
        }
    }
}

/// Where a job is in its life. Transitions only move forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Submitting,
    Submitted,
    Provisional,
    Completed,
    Failed,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitting => "SUBMITTING",
            Self::Submitted => "SUBMITTED",
            Self::Provisional => "PROVISIONAL",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
}

/// Where the Smile ID submission of a `SUBMITTING` job stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Submission {
    /// A replica is submitting now; another may take over after `lease_until`.
    InFlight { lease_until: DateTime<Utc> },
    /// The last attempt certainly did not reach Smile ID.
    NotSent,
    /// The last attempt may have created a Smile ID job.
    OutcomeUnknown,
    /// Smile ID accepted the job and its images.
    Accepted,
}

/// Why a job failed or is stuck; becomes `Job.error` with an `ErrorInfo` reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProblem {
    pub reason: ProblemReason,
    pub message: String,
    /// Smile ID's error code, when Smile ID gave one.
    pub smile_code: Option<String>,
}

/// The [`ErrorReason`]s a stored job can carry in `Job.error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProblemReason {
    UserNotEnrolled,
    UserNotAuthenticatable,
    UserAlreadyEnrolled,
    UserNotEnrollable,
    UpstreamRejected,
    UpstreamAuthFailed,
    UpstreamUnavailable,
    SubmissionOutcomeUnknown,
    ResultNotReceived,
    SubmissionAbandoned,
}

impl ProblemReason {
    /// Whether the job failed only because the service stopped waiting: a
    /// genuine result arriving later still completes it.
    pub fn is_give_up(self) -> bool {
        matches!(self, Self::ResultNotReceived | Self::SubmissionAbandoned)
    }
}

impl From<ProblemReason> for ErrorReason {
    fn from(reason: ProblemReason) -> Self {
        match reason {
            ProblemReason::UserNotEnrolled => Self::UserNotEnrolled,
            ProblemReason::UserNotAuthenticatable => Self::UserNotAuthenticatable,
            ProblemReason::UserAlreadyEnrolled => Self::UserAlreadyEnrolled,
            ProblemReason::UserNotEnrollable => Self::UserNotEnrollable,
            ProblemReason::UpstreamRejected => Self::UpstreamRejected,
            ProblemReason::UpstreamAuthFailed => Self::UpstreamAuthFailed,
            ProblemReason::UpstreamUnavailable => Self::UpstreamUnavailable,
            ProblemReason::SubmissionOutcomeUnknown => Self::SubmissionOutcomeUnknown,
            ProblemReason::ResultNotReceived => Self::ResultNotReceived,
            ProblemReason::SubmissionAbandoned => Self::SubmissionAbandoned,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub user_id: String,
    /// Jobs stored before enrolment existed are authentications.
    #[serde(default)]
    pub kind: JobKind,
    /// The identity of the caller that created the job (none: authentication
    /// was off, or the job predates it).
    #[serde(default)]
    pub owner: Option<String>,
    pub smile_job_id: Option<String>,
    pub state: JobState,
    pub submission: Submission,
    /// Every result received, in arrival order; the last is the latest.
    pub results: Vec<SmileResult>,
    /// Signed callbacks whose results Smile ID has not confirmed yet (the
    /// signature does not cover the body), newest last; kept so an
    /// acknowledged callback is never lost, and cleared by the next result.
    #[serde(default)]
    pub unconfirmed: Vec<SmileResult>,
    pub problem: Option<JobProblem>,
    pub partner_params: BTreeMap<String, String>,
    /// The submitted content's fingerprint (`jobs::fingerprint`): a repeated
    /// job_id is a retry only with the same.
    pub content_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the reconciler should next ask Smile ID (none: nothing to reconcile).
    pub next_poll_at: Option<DateTime<Utc>>,
    pub poll_attempts: u32,
    /// Bumped by every write; writes are compare-and-set on it.
    pub version: i64,
    /// Sequence of the job's last event.
    pub last_sequence: u64,
}

impl Job {
    pub fn latest_result(&self) -> Option<&SmileResult> {
        self.results.last()
    }

    pub fn decision(&self) -> Option<&Decision> {
        self.latest_result().map(|result| &result.decision)
    }

    /// A new job, owned by the submission attempt that creates it until
    /// `lease_until`. The reconciler looks at it from `first_poll_at` on, in
    /// case this process dies mid-submission.
    pub fn submitting(
        prepared: &Prepared,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        first_poll_at: DateTime<Utc>,
    ) -> Self {
        Self {
            job_id: prepared.job_id.clone(),
            user_id: prepared.user_id.clone(),
            kind: prepared.kind,
            owner: prepared.owner.clone(),
            smile_job_id: None,
            state: JobState::Submitting,
            submission: Submission::InFlight { lease_until },
            results: Vec::new(),
            unconfirmed: Vec::new(),
            problem: None,
            partner_params: prepared.partner_params.clone(),
            content_hash: prepared.content_hash.clone(),
            created_at: now,
            updated_at: now,
            next_poll_at: Some(first_poll_at),
            poll_attempts: 0,
            version: 0,
            last_sequence: 0,
        }
    }

    /// A SUBMITTING job with no content, for tests of stores and streams.
    #[doc(hidden)]
    pub fn for_test(job_id: &str, user_id: &str) -> Self {
        let now = Utc::now();
        Self {
            job_id: job_id.into(),
            user_id: user_id.into(),
            kind: JobKind::Authentication,
            owner: None,
            smile_job_id: None,
            state: JobState::Submitting,
            submission: Submission::InFlight { lease_until: now },
            results: Vec::new(),
            unconfirmed: Vec::new(),
            problem: None,
            partner_params: BTreeMap::new(),
            content_hash: String::new(),
            created_at: now,
            updated_at: now,
            next_poll_at: None,
            poll_attempts: 0,
            version: 0,
            last_sequence: 0,
        }
    }

    /// What a repeated submission of this job may do at `now`, when no attempt
    /// of this process is sending it. A live lease is honoured only when
    /// `others_may_hold` it (another replica); otherwise it is a dead
    /// process's. On [`TakeOver::Resubmit`] the caller owns the submission
    /// until `lease_until`.
    pub fn take_over(&mut self, now: DateTime<Utc>, lease_until: DateTime<Utc>, others_may_hold: bool) -> TakeOver {
        if self.state != JobState::Submitting {
            return TakeOver::Report;
        }
        let may_resume = match &self.submission {
            Submission::InFlight { lease_until } if *lease_until > now && others_may_hold => return TakeOver::Report,
            Submission::Accepted => return TakeOver::Report,
            Submission::NotSent => false,
            Submission::InFlight { .. } | Submission::OutcomeUnknown => true,
        };
        self.submission = Submission::InFlight { lease_until };
        self.updated_at = now;
        TakeOver::Resubmit { may_resume }
    }

    /// Extends the running attempt's hold on the job.
    pub fn renew_lease(&mut self, lease_until: DateTime<Utc>) -> Option<EventKind> {
        if self.state == JobState::Submitting && matches!(self.submission, Submission::InFlight { .. }) {
            self.submission = Submission::InFlight { lease_until };
        }
        None
    }

    /// Whether a Smile ID result may still change this job: it is not final, or
    /// it failed only because the service stopped waiting.
    pub fn takes_results(&self) -> bool {
        match self.state {
            JobState::Completed => false,
            JobState::Failed => self.problem.as_ref().is_some_and(|problem| problem.reason.is_give_up()),
            _ => true,
        }
    }

    /// Smile ID accepted the job and its images.
    pub fn accepted(&mut self, smile_job_id: &str, next_poll_at: DateTime<Utc>) -> Option<EventKind> {
        self.smile_job_id.get_or_insert_with(|| smile_job_id.to_owned());
        if self.state != JobState::Submitting {
            // A callback overtook the upload response.
            return None;
        }
        self.state = JobState::Submitted;
        self.submission = Submission::Accepted;
        self.problem = None;
        self.next_poll_at = Some(next_poll_at);
        Some(EventKind::Submitted)
    }

    /// Smile ID refused the job: it is over.
    pub fn refused(&mut self, problem: JobProblem) -> Option<EventKind> {
        if self.state.is_terminal() {
            return None;
        }
        self.state = JobState::Failed;
        self.problem = Some(problem);
        self.next_poll_at = None;
        Some(EventKind::Failed)
    }

    /// The attempt certainly did not reach Smile ID: a resubmission starts afresh,
    /// and only the give-up check at `give_up_at` remains for the reconciler.
    pub fn not_sent(&mut self, problem: JobProblem, give_up_at: DateTime<Utc>) -> Option<EventKind> {
        if self.state != JobState::Submitting {
            return None;
        }
        self.submission = Submission::NotSent;
        self.problem = Some(problem);
        self.next_poll_at = Some(give_up_at);
        None
    }

    /// The attempt may or may not have created a Smile ID job: the reconciler
    /// asks from `next_poll_at`, and a resubmission resumes rather than duplicates.
    pub fn outcome_unknown(
        &mut self,
        smile_job_id: Option<&str>,
        problem: JobProblem,
        next_poll_at: DateTime<Utc>,
    ) -> Option<EventKind> {
        if self.state != JobState::Submitting {
            return None;
        }
        if let Some(id) = smile_job_id {
            self.smile_job_id.get_or_insert_with(|| id.to_owned());
        }
        self.submission = Submission::OutcomeUnknown;
        self.problem = Some(problem);
        self.next_poll_at = Some(next_poll_at);
        None
    }

    /// Whether the job already holds this result (same code, same finality).
    pub fn has_result(&self, result: &SmileResult) -> bool {
        self.results
            .iter()
            .any(|known| known.result_code == result.result_code && known.is_final == result.is_final)
    }

    /// Notes that a callback claimed a result Smile ID has not confirmed yet,
    /// and asks the reconciler to confirm it now. Only the claim (its code and
    /// finality, cut short) is kept, a few at most: job_status, not the
    /// callback, supplies what is applied, so a forged body costs a few bytes.
    pub fn await_confirmation(&mut self, result: SmileResult, now: DateTime<Utc>) -> Option<EventKind> {
        /// Enough for a provisional and a final result, with room for a replay.
        const KEPT: usize = 4;
        /// Result codes are four digits; anything longer is not one.
        const CODE_CHARS: usize = 8;
        let claim = SmileResult {
            result_code: result.result_code.chars().take(CODE_CHARS).collect(),
            result_text: String::new(),
            result_type: String::new(),
            smile_job_id: String::new(),
            is_final: result.is_final,
            is_machine_result: result.is_machine_result,
            confidence: 0.0,
            actions: BTreeMap::new(),
            partner_params: BTreeMap::new(),
            timestamp: None,
            decision: result.decision.clone(),
        };
        let waiting = |kept: &SmileResult| kept.result_code == claim.result_code && kept.is_final == claim.is_final;
        // Already known or already waiting: a replay changes nothing and costs no poll.
        if !self.takes_results() || self.has_result(&result) || self.unconfirmed.iter().any(waiting) {
            return None;
        }
        self.unconfirmed.push(claim);
        let excess = self.unconfirmed.len().saturating_sub(KEPT);
        self.unconfirmed.drain(..excess);
        self.next_poll_at = Some(now);
        None
    }

    /// Asks the reconciler to look at the job at `at`.
    pub fn poll_at(&mut self, at: DateTime<Utc>) -> Option<EventKind> {
        if !self.state.is_terminal() {
            self.next_poll_at = Some(at);
        }
        None
    }

    /// After a reconciler poll: schedule the next one with back-off, or give up.
    /// A job Smile ID never received that nobody is sending fails after
    /// `policy.abandon_after`; any other after `policy.give_up_after`.
    pub fn polled(
        &mut self,
        now: DateTime<Utc>,
        policy: &ReconcilePolicy,
        smile_id: SmileIdKnows,
    ) -> Option<EventKind> {
        if self.state.is_terminal() {
            self.next_poll_at = None;
            return None;
        }
        let age = (now - self.created_at).to_std().unwrap_or_default();
        let never_received = self.state == JobState::Submitting && smile_id == SmileIdKnows::NoSuchJob;
        let (reason, message) = if never_received && age >= policy.abandon_after {
            (
                ProblemReason::SubmissionAbandoned,
                "Smile ID never received this job and no attempt to send it is running; submit it again \
                 with a new job_id"
                    .to_owned(),
            )
        } else if age >= policy.give_up_after {
            (
                ProblemReason::ResultNotReceived,
                format!(
                    "no final result from Smile ID within {}",
                    humantime::format_duration(policy.give_up_after)
                ),
            )
        } else {
            self.poll_attempts += 1;
            let deadline = if never_received {
                policy.abandon_after.min(policy.give_up_after)
            } else {
                policy.give_up_after
            };
            let next = now + policy.delay(self.poll_attempts);
            self.next_poll_at = Some(next.min(self.created_at + deadline));
            return None;
        };
        self.state = JobState::Failed;
        self.next_poll_at = None;
        self.problem = Some(JobProblem {
            reason,
            message,
            smile_code: None,
        });
        Some(EventKind::Failed)
    }

    /// Applies one Smile ID result. Returns the event it makes, or `None` when it
    /// changes nothing: a duplicate, or anything after the final result.
    pub fn apply_result(&mut self, result: SmileResult, now: DateTime<Utc>) -> Option<EventKind> {
        if !self.takes_results() {
            return None;
        }
        if self.has_result(&result) {
            return None;
        }
        if self.smile_job_id.is_none() && !result.smile_job_id.is_empty() {
            self.smile_job_id = Some(result.smile_job_id.clone());
        }
        let kind = if result.is_final {
            self.state = JobState::Completed;
            self.next_poll_at = None;
            EventKind::FinalResult
        } else {
            self.state = JobState::Provisional;
            EventKind::ProvisionalResult
        };
        self.submission = Submission::Accepted;
        self.problem = None;
        self.unconfirmed.clear();
        self.results.push(result);
        self.updated_at = now;
        Some(kind)
    }
}

/// What the reconciler learnt from Smile ID about a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmileIdKnows {
    /// Smile ID has the job (with or without a result yet).
    Job,
    /// Smile ID has no job with this id: it never received it.
    NoSuchJob,
    /// Smile ID could not be asked.
    Unknown,
}

/// What a repeated submission of an existing job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeOver {
    /// Nothing to send: report the job as it stands.
    Report,
    /// This call now owns the submission.
    Resubmit { may_resume: bool },
}

/// A checked submission, ready for Smile ID.
pub struct Prepared {
    pub kind: JobKind,
    pub owner: Option<String>,
    pub user_id: String,
    /// Empty when the caller left it to us.
    pub job_id: String,
    pub selfie_jpeg: Bytes,
    pub liveness_jpegs: Vec<Bytes>,
    pub partner_params: BTreeMap<String, String>,
    /// This content's fingerprint, as stored with the job.
    pub content_hash: String,
    /// The images as submitted: the JPEGs' own buffers, unless one was a PNG.
    /// A fingerprint stored by an earlier build is checked against them
    /// (`jobs::fingerprint`).
    pub submitted_selfie: Bytes,
    pub submitted_liveness: Vec<Bytes>,
    pub allow_new_enroll: bool,
}

impl Prepared {
    /// Lets go of the images as submitted once the stored job's fingerprint
    /// is checked: the submission's memory reservation counts one copy of its
    /// images, and a PNG's are a second.
    pub fn release_submitted(&mut self) {
        self.submitted_selfie = Bytes::new();
        self.submitted_liveness = Vec::new();
    }
}

/// Separates a caller's job_id from the scope the service adds when another
/// caller already holds that job_id: never in a job_id a caller writes.
pub const SCOPE_SEPARATOR: char = '~';

/// The key `owner`'s job `job_id` is stored (and sent to Smile ID) under when
/// another caller holds `job_id`: job_ids are one namespace at Smile ID, but a
/// caller must not learn that another one used an id.
pub fn scoped_job_id(job_id: &str, owner: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(owner.as_bytes());
    let scope: String = crate::lower_hex(&digest[..6]);
    format!("{job_id}{SCOPE_SEPARATOR}{scope}")
}

/// The job_id its caller knows a stored job by.
pub fn public_job_id(stored: &str) -> &str {
    stored.split_once(SCOPE_SEPARATOR).map_or(stored, |(job_id, _)| job_id)
}
