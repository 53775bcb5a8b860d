//! The job logic against in-memory ports: submission, take-over, results,
//! reconciliation and streams, with no socket, file or database.

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::error::{JobError, Limit, UnavailableReason};
use super::model::{EventKind, JobState, LogFilter, ProblemReason, Refusal, RefusalCause, Submission};
use super::ports::{StatusExtras, StatusFailure, StatusReport, SubmitFailure};
use super::settings::{ReconcilePolicy, ServiceConfig};
use super::testing::{Harness, SmileCall, result, submission};
use super::watch::{LogStart, WatchItem, WatchStream};

pub(super) fn harness() -> Harness {
    Harness::new(ServiceConfig::default())
}

/// A caller's deadline that leaves the service plenty of time.
pub(super) fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A harness whose submissions stop retrying at once.
pub(super) fn without_retries() -> Harness {
    Harness::new(ServiceConfig {
        submit_retry_budget: Duration::ZERO,
        ..ServiceConfig::default()
    })
}

pub(super) fn submit_call(job_id: &str, may_resume: bool) -> SmileCall {
    SmileCall::Submit {
        job_id: job_id.into(),
        may_resume,
    }
}

pub(super) fn final_status(code: &str) -> Result<StatusReport, StatusFailure> {
    Ok(StatusReport {
        complete: true,
        result: Some(result(code, true)),
        ..StatusReport::default()
    })
}

/// The kinds of the next `count` events of a stream, skipping heartbeats.
pub(super) async fn next_kinds(stream: &mut WatchStream, count: usize) -> Vec<(u64, EventKind)> {
    let mut kinds = Vec::new();
    while kinds.len() < count {
        match tokio::time::timeout(Duration::from_secs(5), stream.recv()).await {
            Ok(Some(Ok(WatchItem::Event(event)))) => kinds.push((event.sequence, event.kind)),
            Ok(Some(Ok(WatchItem::Heartbeat { .. }))) => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
    kinds
}

mod results;
mod streams;
mod submission;
