//! Reads: GetJob (with refresh), ListJobs pages, and the precise errors of every read.
//! Black box: a real server on 127.0.0.1:0, the simulator as Smile ID, SQLite
//! in a temporary directory.

use std::time::Duration;

use selfie_auth::config::ApiKeySetting;
use selfie_auth::grpc::pb;
use selfie_auth::simulator::{Endpoint, Fault};
use selfie_auth_testkit::*;
use tonic::Code;
use tonic_types::StatusExt as _;

#[tokio::test]
async fn list_jobs_pages_a_users_jobs_newest_first_and_refuses_foreign_tokens() {
    let (_sim, service, _dir) = service_with(&[]).await;
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
    service.stop().await;
}

#[tokio::test]
async fn get_job_errors_and_refresh() {
    let (_sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let missing = get_job(&mut client, "nope").await.expect_err("missing");
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::NotFound, "JOB_NOT_FOUND")
    );
    let invalid = get_job(&mut client, "a b").await.expect_err("invalid");
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
    service.stop().await;
}

#[tokio::test]
async fn every_remaining_rpc_error_is_precise() {
    let (sim, service, _dir) = service_with(&[]).await;
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
    get_job(&mut client, "errs-1").await.expect("stored");
    service.stop().await;

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
    misconfigured.stop().await;
}
