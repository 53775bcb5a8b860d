//! The API key, signatures and image bytes never reach the logs, even at debug level.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use selfie_auth::grpc::pb;
use selfie_auth_testkit::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A token that looks like a Smile ID signature: 44 characters of base64 ending in `=`.
fn looks_like_signature(token: &str) -> bool {
    token.len() == 44
        && token.ends_with('=')
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_signatures_and_images_stay_out_of_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    let mut client = service.client().await;

    let selfie = jpeg(64, 64, 42);
    let liveness: Vec<Vec<u8>> = (0..8).map(|i| jpeg(32, 32, 100 + i)).collect();
    let mut request = submit_request(ENROLLED_USER, "hygiene-1");
    request.selfie_image = selfie.clone().into();
    request.liveness_images = liveness.iter().cloned().map(Into::into).collect();
    request.wait_for_result = true;
    request.include_image_links = true;
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(10));
    client.submit_authentication(request).await.expect("submit");
    client
        .submit_authentication(submit_request("stranger", "hygiene-2"))
        .await
        .expect_err("not enrolled");
    let mut broken = submit_request(ENROLLED_USER, "hygiene-3");
    broken.selfie_image = b"\xFF\xD8\xFFnot really a jpeg".to_vec().into();
    client.submit_authentication(broken).await.expect_err("invalid");
    let request = pb::GetJobRequest {
        job_id: "hygiene-1".into(),
        refresh: true,
        include_history: true,
        include_image_links: true,
    };
    client.get_job(request).await.expect("refresh");
    // A forged callback is logged as refused, without its signature.
    let forged = selfie_auth::smileid::Credentials::new(PARTNER_ID, selfie_auth::smileid::ApiKey::new("forger"));
    let (timestamp, signature) = forged.sign_now();
    reqwest::Client::new()
        .post(&service.callback_url)
        .json(&serde_json::json!({"ResultCode": "0820", "PartnerParams": {"job_id": "hygiene-1"}, "timestamp": timestamp, "signature": signature.as_str()}))
        .send()
        .await
        .expect("post");
    // Genuinely signed callbacks whose strings carry line breaks cannot forge log lines.
    let forged_line = "\nFORGED-LINE INFO selfie_auth::audit: audit: read caller=admin";
    for (job_id, smile_job_id) in [
        (format!("nobody{forged_line}"), "1".to_owned()),
        ("hygiene-1".to_owned(), format!("999{forged_line}")),
    ] {
        let (timestamp, signature) = credentials().sign_now();
        reqwest::Client::new()
            .post(&service.callback_url)
            .json(&serde_json::json!({
                "ResultCode": format!("0820{forged_line}"), "SmileJobID": smile_job_id,
                "PartnerParams": {"job_id": job_id, "user_id": ENROLLED_USER},
                "timestamp": timestamp, "signature": signature.as_str(),
            }))
            .send()
            .await
            .expect("post");
    }
    service.stop().await;
    sim.shutdown().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    assert!(
        logs.contains("job created") && logs.contains("callback handled"),
        "the logs were captured:\n{logs}"
    );
    assert!(!logs.contains(API_KEY), "the API key leaked");
    assert!(
        logs.contains("FORGED-LINE"),
        "the forged callbacks were logged:\n{logs}"
    );
    assert!(
        !logs.lines().any(|line| line.starts_with("FORGED-LINE")),
        "a caller's string forged a log line:\n{logs}"
    );
    assert!(!logs.contains("X-Amz-Signature"), "a pre-signed upload URL leaked");
    assert!(!logs.contains(signature.as_str()), "a callback signature leaked");
    for image in std::iter::once(&selfie).chain(&liveness) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&image[20..68]);
        assert!(!logs.contains(&encoded[..40]), "image bytes leaked as base64");
        let hex: String = image[20..44].iter().fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        });
        assert!(!logs.contains(&hex), "image bytes leaked as hex");
        let debug_bytes = format!("{:?}", &image[20..32]);
        assert!(
            !logs.contains(&debug_bytes[1..debug_bytes.len() - 1]),
            "image bytes leaked as a byte list"
        );
    }
    let suspicious: Vec<&str> = logs
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '(' | ')' | '{' | '}' | ':'))
        .filter(|token| looks_like_signature(token))
        .collect();
    assert!(
        suspicious.is_empty(),
        "signature-like tokens in the logs: {suspicious:?}"
    );
}
