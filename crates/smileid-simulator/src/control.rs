//! The control API under `/_control`, for tests and demos to script scenarios.
//!
//! | method and path | body | effect |
//! |---|---|---|
//! | `GET /_control/stats` | | counters (requests, callbacks, jobs and uploads per job_id) |
//! | `GET /_control/jobs/{job_id}` | | the job as the simulator holds it |
//! | `POST /_control/jobs/{job_id}/replay` | | posts every result of the job again |
//! | `POST /_control/enroll` | `{"user_id": "..."}` | enrols a user |
//! | `GET /_control/users/{user_id}` | | where the user stands, flagged or not, allowed to re-enrol or not |
//! | `PUT /_control/users/{user_id}` | `{"standing": "disabled"}` | sets where the user stands |
//! | `GET /_control/user-calls` | | the user-management calls received (`POST /v2/block-user`), oldest first |
//! | `PUT /_control/faults/{endpoint}` | [`Fault`] | scripts `upload`, `put`, `job_status`, `v2_authentication` or `block_user` |
//! | `DELETE /_control/faults` | | clears every fault |
//! | `PUT /_control/callbacks` | `{"mode": "deliver" \| "drop" \| "duplicate" \| "reorder"}` | callback delivery mode |
//! | `POST /_control/reset` | | clears faults and counters, mode back to deliver |

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;

use super::app::App;
use super::delivery;
use super::state::{CallbackMode, Counters, Endpoint, Fault, UserCall, UserStanding};

pub fn router() -> axum::Router<App> {
    axum::Router::new()
        .route("/_control/stats", get(stats))
        .route("/_control/jobs/{job_id}", get(job))
        .route("/_control/jobs/{job_id}/replay", post(replay))
        .route("/_control/enroll", post(enroll))
        .route("/_control/users/{user_id}", put(set_user).get(user))
        .route("/_control/user-calls", get(user_calls))
        .route("/_control/faults/{endpoint}", put(set_fault).delete(clear_fault))
        .route("/_control/faults", axum::routing::delete(clear_faults))
        .route("/_control/callbacks", put(set_callback_mode))
        .route("/_control/reset", post(reset))
}

async fn stats(State(app): State<App>) -> Json<Counters> {
    Json(app.state().counters.clone())
}

async fn job(State(app): State<App>, Path(job_id): Path<String>) -> Response {
    match app.state().jobs.get(&job_id) {
        Some(job) => Json(job.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "unknown job_id"}))).into_response(),
    }
}

async fn replay(State(app): State<App>, Path(job_id): Path<String>) -> StatusCode {
    if delivery::replay(&app, &job_id) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
struct Enroll {
    user_id: String,
}

async fn enroll(State(app): State<App>, Json(body): Json<Enroll>) -> StatusCode {
    if body.user_id.trim().is_empty() {
        return StatusCode::BAD_REQUEST;
    }
    app.state().users.insert(body.user_id, UserStanding::Active);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Standing {
    standing: UserStanding,
}

/// `PUT /_control/users/{user_id}` `{"standing": "disabled"}`: where an enrolled
/// user stands (`active`, `disabled`, `deleted`, `re_enrollment_required`, `no_photo`).
async fn set_user(State(app): State<App>, Path(user_id): Path<String>, Json(body): Json<Standing>) -> StatusCode {
    if user_id.trim().is_empty() {
        return StatusCode::BAD_REQUEST;
    }
    app.state().users.insert(user_id, body.standing);
    StatusCode::NO_CONTENT
}

async fn user(State(app): State<App>, Path(user_id): Path<String>) -> Json<serde_json::Value> {
    let state = app.state();
    Json(json!({
        "user_id": user_id,
        "standing": state.users.get(&user_id),
        "flagged": state.flagged.contains(&user_id),
        "reenrollment_allowed": state.reenrollment_allowed.contains(&user_id),
    }))
}

async fn user_calls(State(app): State<App>) -> Json<Vec<UserCall>> {
    Json(app.state().user_calls.iter().cloned().collect())
}

async fn set_fault(State(app): State<App>, Path(endpoint): Path<String>, Json(fault): Json<Fault>) -> Response {
    let Some(endpoint) = Endpoint::parse(&endpoint) else {
        let known = "upload, put, job_status, v2_authentication, block_user";
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("unknown endpoint; known: {known}")})),
        )
            .into_response();
    };
    if fault.status.is_some_and(|status| StatusCode::from_u16(status).is_err()) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "status is not an HTTP status"})),
        )
            .into_response();
    }
    app.state().faults.insert(endpoint, fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_fault(State(app): State<App>, Path(endpoint): Path<String>) -> StatusCode {
    match Endpoint::parse(&endpoint) {
        Some(endpoint) => {
            app.state().faults.remove(&endpoint);
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn clear_faults(State(app): State<App>) -> StatusCode {
    app.state().faults.clear();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ModeBody {
    mode: CallbackMode,
}

async fn set_callback_mode(State(app): State<App>, Json(body): Json<ModeBody>) -> StatusCode {
    app.state().callback_mode = body.mode;
    StatusCode::NO_CONTENT
}

async fn reset(State(app): State<App>) -> StatusCode {
    let mut state = app.state();
    state.faults.clear();
    state.counters = Counters::default();
    state.user_calls.clear();
    state.callback_mode = CallbackMode::Deliver;
    StatusCode::NO_CONTENT
}
