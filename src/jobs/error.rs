//! The domain's error: what callers did wrong or what stopped the work.

use std::time::Duration;

use super::model::JobProblem;
use super::ports::StoreError;

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Stable reasons for an invalid request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidReason {
    InvalidField,
    InvalidImage,
    ImageTooLarge,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidField => "INVALID_FIELD",
            Self::InvalidImage => "INVALID_IMAGE",
            Self::ImageTooLarge => "IMAGE_TOO_LARGE",
        }
    }
}

/// Why a service is not available right now; the caller may retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnavailableReason {
    UpstreamUnavailable,
    DatabaseUnavailable,
    ShuttingDown,
    Contention,
    Overloaded,
}

impl UnavailableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::Contention => "CONTENTION",
            Self::Overloaded => "OVERLOADED",
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
    #[error("job_id {job_id} was already used for different content")]
    JobIdReused { job_id: String },
    #[error("no job with job_id {job_id}")]
    NotFound { job_id: String },
    #[error("resume token is not one this service issued")]
    InvalidResumeToken,
    /// Smile ID refused the job; the stored job is FAILED with this problem.
    #[error("{}", .0.message)]
    Rejected(JobProblem),
    #[error("{message}")]
    Unavailable {
        reason: UnavailableReason,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl JobError {
    pub fn invalid(reason: InvalidReason, violations: Vec<FieldViolation>) -> Self {
        let message = match violations.as_slice() {
            [only] => format!("{}: {}", only.field, only.description),
            many => format!("{} fields are invalid; see the BadRequest details", many.len()),
        };
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

impl From<StoreError> for JobError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(detail) => {
                tracing::error!(error = %detail, "database unavailable");
                Self::Unavailable {
                    reason: UnavailableReason::DatabaseUnavailable,
                    message: "the job database is unavailable".into(),
                    retry_after: Some(Duration::from_secs(1)),
                }
            }
            StoreError::Corrupt(detail) => {
                tracing::error!(error = %detail, "stored data cannot be read");
                Self::Internal("stored data cannot be read".into())
            }
        }
    }
}
