//! What our client puts on the wire, field by field, against what the official
//! server SDKs send (the Python and Node server SDKs: prep upload, PUT, job_status). A capture server on
//! 127.0.0.1:0 records the requests.

use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{post, put};
use selfie_auth::smileid::{ClientConfig, Environment, JobSubmission, PartnerParams, SmileIdClient, StatusOptions};
use selfie_auth_testkit::*;
use serde_json::{Value, json};

/// The content type and bytes of the uploaded zip.
type CapturedZip = Option<(String, Vec<u8>)>;

#[derive(Clone, Default)]
struct Captured {
    upload: Arc<Mutex<Option<Value>>>,
    zip: Arc<Mutex<CapturedZip>>,
    status: Arc<Mutex<Option<Value>>>,
    base: Arc<Mutex<String>>,
}

async fn capture_server() -> (String, Captured) {
    let captured = Captured::default();
    let router = axum::Router::new()
        .route(
            "/v1/upload",
            post(|State(c): State<Captured>, body: Bytes| async move {
                *c.upload.lock().expect("lock") = serde_json::from_slice(&body).ok();
                let base = c.base.lock().expect("lock").clone();
                axum::Json(
                    json!({"upload_url": format!("{base}/s3/selfie.zip?X-Amz-Signature=abc"), "ref_id": "r",
                                  "smile_job_id": "0000001003", "camera_config": "null", "code": "2202"}),
                )
            }),
        )
        .route(
            "/s3/selfie.zip",
            put(
                |State(c): State<Captured>, headers: HeaderMap, body: Bytes| async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    *c.zip.lock().expect("lock") = Some((content_type, body.to_vec()));
                    ""
                },
            ),
        )
        .route(
            "/v1/job_status",
            post(|State(c): State<Captured>, body: Bytes| async move {
                *c.status.lock().expect("lock") = serde_json::from_slice(&body).ok();
                let (timestamp, signature) = credentials().sign_now();
                axum::Json(
                    json!({"timestamp": timestamp, "signature": signature.as_str(), "job_complete": false,
                                  "job_success": false, "code": "2302", "result": "No zip uploaded yet"}),
                )
            }),
        )
        .with_state(captured.clone());
    let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    captured.base.lock().expect("lock").clone_from(&base);
    selfie_auth::task::spawn(async move { axum::serve(listener, router).await });
    (base, captured)
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn upload_zip_and_job_status_have_the_server_sdk_shape() {
    let (base, captured) = capture_server().await;
    let client = SmileIdClient::new(ClientConfig::new(
        Environment::Custom(format!("{base}/v1")),
        credentials(),
    ))
    .expect("client");
    let params = PartnerParams {
        user_id: "user-0001".into(),
        job_id: "job-rs-b".into(),
        job_type: 2,
        extra: [("optional_info".to_owned(), "kept".to_owned())].into(),
    };
    let selfie = bytes::Bytes::from(jpeg(64, 64, 1));
    let liveness: Vec<bytes::Bytes> = (0..8).map(|i| bytes::Bytes::from(jpeg(32, 32, i))).collect();
    let callback = "https://partner.example.com/smile/callback";
    let job = JobSubmission {
        partner_params: &params,
        callback_url: Some(callback),
        selfie_jpeg: &selfie,
        liveness_jpegs: &liveness,
        may_resume: false,
        allow_new_enroll: false,
    };
    let submitted = client.submit(&job).await.expect("submit");
    assert_eq!(submitted.smile_job_id, "0000001003");

    // POST /v1/upload: the Python SDK's fields, plus `retry` as the mobile SDKs send it.
    let upload = captured.upload.lock().expect("lock").clone().expect("upload captured");
    assert_eq!(
        keys(&upload),
        [
            "callback_url",
            "file_name",
            "model_parameters",
            "partner_params",
            "retry",
            "signature",
            "smile_client_id",
            "source_sdk",
            "source_sdk_version",
            "timestamp",
            "use_enrolled_image"
        ]
    );
    assert_eq!(upload["file_name"], "selfie.zip");
    assert_eq!(upload["smile_client_id"], PARTNER_ID);
    assert_eq!(
        upload["partner_params"],
        json!({"user_id": "user-0001", "job_id": "job-rs-b", "job_type": 2, "optional_info": "kept"})
    );
    assert!(
        upload["partner_params"]["job_type"].is_u64(),
        "job_type is a JSON number, as Python sends it"
    );
    assert_eq!(upload["model_parameters"], json!({}));
    assert_eq!(upload["callback_url"], callback);
    assert_eq!(upload["use_enrolled_image"], false);
    assert_eq!(upload["retry"], false);
    assert_eq!(upload["source_sdk"], "selfie-auth");
    assert_eq!(upload["source_sdk_version"], env!("CARGO_PKG_VERSION"));
    let timestamp = upload["timestamp"].as_str().expect("timestamp string");
    assert!(selfie_auth::smileid::signature::parse_timestamp(timestamp).is_some());
    assert!(credentials().verify(timestamp, upload["signature"].as_str().expect("signature")));

    // PUT of the zip.
    let (content_type, zip_bytes) = captured.zip.lock().expect("lock").clone().expect("zip captured");
    assert_eq!(content_type, "application/zip");
    let mut archive = zip::ZipArchive::new(Cursor::new(zip_bytes)).expect("zip");
    let names: Vec<String> = (0..archive.len())
        .map(|i| archive.by_index(i).expect("entry").name().expect("name").to_string())
        .collect();
    let mut expected = vec!["info.json".to_owned(), "selfie.jpg".to_owned()];
    expected.extend((0..8).map(|i| format!("liveness_{i}.jpg")));
    assert_eq!(
        names, expected,
        "info.json first, then the image files, like the Python SDK"
    );
    for index in 0..archive.len() {
        let entry = archive.by_index(index).expect("entry");
        assert_eq!(
            entry.compression(),
            zip::CompressionMethod::Stored,
            "every entry is stored, as the Node SDK sends it"
        );
    }
    let mut selfie_entry = Vec::new();
    archive
        .by_name("selfie.jpg")
        .expect("selfie")
        .read_to_end(&mut selfie_entry)
        .expect("read");
    assert_eq!(selfie_entry, selfie);

    let mut info_text = String::new();
    archive
        .by_name("info.json")
        .expect("info")
        .read_to_string(&mut info_text)
        .expect("read");
    let info: Value = serde_json::from_str(&info_text).expect("info.json");
    assert_eq!(
        keys(&info),
        [
            "id_info",
            "images",
            "misc_information",
            "package_information",
            "server_information"
        ]
    );
    assert_eq!(
        keys(&info["package_information"]),
        ["apiVersion", "language"],
        "only the fields the server SDKs send"
    );
    assert_eq!(
        info["package_information"]["apiVersion"],
        json!({"buildNumber": 0, "majorVersion": 2, "minorVersion": 0})
    );
    let misc = &info["misc_information"];
    assert_eq!(
        keys(misc),
        [
            "callback_url",
            "file_name",
            "partner_params",
            "retry",
            "signature",
            "smile_client_id",
            "timestamp",
            "userData"
        ]
    );
    assert_eq!(misc["retry"], "false", "retry is a string in info.json");
    assert_eq!(misc["partner_params"], upload["partner_params"]);
    assert_eq!(misc["file_name"], "selfie.zip");
    assert_eq!(misc["smile_client_id"], PARTNER_ID);
    assert_eq!(misc["callback_url"], callback);
    assert_eq!(
        misc["timestamp"], upload["timestamp"],
        "the prep_upload pair is reused, as Python does"
    );
    assert_eq!(misc["signature"], upload["signature"]);
    assert_eq!(
        keys(&misc["userData"]),
        [
            "countryCode",
            "countryName",
            "email",
            "fbUserID",
            "firstName",
            "gender",
            "isVerifiedProcess",
            "lastName",
            "name",
            "phone"
        ]
    );
    assert_eq!(info["id_info"], json!({}));
    let images = info["images"].as_array().expect("images");
    assert_eq!(images.len(), 9);
    assert_eq!(
        images[0],
        json!({"image_type_id": 0, "image": "", "file_name": "selfie.jpg"})
    );
    for (index, image) in images[1..].iter().enumerate() {
        assert_eq!(
            *image,
            json!({"image_type_id": 4, "image": "", "file_name": format!("liveness_{index}.jpg")})
        );
    }
    assert_eq!(
        info["server_information"],
        format!("{base}/s3/selfie.zip?X-Amz-Signature=abc")
    );

    // POST /v1/job_status.
    let status = client
        .job_status(
            "user-0001",
            "job-rs-b",
            StatusOptions {
                history: true,
                image_links: false,
            },
        )
        .await
        .expect("status");
    assert!(!status.job_complete);
    assert_eq!(status.pending_text.as_deref(), Some("No zip uploaded yet"));
    let body = captured.status.lock().expect("lock").clone().expect("status captured");
    assert_eq!(
        keys(&body),
        [
            "history",
            "image_links",
            "job_id",
            "partner_id",
            "signature",
            "source_sdk",
            "source_sdk_version",
            "timestamp",
            "user_id"
        ]
    );
    assert_eq!(
        (&body["partner_id"], &body["user_id"], &body["job_id"]),
        (&json!(PARTNER_ID), &json!("user-0001"), &json!("job-rs-b"))
    );
    assert_eq!((&body["history"], &body["image_links"]), (&json!(true), &json!(false)));
    assert!(credentials().verify(
        body["timestamp"].as_str().expect("ts"),
        body["signature"].as_str().expect("sig")
    ));
}
