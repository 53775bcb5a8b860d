//! The public contract: it passes `buf lint`, `buf breaking` finds no
//! incompatible change since the last commit, and a Python caller using stubs
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

    // No incompatible change, neither in the working tree nor in the last commit.
    for against in ["HEAD", "HEAD~1"] {
        let known = std::process::Command::new("git")
            .args(["rev-parse", "--verify", "--quiet", &format!("{against}^{{commit}}")])
            .current_dir(root)
            .output()
            .is_ok_and(|output| output.status.success());
        if !known {
            eprintln!("buf breaking: no {against} in this checkout's history; not compared against it");
            continue;
        }
        let breaking = std::process::Command::new(&buf)
            .args(["breaking", "--against", &format!(".git#ref={against}")])
            .current_dir(root)
            .output()
            .expect("run buf");
        assert!(
            breaking.status.success(),
            "buf breaking against {against}:\n{}{}",
            String::from_utf8_lossy(&breaking.stdout),
            String::from_utf8_lossy(&breaking.stderr)
        );
    }

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
        7,
        "{stdout}"
    );
    service.stop().await;
}

/// What a Node caller loads: the contract, and the vendored google/rpc protos to read error details.
const NODE_PACKAGES: &[&str] = &["@grpc/grpc-js@1.14.7", "@grpc/proto-loader@0.8.1", "protobufjs@8.8.1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_works_from_node_with_the_vendored_error_details() {
    let packages = match npm_packages("contract-node", NODE_PACKAGES) {
        Ok(packages) => packages,
        Err(reason) => {
            skip_or_fail(
                "the Node contract check (needs node, npm and the npm registry)",
                &reason,
            );
            return;
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    let selfie = dir.path().join("selfie.jpg");
    std::fs::write(&selfie, jpeg(96, 96, 4)).expect("write");
    let output = tokio::process::Command::new("node")
        .arg(root.join("tests/scripts/node_client_check.js"))
        .arg(service.running.grpc_addr.to_string())
        .arg(root.join("proto"))
        .arg(&selfie)
        .env("NODE_PATH", packages.join("node_modules"))
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|line| line.starts_with("ok ")).count(),
        4,
        "{stdout}"
    );
    service.stop().await;
}
