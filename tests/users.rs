//! The user lifecycle through the generated stubs, against the simulator:
//! re-enrolment, deactivation, fraud flags and erasure, on SQLite and on
//! PostgreSQL replicas, with what Smile ID received checked on its side.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth::jobs::LogFilter;
use selfie_auth::simulator::{Endpoint, Fault, RunningSimulator, UserStanding};
use selfie_auth::store::PgLimits;
use selfie_auth_testkit::*;
use tonic::Code;
use tonic_types::StatusExt as _;

fn enroll_waiting(user_id: &str, job_id: &str) -> pb::EnrollUserRequest {
    pb::EnrollUserRequest {
        wait_for_result: true,
        ..enroll_request(user_id, job_id)
    }
}

fn authenticate_waiting(user_id: &str, job_id: &str) -> pb::SubmitAuthenticationRequest {
    pb::SubmitAuthenticationRequest {
        wait_for_result: true,
        ..submit_request(user_id, job_id)
    }
}

/// The next event that is not a heartbeat, within 10 s; `None` when the stream ends first.
async fn next_change(stream: &mut tonic::Streaming<pb::JobEvent>) -> Option<pb::JobEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        match next_event(stream, Duration::from_secs(10)).await {
            Some(Ok(event)) if event.kind() == pb::JobEventKind::Heartbeat => {}
            Some(Ok(event)) => return Some(event),
            _ => return None,
        }
    }
    None
}

fn smile_code(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .and_then(|info| info.metadata.get("smileIdCode").cloned())
        .unwrap_or_default()
}

/// The actions Smile ID received for `user_id`, in order.
fn actions(sim: &RunningSimulator, user_id: &str) -> Vec<String> {
    sim.user_calls()
        .into_iter()
        .filter(|call| call.user_id == user_id)
        .map(|call| call.action)
        .collect()
}

async fn get_user(client: &mut Client, user_id: &str) -> Result<pb::User, tonic::Status> {
    client
        .get_user(pb::GetUserRequest {
            user_id: user_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// What the store holds of `user_id`: jobs and events.
async fn stored_of(database_url: &str, user_id: &str) -> (u64, usize) {
    let opened = selfie_auth::store::open(database_url, PgLimits::default())
        .await
        .expect("open the store");
    let activity = opened.store.user_activity(user_id).await.expect("activity");
    let filter = LogFilter {
        user_id: Some(user_id.into()),
        owner: None,
    };
    let events = opened.store.log_events(0, &filter, 1000).await.expect("events");
    (activity.job_count, events.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_enrolment_deactivation_and_fraud_flags_end_to_end() {
    let (sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let user = "life-1";

    let enrolled = client
        .enroll_user(enroll_waiting(user, "life-enrol-1"))
        .await
        .expect("enrol")
        .into_inner();
    assert_eq!(enrolled.job.expect("job").decision(), pb::Decision::Approved);
    let again = client
        .enroll_user(enroll_waiting(user, "life-enrol-2"))
        .await
        .expect_err("a second enrolment is refused");
    assert_eq!(
        (again.code(), reason(&again)),
        (Code::FailedPrecondition, "USER_ALREADY_ENROLLED".into())
    );

    let allowed = client
        .allow_reenrollment(pb::AllowReenrollmentRequest { user_id: user.into() })
        .await
        .expect("allow re-enrolment")
        .into_inner();
    assert!(allowed.reenrollment_allowed);
    assert_eq!(allowed.state(), pb::UserState::Active);
    let repeated = client
        .allow_reenrollment(pb::AllowReenrollmentRequest { user_id: user.into() })
        .await
        .expect("repeat")
        .into_inner();
    assert_eq!(repeated, allowed, "a repeated operation answers the same user");
    assert_eq!(actions(&sim, user), ["allow_new_enroll"], "and is not sent again");
    let call = sim.user_calls().pop().expect("a call");
    assert_eq!(call.environment, "test", "the simulator is not production");

    let reenrolled = client
        .enroll_user(enroll_waiting(user, "life-enrol-3"))
        .await
        .expect("the user enrols again")
        .into_inner();
    assert_eq!(reenrolled.job.expect("job").decision(), pb::Decision::Approved);
    let seen = get_user(&mut client, user).await.expect("get user");
    assert!(!seen.reenrollment_allowed, "the enrolment used the leave");
    assert_eq!(seen.enrollment_job_id, "life-enrol-3");
    assert_eq!(seen.enrollment_decision(), pb::Decision::Approved);
    assert_eq!(
        seen.job_count, 3,
        "two enrolments that passed and the one refused between them"
    );
    // Or in one call, as the v1 upload takes it.
    let in_one_call = client
        .enroll_user(pb::EnrollUserRequest {
            allow_new_enroll: true,
            ..enroll_waiting(user, "life-enrol-4")
        })
        .await
        .expect("an enrolment that carries allow_new_enroll")
        .into_inner();
    assert_eq!(in_one_call.job.expect("job").decision(), pb::Decision::Approved);

    let deactivated = client
        .deactivate_user(pb::DeactivateUserRequest { user_id: user.into() })
        .await
        .expect("deactivate")
        .into_inner();
    assert_eq!(deactivated.state(), pb::UserState::Deactivated);
    assert_eq!(sim.user_standing(user).0, Some(UserStanding::Disabled));
    let refused = client
        .submit_authentication(authenticate_waiting(user, "life-auth-1"))
        .await
        .expect_err("a deactivated user is refused");
    assert_eq!(
        (refused.code(), reason(&refused), smile_code(&refused)),
        (
            Code::FailedPrecondition,
            "USER_NOT_AUTHENTICATABLE".into(),
            "2207".into()
        )
    );
    client
        .reactivate_user(pb::ReactivateUserRequest { user_id: user.into() })
        .await
        .expect("reactivate");
    let passed = client
        .submit_authentication(authenticate_waiting(user, "life-auth-2"))
        .await
        .expect("a reactivated user authenticates")
        .into_inner();
    assert_eq!(passed.job.expect("job").decision(), pb::Decision::Approved);

    let flagged = client
        .set_user_fraud_flag(pb::SetUserFraudFlagRequest {
            user_id: user.into(),
            flagged: true,
        })
        .await
        .expect("flag")
        .into_inner();
    assert!(flagged.fraud_flagged);
    let failed = client
        .submit_authentication(authenticate_waiting(user, "life-auth-3"))
        .await
        .expect("a flagged user's job is processed")
        .into_inner();
    assert_eq!(
        failed.job.expect("job").decision(),
        pb::Decision::Rejected,
        "and marked failed"
    );
    let unflagged = client
        .set_user_fraud_flag(pb::SetUserFraudFlagRequest {
            user_id: user.into(),
            flagged: false,
        })
        .await
        .expect("unflag")
        .into_inner();
    assert!(!unflagged.fraud_flagged);
    assert_eq!(
        actions(&sim, user),
        [
            "allow_new_enroll",
            "deactivate",
            "reactivate",
            "flag_fraud",
            "clear_fraud"
        ]
    );

    let unknown = get_user(&mut client, "never-seen").await.expect_err("unknown user");
    assert_eq!(
        (unknown.code(), reason(&unknown)),
        (Code::NotFound, "USER_NOT_FOUND".into())
    );
    let bad = get_user(&mut client, "no spaces").await.expect_err("bad id");
    assert_eq!(
        (bad.code(), reason(&bad)),
        (Code::InvalidArgument, "INVALID_FIELD".into())
    );
    service.stop().await;
}

/// Deletes `user` on `deleting` while `watching` holds a WatchJob on its
/// unfinished job and a WatchJobs of everything; checks what each saw and
/// that a late callback brings nothing back.
async fn erase_with_streams_open(sim: &RunningSimulator, deleting: &TestService, watching: &TestService) {
    let (user, other) = ("erase-me", "keep-me");
    let mut client = deleting.client().await;
    let mut watcher = watching.client().await;
    for (who, job_id) in [(user, "erase-enrol"), (other, "keep-enrol")] {
        client.enroll_user(enroll_waiting(who, job_id)).await.expect("enrol");
    }
    client
        .submit_authentication(authenticate_waiting(other, "keep-auth"))
        .await
        .expect("the other user's job");
    let mut log = watcher
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .expect("watch jobs")
        .into_inner();
    // Provisional, with the final result far off: the job stays open.
    client
        .submit_authentication(provisional_request(user, "erase-open"))
        .await
        .expect("submit");
    let mut stream = watch(&mut watcher, "erase-open", 0).await;
    let mut before = Vec::new();
    while before.last().map(pb::JobEvent::kind) != Some(pb::JobEventKind::ProvisionalResult) {
        before.push(
            next_change(&mut stream)
                .await
                .expect("the job's events up to its provisional result"),
        );
    }

    let deleted = client
        .delete_user(pb::DeleteUserRequest { user_id: user.into() })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.state(), pb::UserState::Deleted);
    assert!(deleted.delete_time.is_some());
    assert_eq!(deleted.job_count, 0, "nothing of the user is left");
    assert_eq!(sim.user_standing(user).0, Some(UserStanding::Deleted));

    let last = next_change(&mut stream).await.expect("the erasure");
    assert_eq!(last.kind(), pb::JobEventKind::Erased);
    let erased_job = last.job.clone().expect("ids");
    assert_eq!(
        (erased_job.job_id.as_str(), erased_job.user_id.as_str()),
        ("erase-open", user)
    );
    assert!(
        erased_job.result.is_none() && erased_job.partner_params.is_empty(),
        "ids only"
    );
    assert_eq!(last.sequence, before.last().expect("events").sequence + 1);
    assert!(next_change(&mut stream).await.is_none(), "the stream ended");

    let mut erased_in_log = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let event = next_change(&mut log).await.expect("log events");
        if event.kind() == pb::JobEventKind::Erased {
            erased_in_log.insert(event.job.expect("ids").job_id);
        }
        if erased_in_log.len() == 2 {
            break;
        }
    }
    assert_eq!(
        erased_in_log.into_iter().collect::<Vec<_>>(),
        ["erase-enrol", "erase-open"]
    );

    for job_id in ["erase-enrol", "erase-open"] {
        let gone = get_job(&mut watcher, job_id).await.expect_err("erased");
        assert_eq!(gone.code(), Code::NotFound, "{job_id}");
    }
    // Smile ID posts the job's results again: acknowledged, and dropped.
    let (sent, refused_callbacks) = (sim.counters().callbacks_sent, sim.counters().callbacks_failed);
    let replay = reqwest::Client::new()
        .post(format!("{}/_control/jobs/erase-open/replay", sim.url()))
        .send()
        .await
        .expect("replay");
    assert!(replay.status().is_success());
    let delivered = eventually(Duration::from_secs(5), || async {
        (sim.counters().callbacks_sent > sent).then_some(())
    })
    .await;
    assert!(delivered.is_some(), "the late callback was posted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.counters().callbacks_failed, refused_callbacks, "and acknowledged");
    assert_eq!(
        stored_of(&deleting.database_url, user).await,
        (0, 0),
        "no row of the user"
    );

    let uploads = sim.counters().prep_uploads;
    let refused = client
        .submit_authentication(submit_request(user, "erase-later"))
        .await
        .expect_err("a deleted user is refused");
    assert_eq!(
        (refused.code(), reason(&refused)),
        (Code::FailedPrecondition, "USER_DELETED".into())
    );
    assert_eq!(sim.counters().prep_uploads, uploads, "without a call to Smile ID");
    let refused = client
        .deactivate_user(pb::DeactivateUserRequest { user_id: user.into() })
        .await
        .expect_err("a deleted user cannot be managed");
    assert_eq!(reason(&refused), "USER_DELETED");
    let again = client
        .delete_user(pb::DeleteUserRequest { user_id: user.into() })
        .await
        .expect("deleting again answers the tombstone")
        .into_inner();
    assert_eq!(again, deleted);
    assert_eq!(actions(sim, user), ["delete"]);

    let kept = get_user(&mut watcher, other).await.expect("the other user");
    assert_eq!((kept.state(), kept.job_count), (pb::UserState::Active, 2), "untouched");
    let (jobs, events) = stored_of(&deleting.database_url, other).await;
    assert_eq!(jobs, 2);
    assert!(events >= 6, "{events} events of the other user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_erases_them_on_sqlite() {
    let sim = start_simulator(|config| config.review_delay = Duration::from_mins(1)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    erase_with_streams_open(&sim, &service, &service).await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_on_one_replica_erases_them_on_every_replica() {
    let Some(url) = pg_schema_url().await else { return };
    let sim = start_simulator(|config| config.review_delay = Duration::from_mins(1)).await;
    let watching = start_service(config_for(&sim, &url)).await;
    // Smile ID posts every callback to the replica holding the streams.
    let mut settings = config_for(&sim, &url);
    settings.service.callback_url = Some(watching.callback_url.clone());
    let deleting = start_service(settings).await;
    erase_with_streams_open(&sim, &deleting, &watching).await;
    deleting.stop().await;
    watching.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_smile_id_does_not_confirm_is_finished_by_the_service_after_a_restart() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = sqlite_url(&dir);
    let service = start_service(config_for(&sim, &url)).await;
    let mut client = service.client().await;
    let user = "doubt-1";
    client
        .enroll_user(enroll_waiting(user, "doubt-enrol"))
        .await
        .expect("enrol");
    sim.set_fault(
        Endpoint::BlockUser,
        Fault {
            status: Some(503),
            ..Fault::default()
        },
    );
    let mut request = tonic::Request::new(pb::DeactivateUserRequest { user_id: user.into() });
    request.set_timeout(Duration::from_secs(2));
    let doubt = client.deactivate_user(request).await.expect_err("not confirmed");
    assert_eq!(
        (doubt.code(), reason(&doubt)),
        (Code::Unavailable, "USER_OPERATION_IN_PROGRESS".into())
    );
    assert!(doubt.get_error_details().retry_info().is_some(), "says when to retry");
    let info = doubt.get_error_details().error_info().cloned().expect("error info");
    assert_eq!(info.metadata.get("operation").map(String::as_str), Some("DEACTIVATE"));
    let pending = get_user(&mut client, user).await.expect("get");
    assert_eq!(pending.pending_operation(), pb::UserOperation::Deactivate);
    assert_eq!(pending.state(), pb::UserState::Active, "not done yet");
    let other = client
        .delete_user(pb::DeleteUserRequest { user_id: user.into() })
        .await
        .expect_err("another operation waits");
    assert_eq!(reason(&other), "USER_OPERATION_IN_PROGRESS");
    service.stop().await;

    // Smile ID answers again; a new process on the same database finishes the job.
    sim.clear_faults();
    let service = start_service(config_for(&sim, &url)).await;
    let mut client = service.client().await;
    let done = eventually(Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let user = get_user(&mut client, user).await.ok()?;
            (user.state() == pb::UserState::Deactivated).then_some(user)
        }
    })
    .await
    .expect("the service carried the operation out by itself");
    assert_eq!(done.pending_operation(), pb::UserOperation::Unspecified);
    assert_eq!(sim.user_standing(user).0, Some(UserStanding::Disabled));
    let again = client
        .deactivate_user(pb::DeactivateUserRequest { user_id: user.into() })
        .await
        .expect("repeating it answers the outcome")
        .into_inner();
    assert_eq!(again.state(), pb::UserState::Deactivated);
    service.stop().await;
}

/// Erasure racing submissions and a callback of the same user leaves no row
/// of theirs and never a second Smile ID job for one job_id.
async fn erasure_races_submissions(database_url: &str) {
    let sim = start_simulator(|_| {}).await;
    let service = start_service(config_for(&sim, database_url)).await;
    let mut client = service.client().await;
    let user = "race-1";
    client
        .enroll_user(enroll_waiting(user, "race-enrol"))
        .await
        .expect("enrol");
    let mut racers = Vec::new();
    for index in 0..12 {
        let mut racer = client.clone();
        racers.push(selfie_auth::task::spawn(async move {
            let job_id = format!("race-{index}");
            let _ = racer.submit_authentication(submit_request(user, &job_id)).await;
            // The same job again: idempotent, or refused; never a second Smile ID job.
            racer.submit_authentication(submit_request(user, &job_id)).await
        }));
        if index == 4 {
            let replay = reqwest::Client::new()
                .post(format!("{}/_control/jobs/race-enrol/replay", sim.url()))
                .send();
            let mut deleter = client.clone();
            racers.push(selfie_auth::task::spawn(async move {
                let _ = replay.await;
                deleter
                    .delete_user(pb::DeleteUserRequest { user_id: user.into() })
                    .await
                    .map(|_| tonic::Response::new(pb::SubmitAuthenticationResponse::default()))
            }));
        }
    }
    for racer in racers {
        let outcome = racer.await.expect("racer");
        if let Err(status) = outcome {
            // Stored after the deletion was accepted: refused here. Stored before
            // it and sent after Smile ID deleted the user: refused there, 2208.
            let refused_there = reason(&status) == "USER_NOT_AUTHENTICATABLE" && smile_code(&status) == "2208";
            assert!(
                ["USER_DELETED", "JOB_NOT_FOUND", "SUBMISSION_IN_PROGRESS"].contains(&reason(&status).as_str())
                    || refused_there,
                "{status:?}"
            );
        }
    }
    let user_now = get_user(&mut client, user).await.expect("tombstone");
    assert_eq!(user_now.state(), pb::UserState::Deleted);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored_of(database_url, user).await, (0, 0), "no row of the user");
    for (job_id, created) in sim.counters().jobs_created_by_job_id {
        assert!(created <= 1, "{job_id} was created {created} times at Smile ID");
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_racing_submissions_leaves_nothing_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    erasure_races_submissions(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_racing_submissions_leaves_nothing_on_postgres() {
    let Some(url) = pg_schema_url().await else { return };
    erasure_races_submissions(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_operations_need_their_own_permissions_and_the_user() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[[grant]]
identities = ["spiffe://t/ns/app/*"]
permissions = ["submit", "enroll", "get", "list", "watch_job"]

[[grant]]
identities = ["spiffe://t/ns/app/sa/owner", "spiffe://t/ns/app/sa/rival"]
permissions = ["read_users", "manage_users"]

[[grant]]
identities = ["spiffe://t/ns/privacy/sa/erasure"]
permissions = ["read_users", "delete_users", "others_users"]
"#,
    )
    .expect("policy");
    let policy = policy.display().to_string();
    let flags = [
        "--trust-xfcc",
        "true",
        "--xfcc-trusted-peers",
        "127.0.0.1",
        "--policy-file",
        policy.as_str(),
    ];
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &flags)).await;
    let mut client = service.client().await;
    let (owner, rival, plain, privacy) = (
        "spiffe://t/ns/app/sa/owner",
        "spiffe://t/ns/app/sa/rival",
        "spiffe://t/ns/app/sa/plain",
        "spiffe://t/ns/privacy/sa/erasure",
    );
    client
        .enroll_user(forwarded(owner, enroll_waiting("perm-1", "perm-enrol")))
        .await
        .expect("enrol");
    let request = |user: &str| pb::DeactivateUserRequest { user_id: user.into() };

    let denied = client
        .deactivate_user(forwarded(plain, request("perm-1")))
        .await
        .expect_err("not granted by default");
    assert_eq!(
        (denied.code(), reason(&denied)),
        (Code::PermissionDenied, "NOT_PERMITTED".into())
    );
    let denied = client
        .deactivate_user(forwarded(rival, request("perm-1")))
        .await
        .expect_err("another caller's user");
    assert_eq!(
        (denied.code(), reason(&denied)),
        (Code::PermissionDenied, "USER_NOT_PERMITTED".into())
    );
    let denied = client
        .delete_user(forwarded(
            owner,
            pb::DeleteUserRequest {
                user_id: "perm-1".into(),
            },
        ))
        .await
        .expect_err("deleting is its own permission");
    assert_eq!(reason(&denied), "NOT_PERMITTED");
    assert!(actions(&sim, "perm-1").is_empty(), "nothing refused reached Smile ID");

    let done = client
        .deactivate_user(forwarded(owner, request("perm-1")))
        .await
        .expect("the owner may")
        .into_inner();
    assert_eq!((done.state(), done.owner.as_str()), (pb::UserState::Deactivated, owner));
    let deleted = client
        .delete_user(forwarded(
            privacy,
            pb::DeleteUserRequest {
                user_id: "perm-1".into(),
            },
        ))
        .await
        .expect("the privacy service may delete anyone's user")
        .into_inner();
    assert_eq!(
        (deleted.state(), deleted.deleted_by.as_str()),
        (pb::UserState::Deleted, privacy)
    );
    let hidden = get_user(&mut client, "perm-1").await.expect_err("no identity");
    assert_eq!(hidden.code(), Code::Unauthenticated);
    service.stop().await;
}
