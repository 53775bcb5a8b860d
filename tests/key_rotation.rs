//! Rotating the Smile ID API key without a restart: the service re-reads the
//! key file, signs with the new key, and accepts callbacks signed with the
//! previous one for the overlap, so a rotation mid-run loses no callback.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth::simulator::CallbackMode;
use selfie_auth::smileid::{ApiKey, Credentials};
use selfie_auth_testkit::*;
use serde_json::{Value, json};

const NEW_KEY: &str = "rotated-api-key-fedcba9876543210";

fn callback(key: &str, job: &pb::Job) -> Value {
    let (timestamp, signature) = Credentials::new(PARTNER_ID, ApiKey::new(key)).sign_now();
    json!({
        "ResultCode": "0820",
        "ResultText": "Machine Judgement - Pass",
        "IsFinalResult": "true",
        "SmileJobID": job.smile_job_id,
        "PartnerParams": {"job_id": job.job_id, "user_id": ENROLLED_USER, "job_type": 2},
        "timestamp": timestamp,
        "signature": signature.as_str(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_mid_run_loses_no_callback() {
    let sim = start_simulator(|config| config.review_delay = Duration::from_mins(10)).await;
    sim.set_callback_mode(CallbackMode::Drop);
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{API_KEY}\n")).expect("write key");
    let service = start_service(config_with(
        &sim,
        &sqlite_url(&dir),
        &[
            "--api-key-file",
            key_file.to_str().expect("utf-8"),
            "--api-key-overlap",
            "3s",
            "--reconcile-after",
            "1h",
            "--reconcile-max-interval",
            "1h",
        ],
    ))
    .await;
    let mut client = service.client().await;
    let mut jobs = Vec::new();
    for job_id in ["before-rotation", "after-rotation", "too-late"] {
        let job = client
            .submit_authentication(submit_request(ENROLLED_USER, job_id))
            .await
            .expect("submit")
            .into_inner()
            .job
            .expect("job");
        jobs.push(job);
    }
    // Signed just before the rotation, delivered after it.
    let in_flight = callback(API_KEY, &jobs[0]);

    sim.rotate_api_key(ApiKey::new(NEW_KEY), Duration::from_secs(3));
    std::fs::write(&key_file, NEW_KEY).expect("rotate the key file");
    let rotated = eventually(Duration::from_secs(10), || async {
        (metric_total(&service, "selfie_auth_api_key_rotations_total").await == 1).then_some(())
    })
    .await;
    assert!(rotated.is_some(), "the service took the new key within seconds");

    let http = reqwest::Client::new();
    let url = service.callback_url.clone();
    for body in [in_flight, callback(NEW_KEY, &jobs[1])] {
        let answer = http.post(&url).json(&body).send().await.expect("post");
        assert!(answer.status().is_success(), "{}", answer.status());
    }
    for job_id in ["before-rotation", "after-rotation"] {
        let job = get_job(&mut client, job_id).await.expect("get");
        assert_eq!(
            job.state(),
            pb::JobState::Completed,
            "{job_id}: confirmed with the new key"
        );
    }

    // After the overlap the old key is refused; the new one still works.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let stale = http
        .post(&url)
        .json(&callback(API_KEY, &jobs[2]))
        .send()
        .await
        .expect("post");
    assert_eq!(stale.status().as_u16(), 401);
    let fresh = http
        .post(&url)
        .json(&callback(NEW_KEY, &jobs[2]))
        .send()
        .await
        .expect("post");
    assert!(fresh.status().is_success(), "{}", fresh.status());
    service.stop().await;
}
