//! Caps on the streams that need no identity: health `Watch` and reflection.
//! Each such stream holds a slot of its own kind until its response ends, so
//! unidentified clients opening thousands of them cannot take the memory of
//! the streams callers need; a health `Check` is unary and always answers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::middleware::{Answer, Inner, Middleware};

use super::status::overloaded;
use crate::metrics::Metrics;

/// A kind of stream and how many may be open at once.
#[derive(Clone)]
struct Cap {
    /// The paths the cap applies to: exact, or a prefix ending in `/`.
    path: &'static str,
    what: &'static str,
    /// The `limit` label and metadata of its refusals.
    limit: &'static str,
    slots: Arc<Semaphore>,
}

impl Cap {
    fn covers(&self, path: &str) -> bool {
        if self.path.ends_with('/') {
            path.starts_with(self.path)
        } else {
            path == self.path
        }
    }
}

#[derive(Clone)]
pub struct StreamCaps {
    caps: Vec<Cap>,
    metrics: Arc<Metrics>,
}

impl StreamCaps {
    /// At most `health_watches` health watches and `reflection` reflection streams at once.
    pub fn new(health_watches: usize, reflection: usize, metrics: Arc<Metrics>) -> Self {
        let cap = |path, what, limit, slots| Cap {
            path,
            what,
            limit,
            slots: Arc::new(Semaphore::new(slots)),
        };
        Self {
            caps: vec![
                cap(
                    "/grpc.health.v1.Health/Watch",
                    "health watches",
                    "health_watches",
                    health_watches,
                ),
                cap("/grpc.reflection.", "reflection streams", "reflection", reflection),
            ],
            metrics,
        }
    }
}

impl Middleware for StreamCaps {
    fn call<S: Inner<B>, B: Send + 'static>(&self, inner: &mut S, request: http::Request<B>) -> Answer<S::Error> {
        let path = request.uri().path();
        let Some(cap) = self.caps.iter().find(|cap| cap.covers(path)) else {
            return Box::pin(inner.call(request));
        };
        let Ok(slot) = cap.slots.clone().try_acquire_owned() else {
            self.metrics.shed(cap.limit);
            let message = format!("the server has as many {} open as it allows; retry shortly", cap.what);
            let status = overloaded(message, cap.limit, Duration::from_secs(1));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let call = inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|body| tonic::body::Body::new(Holding { body, _slot: slot })))
        })
    }
}

/// A response body that holds its stream's slot until it ends or is dropped.
struct Holding {
    body: tonic::body::Body,
    _slot: OwnedSemaphorePermit,
}

impl Body for Holding {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
