//! Smile ID unreachable, failing, unsure or silent: the service finishes every job itself.
//! Black box: a real server on 127.0.0.1:0, the simulator as Smile ID, SQLite
//! in a temporary directory.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth::simulator::{CallbackMode, Endpoint, Fault};
use selfie_auth_testkit::*;
use tonic::Code;
use tonic_types::StatusExt as _;

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
    let job = get_job(&mut client, "down-1").await.expect("get");
    assert_eq!(job.state(), pb::JobState::Submitting);

    sim.clear_faults();
    let retried = client
        .submit_authentication(submit_request(ENROLLED_USER, "down-1"))
        .await
        .expect("retry")
        .into_inner();
    assert!(!retried.created);
    assert_eq!(retried.job.expect("job").state(), pb::JobState::Submitted);
    assert_eq!(sim.counters().jobs_created_by_job_id["down-1"], 1);
    service.stop().await;
}

#[tokio::test]
async fn transient_smile_id_failures_are_retried_by_the_service() {
    let (sim, service, _dir) = service_with(&[]).await;
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
    service.stop().await;
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
    let job = get_job(&mut client, "unk-1").await.expect("get");
    assert_eq!(job.state(), pb::JobState::Submitting);
    assert_eq!(
        rpc_status_reason(&job.error.expect("error explains")),
        "SUBMISSION_OUTCOME_UNKNOWN"
    );

    sim.clear_faults();
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
    service.stop().await;
}

#[tokio::test]
async fn dropped_callbacks_are_recovered_by_the_reconciler() {
    let (sim, service, _dir) = service_with(&[]).await;
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
    service.stop().await;
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
    service.stop().await;
}

#[tokio::test]
async fn a_send_still_retrying_after_its_call_gave_up_finishes_when_smile_id_returns() {
    let (sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    sim.set_fault(
        Endpoint::Upload,
        Fault {
            status: Some(503),
            retry_after: Some(1),
            ..Fault::default()
        },
    );
    let mut request = tonic::Request::new(submit_request(ENROLLED_USER, "outlives-1"));
    request.set_timeout(Duration::from_secs(1));
    let status = client
        .submit_authentication(request)
        .await
        .expect_err("Smile ID is down");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{status:?}"
    );
    // No other submission arrives for longer than the submissions' threads
    // wait before they end (ten idle seconds, `IDLE_FOR` in `grpc/apart.rs`,
    // checked every quarter of that): the send must go on regardless.
    tokio::time::sleep(Duration::from_secs(15)).await;
    sim.clear_faults();
    let submitted = eventually(Duration::from_mins(1), || {
        let mut client = client.clone();
        async move {
            let job = get_job(&mut client, "outlives-1").await.ok()?;
            (job.state() != pb::JobState::Submitting).then_some(job)
        }
    })
    .await
    .expect("the service finished sending the job itself");
    assert_eq!(submitted.state(), pb::JobState::Submitted);
    assert_eq!(sim.counters().jobs_created_by_job_id["outlives-1"], 1);
    service.stop().await;
}
