//! The official Node server SDK (`smile-identity-core` 3.2.1) runs its
//! SmartSelfie Authentication flows unchanged against `selfie-auth simulator`
//! over https. The SDK is installed with npm into `target/node-sdk` on first use.

use std::path::Path;

use selfie_auth_testkit::*;

const SDK: &str = "smile-identity-core@3.2.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_node_sdk_flows_succeed_against_the_simulator_over_https() {
    let sdk = match npm_packages("node-sdk", &[SDK]) {
        Ok(sdk) => sdk,
        Err(reason) => {
            skip_or_fail("the Node SDK check (needs node, npm and the npm registry)", &reason);
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write");
    std::fs::write(dir.path().join("selfie.jpg"), jpeg(96, 96, 7)).expect("write");
    for index in 0..8 {
        std::fs::write(dir.path().join(format!("liveness_{index}.jpg")), jpeg(48, 48, index)).expect("write");
    }

    let (mut simulator, base_url) = spawn_simulator_command(
        env!("CARGO_BIN_EXE_selfie-auth"),
        &[
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
    )
    .await;
    assert!(base_url.starts_with("https://"), "{base_url}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/node_sdk_check.js");
    let output = tokio::process::Command::new("node")
        .arg(script)
        .args([&format!("{base_url}/v1"), PARTNER_ID, API_KEY])
        .arg(dir.path())
        .arg(ENROLLED_USER)
        .env("NODE_PATH", sdk.join("node_modules"))
        .env("NODE_EXTRA_CA_CERTS", &cert)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "Node SDK scenarios failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|line| line.starts_with("ok ")).count(),
        7,
        "{stdout}"
    );
    simulator.kill().await.expect("stop the simulator");
}
