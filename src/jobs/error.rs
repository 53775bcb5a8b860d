//! The domain's error: what callers did wrong or what stopped the work.

use std::time::Duration;

use super::model::JobProblem;
use super::ports::StoreError;
use super::reason::ErrorReason;

/// The most field problems one error reports.
pub const MAX_VIOLATIONS: usize = 10;

/// Caller input quoted in an error, cut to a few dozen characters so an error
/// never echoes back what a caller sent in bulk.
pub fn quoted(input: &str) -> String {
    const SHOWN: usize = 40;
    let mut chars = input.chars();
    let head: String = chars.by_ref().take(SHOWN).collect();
    if chars.next().is_some() {
        format!("{head:?}… ({} bytes)", input.len())
    } else {
        format!("{head:?}")
    }
}

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// The [`ErrorReason`]s of an invalid request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidReason {
    InvalidField,
    InvalidImage,
    ImageTooLarge,
}

impl From<InvalidReason> for ErrorReason {
    fn from(reason: InvalidReason) -> Self {
        match reason {
            InvalidReason::InvalidField => Self::InvalidField,
            InvalidReason::InvalidImage => Self::InvalidImage,
            InvalidReason::ImageTooLarge => Self::ImageTooLarge,
        }
    }
}

/// The [`ErrorReason`]s of a call the caller may retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnavailableReason {
    UpstreamUnavailable,
    SubmissionInProgress,
    SubmissionOutcomeUnknown,
    ShuttingDown,
    Contention,
}

/// The service's own limits behind the calls, which a call may find full:
/// named in its refusal and counted, as the limits in front of the calls are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Memory for decoding images, all submissions'.
    DecodeMemory,
    /// Memory for the images of submissions being sent, all callers'.
    SubmissionMemory,
    /// One caller's part of that.
    CallerSubmissionMemory,
    /// Turns to be checked and stored, none free for the caller by its deadline.
    SubmissionTurns,
    /// Streams (and waits for a result) held open at once.
    OpenStreams,
}

impl Limit {
    pub const ALL: [Self; 5] = [
        Self::DecodeMemory,
        Self::SubmissionMemory,
        Self::CallerSubmissionMemory,
        Self::SubmissionTurns,
        Self::OpenStreams,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DecodeMemory => "decode_memory",
            Self::SubmissionMemory => "submission_memory",
            Self::CallerSubmissionMemory => "caller_submission_memory",
            Self::SubmissionTurns => "submission_turns",
            Self::OpenStreams => "open_streams",
        }
    }
}

impl From<UnavailableReason> for ErrorReason {
    fn from(reason: UnavailableReason) -> Self {
        match reason {
            UnavailableReason::UpstreamUnavailable => Self::UpstreamUnavailable,
            UnavailableReason::SubmissionInProgress => Self::SubmissionInProgress,
            UnavailableReason::SubmissionOutcomeUnknown => Self::SubmissionOutcomeUnknown,
            UnavailableReason::ShuttingDown => Self::ShuttingDown,
            UnavailableReason::Contention => Self::Contention,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum JobError {
    #[error("{message}")]
    Invalid {
        reason: InvalidReason,
        message: String,
        violations: Vec<FieldViolation>,
    },
    /// The job_id names another submission: different content, or another
    /// caller's (which is told apart from nothing else, so reveals nothing more).
    #[error("job_id {job_id} is already taken by a different submission; choose another job_id")]
    JobIdReused { job_id: String },
    #[error("no job with job_id {job_id}")]
    NotFound { job_id: String },
    #[error("this service has no record of user {user_id}")]
    UserNotFound { user_id: String },
    /// The user was deleted through this service; their user_id is never used again.
    #[error("user {user_id} was deleted; their user_id cannot be used again")]
    UserDeleted { user_id: String },
    /// A user operation is being carried out and its outcome is not known yet.
    #[error("{} of user {user_id} is in progress; the service finishes it by itself, repeat the call to learn the outcome", .operation.as_str())]
    UserOperationPending {
        user_id: String,
        operation: crate::users::model::Operation,
        retry_after: Duration,
    },
    #[error("resume token is not one this service issued")]
    InvalidResumeToken,
    #[error("page token is not one this service issued for this filter")]
    InvalidPageToken,
    /// Smile ID refused the job; the stored job is FAILED with this problem.
    #[error("{}", .0.message)]
    Rejected(JobProblem),
    #[error("{message}")]
    Unavailable {
        reason: UnavailableReason,
        message: String,
        retry_after: Option<Duration>,
    },
    /// One of the service's own limits is full; the caller may retry in a second.
    #[error("{message}")]
    Overloaded { limit: Limit, message: String },
    /// The job database failed; the detail is for the log, not the caller.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl JobError {
    /// The service is at a limit of its own; the caller may retry in a second.
    pub fn overloaded(limit: Limit, message: &str) -> Self {
        Self::Overloaded {
            limit,
            message: message.to_owned(),
        }
    }

    /// An invalid request. At most [`MAX_VIOLATIONS`] problems are kept, so an
    /// error never grows with the input that caused it.
    pub fn invalid(reason: InvalidReason, mut violations: Vec<FieldViolation>) -> Self {
        let message = match violations.as_slice() {
            [only] => format!("{}: {}", only.field, only.description),
            many if many.len() > MAX_VIOLATIONS => format!(
                "{} problems with the request; the first {MAX_VIOLATIONS} are in the BadRequest details",
                many.len()
            ),
            many => format!("{} fields are invalid; see the BadRequest details", many.len()),
        };
        violations.truncate(MAX_VIOLATIONS);
        Self::Invalid {
            reason,
            message,
            violations,
        }
    }

    /// One invalid request field.
    pub fn invalid_field(field: &str, description: String) -> Self {
        Self::invalid(
            InvalidReason::InvalidField,
            vec![FieldViolation {
                field: field.to_owned(),
                description,
            }],
        )
    }

    pub fn shutting_down() -> Self {
        Self::Unavailable {
            reason: UnavailableReason::ShuttingDown,
            message: "the server is shutting down; reconnect and resume".into(),
            retry_after: None,
        }
    }
}
