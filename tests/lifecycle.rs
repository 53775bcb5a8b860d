//! The process around the calls: restarts, shutdown, reflection, load shedding.
//! Black box: a real server on 127.0.0.1:0, the simulator as Smile ID, SQLite
//! in a temporary directory.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth_testkit::*;
use tonic::Code;
use tonic_types::StatusExt as _;

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
    service.stop().await;

    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    let mut client = service.client().await;
    let again = get_job(&mut client, "restart-1").await.expect("get");
    assert_eq!(
        (again.state(), again.smile_job_id),
        (pb::JobState::Completed, job.smile_job_id)
    );
    let mut stream = watch(&mut client, "restart-1", 0).await;
    assert_eq!(collect_events(&mut stream, 10).await.len(), 3);
    service.stop().await;
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
    let (_sim, service, _dir) = service_with(&[]).await;
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
    service.stop().await;
}

#[tokio::test]
async fn excess_calls_are_shed_with_unavailable_but_health_still_answers() {
    // A zip upload that never answers keeps a submission, and so its slot, busy.
    let sim = start_simulator_with_hung_uploads().await;
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
    let read = get_job(&mut other, "shed-1").await;
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
    let job = get_job(&mut other, "shed-1")
        .await
        .expect("served again once the slot is free");
    assert_eq!(job.state(), pb::JobState::Submitting);
    service.stop().await;
}
