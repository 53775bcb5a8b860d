use std::time::Duration;

use super::codes::ErrorCode;

/// Why a call to Smile ID failed. Messages never carry URLs (a pre-signed upload
/// URL is a credential), keys, signatures or image bytes.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SmileIdError {
    #[error("smile id refused the request with code {code}: {message}")]
    Refused {
        code: ErrorCode,
        http_status: u16,
        message: String,
    },
    #[error("smile id is unavailable (http {http_status})")]
    Unavailable {
        http_status: u16,
        retry_after: Option<Duration>,
    },
    #[error("could not connect to smile id: {0}")]
    Connect(String),
    #[error("smile id did not answer in time")]
    Timeout,
    #[error("transport error talking to smile id: {0}")]
    Transport(String),
    #[error("the signature of smile id's response did not verify")]
    BadSignature,
    #[error("smile id has no job with this job_id")]
    NotFound,
    #[error("unexpected response from smile id: {0}")]
    Malformed(String),
}

impl SmileIdError {
    pub(crate) fn from_reqwest(error: reqwest::Error) -> Self {
        let error = error.without_url();
        if error.is_timeout() {
            Self::Timeout
        } else if error.is_connect() {
            Self::Connect(error_chain(&error))
        } else if error.is_decode() {
            Self::Malformed(error_chain(&error))
        } else {
            Self::Transport(error_chain(&error))
        }
    }

    /// Whether repeating an idempotent call (job_status, the upload PUT) may help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Connect(_) | Self::Timeout | Self::Transport(_)
        )
    }

    /// Whether the request certainly never reached Smile ID.
    pub fn never_sent(&self) -> bool {
        matches!(self, Self::Connect(_))
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The step of a submission that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitStage {
    PrepUpload,
    Package,
    Upload,
}

/// What Smile ID may hold after a failed submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Nothing reached Smile ID: safe to try again.
    NotSent,
    /// Smile ID refused; no job exists there.
    Refused,
    /// A Smile ID job may exist (without or with its images): never resend blindly.
    Unknown,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("submission failed at {stage:?}: {source}")]
pub struct SubmitError {
    pub stage: SubmitStage,
    pub outcome: SubmitOutcome,
    /// Smile ID's job id when the prep upload succeeded before the failure.
    pub smile_job_id: Option<String>,
    #[source]
    pub source: SmileIdError,
}
