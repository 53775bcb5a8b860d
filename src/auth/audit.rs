//! The audit trail: who read which job's result or image links, and who asked
//! for which user operation (the user lifecycle records those), and when, as
//! structured log events on their own target (`selfie_auth::audit`), so
//! operators can route them to their SIEM apart from the service's other logs.
//! Events carry the caller's identity and the job_id, never a user's data.

use super::Caller;

/// The log target of audit events.
pub const TARGET: &str = "selfie_auth::audit";

/// What was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// A job's Smile ID result (a decision about a person).
    Result,
    /// Smile ID's signed links to a job's images.
    ImageLinks,
}

impl Read {
    fn as_str(self) -> &'static str {
        match self {
            Self::Result => "result",
            Self::ImageLinks => "image_links",
        }
    }
}

/// Records that `caller` read `what` of job `job_id` through `method`.
pub fn read(caller: &Caller, method: &'static str, job_id: &str, what: Read) {
    tracing::info!(target: TARGET, caller = caller.name(), method, job_id, read = what.as_str(), "audit: read");
}

/// Records that `caller` read what the service knows of `user_id`.
pub fn read_user(caller: &Caller, method: &'static str, user_id: &str) {
    tracing::info!(target: TARGET, caller = caller.name(), method, user_id, read = "user", "audit: read");
}

/// Records that `caller` was refused `permission` on `method`.
pub fn denied(caller: &Caller, method: &'static str, permission: &'static str) {
    tracing::warn!(target: TARGET, caller = caller.name(), method, permission, "audit: denied");
}
