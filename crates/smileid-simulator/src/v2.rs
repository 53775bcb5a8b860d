//! v2: `POST /v2/smart-selfie-authentication`, multipart, header-signed, synchronous.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{Map, Value, json};

use super::app::{App, gunzip_off_thread, is_gzipped};
use super::delivery;
use super::results::{self, SandboxOutcome};
use super::state::{Endpoint, SimJob, UserStanding};
use smileid::codes::ErrorCode;
use smileid::signature::format_timestamp;

fn v2_error(status: StatusCode, code: &ErrorCode) -> Response {
    (status, Json(json!({"error": code.text(), "code": code.code()}))).into_response()
}

#[derive(Default)]
struct Form {
    user_id: Option<String>,
    selfie: Option<Bytes>,
    liveness: Vec<Bytes>,
    partner_params: Map<String, Value>,
    callback_url: Option<String>,
    sandbox_result: Option<String>,
}

async fn read_form(headers: &HeaderMap, body: Bytes) -> Option<Form> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let boundary = multer::parse_boundary(content_type).ok()?;
    let body = if is_gzipped(headers) {
        gunzip_off_thread(body).await?
    } else {
        body
    };
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.ok()? {
        let name = field.name().unwrap_or_default().to_owned();
        let data = field.bytes().await.ok()?;
        let text = || String::from_utf8_lossy(&data).trim().to_owned();
        match name.as_str() {
            "user_id" => form.user_id = Some(text()).filter(|id| !id.is_empty()),
            "selfie_image" => form.selfie = Some(data),
            "liveness_images" => form.liveness.push(data),
            "partner_params" => {
                form.partner_params = serde_json::from_slice::<Map<String, Value>>(&data).unwrap_or_default();
            }
            "callback_url" => form.callback_url = Some(text()).filter(|url| !url.is_empty()),
            "sandbox_result" => form.sandbox_result = Some(text()),
            _ => {}
        }
    }
    Some(form)
}

/// Whether the request carries a valid signature in v2's headers; a wrong
/// one is counted.
fn signed_in_headers(app: &App, headers: &HeaderMap) -> bool {
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(partner), Some(timestamp), Some(signature)) = (
        header_text("SmileID-Partner-ID"),
        header_text("SmileID-Timestamp"),
        header_text("SmileID-Request-Signature"),
    ) else {
        return false;
    };
    if app.signature_valid(&partner, &Value::String(timestamp), &signature) {
        return true;
    }
    app.state().counters.signature_failures += 1;
    false
}

pub async fn smart_selfie_authentication(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = app.fault(Endpoint::V2Authentication).await {
        return response;
    }
    app.state().counters.v2_requests += 1;
    if !signed_in_headers(&app, &headers) {
        return v2_error(StatusCode::UNAUTHORIZED, &ErrorCode::Unauthorized);
    }
    let Some(form) = read_form(&headers, body).await else {
        return v2_error(StatusCode::BAD_REQUEST, &ErrorCode::InvalidJson);
    };
    let (Some(user_id), Some(selfie)) = (form.user_id, form.selfie) else {
        return v2_error(StatusCode::BAD_REQUEST, &ErrorCode::MissingParameter);
    };
    if selfie.is_empty() || form.liveness.is_empty() {
        return v2_error(StatusCode::BAD_REQUEST, &ErrorCode::MissingParameter);
    }

    let mut partner_params = form.partner_params;
    if let Some(sandbox) = form.sandbox_result {
        partner_params.insert("sandbox_result".into(), Value::String(sandbox));
    }
    let job_id = format!(
        "v2-{}",
        Alphanumeric.sample_string(&mut rand::rng(), 20).to_ascii_lowercase()
    );
    partner_params.insert("job_id".into(), Value::String(job_id.clone()));
    partner_params.insert("user_id".into(), Value::String(user_id.clone()));
    partner_params.insert("job_type".into(), json!(2));
    let outcomes = results::authentication_outcomes(SandboxOutcome::from_partner_params(&partner_params));
    let first = outcomes[0];

    let created_at = format_timestamp(chrono::Utc::now());
    {
        let mut state = app.state();
        if let Some(code) = UserStanding::refuses_authentication(state.users.get(&user_id).copied()) {
            return v2_error(StatusCode::BAD_REQUEST, &code);
        }
        let smile_job_id = state.next_smile_job_id();
        *state.counters.jobs_created_by_job_id.entry(job_id.clone()).or_default() += 1;
        state.insert_job(SimJob {
            job_id: job_id.clone(),
            user_id: user_id.clone(),
            job_type: 2,
            ref_id: format!("{}-{smile_job_id}-v2", app.credentials.partner_id),
            smile_job_id,
            upload_token: String::new(),
            partner_params: partner_params.clone(),
            callback_url: form.callback_url.or_else(|| app.default_callback_url.clone()),
            zip_received: true,
            liveness_frames: form.liveness.len(),
            results: Vec::new(),
            held_callbacks: Vec::new(),
        });
    }
    delivery::process(app.clone(), job_id.clone(), outcomes, true);

    let status = match first.code {
        "0820" | "1220" => "approved",
        "0822" | "0824" | "0825" | "0826" => "pending",
        _ => "rejected",
    };
    // v2 answers the caller's extra params only, as strings.
    let echoed: Map<String, Value> = partner_params
        .into_iter()
        .filter(|(key, _)| !matches!(key.as_str(), "job_id" | "user_id" | "job_type"))
        .map(|(key, value)| {
            (
                key,
                Value::String(value.as_str().map_or_else(|| value.to_string(), str::to_owned)),
            )
        })
        .collect();
    Json(json!({
        "code": first.code,
        "created_at": created_at,
        "job_id": job_id,
        "job_type": "smart_selfie_authentication",
        "message": first.text,
        "partner_id": app.credentials.partner_id,
        "partner_params": echoed,
        "status": status,
        "updated_at": format_timestamp(chrono::Utc::now()),
        "user_id": user_id,
    }))
    .into_response()
}
