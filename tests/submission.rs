//! Submitting and enrolling through the stubs: results, refusals, precise errors, idempotency.
//! Black box: a real server on 127.0.0.1:0, the simulator as Smile ID, SQLite
//! in a temporary directory.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth::simulator::UserStanding;
use selfie_auth_testkit::*;
use tonic::Code;
use tonic_types::StatusExt as _;

#[tokio::test]
async fn submit_then_watch_to_the_final_result() {
    let (sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let mut request = submit_request(ENROLLED_USER, "happy-1");
    request.partner_params.insert("order_id".into(), "o-17".into());
    let response = client
        .submit_authentication(request)
        .await
        .expect("submit")
        .into_inner();
    assert!(response.created);
    let job = response.job.expect("job");
    assert_eq!(job.job_id, "happy-1");
    assert_eq!(job.state(), pb::JobState::Submitted);
    assert_eq!(job.smile_job_id.len(), 10);
    assert_eq!(job.partner_params["order_id"], "o-17");

    let mut stream = watch(&mut client, "happy-1", 0).await;
    let events = collect_events(&mut stream, 10).await;
    assert_eq!(
        kinds(&events),
        [
            pb::JobEventKind::Created,
            pb::JobEventKind::Submitted,
            pb::JobEventKind::FinalResult
        ]
    );
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 3]);
    let last = events[2].job.clone().expect("job");
    assert_eq!(
        (last.state(), last.decision()),
        (pb::JobState::Completed, pb::Decision::Approved)
    );
    assert!(
        stream.message().await.expect("clean end").is_none(),
        "stream ends with OK after the final event"
    );

    let stored = get_job(&mut client, "happy-1").await.expect("get");
    let result = stored.result.expect("result");
    assert_eq!(
        (result.result_code.as_str(), result.is_final, result.decision()),
        ("0820", true, pb::Decision::Approved)
    );
    assert_eq!(result.actions["Liveness_Check"], "Passed");
    assert!(stored.error.is_none());
    assert_eq!(sim.counters().callbacks_sent, 1);
    service.stop().await;
}

#[tokio::test]
async fn wait_for_result_returns_the_final_job_with_history_and_links() {
    let (_sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let mut request = submit_request(ENROLLED_USER, "wait-1");
    request.wait_for_result = true;
    request.include_history = true;
    request.include_image_links = true;
    request.partner_params.insert("sandbox_result".into(), "1".into());
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(10));
    let job = client
        .submit_authentication(request)
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(
        (job.state(), job.decision()),
        (pb::JobState::Completed, pb::Decision::Rejected)
    );
    assert_eq!(job.history.len(), 1);
    assert!(job.image_links["selfie_image"].starts_with("http://127.0.0.1"));
    service.stop().await;
}

#[tokio::test]
async fn png_selfie_and_eight_liveness_frames_are_accepted() {
    let (sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let mut request = submit_request(ENROLLED_USER, "png-1");
    request.selfie_image = png(80, 80, 3).into();
    request.liveness_images = (0..8).map(|i| png(32, 32, i).into()).collect();
    client.submit_authentication(request).await.expect("submit");
    let job: serde_json::Value = reqwest::get(format!("{}/_control/jobs/png-1", sim.url()))
        .await
        .expect("control")
        .json()
        .await
        .expect("json");
    assert_eq!(
        job["liveness_frames"], 8,
        "PNG frames were transcoded to JPEG the simulator accepts"
    );
    service.stop().await;
}

#[tokio::test]
async fn invalid_requests_get_precise_errors_and_change_nothing() {
    let (sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let mut truncated = jpeg(64, 64, 1);
    truncated.truncate(40);
    let cases: Vec<(&str, pb::SubmitAuthenticationRequest, &str, &str)> = vec![
        ("empty user", submit_request("", "bad-1"), "INVALID_FIELD", "user_id"),
        (
            "user charset",
            submit_request("user with spaces", "bad-2"),
            "INVALID_FIELD",
            "user_id",
        ),
        (
            "job charset",
            submit_request(ENROLLED_USER, "job/../x"),
            "INVALID_FIELD",
            "job_id",
        ),
        (
            "long job id",
            submit_request(ENROLLED_USER, &"j".repeat(101)),
            "INVALID_FIELD",
            "job_id",
        ),
        (
            "no selfie",
            pb::SubmitAuthenticationRequest {
                user_id: ENROLLED_USER.into(),
                job_id: "bad-5".into(),
                ..Default::default()
            },
            "INVALID_FIELD",
            "selfie_image",
        ),
        (
            "three frames",
            pb::SubmitAuthenticationRequest {
                liveness_images: (0..3).map(|i| jpeg(32, 32, i).into()).collect(),
                ..submit_request(ENROLLED_USER, "bad-6")
            },
            "INVALID_FIELD",
            "liveness_images",
        ),
        (
            "not an image",
            pb::SubmitAuthenticationRequest {
                selfie_image: b"GIF89a not supported".to_vec().into(),
                ..submit_request(ENROLLED_USER, "bad-7")
            },
            "INVALID_IMAGE",
            "selfie_image",
        ),
        (
            "truncated jpeg",
            pb::SubmitAuthenticationRequest {
                selfie_image: truncated.into(),
                ..submit_request(ENROLLED_USER, "bad-8")
            },
            "INVALID_IMAGE",
            "selfie_image",
        ),
        (
            "tiny image",
            pb::SubmitAuthenticationRequest {
                selfie_image: jpeg(4, 4, 1).into(),
                ..submit_request(ENROLLED_USER, "bad-9")
            },
            "INVALID_IMAGE",
            "selfie_image",
        ),
        (
            "oversized",
            pb::SubmitAuthenticationRequest {
                selfie_image: {
                    let mut big = jpeg(64, 64, 1);
                    big.resize(6 * 1024 * 1024, 0);
                    big.into()
                },
                ..submit_request(ENROLLED_USER, "bad-10")
            },
            "IMAGE_TOO_LARGE",
            "selfie_image",
        ),
        (
            "reserved param",
            pb::SubmitAuthenticationRequest {
                partner_params: [("job_type".to_owned(), "4".to_owned())].into(),
                ..submit_request(ENROLLED_USER, "bad-11")
            },
            "INVALID_FIELD",
            "partner_params",
        ),
    ];
    for (name, request, expected_reason, field) in cases {
        let job_id = request.job_id.clone();
        let status = client.submit_authentication(request).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert_eq!(reason(&status), expected_reason, "{name}");
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert!(violations.iter().any(|v| v.field == field), "{name}: {violations:?}");
        assert_eq!(details.error_info().expect("info").domain, "selfieauth.v1");
        if selfie_auth::jobs::validate::id_problem(&job_id).is_none() {
            let missing = client
                .get_job(pb::GetJobRequest {
                    job_id,
                    ..Default::default()
                })
                .await
                .expect_err("not stored");
            assert_eq!(missing.code(), Code::NotFound, "{name}: nothing was stored");
        }
    }
    // Over the transport limit: refused by the transport, and the server keeps serving.
    let mut huge = submit_request(ENROLLED_USER, "bad-huge");
    huge.selfie_image = vec![0xFF; 17 * 1024 * 1024].into();
    let status = client
        .submit_authentication(huge)
        .await
        .expect_err("too large for the transport");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    client
        .submit_authentication(submit_request(ENROLLED_USER, "after-huge"))
        .await
        .expect("still serving");
    assert_eq!(
        sim.counters().prep_uploads,
        1,
        "only the valid request reached Smile ID"
    );
    service.stop().await;
}

#[tokio::test]
async fn unknown_user_fails_with_user_not_enrolled_and_the_job_records_it() {
    let (_sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let status = client
        .submit_authentication(submit_request("stranger", "ne-1"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "USER_NOT_ENROLLED");
    assert!(status.get_error_details().precondition_failure().is_some());
    let job = get_job(&mut client, "ne-1").await.expect("get");
    assert_eq!(job.state(), pb::JobState::Failed);
    let error = job.error.expect("error");
    assert_eq!(error.code, Code::FailedPrecondition as i32);
    // The same request again replays the same answer.
    let again = client
        .submit_authentication(submit_request("stranger", "ne-1"))
        .await
        .expect_err("replayed");
    assert_eq!(reason(&again), "USER_NOT_ENROLLED");
    service.stop().await;
}

#[tokio::test]
async fn each_refusal_smile_id_gives_for_a_user_reaches_the_caller_with_its_code() {
    let (sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let standings = [
        (UserStanding::Disabled, "2207"),
        (UserStanding::Deleted, "2208"),
        (UserStanding::ReEnrollmentRequired, "2211"),
        (UserStanding::NoPhoto, "2216"),
    ];
    for (index, (standing, code)) in standings.into_iter().enumerate() {
        let user = format!("standing-{index}");
        sim.set_user(&user, standing);
        let status = client
            .submit_authentication(submit_request(&user, &format!("standing-job-{index}")))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{standing:?}");
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(info.reason, "USER_NOT_AUTHENTICATABLE", "{standing:?}");
        assert_eq!(
            info.metadata.get("smileIdCode").map(String::as_str),
            Some(code),
            "{standing:?}"
        );
        let job = get_job(&mut client, &format!("standing-job-{index}"))
            .await
            .expect("get");
        assert_eq!(job.state(), pb::JobState::Failed, "{standing:?}");
    }
    assert_eq!(sim.counters().uploads, 0, "no refused job reached the upload");
    service.stop().await;
}

#[tokio::test]
async fn a_user_enrolled_through_the_api_can_then_be_authenticated() {
    let (sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let refused = client
        .submit_authentication(submit_request("newcomer", "before-enrolment"))
        .await
        .expect_err("not enrolled yet");
    assert_eq!(reason(&refused), "USER_NOT_ENROLLED");

    let mut request = enroll_request("newcomer", "enrol-newcomer");
    request.wait_for_result = true;
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(10));
    let enrolled = client.enroll_user(request).await.expect("enrol").into_inner();
    let job = enrolled.job.expect("job");
    assert!(enrolled.created);
    assert_eq!(job.kind(), pb::JobKind::Enrollment);
    assert_eq!(
        (job.state(), job.decision()),
        (pb::JobState::Completed, pb::Decision::Approved)
    );
    assert_eq!(job.result.expect("result").result_code, "0840");
    assert_eq!(
        sim.job_type("enrol-newcomer"),
        Some(4),
        "sent to Smile ID as job_type 4"
    );

    // The same enrolment again is the same job; the same job_id cannot become an authentication.
    let again = client
        .enroll_user(enroll_request("newcomer", "enrol-newcomer"))
        .await
        .expect("idempotent")
        .into_inner();
    assert!(!again.created);
    let mut reused = submit_request("newcomer", "enrol-newcomer");
    reused.selfie_image = enroll_request("newcomer", "x").selfie_image;
    let reused = client.submit_authentication(reused).await.expect_err("another kind");
    assert_eq!(reason(&reused), "JOB_ID_REUSED");

    let authenticated = client
        .submit_authentication(submit_request("newcomer", "after-enrolment"))
        .await
        .expect("enrolled through the API")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(authenticated.kind(), pb::JobKind::Authentication);

    let twice = client
        .enroll_user(enroll_request("newcomer", "enrol-again"))
        .await
        .expect_err("enrolled already");
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert_eq!(reason(&twice), "USER_ALREADY_ENROLLED");
    let failed = get_job(&mut client, "enrol-again").await.expect("get");
    assert_eq!(
        (failed.state(), failed.kind()),
        (pb::JobState::Failed, pb::JobKind::Enrollment)
    );

    sim.set_user("disabled-newcomer", UserStanding::Disabled);
    let disabled = client
        .enroll_user(enroll_request("disabled-newcomer", "enrol-disabled"))
        .await
        .expect_err("disabled");
    assert_eq!(reason(&disabled), "USER_NOT_ENROLLABLE");
    let info = disabled.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.metadata.get("smileIdCode").map(String::as_str), Some("2207"));
    service.stop().await;
}

#[tokio::test]
async fn idempotency_on_job_id_even_under_concurrent_duplicates() {
    let (sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let first = client
        .submit_authentication(submit_request(ENROLLED_USER, "idem-1"))
        .await
        .expect("first")
        .into_inner();
    let again = client
        .submit_authentication(submit_request(ENROLLED_USER, "idem-1"))
        .await
        .expect("again")
        .into_inner();
    assert!(first.created && !again.created);
    assert_eq!(
        first.job.expect("job").smile_job_id,
        again.job.expect("job").smile_job_id
    );

    let mut different = submit_request(ENROLLED_USER, "idem-1");
    different.selfie_image = jpeg(64, 64, 99).into();
    let status = client.submit_authentication(different).await.expect_err("reused");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::AlreadyExists, "JOB_ID_REUSED")
    );

    // Sixteen concurrent identical submissions of a new job_id.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = client.clone();
        tasks.push(selfie_auth::task::spawn(async move {
            client
                .submit_authentication(submit_request(ENROLLED_USER, "idem-race"))
                .await
        }));
    }
    let mut created = 0;
    let mut smile_ids = std::collections::BTreeSet::new();
    for task in tasks {
        let response = task.await.expect("join").expect("submit").into_inner();
        created += usize::from(response.created);
        let job = response.job.expect("job");
        if !job.smile_job_id.is_empty() {
            smile_ids.insert(job.smile_job_id);
        }
    }
    assert_eq!(created, 1);
    assert!(smile_ids.len() <= 1);
    let counters = sim.counters();
    assert_eq!(counters.jobs_created_by_job_id["idem-race"], 1, "one Smile ID job");
    assert_eq!(counters.uploads_by_job_id["idem-race"], 1, "one upload");
    service.stop().await;
}

#[tokio::test]
async fn sandbox_only_params_never_reach_production() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = config_for(&sim, &sqlite_url(&dir));
    settings.service.sandbox_params_allowed = false;
    let service = start_service(settings).await;
    let mut client = service.client().await;
    let mut request = submit_request(ENROLLED_USER, "prod-1");
    request.partner_params.insert("sandbox_result".into(), "0".into());
    let status = client.submit_authentication(request).await.expect_err("refused");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::InvalidArgument, "INVALID_FIELD")
    );
    assert!(status.message().contains("sandbox"), "{}", status.message());
    assert_eq!(sim.counters().prep_uploads, 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_waiting_for_their_result_hold_no_admission_slot() {
    let sim = start_simulator(|config| config.review_delay = Duration::from_secs(3)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &["--concurrency-limit", "2"])).await;
    let client = service.client().await;
    // Ten callers wait for results that take 3 s; shed on arrival, they retry as told.
    let waiting: Vec<_> = (0..10)
        .map(|index| {
            let mut client = client.clone();
            selfie_auth::task::spawn(async move {
                loop {
                    let mut request = provisional_request(ENROLLED_USER, &format!("patient-{index}"));
                    request.wait_for_result = true;
                    let mut request = tonic::Request::new(request);
                    request.set_timeout(Duration::from_secs(20));
                    match client.submit_authentication(request).await {
                        Err(status) if reason(&status) == "OVERLOADED" => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        answer => return answer,
                    }
                }
            })
        })
        .collect();
    // Long before any result, every one of them was admitted and sent to Smile ID.
    let all_sent = eventually(Duration::from_millis(1500), || async {
        (sim.counters().jobs_created_by_job_id.len() == 10).then_some(())
    })
    .await;
    assert!(
        all_sent.is_some(),
        "only {} of 10 admitted: waiting calls hold their slots",
        sim.counters().jobs_created_by_job_id.len()
    );
    for call in waiting {
        let job = call
            .await
            .expect("join")
            .expect("answered")
            .into_inner()
            .job
            .expect("job");
        assert_eq!(job.state(), pb::JobState::Completed);
    }
    service.stop().await;
}

/// The threads that send submissions end after ten seconds without any
/// (`fair::below`'s own tests watch them end and start again); a submission
/// after that is still sent to Smile ID and accepted.
#[tokio::test]
async fn a_submission_after_the_senders_went_idle_is_sent() {
    let (sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    client
        .submit_authentication(submit_request(ENROLLED_USER, "before-idle"))
        .await
        .expect("submit");
    // Ten idle seconds, and the quarter of that between checks.
    tokio::time::sleep(Duration::from_secs(14)).await;
    let job = client
        .submit_authentication(submit_request(ENROLLED_USER, "after-idle"))
        .await
        .expect("a submission after the senders went idle")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(job.state(), pb::JobState::Submitted);
    assert_eq!(sim.counters().uploads, 2);
}
