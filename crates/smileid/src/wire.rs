//! Smile ID v1 JSON shapes as our client sends and reads them.
//!
//! Reading is tolerant, as the official SDKs are: numbers may arrive as strings
//! and booleans as `"true"`/`"false"`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::codes::{Decision, classify_result};
use super::signature::parse_timestamp;

/// `source_sdk` sent on every request, so Smile ID can tell our traffic apart.
pub const SOURCE_SDK: &str = "selfie-auth";
/// `source_sdk_version` sent on every request.
pub const SOURCE_SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// SmartSelfie Authentication: compare a selfie with the enrolled user.
pub const JOB_TYPE_AUTHENTICATION: u32 = 2;
/// SmartSelfie Registration: enrol a user.
pub const JOB_TYPE_REGISTRATION: u32 = 4;

/// Body of `POST /v1/upload`, in the server SDKs' field set.
#[derive(Serialize)]
pub struct UploadRequest<'a> {
    /// Who sends: [`SOURCE_SDK`].
    pub source_sdk: &'a str,
    /// Its version: [`SOURCE_SDK_VERSION`].
    pub source_sdk_version: &'a str,
    /// The zip's name.
    pub file_name: &'a str,
    /// The partner id.
    pub smile_client_id: &'a str,
    /// The job's ids and type.
    pub partner_params: &'a PartnerParams,
    /// Always empty for SmartSelfie jobs.
    pub model_parameters: serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Where results go.
    pub callback_url: Option<&'a str>,
    /// Whether to compare with the enrolled image; false, since the selfie is sent.
    pub use_enrolled_image: bool,
    /// Resume an existing job of this job id.
    pub retry: bool,
    /// Sent only when set, as the SDKs do.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_new_enroll: bool,
    /// When the request was signed.
    pub timestamp: &'a str,
    /// The request's signature.
    pub signature: &'a str,
}

/// `partner_params`: the caller's ids and job type plus extra string keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartnerParams {
    /// The partner's id of the user.
    pub user_id: String,
    /// The partner's id of the job; Smile ID refuses a second job with it (`2215`).
    pub job_id: String,
    /// [`JOB_TYPE_AUTHENTICATION`] or [`JOB_TYPE_REGISTRATION`].
    pub job_type: u32,
    #[serde(flatten)]
    /// Further string keys, echoed back in every result.
    pub extra: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
/// Answer of `POST /v1/upload`.
pub struct UploadResponse {
    /// The pre-signed URL the zip goes to (a credential: never logged).
    pub upload_url: String,
    #[serde(deserialize_with = "string_or_number")]
    /// Smile ID's id of the job.
    pub smile_job_id: String,
    #[serde(default)]
    /// Smile ID's reference of the upload, when it sends one.
    pub ref_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    /// Smile ID's status code.
    pub code: Option<String>,
}

/// Smile ID's error body `{"error": "...", "code": "2215"}` (code sometimes a number).
#[derive(Clone, Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    /// Smile ID's error text.
    pub error: String,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    /// Smile ID's error code.
    pub code: Option<String>,
}

/// Body of `POST /v1/job_status`.
#[derive(Serialize)]
pub struct JobStatusRequest<'a> {
    /// The partner id.
    pub partner_id: &'a str,
    /// The partner's id of the user.
    pub user_id: &'a str,
    /// The partner's id of the job.
    pub job_id: &'a str,
    /// Ask for links to the images.
    pub image_links: bool,
    /// Ask for every result so far.
    pub history: bool,
    /// Who asks: [`SOURCE_SDK`].
    pub source_sdk: &'a str,
    /// Its version: [`SOURCE_SDK_VERSION`].
    pub source_sdk_version: &'a str,
    /// When the request was signed.
    pub timestamp: &'a str,
    /// The request's signature.
    pub signature: &'a str,
}

#[derive(Clone, Debug, Deserialize)]
/// Answer of `POST /v1/job_status`, read tolerantly.
pub struct JobStatusResponse {
    #[serde(default, deserialize_with = "opt_string_or_number")]
    /// When Smile ID signed the answer.
    pub timestamp: Option<String>,
    #[serde(default)]
    /// Smile ID's signature of the answer.
    pub signature: Option<String>,
    #[serde(default, deserialize_with = "bool_or_string")]
    /// Whether the job is finished.
    pub job_complete: bool,
    #[serde(default, deserialize_with = "bool_or_string")]
    /// Whether the finished job succeeded.
    pub job_success: bool,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    /// Smile ID's status code.
    pub code: Option<String>,
    /// An object once the zip was processed; before that a free-text string.
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    /// Every result so far, when asked for.
    pub history: Option<Vec<Value>>,
    #[serde(default)]
    /// Links to the images, when asked for.
    pub image_links: Option<BTreeMap<String, Value>>,
}

/// One Smile ID result: the `result` of job_status, each `history` entry, and a callback body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultEntry {
    /// Smile ID's result code, e.g. `0820` (see [`crate::codes::classify_result`]).
    pub result_code: String,
    /// Smile ID's wording of the result.
    pub result_text: String,
    /// The kind of result, e.g. `SAIA`.
    pub result_type: String,
    /// Smile ID's id of the job.
    pub smile_job_id: String,
    /// Whether no further result follows.
    pub is_final: bool,
    /// Whether a machine, not a reviewer, decided.
    pub is_machine_result: bool,
    /// Smile ID's confidence in the match, 0 to 100.
    pub confidence: f64,
    /// The checks and their outcomes (`Liveness_Check`: `Passed`, ...).
    pub actions: BTreeMap<String, String>,
    /// The partner params, echoed back.
    pub partner_params: BTreeMap<String, String>,
    /// When Smile ID produced the result, when it says.
    pub timestamp: Option<DateTime<Utc>>,
    /// What the result code means.
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

/// Serde reader of a string that may arrive as a number.
pub fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    value_to_string(Value::deserialize(deserializer)?)
        .ok_or_else(|| serde::de::Error::custom("expected a string or a number"))
}

/// Serde reader of an optional string that may arrive as a number.
pub fn opt_string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(value_to_string(Value::deserialize(deserializer)?))
}

/// Serde reader of a boolean that may arrive as `"true"` / `"false"` (absent or unreadable: false).
pub fn bool_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(value_to_bool(&Value::deserialize(deserializer)?).unwrap_or(false))
}

/// Serde reader of an optional boolean that may arrive as text.
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
