//! Wires the store, Smile ID client, job service, gRPC and HTTP servers together,
//! and runs the readiness and shutdown choreography.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

mod http;
mod smile_adapter;

pub use http::HttpLimits;

use crate::callbacks::{self, CallbackSettings};
use crate::config::Config;
use crate::events::EventBus;
use crate::grpc::load_shed::LoadShedLayer;
use crate::grpc::request_limits::RequestLimitsLayer;
use crate::grpc::{SelfieAuthApi, SelfieAuthServer, pb};
use crate::jobs::SharedStore;
use crate::jobs::memory::MemoryBudget;
use crate::jobs::{JobService, Ports};
use crate::metrics::Metrics;
use crate::net::{self, ConnectionLimits, Silence};
use crate::smileid::SmileIdClient;
use crate::store;
use smile_adapter::SmileIdAdapter;

pub const SERVICE_NAME: &str = <SelfieAuthServer<SelfieAuthApi> as tonic::server::NamedService>::NAME;

/// A service that is serving.
pub struct RunningService {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    readiness: Readiness,
    grpc_task: JoinHandle<()>,
    http_task: JoinHandle<()>,
    reconciler_task: JoinHandle<()>,
    /// Readiness checks and the event listener: stopped, not drained.
    background: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
}

impl RunningService {
    /// Graceful shutdown: NOT_SERVING, streams end with UNAVAILABLE, in-flight
    /// calls drain for at most the drain timeout.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.readiness.set(false).await;
        self.shutdown.cancel();
        self.background.iter().for_each(JoinHandle::abort);
        let tasks = [self.grpc_task, self.http_task, self.reconciler_task];
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let drain = futures::future::join_all(tasks);
        if tokio::time::timeout(self.drain_timeout, drain).await.is_err() {
            // Calls that outlive the drain (a client ignoring GOAWAY) must not block exit.
            warn!(timeout = ?self.drain_timeout, "drain timed out; closing remaining connections");
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

/// Limits of the gRPC port.
#[derive(Clone, Copy, Debug)]
pub struct GrpcLimits {
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open (advertised in SETTINGS).
    pub max_concurrent_streams: u32,
    /// A connection must send its HTTP/2 preface within this long.
    pub preface_timeout: Duration,
    /// A request must arrive in full within this long.
    pub request_timeout: Duration,
    /// Bytes of requests arriving at once, by their declared sizes.
    pub request_memory_bytes: usize,
}

/// What orchestrators see, kept in step: gRPC health (overall and
/// `selfieauth.v1.SelfieAuth`) and the HTTP `/readyz` flag.
#[derive(Clone)]
struct Readiness {
    health: HealthReporter,
    ready: Arc<AtomicBool>,
}

impl Readiness {
    async fn set(&self, serving: bool) {
        self.ready.store(serving, Ordering::Relaxed);
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status("", status).await;
        self.health.set_service_status(SERVICE_NAME, status).await;
    }
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

/// Opens the store, binds both ports, starts serving, then reports SERVING.
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
    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness {
        health,
        ready: Arc::new(AtomicBool::new(false)),
    };
    // The reporter starts with "" SERVING; nothing is ready yet.
    readiness.set(false).await;

    let opened = store::open(&config.database_url, config.database_limits)
        .await
        .with_context(|| format!("opening the job store ({})", config.sources.name("database_url")))?;
    let smile = SmileIdClient::new(config.smile.clone()).context("building the Smile ID client")?;
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let bus = EventBus::default();
    let listener_task = opened
        .postgres
        .map(|pool| crate::events::postgres::spawn_listener(pool, store::EVENT_CHANNEL, bus.clone(), shutdown.clone()));
    let store = opened.store;
    let service = JobService::new(
        Ports {
            store: store.clone(),
            fanout: Arc::new(bus),
            smile: Arc::new(SmileIdAdapter::new(smile)),
        },
        config.service.clone(),
        metrics.clone(),
        shutdown.clone(),
    );

    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let callback_settings = CallbackSettings {
        path: config.callback_path.clone(),
        credentials: config.smile.credentials.clone(),
        window: config.callback_window,
        body_timeout: config.http_limits.body_timeout,
    };
    let http_router = callbacks::router(service.clone(), callback_settings, readiness.ready.clone());
    let http_task = tokio::spawn(http::serve(
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
    let api = SelfieAuthServer::new(SelfieAuthApi::new(service.clone()))
        .max_decoding_message_size(config.max_message_bytes + 1024)
        .max_encoding_message_size(config.max_message_bytes);
    let router = tonic::transport::Server::builder()
        .trace_fn(crate::telemetry::grpc_span)
        .http2_keepalive_interval(Some(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(config.grpc_limits.max_concurrent_streams)
        .layer(LoadShedLayer::new(config.concurrency_limit, metrics))
        .layer(RequestLimitsLayer::new(
            config.max_message_bytes,
            config.grpc_limits.request_timeout,
            MemoryBudget::new(config.grpc_limits.request_memory_bytes),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api);
    let grpc_shutdown = shutdown.clone();
    let grpc_limits = config.grpc_limits;
    let grpc_task = tokio::spawn(async move {
        let incoming = net::accept(
            grpc_listener,
            ConnectionLimits {
                max_connections: grpc_limits.max_connections,
                silence: Silence::FirstBytesWithin(grpc_limits.preface_timeout),
            },
        );
        let served = router
            .serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            warn!(%error, "grpc server stopped with an error");
        }
    });
    let reconciler_task = tokio::spawn(service.clone().run_reconciler());

    readiness.set(true).await;
    let readiness_task = tokio::spawn(follow_database(
        store,
        readiness.clone(),
        config.readiness_interval,
        shutdown.clone(),
    ));
    info!(grpc = %grpc_addr, http = %http_addr, "selfie-auth serving");
    Ok(RunningService {
        grpc_addr,
        http_addr,
        shutdown,
        readiness,
        grpc_task,
        http_task,
        reconciler_task,
        background: [Some(readiness_task), listener_task].into_iter().flatten().collect(),
        drain_timeout: config.drain_timeout,
    })
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
                    readiness.set(true).await;
                }
                failures = 0;
            }
            _ => {
                failures += 1;
                if failures == 2 {
                    warn!("database unreachable; not serving");
                    readiness.set(false).await;
                }
            }
        }
    }
}
