//! The HTTP port (Smile ID callbacks, health, metrics), served by hyper with
//! every connection bounded: a cap on open connections, a deadline for request
//! headers, and an idle timeout, so slow or idle clients cannot exhaust it.

use std::time::Duration;

use futures::StreamExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::net::{self, ConnectionLimits, Silence};

/// Limits of the HTTP port's connections.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_peer: usize,
    /// Longest wait for a request's headers.
    pub header_timeout: Duration,
    /// A connection without a byte in either direction this long is closed.
    pub idle_timeout: Duration,
    /// Longest wait for a request's body.
    pub body_timeout: Duration,
}

/// Serves `router` until `shutdown`, then lets requests in progress finish.
pub async fn serve(listener: TcpListener, router: axum::Router, limits: HttpLimits, shutdown: CancellationToken) {
    let connection_limits = ConnectionLimits {
        max_connections: limits.max_connections,
        max_per_peer: limits.max_connections_per_peer,
        silence: Silence::IdleFor(limits.idle_timeout),
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
