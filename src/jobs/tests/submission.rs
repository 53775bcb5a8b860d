//! Submission: creation, refusals, retries, joins and take-overs.

use super::*;
use crate::jobs::SubmitRequest;
use crate::jobs::model::{public_job_id, scoped_job_id};
use crate::jobs::settings::ImageLimits;
use crate::jobs::submission::SubmitOutput;

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
async fn a_job_stored_with_an_earlier_builds_fingerprint_still_tells_a_retry_from_a_reuse() {
    // A PNG is sent transcoded; the fingerprint was of the bytes submitted.
    let png = {
        let image = image::RgbImage::from_pixel(32, 32, image::Rgb([9, 120, 200]));
        let mut png = std::io::Cursor::new(Vec::new());
        image.write_to(&mut png, image::ImageFormat::Png).expect("encode a png");
        bytes::Bytes::from(png.into_inner())
    };
    let as_png = |mut request: crate::jobs::SubmitRequest| {
        request.selfie = png.clone();
        request
    };
    let h = harness();
    for (job_id, submitted) in [
        ("j1", submission("u", "j1", 1)),
        ("j2", as_png(submission("u", "j2", 1))),
    ] {
        let stored_before = crate::jobs::fingerprint::as_stored_before("u", &[&submitted.selfie]);
        h.service.submit(submitted, soon()).await.expect("submit");
        h.store.edit(job_id, |job| job.content_hash = stored_before);
    }

    for retry in [submission("u", "j1", 1), as_png(submission("u", "j2", 1))] {
        let output = h.service.submit(retry, soon()).await.expect("a retry of the job");
        assert!(!output.created);
    }
    for reuse in [submission("u", "j1", 2), submission("u", "j2", 1)] {
        let error = h.service.submit(reuse, soon()).await.expect_err("reused");
        assert!(matches!(error, JobError::JobIdReused { .. }), "{error:?}");
    }
    assert_eq!(h.smile.calls().len(), 2);
}

#[tokio::test]
async fn a_refusal_fails_the_job_and_is_replayed_without_calling_smile_id() {
    let h = harness();
    h.smile.answer_submit(Err(SubmitFailure::Refused(Refusal {
        cause: RefusalCause::UserNotEnrolled,
        code: "2210".into(),
        code_text: "No enrolled user found".into(),
        message: "no such user".into(),
    })));
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
    assert!(in_progress(&error), "{error:?}");
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
            assert!(answer.as_ref().is_err_and(in_progress), "{answer:?}");
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
async fn callers_take_turns_to_be_stored_and_one_finding_none_by_its_deadline_changes_nothing() {
    let h = Harness::new(ServiceConfig {
        submission_turns: 1,
        ..ServiceConfig::default()
    });
    let held = h.store.hold_creates();
    let start = |owner: &str, job_id: &str| submitted_by(&h, owner, job_id);
    // Each call reaches the gate before the next starts.
    let settle = || tokio::time::sleep(Duration::from_millis(20));
    // The greedy caller's first submission takes the only turn and waits to be stored.
    let mut calls = vec![start("greedy", "greedy-1")];
    settle().await;
    let mut late = submission("u", "honest-late", 2);
    late.owner = Some("honest".into());
    let error = h
        .service
        .submit(late, Instant::now() + Duration::from_millis(100))
        .await
        .expect_err("no turn before its deadline");
    assert!(refused_at(&error, Limit::SubmissionTurns), "{error:?}");
    assert!(h.store.kinds("honest-late").is_empty(), "nothing stored");
    // Two more of the greedy caller's wait, then one of the honest caller's.
    for (owner, job_id) in [("greedy", "greedy-2"), ("greedy", "greedy-3"), ("honest", "honest-1")] {
        calls.push(start(owner, job_id));
        settle().await;
    }
    drop(held);
    for call in calls {
        call.await.expect("join").expect("submitted");
    }
    assert_eq!(
        h.store.created(),
        ["greedy-1", "greedy-2", "honest-1", "greedy-3"],
        "the honest caller's waits behind one of the greedy caller's, not all"
    );
}

#[tokio::test]
async fn while_another_caller_has_a_submission_in_flight_a_flood_holds_only_its_share_of_the_turns() {
    let h = Harness::new(ServiceConfig {
        submission_turns: 4,
        ..ServiceConfig::default()
    });
    let held = h.store.hold_creates();
    let settle = || tokio::time::sleep(Duration::from_millis(20));
    let within = |owner: &str, job_id: &str| within(&h, owner, job_id, Duration::from_millis(100));
    // One of the honest caller's and two of the greedy caller's hold three of
    // the four turns, each waiting to be stored.
    let mut calls = vec![submitted_by(&h, "honest", "honest-1")];
    settle().await;
    calls.extend([
        submitted_by(&h, "greedy", "greedy-1"),
        submitted_by(&h, "greedy", "greedy-2"),
    ]);
    settle().await;
    // A turn is free, but two of four are the greedy caller's share while
    // the honest caller has work in flight.
    let error = within("greedy", "greedy-3")
        .await
        .expect_err("no turn beyond its share");
    assert!(refused_at(&error, Limit::SubmissionTurns), "{error:?}");
    // The honest caller's next takes it at once, and is being stored when its deadline passes.
    let error = within("honest", "honest-2").await.expect_err("its create is held");
    assert!(in_progress(&error), "{error:?}");
    drop(held);
    for call in calls {
        call.await.expect("join").expect("submitted");
    }
    until_created(&h, "honest-2").await;
    assert!(h.store.kinds("greedy-3").is_empty(), "nothing stored");
}

#[tokio::test]
async fn a_caller_whose_submission_waits_to_retry_leaves_the_others_their_whole_share() {
    let h = Harness::new(ServiceConfig {
        submission_turns: 2,
        ..ServiceConfig::default()
    });
    h.smile.answer_submit(Err(SubmitFailure::NotSent {
        retry_after: Some(Duration::from_secs(30)),
        detail: "connection refused".into(),
    }));
    let retrying = submitted_by(&h, "retrying", "retrying-1");
    for _ in 0..100 {
        if !h.smile.calls().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!retrying.is_finished(), "it waits 30 s to retry");
    // The busy caller takes both turns: the other has no work here meanwhile.
    let held = h.store.hold_creates();
    let within = |job_id: &str| within(&h, "busy", job_id, Duration::from_millis(100));
    let (first, second) = tokio::join!(within("busy-1"), within("busy-2"));
    for error in [first, second].map(|outcome| outcome.expect_err("its create is held")) {
        assert!(in_progress(&error), "each had a turn and is being stored: {error:?}");
    }
    drop(held);
    until_created(&h, "busy-2").await;
    retrying.abort();
}

#[tokio::test]
async fn while_smile_id_is_slow_one_callers_submissions_hold_at_most_its_share_of_the_memory_for_images() {
    // As many turns as the caller's submissions that find no room: they wait
    // for it without a turn.
    let h = with_images_of_1_kib(8, 4);
    h.smile.delay_submissions(Duration::from_secs(30));
    // Eight of one caller's, each waiting on Smile ID beyond its call: four
    // hold its half and are being sent, four find no room.
    let flood = futures::future::join_all(
        (0..8).map(|index| within(&h, "flood", &format!("flood-{index}"), Duration::from_millis(500))),
    );
    let honest = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        within(&h, "honest", "honest-1", Duration::from_millis(300)).await
    };
    let (flood, honest) = tokio::join!(flood, honest);
    let error = honest.expect_err("Smile ID is slow");
    assert!(in_progress(&error), "stored and being sent: {error:?}");
    let (sent, refused): (Vec<_>, Vec<_>) = flood
        .into_iter()
        .map(|outcome| outcome.expect_err("Smile ID is slow"))
        .partition(in_progress);
    assert_eq!(sent.len(), 4, "half of the memory: {refused:?}");
    for error in refused {
        assert!(
            matches!(&error, JobError::Overloaded { limit: Limit::CallerSubmissionMemory, message }
                if message.contains("its share")),
            "{error:?}"
        );
    }
    assert_eq!(h.store.created().len(), 5, "the refused are not stored");
}

#[tokio::test]
async fn submissions_waiting_for_a_turn_hold_none_of_the_memory_all_callers_share() {
    let h = with_images_of_1_kib(4, 1);
    h.smile.delay_submissions(Duration::from_secs(30));
    let held = h.store.hold_creates();
    // One of a's holds the only turn; the other three wait for it, each
    // caller's part full. Taken of the whole, they would have filled it.
    let mut calls = Vec::new();
    for (owner, job_id) in [("a", "a-1"), ("a", "a-2"), ("b", "b-1"), ("b", "b-2")] {
        calls.push(submitted_by(&h, owner, job_id));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (late, ()) = tokio::join!(within(&h, "c", "c-1", Duration::from_secs(1)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
    });
    let error = late.expect_err("Smile ID is slow");
    assert!(in_progress(&error), "room and a turn were found: {error:?}");
    assert!(h.store.created().iter().any(|job_id| job_id == "c-1"));
    for call in calls {
        call.abort();
    }
}

/// Whether `error` is a refusal because `limit` was full.
fn refused_at(error: &JobError, full: Limit) -> bool {
    matches!(error, JobError::Overloaded { limit, .. } if *limit == full)
}

fn in_progress(error: &JobError) -> bool {
    matches!(
        error,
        JobError::Unavailable {
            reason: UnavailableReason::SubmissionInProgress,
            ..
        }
    )
}

/// Waits until the job stored as `job_id` is created.
async fn until_created(h: &Harness, job_id: &str) {
    for _ in 0..100 {
        if h.store.created().iter().any(|created| created == job_id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{job_id} was never created");
}

/// `owner`'s submission of `job_id`.
fn owned_by(owner: &str, job_id: &str) -> SubmitRequest {
    let mut request = submission("u", job_id, 1);
    request.owner = Some(owner.into());
    request
}

/// `owner`'s submission of `job_id`, started on a task of its own.
fn submitted_by(h: &Harness, owner: &str, job_id: &str) -> tokio::task::JoinHandle<Result<SubmitOutput, JobError>> {
    let (service, request) = (h.service.clone(), owned_by(owner, job_id));
    crate::task::spawn(async move { service.submit(request, soon()).await })
}

/// `owner`'s submission of `job_id`, with a deadline `wait` from now.
fn within<'h>(
    h: &'h Harness,
    owner: &str,
    job_id: &str,
    wait: Duration,
) -> impl Future<Output = Result<SubmitOutput, JobError>> + use<'h> {
    h.service.submit(owned_by(owner, job_id), Instant::now() + wait)
}

/// A harness whose submissions take 1 KiB each of `memory_kib` KiB for images,
/// `turns` at once.
fn with_images_of_1_kib(memory_kib: usize, turns: usize) -> Harness {
    assert!(
        submission("u", "j", 0).selfie.len() <= 1024,
        "each submission takes 1 KiB"
    );
    Harness::new(ServiceConfig {
        submission_memory_bytes: memory_kib * 1024,
        submission_turns: turns,
        image_limits: ImageLimits {
            max_total_bytes: 2 * 1024,
            ..ImageLimits::default()
        },
        ..ServiceConfig::default()
    })
}

#[tokio::test]
async fn two_callers_sending_one_new_job_id_at_once_each_get_a_job_of_their_own_and_nothing_is_read_first() {
    let h = harness();
    let held = h.store.hold_creates();
    let (checkout, billing) = (
        submitted_by(&h, "checkout", "order-1"),
        submitted_by(&h, "billing", "order-1"),
    );
    // Both wait on their creates.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(held);
    let (checkout, billing) = (
        checkout.await.expect("join").expect("checkout's own job"),
        billing.await.expect("join").expect("billing's own job"),
    );
    for (output, owner) in [(&checkout, "checkout"), (&billing, "billing")] {
        assert!(output.created, "answered as a job_id nobody used");
        assert_eq!(output.job.owner.as_deref(), Some(owner));
        assert_eq!(public_job_id(&output.job.job_id), "order-1");
    }
    let mut stored = h.store.created();
    stored.sort();
    let mut expected = vec![checkout.job.job_id.clone(), billing.job.job_id.clone()];
    expected.sort();
    assert_eq!(stored, expected, "two jobs, under two keys");
    assert_eq!(h.smile.calls().len(), 2);
    assert_eq!(h.store.job_reads(), 0, "no job is read before it is created");
}

#[tokio::test]
async fn a_job_id_another_caller_holds_is_scoped_and_left_alone_by_the_reconciler_while_it_is_sent() {
    let h = harness();
    submitted_by(&h, "checkout", "order-1")
        .await
        .expect("join")
        .expect("checkout's job");
    h.smile.delay_submissions(Duration::from_millis(300));
    let billing = submitted_by(&h, "billing", "order-1");
    let scoped = scoped_job_id("order-1", "billing");
    until_created(&h, &scoped).await;
    // Due while it is being sent: the reconciler leaves it to its sender.
    let due = Utc::now() - chrono::Duration::seconds(1);
    h.store.edit(&scoped, |job| job.next_poll_at = Some(due));
    h.service.reconcile_due().await.expect("pass");
    let billing = billing.await.expect("join").expect("billing's own job");
    assert_eq!((billing.created, billing.job.job_id.as_str()), (true, scoped.as_str()));
    assert_eq!(h.store.job(&scoped).state, JobState::Submitted);
    assert_eq!(
        h.smile.calls(),
        [submit_call("order-1", false), submit_call(&scoped, false)],
        "sent once, and its status not asked while it was being sent"
    );
    // Its retry joins nothing of checkout's: it is billing's job, answered again.
    let again = submitted_by(&h, "billing", "order-1")
        .await
        .expect("join")
        .expect("billing's job again");
    assert_eq!((again.created, again.job.job_id), (false, scoped));
}

#[tokio::test]
async fn an_unidentified_submission_of_a_job_being_sent_here_never_sends_it_twice() {
    let h = harness();
    h.smile.delay_submissions(Duration::from_millis(300));
    let checkout = submitted_by(&h, "checkout", "order-1");
    until_created(&h, "order-1").await;
    // As a caller with authentication switched off would send it.
    let error = h
        .service
        .submit(submission("u", "order-1", 1), soon())
        .await
        .expect_err("being sent");
    assert!(in_progress(&error), "{error:?}");
    checkout.await.expect("join").expect("checkout's job");
    assert_eq!(h.smile.calls(), [submit_call("order-1", false)]);
}
