//! A runtime whose threads run below the ones answering calls.
//!
//! The scheduler of a runtime shares its threads by task, not by caller: on
//! one runtime, a flood of submissions puts hundreds of tasks (bodies
//! arriving, Smile ID calls) in the queue ahead of every read, health check
//! and callback. Work moved here has threads of its own at a lower CPU
//! priority, so the operating system runs what answers calls first and gives
//! this work what is left.

use std::future::Future;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The runtime; it stops, with whatever it was running, once dropped.
pub struct BelowCalls {
    runtime: Option<Runtime>,
}

impl BelowCalls {
    /// One worker per core this process may use, named `name`, each `nice`
    /// steps below normal CPU priority. If it cannot start, work runs on the
    /// caller's runtime.
    pub fn per_core(name: &str, nice: u8) -> Self {
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(super::cores())
            .thread_name(name)
            .enable_all()
            .on_thread_start(move || {
                if let Err(error) = crate::task::lower_thread_priority(nice) {
                    tracing::warn!(error = %error, "could not lower a runtime thread's priority");
                }
            })
            .build();
        let runtime = built
            .inspect_err(|error| tracing::error!(error = %error, runtime = name, "could not start a runtime"))
            .ok();
        Self { runtime }
    }

    /// Spawns `future` on this runtime, inside the caller's current span.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => crate::task::spawn_on(runtime.handle(), future),
            None => crate::task::spawn(future),
        }
    }
}

impl Drop for BelowCalls {
    fn drop(&mut self) {
        // Dropped from async code too (a test's server), where a blocking drop panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn work_runs_on_its_threads_below_the_callers() {
        let nice_of_this_thread = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let below = BelowCalls::per_core("test-below", 10);
        let here = nice_of_this_thread().expect("getpriority");
        let (name, nice) = below
            .spawn(async move { (std::thread::current().name().map(str::to_owned), nice_of_this_thread()) })
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some("test-below"));
        assert_eq!(nice.expect("getpriority"), (here + 10).min(19));
        assert_eq!(
            nice_of_this_thread().expect("getpriority"),
            here,
            "the caller's thread keeps its priority"
        );
    }

    #[tokio::test]
    async fn dropping_it_inside_a_runtime_stops_its_work() {
        let below = BelowCalls::per_core("test-below-drop", 0);
        let forever = below.spawn(std::future::pending::<()>());
        drop(below);
        let stopped = forever.await.expect_err("the work stopped with the runtime");
        assert!(stopped.is_cancelled());
    }
}
