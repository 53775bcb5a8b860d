//! The process lifecycle: open the store patiently while health says
//! NOT_SERVING, serve, follow the database for readiness, and shut down in
//! the order a rollout needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::health::Readiness;
use crate::config::Config;
use crate::events::EventBus;
use crate::jobs::{Expiry, JobService, SharedStore};
use crate::metrics::Metrics;
use crate::store::{self, OpeningStore};

/// A service that is listening, and serving once its job store is open.
pub struct RunningService {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub(super) shutdown: CancellationToken,
    pub(super) readiness: Readiness,
    /// The gRPC and HTTP servers, and the task that opens the store and then reconciles.
    pub(super) tasks: Vec<JoinHandle<()>>,
    pub(super) shutdown_delay: Duration,
    pub(super) drain_timeout: Duration,
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

/// What the background work needs once the store is open.
pub(super) struct Work {
    pub config: Config,
    /// The service's store, to open.
    pub store: Arc<OpeningStore>,
    /// This process's event bus, which other replicas' notices feed.
    pub bus: EventBus,
    pub service: Arc<JobService>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
    /// The gRPC and HTTP addresses, announced when serving starts.
    pub addrs: (SocketAddr, SocketAddr),
}

/// Opens the store (patiently), turns SERVING, and then runs the reconciler
/// until shutdown.
pub(super) async fn open_then_work(work: Work) {
    let Work {
        config,
        store,
        bus,
        service,
        metrics,
        readiness,
        shutdown,
        addrs: (grpc_addr, http_addr),
    } = work;
    let Some(opened) = open_store_patiently(&config, &shutdown).await else {
        return;
    };
    if let Some(pool) = opened.postgres {
        store::spawn_event_listener(pool, bus, shutdown.clone());
    }
    metrics.watch_pool(opened.pool_status);
    metrics.watch_commits(opened.commits);
    store.open(opened.store);
    readiness.set(true);
    info!(grpc = %grpc_addr, http = %http_addr, "selfie-auth serving");
    crate::task::spawn(follow_database(store, readiness, config.readiness_interval, shutdown));
    for (expiry, retention) in [
        (Expiry::FinishedJobs, config.retention),
        (Expiry::IdleUsers, config.activity_retention),
    ] {
        if let Some(retention) = retention {
            let service = service.clone();
            crate::task::spawn(async move { service.run_retention(expiry, retention).await });
        }
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
        let failure = match healthy {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("the database does not answer".to_owned()),
        };
        match failure {
            None => {
                if failures >= 2 {
                    info!("database reachable again; serving");
                    readiness.set(true);
                }
                failures = 0;
            }
            Some(error) => {
                failures += 1;
                if failures == 2 {
                    warn!(%error, "database unreachable; not serving");
                    readiness.set(false);
                }
            }
        }
    }
}
