//! The one place where domain errors become gRPC statuses (google.rpc richer
//! error model: every status carries an `ErrorInfo`).

use std::collections::HashMap;

use prost::Message as _;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::jobs::{JobError, JobProblem, ProblemReason};

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "selfieauth.v1";

fn metadata<const N: usize>(pairs: [(&str, &str); N]) -> HashMap<String, String> {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

pub fn to_status(error: &JobError) -> Status {
    match error {
        JobError::Invalid {
            reason,
            message,
            violations,
        } => {
            let mut details = ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, HashMap::new());
            for violation in violations {
                details.add_bad_request_violation(&violation.field, &violation.description);
            }
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        JobError::JobIdReused { job_id } => {
            let details = ErrorDetails::with_error_info("JOB_ID_REUSED", ERROR_DOMAIN, metadata([("job_id", job_id)]));
            Status::with_error_details(Code::AlreadyExists, error.to_string(), details)
        }
        JobError::NotFound { job_id } => {
            let mut details =
                ErrorDetails::with_error_info("JOB_NOT_FOUND", ERROR_DOMAIN, metadata([("job_id", job_id)]));
            details.set_resource_info("selfieauth.v1.Job", job_id, "", "no such job");
            Status::with_error_details(Code::NotFound, error.to_string(), details)
        }
        JobError::InvalidResumeToken => {
            let mut details = ErrorDetails::with_error_info("INVALID_RESUME_TOKEN", ERROR_DOMAIN, HashMap::new());
            details.add_bad_request_violation("resume_token", "pass back a resume_token from a JobEvent, or nothing");
            Status::with_error_details(Code::InvalidArgument, error.to_string(), details)
        }
        JobError::Rejected(problem) => problem_status(problem),
        JobError::Unavailable {
            reason,
            message,
            retry_after,
        } => {
            let mut details = ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, HashMap::new());
            details.set_retry_info(*retry_after);
            Status::with_error_details(Code::Unavailable, message, details)
        }
        JobError::Internal(message) => {
            let details = ErrorDetails::with_error_info("INTERNAL", ERROR_DOMAIN, HashMap::new());
            Status::with_error_details(Code::Internal, message, details)
        }
    }
}

/// The status for a stored job's problem (a refusal replayed, or `Job.error`).
pub fn problem_status(problem: &JobProblem) -> Status {
    let code = match problem.reason {
        ProblemReason::UserNotEnrolled | ProblemReason::UserNotAuthenticatable | ProblemReason::UpstreamRejected => {
            Code::FailedPrecondition
        }
        ProblemReason::UpstreamAuthFailed => Code::Internal,
        ProblemReason::UpstreamUnavailable => Code::Unavailable,
        ProblemReason::SubmissionOutcomeUnknown => Code::Unknown,
        ProblemReason::ResultNotReceived => Code::DeadlineExceeded,
    };
    let mut meta = HashMap::new();
    if let Some(smile_code) = &problem.smile_code {
        meta.insert("smileIdCode".to_owned(), smile_code.clone());
    }
    let mut details = ErrorDetails::with_error_info(problem.reason.as_str(), ERROR_DOMAIN, meta);
    if matches!(
        problem.reason,
        ProblemReason::UserNotEnrolled | ProblemReason::UserNotAuthenticatable
    ) {
        details.add_precondition_failure_violation("USER_ENROLLMENT", "user_id", &problem.message);
    }
    Status::with_error_details(code, &problem.message, details)
}

/// A status as the `google.rpc.Status` message stored in `Job.error`.
pub fn to_rpc_status(status: &Status) -> tonic_types::pb::Status {
    tonic_types::pb::Status::decode(status.details()).unwrap_or_else(|_| tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    })
}
