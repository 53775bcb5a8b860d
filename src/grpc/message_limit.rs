//! Per-RPC request size limits. tonic sets one decoding limit per service, but
//! only SubmitAuthentication carries images: it gets the large limit, every
//! other call the gRPC default of 4 MiB. Over the limit, callers get
//! RESOURCE_EXHAUSTED (as gRPC's own implementations answer, where tonic would
//! say OUT_OF_RANGE) with the `MESSAGE_TOO_LARGE` reason and the limit.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::status::reason_status;
use crate::jobs::ErrorReason;

pub const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;
const SUBMIT_PATH: &str = "/selfieauth.v1.SelfieAuth/SubmitAuthentication";
/// The gRPC frame header before each message.
const FRAME_HEADER: usize = 5;

#[derive(Clone, Copy)]
pub struct MessageLimitLayer {
    submit_limit: usize,
}

impl MessageLimitLayer {
    pub fn new(submit_limit: usize) -> Self {
        Self { submit_limit }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            submit_limit: self.submit_limit,
        }
    }
}

#[derive(Clone)]
pub struct MessageLimit<S> {
    inner: S,
    submit_limit: usize,
}

impl<S> Service<http::Request<tonic::body::Body>> for MessageLimit<S>
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
        let limit = if path == SUBMIT_PATH {
            self.submit_limit
        } else {
            DEFAULT_LIMIT
        };
        let request = request.map(|body| {
            tonic::body::Body::new(Capped {
                inner: body,
                seen: 0,
                limit,
            })
        });
        self.inner.call(request)
    }
}

/// A request body that fails with a gRPC status once it exceeds its limit.
struct Capped {
    inner: tonic::body::Body,
    seen: usize,
    limit: usize,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(status))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            self.seen += data.len();
            // A unary request is one message: its frame header plus at most `limit` bytes.
            if self.seen > self.limit + FRAME_HEADER {
                let limit = self.limit.to_string();
                let message = format!("the request is larger than the {limit} byte limit of this method");
                let metadata = HashMap::from([("limitBytes".to_owned(), limit)]);
                let status = reason_status(ErrorReason::MessageTooLarge, message, metadata, |_| {});
                return Poll::Ready(Some(Err(status)));
            }
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
