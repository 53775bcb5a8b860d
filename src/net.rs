//! What every accepted connection of this crate is held to: Nagle off, a cap on
//! how many are open, and a deadline for a connection that stops talking.
//!
//! Nagle's algorithm must be off everywhere: a gRPC unary response leaves as two
//! writes (headers and data, then trailers), and with Nagle on the second waits
//! for the peer's delayed ACK — about 40 ms on every sequential call.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// Turns Nagle's algorithm off on an accepted or connected socket.
pub fn set_nodelay(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        // The connection still works, only slower; nothing for the caller to do.
        debug!(%error, "could not set TCP_NODELAY");
    }
}

/// When a connection that stops talking is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Silence {
    /// The peer must send its first bytes within this long (an HTTP/2 preface);
    /// after that, the protocol's own keepalive takes over.
    FirstBytesWithin(Duration),
    /// Closed after this long without a byte read or written.
    IdleFor(Duration),
}

/// Limits of a listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    pub silence: Silence,
}

/// The accepted connections of `listener`, each guarded by `limits`.
pub fn accept(listener: TcpListener, limits: ConnectionLimits) -> impl Stream<Item = io::Result<Guarded<TcpStream>>> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold((listener, permits), move |(listener, permits)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: say so, and keep accepting.
                Err(error) => return Some((Err(error), (listener, permits))),
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                debug!(
                    max = limits.max_connections,
                    "connection limit reached; closing a new connection"
                );
                continue;
            };
            set_nodelay(&stream);
            return Some((Ok(Guarded::new(stream, permit, limits.silence)), (listener, permits)));
        }
    })
}

/// A connection that holds its slot under the connection cap until dropped, and
/// fails its reads once its peer has been silent too long.
pub struct Guarded<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    silence: Silence,
    /// Disarmed once the first bytes arrive under [`Silence::FirstBytesWithin`].
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    fn new(inner: S, permit: OwnedSemaphorePermit, silence: Silence) -> Self {
        let within = match silence {
            Silence::FirstBytesWithin(within) | Silence::IdleFor(within) => within,
        };
        Self {
            inner,
            _permit: permit,
            silence,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }

    /// Notes that bytes moved.
    fn progressed(&mut self) {
        match self.silence {
            Silence::FirstBytesWithin(_) => self.deadline = None,
            Silence::IdleFor(idle) => {
                if let Some(deadline) = self.deadline.as_mut() {
                    deadline.as_mut().reset(Instant::now() + idle);
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match self.deadline.as_mut().map(|deadline| deadline.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer was silent for too long",
                ))),
                _ => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) && matches!(self.silence, Silence::IdleFor(_)) {
            self.progressed();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) && matches!(self.silence, Silence::IdleFor(_)) {
            self.progressed();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Guarded<TcpStream> {
    /// The address the connection comes from.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.peer_addr().ok()
    }
}

impl tonic::transport::server::Connected for Guarded<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
