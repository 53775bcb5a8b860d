//! v1: `POST /v1/upload`, the pre-signed `PUT`, `POST /v1/job_status`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{Map, Value, json};

use super::app::{App, decode_json, refuse, truthy, value_text};
use super::delivery;
use super::results::{self, SandboxOutcome};
use super::state::{Endpoint, SimJob, SimState, UserStanding};
use super::zip_check::{self, ZipProblem};
use smileid::codes::ErrorCode;
use smileid::signature::{ApiKey, Credentials};

/// What the user's standing refuses of a job of `job_type`; an enrolment
/// uses up the user's allowance to enrol again.
fn user_refusal(state: &mut SimState, user_id: &str, job_type: u32, allow_new_enroll: bool) -> Option<ErrorCode> {
    let standing = state.users.get(user_id).copied();
    let refusal = match job_type {
        2 => UserStanding::refuses_authentication(standing),
        4 => {
            let allowed = allow_new_enroll || state.reenrollment_allowed.contains(user_id);
            UserStanding::refuses_enrolment(standing, allowed)
        }
        _ => None,
    };
    if refusal.is_none() && job_type == 4 {
        // The allowance is for one new enrolment.
        state.reenrollment_allowed.remove(user_id);
    }
    refusal
}

pub async fn upload(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = app.fault(Endpoint::Upload).await {
        return response;
    }
    let request = match decode_json(&headers, &body).await {
        Ok(request) => request,
        Err(code) => return refuse(&code),
    };
    app.state().counters.prep_uploads += 1;
    if let Err(code) = app.check_body_signature(&request, &["smile_client_id", "partner_id"]) {
        return refuse(&code);
    }
    // The real service answers 2212 when partner_params is null (as the official SDKs' recorded sandbox traffic shows).
    let Some(params) = request.get("partner_params").and_then(Value::as_object) else {
        return refuse(&ErrorCode::InvalidJobType);
    };
    let job_type = params
        .get("job_type")
        .and_then(value_text)
        .and_then(|text| text.trim().parse::<u32>().ok());
    let Some(job_type @ (2 | 4)) = job_type else {
        return refuse(&ErrorCode::InvalidJobType);
    };
    let text_param = |key| {
        params
            .get(key)
            .and_then(value_text)
            .filter(|text| !text.trim().is_empty())
    };
    let (Some(user_id), Some(job_id)) = (text_param("user_id"), text_param("job_id")) else {
        return refuse(&ErrorCode::MissingParameter);
    };
    let retry = truthy(request.get("retry"));
    let callback_url = request
        .get("callback_url")
        .and_then(Value::as_str)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .or_else(|| app.default_callback_url.clone());
    let upload_token = Alphanumeric.sample_string(&mut rand::rng(), 32);

    let allow_new_enroll = truthy(request.get("allow_new_enroll"));
    let mut state = app.state();
    if let Some(code) = user_refusal(&mut state, &user_id, job_type, allow_new_enroll) {
        return refuse(&code);
    }
    let (smile_job_id, ref_id) = match state.jobs.get_mut(&job_id) {
        Some(_) if !retry => return refuse(&ErrorCode::JobAlreadyExists),
        Some(existing) => {
            existing.upload_token.clone_from(&upload_token);
            (existing.smile_job_id.clone(), existing.ref_id.clone())
        }
        None => {
            let smile_job_id = state.next_smile_job_id();
            let suffix = Alphanumeric.sample_string(&mut rand::rng(), 30).to_ascii_lowercase();
            let ref_id = format!("{}-{smile_job_id}-{suffix}", app.credentials.partner_id);
            *state.counters.jobs_created_by_job_id.entry(job_id.clone()).or_default() += 1;
            state.insert_job(SimJob {
                job_id: job_id.clone(),
                user_id,
                job_type,
                smile_job_id: smile_job_id.clone(),
                ref_id: ref_id.clone(),
                upload_token: upload_token.clone(),
                partner_params: params.clone(),
                callback_url,
                zip_received: false,
                liveness_frames: 0,
                results: Vec::new(),
                held_callbacks: Vec::new(),
            });
            (smile_job_id, ref_id)
        }
    };
    drop(state);
    let expires = chrono::Utc::now().timestamp() + 900;
    let upload_url = format!(
        "{}/uploads/{ref_id}/selfie.zip?Content-Type=application%2Fzip&Expires={expires}&X-Amz-Signature={upload_token}",
        app.public_url
    );
    Json(json!({
        "upload_url": upload_url,
        "ref_id": ref_id,
        "smile_job_id": smile_job_id,
        "camera_config": "null",
        "code": "2202",
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
pub struct UploadQuery {
    #[serde(rename = "X-Amz-Signature", default)]
    signature: String,
}

pub async fn put_zip(
    State(app): State<App>,
    Path(ref_id): Path<String>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = app.fault(Endpoint::Put).await {
        return response;
    }
    // Content-Type is part of a pre-signed S3 URL's signature.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !content_type.eq_ignore_ascii_case("application/zip") {
        return (
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch: Content-Type must be application/zip",
        )
            .into_response();
    }
    let job_id = {
        let mut state = app.state();
        let Some(job_id) = state.by_ref.get(&ref_id).cloned() else {
            return (StatusCode::FORBIDDEN, "AccessDenied").into_response();
        };
        let Some(job) = state.jobs.get_mut(&job_id) else {
            return (StatusCode::FORBIDDEN, "AccessDenied").into_response();
        };
        if job.upload_token != query.signature {
            return (StatusCode::FORBIDDEN, "SignatureDoesNotMatch").into_response();
        }
        let first_zip = !job.zip_received;
        job.zip_received = true;
        state.counters.uploads += 1;
        *state.counters.uploads_by_job_id.entry(job_id.clone()).or_default() += 1;
        if !first_zip {
            // S3 overwrites the object; Smile ID has already processed the first one.
            return StatusCode::OK.into_response();
        }
        job_id
    };

    // S3 has the object now: Smile ID processes it whether or not the uploader
    // stays to hear the answer, so the work must not die with this request.
    let processing = crate::task::spawn(process_zip(app, job_id, body));
    let _ = processing.await;
    StatusCode::OK.into_response()
}

/// Inspects an uploaded zip and starts producing the job's results.
async fn process_zip(app: App, job_id: String, body: Bytes) {
    let inspected = tokio::task::spawn_blocking(move || zip_check::inspect(&body))
        .await
        .unwrap_or(Err(zip_check::ZipProblem::Corrupt));
    let (outcomes, selfie) = {
        let mut state = app.state();
        let Some(user_id) = state.jobs.get(&job_id).map(|job| job.user_id.clone()) else {
            return;
        };
        // A flagged user's jobs are processed and all marked failed.
        let flagged = state.flagged.contains(&user_id);
        let Some(job) = state.jobs.get_mut(&job_id) else {
            return;
        };
        let sandbox = if flagged {
            SandboxOutcome::Reject
        } else {
            SandboxOutcome::from_partner_params(&job.partner_params)
        };
        match &inspected {
            Ok(found) => {
                job.liveness_frames = found.liveness_frames;
                let outcomes = if job.job_type == 4 {
                    results::registration_outcomes(sandbox)
                } else {
                    results::authentication_outcomes(sandbox)
                };
                (outcomes, true)
            }
            Err(ZipProblem::Corrupt) => (vec![results::failure("0903", "Zip corrupt")], false),
            Err(ZipProblem::InvalidInfoJson | ZipProblem::NoSelfie) => (
                vec![results::failure(
                    "0001",
                    "Data invalid - selfie image unusable or missing",
                )],
                false,
            ),
        }
    };
    delivery::process(app.clone(), job_id, outcomes, selfie);
}

pub async fn job_status(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let spoil = match app.fault(Endpoint::JobStatus).await {
        Ok(spoil) => spoil,
        Err(response) => return response,
    };
    let request = match decode_json(&headers, &body).await {
        Ok(request) => request,
        Err(code) => return refuse(&code),
    };
    app.state().counters.job_status_requests += 1;
    if let Err(code) = app.check_body_signature(&request, &["partner_id", "smile_client_id"]) {
        return refuse(&code);
    }
    let job_id = request.get("job_id").and_then(value_text).unwrap_or_default();
    let user_id = request.get("user_id").and_then(value_text).unwrap_or_default();
    if job_id.is_empty() || user_id.is_empty() {
        return refuse(&ErrorCode::MissingParameter);
    }
    let mut body = {
        let mut state = app.state();
        *state.counters.job_status_by_job_id.entry(job_id.clone()).or_default() += 1;
        let Some(job) = state.jobs.get(&job_id).filter(|job| job.user_id == user_id) else {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "No job found for this user_id and job_id", "code": "2201"})),
            )
                .into_response();
        };
        let final_result = job.final_result();
        let mut body = Map::new();
        body.insert("job_complete".into(), Value::Bool(final_result.is_some()));
        body.insert(
            "job_success".into(),
            Value::Bool(final_result.is_some_and(results::is_success)),
        );
        body.insert("code".into(), json!("2302"));
        let latest = job.results.last().cloned().unwrap_or_else(|| {
            json!(if job.zip_received {
                "Job is being processed"
            } else {
                "No zip uploaded yet"
            })
        });
        body.insert("result".into(), latest);
        if truthy(request.get("history")) {
            body.insert("history".into(), Value::Array(job.results.clone()));
        }
        if truthy(request.get("image_links")) {
            let link = if job.zip_received {
                json!({"selfie_image": format!("{}/images/{}/selfie.jpg?X-Amz-Signature=simulated", app.public_url, job.smile_job_id)})
            } else {
                json!({"error": "No images uploaded"})
            };
            body.insert("image_links".into(), link);
        }
        Value::Object(body)
    };
    app.sign_into(&mut body);
    if spoil.corrupt_signature {
        let forged = Credentials::new(app.credentials.partner_id.clone(), ApiKey::new("not-the-partner-key"));
        body["signature"] = Value::String(
            forged
                .sign(body["timestamp"].as_str().unwrap_or_default())
                .as_str()
                .to_owned(),
        );
    }
    Json(body).into_response()
}
