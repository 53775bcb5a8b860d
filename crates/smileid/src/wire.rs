//! Smile ID v1 JSON shapes as our client sends and reads them.
//!
//! Reading is tolerant (smileid-protocol.md §9): numbers may arrive as strings
//! and booleans as `"true"`/`"false"`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::codes::{Decision, classify_result};
use super::signature::parse_timestamp;

/// `source_sdk` sent on every request, so Smile ID can tell our traffic apart.
pub const SOURCE_SDK: &str = "selfie-auth";
pub const SOURCE_SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

pub const JOB_TYPE_AUTHENTICATION: u32 = 2;
pub const JOB_TYPE_REGISTRATION: u32 = 4;

/// Body of `POST /v1/upload`, in the server SDKs' field set.
#[derive(Serialize)]
pub struct UploadRequest<'a> {
    pub source_sdk: &'a str,
    pub source_sdk_version: &'a str,
    pub file_name: &'a str,
    pub smile_client_id: &'a str,
    pub partner_params: &'a PartnerParams,
    pub model_parameters: serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<&'a str>,
    pub use_enrolled_image: bool,
    pub retry: bool,
    /// Sent only when set, as the SDKs do.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_new_enroll: bool,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

/// `partner_params`: the caller's ids and job type plus extra string keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartnerParams {
    pub user_id: String,
    pub job_id: String,
    pub job_type: u32,
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct UploadResponse {
    pub upload_url: String,
    #[serde(deserialize_with = "string_or_number")]
    pub smile_job_id: String,
    #[serde(default)]
    pub ref_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub code: Option<String>,
}

/// Smile ID's error body `{"error": "...", "code": "2215"}` (code sometimes a number).
#[derive(Clone, Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub code: Option<String>,
}

/// Body of `POST /v1/job_status`.
#[derive(Serialize)]
pub struct JobStatusRequest<'a> {
    pub partner_id: &'a str,
    pub user_id: &'a str,
    pub job_id: &'a str,
    pub image_links: bool,
    pub history: bool,
    pub source_sdk: &'a str,
    pub source_sdk_version: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

#[derive(Clone, Debug, Deserialize)]
pub struct JobStatusResponse {
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub job_complete: bool,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub job_success: bool,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub code: Option<String>,
    /// An object once the zip was processed; before that a free-text string.
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub history: Option<Vec<Value>>,
    #[serde(default)]
    pub image_links: Option<BTreeMap<String, Value>>,
}

/// One Smile ID result: the `result` of job_status, each `history` entry, and a callback body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultEntry {
    pub result_code: String,
    pub result_text: String,
    pub result_type: String,
    pub smile_job_id: String,
    pub is_final: bool,
    pub is_machine_result: bool,
    pub confidence: f64,
    pub actions: BTreeMap<String, String>,
    pub partner_params: BTreeMap<String, String>,
    pub timestamp: Option<DateTime<Utc>>,
    pub decision: Decision,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawResultEntry {
    #[serde(deserialize_with = "string_or_number")]
    result_code: String,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    result_text: Option<String>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    result_type: Option<String>,
    #[serde(default, rename = "SmileJobID", deserialize_with = "opt_string_or_number")]
    smile_job_id: Option<String>,
    #[serde(default, deserialize_with = "opt_bool_or_string")]
    is_final_result: Option<bool>,
    #[serde(default, deserialize_with = "bool_or_string")]
    is_machine_result: bool,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    confidence_value: Option<String>,
    #[serde(default)]
    actions: BTreeMap<String, Value>,
    #[serde(default)]
    partner_params: BTreeMap<String, Value>,
    #[serde(default, rename = "timestamp", deserialize_with = "opt_string_or_number")]
    timestamp: Option<String>,
}

impl ResultEntry {
    /// Parses a result entry; `None` when the value is not one (e.g. `"No zip uploaded yet"`).
    pub fn from_value(value: &Value) -> Option<Self> {
        let raw: RawResultEntry = serde_json::from_value(value.clone()).ok()?;
        let meaning = classify_result(&raw.result_code);
        Some(Self {
            is_final: raw.is_final_result.unwrap_or(meaning.is_final),
            decision: meaning.decision,
            result_text: raw.result_text.unwrap_or_default(),
            result_type: raw.result_type.unwrap_or_default(),
            smile_job_id: raw.smile_job_id.unwrap_or_default(),
            is_machine_result: raw.is_machine_result,
            confidence: raw
                .confidence_value
                .and_then(|text| text.trim().parse::<f64>().ok())
                .filter(|value| value.is_finite())
                .unwrap_or(0.0),
            actions: stringify_map(raw.actions),
            partner_params: stringify_map(raw.partner_params),
            timestamp: raw.timestamp.as_deref().and_then(parse_timestamp),
            result_code: raw.result_code,
        })
    }

    /// The partner's job_id echoed in `PartnerParams`.
    pub fn job_id(&self) -> Option<&str> {
        self.partner_params.get("job_id").map(String::as_str)
    }
}

fn stringify_map(map: BTreeMap<String, Value>) -> BTreeMap<String, String> {
    map.into_iter()
        .map(|(key, value)| {
            let text = match value {
                Value::String(text) => text,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (key, text)
        })
        .collect()
}

fn value_to_string(value: Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn value_to_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" | "" => Some(false),
            _ => None,
        },
        Value::Number(number) => number.as_i64().map(|n| n != 0),
        _ => None,
    }
}

pub fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    value_to_string(Value::deserialize(deserializer)?)
        .ok_or_else(|| serde::de::Error::custom("expected a string or a number"))
}

pub fn opt_string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(value_to_string(Value::deserialize(deserializer)?))
}

pub fn bool_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(value_to_bool(&Value::deserialize(deserializer)?).unwrap_or(false))
}

pub fn opt_bool_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    Ok(value_to_bool(&Value::deserialize(deserializer)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_a_result_entry_with_every_type_variation() {
        let entry = ResultEntry::from_value(&json!({
            "ResultCode": 822, "ResultText": "provisional", "ResultType": "SAIA",
            "SmileJobID": 263, "IsFinalResult": "false", "IsMachineResult": true,
            "ConfidenceValue": "97.000000", "Actions": {"Liveness_Check": "Passed"},
            "PartnerParams": {"job_id": "j1", "user_id": "u1", "job_type": 2},
            "timestamp": "2022-10-27 13:25:46 +0000"
        }))
        .expect("entry");
        assert_eq!(entry.result_code, "822");
        assert_eq!(entry.smile_job_id, "263");
        assert!(!entry.is_final);
        assert!(entry.is_machine_result);
        assert!((entry.confidence - 97.0).abs() < f64::EPSILON);
        assert_eq!(entry.partner_params["job_type"], "2");
        assert_eq!(entry.job_id(), Some("j1"));
        assert!(entry.timestamp.is_some());
    }

    #[test]
    fn finality_falls_back_to_the_catalogue() {
        let entry = ResultEntry::from_value(&json!({"ResultCode": "0820"})).expect("entry");
        assert!(entry.is_final);
        assert_eq!(entry.decision, Decision::Approved);
    }

    #[test]
    fn a_text_result_is_not_an_entry() {
        assert!(ResultEntry::from_value(&json!("No zip uploaded yet")).is_none());
        assert!(ResultEntry::from_value(&json!({})).is_none());
    }

    #[test]
    fn partner_params_flatten_extra_keys() {
        let params = PartnerParams {
            user_id: "u".into(),
            job_id: "j".into(),
            job_type: 2,
            extra: BTreeMap::from([("optional_info".into(), "x".into())]),
        };
        assert_eq!(
            serde_json::to_value(&params).expect("json"),
            json!({"user_id": "u", "job_id": "j", "job_type": 2, "optional_info": "x"})
        );
    }
}
