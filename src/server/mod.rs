//! Wires the store, Smile ID client, job service, gRPC and HTTP servers together,
//! and runs the readiness and shutdown choreography.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod health;
mod http;
mod key_file;
mod smile_adapter;
mod timed_store;
pub mod tls;

pub use http::HttpLimits;

use crate::callbacks::{self, CallbackSettings};
use crate::config::Config;
use crate::events::EventBus;
use crate::grpc::identity::IdentityLayer;
use crate::grpc::load_shed::LoadShedLayer;
use crate::grpc::observe::ObserveLayer;
use crate::grpc::request_limits::{ArrivalBudgets, READ_MEMORY_BYTES, RequestLimitsLayer};
use crate::grpc::stream_caps::StreamCapsLayer;
use crate::grpc::{SelfieAuthApi, SelfieAuthServer, pb};
use crate::jobs::SharedStore;
use crate::jobs::memory::MemoryBudget;
use crate::jobs::retention::Expiry;
use crate::jobs::{JobService, JobServiceHandle, JobServiceSlot, Ports};
use crate::metrics::Metrics;
use crate::net::{self, ConnectionLimits, Silence};
use crate::shares::Shares;
use crate::smileid::SmileIdClient;
use crate::store;
use health::Readiness;
use smile_adapter::SmileIdAdapter;
use timed_store::TimedStore;

pub const SERVICE_NAME: &str = <SelfieAuthServer<SelfieAuthApi> as tonic::server::NamedService>::NAME;

/// A service that is listening, and serving once its job store is open.
pub struct RunningService {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    readiness: Readiness,
    /// The gRPC and HTTP servers, and the task that opens the store and then reconciles.
    tasks: Vec<JoinHandle<()>>,
    shutdown_delay: Duration,
    drain_timeout: Duration,
}

impl RunningService {
    /// Waits until the store is open and the service reports SERVING.
    pub async fn ready(&self) {
        self.readiness.serving().await;
    }

    /// Rollout-safe shutdown: NOT_SERVING at once, then serving on for the
    /// shutdown delay while load balancers and meshes withdraw this replica,
    /// then health watches and streams end (UNAVAILABLE / SHUTTING_DOWN), no
    /// new connections are taken, and calls and callbacks in flight drain for
    /// at most the drain timeout.
    pub async fn shutdown(self) {
        self.readiness.stop();
        info!(delay = ?self.shutdown_delay, "shutting down: not ready, serving until this replica is withdrawn");
        tokio::time::sleep(self.shutdown_delay).await;
        info!(timeout = ?self.drain_timeout, "draining");
        self.readiness.close_watches();
        self.shutdown.cancel();
        let aborts: Vec<_> = self.tasks.iter().map(JoinHandle::abort_handle).collect();
        let drain = futures::future::join_all(self.tasks);
        if tokio::time::timeout(self.drain_timeout, drain).await.is_err() {
            // Calls that outlive the drain (a client ignoring GOAWAY) must not block exit.
            warn!(timeout = ?self.drain_timeout, "drain timed out; closing remaining connections");
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        info!("stopped");
    }
}

/// Limits of the gRPC port.
#[derive(Clone, Copy, Debug)]
pub struct GrpcLimits {
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_peer: usize,
    /// Health `Watch` streams open at once (an orchestrator or mesh holds a few).
    pub max_health_watches: usize,
    /// HTTP/2 streams one connection may have open (advertised in SETTINGS).
    pub max_concurrent_streams: u32,
    /// A connection must send its HTTP/2 preface (and TLS handshake) within this long.
    pub preface_timeout: Duration,
    /// A request must arrive in full within this long.
    pub request_timeout: Duration,
    /// Bytes of requests arriving at once, by their declared sizes.
    pub request_memory_bytes: usize,
    /// Bytes one caller's requests may hold while arriving.
    pub caller_request_memory_bytes: usize,
}

/// The contract, google.rpc and health descriptors as one set, so reflection
/// clients can decode rich error details.
fn reflection_descriptors() -> anyhow::Result<Vec<u8>> {
    let mut files = BTreeMap::new();
    for encoded in [
        pb::FILE_DESCRIPTOR_SET,
        tonic_types::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let set = prost_types::FileDescriptorSet::decode(encoded).context("decoding a descriptor set")?;
        for file in set.file {
            files.entry(file.name.clone().unwrap_or_default()).or_insert(file);
        }
    }
    Ok(prost_types::FileDescriptorSet {
        file: files.into_values().collect(),
    }
    .encode_to_vec())
}

/// Reflection streams open at once: tools (grpcurl, a developer's client) need a few.
const REFLECTION_STREAMS: usize = 32;

/// How often the authorization policy file is checked for changes.
const POLICY_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Binds both ports and starts serving; see [`start_on`].
pub async fn start(config: Config) -> anyhow::Result<RunningService> {
    let grpc_listener = TcpListener::bind(config.grpc_addr).await.with_context(|| {
        format!(
            "binding the gRPC address {} ({})",
            config.grpc_addr,
            config.sources.name("grpc_addr")
        )
    })?;
    let http_listener = TcpListener::bind(config.http_addr).await.with_context(|| {
        format!(
            "binding the HTTP address {} ({})",
            config.http_addr,
            config.sources.name("http_addr")
        )
    })?;
    start_on(config, grpc_listener, http_listener).await
}

/// Like [`start`], on listeners the caller bound (so it knows the ports first).
///
/// Serves health (NOT_SERVING) and `/readyz` (503) at once; the job store is
/// opened in the background, retried with backoff while the database does not
/// answer, and only then does the service turn SERVING. Only configuration
/// errors fail the start.
#[expect(
    clippy::too_many_lines,
    reason = "to be split into the gRPC stack, the HTTP stack and the lifecycle"
)]
pub async fn start_on(
    config: Config,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
) -> anyhow::Result<RunningService> {
    if !config.service.confirm_callbacks {
        warn!(
            setting = %config.sources.name("confirm_callbacks"),
            "callbacks are NOT confirmed with job_status: Smile ID signs only a timestamp, so anyone holding one \
             signed callback can forge results for five minutes. Use this only against a simulator or the sandbox"
        );
    }
    if config.identity.insecure_no_auth {
        warn!(
            setting = %config.sources.name("insecure_no_auth"),
            "authentication is OFF: every caller may submit, read and watch every job, image links included. \
             Use this only on a developer machine"
        );
    }
    store::check_url(&config.database_url)
        .with_context(|| format!("the job store ({})", config.sources.name("database_url")))?;
    let policy = config.policy.clone();
    let smile = SmileIdClient::new(config.smile.clone()).context("building the Smile ID client")?;
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::new(metrics.clone());
    let (service, slot) = JobServiceHandle::empty();
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let callback_settings = CallbackSettings {
        path: config.callback_path.clone(),
        credentials: config.smile.credentials.clone(),
        window: config.callback_window,
        body_timeout: config.http_limits.body_timeout,
        memory: MemoryBudget::new(callbacks::CALLBACK_MEMORY_BYTES),
    };
    let http_router = callbacks::router(service.clone(), metrics.clone(), callback_settings, readiness.flag());
    let http_task = crate::task::spawn(http::serve(
        http_listener,
        http_router,
        config.http_limits,
        shutdown.clone(),
    ));

    let descriptors = reflection_descriptors()?;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&descriptors)
        .build_v1()
        .context("building reflection v1")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&descriptors)
        .build_v1alpha()
        .context("building reflection v1alpha")?;
    // The per-method limits are enforced by RequestLimitsLayer, with precise errors,
    // as soon as a frame header declares too much; tonic's own limit is a backstop.
    crate::task::spawn(policy.clone().follow(POLICY_RELOAD_INTERVAL, shutdown.clone()));
    if let Some(path) = config.api_key_file.clone() {
        crate::task::spawn(key_file::follow(
            path,
            config.smile.credentials.keys.clone(),
            config.api_key_overlap,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    let api = SelfieAuthServer::new(SelfieAuthApi::new(
        service,
        policy,
        metrics.clone(),
        config.caller_max_open_streams,
    ))
    .max_decoding_message_size(config.max_message_bytes + 1024)
    .max_encoding_message_size(config.max_message_bytes);
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(config.grpc_limits.max_concurrent_streams)
        .layer(ObserveLayer::new(metrics.clone()))
        .layer(StreamCapsLayer::new(
            config.grpc_limits.max_health_watches,
            REFLECTION_STREAMS,
            metrics.clone(),
        ))
        // Before load shedding: a flood of unidentified calls takes no slot, and a
        // request is admitted only once it has arrived whole.
        .layer(IdentityLayer::new(config.identity.clone(), metrics.clone()))
        .layer(RequestLimitsLayer::new(
            config.max_message_bytes,
            config.grpc_limits.request_timeout,
            ArrivalBudgets {
                submissions: MemoryBudget::new(config.grpc_limits.request_memory_bytes),
                reads: MemoryBudget::new(READ_MEMORY_BYTES),
                per_caller: Shares::new(config.grpc_limits.caller_request_memory_bytes as u64),
            },
            metrics.clone(),
        ))
        .layer(LoadShedLayer::new(config.admissions, metrics.clone()))
        .add_service(readiness.service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api);
    let grpc_tls = config.grpc_tls.clone();
    let grpc_shutdown = shutdown.clone();
    let grpc_limits = config.grpc_limits;
    let grpc_task = crate::task::spawn(async move {
        let incoming = net::accept(
            grpc_listener,
            ConnectionLimits {
                max_connections: grpc_limits.max_connections,
                max_per_peer: grpc_limits.max_connections_per_peer,
                silence: Silence::OpeningWithin(grpc_limits.preface_timeout),
            },
        );
        let served = match grpc_tls {
            Some(tls::GrpcTlsAcceptor(acceptor)) => {
                let incoming = tls::handshakes(incoming, acceptor, grpc_limits.preface_timeout);
                router
                    .serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned())
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned())
                    .await
            }
        };
        if let Err(error) = served {
            warn!(%error, "grpc server stopped with an error");
        }
    });
    info!(grpc = %grpc_addr, http = %http_addr, "selfie-auth listening; opening the job store");

    let shutdown_delay = config.shutdown_delay;
    let drain_timeout = config.drain_timeout;
    let work = crate::task::spawn(open_then_work(
        config,
        Arc::new(SmileIdAdapter::new(smile, metrics.clone())),
        metrics,
        slot,
        readiness.clone(),
        shutdown.clone(),
        (grpc_addr, http_addr),
    ));
    Ok(RunningService {
        grpc_addr,
        http_addr,
        shutdown,
        readiness,
        tasks: vec![grpc_task, http_task, work],
        shutdown_delay,
        drain_timeout,
    })
}

/// Opens the store (patiently), makes the job service, turns SERVING, and then
/// runs the reconciler until shutdown.
async fn open_then_work(
    config: Config,
    smile: Arc<SmileIdAdapter>,
    metrics: Arc<Metrics>,
    slot: JobServiceSlot,
    readiness: Readiness,
    shutdown: CancellationToken,
    (grpc_addr, http_addr): (SocketAddr, SocketAddr),
) {
    let Some(opened) = open_store_patiently(&config, &shutdown).await else {
        return;
    };
    let bus = EventBus::default();
    if let Some(pool) = opened.postgres {
        crate::events::postgres::spawn_listener(pool, store::EVENT_CHANNEL, bus.clone(), shutdown.clone());
    }
    metrics.watch_pool(opened.pool_status);
    let store: crate::jobs::SharedStore = Arc::new(TimedStore::new(opened.store, metrics.clone()));
    let service = JobService::new(
        Ports {
            store: store.clone(),
            fanout: Arc::new(bus),
            smile,
        },
        config.service.clone(),
        metrics,
        shutdown.clone(),
    );
    slot.fill(service.clone());
    readiness.set(true);
    info!(grpc = %grpc_addr, http = %http_addr, "selfie-auth serving");
    crate::task::spawn(follow_database(store, readiness, config.readiness_interval, shutdown));
    if let Some(retention) = config.retention {
        crate::task::spawn(service.clone().run_retention(Expiry::FinishedJobs, retention));
    }
    if let Some(retention) = config.activity_retention {
        crate::task::spawn(service.clone().run_retention(Expiry::IdleUsers, retention));
    }
    crate::task::spawn(service.users().run());
    service.run_reconciler().await;
}

/// Opens the job store, retrying with backoff while the database does not
/// answer (each failure logged with its cause); `None` on shutdown.
async fn open_store_patiently(config: &Config, shutdown: &CancellationToken) -> Option<store::OpenedStore> {
    const FIRST: Duration = Duration::from_millis(500);
    const LONGEST: Duration = Duration::from_secs(30);
    let mut backoff = FIRST;
    loop {
        match store::open(&config.database_url, config.database_limits).await {
            Ok(opened) => return Some(opened),
            Err(error) => warn!(
                error = %error,
                setting = %config.sources.name("database_url"),
                retry_in = ?backoff,
                "the job database is not available; not serving until it is"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(LONGEST);
    }
}

/// Keeps readiness in step with the database: NOT_SERVING after two failed
/// checks in a row, SERVING again after one success, without a restart.
async fn follow_database(store: SharedStore, readiness: Readiness, interval: Duration, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        let healthy = tokio::time::timeout(interval.max(Duration::from_secs(1)), store.ping()).await;
        if shutdown.is_cancelled() {
            return;
        }
        match healthy {
            Ok(Ok(())) => {
                if failures >= 2 {
                    info!("database reachable again; serving");
                    readiness.set(true);
                }
                failures = 0;
            }
            Ok(Err(error)) => {
                failures += 1;
                if failures == 2 {
                    warn!(error = %error, "database unreachable; not serving");
                    readiness.set(false);
                }
            }
            Err(_) => {
                failures += 1;
                if failures == 2 {
                    warn!("database does not answer; not serving");
                    readiness.set(false);
                }
            }
        }
    }
}
