//! What Smile ID says, in the domain's terms: its results and its refusals.
//! The Smile ID adapter and the callback endpoint translate the protocol
//! client's types into these, so the job logic depends on no client.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a result means for the caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// The selfie matches the enrolled user.
    Approved,
    /// The selfie does not match, or the user cannot be authenticated.
    Rejected,
    /// A machine approval awaiting human review; a final result follows.
    ProvisionallyApproved,
    /// The selfie looks like a spoof.
    SuspectedSpoof,
    /// Smile ID could not process the submission.
    Error,
    /// A code the catalogue does not know; the raw code is kept.
    Unknown(String),
}

/// One result Smile ID gave for a job (a callback, job_status's `result` or a
/// `history` entry), as it is stored with the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmileResult {
    /// Smile ID's result code, e.g. `0820`.
    pub result_code: String,
    pub result_text: String,
    /// The kind of result, e.g. `SAIA`.
    pub result_type: String,
    pub smile_job_id: String,
    /// Whether no further result follows.
    pub is_final: bool,
    /// Whether a machine, not a reviewer, decided.
    pub is_machine_result: bool,
    /// Smile ID's confidence in the match, 0 to 100.
    pub confidence: f64,
    /// The checks and their outcomes (`Liveness_Check`: `Passed`, ...).
    pub actions: BTreeMap<String, String>,
    /// The partner params, echoed back.
    pub partner_params: BTreeMap<String, String>,
    /// When Smile ID produced the result, when it says.
    pub timestamp: Option<DateTime<Utc>>,
    pub decision: Decision,
}

impl SmileResult {
    /// The partner's job_id echoed in the partner params.
    pub fn job_id(&self) -> Option<&str> {
        self.partner_params.get("job_id").map(String::as_str)
    }
}

/// What a Smile ID refusal says about the user or this service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCause {
    UserNotEnrolled,
    UserAlreadyEnrolled,
    /// The user is disabled at Smile ID.
    UserDisabled,
    /// The user is deleted, must enrol again, or has no photo on file.
    UserNotAuthenticatable,
    /// Smile ID refused this service's credentials or environment.
    Credentials,
    /// Anything else about the request.
    Other,
}

/// Why Smile ID refused a job or a user operation; repeating it will not help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub cause: RefusalCause,
    /// Smile ID's error code, e.g. `2210`.
    pub code: String,
    /// Smile ID's wording of the code.
    pub code_text: String,
    /// What Smile ID said.
    pub message: String,
}
