//! Every `ErrorInfo.reason` the service returns, written once. The gRPC
//! status mapper, the message-size layer and the README's error table all
//! speak this vocabulary; callers match on these strings, so they never change.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    InvalidField,
    InvalidImage,
    ImageTooLarge,
    MessageTooLarge,
    InvalidMessage,
    RequestTimeout,
    InvalidResumeToken,
    JobIdReused,
    JobNotFound,
    UserNotEnrolled,
    UserNotAuthenticatable,
    UserAlreadyEnrolled,
    UpstreamRejected,
    UpstreamAuthFailed,
    UpstreamUnavailable,
    SubmissionInProgress,
    SubmissionOutcomeUnknown,
    SubmissionAbandoned,
    ResultNotReceived,
    DatabaseUnavailable,
    ShuttingDown,
    Contention,
    Overloaded,
    Internal,
}

impl ErrorReason {
    pub const ALL: [Self; 24] = [
        Self::InvalidField,
        Self::InvalidImage,
        Self::ImageTooLarge,
        Self::MessageTooLarge,
        Self::InvalidMessage,
        Self::RequestTimeout,
        Self::InvalidResumeToken,
        Self::JobIdReused,
        Self::JobNotFound,
        Self::UserNotEnrolled,
        Self::UserNotAuthenticatable,
        Self::UserAlreadyEnrolled,
        Self::UpstreamRejected,
        Self::UpstreamAuthFailed,
        Self::UpstreamUnavailable,
        Self::SubmissionInProgress,
        Self::SubmissionOutcomeUnknown,
        Self::SubmissionAbandoned,
        Self::ResultNotReceived,
        Self::DatabaseUnavailable,
        Self::ShuttingDown,
        Self::Contention,
        Self::Overloaded,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidField => "INVALID_FIELD",
            Self::InvalidImage => "INVALID_IMAGE",
            Self::ImageTooLarge => "IMAGE_TOO_LARGE",
            Self::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Self::InvalidMessage => "INVALID_MESSAGE",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::InvalidResumeToken => "INVALID_RESUME_TOKEN",
            Self::JobIdReused => "JOB_ID_REUSED",
            Self::JobNotFound => "JOB_NOT_FOUND",
            Self::UserNotEnrolled => "USER_NOT_ENROLLED",
            Self::UserNotAuthenticatable => "USER_NOT_AUTHENTICATABLE",
            Self::UserAlreadyEnrolled => "USER_ALREADY_ENROLLED",
            Self::UpstreamRejected => "UPSTREAM_REJECTED",
            Self::UpstreamAuthFailed => "UPSTREAM_AUTH_FAILED",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::SubmissionInProgress => "SUBMISSION_IN_PROGRESS",
            Self::SubmissionOutcomeUnknown => "SUBMISSION_OUTCOME_UNKNOWN",
            Self::SubmissionAbandoned => "SUBMISSION_ABANDONED",
            Self::ResultNotReceived => "RESULT_NOT_RECEIVED",
            Self::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::Contention => "CONTENTION",
            Self::Overloaded => "OVERLOADED",
            Self::Internal => "INTERNAL",
        }
    }
}
