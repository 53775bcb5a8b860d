//! Each SelfieAuth call as an operator sees it: a server span following the
//! OpenTelemetry RPC conventions that lasts as long as the call (a stream's,
//! until it ends), and its duration by method and gRPC status code. Health
//! checks and reflection are probes: neither traced nor measured.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::middleware::{Answer, Inner, Middleware};
use tracing::Instrument as _;

use crate::metrics::{MethodLabel, Metrics, RPC_METHODS, STREAMING_METHODS};

const OBSERVED_PREFIX: &str = "/selfieauth.v1.SelfieAuth/";

/// gRPC's CANCELLED: the caller went away before the call ended.
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;

/// The contract's method a path names, as a fixed label value.
fn method_of(path: &str) -> &'static str {
    let name = path.strip_prefix(OBSERVED_PREFIX).unwrap_or_default();
    RPC_METHODS
        .into_iter()
        .find(|method| *method == name)
        .unwrap_or("unknown")
}

/// Whether a server-side status is the server's fault, as the OpenTelemetry
/// conventions for gRPC servers count errors.
fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

fn status_code(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[derive(Clone)]
pub struct Observe {
    metrics: Arc<Metrics>,
}

impl Observe {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl Middleware for Observe {
    fn call<S: Inner<B>, B: Send + 'static>(&self, inner: &mut S, request: http::Request<B>) -> Answer<S::Error> {
        if !request.uri().path().starts_with(OBSERVED_PREFIX) {
            return Box::pin(inner.call(request));
        }
        let method = method_of(request.uri().path());
        let span = crate::telemetry::grpc_span(request.uri().path(), request.headers());
        let call = Call {
            span: span.clone(),
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
            streaming: STREAMING_METHODS.contains(&method),
        };
        let response = inner.call(request).instrument(span);
        Box::pin(async move {
            let response = response.await?;
            // Trailers-only: the status is in the headers and the call is over.
            if let Some(code) = status_code(response.headers()) {
                call.end(code);
                return Ok(response);
            }
            if call.streaming {
                call.streams().inc();
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(Observed {
                    inner: body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// A call under way.
struct Call {
    span: tracing::Span,
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    streaming: bool,
}

impl Call {
    fn streams(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .streams_open
            .get_or_create(&MethodLabel {
                rpc_method: self.method,
            })
            .clone()
    }

    /// Records the call's end with its status code, and closes its span.
    fn end(self, code: i32) {
        self.metrics.observe_rpc(self.method, code, self.started.elapsed());
        self.span.record("rpc.grpc.status_code", code);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        // An exported span ends at its last exit: pass through it once more, so
        // it covers the whole call, a stream's included.
        self.span.in_scope(|| {});
    }

    fn end_stream(self, code: i32) {
        self.streams().dec();
        self.end(code);
    }
}

/// A response body that ends its call when its trailers pass, or when it is
/// dropped unfinished (the caller went away).
struct Observed {
    inner: tonic::body::Body,
    call: Option<Call>,
}

impl Observed {
    fn finish(&mut self, code: i32) {
        if let Some(call) = self.call.take() {
            if call.streaming {
                call.end_stream(code);
            } else {
                call.end(code);
            }
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(UNKNOWN);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.finish(status.code() as i32),
            Poll::Ready(None) => self.finish(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_fixed_labels_and_errors_follow_the_conventions() {
        assert_eq!(method_of("/selfieauth.v1.SelfieAuth/WatchJobs"), "WatchJobs");
        assert_eq!(method_of("/selfieauth.v1.SelfieAuth/Nope"), "unknown");
        assert!(is_server_error(14) && is_server_error(13) && is_server_error(2));
        assert!(!is_server_error(0) && !is_server_error(3) && !is_server_error(5) && !is_server_error(9));
    }
}
