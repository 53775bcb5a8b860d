//! Callbacks Smile ID posts to us: a flat result entry with a top-level
//! `signature` and `timestamp`, verified as Smile ID documents
//! (<https://docs.usesmileid.com/integration-options/rest-api/signing-your-api-request/generate-signature>,
//! "Confirming an incoming signature").

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::signature::{Credentials, parse_timestamp};
use super::wire::ResultEntry;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
/// Why a callback body was refused; nothing in it is trusted until it verifies.
pub enum CallbackError {
    #[error("callback body is not a JSON object")]
    /// The body is not a JSON object.
    NotJson,
    #[error("callback has no signature or timestamp")]
    /// The body has no top-level `signature` or `timestamp`.
    Unsigned,
    #[error("callback timestamp cannot be read")]
    /// The `timestamp` is not a time this client can read.
    BadTimestamp,
    /// The signed time is too far from now: a replay, or a clock far off.
    #[error("callback timestamp is {skew_seconds}s away from now, outside the window")]
    OutsideWindow {
        /// Seconds between the signed time and now (negative: in the future).
        skew_seconds: i64,
    },
    #[error("callback signature does not verify")]
    /// The signature was made with none of the accepted keys.
    BadSignature,
    #[error("callback carries no result entry")]
    /// The body verified but holds no result entry.
    NoResult,
}

/// A callback whose signature and timestamp checked out.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedCallback {
    /// The result the callback reports.
    pub result: ResultEntry,
    /// The signed timestamp, kept to tell a duplicate delivery from a new one.
    pub timestamp: String,
}

/// Verifies the signature and the time window before anything in the body is trusted.
pub fn verify_callback(
    body: &[u8],
    credentials: &Credentials,
    window: Duration,
    now: DateTime<Utc>,
) -> Result<VerifiedCallback, CallbackError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| CallbackError::NotJson)?;
    let object = value.as_object().ok_or(CallbackError::NotJson)?;
    let signature = object
        .get("signature")
        .and_then(Value::as_str)
        .ok_or(CallbackError::Unsigned)?;
    let timestamp = match object.get("timestamp") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => return Err(CallbackError::Unsigned),
    };
    let signed_at = parse_timestamp(&timestamp).ok_or(CallbackError::BadTimestamp)?;
    let skew_seconds = (now - signed_at).num_seconds();
    if skew_seconds.unsigned_abs() > window.as_secs() {
        return Err(CallbackError::OutsideWindow { skew_seconds });
    }
    if !credentials.verify(&timestamp, signature) {
        return Err(CallbackError::BadSignature);
    }
    // The flat form is current; the old job_status-style wrapper nests the entry in `result`.
    let result = ResultEntry::from_value(&value)
        .or_else(|| object.get("result").and_then(ResultEntry::from_value))
        .ok_or(CallbackError::NoResult)?;
    Ok(VerifiedCallback { result, timestamp })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::signature::{ApiKey, format_timestamp};

    fn credentials() -> Credentials {
        Credentials::new("1234", ApiKey::new("key"))
    }

    fn body(timestamp: &str, signature: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "ResultCode": "0820", "IsFinalResult": "true", "SmileJobID": "0000000001",
            "PartnerParams": {"job_id": "j", "user_id": "u", "job_type": "2"},
            "signature": signature, "timestamp": timestamp,
        }))
        .expect("json")
    }

    #[test]
    fn accepts_a_fresh_signed_callback() {
        let now = Utc::now();
        let timestamp = format_timestamp(now);
        let signature = credentials().sign(&timestamp);
        let verified = verify_callback(
            &body(&timestamp, signature.as_str()),
            &credentials(),
            Duration::from_mins(5),
            now,
        )
        .expect("verified");
        assert_eq!(verified.result.job_id(), Some("j"));
    }

    #[test]
    fn refuses_forged_stale_and_malformed_callbacks() {
        let now = Utc::now();
        let window = Duration::from_mins(5);
        let timestamp = format_timestamp(now);
        let forged = Credentials::new("1234", ApiKey::new("wrong")).sign(&timestamp);
        assert_eq!(
            verify_callback(&body(&timestamp, forged.as_str()), &credentials(), window, now),
            Err(CallbackError::BadSignature)
        );
        let old = format_timestamp(now - chrono::Duration::minutes(10));
        let signature = credentials().sign(&old);
        assert!(matches!(
            verify_callback(&body(&old, signature.as_str()), &credentials(), window, now),
            Err(CallbackError::OutsideWindow { .. })
        ));
        assert_eq!(
            verify_callback(b"[1]", &credentials(), window, now),
            Err(CallbackError::NotJson)
        );
        assert_eq!(
            verify_callback(b"{}", &credentials(), window, now),
            Err(CallbackError::Unsigned)
        );
        assert_eq!(
            verify_callback(&body("soon", "x"), &credentials(), window, now),
            Err(CallbackError::BadTimestamp)
        );
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use crate::signature::{ApiKey, format_timestamp};

    #[test]
    fn no_body_makes_verification_panic() {
        let credentials = Credentials::new("1234", ApiKey::new("key"));
        let now = Utc::now();
        let timestamp = format_timestamp(now);
        let signature = credentials.sign(&timestamp);
        let body = format!(
            r#"{{"ResultCode":"0820","IsFinalResult":"true","ConfidenceValue":"1e999","SmileJobID":12,"Actions":{{"a":[1]}},"PartnerParams":{{"job_id":"j","n":null}},"timestamp":"{timestamp}","signature":"{}"}}"#,
            signature.as_str()
        );
        let verified = verify_callback(body.as_bytes(), &credentials, Duration::from_mins(1), now).expect("valid");
        assert_eq!(
            verified.result.confidence.to_bits(),
            0.0_f64.to_bits(),
            "a non-finite confidence is not trusted"
        );
        let bytes = body.as_bytes();
        for end in 0..bytes.len() {
            let _ = verify_callback(&bytes[..end], &credentials, Duration::from_mins(1), now);
        }
        for odd in [
            "null",
            "1",
            "\"x\"",
            "[]",
            "{\"timestamp\": 99999999999999999999, \"signature\": \"\"}",
        ] {
            assert!(
                verify_callback(odd.as_bytes(), &credentials, Duration::from_mins(1), now).is_err(),
                "{odd}"
            );
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn signed(now: DateTime<Utc>, credentials: &Credentials) -> (String, String) {
            let timestamp = format_timestamp(now);
            let signature = credentials.sign(&timestamp).as_str().to_owned();
            (timestamp, signature)
        }

        proptest! {
            #[test]
            fn any_bytes_are_refused_or_verified_without_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let credentials = Credentials::new("1234", ApiKey::new("key"));
                let _ = verify_callback(&body, &credentials, Duration::from_mins(1), Utc::now());
            }

            #[test]
            fn any_signed_json_of_any_shape_never_panics(
                code in "\\PC{0,8}",
                is_final in prop_oneof![Just(json_value("true")), Just(json_value("false")), Just(json_value("1")), Just(json_value("null")), Just(json_value("\"maybe\""))],
                confidence in "\\PC{0,12}",
                smile_job_id in prop_oneof![Just(json_value("12")), Just(json_value("\"0000000012\"")), Just(json_value("[]")), Just(json_value("{}"))],
                extra_key in "[a-zA-Z_]{1,12}",
            ) {
                let credentials = Credentials::new("1234", ApiKey::new("key"));
                let now = Utc::now();
                let (timestamp, signature) = signed(now, &credentials);
                let body = serde_json::json!({
                    "ResultCode": code,
                    "IsFinalResult": is_final,
                    "ConfidenceValue": confidence,
                    "SmileJobID": smile_job_id,
                    "PartnerParams": {"job_id": "j", extra_key: [1, {"a": null}]},
                    "timestamp": timestamp,
                    "signature": signature,
                });
                let verified = verify_callback(body.to_string().as_bytes(), &credentials, Duration::from_mins(1), now);
                if let Ok(verified) = verified {
                    prop_assert!(verified.result.confidence.is_finite());
                }
            }
        }

        fn json_value(text: &str) -> serde_json::Value {
            serde_json::from_str(text).expect("json")
        }
    }
}
