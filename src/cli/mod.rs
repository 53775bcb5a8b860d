//! The command line's commands, apart from parsing (`main.rs`): the client
//! commands, `health`, the signals `serve` stops on, and (with the default
//! `simulator` feature) `dev` and `simulator`.

mod client;
#[cfg(feature = "simulator")]
pub mod dev;
mod health;
pub mod signals;

pub use client::{
    Action, ClientArgs, EXIT_LOCAL, EXIT_RPC_BASE, EXIT_USAGE, KindArg, ListArgs, StateArg, SubmitArgs, UserCommand,
    run,
};
pub use health::{HealthArgs, health};

/// Whether `error` is a write to a reader that went away (`selfie-auth get x | head -1`),
/// which is not an error.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
}

/// A server address as a URL: `host:port` (as grpcurl takes it) or a URL.
fn server_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}
