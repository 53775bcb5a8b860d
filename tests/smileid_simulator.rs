//! Our Smile ID client against the simulator: flows, results, errors, signatures, faults.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use selfie_auth::simulator::{CallbackMode, Endpoint, Fault};
use selfie_auth::smileid::wire::{JOB_TYPE_AUTHENTICATION, JOB_TYPE_REGISTRATION};
use selfie_auth::smileid::{
    ApiKey, Credentials, Decision, ErrorCode, JobStatus, JobSubmission, PartnerParams, SmileIdClient, SmileIdError,
    StatusOptions, SubmitOutcome, SubmitStage, verify_callback,
};
use selfie_auth_testkit::*;
use serde_json::{Value, json};

fn params(user_id: &str, job_id: &str, job_type: u32, extra: &[(&str, &str)]) -> PartnerParams {
    PartnerParams {
        user_id: user_id.into(),
        job_id: job_id.into(),
        job_type,
        extra: extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

async fn submit(
    client: &SmileIdClient,
    params: &PartnerParams,
    liveness: usize,
    callback: Option<&str>,
) -> Result<String, selfie_auth::smileid::SubmitError> {
    let selfie = bytes::Bytes::from(jpeg(64, 64, 1));
    let frames: Vec<Bytes> = (0..liveness)
        .map(|i| Bytes::from(jpeg(32, 32, u8::try_from(i).expect("a few frames"))))
        .collect();
    let job = JobSubmission {
        partner_params: params,
        callback_url: callback,
        selfie_jpeg: &selfie,
        liveness_jpegs: &frames,
        may_resume: false,
        allow_new_enroll: false,
    };
    client.submit(&job).await.map(|submitted| submitted.smile_job_id)
}

async fn final_status(client: &SmileIdClient, user_id: &str, job_id: &str) -> JobStatus {
    let options = StatusOptions {
        history: true,
        image_links: true,
    };
    eventually(Duration::from_secs(10), || async {
        let status = client.job_status(user_id, job_id, options).await.expect("job_status");
        status.job_complete.then_some(status)
    })
    .await
    .expect("job completes")
}

#[tokio::test]
async fn registration_then_authentication_with_and_without_liveness() {
    let sim = start_simulator(|_| {}).await;
    let client = client_for(&sim);

    let enrol = params("new-user", "enrol-1", JOB_TYPE_REGISTRATION, &[]);
    let before = submit(
        &client,
        &params("new-user", "auth-0", JOB_TYPE_AUTHENTICATION, &[]),
        0,
        None,
    )
    .await;
    assert!(
        matches!(before, Err(ref e) if matches!(e.source, SmileIdError::Refused { code: ErrorCode::UserNotEnrolled, .. }))
    );
    submit(&client, &enrol, 8, None).await.expect("registration");
    let enrolled = final_status(&client, "new-user", "enrol-1").await;
    assert_eq!(enrolled.result.expect("result").result_code, "0840");
    let again = submit(
        &client,
        &params("new-user", "enrol-2", JOB_TYPE_REGISTRATION, &[]),
        0,
        None,
    )
    .await;
    assert!(
        matches!(again, Err(ref e) if matches!(e.source, SmileIdError::Refused { code: ErrorCode::UserAlreadyEnrolled, .. })),
        "a user is enrolled once, as Smile ID does: {again:?}"
    );

    for (job_id, liveness) in [("auth-selfie", 0), ("auth-liveness", 8)] {
        let smile_job_id = submit(
            &client,
            &params("new-user", job_id, JOB_TYPE_AUTHENTICATION, &[("note", "x")]),
            liveness,
            None,
        )
        .await
        .expect("authentication");
        assert_eq!(smile_job_id.len(), 10);
        let status = final_status(&client, "new-user", job_id).await;
        let result = status.result.expect("result");
        assert!(status.job_success);
        assert_eq!(
            (result.result_code.as_str(), result.decision.clone()),
            ("0820", Decision::Approved)
        );
        assert_eq!(result.smile_job_id, smile_job_id);
        assert_eq!(result.partner_params["note"], "x");
        assert_eq!(status.history.len(), 1);
        assert!(status.image_links["selfie_image"].starts_with("http://127.0.0.1"));
        let job = reqwest::get(format!("{}/_control/jobs/{job_id}", sim.url()))
            .await
            .expect("control")
            .json::<Value>()
            .await
            .expect("json");
        assert_eq!(job["liveness_frames"], liveness);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn sandbox_results_and_provisional_to_final() {
    let sink = CallbackSink::start().await;
    let sim = start_simulator(|_| {}).await;
    let client = client_for(&sim);
    let cases = [
        ("0", "0820", Decision::Approved, true),
        ("1", "0821", Decision::Rejected, false),
        ("2", "1220", Decision::Approved, true),
    ];
    for (sandbox, code, decision, success) in cases {
        let job_id = format!("sandbox-{sandbox}");
        submit(
            &client,
            &params(ENROLLED_USER, &job_id, 2, &[("sandbox_result", sandbox)]),
            0,
            Some(&sink.url),
        )
        .await
        .expect("submit");
        let status = final_status(&client, ENROLLED_USER, &job_id).await;
        let result = status.result.expect("result");
        assert_eq!(
            (result.result_code.as_str(), result.decision, status.job_success),
            (code, decision, success),
            "{sandbox}"
        );
        assert!(result.is_final);
    }
    // The provisional job went through 0822 (not final) before 1220, and both were called back in order.
    let provisional = final_status(&client, ENROLLED_USER, "sandbox-2").await;
    let codes: Vec<_> = provisional
        .history
        .iter()
        .map(|r| (r.result_code.clone(), r.is_final))
        .collect();
    assert_eq!(codes, [("0822".to_owned(), false), ("1220".to_owned(), true)]);
    assert_eq!(provisional.history[0].decision, Decision::ProvisionallyApproved);

    let bodies = sink.wait_for(4, Duration::from_secs(5)).await;
    let callback_codes: Vec<_> = bodies
        .iter()
        .filter(|b| b["PartnerParams"]["job_id"] == "sandbox-2")
        .map(|b| b["ResultCode"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(callback_codes, ["0822", "1220"]);
    for body in &bodies {
        let verified = verify_callback(
            &serde_json::to_vec(body).expect("json"),
            &credentials(),
            Duration::from_mins(5),
            chrono::Utc::now(),
        )
        .expect("callback signature verifies");
        assert_eq!(verified.result.partner_params["user_id"], ENROLLED_USER);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn every_documented_error() {
    let sim = start_simulator(|_| {}).await;
    let client = client_for(&sim);
    let refused = |result: Result<String, selfie_auth::smileid::SubmitError>| match result {
        Err(error) => {
            assert_eq!(error.outcome, SubmitOutcome::Refused);
            assert_eq!(error.stage, SubmitStage::PrepUpload);
            match error.source {
                SmileIdError::Refused {
                    code, http_status: 400, ..
                } => code,
                other => panic!("unexpected {other:?}"),
            }
        }
        Ok(_) => panic!("expected a refusal"),
    };
    assert_eq!(
        refused(submit(&client, &params("stranger", "e1", 2, &[]), 0, None).await),
        ErrorCode::UserNotEnrolled
    );
    submit(&client, &params(ENROLLED_USER, "e2", 2, &[]), 0, None)
        .await
        .expect("first");
    assert_eq!(
        refused(submit(&client, &params(ENROLLED_USER, "e2", 2, &[]), 0, None).await),
        ErrorCode::JobAlreadyExists
    );
    assert_eq!(
        refused(submit(&client, &params(ENROLLED_USER, "e3", 9, &[]), 0, None).await),
        ErrorCode::InvalidJobType
    );
    let stranger = SmileIdClient::new(selfie_auth::smileid::ClientConfig::new(
        selfie_auth::smileid::Environment::Custom(sim.v1_url()),
        Credentials::new(PARTNER_ID, ApiKey::new("wrong-key")),
    ))
    .expect("client");
    assert_eq!(
        refused(submit(&stranger, &params(ENROLLED_USER, "e4", 2, &[]), 0, None).await),
        ErrorCode::Unauthorized
    );

    // Missing parameters and a null partner_params, sent raw.
    let (timestamp, signature) = credentials().sign_now();
    let http = reqwest::Client::new();
    for (body, code) in [
        (
            json!({"smile_client_id": PARTNER_ID, "timestamp": timestamp, "signature": signature.as_str(), "partner_params": {"user_id": ENROLLED_USER, "job_type": 2}}),
            "2213",
        ),
        (
            json!({"smile_client_id": PARTNER_ID, "timestamp": timestamp, "signature": signature.as_str(), "partner_params": null}),
            "2212",
        ),
        (
            json!({"smile_client_id": PARTNER_ID, "partner_params": {"user_id": "u", "job_id": "j", "job_type": 2}}),
            "2213",
        ),
    ] {
        let response = http
            .post(format!("{}/upload", sim.v1_url()))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 400);
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["code"], code, "{body}");
        assert!(answer["error"].as_str().is_some_and(|text| !text.is_empty()));
    }
    // job_status of an unknown job.
    assert!(matches!(
        client
            .job_status(ENROLLED_USER, "never", StatusOptions::default())
            .await,
        Err(SmileIdError::NotFound)
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn our_own_job_meeting_2215_is_resumed_with_retry() {
    let sim = start_simulator(|_| {}).await;
    let client = client_for(&sim);
    let selfie = bytes::Bytes::from(jpeg(64, 64, 1));
    let job_params = params(ENROLLED_USER, "resume-1", 2, &[]);
    // The zip PUT fails: Smile ID holds a job without images.
    sim.set_fault(
        Endpoint::Put,
        Fault {
            status: Some(500),
            ..Fault::default()
        },
    );
    let job = JobSubmission {
        partner_params: &job_params,
        callback_url: None,
        selfie_jpeg: &selfie,
        liveness_jpegs: &[],
        may_resume: true,
        allow_new_enroll: false,
    };
    let failed = client.submit(&job).await.expect_err("put fails");
    assert_eq!(
        (failed.stage, failed.outcome),
        (SubmitStage::Upload, SubmitOutcome::Unknown)
    );
    let smile_job_id = failed.smile_job_id.clone().expect("smile job id known");

    reqwest::Client::new()
        .delete(format!("{}/_control/faults", sim.url()))
        .send()
        .await
        .expect("clear");
    let resumed = client.submit(&job).await.expect("resumed");
    assert!(resumed.resumed);
    assert_eq!(resumed.smile_job_id, smile_job_id);
    let counters = sim.counters();
    assert_eq!(
        counters.jobs_created_by_job_id["resume-1"], 1,
        "one billed Smile ID job"
    );
    assert_eq!(counters.uploads_by_job_id["resume-1"], 1);
    assert_eq!(
        final_status(&client, ENROLLED_USER, "resume-1")
            .await
            .result
            .expect("result")
            .result_code,
        "0820"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn response_signatures_are_verified_in_both_directions() {
    let sim = start_simulator(|_| {}).await;
    let client = client_for(&sim);
    submit(&client, &params(ENROLLED_USER, "sig-1", 2, &[]), 0, None)
        .await
        .expect("submit");
    sim.set_fault(
        Endpoint::JobStatus,
        Fault {
            corrupt_signature: true,
            times: Some(1),
            ..Fault::default()
        },
    );
    assert!(matches!(
        client
            .job_status(ENROLLED_USER, "sig-1", StatusOptions::default())
            .await,
        Err(SmileIdError::BadSignature)
    ));
    assert!(
        client
            .job_status(ENROLLED_USER, "sig-1", StatusOptions::default())
            .await
            .is_ok()
    );
    // Our requests signed with the wrong key are refused by the simulator.
    let before = sim.counters().signature_failures;
    let wrong = client_with(&sim, |config| {
        config.credentials = Credentials::new(PARTNER_ID, ApiKey::new("nope"));
    });
    assert!(matches!(
        wrong.job_status(ENROLLED_USER, "sig-1", StatusOptions::default()).await,
        Err(SmileIdError::Refused {
            code: ErrorCode::Unauthorized,
            ..
        })
    ));
    assert_eq!(sim.counters().signature_failures, before + 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn job_status_retries_5xx_and_honours_retry_after() {
    let sim = start_simulator(|_| {}).await;
    let client = client_for(&sim);
    submit(&client, &params(ENROLLED_USER, "retry-1", 2, &[]), 0, None)
        .await
        .expect("submit");

    sim.set_fault(
        Endpoint::JobStatus,
        Fault {
            status: Some(502),
            times: Some(2),
            ..Fault::default()
        },
    );
    let before = sim.counters().job_status_requests;
    client
        .job_status(ENROLLED_USER, "retry-1", StatusOptions::default())
        .await
        .expect("third attempt succeeds");
    // Faulted requests are answered before being counted; one real request got through.
    assert_eq!(sim.counters().job_status_requests, before + 1);

    sim.set_fault(
        Endpoint::JobStatus,
        Fault {
            status: Some(429),
            retry_after: Some(1),
            times: Some(1),
            ..Fault::default()
        },
    );
    let started = Instant::now();
    client
        .job_status(ENROLLED_USER, "retry-1", StatusOptions::default())
        .await
        .expect("after retry-after");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );

    sim.set_fault(
        Endpoint::JobStatus,
        Fault {
            status: Some(503),
            ..Fault::default()
        },
    );
    let error = client
        .job_status(ENROLLED_USER, "retry-1", StatusOptions::default())
        .await
        .expect_err("gives up");
    assert!(matches!(error, SmileIdError::Unavailable { http_status: 503, .. }));
    sim.shutdown().await;
}

#[tokio::test]
async fn hung_and_slow_endpoints_hit_timeouts_and_outcomes_are_classified() {
    let sim = start_simulator(|_| {}).await;
    let client = client_with(&sim, |config| config.request_timeout = Duration::from_millis(1500));

    sim.set_fault(
        Endpoint::Upload,
        Fault {
            latency_ms: Some(100),
            times: Some(1),
            ..Fault::default()
        },
    );
    submit(&client, &params(ENROLLED_USER, "slow-1", 2, &[]), 0, None)
        .await
        .expect("slow but in time");

    sim.set_fault(
        Endpoint::Upload,
        Fault {
            hang: true,
            times: Some(1),
            ..Fault::default()
        },
    );
    let hung = submit(&client, &params(ENROLLED_USER, "hang-1", 2, &[]), 0, None)
        .await
        .expect_err("times out");
    assert!(matches!(hung.source, SmileIdError::Timeout));
    assert_eq!(
        hung.outcome,
        SubmitOutcome::Unknown,
        "a timed-out prep upload may have created a job"
    );

    sim.set_fault(
        Endpoint::Upload,
        Fault {
            status: Some(503),
            times: Some(1),
            ..Fault::default()
        },
    );
    let shed = submit(&client, &params(ENROLLED_USER, "shed-1", 2, &[]), 0, None)
        .await
        .expect_err("503");
    assert_eq!(shed.outcome, SubmitOutcome::NotSent);

    // The zip PUT is idempotent and retried.
    sim.set_fault(
        Endpoint::Put,
        Fault {
            status: Some(500),
            times: Some(2),
            ..Fault::default()
        },
    );
    submit(&client, &params(ENROLLED_USER, "put-retry", 2, &[]), 0, None)
        .await
        .expect("put retried");
    assert_eq!(sim.counters().uploads_by_job_id["put-retry"], 1);

    // Nothing listens here: the request never left.
    let closed = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let dead_url = format!("http://{}/v1", closed.local_addr().expect("addr"));
    drop(closed);
    let offline = SmileIdClient::new(selfie_auth::smileid::ClientConfig::new(
        selfie_auth::smileid::Environment::Custom(dead_url),
        credentials(),
    ))
    .expect("client");
    let unreachable = submit(&offline, &params(ENROLLED_USER, "offline", 2, &[]), 0, None)
        .await
        .expect_err("refused");
    assert_eq!(unreachable.outcome, SubmitOutcome::NotSent);
    sim.shutdown().await;
}

#[tokio::test]
async fn callbacks_can_be_dropped_duplicated_and_reordered() {
    let sink = CallbackSink::start().await;
    let sim = start_simulator(|config| config.default_callback_url = Some(sink.url.clone())).await;
    let client = client_for(&sim);
    let for_job = |bodies: &[Value], job: &str| -> Vec<String> {
        bodies
            .iter()
            .filter(|b| b["PartnerParams"]["job_id"] == job)
            .map(|b| b["ResultCode"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    sim.set_callback_mode(CallbackMode::Drop);
    submit(&client, &params(ENROLLED_USER, "cb-drop", 2, &[]), 0, None)
        .await
        .expect("submit");
    final_status(&client, ENROLLED_USER, "cb-drop").await;
    sim.set_callback_mode(CallbackMode::Duplicate);
    submit(&client, &params(ENROLLED_USER, "cb-dup", 2, &[]), 0, None)
        .await
        .expect("submit");
    sim.set_callback_mode(CallbackMode::Reorder);
    submit(
        &client,
        &params(ENROLLED_USER, "cb-reorder", 2, &[("sandbox_result", "2")]),
        0,
        None,
    )
    .await
    .expect("submit");

    let bodies = sink.wait_for(4, Duration::from_secs(5)).await;
    assert_eq!(for_job(&bodies, "cb-drop"), Vec::<String>::new());
    assert_eq!(for_job(&bodies, "cb-dup"), ["0820", "0820"]);
    assert_eq!(for_job(&bodies, "cb-reorder"), ["1220", "0822"]);
    assert_eq!(sim.counters().callbacks_dropped, 1);

    // The control API replays a job's callbacks.
    let replay = reqwest::Client::new()
        .post(format!("{}/_control/jobs/cb-drop/replay", sim.url()))
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), 202);
    // Replays go out under the current mode (reorder): a single final result is sent as is.
    let bodies = sink.wait_for(5, Duration::from_secs(5)).await;
    assert_eq!(for_job(&bodies, "cb-drop"), ["0820"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn control_api_scripts_faults_and_reports_counters() {
    let sim = start_simulator(|_| {}).await;
    let http = reqwest::Client::new();
    let control = |path: &str| format!("{}/_control/{path}", sim.url());
    let response = http
        .put(control("faults/upload"))
        .json(&json!({"status": 503, "times": 1}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 204);
    let response = http
        .put(control("faults/nowhere"))
        .json(&json!({"status": 503}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 404);
    let response = http
        .post(control("enroll"))
        .json(&json!({"user_id": "via-control"}))
        .send()
        .await
        .expect("enroll");
    assert_eq!(response.status(), 204);

    let client = client_for(&sim);
    let first = submit(&client, &params("via-control", "ctl-1", 2, &[]), 0, None)
        .await
        .expect_err("faulted");
    assert!(matches!(
        first.source,
        SmileIdError::Unavailable { http_status: 503, .. }
    ));
    submit(&client, &params("via-control", "ctl-1", 2, &[]), 0, None)
        .await
        .expect("fault used up");

    let stats: Value = http
        .get(control("stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["jobs_created_by_job_id"]["ctl-1"], 1);
    assert_eq!(stats["uploads_by_job_id"]["ctl-1"], 1);
    let response = http.post(control("reset")).send().await.expect("reset");
    assert_eq!(response.status(), 204);
    let stats: Value = http
        .get(control("stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["prep_uploads"], 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn broken_zips_get_the_documented_failure_result() {
    let sim = start_simulator(|_| {}).await;
    let client = client_for(&sim);
    let http = reqwest::Client::new();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("zip-garbage", b"this is not a zip".to_vec(), "0903"),
        ("zip-no-info", zip_of(&[("selfie.jpg", &jpeg(8, 8, 1))]), "0001"),
        (
            "zip-no-selfie",
            zip_of(&[(
                "info.json",
                br#"{"images":[{"image_type_id":"0","file_name":"missing.jpg"}]}"#,
            )]),
            "0001",
        ),
    ];
    for (job_id, zip, code) in cases {
        let (upload, _, _) = client
            .prep_upload(&params(ENROLLED_USER, job_id, 2, &[]), None, false, false)
            .await
            .expect("prep");
        let response = http
            .put(&upload.upload_url)
            .header("Content-Type", "application/zip")
            .body(zip)
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 200);
        let status = final_status(&client, ENROLLED_USER, job_id).await;
        let result = status.result.expect("result");
        assert_eq!(result.result_code, code, "{job_id}");
        assert!(!status.job_success);
    }
    // A mobile-shaped info.json (string image_type_id, no misc_information) with a junk entry works.
    let (upload, _, _) = client
        .prep_upload(&params(ENROLLED_USER, "zip-mobile", 2, &[]), None, false, false)
        .await
        .expect("prep");
    let zip = zip_of(&[
        ("info.json", br#"{"images":[{"image_type_id":"0","file_name":"si_selfie_1.jpg"},{"image_type_id":"4","file_name":"/abs/liveness_0.jpg"}]}"#),
        ("si_selfie_1.jpg", &jpeg(8, 8, 2)),
        ("base64imgString", b"9k="),
    ]);
    // Wrong content type is refused like a pre-signed S3 URL would.
    let refused = http
        .put(&upload.upload_url)
        .header("Content-Type", "application/octet-stream")
        .body(zip.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status(), 403);
    let forged = upload.upload_url.replace("X-Amz-Signature=", "X-Amz-Signature=x");
    assert_eq!(
        http.put(&forged)
            .header("Content-Type", "application/zip")
            .body(zip.clone())
            .send()
            .await
            .expect("put")
            .status(),
        403
    );
    http.put(&upload.upload_url)
        .header("Content-Type", "application/zip")
        .body(zip)
        .send()
        .await
        .expect("put");
    assert_eq!(
        final_status(&client, ENROLLED_USER, "zip-mobile")
            .await
            .result
            .expect("result")
            .result_code,
        "0820"
    );
    sim.shutdown().await;
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        writer
            .start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("entry");
        writer.write_all(data).expect("write");
    }
    writer.finish().expect("finish").into_inner()
}

#[tokio::test]
async fn v2_endpoint_answers_synchronously_with_header_signatures() {
    let sink = CallbackSink::start().await;
    let sim = start_simulator(|_| {}).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v2/smart-selfie-authentication", sim.url());
    let form = |user: &str, sandbox: &str| {
        let mut form = reqwest::multipart::Form::new()
            .text("user_id", user.to_owned())
            .part(
                "selfie_image",
                reqwest::multipart::Part::bytes(jpeg(16, 16, 1))
                    .file_name("selfie.jpg")
                    .mime_str("image/jpeg")
                    .expect("mime"),
            )
            .text("sandbox_result", sandbox.to_owned())
            .text("callback_url", sink.url.clone())
            .part(
                "partner_params",
                reqwest::multipart::Part::text(r#"{"order":"42"}"#)
                    .mime_str("application/json")
                    .expect("mime"),
            );
        for i in 0..7 {
            form = form.part(
                "liveness_images",
                reqwest::multipart::Part::bytes(jpeg(8, 8, i))
                    .file_name(format!("l{i}.jpg"))
                    .mime_str("image/jpeg")
                    .expect("mime"),
            );
        }
        form
    };
    let signed = |request: reqwest::RequestBuilder, key: &str| {
        let creds = Credentials::new(PARTNER_ID, ApiKey::new(key));
        let (timestamp, signature) = creds.sign_now();
        request
            .header("SmileID-Partner-ID", PARTNER_ID)
            .header("SmileID-Timestamp", timestamp)
            .header("SmileID-Request-Signature", signature.as_str())
    };
    for (sandbox, status) in [("0", "approved"), ("1", "rejected"), ("2", "pending")] {
        let response = signed(http.post(&url), API_KEY)
            .multipart(form(ENROLLED_USER, sandbox))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], status);
        assert_eq!(body["job_type"], "smart_selfie_authentication");
        assert_eq!(body["partner_params"]["order"], "42");
    }
    let bad = signed(http.post(&url), "wrong")
        .multipart(form(ENROLLED_USER, "0"))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 401);
    let stranger = signed(http.post(&url), API_KEY)
        .multipart(form("stranger", "0"))
        .send()
        .await
        .expect("post");
    assert_eq!(stranger.json::<Value>().await.expect("json")["code"], "2210");
    // v2 jobs call back in the v1 result format.
    let bodies = sink.wait_for(3, Duration::from_secs(5)).await;
    assert!(
        bodies
            .iter()
            .all(|b| b["ResultCode"].is_string() && b["signature"].is_string())
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn simulator_serves_https_when_given_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write");
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).expect("write");
    let sim = start_simulator(|config| {
        config.tls = Some(selfie_auth::simulator::TlsFiles {
            cert: cert_path.clone(),
            key: key_path.clone(),
        });
    })
    .await;
    assert!(sim.url().starts_with("https://"));
    let root = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).expect("root");
    let http = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .expect("client");
    let (timestamp, signature) = credentials().sign_now();
    let response = http
        .post(format!("{}/upload", sim.v1_url()))
        .json(
            &json!({"smile_client_id": PARTNER_ID, "timestamp": timestamp, "signature": signature.as_str(),
                      "partner_params": {"user_id": ENROLLED_USER, "job_id": "tls-1", "job_type": 2}}),
        )
        .send()
        .await
        .expect("https post");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["upload_url"]
            .as_str()
            .is_some_and(|url| url.starts_with("https://"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn memory_stays_bounded_by_evicting_old_jobs() {
    let sim = start_simulator(|config| config.max_jobs = 3).await;
    let client = client_for(&sim);
    for i in 0..6 {
        submit(&client, &params(ENROLLED_USER, &format!("evict-{i}"), 2, &[]), 0, None)
            .await
            .expect("submit");
    }
    let http = reqwest::Client::new();
    let status = |job: &'static str| {
        let http = http.clone();
        let url = format!("{}/_control/jobs/{job}", sim.url());
        async move { http.get(url).send().await.expect("get").status().as_u16() }
    };
    assert_eq!(status("evict-0").await, 404);
    assert_eq!(status("evict-5").await, 200);
    assert!(sim.counters().uploads_by_job_id.len() <= 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn every_timestamp_style_and_gzip_bodies_are_accepted() {
    use std::io::Write as _;
    let sim = start_simulator(|_| {}).await;
    let http = reqwest::Client::new();
    let creds = credentials();
    let upload = |job_id: &str, timestamp: Value, signature: String| {
        json!({"smile_client_id": PARTNER_ID, "timestamp": timestamp, "signature": signature,
               "partner_params": {"user_id": ENROLLED_USER, "job_id": job_id, "job_type": "2"}})
    };
    // Python (µs, +00:00), Node (ms, Z), Ruby, Java (variable fraction), PHP (ATOM), and an old one.
    let styles = [
        "2026-11-26T00:08:52.784359+00:00",
        "2026-11-26T00:12:34.401Z",
        "2022-10-27 13:25:46 +0000",
        "2024-01-15T10:30:00.123456Z",
        "2024-01-15T10:30:00+00:00",
    ];
    for (index, timestamp) in styles.iter().enumerate() {
        let body = upload(
            &format!("ts-{index}"),
            json!(timestamp),
            creds.sign(timestamp).as_str().to_owned(),
        );
        let response = http
            .post(format!("{}/upload", sim.v1_url()))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 200, "{timestamp}");
    }
    // Node callers may pass Unix milliseconds: signed as the ISO string, sent as a number.
    let body = upload(
        "ts-number",
        json!(1_700_000_000_000_i64),
        creds.sign("2023-11-14T22:13:20.000Z").as_str().to_owned(),
    );
    let response = http
        .post(format!("{}/upload", sim.v1_url()))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);

    // Android gzips request bodies.
    let (timestamp, signature) = creds.sign_now();
    let plain = serde_json::to_vec(&upload("gz-1", json!(timestamp), signature.as_str().to_owned())).expect("json");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&plain).expect("gzip");
    let response = http
        .post(format!("{}/upload", sim.v1_url()))
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(encoder.finish().expect("gzip"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let broken = http
        .post(format!("{}/upload", sim.v1_url()))
        .header("Content-Encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .expect("post");
    assert_eq!(broken.json::<Value>().await.expect("json")["code"], "2203");
    sim.shutdown().await;
}

#[tokio::test]
async fn user_management_is_signed_and_has_every_consequence_smile_id_documents() {
    use selfie_auth::simulator::UserStanding;
    use selfie_auth::smileid::UserAction;
    let sim = start_simulator(|_| {}).await;
    let client = client_with(&sim, |config| config.contact_email = Some("ops@example.com".into()));
    let wrong = client_with(&sim, |config| {
        config.credentials = Credentials::new(PARTNER_ID, ApiKey::new("nope"));
    });
    assert!(matches!(
        wrong.manage_user(ENROLLED_USER, UserAction::Delete).await,
        Err(SmileIdError::Refused {
            code: ErrorCode::Unauthorized,
            ..
        })
    ));
    assert_eq!(
        sim.user_standing(ENROLLED_USER).0,
        Some(UserStanding::Active),
        "a forged call changes nothing"
    );

    client
        .manage_user(ENROLLED_USER, UserAction::Deactivate)
        .await
        .expect("deactivate");
    let refused = submit(
        &client,
        &params(ENROLLED_USER, "um-1", JOB_TYPE_AUTHENTICATION, &[]),
        0,
        None,
    )
    .await;
    assert!(
        matches!(&refused, Err(error) if matches!(error.source, SmileIdError::Refused { code: ErrorCode::UserDisabled, .. })),
        "2207 while deactivated: {refused:?}"
    );
    client
        .manage_user(ENROLLED_USER, UserAction::Reactivate)
        .await
        .expect("reactivate");
    let enrolment = params(ENROLLED_USER, "um-2", JOB_TYPE_REGISTRATION, &[]);
    let refused = submit(&client, &enrolment, 0, None).await;
    assert!(
        matches!(&refused, Err(error) if matches!(error.source, SmileIdError::Refused { code: ErrorCode::UserAlreadyEnrolled, .. })),
        "2209 for an enrolled user: {refused:?}"
    );
    client
        .manage_user(ENROLLED_USER, UserAction::AllowNewEnroll)
        .await
        .expect("allow");
    submit(
        &client,
        &params(ENROLLED_USER, "um-3", JOB_TYPE_REGISTRATION, &[]),
        0,
        None,
    )
    .await
    .expect("enrolled again after allow_new_enroll");
    client
        .manage_user(ENROLLED_USER, UserAction::FlagFraud)
        .await
        .expect("flag");
    assert!(sim.user_standing(ENROLLED_USER).1);
    client
        .manage_user(ENROLLED_USER, UserAction::ClearFraud)
        .await
        .expect("clear");
    client
        .manage_user(ENROLLED_USER, UserAction::Delete)
        .await
        .expect("delete");
    client
        .manage_user(ENROLLED_USER, UserAction::Delete)
        .await
        .expect("deleting again is idempotent");
    for (job_id, job_type) in [("um-4", JOB_TYPE_AUTHENTICATION), ("um-5", JOB_TYPE_REGISTRATION)] {
        let refused = submit(&client, &params(ENROLLED_USER, job_id, job_type, &[]), 0, None).await;
        assert!(
            matches!(&refused, Err(error) if matches!(error.source, SmileIdError::Refused { code: ErrorCode::UserDeleted, .. })),
            "2208 after deletion: {refused:?}"
        );
    }
    assert!(matches!(
        client.manage_user(ENROLLED_USER, UserAction::Reactivate).await,
        Err(SmileIdError::Refused {
            code: ErrorCode::UserDeleted,
            ..
        })
    ));
    let calls = sim.user_calls();
    let actions: Vec<&str> = calls.iter().map(|call| call.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "deactivate",
            "reactivate",
            "allow_new_enroll",
            "flag_fraud",
            "clear_fraud",
            "delete",
            "delete",
            "reactivate"
        ],
        "the forged call is not recorded"
    );
    assert!(
        calls
            .iter()
            .all(|call| call.environment == "test" && call.email.as_deref() == Some("ops@example.com"))
    );
    sim.shutdown().await;
}
