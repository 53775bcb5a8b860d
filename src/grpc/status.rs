//! The one place where domain errors become gRPC statuses (google.rpc richer
//! error model: every status carries an `ErrorInfo`).

use std::collections::HashMap;
use std::time::Duration;

use prost::Message as _;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use tracing::{error, warn};

use crate::auth::AuthError;
use crate::auth::rates::OverRate;
use crate::jobs::{ErrorReason, JobError, JobProblem, ProblemReason, StoreError};

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "selfieauth.v1";

/// The gRPC code each reason is returned with.
pub fn code(reason: ErrorReason) -> Code {
    use ErrorReason::*;
    match reason {
        InvalidField | InvalidImage | ImageTooLarge | InvalidMessage | InvalidResumeToken | InvalidPageToken => {
            Code::InvalidArgument
        }
        RequestTimeout => Code::DeadlineExceeded,
        MessageTooLarge | RateLimited => Code::ResourceExhausted,
        JobIdReused => Code::AlreadyExists,
        JobNotFound | UserNotFound => Code::NotFound,
        UserNotEnrolled
        | UserNotAuthenticatable
        | UserAlreadyEnrolled
        | UserNotEnrollable
        | UpstreamRejected
        | UserDeleted => Code::FailedPrecondition,
        UpstreamAuthFailed | Internal => Code::Internal,
        UpstreamUnavailable
        | SubmissionInProgress
        | SubmissionOutcomeUnknown
        | DatabaseUnavailable
        | ShuttingDown
        | Contention
        | Overloaded
        | UserOperationInProgress => Code::Unavailable,
        SubmissionAbandoned => Code::Aborted,
        CallerUnidentified | ForwardedIdentityUntrusted => Code::Unauthenticated,
        NotPermitted | UserNotPermitted => Code::PermissionDenied,
        ResultNotReceived => Code::DeadlineExceeded,
    }
}

/// A status with `reason`'s code and an `ErrorInfo`, plus whatever `details` add.
pub fn reason_status(
    reason: ErrorReason,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
    details: impl FnOnce(&mut ErrorDetails),
) -> Status {
    let mut error_details = ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, metadata);
    details(&mut error_details);
    Status::with_error_details(code(reason), message, error_details)
}

fn job_id_metadata(job_id: &str) -> HashMap<String, String> {
    HashMap::from([("jobId".to_owned(), job_id.to_owned())])
}

fn user_id_metadata(user_id: &str) -> HashMap<String, String> {
    HashMap::from([("userId".to_owned(), user_id.to_owned())])
}

/// A gRPC code as the protos name it: `NOT_FOUND`, `INVALID_ARGUMENT`, ...
pub fn code_name(code: Code) -> String {
    let name = format!("{code:?}");
    let mut screaming = String::new();
    for (index, c) in name.chars().enumerate() {
        if c.is_uppercase() && index > 0 {
            screaming.push('_');
        }
        screaming.push(c.to_ascii_uppercase());
    }
    screaming
}

/// The status of a call refused before it runs.
pub fn auth_status(error: &AuthError) -> Status {
    match error {
        AuthError::Unidentified(message) => {
            reason_status(ErrorReason::CallerUnidentified, message.clone(), HashMap::new(), |_| {})
        }
        AuthError::UntrustedForwarder(message) => reason_status(
            ErrorReason::ForwardedIdentityUntrusted,
            message.clone(),
            HashMap::new(),
            |_| {},
        ),
        AuthError::UserNotPermitted => {
            reason_status(ErrorReason::UserNotPermitted, error.to_string(), HashMap::new(), |_| {})
        }
        AuthError::Denied(permission) => reason_status(
            ErrorReason::NotPermitted,
            error.to_string(),
            HashMap::from([("permission".to_owned(), permission.as_str().to_owned())]),
            |_| {},
        ),
    }
}

/// UNAVAILABLE / `OVERLOADED`, saying which `limit` refused the call and when to retry.
pub fn overloaded(message: impl Into<String>, limit: &str, retry_after: Duration) -> Status {
    reason_status(
        ErrorReason::Overloaded,
        message,
        HashMap::from([("limit".to_owned(), limit.to_owned())]),
        |details| {
            details.set_retry_info(Some(retry_after));
        },
    )
}

/// RESOURCE_EXHAUSTED / `RATE_LIMITED` for a call over `caller`'s rate limit,
/// with the quota it is over and when to retry.
pub fn rate_limited(over: &OverRate, caller: &str) -> Status {
    let description = format!(
        "{} {} a second, {} at once",
        over.rate.per_second,
        over.spend.as_str(),
        over.rate.burst
    );
    reason_status(
        ErrorReason::RateLimited,
        format!("this caller is over its rate limit of {description}; retry after the delay given"),
        HashMap::from([("limit".to_owned(), over.spend.as_str().to_owned())]),
        |details| {
            details.add_quota_failure_violation(format!("caller:{caller}"), description);
            details.set_retry_info(Some(over.retry_after));
        },
    )
}

/// PERMISSION_DENIED / `USER_NOT_PERMITTED` for a submission naming `user_id`.
pub fn user_not_permitted(user_id: &str) -> Status {
    reason_status(
        ErrorReason::UserNotPermitted,
        AuthError::UserNotPermitted.to_string(),
        HashMap::from([("userId".to_owned(), user_id.to_owned())]),
        |_| {},
    )
}

pub fn to_status(job_error: &JobError) -> Status {
    let message = job_error.to_string();
    match job_error {
        JobError::Invalid { reason, violations, .. } => {
            reason_status((*reason).into(), message, HashMap::new(), |details| {
                for violation in violations {
                    details.add_bad_request_violation(&violation.field, &violation.description);
                }
            })
        }
        JobError::JobIdReused { job_id } => {
            reason_status(ErrorReason::JobIdReused, message, job_id_metadata(job_id), |_| {})
        }
        JobError::NotFound { job_id } => {
            reason_status(ErrorReason::JobNotFound, message, job_id_metadata(job_id), |details| {
                details.set_resource_info("selfieauth.v1.Job", format!("jobs/{job_id}"), "", "no such job");
            })
        }
        JobError::UserNotFound { user_id } => reason_status(
            ErrorReason::UserNotFound,
            message,
            user_id_metadata(user_id),
            |details| {
                details.set_resource_info("selfieauth.v1.User", format!("users/{user_id}"), "", "no such user");
            },
        ),
        JobError::UserDeleted { user_id } => {
            let violation = message.clone();
            reason_status(
                ErrorReason::UserDeleted,
                message,
                user_id_metadata(user_id),
                |details| {
                    details.add_precondition_failure_violation("USER_DELETED", format!("users/{user_id}"), violation);
                },
            )
        }
        JobError::UserOperationPending {
            user_id,
            operation,
            retry_after,
        } => {
            let mut metadata = user_id_metadata(user_id);
            metadata.insert("operation".to_owned(), operation.as_str().to_owned());
            reason_status(ErrorReason::UserOperationInProgress, message, metadata, |details| {
                details.set_retry_info(Some(*retry_after));
            })
        }
        JobError::InvalidResumeToken => {
            reason_status(ErrorReason::InvalidResumeToken, message, HashMap::new(), |details| {
                details
                    .add_bad_request_violation("resume_token", "pass back a resume_token from a JobEvent, or nothing");
            })
        }
        JobError::InvalidPageToken => {
            reason_status(ErrorReason::InvalidPageToken, message, HashMap::new(), |details| {
                details.add_bad_request_violation(
                    "page_token",
                    "pass back next_page_token from the previous page, with the same filter",
                );
            })
        }
        JobError::Rejected(problem) => problem_status(problem),
        JobError::Unavailable {
            reason, retry_after, ..
        } => reason_status((*reason).into(), message, HashMap::new(), |details| {
            details.set_retry_info(*retry_after);
        }),
        JobError::Overloaded { limit, message } => overloaded(message.as_str(), limit.as_str(), Duration::from_secs(1)),
        JobError::Store(StoreError::Unavailable(detail)) => {
            warn!(error = %detail, "database unavailable");
            reason_status(
                ErrorReason::DatabaseUnavailable,
                "the job database is unavailable",
                HashMap::new(),
                |details| {
                    details.set_retry_info(Some(Duration::from_secs(1)));
                },
            )
        }
        JobError::Store(StoreError::Corrupt(detail)) => {
            error!(error = %detail, "stored data cannot be read");
            reason_status(
                ErrorReason::Internal,
                "stored data cannot be read",
                HashMap::new(),
                |_| {},
            )
        }
        JobError::Internal(detail) => {
            error!(error = %detail, "internal error");
            reason_status(ErrorReason::Internal, message, HashMap::new(), |_| {})
        }
    }
}

/// The status for a stored job's problem (a refusal replayed, or `Job.error`).
pub fn problem_status(problem: &JobProblem) -> Status {
    let mut metadata = HashMap::new();
    if let Some(smile_code) = &problem.smile_code {
        metadata.insert("smileIdCode".to_owned(), smile_code.clone());
    }
    reason_status(problem.reason.into(), &problem.message, metadata, |details| {
        if matches!(
            problem.reason,
            ProblemReason::UserNotEnrolled
                | ProblemReason::UserNotAuthenticatable
                | ProblemReason::UserAlreadyEnrolled
                | ProblemReason::UserNotEnrollable
        ) {
            details.add_precondition_failure_violation("USER_ENROLLMENT", "user_id", &problem.message);
        }
    })
}

/// A status as the `google.rpc.Status` message stored in `Job.error`.
pub fn to_rpc_status(status: &Status) -> tonic_types::pb::Status {
    tonic_types::pb::Status::decode(status.details()).unwrap_or_else(|_| tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error table of docs/api.md: `(code, reason)` of each row, without backticks.
    fn documented() -> Vec<(String, String)> {
        crate::documented_table(include_str!("../../docs/api.md"), "| code | reason | when |")
            .into_iter()
            .map(|cells| {
                (
                    cells[0].trim_matches('`').to_owned(),
                    cells[1].trim_matches('`').to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_api_docs_name_every_limit_an_overloaded_refusal_may_give() {
        let row = include_str!("../../docs/api.md")
            .lines()
            .find(|line| line.contains("| `OVERLOADED` |"))
            .expect("the OVERLOADED row");
        // The policy's rates refuse with RATE_LIMITED, in a row of their own.
        for limit in crate::metrics::SHED_LIMITS
            .iter()
            .filter(|limit| !["rate", "refresh_rate"].contains(limit))
        {
            assert!(row.contains(&format!("`{limit}`")), "{limit} is not in {row}");
        }
    }

    #[test]
    fn the_api_docs_list_every_reason_with_its_code() {
        let expected: Vec<(String, String)> = ErrorReason::ALL
            .iter()
            .map(|reason| (code_name(code(*reason)), reason.as_str().to_owned()))
            .collect();
        assert_eq!(documented(), expected);
    }

    #[test]
    fn the_contract_names_every_reason() {
        let in_contract: std::collections::BTreeSet<&str> = (1..100)
            .filter_map(|number| crate::grpc::pb::ErrorReason::try_from(number).ok())
            .map(|reason| reason.as_str_name())
            .collect();
        let served: std::collections::BTreeSet<&str> = ErrorReason::ALL.iter().map(|reason| reason.as_str()).collect();
        assert_eq!(in_contract, served, "error_reason.proto and ErrorReason differ");
    }

    #[test]
    fn metadata_keys_are_lower_camel_case_and_resources_are_named() {
        let status = to_status(&JobError::NotFound { job_id: "j-1".into() });
        let details = status.get_error_details();
        let info = details.error_info().cloned().expect("error info");
        assert_eq!(info.metadata.get("jobId").map(String::as_str), Some("j-1"));
        assert_eq!(
            details.resource_info().expect("resource info").resource_name,
            "jobs/j-1"
        );
    }

    #[test]
    fn database_failures_keep_their_detail_out_of_the_status() {
        let status = to_status(&JobError::Store(StoreError::Unavailable(
            "connection to 10.0.0.7:5432 refused".into(),
        )));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.7"), "{}", status.message());
        let info = status.get_error_details().error_info().cloned().expect("error info");
        assert_eq!(info.reason, "DATABASE_UNAVAILABLE");
    }
}
