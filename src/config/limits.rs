//! The limits the transports are built with. They live here,
//! beside the flags that set them, so `server` and `grpc` depend on `config`
//! and never the reverse.

use std::time::Duration;

/// Limits of the gRPC port.
#[derive(Clone, Copy, Debug)]
pub struct GrpcLimits {
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_peer: usize,
    /// Health `Watch` streams open at once (an orchestrator or mesh holds a few).
    pub max_health_watches: usize,
    /// HTTP/2 streams one connection may have open (advertised in SETTINGS).
    pub max_concurrent_streams: u32,
    /// A connection must send its HTTP/2 preface (and TLS handshake) within this long.
    pub preface_timeout: Duration,
    /// A request must arrive in full within this long.
    pub request_timeout: Duration,
    /// Bytes of requests arriving at once, by their declared sizes.
    pub request_memory_bytes: usize,
    /// Bytes one caller's requests may hold while arriving.
    pub caller_request_memory_bytes: usize,
}

/// HTTP/2 keepalive of the gRPC port.
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    /// How often an idle connection is pinged.
    pub interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub timeout: Duration,
}

/// Limits of the HTTP port's connections.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_peer: usize,
    /// Longest wait for a request's headers.
    pub header_timeout: Duration,
    /// A connection without a byte in either direction this long is closed.
    pub idle_timeout: Duration,
    /// Longest wait for a request's body.
    pub body_timeout: Duration,
}

/// How many calls may be in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admissions {
    /// Submissions and enrolments in flight at once.
    pub submissions: usize,
    /// Every other call in flight at once.
    pub reads: usize,
    /// Calls one caller may have in flight in each pool.
    pub per_caller: usize,
}
