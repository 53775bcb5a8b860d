//! Per-RPC request limits, enforced on the request body before any decoding,
//! and the arrival of each request in full before the call is admitted.
//!
//! - Arrival: a SelfieAuth request is received whole before the call goes on
//!   to load shedding, so a request still arriving holds only its arrival
//!   budget (bytes and time), never a concurrency slot.
//! - Size: tonic sets one decoding limit per service, but only
//!   SubmitAuthentication and EnrollUser carry images: they get the large limit, every other
//!   call the gRPC default of 4 MiB. A message declaring more is refused as soon
//!   as its 5-byte frame header arrives, with RESOURCE_EXHAUSTED (as gRPC's own
//!   implementations answer) and the `MESSAGE_TOO_LARGE` reason.
//! - Memory: the bytes of requests arriving at once are budgeted by their
//!   declared sizes, submissions and reads apart, and each caller may hold at
//!   most its share; one that does not fit is shed at once (`OVERLOADED`).
//! - Time: the whole request must arrive within the request timeout, or the call
//!   fails with DEADLINE_EXCEEDED (`REQUEST_TIMEOUT`).

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::status::{overloaded, reason_status};
use crate::auth::Caller;
use crate::jobs::ErrorReason;
use crate::jobs::memory::MemoryBudget;
use crate::metrics::Metrics;
use crate::shares::{Share, Shares};

pub const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;
/// The methods that carry images.
const IMAGE_PATHS: [&str; 2] = [
    "/selfieauth.v1.SelfieAuth/SubmitAuthentication",
    "/selfieauth.v1.SelfieAuth/EnrollUser",
];

/// Whether `path` is a submission (a call carrying images).
pub fn is_submission(path: &str) -> bool {
    IMAGE_PATHS.contains(&path)
}

/// Bytes of read requests (every call but submissions) arriving at once: they
/// are small, and have a budget of their own so that submissions cannot take it.
pub const READ_MEMORY_BYTES: usize = 32 * 1024 * 1024;
/// The gRPC frame header before each message: a flag byte and a big-endian length.
const FRAME_HEADER: usize = 5;

/// The budgets requests arrive within.
#[derive(Clone)]
pub struct ArrivalBudgets {
    /// Bytes of submissions arriving at once, by their declared sizes.
    pub submissions: MemoryBudget,
    /// Bytes of other requests arriving at once.
    pub reads: MemoryBudget,
    /// Bytes one caller's requests may hold while arriving.
    pub per_caller: Shares<String>,
}

#[derive(Clone)]
pub struct RequestLimitsLayer {
    submit_limit: usize,
    timeout: Duration,
    budgets: ArrivalBudgets,
    metrics: Arc<Metrics>,
}

impl RequestLimitsLayer {
    pub fn new(submit_limit: usize, timeout: Duration, budgets: ArrivalBudgets, metrics: Arc<Metrics>) -> Self {
        Self {
            submit_limit,
            timeout,
            budgets,
            metrics,
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
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        if !path.starts_with("/selfieauth.v1.") {
            return Box::pin(self.inner.call(request));
        }
        let submission = is_submission(path);
        let caller = request
            .extensions()
            .get::<Caller>()
            .map_or_else(|| "anyone".to_owned(), |caller| caller.name().to_owned());
        let budgets = &self.limits.budgets;
        let limited = Limited {
            header: Vec::with_capacity(FRAME_HEADER),
            seen: 0,
            limit: if submission {
                self.limits.submit_limit
            } else {
                DEFAULT_LIMIT
            },
            deadline: Box::pin(tokio::time::sleep(self.limits.timeout)),
            timeout: self.limits.timeout,
            memory: if submission {
                budgets.submissions.clone()
            } else {
                budgets.reads.clone()
            },
            caller_shares: budgets.per_caller.clone(),
            caller,
            reserved: None,
            metrics: self.limits.metrics.clone(),
        };
        // The service that was polled ready takes this call; its clone takes the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let (parts, body) = request.into_parts();
        Box::pin(async move {
            match limited.receive(body).await {
                Ok(arrived) => {
                    inner
                        .call(http::Request::from_parts(parts, tonic::body::Body::new(arrived)))
                        .await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// A request received in full, holding its memory until tonic has decoded it.
struct Arrived {
    /// The body's data frames as they came (not copied into one buffer).
    frames: std::collections::VecDeque<Bytes>,
    _reserved: Option<Reserved>,
}

impl Body for Arrived {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.frames.pop_front().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.frames.iter().map(|data| data.len() as u64).sum())
    }
}

/// A request's share of the arrival memory and of its caller's.
type Reserved = (OwnedSemaphorePermit, Share<String>);

/// How one request body is received: refused with a gRPC status once it is
/// over its size, memory or time limit.
struct Limited {
    /// The first bytes of the body, until the frame header is complete.
    header: Vec<u8>,
    seen: usize,
    limit: usize,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    memory: MemoryBudget,
    caller_shares: Shares<String>,
    caller: String,
    /// This request's share of the request memory, held until the body is dropped.
    reserved: Option<Reserved>,
    metrics: Arc<Metrics>,
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
                let Some(share) = self.caller_shares.take(&self.caller, declared as u64) else {
                    self.metrics.shed("caller_arrival");
                    let message = "this caller is sending as many bytes at once as its share of this replica allows; \
                                   retry shortly";
                    return Err(overloaded(message, "caller_arrival", Duration::from_millis(500)));
                };
                let Ok(permit) = self.memory.try_reserve(declared as u64) else {
                    self.metrics.shed("arrival_memory");
                    let message = "the server is receiving as many large requests as it can; retry shortly";
                    return Err(overloaded(message, "arrival_memory", Duration::from_millis(500)));
                };
                self.reserved = Some((permit, share));
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

impl Limited {
    /// The whole of `body`, within the limits.
    async fn receive(mut self, mut body: tonic::body::Body) -> Result<Arrived, tonic::Status> {
        let mut frames = std::collections::VecDeque::new();
        loop {
            let frame = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending => match self.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(self.timed_out()))),
                    Poll::Pending => Poll::Pending,
                },
                ready @ Poll::Ready(_) => ready,
            })
            .await;
            match frame {
                None => break,
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.check(&data)?;
                        frames.push_back(data);
                    }
                }
            }
        }
        Ok(Arrived {
            frames,
            _reserved: self.reserved.take(),
        })
    }
}
