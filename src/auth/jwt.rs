//! Bearer JWTs as caller identities, for callers outside a mesh and without
//! client certificates: a token's signature is checked against a JWKS file's
//! public keys, its issuer, audience and expiry against the configuration, and
//! its `sub` is the caller's identity. Shared-secret (HMAC) keys are refused:
//! anyone who can check such a token can mint one.

use std::fmt;
use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

use super::Identity;

/// Checks bearer tokens.
pub struct JwtVerifier {
    keys: JwkSet,
    issuer: String,
    audience: String,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl JwtVerifier {
    /// The verifier for the keys in the JWKS file at `path`; an unreadable file,
    /// or one without a usable public key, is refused.
    pub fn open(path: &Path, issuer: &str, audience: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("reading {}: {error}", path.display()))?;
        let keys: JwkSet =
            serde_json::from_str(&text).map_err(|error| format!("{} is not a JWKS: {error}", path.display()))?;
        if !keys.keys.iter().any(|key| family(key).is_some()) {
            return Err(format!("{} holds no RSA, EC or Ed25519 public key", path.display()));
        }
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// The identity a valid token names; why it is not valid otherwise.
    pub fn identify(&self, token: &str) -> Result<Identity, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "the bearer token is not a JWT".to_owned())?;
        let key = match &header.kid {
            Some(kid) => self.keys.find(kid),
            None if self.keys.keys.len() == 1 => self.keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| "the bearer token's key is not among the trusted keys".to_owned())?;
        let family = family(key).ok_or_else(|| "the bearer token's key is not a public key".to_owned())?;
        let decoding = DecodingKey::from_jwk(key).map_err(|_| "a trusted key cannot be used".to_owned())?;
        let mut validation = Validation::new_for_family(family);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &decoding, &validation)
            .map_err(|error| format!("the bearer token is not valid: {}", what_is_wrong(&error)))?;
        Identity::new(claims.claims.sub).ok_or_else(|| "the bearer token names no subject".to_owned())
    }
}

/// The algorithms a public key may sign with; none for shared secrets.
fn family(key: &Jwk) -> Option<AlgorithmFamily> {
    match key.algorithm {
        AlgorithmParameters::EllipticCurve(_) => Some(AlgorithmFamily::Ec),
        AlgorithmParameters::RSA(_) => Some(AlgorithmFamily::Rsa),
        AlgorithmParameters::OctetKeyPair(_) => Some(AlgorithmFamily::Ed),
        _ => None,
    }
}

/// What was wrong with a token, without echoing any of it.
fn what_is_wrong(error: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "algorithm not allowed for its key",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        ErrorKind::ImmatureSignature => "not valid yet",
        _ => "malformed",
    }
}
