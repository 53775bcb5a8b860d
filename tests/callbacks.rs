//! Smile ID's callbacks: forged, stale, oversized, duplicated, reordered, under
//! faults and replayed. An acknowledged callback is never lost, and replaying a
//! captured one costs no upstream call.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth::simulator::{CallbackMode, Endpoint, Fault, RunningSimulator};
use selfie_auth_testkit::*;
use serde_json::{Value, json};

/// Waits (bounded) until the job is in `state`.
async fn until_state(client: &Client, job_id: &str, state: pb::JobState) -> Option<pb::Job> {
    eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let job = get_job(&mut client, job_id).await.expect("get");
            (job.state() == state).then_some(job)
        }
    })
    .await
}

/// A callback for `job_id` with `code`, signed now with the partner's key.
fn callback(job_id: &str, smile_job_id: &str, code: &str, is_final: bool) -> Value {
    let (timestamp, signature) = credentials().sign_now();
    json!({
        "ResultCode": code,
        "ResultText": "",
        "IsFinalResult": if is_final { "true" } else { "false" },
        "SmileJobID": smile_job_id,
        "PartnerParams": {"job_id": job_id, "user_id": ENROLLED_USER, "job_type": 2},
        "timestamp": timestamp,
        "signature": signature.as_str(),
    })
}

async fn post_all(url: &str, bodies: Vec<Value>) -> Vec<u16> {
    let http = reqwest::Client::new();
    let posts = bodies.into_iter().map(|body| {
        let http = http.clone();
        let url = url.to_owned();
        async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .map_or(0, |response| response.status().as_u16())
        }
    });
    futures::future::join_all(posts).await
}

fn job_status_calls(sim: &RunningSimulator, job_id: &str) -> u64 {
    sim.counters().job_status_by_job_id.get(job_id).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_callbacks_cost_no_upstream_calls() {
    let sim = start_simulator(|config| config.review_delay = Duration::from_mins(10)).await;
    sim.set_callback_mode(CallbackMode::Drop);
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &["--reconcile-after", "10m"])).await;
    let mut client = service.client().await;
    let job = client
        .submit_authentication(provisional_request(ENROLLED_USER, "replay-1"))
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");
    let provisional = callback("replay-1", &job.smile_job_id, "0822", false);
    let provisional_body = provisional.clone();
    assert_eq!(post_all(&service.callback_url, vec![provisional.clone()]).await, [200]);
    until_state(&client, "replay-1", pb::JobState::Provisional)
        .await
        .expect("the genuine callback is applied");
    let asked = job_status_calls(&sim, "replay-1");

    // 200 replays of the captured callback, at once.
    let statuses = post_all(&service.callback_url, vec![provisional; 200]).await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(job_status_calls(&sim, "replay-1"), asked, "a replay costs nothing");

    // 50 forged results under the same captured signature: the delivery was taken, so they
    // are answered and not processed.
    let mut forged = provisional_body.clone();
    forged["ResultCode"] = json!("0820");
    forged["IsFinalResult"] = json!("true");
    let statuses = post_all(&service.callback_url, vec![forged; 50]).await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(
        job_status_calls(&sim, "replay-1"),
        asked,
        "job_status calls for 50 forged callbacks"
    );
    let job = get_job(&mut client, "replay-1").await.expect("get");
    assert_eq!(
        job.state(),
        pb::JobState::Provisional,
        "Smile ID never confirmed the forgery"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_smile_id_cannot_confirm_yet_is_kept_until_it_can() {
    let sim = start_simulator(|_| {}).await;
    sim.set_callback_mode(CallbackMode::Drop);
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["--reconcile-after", "10m", "--reconcile-max-interval", "10m"];
    let mut config = config_with(&sim, &sqlite_url(&dir), &flags);
    // This first replica's reconciler stays idle: only the restarted one confirms.
    config.service.reconcile.tick = Duration::from_hours(1);
    let database_url = config.database_url.clone();
    let service = start_service(config).await;
    let mut client = service.client().await;
    let job = client
        .submit_authentication(submit_request(ENROLLED_USER, "keep-1"))
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");
    sim.set_fault(
        Endpoint::JobStatus,
        Fault {
            status: Some(503),
            ..Fault::default()
        },
    );
    let final_result = callback("keep-1", &job.smile_job_id, "0820", true);
    assert_eq!(post_all(&service.callback_url, vec![final_result]).await, [200]);
    assert_eq!(
        get_job(&mut client, "keep-1").await.expect("get").state(),
        pb::JobState::Submitted
    );

    // The acknowledged callback survives a restart, and is confirmed once Smile ID answers.
    service.stop().await;
    sim.clear_faults();
    let restarted = start_service(config_with(&sim, &database_url, &flags)).await;
    let client = restarted.client().await;
    until_state(&client, "keep-1", pb::JobState::Completed)
        .await
        .expect("confirmed by the reconciler without a new callback");
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_given_up_on_is_completed_by_a_later_genuine_result() {
    let sim = start_simulator(|_| {}).await;
    sim.set_callback_mode(CallbackMode::Drop);
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &["--reconcile-give-up", "1s"])).await;
    let client = service.client().await;
    sim.set_fault(
        Endpoint::JobStatus,
        Fault {
            status: Some(503),
            ..Fault::default()
        },
    );
    client
        .clone()
        .submit_authentication(submit_request(ENROLLED_USER, "late-1"))
        .await
        .expect("submit");
    let failed = until_state(&client, "late-1", pb::JobState::Failed)
        .await
        .expect("given up");
    assert_eq!(rpc_status_reason(&failed.error.expect("why")), "RESULT_NOT_RECEIVED");

    sim.clear_faults();
    sim.set_callback_mode(CallbackMode::Deliver);
    let replayed = reqwest::Client::new()
        .post(format!("{}/_control/jobs/late-1/replay", sim.url()))
        .send()
        .await
        .expect("replay");
    assert!(replayed.status().is_success());
    let completed = until_state(&client, "late-1", pb::JobState::Completed)
        .await
        .expect("completed by Smile ID's result");
    assert!(completed.error.is_none());
    service.stop().await;
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
    service.stop().await;
}

#[tokio::test]
async fn callback_endpoint_refuses_forged_stale_and_oversized_posts() {
    let (_sim, service, _dir) = service_with(&[]).await;
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
    // Refused on its declared length, before a byte of the body is read, and
    // the connection closed: a client still sending may find it reset before
    // it reads the 413. Either way the server took nothing of it.
    match http
        .post(&service.callback_url)
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
    {
        Ok(response) => assert_eq!(response.status(), 413),
        Err(error) => assert!(closed_under_the_body(&error), "{error:?}"),
    }
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
            let job = get_job(&mut client, "cb-1").await.expect("get");
            (job.state() == pb::JobState::Completed).then_some(job)
        }
    })
    .await
    .expect("completes");
    assert_eq!(job.decision(), pb::Decision::Approved);
    service.stop().await;
}

#[tokio::test]
async fn a_callback_refused_before_its_body_is_read_says_its_connection_ends() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // The server does not read a body it refuses on its declared length, so
    // it cannot keep the connection; a client that is not told so sends its
    // next request down a connection about to close, and loses it.
    let (_sim, service, _dir) = service_with(&[]).await;
    let mut stream = tokio::net::TcpStream::connect(service.running.http_addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST /callbacks/smileid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3145728\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    // Read to the end: the server closes once it has answered.
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    service.stop().await;
}

/// Whether a request failed because the server closed the connection while
/// the request was still being sent, and nothing else.
fn closed_under_the_body(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        let closed = error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            || error.downcast_ref::<std::io::Error>().is_some_and(|error| {
                matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            });
        if closed {
            return true;
        }
        cause = error.source();
    }
    false
}

#[tokio::test]
async fn closed_under_the_body_tells_a_closed_connection_from_other_failures() {
    // A server that reads the request's head and closes, as hyper does after
    // refusing a body it will not read.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closing = listener.local_addr().expect("addr");
    selfie_auth::task::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut head).await;
        }
    });
    let http = reqwest::Client::new();
    let error = http
        .post(format!("http://{closing}/"))
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .expect_err("closed");
    assert!(closed_under_the_body(&error), "{error:?}");

    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let error = http
        .post(format!("http://{refused}/"))
        .send()
        .await
        .expect_err("nothing listens");
    assert!(!closed_under_the_body(&error), "{error:?}");
}
