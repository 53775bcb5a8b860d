//! Bearer JWTs as caller identities, for callers outside a mesh and without
//! client certificates: a token's signature is checked against a JWKS file's
//! public keys (with `ring`, the TLS stack's own primitives), its issuer,
//! audience, expiry, not-before and lifetime against the configuration, and its
//! `sub` is the caller's identity.
//!
//! What a JWKS may hold is checked when it is loaded, with the reason for any
//! refusal: shared-secret (`oct`) keys are refused, since anyone who can check
//! such a token can mint one, and so are RSA keys under 2048 bits.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ring::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use serde::Deserialize;
use serde_json::Value;

use super::Identity;

/// How far `exp`, `nbf` and `iat` may be off, for clocks that disagree a little.
const LEEWAY_SECS: i64 = 60;
/// Longest token read; an identity token is a few hundred bytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Smallest RSA modulus accepted (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// A public key from the JWKS, in the form `ring` verifies with.
enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

struct TrustedKey {
    kid: Option<String>,
    /// The `alg` the JWKS pins the key to, if any.
    alg: Option<String>,
    key: PublicKey,
}

/// Checks bearer tokens.
pub struct JwtVerifier {
    keys: Vec<TrustedKey>,
    issuer: String,
    audience: String,
    max_lifetime: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

fn decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()
}

impl JwtVerifier {
    /// The verifier for the keys in the JWKS file at `path`; an unreadable file,
    /// a weak or secret key, or no usable public key at all is refused.
    pub fn open(path: &Path, issuer: &str, audience: &str, max_lifetime: Duration) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("reading {}: {error}", path.display()))?;
        let jwks: Jwks =
            serde_json::from_str(&text).map_err(|error| format!("{} is not a JWKS: {error}", path.display()))?;
        let mut keys = Vec::new();
        for (index, jwk) in jwks.keys.iter().enumerate() {
            let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
            let which = kid
                .as_ref()
                .map_or_else(|| format!("key {}", index + 1), |kid| format!("key {kid:?}"));
            if let Some(key) = public_key(jwk).map_err(|why| format!("{}: {which}: {why}", path.display()))? {
                keys.push(TrustedKey {
                    kid,
                    alg: jwk.get("alg").and_then(Value::as_str).map(str::to_owned),
                    key,
                });
            }
        }
        if keys.is_empty() {
            return Err(format!("{} holds no RSA, EC or Ed25519 public key", path.display()));
        }
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            max_lifetime,
        })
    }

    /// The identity a valid token names; why it is not valid otherwise,
    /// without echoing any of it.
    pub fn identify(&self, token: &str) -> Result<Identity, String> {
        self.identify_at(token, chrono::Utc::now().timestamp())
    }

    fn identify_at(&self, token: &str, now: i64) -> Result<Identity, String> {
        let invalid = |why: &str| format!("the bearer token is not valid: {why}");
        let not_jwt = || "the bearer token is not a JWT".to_owned();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(not_jwt());
        };
        let header: Header = decode(header_b64)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(not_jwt)?;
        let claims: Value = decode(claims_b64)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(Value::is_object)
            .ok_or_else(not_jwt)?;
        let signature = decode(signature_b64).ok_or_else(not_jwt)?;
        if header.crit.is_some() {
            return Err(invalid("it has critical extensions this service does not know"));
        }
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|key| key.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or_else(|| "the bearer token's key is not among the trusted keys".to_owned())?;
        if key.alg.as_deref().is_some_and(|pinned| pinned != header.alg) {
            return Err(invalid("algorithm not allowed for its key"));
        }
        let message = format!("{header_b64}.{claims_b64}");
        verify(&key.key, &header.alg, message.as_bytes(), &signature)?;
        self.check_claims(&claims, now).map_err(invalid)?;
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
        Identity::token_subject(subject).ok_or_else(|| "the bearer token names no usable subject".to_owned())
    }

    /// Issuer, audience and the token's time window.
    fn check_claims(&self, claims: &Value, now: i64) -> Result<(), &'static str> {
        let time = |name: &str| -> Result<Option<i64>, &'static str> {
            match claims.get(name) {
                None => Ok(None),
                // NumericDate may carry a fraction; whole seconds are enough here.
                Some(value) => value
                    .as_f64()
                    .map(|at| {
                        #[expect(
                            clippy::cast_possible_truncation,
                            reason = "saturating: a time beyond i64 seconds is never valid"
                        )]
                        Some(at as i64)
                    })
                    .ok_or("a time claim is not a number"),
            }
        };
        let exp = time("exp")?.ok_or("a required claim is missing")?;
        if claims.get("sub").is_none() || claims.get("iss").is_none() || claims.get("aud").is_none() {
            return Err("a required claim is missing");
        }
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err("wrong issuer");
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err("wrong audience");
        }
        if exp + LEEWAY_SECS <= now {
            return Err("expired");
        }
        if time("nbf")?.is_some_and(|nbf| nbf - LEEWAY_SECS > now) {
            return Err("not valid yet");
        }
        let iat = time("iat")?;
        if iat.is_some_and(|iat| iat - LEEWAY_SECS > now) {
            return Err("issued in the future");
        }
        let max = i64::try_from(self.max_lifetime.as_secs()).unwrap_or(i64::MAX);
        if exp.saturating_sub(iat.unwrap_or(now)) > max.saturating_add(LEEWAY_SECS) {
            return Err("its lifetime is longer than this service accepts");
        }
        Ok(())
    }
}

/// Checks `signature` over `message` with `key` under the token's `alg`.
fn verify(key: &PublicKey, alg: &str, message: &[u8], signature: &[u8]) -> Result<(), String> {
    let refused = || "the bearer token is not valid: algorithm not allowed for its key".to_owned();
    let rsa = |params: &'static RsaParameters| Some(params);
    let checked = match key {
        PublicKey::Rsa { n, e } => {
            let params = match alg {
                "RS256" => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
                "RS384" => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
                "RS512" => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
                "PS256" => rsa(&signature::RSA_PSS_2048_8192_SHA256),
                "PS384" => rsa(&signature::RSA_PSS_2048_8192_SHA384),
                "PS512" => rsa(&signature::RSA_PSS_2048_8192_SHA512),
                _ => None,
            }
            .ok_or_else(refused)?;
            RsaPublicKeyComponents { n, e }.verify(params, message, signature)
        }
        PublicKey::P256(point) if alg == "ES256" => {
            unparsed(&signature::ECDSA_P256_SHA256_FIXED, point, message, signature)
        }
        PublicKey::P384(point) if alg == "ES384" => {
            unparsed(&signature::ECDSA_P384_SHA384_FIXED, point, message, signature)
        }
        PublicKey::Ed25519(point) if alg == "EdDSA" || alg == "Ed25519" => {
            unparsed(&signature::ED25519, point, message, signature)
        }
        _ => return Err(refused()),
    };
    checked.map_err(|_| "the bearer token is not valid: bad signature".to_owned())
}

fn unparsed(
    algorithm: &'static dyn VerificationAlgorithm,
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), ring::error::Unspecified> {
    UnparsedPublicKey::new(algorithm, key).verify(message, signature)
}

/// The public key a JWK holds; none for keys not meant for signatures or of a
/// kind this service does not verify; why a key is refused.
fn public_key(jwk: &Value) -> Result<Option<PublicKey>, String> {
    let field = |name: &str| -> Result<Vec<u8>, String> {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(decode)
            .ok_or_else(|| format!("its \"{name}\" is missing or not base64url"))
    };
    if jwk
        .get("use")
        .and_then(Value::as_str)
        .is_some_and(|usage| usage != "sig")
    {
        return Ok(None);
    }
    let curve = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
    match jwk.get("kty").and_then(Value::as_str).unwrap_or_default() {
        "RSA" => {
            let n = field("n")?;
            let significant = n.iter().skip_while(|byte| **byte == 0).count();
            let bits = significant * 8
                - n.iter()
                    .find(|byte| **byte != 0)
                    .map_or(0, |b| b.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits is too weak; at least {MIN_RSA_BITS} bits are required"
                ));
            }
            Ok(Some(PublicKey::Rsa { n, e: field("e")? }))
        }
        "EC" => {
            let (x, y) = (field("x")?, field("y")?);
            let size = match curve {
                "P-256" => 32,
                "P-384" => 48,
                _ => return Ok(None),
            };
            if x.len() != size || y.len() != size {
                return Err(format!("its coordinates are not {size} bytes long for {curve}"));
            }
            let point = [&[4u8][..], &x, &y].concat();
            Ok(Some(if size == 32 {
                PublicKey::P256(point)
            } else {
                PublicKey::P384(point)
            }))
        }
        "OKP" if curve == "Ed25519" => Ok(Some(PublicKey::Ed25519(field("x")?))),
        "oct" => Err("a shared-secret key: anyone who can check a token signed with it can mint one".into()),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An ES256 key, its JWKS verifier and a signer.
    struct Issuer {
        key: ring::signature::EcdsaKeyPair,
        verifier: JwtVerifier,
    }

    impl Issuer {
        fn new(max_lifetime: Duration) -> Self {
            let rng = ring::rand::SystemRandom::new();
            let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
            let key = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
            use ring::signature::KeyPair as _;
            let point = key.public_key().as_ref();
            let jwks = serde_json::json!({"keys": [{
                "kty": "EC", "crv": "P-256", "kid": "k1",
                "x": encode(&point[1..33]), "y": encode(&point[33..65]),
            }]});
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("jwks.json");
            std::fs::write(&path, jwks.to_string()).expect("write");
            let verifier = JwtVerifier::open(&path, "iss", "aud", max_lifetime).expect("verifier");
            Self { key, verifier }
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let message = format!(
                "{}.{}",
                encode(header.to_string().as_bytes()),
                encode(claims.to_string().as_bytes())
            );
            let rng = ring::rand::SystemRandom::new();
            let signature = self.key.sign(&rng, message.as_bytes()).expect("sign");
            format!("{message}.{}", encode(signature.as_ref()))
        }

        fn check(&self, claims: Value, now: i64) -> Result<String, String> {
            let token = self.sign(&serde_json::json!({"alg": "ES256", "kid": "k1"}), &claims);
            self.verifier
                .identify_at(&token, now)
                .map(|identity| identity.to_string())
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn claims(extra: Value) -> Value {
        let mut claims = serde_json::json!({"sub": "svc", "iss": "iss", "aud": "aud", "exp": NOW + 300});
        claims
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        claims
    }

    #[test]
    fn not_before_and_lifetime_are_enforced() {
        let issuer = Issuer::new(Duration::from_hours(1));
        assert_eq!(issuer.check(claims(serde_json::json!({})), NOW), Ok("svc".into()));
        assert_eq!(
            issuer.check(claims(serde_json::json!({"nbf": NOW + 30})), NOW),
            Ok("svc".into()),
            "within the leeway"
        );
        let later = issuer.check(claims(serde_json::json!({"nbf": NOW + 30 * 86_400})), NOW);
        assert!(later.expect_err("not yet").contains("not valid yet"));
        let century = issuer.check(claims(serde_json::json!({"exp": NOW + 100 * 365 * 86_400})), NOW);
        assert!(century.expect_err("too long").contains("lifetime"));
        let issued_long_ago = issuer.check(claims(serde_json::json!({"iat": NOW - 86_400})), NOW);
        assert!(issued_long_ago.expect_err("lifetime from iat").contains("lifetime"));
        let future = issuer.check(claims(serde_json::json!({"iat": NOW + 600})), NOW);
        assert!(future.expect_err("future iat").contains("future"));
        let expired = issuer.check(claims(serde_json::json!({"exp": NOW - 61})), NOW);
        assert!(expired.expect_err("expired").contains("expired"));
        let audiences = issuer.check(claims(serde_json::json!({"aud": ["x", "aud"]})), NOW);
        assert_eq!(audiences, Ok("svc".into()));
    }

    #[test]
    fn forged_and_downgraded_tokens_are_refused() {
        let issuer = Issuer::new(Duration::from_hours(1));
        let valid = issuer.sign(
            &serde_json::json!({"alg": "ES256", "kid": "k1"}),
            &claims(serde_json::json!({})),
        );
        let (signed, _) = valid.rsplit_once('.').expect("three parts");
        for (what, token) in [
            (
                "none",
                format!(
                    "{}.{}.",
                    encode(br#"{"alg":"none","kid":"k1"}"#),
                    signed.split_once('.').expect("parts").1
                ),
            ),
            (
                "HS256",
                issuer.sign(
                    &serde_json::json!({"alg": "HS256", "kid": "k1"}),
                    &claims(serde_json::json!({})),
                ),
            ),
            (
                "crit",
                issuer.sign(
                    &serde_json::json!({"alg": "ES256", "kid": "k1", "crit": ["x"]}),
                    &claims(serde_json::json!({})),
                ),
            ),
            (
                "unknown kid",
                issuer.sign(
                    &serde_json::json!({"alg": "ES256", "kid": "k2"}),
                    &claims(serde_json::json!({})),
                ),
            ),
            (
                "swapped claims",
                format!(
                    "{}.{}.{}",
                    signed.split_once('.').expect("parts").0,
                    encode(claims(serde_json::json!({"sub": "admin"})).to_string().as_bytes()),
                    valid.rsplit_once('.').expect("parts").1
                ),
            ),
            ("four parts", format!("{valid}.x")),
        ] {
            assert!(issuer.verifier.identify_at(&token, NOW).is_err(), "{what}");
        }
    }

    #[test]
    fn weak_and_secret_keys_are_refused_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        let load = |jwks: Value| {
            std::fs::write(&path, jwks.to_string()).expect("write");
            JwtVerifier::open(&path, "iss", "aud", Duration::from_mins(1))
        };
        let modulus_512 = encode(&[0xc3; 64]);
        let error = load(serde_json::json!({"keys": [{"kty": "RSA", "kid": "old", "n": modulus_512, "e": "AQAB"}]}))
            .expect_err("512-bit RSA");
        assert!(error.contains("\"old\"") && error.contains("512 bits"), "{error}");
        let error = load(serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})).expect_err("oct");
        assert!(error.contains("shared-secret"), "{error}");
        let modulus_2048 = encode(&[[0u8].as_slice(), &[0xc3; 256]].concat());
        assert!(load(serde_json::json!({"keys": [{"kty": "RSA", "n": modulus_2048, "e": "AQAB"}]})).is_ok());
        let error = load(serde_json::json!({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}))
            .expect_err("nothing usable");
        assert!(error.contains("no RSA, EC or Ed25519"), "{error}");
    }
}
