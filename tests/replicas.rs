//! Several replicas on one PostgreSQL: a callback lands on any replica, a stream
//! on another, a retry on a third; nothing is lost, duplicated or reordered.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth::simulator::{CallbackMode, RunningSimulator};
use selfie_auth_testkit::*;
use tonic::Code;

/// Replica settings whose streams only learn of other replicas' events through
/// LISTEN/NOTIFY: heartbeats (which also re-read the store) are far apart.
fn replica_settings(sim: &RunningSimulator, database_url: &str) -> selfie_auth::config::Config {
    let mut settings = config_for(sim, database_url);
    settings.service.heartbeat_interval = Duration::from_secs(30);
    settings
}

/// Three replicas on one fresh schema; each job's callback goes to replica B.
async fn three_replicas(sim: &RunningSimulator, database_url: &str) -> [TestService; 3] {
    let b = start_service(replica_settings(sim, database_url)).await;
    let mut a_settings = replica_settings(sim, database_url);
    a_settings.service.callback_url = Some(b.callback_url.clone());
    let a = start_service(a_settings).await;
    let mut c_settings = replica_settings(sim, database_url);
    c_settings.service.callback_url = Some(b.callback_url.clone());
    let c = start_service(c_settings).await;
    [a, b, c]
}

fn kinds(events: &[pb::JobEvent]) -> Vec<pb::JobEventKind> {
    events.iter().map(selfie_auth::grpc::pb::JobEvent::kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_on_a_callback_on_b_stream_on_c() {
    let Some(url) = pg_schema_url().await else { return };
    let sim = start_simulator(|config| config.review_delay = Duration::from_millis(400)).await;
    let [a, b, c] = three_replicas(&sim, &url).await;
    let mut watcher = c.client().await;
    let mut log = watcher
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .expect("watch jobs")
        .into_inner();

    let request = provisional_request(ENROLLED_USER, "rep-1");
    let submitted = a
        .client()
        .await
        .submit_authentication(request)
        .await
        .expect("submit on A")
        .into_inner();
    assert!(submitted.created);
    let mut stream = watch(&mut watcher, "rep-1", 0).await;
    let events = collect_events(&mut stream, 10).await;
    assert_eq!(
        kinds(&events),
        [
            pb::JobEventKind::Created,
            pb::JobEventKind::Submitted,
            pb::JobEventKind::ProvisionalResult,
            pb::JobEventKind::FinalResult
        ]
    );
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 3, 4]);
    // The live WatchJobs stream on C saw A's and B's writes, in order.
    let live = collect_events(&mut log, 4).await;
    assert_eq!(live.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(
        metric_total(&b, "selfie_auth_callbacks_total").await >= 2,
        "callbacks went to B"
    );
    assert_eq!(metric_total(&a, "selfie_auth_callbacks_total").await, 0);
    for service in [a, b, c] {
        service.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_on_another_replica_when_its_replica_dies() {
    let Some(url) = pg_schema_url().await else { return };
    let sim = start_simulator(|config| config.review_delay = Duration::from_millis(800)).await;
    let [a, b, c] = three_replicas(&sim, &url).await;
    let request = provisional_request(ENROLLED_USER, "rep-kill");
    a.client().await.submit_authentication(request).await.expect("submit");

    let mut on_c = watch(&mut c.client().await, "rep-kill", 0).await;
    let mut head = collect_events(&mut on_c, 2).await;
    c.stop().await;
    // Events already on the wire may still arrive; the stream then ends with UNAVAILABLE.
    let ended = loop {
        match next_event(&mut on_c, Duration::from_secs(5)).await {
            Some(Ok(event)) if event.kind() == pb::JobEventKind::Heartbeat => {}
            Some(Ok(event)) => head.push(event),
            other => break other,
        }
    };
    if let Some(Err(status)) = ended {
        assert_eq!(status.code(), Code::Unavailable);
    }
    let last_seen = head.last().map(|e| e.sequence).expect("events");

    let mut on_a = watch(&mut a.client().await, "rep-kill", last_seen).await;
    let tail = collect_events(&mut on_a, 10).await;
    let sequences: Vec<u64> = head.iter().chain(&tail).map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4], "no gap and no duplicate across replicas");
    assert_eq!(
        tail.last().map(selfie_auth::grpc::pb::JobEvent::kind),
        Some(pb::JobEventKind::FinalResult)
    );
    for service in [a, b] {
        service.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_across_replicas_make_one_upload() {
    let Some(url) = pg_schema_url().await else { return };
    let sim = start_simulator(|_| {}).await;
    let replicas = three_replicas(&sim, &url).await;
    let mut tasks = Vec::new();
    for service in &replicas {
        for _ in 0..5 {
            let mut client = service.client().await;
            tasks.push(selfie_auth::task::spawn(async move {
                client
                    .submit_authentication(submit_request(ENROLLED_USER, "rep-dup"))
                    .await
            }));
        }
    }
    let mut created = 0;
    let mut retried = 0;
    for task in tasks {
        let response = match task.await.expect("join") {
            Ok(response) => response.into_inner(),
            // Another replica is sending it: the caller retries, as told.
            Err(status) => {
                assert_eq!(
                    (status.code(), reason(&status).as_str()),
                    (Code::Unavailable, "SUBMISSION_IN_PROGRESS")
                );
                retried += 1;
                let client = replicas[0].client().await;
                let retry = eventually(Duration::from_secs(10), || {
                    let mut client = client.clone();
                    async move {
                        client
                            .submit_authentication(submit_request(ENROLLED_USER, "rep-dup"))
                            .await
                            .ok()
                    }
                })
                .await;
                retry.expect("a retry succeeds").into_inner()
            }
        };
        created += usize::from(response.created);
    }
    assert_eq!(created, 1, "{retried} duplicates retried");
    let counters = sim.counters();
    assert_eq!(counters.jobs_created_by_job_id["rep-dup"], 1);
    assert_eq!(counters.uploads_by_job_id["rep-dup"], 1);
    for service in replicas {
        service.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_callbacks_are_polled_by_exactly_one_reconciler() {
    let Some(url) = pg_schema_url().await else { return };
    let sim = start_simulator(|_| {}).await;
    sim.set_callback_mode(CallbackMode::Drop);
    // The first poll comes well after every submission has finished, so one poll per job
    // finds its final result: a second poll could only come from another replica.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut settings = replica_settings(&sim, &url);
        settings.service.reconcile.first_delay = Duration::from_secs(2);
        replicas.push(start_service(settings).await);
    }
    let job_ids: Vec<String> = (0..9).map(|i| format!("rep-lost-{i}")).collect();
    for (index, job_id) in job_ids.iter().enumerate() {
        let mut client = replicas[index % 3].client().await;
        client
            .submit_authentication(submit_request(ENROLLED_USER, job_id))
            .await
            .expect("submit");
    }
    let mut client = replicas[0].client().await;
    for job_id in &job_ids {
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.clone(),
                after_sequence: 2,
            })
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(
            kinds(&collect_events(&mut stream, 1).await),
            [pb::JobEventKind::FinalResult],
            "{job_id}"
        );
    }
    // Give the other reconcilers time to (wrongly) poll again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let counters = sim.counters();
    for job_id in &job_ids {
        assert_eq!(counters.job_status_by_job_id[job_id], 1, "{job_id} polled once");
    }
    let polls: u64 = {
        let mut total = 0;
        for service in &replicas {
            total += metric_total(service, "selfie_auth_reconcile_polls_total").await;
        }
        total
    };
    assert_eq!(polls, job_ids.len() as u64);
    for service in replicas {
        service.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_loses_no_acknowledged_callback_and_readiness_follows_it() {
    let Some(url) = pg_schema_url().await else { return };
    let upstream: std::net::SocketAddr = "127.0.0.1:5432".parse().expect("addr");
    let proxy = CuttableProxy::start(upstream).await;
    let sim = start_simulator(|_| {}).await;
    sim.set_callback_mode(CallbackMode::Drop);
    let mut settings = config_for(&sim, &pg_url_via(&url, proxy.addr));
    settings.service.confirm_callbacks = false;
    settings.service.reconcile.first_delay = Duration::from_mins(10);
    settings.database_limits.acquire_timeout = Duration::from_millis(500);
    settings.database_limits.statement_timeout = Duration::from_millis(500);
    let service = start_service(settings).await;
    let mut client = service.client().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(service.channel().await);

    let mut smile_ids = Vec::new();
    for i in 0..6 {
        let job = client
            .submit_authentication(submit_request(ENROLLED_USER, &format!("db-{i}")))
            .await
            .expect("submit")
            .into_inner()
            .job
            .expect("job");
        smile_ids.push(job.smile_job_id);
    }
    let http = reqwest::Client::new();
    let post_callback = |i: usize| {
        let (timestamp, signature) = credentials().sign_now();
        let body = serde_json::json!({"ResultCode": "0820", "IsFinalResult": "true", "SmileJobID": smile_ids[i],
            "PartnerParams": {"job_id": format!("db-{i}"), "user_id": ENROLLED_USER, "job_type": 2},
            "timestamp": timestamp, "signature": signature.as_str()});
        let request = http.post(&service.callback_url).json(&body);
        async move { request.send().await.map_or(0, |response| response.status().as_u16()) }
    };
    let mut acknowledged = Vec::new();
    assert_eq!(post_callback(0).await, 200);
    acknowledged.push(0);

    proxy.cut();
    let check = |health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "selfieauth.v1.SelfieAuth".into(),
                })
                .await
                .map(|r| r.into_inner().status())
                .ok()
        }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    let went_down = eventually(Duration::from_secs(10), || {
        let check = check(&mut health);
        async move { (check.await == Some(ServingStatus::NotServing)).then_some(()) }
    })
    .await;
    assert!(
        went_down.is_some(),
        "readiness goes NOT_SERVING while the database is unreachable"
    );
    for i in 1..4 {
        let status = post_callback(i).await;
        assert_ne!(
            status, 200,
            "a callback is never acknowledged while it cannot be stored"
        );
    }
    let lookup = get_job(&mut client, "db-0").await.expect_err("db down");
    assert_eq!(
        (lookup.code(), reason(&lookup).as_str()),
        (Code::Unavailable, "DATABASE_UNAVAILABLE")
    );

    proxy.restore();
    let came_back = eventually(Duration::from_secs(15), || {
        let check = check(&mut health);
        async move { (check.await == Some(ServingStatus::Serving)).then_some(()) }
    })
    .await;
    assert!(came_back.is_some(), "SERVING again without a restart");
    for i in 1..6 {
        // Smile ID would retry the refused ones; so do we.
        let status = eventually(Duration::from_secs(10), || async move {
            (post_callback(i).await == 200).then_some(200)
        })
        .await;
        assert_eq!(status, Some(200));
        acknowledged.push(i);
    }
    for i in acknowledged {
        let job = get_job(&mut client, &format!("db-{i}")).await.expect("get");
        assert_eq!(
            job.state(),
            pb::JobState::Completed,
            "db-{i}: an acknowledged callback is stored"
        );
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_catches_up_after_its_replicas_listener_connection_drops() {
    let Some(url) = pg_schema_url().await else { return };
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().expect("addr")).await;
    let sim = start_simulator(|_| {}).await;
    sim.set_callback_mode(CallbackMode::Drop);
    let quiet = |database_url: &str| {
        let mut settings = replica_settings(&sim, database_url);
        settings.service.confirm_callbacks = false;
        settings.service.reconcile.first_delay = Duration::from_mins(10);
        settings.readiness_interval = Duration::from_secs(30);
        settings
    };
    let a = start_service(quiet(&url)).await;
    let c = start_service(quiet(&pg_url_via(&url, proxy.addr))).await;
    let job = a
        .client()
        .await
        .submit_authentication(submit_request(ENROLLED_USER, "rep-listen"))
        .await
        .expect("submit");
    let smile_job_id = job.into_inner().job.expect("job").smile_job_id;

    let mut on_c = watch(&mut c.client().await, "rep-listen", 0).await;
    assert_eq!(collect_events(&mut on_c, 2).await.len(), 2);
    // C's LISTEN connection drops; the final result is written on A meanwhile, and its NOTIFY never reaches C.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (timestamp, signature) = credentials().sign_now();
    let callback = serde_json::json!({"ResultCode": "0820", "IsFinalResult": "true", "SmileJobID": smile_job_id,
        "PartnerParams": {"job_id": "rep-listen", "user_id": ENROLLED_USER, "job_type": 2},
        "timestamp": timestamp, "signature": signature.as_str()});
    let status = reqwest::Client::new()
        .post(&a.callback_url)
        .json(&callback)
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(status, 200);
    proxy.restore();
    // Heartbeats are 30 s apart here: only the listener's re-read after reconnecting can deliver this in time.
    let tail = collect_events(&mut on_c, 1).await;
    assert_eq!(
        tail.iter().map(|e| (e.sequence, e.kind())).collect::<Vec<_>>(),
        [(3, pb::JobEventKind::FinalResult)]
    );
    for service in [a, c] {
        service.stop().await;
    }
}
