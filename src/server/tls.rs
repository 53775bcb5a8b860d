//! TLS on the gRPC port, with client certificates from a configured CA when
//! callers are identified by them. A certificate is parsed (never searched):
//! its identity is its one SPIFFE ID (URI SAN); a certificate without a URI SAN
//! is identified by its subject's one common name, as a name of its own kind
//! (`cn:…`). Anything ambiguous — two SPIFFE IDs, a malformed one, two common
//! names — identifies nobody.
//!
//! Handshakes run on tasks of their own, each within the header timeout, so a
//! client that stalls its handshake holds up nobody else's connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::auth::{Identity, Peer};
use crate::config::GrpcTls;
use crate::net::{Guarded, Opening};

/// The gRPC port's TLS acceptor, its files read and checked once, with the configuration.
#[derive(Clone)]
pub struct GrpcTlsAcceptor(pub TlsAcceptor);

impl std::fmt::Debug for GrpcTlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcTlsAcceptor")
    }
}

/// The acceptor for `tls`; a file that cannot be read or used stops start-up.
pub fn acceptor(tls: &GrpcTls) -> anyhow::Result<GrpcTlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .with_context(|| format!("reading certificate {}", tls.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).with_context(|| format!("reading key {}", tls.key.display()))?;
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("reading CA {}", path.display()))? {
                roots
                    .add(cert.with_context(|| format!("parsing CA {}", path.display()))?)
                    .with_context(|| format!("using CA {}", path.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("client certificates from {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("building the gRPC TLS configuration")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(GrpcTlsAcceptor(TlsAcceptor::from(Arc::new(config))))
}

/// A TLS connection on the gRPC port, with its client's identity.
pub struct TlsConnection {
    stream: TlsStream<Guarded<TcpStream>>,
    peer: Peer,
    /// The HTTP/2 preface inside TLS is due within the same timeout as the handshake.
    opening: Opening,
}

/// The accepted connections after their handshakes; failed and stalled
/// handshakes are dropped.
pub fn handshakes(
    incoming: impl Stream<Item = io::Result<Guarded<TcpStream>>> + Send + 'static,
    acceptor: TlsAcceptor,
    timeout: Duration,
) -> impl Stream<Item = io::Result<TlsConnection>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    crate::task::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            // The server stopped taking connections: stop accepting them.
            let accepted = tokio::select! {
                accepted = incoming.next() => accepted,
                () = sender.closed() => return,
            };
            let Some(accepted) = accepted else { return };
            let Ok(connection) = accepted else { continue };
            let (acceptor, deliver) = (acceptor.clone(), sender.clone());
            crate::task::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let peer = Peer {
                            addr: stream.get_ref().0.peer_addr(),
                            certificate: stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|leaf| certificate_identity(leaf)),
                        };
                        let opening = Opening::within(timeout);
                        let _ = deliver.send(Ok(TlsConnection { stream, peer, opening })).await;
                    }
                    Ok(Err(error)) => debug!(%error, "gRPC TLS handshake failed"),
                    Err(_) => debug!("gRPC TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// The identity a (verified) certificate states, read by an X.509 parser.
pub fn certificate_identity(der: &[u8]) -> Option<Identity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        // A duplicated or malformed extension: trust nothing in it.
        Err(_) => return None,
    };
    match uris.as_slice() {
        [] => {
            let mut names = cert.subject().iter_common_name();
            let name = names.next()?.as_str().ok()?;
            if names.next().is_some() {
                return None;
            }
            Identity::common_name(name)
        }
        [uri] => Identity::spiffe(uri),
        _ => None,
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Err(_))) {
            return polled;
        }
        let read = buf.filled().len() - before;
        match self.opening.check(read, cx) {
            Err(error) => Poll::Ready(Err(error)),
            Ok(()) => polled,
        }
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(uris: &[&str], names: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().expect("a URI")));
        }
        params.self_signed(&key).expect("signed").der().to_vec()
    }

    fn identity(uris: &[&str], names: &[(rcgen::DnType, &str)]) -> Option<String> {
        certificate_identity(&certificate(uris, names)).map(|identity| identity.to_string())
    }

    #[test]
    fn the_spiffe_id_is_the_identity() {
        assert_eq!(
            identity(&["spiffe://c/ns/pay/sa/api"], &[(rcgen::DnType::CommonName, "other")]).as_deref(),
            Some("spiffe://c/ns/pay/sa/api")
        );
    }

    #[test]
    fn a_common_name_is_its_own_kind_and_read_from_its_attribute() {
        assert_eq!(
            identity(&[], &[(rcgen::DnType::CommonName, "spiffe://c/ns/support/sa/console")]).as_deref(),
            Some("cn:spiffe://c/ns/support/sa/console")
        );
        // An earlier attribute carrying a CN's encoding is an organisation, not a name.
        let crafted = "\u{6}\u{3}U\u{4}\u{3}\u{c}\u{5}admin";
        assert_eq!(
            identity(
                &[],
                &[
                    (rcgen::DnType::OrganizationName, crafted),
                    (rcgen::DnType::CommonName, "api")
                ]
            )
            .as_deref(),
            Some("cn:api")
        );
        assert_eq!(identity(&[], &[(rcgen::DnType::OrganizationName, crafted)]), None);
    }

    #[test]
    fn ambiguous_or_malformed_names_identify_nobody() {
        assert_eq!(identity(&["spiffe://c/a", "spiffe://c/b"], &[]), None);
        assert_eq!(identity(&["https://c/a"], &[(rcgen::DnType::CommonName, "api")]), None);
        assert_eq!(identity(&["spiffe://C/a"], &[]), None);
        // Two common names: rcgen writes one per type, so an OU is turned into a CN in the DER.
        let mut two_names = certificate(
            &[],
            &[
                (rcgen::DnType::CommonName, "a"),
                (rcgen::DnType::OrganizationalUnitName, "b"),
            ],
        );
        let ou = [0x06, 0x03, 0x55, 0x04, 0x0b];
        // In the issuer and the subject alike (the certificate signs itself).
        while let Some(at) = two_names.windows(5).position(|window| window == ou) {
            two_names[at + 4] = 0x03;
        }
        assert_eq!(certificate_identity(&two_names), None);
        assert_eq!(identity(&[], &[]), None);
        assert_eq!(certificate_identity(b"not a certificate"), None);
    }
}
