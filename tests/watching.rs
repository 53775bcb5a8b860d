//! WatchJob and WatchJobs: replay then live, resumes, heartbeats, filters.
//! Black box: a real server on 127.0.0.1:0, the simulator as Smile ID, SQLite
//! in a temporary directory.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth_testkit::*;
use tonic::Code;

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
    service.stop().await;
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
    service.stop().await;
}

#[tokio::test]
async fn watch_jobs_streams_every_job_filters_by_user_and_resumes_by_token() {
    let (sim, service, _dir) = service_with(&[]).await;
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
    service.stop().await;
}
