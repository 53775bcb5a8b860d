//! What every accepted connection of this crate is held to: Nagle off, a cap on
//! how many are open in all and from one peer address, and deadlines for a
//! connection that stops talking, never finishes its opening bytes, or stops
//! reading what it is sent.
//!
//! Nagle's algorithm must be off everywhere: a gRPC unary response leaves as two
//! writes (headers and data, then trailers), and with Nagle on the second waits
//! for the peer's delayed ACK — about 40 ms on every sequential call.

use std::io;
use std::net::IpAddr;
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

use crate::shares::{Share, Shares};

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
    /// The peer must send its opening bytes (an HTTP/2 preface and the SETTINGS
    /// frame's header that follows it) within this long, however slowly the first
    /// of them came; after that, the protocol's own keepalive takes over.
    OpeningWithin(Duration),
    /// Closed after this long without a byte read or written.
    IdleFor(Duration),
}

/// Limits of a listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections open at once from one peer address, so one host cannot take every slot.
    pub max_per_peer: usize,
    pub silence: Silence,
    /// How long writes may wait for the peer to read before the connection
    /// fails. A peer that reads nothing leaves the server's answers (to its
    /// pings, say) nowhere to go, and a server that cannot write stops
    /// reading: without this the connection would hold its slot for good.
    pub stalled_writes: Duration,
}

/// The HTTP/2 client preface (24 bytes) and the 9-byte header of the SETTINGS frame after it.
pub const HTTP2_OPENING_BYTES: usize = 24 + 9;

/// A connection's place among its peer address's connections.
type PeerSlot = Share<IpAddr>;

/// The accepted connections of `listener`, each guarded by `limits`.
pub fn accept(listener: TcpListener, limits: ConnectionLimits) -> impl Stream<Item = io::Result<Guarded<TcpStream>>> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Shares::new(limits.max_per_peer as u64);
    futures::stream::unfold(
        (listener, permits, peers),
        move |(listener, permits, peers)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: say so, and keep accepting.
                    Err(error) => return Some((Err(error), (listener, permits, peers))),
                };
                let Some(slot) = peers.take(&peer.ip().to_canonical(), 1) else {
                    debug!(
                        max = limits.max_per_peer,
                        peer = %peer.ip(),
                        "connection limit of one peer reached; closing a new connection"
                    );
                    continue;
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    debug!(
                        max = limits.max_connections,
                        "connection limit reached; closing a new connection"
                    );
                    continue;
                };
                set_nodelay(&stream);
                let guarded = Guarded::new(stream, (permit, slot), limits.silence, limits.stalled_writes);
                return Some((Ok(guarded), (listener, permits, peers)));
            }
        },
    )
}

/// A deadline for a connection's opening bytes: it runs until they have all
/// arrived, however they trickle in.
pub struct Opening {
    remaining: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Opening {
    pub fn within(within: Duration) -> Self {
        Self {
            remaining: HTTP2_OPENING_BYTES,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }

    /// Notes a read of `read` bytes (none when it is pending); an error once
    /// the deadline passed before the opening bytes arrived.
    pub fn check(&mut self, read: usize, cx: &mut Context<'_>) -> io::Result<()> {
        self.remaining = self.remaining.saturating_sub(read);
        if self.remaining == 0 {
            self.deadline = None;
        }
        match self.deadline.as_mut().map(|deadline| deadline.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not open the connection in time",
            )),
            _ => Ok(()),
        }
    }
}

/// A connection that holds its slots under the connection caps until dropped,
/// and fails its reads once its peer has been silent (or slow to open) too long.
pub struct Guarded<S> {
    inner: S,
    _slots: (OwnedSemaphorePermit, PeerSlot),
    watch: Watch,
    stall: Stall,
}

/// A deadline for writes the peer does not read, running while they wait.
struct Stall {
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    /// `written`, or an error once writes have waited past the limit.
    fn check(&mut self, written: Poll<io::Result<usize>>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if written.is_ready() {
            self.deadline = None;
            return written;
        }
        let limit = self.limit;
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading what it is sent",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How a [`Guarded`] connection's silence is watched.
enum Watch {
    Opening(Opening),
    Idle { idle: Duration, deadline: Pin<Box<Sleep>> },
}

impl<S> Guarded<S> {
    fn new(inner: S, slots: (OwnedSemaphorePermit, PeerSlot), silence: Silence, stalled_writes: Duration) -> Self {
        let watch = match silence {
            Silence::OpeningWithin(within) => Watch::Opening(Opening::within(within)),
            Silence::IdleFor(idle) => Watch::Idle {
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
            },
        };
        Self {
            inner,
            _slots: slots,
            watch,
            stall: Stall {
                limit: stalled_writes,
                deadline: None,
            },
        }
    }

    /// Notes that bytes left: an idle connection is not idle.
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if let (Poll::Ready(Ok(1..)), Watch::Idle { idle, deadline }) = (written, &mut self.watch) {
            deadline.as_mut().reset(Instant::now() + *idle);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        let outcome = match &mut self.watch {
            Watch::Opening(opening) if !matches!(polled, Poll::Ready(Err(_))) => opening.check(read, cx),
            Watch::Idle { idle, deadline } => {
                if read > 0 {
                    deadline.as_mut().reset(Instant::now() + *idle);
                }
                match (&polled, deadline.as_mut().poll(cx)) {
                    (Poll::Pending, Poll::Ready(())) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer was silent for too long",
                    )),
                    _ => Ok(()),
                }
            }
            Watch::Opening(_) => Ok(()),
        };
        match outcome {
            Err(error) => Poll::Ready(Err(error)),
            Ok(()) => polled,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(&written);
        self.stall.check(written, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        self.stall.check(written, cx)
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
