//! Identifies the caller of every SelfieAuth call (see [`IdentityModes`]) and
//! hands the [`Caller`] to the handlers; a call whose caller cannot be
//! identified ends at once with UNAUTHENTICATED / `CALLER_UNIDENTIFIED`.
//! A forwarded identity from a peer that is no trusted proxy ends with
//! UNAUTHENTICATED / `FORWARDED_IDENTITY_UNTRUSTED`, and is counted and logged.
//! Health checks and reflection need no identity.

use std::sync::Arc;

use super::middleware::{Answer, Inner, Middleware};
use tracing::{debug, warn};

use super::status::auth_status;
use crate::auth::{AuthError, IdentityModes, Peer};
use crate::metrics::Metrics;

const IDENTIFIED_PREFIX: &str = "/selfieauth.v1.SelfieAuth/";

#[derive(Clone)]
pub struct Identify {
    modes: IdentityModes,
    metrics: Arc<Metrics>,
}

impl Identify {
    pub fn new(modes: IdentityModes, metrics: Arc<Metrics>) -> Self {
        Self { modes, metrics }
    }
}

impl Middleware for Identify {
    fn call<S: Inner<B>, B: Send + 'static>(&self, inner: &mut S, mut request: http::Request<B>) -> Answer<S::Error> {
        if !request.uri().path().starts_with(IDENTIFIED_PREFIX) {
            return Box::pin(inner.call(request));
        }
        // TLS connections state their peer; plaintext ones only their address.
        let peer = request.extensions().get::<Peer>().cloned().unwrap_or_else(|| Peer {
            addr: request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(tonic::transport::server::TcpConnectInfo::remote_addr),
            certificate: None,
        });
        match self.modes.identify(request.headers(), &peer) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(inner.call(request))
            }
            Err(error) => {
                if matches!(error, AuthError::UntrustedForwarder(_)) {
                    self.metrics.forwarded_identities_refused.inc();
                    warn!(
                        method = request.uri().path(),
                        peer = ?peer.addr,
                        "x-forwarded-client-cert from a peer that is not a trusted proxy; refused"
                    );
                } else {
                    self.metrics.calls_unidentified.inc();
                    debug!(method = request.uri().path(), "caller not identified");
                }
                let status = auth_status(&error);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
