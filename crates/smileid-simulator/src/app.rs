//! Shared request context and the helpers every handler uses.

use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::state::{Endpoint, SimState};
use smileid::codes::ErrorCode;
use smileid::signature::{Credentials, format_timestamp};

pub struct AppInner {
    pub credentials: Credentials,
    pub state: Mutex<SimState>,
    pub public_url: String,
    pub default_callback_url: Option<String>,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub max_zip_bytes: usize,
}

/// How a fault spoils an otherwise correct answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spoil {
    pub corrupt_signature: bool,
}

#[derive(Clone)]
pub struct App(pub Arc<AppInner>);

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    pub fn state(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock cannot leave the maps half-written in a
        // way that matters to a simulator; keep serving.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies the scripted fault of `endpoint`, if any: `Err` is the response to
    /// send instead of handling the request; `Ok` tells how to spoil the real answer.
    pub async fn fault(&self, endpoint: Endpoint) -> Result<Spoil, Response> {
        let Some(fault) = self.state().take_fault(endpoint) else {
            return Ok(Spoil::default());
        };
        if let Some(latency) = fault.latency_ms {
            tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
        }
        if fault.hang {
            self.shutdown.cancelled().await;
            return Err(StatusCode::SERVICE_UNAVAILABLE.into_response());
        }
        if let Some(status) = fault.status.and_then(|status| StatusCode::from_u16(status).ok()) {
            let mut response = (status, Json(json!({"error": "Simulated failure", "code": "2201"}))).into_response();
            if let Some(seconds) = fault.retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
            }
            return Err(response);
        }
        Ok(Spoil {
            corrupt_signature: fault.corrupt_signature,
        })
    }

    /// Checks a body-carried signature (v1 JSON endpoints). `partner_fields` name
    /// where the partner id may travel (`smile_client_id` on upload, `partner_id` on job_status).
    pub fn check_body_signature(&self, body: &Value, partner_fields: &[&str]) -> Result<(), ErrorCode> {
        let partner = partner_fields
            .iter()
            .find_map(|field| body.get(*field))
            .and_then(value_text);
        let signature = body.get("signature").and_then(Value::as_str);
        let (Some(partner), Some(signature), Some(timestamp)) = (partner, signature, body.get("timestamp")) else {
            return Err(ErrorCode::MissingParameter);
        };
        if self.signature_valid(&partner, timestamp, signature) {
            Ok(())
        } else {
            self.state().counters.signature_failures += 1;
            Err(ErrorCode::Unauthorized)
        }
    }

    /// Accepts every timestamp style: the string is verified as sent; a number
    /// (Unix ms, as Node callers may pass) is verified as the ISO string Node signs.
    pub fn signature_valid(&self, partner: &str, timestamp: &Value, signature: &str) -> bool {
        if partner != self.credentials.partner_id {
            return false;
        }
        match timestamp {
            Value::String(text) => self.credentials.verify(text, signature),
            Value::Number(number) => {
                let iso = number
                    .as_i64()
                    .and_then(|millis| Utc.timestamp_millis_opt(millis).single())
                    .map(format_timestamp);
                iso.is_some_and(|iso| self.credentials.verify(&iso, signature))
                    || self.credentials.verify(&number.to_string(), signature)
            }
            _ => false,
        }
    }

    /// Signs a response or callback body with a fresh server timestamp.
    pub fn sign_into(&self, body: &mut Value) {
        let (timestamp, signature) = self.credentials.sign_now();
        if let Some(object) = body.as_object_mut() {
            object.insert("timestamp".into(), Value::String(timestamp));
            object.insert("signature".into(), Value::String(signature.as_str().to_owned()));
        }
    }
}

/// Smile ID's refusal: HTTP 400 with `{"error", "code"}`.
pub fn refuse(code: &ErrorCode) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": code.text(), "code": code.code()})),
    )
        .into_response()
}

/// Whether a request body is gzip-compressed (Android gzips its bodies).
pub fn is_gzipped(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("gzip"))
}

/// Reads a JSON body, gzip-compressed or not; inflating runs off the async workers.
pub async fn decode_json(headers: &HeaderMap, body: &Bytes) -> Result<Value, ErrorCode> {
    let plain = if is_gzipped(headers) {
        gunzip_off_thread(body.clone()).await.ok_or(ErrorCode::InvalidJson)?
    } else {
        body.clone()
    };
    serde_json::from_slice(&plain).map_err(|_| ErrorCode::InvalidJson)
}

/// [`gunzip`] on the blocking pool.
pub async fn gunzip_off_thread(body: Bytes) -> Option<Bytes> {
    tokio::task::spawn_blocking(move || gunzip(&body))
        .await
        .ok()
        .flatten()
        .map(Bytes::from)
}

pub fn gunzip(body: &[u8]) -> Option<Vec<u8>> {
    const LIMIT: u64 = 64 * 1024 * 1024;
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(LIMIT)
        .read_to_end(&mut plain)
        .ok()?;
    Some(plain)
}

/// A JSON string or number as text.
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// `true`, `"true"` or `1`.
pub fn truthy(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::String(text)) => text.eq_ignore_ascii_case("true"),
        Some(Value::Number(number)) => number.as_i64() == Some(1),
        _ => false,
    }
}
