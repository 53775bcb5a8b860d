//! Who is calling, and what they may do: caller identities (the client
//! certificate a service mesh forwards from a trusted proxy, the one presented
//! to our own TLS, or a bearer token), the authorization policy, and the audit
//! trail of reads of results.
//!
//! A job records the identity that created it; a caller sees its own jobs, and
//! only identities the policy grants `others_jobs` see anyone else's.

pub mod audit;
pub mod identity;
pub mod jwt;
pub mod policy;
pub mod rates;
pub mod xfcc;

pub use identity::{Identity, IdentityKind};
pub use policy::{Permission, Policy, PolicySource};

use std::net::SocketAddr;

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
            Self::Identified(identity) => Some(identity.as_str().to_owned()),
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
    /// A forwarded identity came from a peer that is not a trusted proxy.
    #[error("{0}")]
    UntrustedForwarder(String),
    /// The caller lacks a permission.
    #[error("this caller is not permitted to {}", .0.describe())]
    Denied(Permission),
    /// The caller may not act for this user.
    #[error("this caller may not act for this user")]
    UserNotPermitted,
}

/// Where a connection comes from: its peer address and, on TLS with client
/// certificates, the identity its verified certificate states.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    pub certificate: Option<Identity>,
}

/// The proxies allowed to state a caller's identity in `x-forwarded-client-cert`:
/// peers connecting from these networks (a sidecar's loopback address), or
/// presenting one of these client certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedForwarders {
    pub networks: Vec<ipnet::IpNet>,
    pub certificates: Vec<Identity>,
}

impl TrustedForwarders {
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.certificates.is_empty()
    }

    fn trusts(&self, peer: &Peer) -> bool {
        let by_address = peer.addr.is_some_and(|addr| {
            // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
            let ip = addr.ip().to_canonical();
            self.networks.iter().any(|network| network.contains(&ip))
        });
        let by_certificate = peer
            .certificate
            .as_ref()
            .is_some_and(|certificate| self.certificates.contains(certificate));
        by_address || by_certificate
    }
}

/// How this server identifies callers, as configured.
#[derive(Clone, Debug, Default)]
pub struct IdentityModes {
    /// Trust `x-forwarded-client-cert` from these proxies (none: the header is ignored).
    pub forwarded: Option<TrustedForwarders>,
    /// The gRPC port verifies client certificates.
    pub client_certificates: bool,
    /// Nobody is identified; every caller may do everything.
    pub insecure_no_auth: bool,
    /// Bearer JWTs identify callers (`authorization: Bearer …`).
    pub bearer_tokens: Option<std::sync::Arc<jwt::JwtVerifier>>,
}

impl IdentityModes {
    /// Who makes a call with these `headers` over a connection from `peer`.
    ///
    /// A forwarded identity counts only from a trusted proxy, and from anyone
    /// else is refused rather than ignored, so a forgery is seen; a verified
    /// client certificate that is not a trusted proxy's is the caller, whatever
    /// headers it sends.
    pub fn identify(&self, headers: &http::HeaderMap, peer: &Peer) -> Result<Caller, AuthError> {
        let certificate = peer.certificate.as_ref().filter(|_| self.client_certificates);
        if let Some(trusted) = &self.forwarded
            && headers.contains_key(xfcc::HEADER)
        {
            if !trusted.trusts(peer) {
                return Err(AuthError::UntrustedForwarder(
                    "x-forwarded-client-cert is accepted only from the trusted mesh proxy; \
                     this connection does not come from it"
                        .into(),
                ));
            }
            return xfcc::identity(headers)
                .map(Caller::Identified)
                .ok_or_else(|| AuthError::Unidentified("x-forwarded-client-cert names no SPIFFE ID (URI=)".into()));
        }
        if let Some(identity) = certificate {
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

    const SIDECAR: &str = "127.0.0.6:41000";

    fn headers(lines: &[&'static str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for line in lines {
            headers.append(xfcc::HEADER, http::HeaderValue::from_static(line));
        }
        headers
    }

    fn peer(addr: &str, certificate: Option<&str>) -> Peer {
        Peer {
            addr: Some(addr.parse().expect("an address")),
            certificate: certificate.map(|uri| Identity::spiffe(uri).expect("a SPIFFE ID")),
        }
    }

    fn name(result: Result<Caller, AuthError>) -> Result<String, AuthError> {
        result.map(|caller| caller.name().to_owned())
    }

    fn mesh() -> IdentityModes {
        IdentityModes {
            forwarded: Some(TrustedForwarders {
                networks: vec!["127.0.0.6/32".parse().expect("a network")],
                certificates: vec![Identity::spiffe("spiffe://c/ns/mesh/sa/gateway").expect("id")],
            }),
            client_certificates: true,
            ..IdentityModes::default()
        }
    }

    #[test]
    fn a_forwarded_identity_counts_only_from_a_trusted_proxy() {
        let forged = headers(&["URI=spiffe://c/ns/support/sa/console"]);
        assert_eq!(
            name(mesh().identify(&forged, &peer(SIDECAR, None))),
            Ok("spiffe://c/ns/support/sa/console".into())
        );
        // kubectl port-forward and processes in the pod arrive from 127.0.0.1, other pods from theirs.
        for from in ["127.0.0.1:5000", "10.1.2.3:5000", "[::ffff:10.1.2.3]:5000"] {
            assert!(
                matches!(
                    mesh().identify(&forged, &peer(from, None)),
                    Err(AuthError::UntrustedForwarder(_))
                ),
                "{from}"
            );
        }
        let via_gateway = peer("10.1.2.3:5000", Some("spiffe://c/ns/mesh/sa/gateway"));
        assert_eq!(
            name(mesh().identify(&forged, &via_gateway)),
            Ok("spiffe://c/ns/support/sa/console".into())
        );
        let ignored = IdentityModes {
            insecure_no_auth: true,
            ..IdentityModes::default()
        };
        assert_eq!(ignored.identify(&forged, &peer("10.1.2.3:1", None)), Ok(Caller::Anyone));
    }

    #[test]
    fn a_verified_certificate_is_never_overridden_by_a_header() {
        let alice = peer("10.1.2.3:5000", Some("spiffe://c/ns/pay/sa/alice"));
        assert!(matches!(
            mesh().identify(&headers(&["URI=spiffe://c/ns/pay/sa/bob"]), &alice),
            Err(AuthError::UntrustedForwarder(_))
        ));
        assert_eq!(
            name(mesh().identify(&http::HeaderMap::new(), &alice)),
            Ok("spiffe://c/ns/pay/sa/alice".into())
        );
    }

    #[test]
    fn the_element_the_nearest_proxy_added_counts_across_header_lines() {
        let two_lines = headers(&[
            "URI=spiffe://c/ns/evil/sa/forged",
            "By=spiffe://c/ns/selfie/sa/server;URI=spiffe://c/ns/pay/sa/checkout",
        ]);
        assert_eq!(
            name(mesh().identify(&two_lines, &peer(SIDECAR, None))),
            Ok("spiffe://c/ns/pay/sa/checkout".into())
        );
        assert!(matches!(
            mesh().identify(&headers(&["Hash=1"]), &peer(SIDECAR, None)),
            Err(AuthError::Unidentified(_))
        ));
    }
}
