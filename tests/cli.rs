//! The `selfie-auth` client commands against a running service.

use selfie_auth_testkit::*;
use serde_json::Value;

async fn run(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_selfie-auth"))
        .args(args)
        .env_remove("SELFIE_AUTH_ADDR")
        .output()
        .await
        .expect("run selfie-auth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_get_and_watch_for_people_and_scripts() {
    let sim = start_simulator(|config| config.review_delay = std::time::Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    let addr = format!("http://{}", service.running.grpc_addr);
    let selfie = dir.path().join("selfie.png");
    std::fs::write(&selfie, png(96, 96, 5)).expect("write");
    let selfie = selfie.to_str().expect("utf-8 path");

    let output = run(&[
        "submit",
        "--addr",
        &addr,
        "--user-id",
        ENROLLED_USER,
        "--job-id",
        "cli-1",
        "--selfie",
        selfie,
        "--wait",
        "--json",
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        (answer["created"].clone(), answer["job"]["state"].clone()),
        (Value::Bool(true), Value::from("COMPLETED"))
    );
    assert_eq!(answer["job"]["decision"], "APPROVED");

    let output = run(&[
        "enroll",
        "--addr",
        &addr,
        "--user-id",
        "cli-newcomer",
        "--selfie",
        selfie,
        "--wait",
        "--json",
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        (
            &answer["job"]["kind"],
            &answer["job"]["state"],
            &answer["job"]["decision"]
        ),
        (
            &Value::from("ENROLLMENT"),
            &Value::from("COMPLETED"),
            &Value::from("APPROVED")
        )
    );

    let output = run(&[
        "submit",
        "--addr",
        &addr,
        "--user-id",
        ENROLLED_USER,
        "--job-id",
        "cli-2",
        "--selfie",
        selfie,
        "--param",
        "sandbox_result=2",
    ])
    .await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("created job cli-2") && text.contains("SUBMITTED"),
        "{text}"
    );

    let output = run(&["watch", "--addr", &addr, "cli-2", "--json"]).await;
    assert!(output.status.success());
    let kinds: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("json line")["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|kind| kind != "HEARTBEAT")
        .collect();
    assert_eq!(kinds, ["CREATED", "SUBMITTED", "PROVISIONAL_RESULT", "FINAL_RESULT"]);

    let output = run(&["get", "--addr", &addr, "cli-2"]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("COMPLETED") && text.contains("1220"), "{text}");

    let output = run(&["get", "--addr", &addr, "missing-job"]).await;
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("JOB_NOT_FOUND") && !error.contains("backtrace"),
        "{error}"
    );

    let output = run(&["submit", "--addr", &addr, "--user-id", "bad user", "--selfie", selfie]).await;
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && error.contains("user_id:"), "{error}");
    service.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_by_the_servers_status() {
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let addr = service.running.grpc_addr.to_string();
    let serving = run(&["health", "--addr", &addr, "--service", "selfieauth.v1.SelfieAuth"]).await;
    assert_eq!(
        serving.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&serving.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&serving.stdout).trim(), "SERVING");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nobody = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let unreachable = run(&["health", "--addr", &nobody, "--timeout", "1s"]).await;
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_as_grpcurl_takes_them_and_a_closed_pipe_is_no_panic() {
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    service
        .client()
        .await
        .submit_authentication(submit_request(ENROLLED_USER, "piped-1"))
        .await
        .expect("submit");
    let addr = service.running.grpc_addr.to_string();
    let got = run(&["get", "--addr", &addr, "piped-1", "--json"]).await;
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));

    let refused = run(&["get", "--addr", "127.0.0.1:1", "piped-1"]).await;
    let message = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(message.matches("127.0.0.1:1").count(), 1, "said once: {message}");

    // A reader that closes the pipe at once: the command ends quietly, without a panic.
    let mut reader = std::process::Command::new(env!("CARGO_BIN_EXE_selfie-auth"))
        .args(["get", "--addr", &addr, "piped-1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(reader.stdout.take());
    let output = reader.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.is_empty(),
        "{:?}: {stderr}",
        output.status
    );
}
