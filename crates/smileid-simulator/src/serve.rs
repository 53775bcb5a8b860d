//! Binds, serves plain HTTP or TLS, and stops on request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::DefaultBodyLimit;
use axum::routing::{post, put};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::app::{App, AppInner};
use super::state::{CallbackMode, Counters, Endpoint, Fault, SimState, UserCall, UserStanding};
use super::{SimulatorConfig, TlsFiles, control, users, v1, v2};
use smileid::ApiKey;

/// A simulator that is serving. Dropping it does not stop it; call [`Self::shutdown`].
pub struct RunningSimulator {
    local_addr: SocketAddr,
    base_url: String,
    app: App,
    task: JoinHandle<()>,
}

impl RunningSimulator {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http(s)://host:port` of the simulator.
    pub fn url(&self) -> &str {
        &self.base_url
    }

    /// The v1 base URL to give a client (`…/v1`).
    pub fn v1_url(&self) -> String {
        format!("{}/v1", self.base_url)
    }

    pub fn counters(&self) -> Counters {
        self.app.state().counters.clone()
    }

    pub fn enroll(&self, user_id: &str) {
        self.set_user(user_id, UserStanding::Active);
    }

    /// The Smile ID job_type a partner job_id was submitted with.
    pub fn job_type(&self, job_id: &str) -> Option<u32> {
        self.app.state().jobs.get(job_id).map(|job| job.job_type)
    }

    /// Rotates the partner's API key as Smile ID's portal would: signs with
    /// `key` from now on, and accepts the old one for `overlap`.
    pub fn rotate_api_key(&self, key: ApiKey, overlap: Duration) {
        self.app.credentials.keys.rotate(key, overlap);
    }

    /// The user-management calls received, oldest first.
    pub fn user_calls(&self) -> Vec<UserCall> {
        self.app.state().user_calls.iter().cloned().collect()
    }

    /// Where a user stands, and whether they are flagged as suspected fraud.
    pub fn user_standing(&self, user_id: &str) -> (Option<UserStanding>, bool) {
        let state = self.app.state();
        (state.users.get(user_id).copied(), state.flagged.contains(user_id))
    }

    /// Sets where a user stands, e.g. disabled, as Smile ID's console would.
    pub fn set_user(&self, user_id: &str, standing: UserStanding) {
        self.app.state().users.insert(user_id.to_owned(), standing);
    }

    pub fn set_fault(&self, endpoint: Endpoint, fault: Fault) {
        self.app.state().faults.insert(endpoint, fault);
    }

    /// Every endpoint answers normally again, as `DELETE /_control/faults` does.
    pub fn clear_faults(&self) {
        self.app.state().faults.clear();
    }

    pub fn set_callback_mode(&self, mode: CallbackMode) {
        self.app.state().callback_mode = mode;
    }

    pub async fn shutdown(self) {
        self.app.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    /// Serves until the process is told to stop (the `simulator` command).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

pub fn run(config: SimulatorConfig, listener: TcpListener) -> anyhow::Result<RunningSimulator> {
    let local_addr = listener.local_addr()?;
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base_url = format!("{scheme}://{local_addr}");
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the callback http client")?;
    let app = App(Arc::new(AppInner {
        credentials: config.credentials.clone(),
        state: Mutex::new(SimState::new(
            config.enrolled_users.clone(),
            config.max_jobs,
            config.review_delay,
            config.callback_delay,
        )),
        public_url: base_url.clone(),
        default_callback_url: config.default_callback_url.clone(),
        http,
        shutdown: CancellationToken::new(),
        max_zip_bytes: config.max_zip_bytes,
    }));
    let router = axum::Router::new()
        .route("/v1/upload", post(v1::upload))
        .route("/v1/job_status", post(v1::job_status))
        .route("/v2/smart-selfie-authentication", post(v2::smart_selfie_authentication))
        .route(smileid::users::BLOCK_USER_PATH, post(users::block_user))
        .route("/uploads/{ref_id}/selfie.zip", put(v1::put_zip))
        .merge(control::router())
        .layer(DefaultBodyLimit::max(app.max_zip_bytes))
        .with_state(app.clone());

    let shutdown = app.shutdown.clone();
    let task = crate::task::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        debug!(%error, "accept failed");
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            // Tests measure latency through the simulator; Nagle would add delayed-ACK stalls.
            if let Err(error) = stream.set_nodelay(true) {
                debug!(%error, "could not set TCP_NODELAY");
            }
            let service = TowerToHyperService::new(router.clone());
            let tls = tls.clone();
            let shutdown = shutdown.clone();
            crate::task::spawn(async move {
                let served = match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => serve_connection(TokioIo::new(stream), service, &shutdown).await,
                        Err(error) => {
                            debug!(%peer, %error, "tls handshake failed");
                            return;
                        }
                    },
                    None => serve_connection(TokioIo::new(stream), service, &shutdown).await,
                };
                if let Err(error) = served {
                    debug!(%peer, %error, "connection ended with an error");
                }
            });
        }
    });
    info!(url = %base_url, partner_id = %config.credentials.partner_id, "smile id simulator listening");
    Ok(RunningSimulator {
        local_addr,
        base_url,
        app,
        task,
    })
}

/// Serves one connection (HTTP/1 or HTTP/2) until it ends or the simulator stops.
async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<axum::Router>,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::select! {
        result = connection => result,
        () = shutdown.cancelled() => Ok(()),
    }
}

fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading certificate {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", files.cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).with_context(|| format!("reading key {}", files.key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("building the tls configuration")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
