//! Smile ID request signing: `base64(HMAC-SHA256(api_key, timestamp ‖ partner_id ‖ "sid_request"))`.
//!
//! The same function signs our requests and verifies what Smile ID sends us
//! (job_status responses and callbacks). The signature proves possession of the
//! API key at a time; it does not cover any body.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

const SIGNATURE_SUFFIX: &[u8] = b"sid_request";

/// A Smile ID API key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl ApiKey {
    /// Wraps `key`; it is shown to nothing but the signing function.
    pub fn new(key: impl Into<String>) -> Self {
        Self(SecretString::from(key.into()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        Hmac::<Sha256>::new_from_slice(self.0.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"))
    }

    /// Whether the key is empty (a configuration mistake).
    pub fn is_empty(&self) -> bool {
        self.0.expose_secret().is_empty()
    }

    /// Whether both are the same key.
    pub fn same_as(&self, other: &Self) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

/// The API key in use and, for a while after a rotation, the one it replaced:
/// requests are signed with the current key, and signatures made with either
/// are accepted until the overlap ends, so nothing Smile ID signed just before
/// the rotation (a callback in flight, a retry) is refused.
#[derive(Debug)]
pub struct KeyRing {
    keys: RwLock<Keys>,
}

#[derive(Debug)]
struct Keys {
    current: ApiKey,
    previous: Option<(ApiKey, Instant)>,
}

impl KeyRing {
    /// A ring whose only key is `key`.
    pub fn new(key: ApiKey) -> Self {
        Self {
            keys: RwLock::new(Keys {
                current: key,
                previous: None,
            }),
        }
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key requests are signed with now.
    pub fn current(&self) -> ApiKey {
        self.keys().current.clone()
    }

    /// Makes `key` the current key; the replaced one stays valid for `overlap`.
    /// Answers false (and changes nothing) when `key` is the current key.
    pub fn rotate(&self, key: ApiKey, overlap: Duration) -> bool {
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.current.same_as(&key) {
            return false;
        }
        let replaced = std::mem::replace(&mut keys.current, key);
        keys.previous = Some((replaced, Instant::now() + overlap));
        true
    }

    /// The keys a signature may have been made with now.
    fn accepted(&self) -> Vec<ApiKey> {
        let keys = self.keys();
        let mut accepted = vec![keys.current.clone()];
        if let Some((previous, until)) = &keys.previous
            && Instant::now() < *until
        {
            accepted.push(previous.clone());
        }
        accepted
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A computed signature. Its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature(String);

impl Signature {
    /// The base64 text sent as `signature`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(<redacted>)")
    }
}

/// Partner id and API key: everything needed to sign and verify. Clones share
/// one [`KeyRing`], so a rotation reaches every user of the credentials.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The partner id, digits as Smile ID issues them.
    pub partner_id: String,
    /// The API keys, shared by every clone.
    pub keys: Arc<KeyRing>,
}

impl Credentials {
    /// Credentials with one API key.
    pub fn new(partner_id: impl Into<String>, api_key: ApiKey) -> Self {
        Self {
            partner_id: partner_id.into(),
            keys: Arc::new(KeyRing::new(api_key)),
        }
    }

    /// Signs `timestamp` exactly as given with the current key: the characters
    /// sent are the characters MACed.
    pub fn sign(&self, timestamp: &str) -> Signature {
        Signature(BASE64.encode(self.mac_over(&self.keys.current(), timestamp).finalize().into_bytes()))
    }

    /// HMAC over `timestamp ‖ partner_id ‖ "sid_request"`.
    fn mac_over(&self, key: &ApiKey, timestamp: &str) -> Hmac<Sha256> {
        let mut mac = key.mac();
        mac.update(timestamp.as_bytes());
        mac.update(self.partner_id.as_bytes());
        mac.update(SIGNATURE_SUFFIX);
        mac
    }

    /// A fresh timestamp in Smile ID's own style and its signature.
    pub fn sign_now(&self) -> (String, Signature) {
        let timestamp = format_timestamp(Utc::now());
        let signature = self.sign(&timestamp);
        (timestamp, signature)
    }

    /// Checks a signature, made with the current key or (during a rotation's
    /// overlap) the previous one, in constant time per key. Malformed base64 is
    /// simply a mismatch.
    pub fn verify(&self, timestamp: &str, signature: &str) -> bool {
        let Ok(claimed) = BASE64.decode(signature.trim()) else {
            return false;
        };
        self.keys
            .accepted()
            .iter()
            .any(|key| self.mac_over(key, timestamp).verify_slice(&claimed).is_ok())
    }
}

/// Smile ID's server timestamp style: UTC, milliseconds, `Z`.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses every timestamp style the SDKs send: RFC 3339 with any fraction and
/// offset (`…000Z`, `…784359+00:00`), Ruby's `2022-10-27 13:25:46 +0000`, an ISO
/// time without offset (taken as UTC), and Unix milliseconds.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    if let Ok(at) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S %z") {
        return Some(at.with_timezone(&Utc));
    }
    if let Ok(at) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(at.with_timezone(&Utc));
    }
    if let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(Utc.from_utc_datetime(&naive));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let millis: i64 = text.parse().ok()?;
        return Utc.timestamp_millis_opt(millis).single();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(partner: &str, key: &str) -> Credentials {
        Credentials::new(partner, ApiKey::new(key))
    }

    #[test]
    fn after_a_rotation_the_previous_key_verifies_only_during_the_overlap() {
        let credentials = creds("085", "old");
        let old_signature = credentials.sign("2026-11-26T10:00:00.000Z");
        assert!(
            !credentials.keys.rotate(ApiKey::new("old"), Duration::from_mins(1)),
            "the same key is no rotation"
        );
        assert!(credentials.keys.rotate(ApiKey::new("new"), Duration::from_millis(200)));
        let shared = credentials.clone();
        assert_eq!(
            shared.sign("2026-11-26T10:00:00.000Z"),
            creds("085", "new").sign("2026-11-26T10:00:00.000Z"),
            "clones sign with the new key"
        );
        assert!(
            shared.verify("2026-11-26T10:00:00.000Z", old_signature.as_str()),
            "within the overlap"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            !shared.verify("2026-11-26T10:00:00.000Z", old_signature.as_str()),
            "after it"
        );
        let signature = shared.sign("2026-11-26T10:00:00.000Z");
        assert!(shared.verify("2026-11-26T10:00:00.000Z", signature.as_str()));
        assert!(!creds("085", "other").verify("2026-11-26T10:00:00.000Z", signature.as_str()));
    }

    /// Vectors from Smile ID's signing page and the official SDKs' tests.
    const VECTORS: &[(&str, &str, &str, &str)] = &[
        (
            "085",
            "test-api-key-0123456789",
            "2024-01-15T10:30:00.000Z",
            "RdnU4JK+GQ1Wdv/hTGYhD2afS96eKmy8cYW0QMaAv6E=",
        ),
        (
            "85",
            "test-api-key-0123456789",
            "2024-01-15T10:30:00.000Z",
            "/XELNkfZ6Y+rXqcGnmR3J4fwYT2ha8XOGJb8UGaZllE=",
        ),
        (
            "2",
            "sk_sandbox_abcdef",
            "2025-06-01T00:00:00.000+00:00",
            "hspyE5bszrrNfFPQ3TwCkXNc2RUtfZqX5/t24YzSEEI=",
        ),
        (
            "1234",
            "00000000-1111-2222-3333-444444444444",
            "2023-03-07T13:23:24.591Z",
            "u6/tMmzFusH4rd3VGieTSMFaojGdlDF6YJ4MPnD7n0o=",
        ),
        (
            "921",
            "dummy",
            "2022-10-27 13:25:46 +0000",
            "m8TS/YQ7Gj4vPGGUIFhz329OjxFX7OV7vkM9DOeVpJU=",
        ),
        (
            "921",
            "dummy",
            "2022-10-27T13:25:54.150Z",
            "U1jRaCxAknnhxLW7hj/5Dpqkp8OY98wMuhCcsUv/NEo=",
        ),
        (
            "1",
            "k",
            "2020-01-01T00:00:00.000Z",
            "Hfxeru+sfe8DOA6avtA8dMPU1WjYGuDiwJ/vAt969kM=",
        ),
        (
            "1234",
            "test-api-key-0123456789abcdef",
            "2024-01-01T00:00:00.000Z",
            "+S8ftxmVB/B2qPR+UAtMr8QssJ5cFllyDQwm6F8m0yM=",
        ),
        (
            "085",
            "3f6c1a2e-6d4b-4c8e-9a7f-0b1c2d3e4f50",
            "2025-06-30T12:34:56.789012+00:00",
            "90JquNjPY7v6jRKzZD1KTHzKxqlblhJI+XHm9hjPJ5Y=",
        ),
        (
            "2001",
            "kY8#pL2$wQ-very-secret",
            "2023-11-14T22:13:20.000Z",
            "h36zdMLNnTq8IDun4OtjFcQot75xlP8RYpQEejVJai4=",
        ),
        // Node turns a numeric timestamp (1700000000000 ms) into this ISO string before signing.
        (
            "2001",
            "kY8#pL2$wQ-very-secret",
            "2023-11-14T22:13:20.000Z",
            "h36zdMLNnTq8IDun4OtjFcQot75xlP8RYpQEejVJai4=",
        ),
    ];

    #[test]
    fn signs_every_reference_vector() {
        for (partner, key, timestamp, expected) in VECTORS {
            let credentials = creds(partner, key);
            assert_eq!(
                credentials.sign(timestamp).as_str(),
                *expected,
                "vector {partner}/{timestamp}"
            );
            assert!(credentials.verify(timestamp, expected));
        }
    }

    #[test]
    fn verification_rejects_wrong_key_partner_timestamp_and_garbage() {
        let (partner, key, timestamp, signature) = VECTORS[0];
        assert!(!creds(partner, "other-key").verify(timestamp, signature));
        assert!(!creds("85", key).verify(timestamp, signature));
        assert!(!creds(partner, key).verify("2024-01-15T10:30:00.001Z", signature));
        assert!(!creds(partner, key).verify(timestamp, "not base64 !!"));
        assert!(!creds(partner, key).verify(timestamp, ""));
    }

    #[test]
    fn debug_output_hides_key_and_signature() {
        let credentials = creds("1", "super-secret-key");
        let signature = credentials.sign("2020-01-01T00:00:00.000Z");
        let shown = format!("{credentials:?} {signature:?}");
        assert!(!shown.contains("super-secret-key"));
        assert!(!shown.contains(signature.as_str()));
    }

    #[test]
    fn parses_every_sdk_timestamp_style() {
        let expected = Utc.with_ymd_and_hms(2022, 10, 27, 13, 25, 46).single();
        for text in [
            "2022-10-27T13:25:46.000Z",
            "2022-10-27T13:25:46+00:00",
            "2022-10-27T13:25:46.000000+00:00",
            "2022-10-27 13:25:46 +0000",
            "2022-10-27T13:25:46.000",
            "2022-10-27T15:25:46.000+0200",
            "1666877146000",
        ] {
            assert_eq!(parse_timestamp(text), expected, "{text}");
        }
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp(""), None);
    }
}
