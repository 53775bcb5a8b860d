//! Domain types to protobuf messages.

use chrono::{DateTime, Utc};

use super::pb;
use super::status::{problem_status, to_rpc_status};
use crate::jobs::model::{Decision, SmileResult};
use crate::jobs::model::{ErasedJob, public_job_id};
use crate::jobs::ports::JobFilter;
use crate::jobs::{EventKind, Fetched, Job, JobError, JobEvent, JobKind, JobState};
use crate::users::{Operation, Standing, UserView};

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // Below 2e9 (a leap second included), so it always fits.
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(999_999_999),
    }
}

pub fn decision(decision: &Decision) -> pb::Decision {
    match decision {
        Decision::Approved => pb::Decision::Approved,
        Decision::Rejected => pb::Decision::Rejected,
        Decision::ProvisionallyApproved => pb::Decision::ProvisionallyApproved,
        Decision::SuspectedSpoof => pb::Decision::SuspectedSpoof,
        Decision::Error => pb::Decision::Error,
        Decision::Unknown(_) => pb::Decision::Unknown,
    }
}

fn state(state: JobState) -> pb::JobState {
    match state {
        JobState::Submitting => pb::JobState::Submitting,
        JobState::Submitted => pb::JobState::Submitted,
        JobState::Provisional => pb::JobState::Provisional,
        JobState::Completed => pb::JobState::Completed,
        JobState::Failed => pb::JobState::Failed,
    }
}

pub fn result(entry: &SmileResult) -> pb::Result {
    pb::Result {
        result_code: entry.result_code.clone(),
        result_text: entry.result_text.clone(),
        result_type: entry.result_type.clone(),
        confidence: entry.confidence,
        is_final: entry.is_final,
        is_machine_result: entry.is_machine_result,
        actions: entry.actions.clone().into_iter().collect(),
        timestamp: entry.timestamp.map(timestamp),
        decision: decision(&entry.decision) as i32,
    }
}

/// What to include beyond the always-present fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct Include {
    pub history: bool,
}

/// A ListJobs filter; an enum value this version does not know is refused.
pub fn job_filter(request: &pb::ListJobsRequest) -> Result<JobFilter, JobError> {
    let state = match pb::JobState::try_from(request.state) {
        Ok(pb::JobState::Unspecified) => None,
        Ok(pb::JobState::Submitting) => Some(JobState::Submitting),
        Ok(pb::JobState::Submitted) => Some(JobState::Submitted),
        Ok(pb::JobState::Provisional) => Some(JobState::Provisional),
        Ok(pb::JobState::Completed) => Some(JobState::Completed),
        Ok(pb::JobState::Failed) => Some(JobState::Failed),
        Err(_) => {
            return Err(JobError::invalid_field(
                "state",
                format!("unknown JobState {}", request.state),
            ));
        }
    };
    let kind = match pb::JobKind::try_from(request.kind) {
        Ok(pb::JobKind::Unspecified) => None,
        Ok(pb::JobKind::Authentication) => Some(JobKind::Authentication),
        Ok(pb::JobKind::Enrollment) => Some(JobKind::Enrollment),
        Err(_) => {
            return Err(JobError::invalid_field(
                "kind",
                format!("unknown JobKind {}", request.kind),
            ));
        }
    };
    Ok(JobFilter {
        owner: None,
        user_id: (!request.user_id.is_empty()).then(|| request.user_id.clone()),
        state,
        kind,
    })
}

pub fn job(job: &Job, include: Include, fetched: Option<&Fetched>) -> pb::Job {
    let history: Vec<pb::Result> = match (include.history, fetched) {
        (false, _) => Vec::new(),
        (true, Some(fetched)) if !fetched.history.is_empty() => fetched.history.iter().map(result).collect(),
        (true, _) => job.results.iter().map(result).collect(),
    };
    pb::Job {
        user_id: job.user_id.clone(),
        job_id: public_job_id(&job.job_id).to_owned(),
        smile_job_id: job.smile_job_id.clone().unwrap_or_default(),
        state: state(job.state) as i32,
        decision: job.decision().map_or(pb::Decision::Unspecified, decision) as i32,
        result: job.latest_result().map(result),
        history,
        image_links: fetched
            .map(|fetched| fetched.image_links.clone().into_iter().collect())
            .unwrap_or_default(),
        error: job
            .problem
            .as_ref()
            .map(|problem| to_rpc_status(&problem_status(problem))),
        create_time: Some(timestamp(job.created_at)),
        update_time: Some(timestamp(job.updated_at)),
        partner_params: job.partner_params.clone().into_iter().collect(),
        creator: job.owner.clone().unwrap_or_default(),
        kind: match job.kind {
            JobKind::Authentication => pb::JobKind::Authentication,
            JobKind::Enrollment => pb::JobKind::Enrollment,
        } as i32,
    }
}

fn event_kind(kind: EventKind) -> pb::JobEventKind {
    match kind {
        EventKind::Created => pb::JobEventKind::Created,
        EventKind::Submitted => pb::JobEventKind::Submitted,
        EventKind::ProvisionalResult => pb::JobEventKind::ProvisionalResult,
        EventKind::FinalResult => pb::JobEventKind::FinalResult,
        EventKind::Failed => pb::JobEventKind::Failed,
    }
}

pub fn event(event: &JobEvent, resume_token: String) -> pb::JobEvent {
    pb::JobEvent {
        sequence: event.sequence,
        kind: event_kind(event.kind) as i32,
        job: Some(job(&event.job, Include::default(), None)),
        resume_token,
        event_time: Some(timestamp(event.at)),
    }
}

pub fn heartbeat(last_sequence: u64, resume_token: String) -> pb::JobEvent {
    pb::JobEvent {
        sequence: last_sequence,
        kind: pb::JobEventKind::Heartbeat as i32,
        job: None,
        resume_token,
        event_time: Some(timestamp(Utc::now())),
    }
}

/// The last event of a job erased with its user: ids only.
pub fn erased(job: &ErasedJob, user_id: &str, sequence: u64, resume_token: String) -> pb::JobEvent {
    pb::JobEvent {
        sequence,
        kind: pb::JobEventKind::Erased as i32,
        job: Some(pb::Job {
            user_id: user_id.to_owned(),
            job_id: public_job_id(&job.job_id).to_owned(),
            creator: job.owner.clone().unwrap_or_default(),
            ..pb::Job::default()
        }),
        resume_token,
        event_time: Some(timestamp(Utc::now())),
    }
}

pub fn user(view: &UserView) -> pb::User {
    let user = &view.user;
    let enrollment = view.activity.latest_enrollment.as_ref();
    let last_activity = view.activity.last_job_at.max(user.managed_at);
    pb::User {
        user_id: user.user_id.clone(),
        state: match user.standing {
            Standing::Active => pb::UserState::Active,
            Standing::Deactivated => pb::UserState::Deactivated,
            Standing::Deleted => pb::UserState::Deleted,
        } as i32,
        fraud_flagged: user.fraud_flagged,
        reenrollment_allowed: user.reenrollment_allowed,
        enrollment_job_id: enrollment
            .map(|job| public_job_id(&job.job_id).to_owned())
            .unwrap_or_default(),
        enrollment_decision: enrollment
            .and_then(Job::decision)
            .map_or(pb::Decision::Unspecified, decision) as i32,
        job_count: i64::try_from(view.activity.job_count).unwrap_or(i64::MAX),
        last_activity_time: last_activity.map(timestamp),
        owner: user.owner.clone().unwrap_or_default(),
        pending_operation: user
            .pending
            .as_ref()
            .map_or(pb::UserOperation::Unspecified, |pending| operation(pending.operation))
            as i32,
        delete_time: user.deleted_at.map(timestamp),
        deleted_by: user.deleted_by.clone().unwrap_or_default(),
    }
}

fn operation(operation: Operation) -> pb::UserOperation {
    match operation {
        Operation::AllowReenrollment => pb::UserOperation::AllowReenrollment,
        Operation::Deactivate => pb::UserOperation::Deactivate,
        Operation::Reactivate => pb::UserOperation::Reactivate,
        Operation::Flag => pb::UserOperation::Flag,
        Operation::Unflag => pb::UserOperation::Unflag,
        Operation::Delete => pb::UserOperation::Delete,
    }
}

/// Resume tokens are opaque to callers: `v1.` and the global event id in hex.
pub fn resume_token(global_id: i64) -> String {
    format!("v1.{global_id:x}")
}

/// Reads a token exactly as [`resume_token`] writes it: lowercase hex without
/// sign or leading zeros, so no token has two spellings.
pub fn parse_resume_token(token: &str) -> Option<i64> {
    let digits = token.strip_prefix("v1.")?;
    let canonical = !digits.is_empty()
        && digits.len() <= 16
        && digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    i64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn only_tokens_this_service_writes_are_read() {
        assert_eq!(parse_resume_token("v1.0"), Some(0));
        assert_eq!(parse_resume_token("v1.2a"), Some(42));
        for never_issued in [
            "",
            "v1.",
            "v1.+0",
            "v1.-1",
            "v1.00",
            "v1.02a",
            "v1.2A",
            "v2.2a",
            "v1. 2a",
            "v1.8000000000000000",
            "v1.10000000000000000",
        ] {
            assert_eq!(parse_resume_token(never_issued), None, "{never_issued:?}");
        }
    }

    proptest! {
        #[test]
        fn every_issued_token_reads_back(id in 0..=i64::MAX) {
            prop_assert_eq!(parse_resume_token(&resume_token(id)), Some(id));
        }

        #[test]
        fn any_text_is_read_or_refused_without_panic(token in "\\PC{0,40}") {
            if let Some(id) = parse_resume_token(&token) {
                prop_assert_eq!(resume_token(id), token);
            }
        }
    }
}
