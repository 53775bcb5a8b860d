//! `POST /v2/block-user`: Smile ID's user management (<https://docs.usesmileid.com/further-reading/faqs/how-to-re-enroll-or-delete-a-user>).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::app::{App, decode_json, refuse, value_text};
use super::state::{Endpoint, USER_CALLS_KEPT, UserCall, UserStanding};
use smileid::UserAction;
use smileid::codes::ErrorCode;

pub async fn block_user(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = app.fault(Endpoint::BlockUser).await {
        return response;
    }
    app.state().counters.user_management_requests += 1;
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(partner), Some(timestamp), Some(signature)) = (
        header("smileid-partner-id"),
        header("smileid-timestamp"),
        header("smileid-request-signature"),
    ) else {
        return refuse(&ErrorCode::MissingParameter);
    };
    if !app.signature_valid(partner, &Value::String(timestamp.to_owned()), signature) {
        app.state().counters.signature_failures += 1;
        return refuse(&ErrorCode::Unauthorized);
    }
    let request = match decode_json(&headers, &body).await {
        Ok(Value::Object(request)) => request,
        Ok(_) => return refuse(&ErrorCode::InvalidJson),
        Err(code) => return refuse(&code),
    };
    if let Err(code) = app.check_body_signature(&Value::Object(request.clone()), &["partner_id"]) {
        return refuse(&code);
    }
    let user_id = request
        .get("user_id")
        .and_then(value_text)
        .filter(|user| !user.trim().is_empty());
    let environment = request.get("environment").and_then(Value::as_str);
    let (Some(user_id), Some(environment @ ("test" | "production")), Some(action)) =
        (user_id, environment, UserAction::from_body(&request))
    else {
        return refuse(&ErrorCode::MissingParameter);
    };
    let mut state = app.state();
    if state.user_calls.len() >= USER_CALLS_KEPT {
        state.user_calls.pop_front();
    }
    state.user_calls.push_back(UserCall {
        user_id: user_id.clone(),
        action: action.as_str().to_owned(),
        environment: environment.to_owned(),
        email: request.get("email").and_then(Value::as_str).map(str::to_owned),
    });
    let standing = state.users.get(&user_id).copied();
    // A deleted user_id is gone for good: only deleting it again is accepted.
    if standing == Some(UserStanding::Deleted) && action != UserAction::Delete {
        return refuse(&ErrorCode::UserDeleted);
    }
    match action {
        UserAction::AllowNewEnroll => {
            state.reenrollment_allowed.insert(user_id);
        }
        UserAction::Deactivate => {
            state.users.insert(user_id, UserStanding::Disabled);
        }
        UserAction::Reactivate => {
            if standing == Some(UserStanding::Disabled) {
                state.users.insert(user_id, UserStanding::Active);
            }
        }
        UserAction::FlagFraud => {
            state.flagged.insert(user_id);
        }
        UserAction::ClearFraud => {
            state.flagged.remove(&user_id);
        }
        UserAction::Delete => {
            state.flagged.remove(&user_id);
            state.reenrollment_allowed.remove(&user_id);
            state.users.insert(user_id, UserStanding::Deleted);
        }
    }
    (StatusCode::OK, Json(json!({"success": true, "code": "2200"}))).into_response()
}
