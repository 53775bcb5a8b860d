//! The simulator's one way to start a task: inside the caller's span, so a
//! callback delivery's logs stay with the request that scheduled it.

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument as _;

#[expect(clippy::disallowed_methods, reason = "the one place that spawns bare")]
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_span())
}
