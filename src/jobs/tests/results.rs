//! Results: callbacks and job_status applied in order, conflicts, the reconciler.

use super::*;

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
