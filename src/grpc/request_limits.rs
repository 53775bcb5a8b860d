//! Per-RPC request limits, enforced on the request body before any decoding.
//!
//! - Size: tonic sets one decoding limit per service, but only
//!   SubmitAuthentication and EnrollUser carry images: they get the large limit, every other
//!   call the gRPC default of 4 MiB. A message declaring more is refused as soon
//!   as its 5-byte frame header arrives, with RESOURCE_EXHAUSTED (as gRPC's own
//!   implementations answer) and the `MESSAGE_TOO_LARGE` reason.
//! - Memory: the bytes of requests arriving at once are budgeted by their
//!   declared sizes; one that does not fit is shed at once (`OVERLOADED`).
//! - Time: the whole request must arrive within the request timeout, or the call
//!   fails with DEADLINE_EXCEEDED (`REQUEST_TIMEOUT`), so a caller trickling its
//!   body, or never finishing it, cannot hold a load-shedding slot.

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::status::reason_status;
use crate::jobs::ErrorReason;
use crate::jobs::memory::MemoryBudget;

pub const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;
/// The methods that carry images.
const IMAGE_PATHS: [&str; 2] = [
    "/selfieauth.v1.SelfieAuth/SubmitAuthentication",
    "/selfieauth.v1.SelfieAuth/EnrollUser",
];
/// The gRPC frame header before each message: a flag byte and a big-endian length.
const FRAME_HEADER: usize = 5;

#[derive(Clone)]
pub struct RequestLimitsLayer {
    submit_limit: usize,
    timeout: Duration,
    /// Bytes of requests arriving at once, by their declared sizes.
    memory: MemoryBudget,
}

impl RequestLimitsLayer {
    pub fn new(submit_limit: usize, timeout: Duration, memory: MemoryBudget) -> Self {
        Self {
            submit_limit,
            timeout,
            memory,
        }
    }
}

impl<S> Layer<S> for RequestLimitsLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimits {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestLimits<S> {
    inner: S,
    limits: RequestLimitsLayer,
}

impl<S> Service<http::Request<tonic::body::Body>> for RequestLimits<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        if !path.starts_with("/selfieauth.v1.") {
            return self.inner.call(request);
        }
        let limit = if IMAGE_PATHS.contains(&path) {
            self.limits.submit_limit
        } else {
            DEFAULT_LIMIT
        };
        let timeout = self.limits.timeout;
        let memory = self.limits.memory.clone();
        let request = request.map(|body| {
            tonic::body::Body::new(Limited {
                inner: body,
                header: Vec::with_capacity(FRAME_HEADER),
                seen: 0,
                limit,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                timeout,
                memory,
                reserved: None,
            })
        });
        self.inner.call(request)
    }
}

/// A request body that fails with a gRPC status once it is over its size or time limit.
struct Limited {
    inner: tonic::body::Body,
    /// The first bytes of the body, until the frame header is complete.
    header: Vec<u8>,
    seen: usize,
    limit: usize,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    memory: MemoryBudget,
    /// This request's share of the request memory, held until the body is dropped.
    reserved: Option<OwnedSemaphorePermit>,
}

impl Limited {
    fn too_large(&self) -> tonic::Status {
        let limit = self.limit.to_string();
        let message = format!("the request is larger than the {limit} byte limit of this method");
        let metadata = HashMap::from([("limitBytes".to_owned(), limit)]);
        reason_status(ErrorReason::MessageTooLarge, message, metadata, |_| {})
    }

    fn timed_out(&self) -> tonic::Status {
        let message = format!(
            "the request did not arrive within {}",
            humantime::format_duration(self.timeout)
        );
        reason_status(ErrorReason::RequestTimeout, message, HashMap::new(), |_| {})
    }

    /// Checks the bytes of one data frame against the limit.
    fn check(&mut self, data: &Bytes) -> Result<(), tonic::Status> {
        if self.header.len() < FRAME_HEADER {
            let wanted = FRAME_HEADER - self.header.len();
            self.header.extend_from_slice(&data[..wanted.min(data.len())]);
            if let [_, a, b, c, d] = self.header[..] {
                let declared = u32::from_be_bytes([a, b, c, d]) as usize;
                if declared > self.limit {
                    return Err(self.too_large());
                }
                let permit = self.memory.try_reserve(declared as u64).map_err(|_| {
                    reason_status(
                        ErrorReason::Overloaded,
                        "the server is receiving as many large requests as it can; retry shortly",
                        HashMap::new(),
                        |details| {
                            details.set_retry_info(Some(Duration::from_millis(500)));
                        },
                    )
                })?;
                self.reserved = Some(permit);
            }
        }
        self.seen += data.len();
        // A unary request is one message: its frame header plus at most `limit` bytes.
        if self.seen > self.limit + FRAME_HEADER {
            return Err(self.too_large());
        }
        Ok(())
    }
}

impl Body for Limited {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(other) => return Poll::Ready(other),
            Poll::Pending => {
                return match self.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(self.timed_out()))),
                    Poll::Pending => Poll::Pending,
                };
            }
        };
        if let Some(data) = frame.data_ref()
            && let Err(status) = self.check(data)
        {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
