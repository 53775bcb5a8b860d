//! TLS on the gRPC port, with client certificates from a configured CA when
//! callers are identified by them. A caller's identity is its certificate's
//! SPIFFE ID (URI SAN), or else its subject's common name.
//!
//! Handshakes run on tasks of their own, each within the header timeout, so a
//! client that stalls its handshake holds up nobody else's connection.

use std::io;
use std::path::PathBuf;
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

use crate::auth::{Identity, PeerIdentity};
use crate::net::Guarded;

/// The gRPC port's certificate, and the CA whose client certificates identify callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to this CA (PEM); none: no client certificates.
    pub client_ca: Option<PathBuf>,
}

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
    identity: PeerIdentity,
}

/// The accepted connections after their handshakes; failed and stalled
/// handshakes are dropped.
pub fn handshakes(
    incoming: impl Stream<Item = io::Result<Guarded<TcpStream>>> + Send + 'static,
    acceptor: TlsAcceptor,
    timeout: Duration,
) -> impl Stream<Item = io::Result<TlsConnection>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
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
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let identity = peer_identity(stream.get_ref().1);
                        let _ = deliver.send(Ok(TlsConnection { stream, identity })).await;
                    }
                    Ok(Err(error)) => debug!(%error, "gRPC TLS handshake failed"),
                    Err(_) => debug!("gRPC TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// The identity the client's (verified) certificate states.
fn peer_identity(connection: &rustls::ServerConnection) -> PeerIdentity {
    let identity = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| {
            let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
            let uri = cert
                .valid_uri_names()
                .find(|uri| uri.starts_with("spiffe://"))
                .map(str::to_owned);
            uri.or_else(|| common_name(cert.subject()))
        })
        .and_then(Identity::new);
    PeerIdentity(identity)
}

/// The common name (OID 2.5.4.3) of a DER-encoded X.509 name's contents.
fn common_name(subject: &[u8]) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    let at = subject
        .windows(COMMON_NAME.len())
        .position(|window| window == COMMON_NAME)?;
    let rest = subject.get(at + COMMON_NAME.len()..)?;
    let (&tag, rest) = rest.split_first()?;
    // UTF8String, PrintableString, IA5String.
    if !matches!(tag, 0x0c | 0x13 | 0x16) {
        return None;
    }
    let (&length, rest) = rest.split_first()?;
    let (length, rest) = match length {
        0..=0x7f => (usize::from(length), rest),
        0x81 => {
            let (&long, rest) = rest.split_first()?;
            (usize::from(long), rest)
        }
        _ => return None,
    };
    String::from_utf8(rest.get(..length)?.to_vec()).ok()
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.identity.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
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

    #[test]
    fn the_common_name_is_read_from_a_subject() {
        // SEQUENCE-less contents of: SET { SEQUENCE { OID 2.5.4.3, UTF8String "api" } }
        let subject = [
            0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x03, b'a', b'p', b'i',
        ];
        assert_eq!(common_name(&subject).as_deref(), Some("api"));
        assert_eq!(common_name(&subject[..12]), None, "truncated");
        assert_eq!(common_name(&[]), None);
    }
}
