//! A concurrency limit that sheds excess calls at once with UNAVAILABLE
//! (reason `OVERLOADED`, with `RetryInfo`), so callers back off and retry
//! instead of queueing behind a saturated replica.
//!
//! Only SelfieAuth calls count and are shed; health checks and reflection always
//! pass, so an overloaded replica still answers its orchestrator. A stream holds
//! its slot only until its response starts, and a submission waiting for its
//! result gives its slot back once Smile ID has the job.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::status::to_status;
use crate::jobs::{JobError, UnavailableReason};
use crate::metrics::Metrics;

const LIMITED_PREFIX: &str = "/selfieauth.v1.SelfieAuth/";

#[derive(Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl LoadShedLayer {
    pub fn new(max_in_flight: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            metrics,
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            permits: self.permits.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<http::Request<B>> for LoadShed<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(LIMITED_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let admission = Admission(Arc::new(Mutex::new(Some(permit))));
                let mut request = request;
                request.extensions_mut().insert(admission.clone());
                let call = self.inner.call(request);
                let in_flight = InFlight::enter(self.metrics.clone());
                Box::pin(async move {
                    let response = call.await;
                    drop((admission, in_flight));
                    response
                })
            }
            Err(_) => {
                self.metrics.calls_shed.inc();
                let status = to_status(&JobError::Unavailable {
                    reason: UnavailableReason::Overloaded,
                    message: "the server is at its concurrency limit; retry shortly".into(),
                    retry_after: Some(Duration::from_millis(200)),
                });
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// A call's slot under the concurrency limit. A handler may give it back
/// early, once the admitted work is done and it only waits (a submission
/// waiting for its result).
#[derive(Clone)]
pub struct Admission(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Admission {
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }
}

/// Counts a call in flight until dropped, even when the caller goes away mid-call.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn enter(metrics: Arc<Metrics>) -> Self {
        metrics.calls_in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.calls_in_flight.dec();
    }
}
