//! The tower shells of the gRPC stack's middleware, written once: a
//! [`Middleware`] says what it does with one request given the rest of the
//! stack, and [`MiddlewareLayer`] makes it a layer.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

pub type GrpcResponse = http::Response<tonic::body::Body>;

/// The future a middleware answers with.
pub type Answer<E> = BoxFuture<'static, Result<GrpcResponse, E>>;

/// The rest of the stack, as a middleware calls it.
pub trait Inner<B>:
    Service<http::Request<B>, Response = GrpcResponse, Future: Send + 'static, Error: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> Inner<B> for S
where
    S: Service<http::Request<B>, Response = GrpcResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
}

pub trait Middleware: Clone + Send + Sync + Sized + 'static {
    /// Handles `request`, passing it on to `inner` (or not).
    fn call<S: Inner<B>, B: Send + 'static>(&self, inner: &mut S, request: http::Request<B>) -> Answer<S::Error>;

    fn into_layer(self) -> MiddlewareLayer<Self> {
        MiddlewareLayer(self)
    }
}

#[derive(Clone)]
pub struct MiddlewareLayer<M>(M);

impl<S, M: Clone> Layer<S> for MiddlewareLayer<M> {
    type Service = Wrapped<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Wrapped {
            inner,
            middleware: self.0.clone(),
        }
    }
}

/// The rest of the stack behind one middleware.
#[derive(Clone)]
pub struct Wrapped<S, M> {
    inner: S,
    middleware: M,
}

impl<S: Inner<B>, M: Middleware, B: Send + 'static> Service<http::Request<B>> for Wrapped<S, M> {
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.middleware.call(&mut self.inner, request)
    }
}
