//! Who is calling, and what they may do: caller identities (the client
//! certificate a service mesh forwards, or the one presented to our own TLS),
//! the authorization policy, and the audit trail of reads of results.
//!
//! A job records the identity that created it; a caller sees its own jobs, and
//! only identities the policy grants `others_jobs` see anyone else's.

pub mod audit;
pub mod jwt;
pub mod policy;
pub mod xfcc;

use std::fmt;

pub use policy::{Permission, Policy, PolicySource};

/// A caller's identity: a SPIFFE ID, or a client certificate's subject CN.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity(String);

impl Identity {
    /// An identity as a certificate or a mesh states it; empty is none.
    pub fn new(name: impl Into<String>) -> Option<Self> {
        let name = name.into();
        (!name.trim().is_empty()).then_some(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (`--insecure-no-auth`): anyone may do anything.
    Anyone,
    Identified(Identity),
}

impl Caller {
    /// The owner a job this caller creates records.
    pub fn owner(&self) -> Option<String> {
        match self {
            Self::Anyone => None,
            Self::Identified(identity) => Some(identity.0.clone()),
        }
    }

    /// Whether this caller created a job owned by `owner` (jobs stored without
    /// an owner, before authentication was on, belong to nobody).
    pub fn owns(&self, owner: Option<&str>) -> bool {
        match self {
            Self::Anyone => true,
            Self::Identified(identity) => owner == Some(identity.as_str()),
        }
    }

    /// The caller as logs and the audit trail name it.
    pub fn name(&self) -> &str {
        match self {
            Self::Anyone => "anyone",
            Self::Identified(identity) => identity.as_str(),
        }
    }
}

/// Why a call is refused before it runs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No identity could be established for the caller.
    #[error("{0}")]
    Unidentified(String),
    /// The caller lacks a permission.
    #[error("this caller is not permitted to {}", .0.describe())]
    Denied(Permission),
}

/// A connection's verified client certificate identity, when the gRPC port
/// serves TLS with client certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<Identity>);

/// How this server identifies callers, as configured.
#[derive(Clone, Debug, Default)]
pub struct IdentityModes {
    /// Trust `x-forwarded-client-cert` from a service mesh sidecar.
    pub trust_xfcc: bool,
    /// The gRPC port verifies client certificates.
    pub client_certificates: bool,
    /// Nobody is identified; every caller may do everything.
    pub insecure_no_auth: bool,
    /// Bearer JWTs identify callers (`authorization: Bearer …`).
    pub bearer_tokens: Option<std::sync::Arc<jwt::JwtVerifier>>,
}

impl IdentityModes {
    /// Whether any caller can be identified (or authentication is knowingly off).
    pub fn is_configured(&self) -> bool {
        self.trust_xfcc || self.client_certificates || self.bearer_tokens.is_some() || self.insecure_no_auth
    }

    /// Who makes a call with these `headers` over a connection with `peer`.
    pub fn identify(&self, headers: &http::HeaderMap, peer: Option<&PeerIdentity>) -> Result<Caller, AuthError> {
        if self.trust_xfcc
            && let Some(value) = headers.get(xfcc::HEADER)
        {
            return value
                .to_str()
                .ok()
                .and_then(xfcc::identity)
                .map(Caller::Identified)
                .ok_or_else(|| AuthError::Unidentified("x-forwarded-client-cert names no identity (URI=)".into()));
        }
        if self.client_certificates
            && let Some(PeerIdentity(Some(identity))) = peer
        {
            return Ok(Caller::Identified(identity.clone()));
        }
        if let Some(verifier) = &self.bearer_tokens
            && let Some(value) = headers.get(http::header::AUTHORIZATION)
        {
            let token = value
                .to_str()
                .ok()
                .and_then(|value| value.strip_prefix("Bearer "))
                .ok_or_else(|| AuthError::Unidentified("the authorization header is not a bearer token".into()))?;
            return verifier
                .identify(token.trim())
                .map(Caller::Identified)
                .map_err(AuthError::Unidentified);
        }
        if self.insecure_no_auth {
            return Ok(Caller::Anyone);
        }
        Err(AuthError::Unidentified(
            "the caller could not be identified: call through the service mesh, or present a client certificate or a bearer token".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forged() -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            xfcc::HEADER,
            http::HeaderValue::from_static("URI=spiffe://forged/admin"),
        );
        headers
    }

    #[test]
    fn a_forwarded_certificate_counts_only_when_trusted() {
        let anyone = IdentityModes {
            insecure_no_auth: true,
            ..IdentityModes::default()
        };
        assert_eq!(
            anyone.identify(&forged(), None),
            Ok(Caller::Anyone),
            "ignored when not trusted"
        );
        let certificate = PeerIdentity(Identity::new("spiffe://real/client"));
        let mtls = IdentityModes {
            client_certificates: true,
            ..IdentityModes::default()
        };
        assert_eq!(
            mtls.identify(&forged(), Some(&certificate))
                .map(|caller| caller.name().to_owned()),
            Ok("spiffe://real/client".to_owned()),
            "the certificate, not the header"
        );
        assert!(matches!(
            mtls.identify(&forged(), None),
            Err(AuthError::Unidentified(_))
        ));
        let mesh = IdentityModes {
            trust_xfcc: true,
            ..IdentityModes::default()
        };
        assert_eq!(
            mesh.identify(&forged(), None).map(|caller| caller.name().to_owned()),
            Ok("spiffe://forged/admin".to_owned())
        );
        assert!(matches!(
            mesh.identify(&http::HeaderMap::new(), None),
            Err(AuthError::Unidentified(_))
        ));
    }
}
