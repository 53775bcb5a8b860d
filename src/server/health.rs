//! `grpc.health.v1.Health` and `/readyz`, kept in step. Unlike a stock health
//! service, its `Watch` streams end when the server stops, so orchestrators
//! and meshes holding them never hold up a shutdown.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::SERVICE_NAME;
use crate::metrics::Metrics;

/// Whether this replica should receive traffic: gRPC health of `""` and
/// `selfieauth.v1.SelfieAuth`, and the HTTP `/readyz` flag.
#[derive(Clone)]
pub struct Readiness {
    status: watch::Sender<ServingStatus>,
    ready: Arc<AtomicBool>,
    /// Set once shutdown begins: nothing turns the replica ready again.
    stopping: Arc<AtomicBool>,
    /// Ends every health `Watch` stream.
    closing: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Readiness {
    /// A replica that is not serving yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            status: watch::Sender::new(ServingStatus::NotServing),
            ready: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
            closing: CancellationToken::new(),
        }
    }

    /// Not serving, for good: the replica is shutting down.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.set(false);
    }

    /// Waits until the replica first reports SERVING.
    pub async fn serving(&self) {
        let mut status = self.status.subscribe();
        let _ = status.wait_for(|status| *status == ServingStatus::Serving).await;
    }

    pub fn set(&self, serving: bool) {
        let serving = serving && !self.stopping.load(Ordering::Relaxed);
        self.ready.store(serving, Ordering::Relaxed);
        self.metrics.ready.set(i64::from(serving));
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.status.send_replace(status);
    }

    /// The flag `/readyz` answers from.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Ends every health `Watch` stream.
    pub fn close_watches(&self) {
        self.closing.cancel();
    }

    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService {
            status: self.status.subscribe(),
            closing: self.closing.clone(),
        })
    }
}

pub struct HealthService {
    status: watch::Receiver<ServingStatus>,
    closing: CancellationToken,
}

fn known(service: &str) -> bool {
    service.is_empty() || service == SERVICE_NAME
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        if !known(&request.get_ref().service) {
            return Err(Status::not_found("unknown service"));
        }
        let status = *self.status.borrow();
        Ok(Response::new(HealthCheckResponse { status: status as i32 }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        let service_known = known(&request.get_ref().service);
        let mut status = self.status.clone();
        let closing = self.closing.clone();
        let stream = async_stream_of(move |sender| async move {
            if !service_known {
                // The services served never change: one SERVICE_UNKNOWN, then the stream stays
                // open, as the health protocol asks, until the server stops.
                let unknown = HealthCheckResponse {
                    status: ServingStatus::ServiceUnknown as i32,
                };
                if sender.send(Ok(unknown)).await.is_ok() {
                    tokio::select! {
                        () = closing.cancelled() => {}
                        () = sender.closed() => {}
                    }
                }
                return;
            }
            loop {
                let current = *status.borrow_and_update();
                if sender
                    .send(Ok(HealthCheckResponse { status: current as i32 }))
                    .await
                    .is_err()
                {
                    return;
                }
                // Biased: a status set just before closing (NOT_SERVING) is sent before the end.
                tokio::select! {
                    biased;
                    changed = status.changed() => if changed.is_err() { return },
                    () = closing.cancelled() => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by `produce` through a small channel.
fn async_stream_of<F, Fut>(produce: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<HealthCheckResponse, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    crate::task::spawn(produce(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
