//! `selfie-auth serve` as a process: SIGTERM drains and exits cleanly; a second
//! signal during a drain exits at once.

use std::time::{Duration, Instant};

use selfie_auth_testkit::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Served {
    process: tokio::process::Child,
    grpc_addr: String,
}

/// Starts `selfie-auth serve` against the simulator; waits for its "serving" log line.
async fn serve(sim_url: &str, dir: &tempfile::TempDir) -> Served {
    let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_selfie-auth"))
        .arg("serve")
        .env("SMILEID_PARTNER_ID", PARTNER_ID)
        .env("SMILEID_API_KEY", API_KEY)
        .env("SMILEID_BASE_URL", sim_url)
        .env("SELFIE_AUTH_GRPC_ADDR", "127.0.0.1:0")
        .env("SELFIE_AUTH_HTTP_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", sqlite_url(dir))
        .env("SELFIE_AUTH_DRAIN_TIMEOUT", "60s")
        .env("SELFIE_AUTH_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start selfie-auth serve");
    let stderr = process.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let grpc_addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "selfie-auth serving" {
                return entry["fields"]["grpc"].as_str().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("the service announces itself")
    .expect("grpc address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Served { process, grpc_addr }
}

fn signal(process: &tokio::process::Child, name: &str) {
    let pid = process.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
}

async fn health(addr: &str) -> HealthClient<tonic::transport::Channel> {
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
    let status = health(&served.grpc_addr)
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

    signal(&served.process, "-TERM");
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
    let mut watcher = health(&served.grpc_addr)
        .await
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("watch")
        .into_inner();
    watcher.message().await.expect("ok").expect("first status");

    let started = Instant::now();
    signal(&served.process, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        served.process.try_wait().expect("try_wait").is_none(),
        "still draining after the first signal"
    );
    signal(&served.process, "-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(10), served.process.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(exit.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(10));
}
