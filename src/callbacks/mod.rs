//! The HTTP endpoint Smile ID posts results to.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use tracing::{info, warn};

use tokio::sync::OwnedSemaphorePermit;

use crate::jobs::memory::MemoryBudget;
use crate::jobs::{CallbackOutcome, JobService};
use crate::metrics::Metrics;
use crate::smile_adapter;
use crate::smileid::{CallbackError, Credentials, verify_callback};
use replays::SeenDeliveries;

mod replays;

/// Deliveries remembered at most: a few minutes of a busy partner's callbacks.
const DELIVERIES_KEPT: usize = 65_536;

/// Smile ID documents callbacks up to 1.5 MB.
pub const MAX_CALLBACK_BYTES: usize = 2 * 1024 * 1024;

/// Memory the bodies of callbacks being received may hold at once: genuine
/// callbacks are a few KiB, and the connection cap alone would allow gigabytes.
pub const CALLBACK_MEMORY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct CallbackSettings {
    pub path: String,
    pub credentials: Credentials,
    /// How far a callback's signed timestamp may be from now.
    pub window: Duration,
    /// Longest wait for a callback's body.
    pub body_timeout: Duration,
    /// Memory the bodies of callbacks being received may hold at once.
    pub memory: MemoryBudget,
}

#[derive(Clone)]
struct Endpoint {
    service: Arc<JobService>,
    metrics: Arc<Metrics>,
    settings: Arc<CallbackSettings>,
    seen: Arc<SeenDeliveries>,
}

/// The callback route, on `settings.path`.
pub fn router(service: Arc<JobService>, metrics: Arc<Metrics>, settings: CallbackSettings) -> Router {
    let path = settings.path.clone();
    // A delivery older than the window is refused anyway: remember it that long on either side.
    let seen = Arc::new(SeenDeliveries::new(settings.window * 2, DELIVERIES_KEPT));
    let endpoint = Endpoint {
        service,
        metrics,
        settings: Arc::new(settings),
        seen,
    };
    Router::new()
        .route(&path, post(receive).layer(DefaultBodyLimit::disable()))
        .with_state(endpoint)
}

#[tracing::instrument(
    name = "POST callback",
    skip_all,
    fields(
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        http.route = %endpoint.settings.path,
        http.response.status_code = tracing::field::Empty,
        body_bytes = tracing::field::Empty,
    )
)]
async fn receive(State(endpoint): State<Endpoint>, headers: HeaderMap, body: Body) -> Response {
    let ((outcome, (status, text)), unread) = match arrive(&endpoint.settings, &headers, body).await {
        // The body's room is held until the callback is handled.
        Ok((body, _room)) => (handle(&endpoint, &body).await, false),
        Err(refusal) => (refusal, true),
    };
    endpoint.metrics.callback(outcome);
    let span = tracing::Span::current();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let mut response = (status, text).into_response();
    if unread {
        // What is left of the body is never read, so the connection cannot
        // carry another request: told so, the client opens a new one rather
        // than send its next request down this one as it closes.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The step in which a body's room is reserved: its allowance beyond what arrived.
const ROOM_STEP: usize = 64 * 1024;

/// A refusal: its outcome (a metric label) and the answer.
type Refusal = (&'static str, (StatusCode, &'static str));

/// A callback's body, with memory reserved as its bytes arrive (not as they are
/// announced), so requests that send headers and no body hold nothing; a chunk
/// waits at most `wait` for room.
async fn receive_body(
    body: Body,
    memory: &MemoryBudget,
    wait: Duration,
) -> Result<(bytes::Bytes, Option<OwnedSemaphorePermit>), Refusal> {
    use futures::StreamExt as _;
    let busy = ("busy", (StatusCode::SERVICE_UNAVAILABLE, "try again"));
    let too_large = ("too_large", (StatusCode::PAYLOAD_TOO_LARGE, "callback body too large"));
    let mut chunks = body.into_data_stream();
    let mut received = bytes::BytesMut::new();
    let mut room: Option<OwnedSemaphorePermit> = None;
    let mut reserved = 0;
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            return Err((
                "refused_malformed",
                (StatusCode::BAD_REQUEST, "callback body not received"),
            ));
        };
        if received.len() + chunk.len() > MAX_CALLBACK_BYTES {
            return Err(too_large);
        }
        // Room is taken a step at a time, so small chunks cost no rounding each.
        while received.len() + chunk.len() > reserved {
            let step = ROOM_STEP.min(MAX_CALLBACK_BYTES - reserved).max(1);
            let more = memory.reserve(step as u64, wait).await.map_err(|_| busy)?;
            match room.as_mut() {
                Some(room) => room.merge(more),
                None => room = Some(more),
            }
            reserved += step;
        }
        received.extend_from_slice(&chunk);
    }
    Ok((received.freeze(), room))
}

/// A callback's body, read to its end within the settings' time and memory,
/// or the refusal of one that is too large or does not arrive.
async fn arrive(
    settings: &CallbackSettings,
    headers: &HeaderMap,
    body: Body,
) -> Result<(bytes::Bytes, Option<OwnedSemaphorePermit>), Refusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|declared| declared > MAX_CALLBACK_BYTES) {
        return Err(("too_large", (StatusCode::PAYLOAD_TOO_LARGE, "callback body too large")));
    }
    tokio::time::timeout(
        settings.body_timeout,
        receive_body(body, &settings.memory, settings.body_timeout / 4),
    )
    .await
    .unwrap_or(Err((
        "timeout",
        (StatusCode::REQUEST_TIMEOUT, "callback body not received in time"),
    )))
}

/// Takes one callback's body; returns its outcome (a metric label) and the answer.
async fn handle(endpoint: &Endpoint, body: &[u8]) -> (&'static str, (StatusCode, &'static str)) {
    let settings = &endpoint.settings;
    tracing::Span::current().record("body_bytes", body.len());
    // Nothing in the body is trusted before the signature and time window check out.
    let verified = match verify_callback(body, &settings.credentials, settings.window, chrono::Utc::now()) {
        Ok(verified) => verified,
        Err(error) => {
            warn!(error = %error, "callback refused");
            return match error {
                CallbackError::NotJson | CallbackError::NoResult | CallbackError::Unsigned => {
                    ("refused_malformed", (StatusCode::BAD_REQUEST, "malformed callback"))
                }
                _ => (
                    "refused_signature",
                    (StatusCode::UNAUTHORIZED, "callback signature or timestamp not accepted"),
                ),
            };
        }
    };
    let job_id = verified.result.job_id().unwrap_or_default().to_owned();
    let code = verified.result.result_code.clone();
    let timestamp = verified.timestamp.clone();
    // The same signed delivery again: answered as taken, costs nothing.
    if !endpoint.seen.first_time(&timestamp, &job_id) {
        return ("replayed", (StatusCode::OK, "ok"));
    }
    let handled = endpoint
        .service
        .handle_callback(smile_adapter::result(verified.result))
        .await;
    match handled {
        Ok(outcome) => {
            // Caller-controlled strings are logged escaped (Debug), never raw.
            info!(job_id = ?job_id, result_code = ?code, outcome = ?outcome, "callback handled");
            if outcome == CallbackOutcome::UnknownJob {
                // Nothing was done; remembering it would only let forgeries fill the memory.
                endpoint.seen.forget(&timestamp, &job_id);
            }
            // The same answer whether or not the job exists: a signed callback probes nothing.
            (outcome.as_str(), (StatusCode::OK, "ok"))
        }
        // Not stored: Smile ID must not take this as delivered.
        Err(error) => {
            endpoint.seen.forget(&timestamp, &job_id);
            warn!(job_id = ?job_id, error = %error, "callback could not be stored");
            ("not_stored", (StatusCode::SERVICE_UNAVAILABLE, "try again"))
        }
    }
}
