//! `selfie-auth serve` as a process under SIGTERM: unready at once, serving on
//! through the shutdown delay, then draining; health watches never hold it up;
//! a second signal exits at once.

use std::time::{Duration, Instant};

use selfie_auth::grpc::pb;
use selfie_auth::simulator::CallbackMode;
use selfie_auth_testkit::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Starts `selfie-auth serve` against the simulator, on SQLite in `dir`.
async fn serve(sim_url: &str, dir: &tempfile::TempDir, env: &[(&str, &str)]) -> ServeProcess {
    let database_url = sqlite_url(dir);
    let mut all = vec![
        ("DATABASE_URL", database_url.as_str()),
        ("SELFIE_AUTH_DRAIN_TIMEOUT", "60s"),
    ];
    all.extend_from_slice(env);
    ServeProcess::start(env!("CARGO_BIN_EXE_selfie-auth"), sim_url, &all).await
}

async fn health(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::new(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await;
    HealthClient::new(channel.expect("connect"))
}

async fn status(addr: std::net::SocketAddr) -> ServingStatus {
    health(addr)
        .await
        .check(HealthCheckRequest {
            service: "selfieauth.v1.SelfieAuth".into(),
        })
        .await
        .expect("check")
        .into_inner()
        .status()
}

async fn exits_within(served: &mut ServeProcess, within: Duration) -> std::process::ExitStatus {
    tokio::time::timeout(within, served.process.wait())
        .await
        .expect("exits in time")
        .expect("wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_callbacks_keep_working_through_the_shutdown_delay() {
    let sim = start_simulator(|_| {}).await;
    sim.set_callback_mode(CallbackMode::Drop);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut served = serve(&sim.v1_url(), &dir, &[("SELFIE_AUTH_SHUTDOWN_DELAY", "3s")]).await;
    assert_eq!(status(served.grpc_addr).await, ServingStatus::Serving);
    let job = served
        .client()
        .await
        .submit_authentication(submit_request(ENROLLED_USER, "late-cb"))
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");

    let signalled = Instant::now();
    served.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status(served.grpc_addr).await,
        ServingStatus::NotServing,
        "unready at once"
    );
    let http = reqwest::Client::new();
    let readyz = http
        .get(format!("http://{}/readyz", served.http_addr))
        .send()
        .await
        .expect("readyz");
    assert_eq!(readyz.status(), 503);

    // Still serving: a call on a new connection, and Smile ID's callback, succeed.
    let found = served
        .client()
        .await
        .get_job(pb::GetJobRequest {
            job_id: "late-cb".into(),
            ..Default::default()
        })
        .await
        .expect("a call during the delay");
    assert_eq!(found.into_inner().job_id, "late-cb");
    let (timestamp, signature) = credentials().sign_now();
    let callback = serde_json::json!({"ResultCode": "0820", "IsFinalResult": "true", "SmileJobID": job.smile_job_id,
        "PartnerParams": {"job_id": "late-cb", "user_id": ENROLLED_USER, "job_type": 2},
        "timestamp": timestamp, "signature": signature.as_str()});
    let posted = http
        .post(format!("http://{}/callbacks/smileid", served.http_addr))
        .json(&callback)
        .send()
        .await
        .expect("a callback during the delay");
    assert_eq!(posted.status(), 200, "stored, not lost");
    let completed = served
        .client()
        .await
        .get_job(pb::GetJobRequest {
            job_id: "late-cb".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(completed.state(), pb::JobState::Completed);

    let exit = exits_within(&mut served, Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "served through the delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_watch_does_not_hold_up_shutdown() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut served = serve(&sim.v1_url(), &dir, &[]).await;
    let mut watcher = health(served.grpc_addr)
        .await
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("watch")
        .into_inner();
    let first = watcher.message().await.expect("ok").expect("first status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let signalled = Instant::now();
    served.signal("-TERM");
    let exit = exits_within(&mut served, Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?}: the watch was not closed",
        signalled.elapsed()
    );
    // The watcher saw NOT_SERVING, then its stream ended.
    let mut last = first.status();
    while let Ok(Some(update)) = watcher.message().await {
        last = update.status();
    }
    assert_eq!(last, ServingStatus::NotServing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once() {
    // A zip upload that never answers keeps a submission, and so the drain, busy.
    let sim = start_simulator_with_hung_uploads().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut served = serve(&sim.v1_url(), &dir, &[]).await;
    let mut client = served.client().await;
    let stuck = selfie_auth::task::spawn(async move {
        client
            .submit_authentication(submit_request(ENROLLED_USER, "stuck-1"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    served.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        served.process.try_wait().expect("try_wait").is_none(),
        "still draining after the first signal"
    );
    served.signal("-TERM");
    let exit = exits_within(&mut served, Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(10));
    stuck.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_its_database_and_says_why_it_waits() {
    let Some(url) = pg_schema_url().await else { return };
    let sim = start_simulator(|_| {}).await;
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().expect("addr")).await;
    proxy.cut();
    let via_proxy = pg_url_via(&url, proxy.addr);
    let binary = env!("CARGO_BIN_EXE_selfie-auth");
    let mut served = ServeProcess::start_listening(binary, &sim.v1_url(), &[("DATABASE_URL", &via_proxy)]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(served.process.try_wait().expect("try_wait").is_none(), "still running");
    assert_eq!(status(served.grpc_addr).await, ServingStatus::NotServing);
    let readyz = reqwest::get(format!("http://{}/readyz", served.http_addr))
        .await
        .expect("readyz");
    assert_eq!(readyz.status(), 503);
    let health = tokio::process::Command::new(binary)
        .args(["health", "--addr", &served.grpc_addr.to_string()])
        .output()
        .await
        .expect("health");
    assert_eq!(health.status.code(), Some(1), "NOT_SERVING exits 1");
    // Calls that come this early are told the database is not there yet, to retry.
    let mut client = served.client().await;
    let early = get_job(&mut client, "early").await.expect_err("no database yet");
    assert_eq!(
        (early.code(), reason(&early).as_str()),
        (tonic::Code::Unavailable, "DATABASE_UNAVAILABLE"),
        "{early:?}"
    );
    let early_submission = client
        .submit_authentication(submit_request(ENROLLED_USER, "early-1"))
        .await
        .expect_err("no database yet");
    assert_eq!(
        reason(&early_submission),
        "DATABASE_UNAVAILABLE",
        "{early_submission:?}"
    );
    let waiting = served.logs_containing("the job database is not available");
    assert!(
        waiting.iter().any(|line| line.contains("connecting to PostgreSQL")),
        "the cause is logged: {waiting:?}"
    );

    proxy.restore();
    let serving = eventually(Duration::from_secs(15), || async {
        (status(served.grpc_addr).await == ServingStatus::Serving).then_some(())
    })
    .await;
    assert!(serving.is_some(), "serving once the database answers");
    served.signal("-TERM");
    exits_within(&mut served, Duration::from_secs(10)).await;

    // A role that does not exist: the log names it.
    let (scheme, rest) = url.split_once("://").expect("url");
    let host_and_path = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    let unknown_role = format!("{scheme}://nobody-here@{host_and_path}");
    let mut refused = ServeProcess::start_listening(binary, &sim.v1_url(), &[("DATABASE_URL", &unknown_role)]).await;
    let named = eventually(Duration::from_secs(10), || async {
        let lines = refused.logs_containing("nobody-here");
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert!(named.is_some(), "the unknown role is named in the log");
    assert_eq!(status(refused.grpc_addr).await, ServingStatus::NotServing);
    refused.signal("-TERM");
    exits_within(&mut refused, Duration::from_secs(10)).await;
}
