//! The one way the service starts a task.
//!
//! A task spawned bare loses the caller's span, so its logs and traces show up
//! detached from the request or component that started it. `clippy.toml`
//! disallows `tokio::spawn` everywhere else.

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument as _;

/// Spawns `future` on the current runtime inside the caller's current span.
#[expect(clippy::disallowed_methods, reason = "the one place that spawns bare")]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_span())
}
