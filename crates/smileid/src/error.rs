use std::time::Duration;

use super::codes::ErrorCode;

/// Why a call to Smile ID failed. Messages never carry URLs (a pre-signed upload
/// URL is a credential), keys, signatures or image bytes.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SmileIdError {
    #[error("smile id refused the request with code {code}: {message}")]
    /// Smile ID refused the request: no job was made.
    Refused {
        /// Smile ID's error code.
        code: ErrorCode,
        /// The HTTP status it came with.
        http_status: u16,
        /// Smile ID's error text.
        message: String,
    },
    #[error("smile id is unavailable (http {http_status})")]
    /// Smile ID answered 5xx or 429.
    Unavailable {
        /// The HTTP status.
        http_status: u16,
        /// How long Smile ID asked to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    #[error("could not connect to smile id: {0}")]
    /// No connection could be made: the request never left.
    Connect(String),
    #[error("smile id did not answer in time")]
    /// No answer within the request timeout.
    Timeout,
    #[error("transport error talking to smile id: {0}")]
    /// The connection failed during the exchange.
    Transport(String),
    #[error("the signature of smile id's response did not verify")]
    /// A signed answer whose signature did not verify.
    BadSignature,
    #[error("smile id has no job with this job_id")]
    /// Smile ID has no job with this id.
    NotFound,
    #[error("unexpected response from smile id: {0}")]
    /// An answer this client cannot read.
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

    /// How long Smile ID asked to wait before the next attempt, if it said.
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
    /// `POST /v1/upload`, which makes the job and answers the upload URL.
    PrepUpload,
    /// Building the zip.
    Package,
    /// The `PUT` of the zip to the pre-signed URL.
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
/// A failed submission: where it failed, what Smile ID may hold, and why.
pub struct SubmitError {
    /// The step that failed.
    pub stage: SubmitStage,
    /// What Smile ID may hold now; it decides whether trying again is safe.
    pub outcome: SubmitOutcome,
    /// Smile ID's job id when the prep upload succeeded before the failure.
    pub smile_job_id: Option<String>,
    #[source]
    /// The failure itself.
    pub source: SmileIdError,
}
