//! Retention through the service: finished jobs go once they have been finished
//! for the configured period; unfinished ones stay.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth::simulator::CallbackMode;
use selfie_auth_testkit::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_deleted_after_the_retention_period() {
    // Nothing is polled: only retention removes jobs.
    let quiet = ["--reconcile-after", "1h", "--reconcile-max-interval", "1h"];
    let (sim, service, _dir) = service_with(&[&["--retention", "1s"][..], &quiet].concat()).await;
    let mut client = service.client().await;
    let mut request = submit_request(ENROLLED_USER, "kept-briefly");
    request.wait_for_result = true;
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(10));
    let finished = client
        .submit_authentication(request)
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(finished.state(), pb::JobState::Completed);
    // No callback and no poll for this one: it stays SUBMITTED.
    sim.set_callback_mode(CallbackMode::Drop);
    client
        .submit_authentication(submit_request(ENROLLED_USER, "still-open"))
        .await
        .expect("submit");

    let get = |job_id: &str| pb::GetJobRequest {
        job_id: job_id.into(),
        ..Default::default()
    };
    let mut gone = None;
    for _ in 0..40 {
        match client.get_job(get("kept-briefly")).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(status) => {
                gone = Some(status);
                break;
            }
        }
    }
    let status = gone.expect("the finished job is deleted within seconds");
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::NotFound, "JOB_NOT_FOUND".to_owned())
    );
    let open = client
        .get_job(get("still-open"))
        .await
        .expect("unfinished jobs stay")
        .into_inner();
    assert_eq!(open.state(), pb::JobState::Submitted);
    let listed = client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.jobs.iter().map(|job| job.job_id.as_str()).collect::<Vec<_>>(),
        ["still-open"]
    );
    let metrics = reqwest::get(format!("http://{}/metrics", service.running.http_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("selfie_auth_jobs_deleted_total 1"), "{metrics}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_jobs_are_erased_after_their_last_activity() {
    // Nothing is polled: only retention removes jobs.
    let quiet = ["--reconcile-after", "1h", "--reconcile-max-interval", "1h"];
    let (sim, service, _dir) = service_with(&[&["--retention-after-last-activity", "2s"][..], &quiet].concat()).await;
    let mut client = service.client().await;
    let mut log = client
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .expect("watch jobs")
        .into_inner();
    let mut idle = enroll_request("idle-user", "idle-enrol");
    idle.wait_for_result = true;
    client.enroll_user(idle).await.expect("enrol");
    // Another user with a job that never finishes: kept, whatever its age.
    sim.set_callback_mode(CallbackMode::Drop);
    client
        .submit_authentication(submit_request(ENROLLED_USER, "busy-open"))
        .await
        .expect("submit");

    let erased = eventually(Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            let status = get_job(&mut client, "idle-enrol").await.err()?;
            Some(status)
        }
    })
    .await
    .expect("the idle user's jobs are erased");
    assert_eq!(erased.code(), Code::NotFound);
    let mut announced = false;
    for _ in 0..200 {
        match next_event(&mut log, Duration::from_secs(5)).await {
            Some(Ok(event)) if event.kind() == pb::JobEventKind::Erased => {
                assert_eq!(event.job.expect("ids").job_id, "idle-enrol");
                announced = true;
                break;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    assert!(announced, "open streams hear of the erasure");
    // Nobody was identified, so no caller owns the user: nothing of them is left.
    let unknown = client
        .get_user(pb::GetUserRequest {
            user_id: "idle-user".into(),
        })
        .await
        .expect_err("no record of the user remains");
    assert_eq!(reason(&unknown), "USER_NOT_FOUND");
    get_job(&mut client, "busy-open")
        .await
        .expect("an unfinished job stays");
    service.stop().await;
}
