//! Submissions are answered away from the threads that serve connections and
//! reads: on a runtime of their own, at a lower CPU priority. A runtime shares
//! its threads by task, whoever the task serves; on one runtime, a flood of
//! submissions (bodies being read, images checked, jobs sent to Smile ID)
//! puts hundreds of tasks in the queue ahead of every read, health check and
//! callback. Apart, the flood waits behind them for the CPU instead.

use std::sync::Arc;

use super::middleware::{Answer, Inner, Middleware};
use super::request_limits::is_submission;
use super::status::to_status;
use crate::fair::BelowCalls;
use crate::jobs::JobError;

/// How far below the connections' threads submissions are answered.
const SUBMISSIONS_NICE: u8 = 10;

#[derive(Clone)]
pub struct SubmissionsApart {
    runtime: Arc<BelowCalls>,
}

impl SubmissionsApart {
    /// Starts the runtime's threads.
    pub fn start() -> Self {
        Self {
            runtime: Arc::new(BelowCalls::per_core("submissions", SUBMISSIONS_NICE)),
        }
    }
}

impl Middleware for SubmissionsApart {
    fn call<S: Inner<B>, B: Send + 'static>(&self, inner: &mut S, request: http::Request<B>) -> Answer<S::Error> {
        if !is_submission(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let (call, runtime) = (inner.call(request), self.runtime.clone());
        Box::pin(async move {
            // Spawned once polled, inside the call's span, so its trace goes with it.
            let mut task = AbortOnDrop(runtime.spawn(call));
            (&mut task.0).await.unwrap_or_else(|_| {
                let error = JobError::Internal("a submission's task ended abnormally".into());
                Ok(to_status(&error).into_http())
            })
        })
    }
}

/// A caller that goes away takes its call's task with it, as it would on the
/// runtime serving its connection. (What a submission sends to Smile ID runs
/// in a task of its own, which goes on.)
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
