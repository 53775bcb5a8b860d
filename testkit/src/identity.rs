//! Callers as the network sees them: certificates from a test CA, clients over
//! TLS presenting them, and clients connecting from a chosen loopback address
//! (a mesh sidecar's, or anyone else's).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::service::Client;

/// A CA, and certificates it signs.
pub struct Authority {
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// What a leaf certificate names.
#[derive(Clone, Copy, Debug, Default)]
pub struct Names<'a> {
    /// IP addresses and URIs, as SANs.
    pub sans: &'a [&'a str],
    /// Subject attributes, in order.
    pub subject: &'a [(rcgen::DnType, &'a str)],
}

impl Authority {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        Self { cert, key }
    }

    /// A leaf certificate for `names` (IP addresses and URIs), and its key, in PEM.
    pub fn issue(&self, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
        self.issue_for(
            Names {
                sans: names,
                subject: &[],
            },
            usage,
        )
    }

    /// A leaf certificate with exactly `names`, and its key, in PEM.
    pub fn issue_for(&self, names: Names<'_>, usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names.subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        for name in names.sans {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::URI((*name).try_into().expect("a URI")),
            });
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// The rustls client configuration trusting `ca`, presenting `identity` if any, speaking h2.
fn client_config(ca: &Authority, identity: Option<&(String, String)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A TLS connection to `addr` whose handshake is done and nothing else sent.
pub async fn tls_handshake(
    addr: SocketAddr,
    ca: &Authority,
    identity: Option<&(String, String)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca, identity)));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    connector.connect(name, tcp).await
}

/// A client over TLS to `addr`, trusting `ca`, presenting `identity` (certificate and key PEM) if any.
pub async fn tls_client(
    addr: SocketAddr,
    ca: &Authority,
    identity: Option<&(String, String)>,
) -> Result<Client, tonic::transport::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca, identity)));
    let channel = tonic::transport::Endpoint::new(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(Client::new(channel))
}

/// A plaintext client to `addr` whose connections come from `source`, e.g.
/// 127.0.0.6, where an Istio sidecar's inbound connections come from.
pub async fn client_from(addr: SocketAddr, source: IpAddr) -> Client {
    let channel = tonic::transport::Endpoint::new(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let tcp = socket.connect(addr).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
        }))
        .await
        .expect("connect");
    Client::new(channel)
}
