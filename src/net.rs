//! The socket option every listener and client of this crate shares.
//!
//! Nagle's algorithm must be off everywhere: a gRPC unary response leaves as two
//! writes (headers and data, then trailers), and with Nagle on the second waits
//! for the peer's delayed ACK — about 40 ms on every sequential call.

use tokio::net::TcpStream;
use tracing::debug;

/// Turns Nagle's algorithm off on an accepted or connected socket.
pub fn set_nodelay(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        // The connection still works, only slower; nothing for the caller to do.
        debug!(%error, "could not set TCP_NODELAY");
    }
}
