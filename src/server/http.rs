//! The HTTP port (Smile ID callbacks, health, metrics), served by hyper with
//! every connection bounded: a cap on open connections, a deadline for request
//! headers, and an idle timeout, so slow or idle clients cannot exhaust it.
//!
//! Its connections are served on threads of their own, a few nice steps below
//! the ones answering gRPC calls. Each submitted job brings a callback, whose
//! confirmation and durable write take about 0.28 ms of a thread; under a
//! flood of submissions, on the threads answering calls, that work queued
//! ahead of every read (`docs/performance-log.md`, "Callbacks served apart").

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
use crate::fair::BelowCalls;
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

/// How far below the threads answering gRPC calls this port's connections are
/// served: far enough that its work waits for theirs, near enough that
/// Smile ID's callbacks still go ahead of submissions (ten steps down).
const CONNECTIONS_NICE: u8 = 5;
/// How long its threads wait for more connections before they end.
const IDLE_FOR: Duration = Duration::from_secs(10);

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
    let threads = BelowCalls::per_core("http", CONNECTIONS_NICE, IDLE_FOR);
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
        drop(threads.spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "http connection ended with an error");
            }
        }));
    }
    graceful.shutdown().await;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Answers with the name and nice value of the thread that served the request.
    async fn where_served() -> String {
        let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority");
        format!("{} {nice}", std::thread::current().name().unwrap_or_default())
    }

    #[tokio::test]
    async fn connections_are_served_below_the_threads_answering_calls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = HttpLimits {
            max_connections: 8,
            max_connections_per_peer: 8,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
        };
        let shutdown = CancellationToken::new();
        let router = axum::Router::new().route("/where", get(where_served));
        let server = crate::task::spawn(serve(listener, router, limits, shutdown.clone()));

        let answer = reqwest::get(format!("http://{addr}/where"))
            .await
            .expect("a request")
            .text()
            .await
            .expect("a body");
        let here = rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority");
        let expected = format!("http {}", (here + i32::from(CONNECTIONS_NICE)).min(19));
        assert_eq!(
            answer, expected,
            "served on the port's own threads, {CONNECTIONS_NICE} steps down"
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .expect("its task");
    }
}
