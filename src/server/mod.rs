//! Wires the store, Smile ID client, job service, gRPC and HTTP servers
//! together: the one place that knows every concrete type. The gRPC stack, the
//! HTTP stack and the process lifecycle each have a module.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod files;
mod grpc;
mod health;
mod http;
mod lifecycle;
pub mod tls;

pub use lifecycle::RunningService;

use crate::callbacks::{self, CallbackSettings};
use crate::config::{ApiKeySetting, Config};
use crate::events::EventBus;
use crate::grpc::{SelfieAuthApi, SelfieAuthServer};
use crate::jobs::memory::MemoryBudget;
use crate::jobs::{JobService, Ports};
use crate::metrics::Metrics;
use crate::smile_adapter::SmileIdAdapter;
use crate::store::{self, OpeningStore};
use files::Opened;
use health::Readiness;

pub const SERVICE_NAME: &str = <SelfieAuthServer<SelfieAuthApi> as tonic::server::NamedService>::NAME;

/// How often the authorization policy file is checked for changes.
const POLICY_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

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
/// errors (a file that cannot be read, an unknown database) fail the start.
pub async fn start_on(
    config: Config,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
) -> anyhow::Result<RunningService> {
    warn_of_unsafe_settings(&config);
    store::check_url(&config.database_url)
        .with_context(|| format!("the job store ({})", config.sources.name("database_url")))?;
    let opened = Opened::open(&config)?;
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let smile = SmileIdAdapter::new(&opened.smile, metrics.clone()).context("building the Smile ID client")?;
    let readiness = Readiness::new(metrics.clone());
    // The service exists from the start; its store answers unavailable until the database is open.
    let store = OpeningStore::new(metrics.clone());
    let bus = EventBus::default();
    let service = JobService::new(
        Ports {
            store: store.clone(),
            fanout: Arc::new(bus.clone()),
            smile: Arc::new(smile),
            metrics: metrics.clone(),
        },
        config.service.clone(),
        shutdown.clone(),
    );
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let callback_settings = CallbackSettings {
        path: config.callback_path.clone(),
        credentials: opened.smile.credentials.clone(),
        window: config.callback_window,
        body_timeout: config.http_limits.body_timeout,
        memory: MemoryBudget::new(callbacks::CALLBACK_MEMORY_BYTES),
    };
    let http_router = callbacks::router(service.clone(), metrics.clone(), callback_settings)
        .merge(http::probes(readiness.flag(), metrics.clone()));
    let http_task = crate::task::spawn(http::serve(
        http_listener,
        http_router,
        config.http_limits,
        shutdown.clone(),
    ));
    crate::task::spawn(opened.policy.clone().follow(POLICY_RELOAD_INTERVAL, shutdown.clone()));
    crate::task::spawn(crate::metrics::lag::sample(
        metrics.clone(),
        crate::metrics::lag::SAMPLE_EVERY,
        shutdown.clone(),
    ));
    if let ApiKeySetting::File(path) = &config.smile.api_key {
        crate::task::spawn(files::follow_api_key(
            path.clone(),
            opened.smile.credentials.keys.clone(),
            config.smile.key_overlap,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    let grpc_task = grpc::serve(
        &config,
        grpc::GrpcParts {
            service: service.clone(),
            identity: opened.identity,
            policy: opened.policy,
            tls: opened.grpc_tls,
            readiness: readiness.clone(),
            metrics: metrics.clone(),
        },
        grpc_listener,
        shutdown.clone(),
    )?;
    info!(grpc = %grpc_addr, http = %http_addr, "selfie-auth listening; opening the job store");

    let (shutdown_delay, drain_timeout) = (config.shutdown_delay, config.drain_timeout);
    let work = crate::task::spawn(lifecycle::open_then_work(lifecycle::Work {
        config,
        store,
        bus,
        service,
        metrics,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        addrs: (grpc_addr, http_addr),
    }));
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

/// Says loudly, once, which settings make the service unsafe outside a developer machine.
fn warn_of_unsafe_settings(config: &Config) {
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
}
