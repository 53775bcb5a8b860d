//! The job logic against in-memory ports: submission, take-over, results,
//! reconciliation and streams, with no socket, file or database.

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::error::{JobError, UnavailableReason};
use super::model::{EventKind, JobState, LogFilter, ProblemReason, Submission};
use super::ports::{StatusExtras, StatusFailure, StatusReport, SubmitFailure};
use super::settings::{ReconcilePolicy, ServiceConfig};
use super::testing::{Harness, SmileCall, result, submission};
use super::watch::{LogStart, WatchItem, WatchStream};
use crate::smileid::ErrorCode;

fn harness() -> Harness {
    Harness::new(ServiceConfig::default())
}

/// A caller's deadline that leaves the service plenty of time.
fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A harness whose submissions stop retrying at once.
fn without_retries() -> Harness {
    Harness::new(ServiceConfig {
        submit_retry_budget: Duration::ZERO,
        ..ServiceConfig::default()
    })
}

fn submit_call(job_id: &str, may_resume: bool) -> SmileCall {
    SmileCall::Submit {
        job_id: job_id.into(),
        may_resume,
    }
}

fn final_status(code: &str) -> Result<StatusReport, StatusFailure> {
    Ok(StatusReport {
        complete: true,
        result: Some(result(code, true)),
        ..StatusReport::default()
    })
}

/// The kinds of the next `count` events of a stream, skipping heartbeats.
async fn next_kinds(stream: &mut WatchStream, count: usize) -> Vec<(u64, EventKind)> {
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

#[tokio::test]
async fn a_new_job_is_created_submitted_and_recorded() {
    let h = harness();
    let output = h
        .service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    assert!(output.created);
    assert_eq!(
        (output.job.state, output.job.smile_job_id.as_deref()),
        (JobState::Submitted, Some("smile-j1"))
    );
    assert_eq!(h.store.kinds("j1"), [EventKind::Created, EventKind::Submitted]);
    assert_eq!(h.smile.calls(), [submit_call("j1", false)]);

    let again = h
        .service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("resubmit");
    assert!(!again.created);
    assert_eq!(h.smile.calls().len(), 1, "an accepted job is never sent twice");
}

#[tokio::test]
async fn the_same_job_id_with_other_content_is_refused_and_changes_nothing() {
    let h = harness();
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    let error = h
        .service
        .submit(submission("u", "j1", 2), soon())
        .await
        .expect_err("reused");
    assert!(matches!(error, JobError::JobIdReused { .. }), "{error:?}");
    assert_eq!(h.store.job("j1").version, 2);
    assert_eq!(h.smile.calls().len(), 1);
}

#[tokio::test]
async fn a_refusal_fails_the_job_and_is_replayed_without_calling_smile_id() {
    let h = harness();
    h.smile.answer_submit(Err(SubmitFailure::Refused {
        code: ErrorCode::UserNotEnrolled,
        message: "no such user".into(),
    }));
    for _ in 0..2 {
        let error = h
            .service
            .submit(submission("u", "j1", 1), soon())
            .await
            .expect_err("refused");
        let JobError::Rejected(problem) = error else {
            panic!("rejected, got {error:?}")
        };
        assert_eq!(
            (problem.reason, problem.smile_code.as_deref()),
            (ProblemReason::UserNotEnrolled, Some("2210"))
        );
    }
    assert_eq!(h.store.job("j1").state, JobState::Failed);
    assert_eq!(h.store.kinds("j1"), [EventKind::Created, EventKind::Failed]);
    assert_eq!(h.smile.calls().len(), 1);
}

#[tokio::test]
async fn transient_failures_are_retried_by_the_service() {
    let h = harness();
    h.smile.answer_submit(Err(SubmitFailure::NotSent {
        retry_after: Some(Duration::from_millis(10)),
        detail: "connection refused".into(),
    }));
    h.smile.answer_submit(Err(SubmitFailure::Unknown {
        smile_job_id: Some("s-1".into()),
        detail: "upload timed out".into(),
    }));
    let output = h
        .service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("accepted in the end");
    assert_eq!((output.created, output.job.state), (true, JobState::Submitted));
    assert_eq!(
        h.smile.calls(),
        [
            submit_call("j1", false),
            submit_call("j1", false),
            submit_call("j1", true)
        ],
        "after an unknown outcome the job is resumed, never sent afresh"
    );
}

#[tokio::test]
async fn nothing_sent_within_the_budget_is_unavailable_and_a_retry_starts_afresh() {
    let h = without_retries();
    h.smile.answer_submit(Err(SubmitFailure::NotSent {
        retry_after: Some(Duration::from_secs(3)),
        detail: "connection refused".into(),
    }));
    let error = h
        .service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect_err("unavailable");
    let JobError::Unavailable {
        reason, retry_after, ..
    } = error
    else {
        panic!("unavailable, got {error:?}")
    };
    assert_eq!(
        (reason, retry_after),
        (UnavailableReason::UpstreamUnavailable, Some(Duration::from_secs(3))),
        "Smile ID's Retry-After is passed on"
    );
    assert_eq!(h.store.job("j1").submission, Submission::NotSent);

    let retried = h.service.submit(submission("u", "j1", 1), soon()).await.expect("retry");
    assert_eq!((retried.created, retried.job.state), (false, JobState::Submitted));
    assert_eq!(
        h.smile.calls(),
        [submit_call("j1", false), submit_call("j1", false)],
        "nothing reached Smile ID, so nothing is resumed"
    );
}

#[tokio::test]
async fn an_unknown_outcome_is_unavailable_and_resumed_with_retry_on_resubmission() {
    let h = without_retries();
    h.smile.answer_submit(Err(SubmitFailure::Unknown {
        smile_job_id: Some("s-1".into()),
        detail: "upload timed out".into(),
    }));
    let error = h
        .service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect_err("retryable");
    assert!(
        matches!(
            error,
            JobError::Unavailable {
                reason: UnavailableReason::SubmissionOutcomeUnknown,
                retry_after: Some(_),
                ..
            }
        ),
        "{error:?}"
    );
    let job = h.store.job("j1");
    assert_eq!(
        (job.state, job.submission),
        (JobState::Submitting, Submission::OutcomeUnknown)
    );

    let resumed = h
        .service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("resume");
    assert_eq!(resumed.job.state, JobState::Submitted);
    assert_eq!(resumed.job.smile_job_id.as_deref(), Some("s-1"));
    assert_eq!(h.smile.calls(), [submit_call("j1", false), submit_call("j1", true)]);
}

#[tokio::test]
async fn a_submission_outlives_its_caller_and_a_retry_joins_it() {
    let h = harness();
    h.smile.delay_submissions(Duration::from_millis(300));
    let impatient = Instant::now() + Duration::from_millis(50);
    let error = h
        .service
        .submit(submission("u", "j1", 1), impatient)
        .await
        .expect_err("still running");
    assert!(
        matches!(
            error,
            JobError::Unavailable {
                reason: UnavailableReason::SubmissionInProgress,
                ..
            }
        ),
        "{error:?}"
    );
    let joined = h
        .service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("joined");
    assert_eq!((joined.created, joined.job.state), (false, JobState::Submitted));
    assert_eq!(h.smile.calls().len(), 1, "the retry joined the running attempt");

    // A caller that goes away entirely: the job is still sent.
    let service = h.service.clone();
    let caller = crate::task::spawn(async move { service.submit(submission("u", "j2", 2), soon()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    caller.abort();
    for _ in 0..100 {
        if h.store.kinds("j2").last() == Some(&EventKind::Submitted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.store.job("j2").state, JobState::Submitted);
}

#[tokio::test]
async fn a_submission_lost_with_its_process_is_taken_over() {
    for shared in [false, true] {
        let h = without_retries();
        h.store.set_shared(shared);
        h.smile.answer_submit(Err(SubmitFailure::Unknown {
            smile_job_id: None,
            detail: "crash".into(),
        }));
        let _ = h.service.submit(submission("u", "j1", 1), soon()).await;
        // As a process that died mid-upload leaves it: in flight, under a live lease.
        let lease_until = Utc::now() + chrono::Duration::seconds(60);
        h.store
            .edit("j1", |job| job.submission = Submission::InFlight { lease_until });
        let answer = h.service.submit(submission("u", "j1", 1), soon()).await;
        if shared {
            // Another replica may be sending it: wait for its lease.
            assert!(
                matches!(
                    answer,
                    Err(JobError::Unavailable {
                        reason: UnavailableReason::SubmissionInProgress,
                        ..
                    })
                ),
                "{answer:?}"
            );
            assert_eq!(h.smile.calls().len(), 1, "a live lease is left to its owner");
            let expired = Utc::now() - chrono::Duration::seconds(1);
            h.store.edit("j1", |job| {
                job.submission = Submission::InFlight { lease_until: expired }
            });
            let taken = h
                .service
                .submit(submission("u", "j1", 1), soon())
                .await
                .expect("taken over");
            assert_eq!(taken.job.state, JobState::Submitted);
        } else {
            // Alone on its store, a lease this process does not hold is a dead process's.
            assert_eq!(answer.expect("taken over at once").job.state, JobState::Submitted);
        }
        assert_eq!(h.smile.calls().last(), Some(&submit_call("j1", true)));
    }
}

#[tokio::test]
async fn a_job_smile_id_never_received_is_abandoned_and_a_later_result_still_completes_it() {
    let h = Harness::new(ServiceConfig {
        submit_retry_budget: Duration::ZERO,
        reconcile: ReconcilePolicy {
            abandon_after: Duration::from_mins(10),
            ..ReconcilePolicy::default()
        },
        ..ServiceConfig::default()
    });
    h.smile.answer_submit(Err(SubmitFailure::Unknown {
        smile_job_id: None,
        detail: "prep upload answered 502".into(),
    }));
    let _ = h.service.submit(submission("u", "j1", 1), soon()).await;
    let due = Utc::now() - chrono::Duration::seconds(1);
    h.store.edit("j1", |job| job.next_poll_at = Some(due));
    h.service.reconcile_due().await.expect("pass");
    assert_eq!(h.store.job("j1").state, JobState::Submitting, "not yet abandoned");

    let old = Utc::now() - chrono::Duration::minutes(11);
    h.store.edit("j1", |job| {
        job.created_at = old;
        job.next_poll_at = Some(due);
    });
    h.service.reconcile_due().await.expect("pass");
    let job = h.store.job("j1");
    assert_eq!(
        (job.state, job.problem.map(|problem| problem.reason)),
        (JobState::Failed, Some(ProblemReason::SubmissionAbandoned))
    );
    let error = h
        .service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect_err("abandoned");
    assert!(matches!(error, JobError::Rejected(_)), "{error:?}");

    h.smile.answer_status(final_status("1220"));
    let (job, _) = h
        .service
        .refresh("j1", StatusExtras::default())
        .await
        .expect("a late result");
    assert_eq!((job.state, job.problem), (JobState::Completed, None));
}

#[tokio::test]
async fn results_move_provisional_to_final_and_a_late_provisional_changes_nothing() {
    let h = harness();
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    h.smile.answer_status(Ok(StatusReport {
        result: Some(result("0822", false)),
        ..StatusReport::default()
    }));
    h.smile.answer_status(final_status("1220"));
    h.smile.answer_status(Ok(StatusReport {
        result: Some(result("0825", false)),
        ..StatusReport::default()
    }));
    let options = StatusExtras::default();
    let (job, _) = h.service.refresh("j1", options).await.expect("provisional");
    assert_eq!(job.state, JobState::Provisional);
    let (job, _) = h.service.refresh("j1", options).await.expect("final");
    assert_eq!(job.state, JobState::Completed);
    let (job, _) = h.service.refresh("j1", options).await.expect("late");
    assert_eq!((job.state, job.results.len()), (JobState::Completed, 2));
    assert_eq!(
        h.store.kinds("j1"),
        [
            EventKind::Created,
            EventKind::Submitted,
            EventKind::ProvisionalResult,
            EventKind::FinalResult
        ]
    );
}

#[tokio::test]
async fn conflicting_writes_are_retried_and_endless_conflict_is_retryable() {
    let h = harness();
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    h.store.inject_conflicts(5);
    h.smile.answer_status(final_status("1220"));
    let (job, _) = h
        .service
        .refresh("j1", StatusExtras::default())
        .await
        .expect("written after conflicts");
    assert_eq!(job.state, JobState::Completed);

    h.service
        .submit(submission("u", "j2", 2), soon())
        .await
        .expect("submit");
    h.store.inject_conflicts(1000);
    h.smile.answer_status(final_status("1220"));
    let error = h
        .service
        .refresh("j2", StatusExtras::default())
        .await
        .expect_err("gives up");
    assert!(
        matches!(
            error,
            JobError::Unavailable {
                reason: UnavailableReason::Contention,
                ..
            }
        ),
        "{error:?}"
    );
    h.store.inject_conflicts(0);
    assert_eq!(h.store.job("j2").state, JobState::Submitted, "nothing half-written");
}

#[tokio::test]
async fn the_reconciler_polls_due_jobs_backs_off_and_gives_up() {
    let h = Harness::new(ServiceConfig {
        reconcile: ReconcilePolicy {
            first_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(40),
            give_up_after: Duration::from_hours(1),
            ..ReconcilePolicy::default()
        },
        ..ServiceConfig::default()
    });
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    assert_eq!(h.service.reconcile_due().await.expect("pass"), 0, "not due yet");

    let due = Utc::now() - chrono::Duration::seconds(1);
    h.store.edit("j1", |job| job.next_poll_at = Some(due));
    assert_eq!(h.service.reconcile_due().await.expect("pass"), 1);
    let job = h.store.job("j1");
    assert_eq!((job.state, job.poll_attempts), (JobState::Submitted, 1));
    let wait = job.next_poll_at.expect("scheduled") - Utc::now();
    assert!(wait > chrono::Duration::seconds(15), "backed off: {wait}");

    let old = Utc::now() - chrono::Duration::hours(2);
    h.store.edit("j1", |job| {
        job.created_at = old;
        job.next_poll_at = Some(due);
    });
    h.service.reconcile_due().await.expect("pass");
    let job = h.store.job("j1");
    assert_eq!(
        (job.state, job.problem.map(|problem| problem.reason)),
        (JobState::Failed, Some(ProblemReason::ResultNotReceived))
    );
    assert_eq!(h.store.kinds("j1").last(), Some(&EventKind::Failed));
    assert_eq!(
        h.smile.calls()[1..],
        [
            SmileCall::Status { job_id: "j1".into() },
            SmileCall::Status { job_id: "j1".into() }
        ]
    );
}

#[tokio::test]
async fn the_reconciler_completes_a_job_from_job_status() {
    let h = harness();
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    let due = Utc::now() - chrono::Duration::seconds(1);
    h.store.edit("j1", |job| job.next_poll_at = Some(due));
    h.smile.answer_status(final_status("0820"));
    h.service.reconcile_due().await.expect("pass");
    let job = h.store.job("j1");
    assert_eq!((job.state, job.next_poll_at), (JobState::Completed, None));
}

#[tokio::test]
async fn a_watch_replays_then_goes_live_with_no_seam() {
    let h = harness();
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    let mut stream = h.service.watch_job("j1", 0).await.expect("watch");
    // On this single-threaded runtime the stream has not read yet: this event
    // lands between its subscription and its first read, the seam.
    h.smile.answer_status(Ok(StatusReport {
        result: Some(result("0822", false)),
        ..StatusReport::default()
    }));
    h.service
        .refresh("j1", StatusExtras::default())
        .await
        .expect("provisional");
    assert_eq!(
        next_kinds(&mut stream, 3).await,
        [
            (1, EventKind::Created),
            (2, EventKind::Submitted),
            (3, EventKind::ProvisionalResult)
        ]
    );
    h.smile.answer_status(final_status("1220"));
    h.service.refresh("j1", StatusExtras::default()).await.expect("final");
    assert_eq!(next_kinds(&mut stream, 1).await, [(4, EventKind::FinalResult)]);
    assert!(stream.recv().await.is_none(), "the stream ends after the final event");

    let mut resumed = h.service.watch_job("j1", 3).await.expect("resume");
    assert_eq!(next_kinds(&mut resumed, 1).await, [(4, EventKind::FinalResult)]);
    assert!(resumed.recv().await.is_none());
}

#[tokio::test]
async fn a_log_watch_filters_by_user_and_rides_out_failed_reads() {
    let h = harness();
    h.service
        .submit(submission("alice", "a1", 1), soon())
        .await
        .expect("submit");
    let mut alice = h
        .service
        .watch_log(
            LogFilter {
                user_id: Some("alice".into()),
                owner: None,
            },
            LogStart::Beginning,
        )
        .await
        .expect("watch");
    h.store.fail_reads(3);
    h.service
        .submit(submission("bob", "b1", 2), soon())
        .await
        .expect("submit");
    h.service
        .submit(submission("alice", "a2", 3), soon())
        .await
        .expect("submit");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(5), alice.recv()).await {
            Ok(Some(Ok(WatchItem::Event(event)))) => seen.push((event.job.job_id.clone(), event.kind)),
            Ok(Some(Ok(WatchItem::Heartbeat { .. }))) => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("a1".to_owned(), EventKind::Created),
            ("a1".to_owned(), EventKind::Submitted),
            ("a2".to_owned(), EventKind::Created),
            ("a2".to_owned(), EventKind::Submitted)
        ]
    );
}

#[tokio::test]
async fn a_submit_may_wait_for_the_final_result() {
    let h = harness();
    let service = h.service.clone();
    let waiting = crate::task::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let output = service.submit(submission("u", "j1", 1), deadline).await?;
        let job = service.wait_for_final(&output.job.job_id, deadline).await?;
        Ok::<_, JobError>(job)
    });
    // Let the submission be accepted (its images are checked on the blocking pool) and start waiting.
    for _ in 0..1000 {
        if h.store.kinds("j1").last() == Some(&EventKind::Submitted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.smile.answer_status(final_status("1220"));
    h.service.refresh("j1", StatusExtras::default()).await.expect("final");
    let job = waiting.await.expect("joined").expect("submit");
    assert_eq!(job.state, JobState::Completed);
}

#[tokio::test]
async fn log_watchers_at_the_same_place_share_their_reads() {
    let h = harness();
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(
            h.service
                .watch_log(LogFilter::default(), LogStart::Now)
                .await
                .expect("watch"),
        );
    }
    let before = h.store.log_reads();
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    for stream in &mut streams {
        assert_eq!(
            next_kinds(stream, 2).await,
            [(1, EventKind::Created), (2, EventKind::Submitted)]
        );
    }
    let reads = h.store.log_reads() - before;
    assert!(reads <= 8, "{reads} log reads for 20 streams and 2 events");
}

#[tokio::test]
async fn open_streams_are_bounded_and_a_closed_one_frees_its_slot() {
    let h = Harness::new(ServiceConfig {
        max_open_streams: 2,
        ..ServiceConfig::default()
    });
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    let first = h.service.watch_job("j1", 0).await.expect("first");
    let _second = h
        .service
        .watch_log(LogFilter::default(), LogStart::Now)
        .await
        .expect("second");
    let refused = h.service.watch_job("j1", 0).await.expect_err("over the bound");
    assert!(
        matches!(
            refused,
            JobError::Unavailable {
                reason: UnavailableReason::Overloaded,
                ..
            }
        ),
        "{refused:?}"
    );
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(stream) = h.service.watch_job("j1", 0).await {
            reopened = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reopened.is_some(), "the slot of a closed stream is free again");
}
