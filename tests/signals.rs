//! `selfie-auth serve` as a process: SIGTERM drains and exits cleanly; a second
//! signal during a drain exits at once.

use std::time::{Duration, Instant};

use selfie_auth_testkit::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Starts `selfie-auth serve` against the simulator, on SQLite in `dir`.
async fn serve(sim_url: &str, dir: &tempfile::TempDir) -> ServeProcess {
    let database_url = sqlite_url(dir);
    ServeProcess::start(
        env!("CARGO_BIN_EXE_selfie-auth"),
        sim_url,
        &[("DATABASE_URL", &database_url), ("SELFIE_AUTH_DRAIN_TIMEOUT", "60s")],
    )
    .await
}

async fn health(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::new(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await;
    HealthClient::new(channel.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut served = serve(&sim.v1_url(), &dir).await;
    let status = health(served.grpc_addr)
        .await
        .check(HealthCheckRequest {
            service: "selfieauth.v1.SelfieAuth".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    served.signal("-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(15), served.process.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut served = serve(&sim.v1_url(), &dir).await;
    // A health Watch never ends by itself, so the drain would wait its full 60 s.
    let mut watcher = health(served.grpc_addr)
        .await
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("watch")
        .into_inner();
    watcher.message().await.expect("ok").expect("first status");

    let started = Instant::now();
    served.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        served.process.try_wait().expect("try_wait").is_none(),
        "still draining after the first signal"
    );
    served.signal("-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(10), served.process.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(exit.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(10));
}
