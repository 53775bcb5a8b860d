//! The official Python server SDK (`smile-id-core` 3.0.1) runs its SmartSelfie
//! Authentication flows unchanged against the simulator.
//!
//! The SDK is installed into `target/sdk-venv` on first use (PyPI must be
//! reachable). Without Python the test says so loudly and skips, except under
//! `CI=true`, where it fails.

use std::path::Path;

use selfie_auth_testkit::*;

const SDK: &str = "smile-id-core==3.0.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_flows_succeed_against_the_simulator() {
    let python = match python_venv("sdk-venv", &[SDK], "import smile_id_core") {
        Ok(python) => python,
        Err(reason) => {
            skip_or_fail("the Python SDK check (needs python3 and PyPI)", &reason);
            return;
        }
    };
    let fixtures = tempfile::tempdir().expect("tempdir");
    std::fs::write(fixtures.path().join("selfie.jpg"), jpeg(96, 96, 7)).expect("write");
    for index in 0..8 {
        std::fs::write(
            fixtures.path().join(format!("liveness_{index}.jpg")),
            jpeg(48, 48, index),
        )
        .expect("write");
    }
    // `selfie-auth simulator`, the command itself, on a free port. The SDK polls every
    // 2 s at first; a short review delay keeps the provisional scenario brief.
    let (mut simulator, base_url) = spawn_simulator_command(env!("CARGO_BIN_EXE_selfie-auth"), &[]).await;
    let v1_url = format!("{base_url}/v1");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/smile_id_core_check.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([&v1_url, PARTNER_ID, API_KEY])
        .arg(fixtures.path())
        .arg(ENROLLED_USER)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "python SDK scenarios failed:\n{stdout}");
    assert!(
        stdout.lines().filter(|line| line.starts_with("ok ")).count() >= 11,
        "{stdout}"
    );
    let stats: serde_json::Value = reqwest::get(format!("{base_url}/_control/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert!(
        stats["prep_uploads"].as_u64() >= Some(8) && stats["uploads"].as_u64() >= Some(6),
        "{stats}"
    );
    simulator.kill().await.expect("stop the simulator");
}
