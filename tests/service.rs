//! The SelfieAuth gRPC service, black box: a real server on 127.0.0.1:0, the
//! simulator as Smile ID, SQLite in a temporary directory.

use std::time::Duration;

use selfie_auth::config::ApiKeySetting;
use selfie_auth::grpc::pb;
use selfie_auth::simulator::{CallbackMode, Endpoint, Fault, UserStanding};
use selfie_auth_testkit::*;
use tonic::Code;
use tonic_types::StatusExt as _;

async fn setup() -> (RunningSimulator, TestService, tempfile::TempDir) {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    (sim, service, dir)
}

use selfie_auth::simulator::RunningSimulator;

fn kinds(events: &[pb::JobEvent]) -> Vec<pb::JobEventKind> {
    events.iter().map(selfie_auth::grpc::pb::JobEvent::kind).collect()
}

#[tokio::test]
async fn submit_then_watch_to_the_final_result() {
    let (sim, service, _dir) = setup().await;
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

    let stored = client
        .get_job(pb::GetJobRequest {
            job_id: "happy-1".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    let result = stored.result.expect("result");
    assert_eq!(
        (result.result_code.as_str(), result.is_final, result.decision()),
        ("0820", true, pb::Decision::Approved)
    );
    assert_eq!(result.actions["Liveness_Check"], "Passed");
    assert!(stored.error.is_none());
    assert_eq!(sim.counters().callbacks_sent, 1);
    service.running.shutdown().await;
}

#[tokio::test]
async fn wait_for_result_returns_the_final_job_with_history_and_links() {
    let (_sim, service, _dir) = setup().await;
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
    service.running.shutdown().await;
}

#[tokio::test]
async fn png_selfie_and_eight_liveness_frames_are_accepted() {
    let (sim, service, _dir) = setup().await;
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
    service.running.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_get_precise_errors_and_change_nothing() {
    let (sim, service, _dir) = setup().await;
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
    service.running.shutdown().await;
}

#[tokio::test]
async fn unknown_user_fails_with_user_not_enrolled_and_the_job_records_it() {
    let (_sim, service, _dir) = setup().await;
    let mut client = service.client().await;
    let status = client
        .submit_authentication(submit_request("stranger", "ne-1"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "USER_NOT_ENROLLED");
    assert!(status.get_error_details().precondition_failure().is_some());
    let job = client
        .get_job(pb::GetJobRequest {
            job_id: "ne-1".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(job.state(), pb::JobState::Failed);
    let error = job.error.expect("error");
    assert_eq!(error.code, Code::FailedPrecondition as i32);
    // The same request again replays the same answer.
    let again = client
        .submit_authentication(submit_request("stranger", "ne-1"))
        .await
        .expect_err("replayed");
    assert_eq!(reason(&again), "USER_NOT_ENROLLED");
    service.running.shutdown().await;
}

#[tokio::test]
async fn each_refusal_smile_id_gives_for_a_user_reaches_the_caller_with_its_code() {
    let (sim, service, _dir) = setup().await;
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
        let job = client
            .get_job(pb::GetJobRequest {
                job_id: format!("standing-job-{index}"),
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(job.state(), pb::JobState::Failed, "{standing:?}");
    }
    assert_eq!(sim.counters().uploads, 0, "no refused job reached the upload");
    service.running.shutdown().await;
}

#[tokio::test]
async fn a_user_enrolled_through_the_api_can_then_be_authenticated() {
    let (sim, service, _dir) = setup().await;
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
    let failed = client
        .get_job(pb::GetJobRequest {
            job_id: "enrol-again".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
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
    service.running.shutdown().await;
}

#[tokio::test]
async fn list_jobs_pages_a_users_jobs_newest_first_and_refuses_foreign_tokens() {
    let (_sim, service, _dir) = setup().await;
    let mut client = service.client().await;
    for index in 0..5 {
        client
            .submit_authentication(submit_request(ENROLLED_USER, &format!("list-{index}")))
            .await
            .expect("submit");
    }
    client
        .submit_authentication(submit_request("stranger", "list-other"))
        .await
        .expect_err("not enrolled, but stored as FAILED");

    let mut seen = Vec::new();
    let mut page_token = String::new();
    for _ in 0..5 {
        let page = client
            .list_jobs(pb::ListJobsRequest {
                user_id: ENROLLED_USER.into(),
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.jobs.len() <= 2);
        seen.extend(page.jobs.iter().map(|job| job.job_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ["list-4", "list-3", "list-2", "list-1", "list-0"]);

    let failed = client
        .list_jobs(pb::ListJobsRequest {
            state: pb::JobState::Failed as i32,
            kind: pb::JobKind::Authentication as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        failed.jobs.iter().map(|job| job.job_id.as_str()).collect::<Vec<_>>(),
        ["list-other"]
    );

    let first = client
        .list_jobs(pb::ListJobsRequest {
            user_id: ENROLLED_USER.into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let foreign = client
        .list_jobs(pb::ListJobsRequest {
            user_id: "stranger".into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("a token for another filter");
    assert_eq!(
        (foreign.code(), reason(&foreign)),
        (Code::InvalidArgument, "INVALID_PAGE_TOKEN".into())
    );
    for (request, field) in [
        (
            pb::ListJobsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListJobsRequest {
                state: 99,
                ..Default::default()
            },
            "state",
        ),
        (
            pb::ListJobsRequest {
                user_id: "bad user".into(),
                ..Default::default()
            },
            "user_id",
        ),
    ] {
        let refused = client.list_jobs(request).await.expect_err("invalid");
        assert_eq!(reason(&refused), "INVALID_FIELD");
        let violations = refused.get_error_details().bad_request().cloned().expect("BadRequest");
        assert_eq!(violations.field_violations[0].field, field);
    }
    service.running.shutdown().await;
}

#[tokio::test]
async fn idempotency_on_job_id_even_under_concurrent_duplicates() {
    let (sim, service, _dir) = setup().await;
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
    service.running.shutdown().await;
}

#[tokio::test]
async fn unreachable_smile_id_is_unavailable_with_retry_info_and_a_retry_succeeds() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &["--submit-retry-budget", "0s"])).await;
    let mut client = service.client().await;
    sim.set_fault(
        Endpoint::Upload,
        Fault {
            status: Some(503),
            retry_after: Some(2),
            ..Fault::default()
        },
    );
    let status = client
        .submit_authentication(submit_request(ENROLLED_USER, "down-1"))
        .await
        .expect_err("unavailable");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unavailable, "UPSTREAM_UNAVAILABLE")
    );
    assert_eq!(
        status
            .get_error_details()
            .retry_info()
            .and_then(|info| info.retry_delay),
        Some(Duration::from_secs(2))
    );
    let job = client
        .get_job(pb::GetJobRequest {
            job_id: "down-1".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(job.state(), pb::JobState::Submitting);

    reqwest::Client::new()
        .delete(format!("{}/_control/faults", sim.url()))
        .send()
        .await
        .expect("clear");
    let retried = client
        .submit_authentication(submit_request(ENROLLED_USER, "down-1"))
        .await
        .expect("retry")
        .into_inner();
    assert!(!retried.created);
    assert_eq!(retried.job.expect("job").state(), pb::JobState::Submitted);
    assert_eq!(sim.counters().jobs_created_by_job_id["down-1"], 1);
    service.running.shutdown().await;
}

#[tokio::test]
async fn transient_smile_id_failures_are_retried_by_the_service() {
    let (sim, service, _dir) = setup().await;
    let mut client = service.client().await;
    // The first prep upload is turned away, the first zip upload fails: the caller sees neither.
    for endpoint in [Endpoint::Upload, Endpoint::Put] {
        sim.set_fault(
            endpoint,
            Fault {
                status: Some(503),
                times: Some(1),
                ..Fault::default()
            },
        );
    }
    let response = client
        .submit_authentication(submit_request(ENROLLED_USER, "flaky-1"))
        .await
        .expect("accepted after the service's own retries")
        .into_inner();
    assert!(response.created);
    assert_eq!(response.job.expect("job").state(), pb::JobState::Submitted);
    assert_eq!(
        sim.counters().jobs_created_by_job_id["flaky-1"],
        1,
        "never a second Smile ID job"
    );
    service.running.shutdown().await;
}

#[tokio::test]
async fn unknown_outcome_is_retryable_and_a_retry_resumes_the_same_smile_job() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_with(&sim, &sqlite_url(&dir), &["--submit-retry-budget", "0s"]);
    config.smile.request_timeout = Duration::from_millis(500);
    config.smile.retry.max_attempts = 2;
    let service = start_service(config).await;
    let mut client = service.client().await;
    // Every zip upload fails: Smile ID has the job, without images.
    sim.set_fault(
        Endpoint::Put,
        Fault {
            status: Some(500),
            ..Fault::default()
        },
    );
    let status = client
        .submit_authentication(submit_request(ENROLLED_USER, "unk-1"))
        .await
        .expect_err("retryable");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unavailable, "SUBMISSION_OUTCOME_UNKNOWN")
    );
    assert!(status.get_error_details().retry_info().is_some());
    let job = client
        .get_job(pb::GetJobRequest {
            job_id: "unk-1".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(job.state(), pb::JobState::Submitting);
    assert_eq!(
        rpc_status_reason(&job.error.expect("error explains")),
        "SUBMISSION_OUTCOME_UNKNOWN"
    );

    reqwest::Client::new()
        .delete(format!("{}/_control/faults", sim.url()))
        .send()
        .await
        .expect("clear");
    let resumed = client
        .submit_authentication(submit_request(ENROLLED_USER, "unk-1"))
        .await
        .expect("resumed")
        .into_inner();
    assert_eq!(resumed.job.expect("job").state(), pb::JobState::Submitted);
    let counters = sim.counters();
    assert_eq!(
        counters.jobs_created_by_job_id["unk-1"], 1,
        "resumed with retry: true, not a second job"
    );
    service.running.shutdown().await;
}

#[tokio::test]
async fn get_job_errors_and_refresh() {
    let (_sim, service, _dir) = setup().await;
    let mut client = service.client().await;
    let missing = client
        .get_job(pb::GetJobRequest {
            job_id: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("missing");
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::NotFound, "JOB_NOT_FOUND")
    );
    let invalid = client
        .get_job(pb::GetJobRequest {
            job_id: "a b".into(),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);

    client
        .submit_authentication(submit_request(ENROLLED_USER, "refresh-1"))
        .await
        .expect("submit");
    let job = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let request = pb::GetJobRequest {
                job_id: "refresh-1".into(),
                refresh: true,
                include_history: true,
                include_image_links: true,
            };
            let job = client.get_job(request).await.expect("get").into_inner();
            (job.state() == pb::JobState::Completed).then_some(job)
        }
    })
    .await
    .expect("completes");
    assert_eq!(job.history.len(), 1);
    assert!(job.image_links.contains_key("selfie_image"));
    service.running.shutdown().await;
}

#[tokio::test]
async fn provisional_then_final_in_order_with_resume_across_reconnects() {
    let (_sim, service, _dir) = simulator_and_service(|config| config.review_delay = Duration::from_millis(600)).await;
    let mut client = service.client().await;
    let request = provisional_request(ENROLLED_USER, "prov-1");
    client.submit_authentication(request).await.expect("submit");

    let mut first = watch(&mut client, "prov-1", 0).await;
    let head = collect_events(&mut first, 2).await;
    assert_eq!(kinds(&head), [pb::JobEventKind::Created, pb::JobEventKind::Submitted]);
    drop(first);

    let mut second = watch(&mut client, "prov-1", 2).await;
    let tail = collect_events(&mut second, 10).await;
    assert_eq!(
        kinds(&tail),
        [pb::JobEventKind::ProvisionalResult, pb::JobEventKind::FinalResult]
    );
    assert_eq!(
        tail.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [3, 4],
        "no gap, no duplicate"
    );
    let provisional = tail[0].job.clone().expect("job");
    assert_eq!(
        (provisional.state(), provisional.decision()),
        (pb::JobState::Provisional, pb::Decision::ProvisionallyApproved)
    );
    let last = tail[1].job.clone().expect("job");
    assert_eq!(
        (
            last.state(),
            last.decision(),
            last.result.expect("r").result_code.as_str()
        ),
        (pb::JobState::Completed, pb::Decision::Approved, "1220")
    );

    // Resuming after the final event ends at once.
    let mut done = watch(&mut client, "prov-1", 4).await;
    assert!(next_event(&mut done, Duration::from_secs(2)).await.is_none());
    service.running.shutdown().await;
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    let (_sim, service, _dir) = simulator_and_service(|config| config.review_delay = Duration::from_secs(30)).await;
    let mut client = service.client().await;
    let request = provisional_request(ENROLLED_USER, "hb-1");
    client.submit_authentication(request).await.expect("submit");
    let mut stream = watch(&mut client, "hb-1", 0).await;
    let mut heartbeats = 0;
    for _ in 0..20 {
        let event = next_event(&mut stream, Duration::from_secs(2))
            .await
            .expect("item")
            .expect("ok");
        if event.kind() == pb::JobEventKind::Heartbeat {
            assert!(event.job.is_none());
            heartbeats += 1;
            if heartbeats == 2 {
                break;
            }
        }
    }
    assert_eq!(heartbeats, 2);
    service.running.shutdown().await;
}

#[tokio::test]
async fn watch_jobs_streams_every_job_filters_by_user_and_resumes_by_token() {
    let (sim, service, _dir) = setup().await;
    sim.enroll("other-user");
    let mut client = service.client().await;
    let mut all = client
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    client
        .submit_authentication(submit_request(ENROLLED_USER, "wj-1"))
        .await
        .expect("submit");
    client
        .submit_authentication(submit_request("other-user", "wj-2"))
        .await
        .expect("submit");
    let live = collect_events(&mut all, 6).await;
    assert_eq!(live.len(), 6, "3 events each for 2 jobs");
    assert!(live.iter().all(|e| !e.resume_token.is_empty()));

    let request = pb::WatchJobsRequest {
        user_id: "other-user".into(),
        from_start: true,
        ..Default::default()
    };
    let mut mine = client.watch_jobs(request).await.expect("watch").into_inner();
    let only_mine = collect_events(&mut mine, 3).await;
    assert!(
        only_mine
            .iter()
            .all(|e| e.job.as_ref().expect("job").user_id == "other-user")
    );

    // Resume after the first live event: the rest follow, in order, without the first.
    let token = live[0].resume_token.clone();
    let mut resumed = client
        .watch_jobs(pb::WatchJobsRequest {
            resume_token: token,
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    let rest = collect_events(&mut resumed, 5).await;
    let expected: Vec<_> = live[1..].iter().map(|e| e.resume_token.clone()).collect();
    assert_eq!(
        rest.iter().map(|e| e.resume_token.clone()).collect::<Vec<_>>(),
        expected
    );

    let bad = client
        .watch_jobs(pb::WatchJobsRequest {
            resume_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(
        (bad.code(), reason(&bad).as_str()),
        (Code::InvalidArgument, "INVALID_RESUME_TOKEN")
    );
    service.running.shutdown().await;
}

#[tokio::test]
async fn duplicated_and_reordered_callbacks_change_nothing_twice() {
    let sim = start_simulator(|config| config.review_delay = Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = config_for(&sim, &sqlite_url(&dir));
    // Confirmation would hide the callback body's order; test the callback path itself.
    settings.service.confirm_callbacks = false;
    settings.service.reconcile.first_delay = Duration::from_mins(1);
    let service = start_service(settings).await;
    let mut client = service.client().await;

    sim.set_callback_mode(CallbackMode::Duplicate);
    client
        .submit_authentication(submit_request(ENROLLED_USER, "dup-1"))
        .await
        .expect("submit");
    sim.set_callback_mode(CallbackMode::Reorder);
    let request = provisional_request(ENROLLED_USER, "reorder-1");
    client.submit_authentication(request).await.expect("submit");

    let mut stream = watch(&mut client, "dup-1", 0).await;
    assert_eq!(
        kinds(&collect_events(&mut stream, 10).await),
        [
            pb::JobEventKind::Created,
            pb::JobEventKind::Submitted,
            pb::JobEventKind::FinalResult
        ]
    );
    let mut stream = watch(&mut client, "reorder-1", 0).await;
    let events = collect_events(&mut stream, 10).await;
    assert_eq!(
        kinds(&events),
        [
            pb::JobEventKind::Created,
            pb::JobEventKind::Submitted,
            pb::JobEventKind::FinalResult
        ]
    );
    // The late provisional callback arrives after the final one and must not reopen the job.
    eventually(Duration::from_secs(5), || async {
        (sim.counters().callbacks_sent >= 4).then_some(())
    })
    .await
    .expect("all callbacks delivered");
    let job = client
        .get_job(pb::GetJobRequest {
            job_id: "reorder-1".into(),
            include_history: true,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (job.state(), job.result.expect("r").result_code.as_str()),
        (pb::JobState::Completed, "1220")
    );
    assert_eq!(job.history.len(), 1, "the late provisional result was not applied");
    service.running.shutdown().await;
}

#[tokio::test]
async fn dropped_callbacks_are_recovered_by_the_reconciler() {
    let (sim, service, _dir) = setup().await;
    sim.set_callback_mode(CallbackMode::Drop);
    let mut client = service.client().await;
    for job_id in ["drop-1", "drop-2"] {
        client
            .submit_authentication(submit_request(ENROLLED_USER, job_id))
            .await
            .expect("submit");
    }
    for job_id in ["drop-1", "drop-2"] {
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.into(),
                after_sequence: 2,
            })
            .await
            .expect("watch")
            .into_inner();
        let events = collect_events(&mut stream, 1).await;
        assert_eq!(kinds(&events), [pb::JobEventKind::FinalResult], "{job_id}");
    }
    assert_eq!(sim.counters().callbacks_sent, 0);
    assert!(sim.counters().job_status_by_job_id["drop-1"] >= 1);
    service.running.shutdown().await;
}

#[tokio::test]
async fn jobs_without_a_final_result_fail_after_the_give_up_time() {
    let sim = start_simulator(|config| config.review_delay = Duration::from_mins(1)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = config_for(&sim, &sqlite_url(&dir));
    settings.service.reconcile.give_up_after = Duration::from_millis(800);
    let service = start_service(settings).await;
    let mut client = service.client().await;
    let request = provisional_request(ENROLLED_USER, "giveup-1");
    client.submit_authentication(request).await.expect("submit");
    let mut stream = watch(&mut client, "giveup-1", 0).await;
    let events = collect_events(&mut stream, 10).await;
    assert_eq!(
        events.last().map(selfie_auth::grpc::pb::JobEvent::kind),
        Some(pb::JobEventKind::Failed)
    );
    let job = events.last().and_then(|e| e.job.clone()).expect("job");
    assert_eq!(job.state(), pb::JobState::Failed);
    assert_eq!(job.error.expect("error").code, Code::DeadlineExceeded as i32);
    service.running.shutdown().await;
}

#[tokio::test]
async fn callback_endpoint_refuses_forged_stale_and_oversized_posts() {
    let (_sim, service, _dir) = setup().await;
    let mut client = service.client().await;
    client
        .submit_authentication(submit_request(ENROLLED_USER, "cb-1"))
        .await
        .expect("submit");
    let http = reqwest::Client::new();
    let body = |timestamp: String, signature: String, job_id: &str| {
        serde_json::json!({"ResultCode": "0821", "IsFinalResult": "true", "SmileJobID": "0000000001",
            "PartnerParams": {"job_id": job_id, "user_id": ENROLLED_USER, "job_type": 2},
            "timestamp": timestamp, "signature": signature})
    };
    let forged_key = selfie_auth::smileid::Credentials::new(PARTNER_ID, selfie_auth::smileid::ApiKey::new("forger"));
    let (timestamp, signature) = forged_key.sign_now();
    let response = http
        .post(&service.callback_url)
        .json(&body(timestamp, signature.as_str().to_owned(), "cb-1"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 401);
    let stale = selfie_auth::smileid::signature::format_timestamp(chrono::Utc::now() - chrono::Duration::minutes(30));
    let signature = credentials().sign(&stale);
    let response = http
        .post(&service.callback_url)
        .json(&body(stale, signature.as_str().to_owned(), "cb-1"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 401);
    let response = http
        .post(&service.callback_url)
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 413);
    let response = http
        .post(&service.callback_url)
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    // Signed, for a job we never had: accepted, logged and counted.
    let (timestamp, signature) = credentials().sign_now();
    let response = http
        .post(&service.callback_url)
        .json(&body(timestamp, signature.as_str().to_owned(), "never-ours"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let metrics = http
        .get(format!("{}/metrics", service.http_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("selfie_auth_callbacks_total{outcome=\"unknown_job\"} 1"),
        "{metrics}"
    );
    // Forged, stale, oversized and malformed: every refusal is counted by its reason.
    for refused in [
        "{outcome=\"refused_signature\"} 2",
        "{outcome=\"too_large\"} 1",
        "{outcome=\"refused_malformed\"} 1",
    ] {
        assert!(
            metrics.contains(&format!("selfie_auth_callbacks_total{refused}")),
            "{refused}: {metrics}"
        );
    }
    // None of the refused callbacks touched the job (its real result is an approval).
    let job = eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            let job = client
                .get_job(pb::GetJobRequest {
                    job_id: "cb-1".into(),
                    ..Default::default()
                })
                .await
                .expect("get")
                .into_inner();
            (job.state() == pb::JobState::Completed).then_some(job)
        }
    })
    .await
    .expect("completes");
    assert_eq!(job.decision(), pb::Decision::Approved);
    service.running.shutdown().await;
}

#[tokio::test]
async fn a_restart_on_the_same_sqlite_file_keeps_every_job_and_event() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    let mut client = service.client().await;
    let mut request = submit_request(ENROLLED_USER, "restart-1");
    request.wait_for_result = true;
    let job = client
        .submit_authentication(request)
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(job.state(), pb::JobState::Completed);
    service.running.shutdown().await;

    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    let mut client = service.client().await;
    let again = client
        .get_job(pb::GetJobRequest {
            job_id: "restart-1".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (again.state(), again.smile_job_id),
        (pb::JobState::Completed, job.smile_job_id)
    );
    let mut stream = watch(&mut client, "restart-1", 0).await;
    assert_eq!(collect_events(&mut stream, 10).await.len(), 3);
    service.running.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable_and_health_follows() {
    let (_sim, service, _dir) = simulator_and_service(|config| config.review_delay = Duration::from_mins(1)).await;
    let mut client = service.client().await;
    let channel = service.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for name in ["", "selfieauth.v1.SelfieAuth"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: name.into() })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            status.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{name:?}"
        );
    }
    let mut watch_health = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "selfieauth.v1.SelfieAuth".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch_health.message().await.expect("ok").expect("status");
    assert_eq!(
        first.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let request = provisional_request(ENROLLED_USER, "shut-1");
    client.submit_authentication(request).await.expect("submit");
    let mut stream = watch(&mut client, "shut-1", 0).await;
    assert_eq!(collect_events(&mut stream, 2).await.len(), 2);

    let shutdown = selfie_auth::task::spawn(service.running.shutdown());
    let not_serving = watch_health.message().await.expect("ok").expect("status");
    assert_eq!(
        not_serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    let ended = loop {
        match next_event(&mut stream, Duration::from_secs(5)).await {
            Some(Ok(_)) => {}
            other => break other,
        }
    };
    let status = ended.expect("stream ended with a status").expect_err("an error status");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unavailable, "SHUTTING_DOWN")
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown completes")
        .expect("join");
}

#[tokio::test]
async fn reflection_lists_the_service_in_v1_and_v1alpha() {
    let (_sim, service, _dir) = setup().await;
    let channel = service.channel().await;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.message().await.expect("ok").expect("response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.clone()).collect();
    assert!(names.contains(&"selfieauth.v1.SelfieAuth".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
    // The google.rpc detail types resolve, so grpcurl can print rich errors.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.message().await.expect("ok").expect("response");
    assert!(
        matches!(
            response.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{response:?}"
    );

    // grpc.reflection.v1 lists the same services.
    use tonic_reflection::pb::v1 as reflection_v1;
    let mut reflection = reflection_v1::server_reflection_client::ServerReflectionClient::new(service.channel().await);
    let request = reflection_v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(reflection_v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = responses.message().await.expect("ok").expect("response");
    let Some(reflection_v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected {response:?}")
    };
    assert!(
        list.service.iter().any(|s| s.name == "selfieauth.v1.SelfieAuth"),
        "{list:?}"
    );
    service.running.shutdown().await;
}

#[tokio::test]
async fn excess_calls_are_shed_with_unavailable_but_health_still_answers() {
    let sim = start_simulator(|_| {}).await;
    // A zip upload that never answers keeps a submission, and so its slot, busy.
    sim.set_fault(
        Endpoint::Put,
        Fault {
            hang: true,
            ..Fault::default()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = config_for(&sim, &sqlite_url(&dir));
    settings.admissions.submissions = 1;
    let service = start_service(settings).await;
    let client = service.client().await;

    let mut holder = client.clone();
    let held = selfie_auth::task::spawn(async move {
        let mut request = tonic::Request::new(submit_request(ENROLLED_USER, "shed-1"));
        request.set_timeout(Duration::from_secs(3));
        holder.submit_authentication(request).await
    });
    let in_flight = |text: String| text.lines().any(|line| line == "selfie_auth_calls_in_flight 1");
    let metrics_url = format!("{}/metrics", service.http_url);
    let holding = eventually(Duration::from_secs(5), || {
        let url = metrics_url.clone();
        async move { in_flight(reqwest::get(url).await.ok()?.text().await.ok()?).then_some(()) }
    })
    .await;
    assert!(holding.is_some(), "the submission holds the only slot");
    let mut other = client.clone();
    let shed = other
        .submit_authentication(submit_request(ENROLLED_USER, "shed-2"))
        .await
        .expect_err("shed");
    assert_eq!(
        (shed.code(), reason(&shed).as_str()),
        (Code::Unavailable, "OVERLOADED"),
        "{shed:?}"
    );
    assert!(shed.get_error_details().retry_info().is_some());
    // Reads draw on a pool of their own: a full submission pool refuses none.
    let read = other
        .get_job(pb::GetJobRequest {
            job_id: "shed-1".into(),
            ..Default::default()
        })
        .await;
    assert!(
        read.as_ref()
            .map_or_else(|status| status.code() == Code::NotFound, |_| true),
        "a read while submissions are saturated: {read:?}"
    );
    // Health checks are never shed.
    let mut health = tonic_health::pb::health_client::HealthClient::new(service.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health answers");
    let status = held
        .await
        .expect("join")
        .expect_err("still being sent when the deadline neared");
    assert_eq!(reason(&status), "SUBMISSION_IN_PROGRESS");
    let job = other
        .get_job(pb::GetJobRequest {
            job_id: "shed-1".into(),
            ..Default::default()
        })
        .await
        .expect("served again once the slot is free")
        .into_inner();
    assert_eq!(job.state(), pb::JobState::Submitting);
    service.running.shutdown().await;
}

#[tokio::test]
async fn every_remaining_rpc_error_is_precise() {
    let (sim, service, _dir) = setup().await;
    let mut client = service.client().await;
    let missing = client
        .watch_job(pb::WatchJobRequest {
            job_id: "nope".into(),
            after_sequence: 0,
        })
        .await
        .expect_err("missing");
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::NotFound, "JOB_NOT_FOUND")
    );
    let invalid = client
        .watch_job(pb::WatchJobRequest {
            job_id: String::new(),
            after_sequence: 0,
        })
        .await
        .expect_err("empty id");
    assert_eq!(
        (invalid.code(), reason(&invalid).as_str()),
        (Code::InvalidArgument, "INVALID_FIELD")
    );
    let request = pb::WatchJobsRequest {
        user_id: "not valid!".into(),
        ..Default::default()
    };
    let invalid = client.watch_jobs(request).await.expect_err("bad user");
    assert_eq!(
        (invalid.code(), reason(&invalid).as_str()),
        (Code::InvalidArgument, "INVALID_FIELD")
    );

    // A refresh while Smile ID is down is UNAVAILABLE; the stored job is still there.
    client
        .submit_authentication(submit_request(ENROLLED_USER, "errs-1"))
        .await
        .expect("submit");
    sim.set_fault(
        Endpoint::JobStatus,
        Fault {
            status: Some(503),
            ..Fault::default()
        },
    );
    let request = pb::GetJobRequest {
        job_id: "errs-1".into(),
        refresh: true,
        ..Default::default()
    };
    let down = client.get_job(request).await.expect_err("smile id down");
    assert_eq!(
        (down.code(), reason(&down).as_str()),
        (Code::Unavailable, "UPSTREAM_UNAVAILABLE")
    );
    assert!(down.get_error_details().retry_info().is_some());
    client
        .get_job(pb::GetJobRequest {
            job_id: "errs-1".into(),
            ..Default::default()
        })
        .await
        .expect("stored");
    service.running.shutdown().await;

    // Credentials Smile ID refuses are an operator problem, not the caller's.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = config_for(&sim, &sqlite_url(&dir));
    settings.smile.api_key = ApiKeySetting::Value(selfie_auth::smileid::ApiKey::new("revoked"));
    let misconfigured = start_service(settings).await;
    let mut client = misconfigured.client().await;
    let refused = client
        .submit_authentication(submit_request(ENROLLED_USER, "errs-2"))
        .await
        .expect_err("refused");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Internal, "UPSTREAM_AUTH_FAILED")
    );
    assert!(!refused.message().contains("revoked"));
    misconfigured.running.shutdown().await;
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
    service.running.shutdown().await;
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
    service.running.shutdown().await;
}
