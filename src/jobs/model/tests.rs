use super::*;
use crate::jobs::testing::result;

fn submitted() -> Job {
    let mut job = Job::for_test("j", "u");
    job.state = JobState::Submitted;
    job.submission = Submission::Accepted;
    job
}

#[test]
fn results_move_the_job_forward_only() {
    let now = Utc::now();
    let mut job = submitted();
    assert_eq!(
        job.apply_result(result("0822", false), now),
        Some(EventKind::ProvisionalResult)
    );
    assert_eq!(
        (job.state, job.smile_job_id.as_deref()),
        (JobState::Provisional, Some("0000000007"))
    );
    assert_eq!(
        job.apply_result(result("0822", false), now),
        None,
        "a duplicate changes nothing"
    );
    assert_eq!(
        job.apply_result(result("1220", true), now),
        Some(EventKind::FinalResult)
    );
    assert_eq!((job.state, job.next_poll_at), (JobState::Completed, None));
    assert_eq!(
        job.apply_result(result("0825", false), now),
        None,
        "nothing after the final result"
    );
    assert_eq!(
        job.apply_result(result("1221", true), now),
        None,
        "the first final result stands"
    );
    assert_eq!(job.decision(), Some(&Decision::Approved));
    assert_eq!(job.results.len(), 2);
}

#[test]
fn a_failed_job_takes_no_result() {
    let mut job = submitted();
    job.state = JobState::Failed;
    assert_eq!(job.apply_result(result("0820", true), Utc::now()), None);
    assert!(job.results.is_empty());
}

#[test]
fn a_scoped_job_id_is_its_callers_and_shows_as_the_job_id() {
    let alice = scoped_job_id("order-1", "spiffe://c/ns/pay/sa/alice");
    let bob = scoped_job_id("order-1", "spiffe://c/ns/pay/sa/bob");
    assert_ne!(alice, bob);
    assert_eq!(public_job_id(&alice), "order-1");
    assert_eq!(public_job_id("order-1"), "order-1");
    assert!(
        crate::jobs::validate::id_problem(&alice).is_some(),
        "no caller can name a scoped key"
    );
}

#[test]
fn event_kinds_round_trip_and_only_final_ones_end_a_stream() {
    use EventKind::*;
    for kind in [Created, Submitted, ProvisionalResult, FinalResult, Failed] {
        assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        assert_eq!(kind.is_final(), matches!(kind, FinalResult | Failed));
    }
    assert_eq!(EventKind::parse("HEARTBEAT"), None);
}

fn problem(reason: ProblemReason) -> JobProblem {
    JobProblem {
        reason,
        message: String::new(),
        smile_code: None,
    }
}

#[test]
fn take_over_waits_for_a_live_lease_and_resumes_what_may_exist() {
    let now = Utc::now();
    let later = now + chrono::Duration::seconds(90);
    let take_over = |submission: Submission| {
        let mut job = Job::for_test("j", "u");
        job.submission = submission;
        (job.take_over(now, later, true), job.submission)
    };
    let live = Submission::InFlight {
        lease_until: now + chrono::Duration::seconds(1),
    };
    assert_eq!(take_over(live.clone()), (TakeOver::Report, live));
    let lost = Submission::InFlight {
        lease_until: now - chrono::Duration::seconds(1),
    };
    let owned = Submission::InFlight { lease_until: later };
    assert_eq!(
        take_over(lost),
        (TakeOver::Resubmit { may_resume: true }, owned.clone())
    );
    assert_eq!(
        take_over(Submission::OutcomeUnknown),
        (TakeOver::Resubmit { may_resume: true }, owned.clone())
    );
    assert_eq!(
        take_over(Submission::NotSent),
        (TakeOver::Resubmit { may_resume: false }, owned)
    );
    assert_eq!(take_over(Submission::Accepted).0, TakeOver::Report);
    let mut done = submitted();
    assert_eq!(done.take_over(now, later, true), TakeOver::Report);
    let mut orphan = Job::for_test("j", "u");
    orphan.submission = Submission::InFlight {
        lease_until: now + chrono::Duration::seconds(1),
    };
    assert_eq!(
        orphan.take_over(now, later, false),
        TakeOver::Resubmit { may_resume: true },
        "alone on its store, a lease nobody here holds is a dead process's"
    );
}

#[test]
fn submission_outcomes_move_a_submitting_job_only() {
    let now = Utc::now();
    let mut job = Job::for_test("j", "u");
    assert_eq!(job.accepted("s-1", now), Some(EventKind::Submitted));
    assert_eq!(
        (job.state, job.submission.clone(), job.smile_job_id.as_deref()),
        (JobState::Submitted, Submission::Accepted, Some("s-1"))
    );
    assert_eq!(job.accepted("s-2", now), None, "accepted twice changes nothing");
    assert_eq!(job.smile_job_id.as_deref(), Some("s-1"));
    assert_eq!(
        job.outcome_unknown(Some("s-3"), problem(ProblemReason::SubmissionOutcomeUnknown), now),
        None
    );
    assert_eq!(
        job.submission,
        Submission::Accepted,
        "a late unknown outcome is ignored"
    );

    let mut job = Job::for_test("j", "u");
    let give_up = now + chrono::Duration::hours(1);
    assert_eq!(job.not_sent(problem(ProblemReason::UpstreamUnavailable), give_up), None);
    assert_eq!(
        (job.state, job.submission.clone(), job.next_poll_at),
        (JobState::Submitting, Submission::NotSent, Some(give_up))
    );
    assert_eq!(
        job.outcome_unknown(Some("s-9"), problem(ProblemReason::SubmissionOutcomeUnknown), now),
        None
    );
    assert_eq!(
        (job.submission.clone(), job.smile_job_id.as_deref()),
        (Submission::OutcomeUnknown, Some("s-9"))
    );
    assert_eq!(
        job.refused(problem(ProblemReason::UserNotEnrolled)),
        Some(EventKind::Failed)
    );
    assert_eq!((job.state, job.next_poll_at), (JobState::Failed, None));
    assert_eq!(job.refused(problem(ProblemReason::UpstreamRejected)), None);
    assert_eq!(job.problem.map(|p| p.reason), Some(ProblemReason::UserNotEnrolled));
}

#[test]
fn a_callback_overtaking_the_upload_response_keeps_its_result() {
    let now = Utc::now();
    let mut job = Job::for_test("j", "u");
    assert_eq!(
        job.apply_result(result("0820", true), now),
        Some(EventKind::FinalResult)
    );
    assert_eq!(job.accepted("0000000007", now), None);
    assert_eq!(job.state, JobState::Completed);
}

#[test]
fn polls_back_off_to_the_ceiling_then_give_up() {
    let policy = ReconcilePolicy {
        first_delay: std::time::Duration::from_secs(10),
        max_delay: std::time::Duration::from_secs(40),
        give_up_after: std::time::Duration::from_hours(1),
        ..ReconcilePolicy::default()
    };
    let mut job = submitted();
    let start = job.created_at;
    let waits: Vec<i64> = (0..4)
        .map(|_| {
            assert_eq!(job.polled(start, &policy, SmileIdKnows::Job), None);
            (job.next_poll_at.expect("scheduled") - start).num_seconds()
        })
        .collect();
    assert_eq!(waits, [20, 40, 40, 40]);
    let near_the_end = start + chrono::Duration::seconds(3590);
    job.polled(near_the_end, &policy, SmileIdKnows::Job);
    assert_eq!(
        job.next_poll_at,
        Some(start + chrono::Duration::seconds(3600)),
        "the last poll is at the give-up time"
    );
    let at_the_end = start + chrono::Duration::seconds(3600);
    assert_eq!(
        job.polled(at_the_end, &policy, SmileIdKnows::Job),
        Some(EventKind::Failed)
    );
    assert_eq!(
        (job.state, job.next_poll_at, job.problem.as_ref().map(|p| p.reason)),
        (JobState::Failed, None, Some(ProblemReason::ResultNotReceived))
    );
    assert_eq!(
        job.polled(at_the_end, &policy, SmileIdKnows::Job),
        None,
        "a final job is left alone"
    );
    assert!(
        job.takes_results(),
        "a job that was given up on still takes a genuine result"
    );
    assert_eq!(
        job.apply_result(result("1220", true), at_the_end),
        Some(EventKind::FinalResult)
    );
    assert_eq!((job.state, job.problem), (JobState::Completed, None));
}

#[test]
fn a_job_smile_id_never_received_is_abandoned_sooner() {
    let policy = ReconcilePolicy {
        abandon_after: std::time::Duration::from_mins(10),
        ..ReconcilePolicy::default()
    };
    let mut job = Job::for_test("j", "u");
    let start = job.created_at;
    assert_eq!(job.polled(start, &policy, SmileIdKnows::NoSuchJob), None);
    assert!(job.next_poll_at.expect("scheduled") <= start + chrono::Duration::seconds(600));
    let later = start + chrono::Duration::seconds(600);
    // Smile ID could not be asked: it may have the job, so it is not abandoned.
    assert_eq!(job.polled(later, &policy, SmileIdKnows::Unknown), None);
    assert_eq!(
        job.polled(later, &policy, SmileIdKnows::NoSuchJob),
        Some(EventKind::Failed)
    );
    assert_eq!(
        job.problem.as_ref().map(|p| p.reason),
        Some(ProblemReason::SubmissionAbandoned)
    );
    let refused = {
        let mut job = Job::for_test("j", "u");
        job.refused(problem(ProblemReason::UserNotEnrolled));
        job
    };
    assert!(!refused.takes_results(), "a refusal is final");
}
