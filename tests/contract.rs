//! The public contract: it passes `buf lint`, and a Python caller using stubs
//! generated from it (grpcio) submits, looks up, watches and reads rich errors.
//! Tools come from PyPI into `target/contract-venv`.

use std::path::Path;

use selfie_auth_testkit::*;

const TOOLS: &[&str] = &[
    "buf-bin==1.75.0",
    "grpcio==1.85.3",
    "grpcio-tools==1.85.1",
    "grpcio-status==1.85.3",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_lints_and_works_from_python() {
    let python = match python_venv("contract-venv", TOOLS, "import grpc, grpc_tools, grpc_status") {
        Ok(python) => python,
        Err(reason) => {
            skip_or_fail("the contract check (needs python3 and PyPI)", &reason);
            return;
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let buf = python.parent().expect("venv bin").join("buf");
    let lint = std::process::Command::new(&buf)
        .arg("lint")
        .current_dir(root)
        .output()
        .expect("run buf");
    assert!(
        lint.status.success(),
        "buf lint:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    let selfie = dir.path().join("selfie.jpg");
    std::fs::write(&selfie, jpeg(96, 96, 3)).expect("write");
    let output = tokio::process::Command::new(&python)
        .arg(root.join("tests/scripts/python_client_check.py"))
        .arg(service.running.grpc_addr.to_string())
        .arg(root.join("proto"))
        .arg(&selfie)
        .arg(ENROLLED_USER)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|line| line.starts_with("ok ")).count(),
        6,
        "{stdout}"
    );
    service.running.shutdown().await;
}
