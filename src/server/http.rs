//! The HTTP port (Smile ID callbacks, health, metrics), served by hyper with
//! every connection bounded: a cap on open connections, a deadline for request
//! headers, and an idle timeout, so slow or idle clients cannot exhaust it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::routing::get;
use futures::StreamExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::HttpLimits;
use crate::metrics::Metrics;
use crate::net::{self, ConnectionLimits, Silence};

/// The routes beside the callback: liveness, readiness and metrics.
pub fn probes(ready: Arc<AtomicBool>, metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz).with_state(ready))
        .route("/metrics", get(render_metrics).with_state(metrics))
}

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> (StatusCode, &'static str) {
    if ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn render_metrics(
    State(metrics): State<Arc<Metrics>>,
    headers: HeaderMap,
) -> ([(HeaderName, &'static str); 1], String) {
    let accept = headers.get(header::ACCEPT).and_then(|value| value.to_str().ok());
    let (content_type, text) = metrics.render_for(accept);
    ([(header::CONTENT_TYPE, content_type)], text)
}

/// Serves `router` until `shutdown`, then lets requests in progress finish.
pub async fn serve(listener: TcpListener, router: axum::Router, limits: HttpLimits, shutdown: CancellationToken) {
    let connection_limits = ConnectionLimits {
        max_connections: limits.max_connections,
        max_per_peer: limits.max_connections_per_peer,
        silence: Silence::IdleFor(limits.idle_timeout),
        stalled_writes: limits.idle_timeout,
    };
    let mut incoming = std::pin::pin!(net::accept(listener, connection_limits));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let stream = tokio::select! {
            accepted = incoming.next() => match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    debug!(%error, "accepting an http connection failed");
                    // Out of file descriptors: give the others a moment to close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        crate::task::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "http connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
