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

/// Spawns `future` on the current runtime in no span: for work that outlives
/// the call that happens to start it, and must not keep that call's span open.
#[expect(clippy::disallowed_methods, reason = "deliberately outside the caller's span")]
pub fn spawn_detached<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

/// Spawns `future` on `runtime` inside the caller's current span.
pub fn spawn_on<F>(runtime: &tokio::runtime::Handle, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime.spawn(future.in_current_span())
}

/// Lowers the calling thread's CPU priority by `nice` steps (its nice value
/// goes up by as much, to 19 at most), so that it runs on what the threads
/// answering calls leave idle. Lowering one's own priority needs no privilege.
pub fn lower_thread_priority(nice: u8) -> std::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        // On Linux a thread id names one thread to setpriority, not its process.
        let this_thread = Some(rustix::thread::gettid());
        let now = rustix::process::getpriority_process(this_thread)?;
        rustix::process::setpriority_process(this_thread, (now + i32::from(nice)).min(19))?;
    }
    Ok(())
}

/// Puts the calling thread under `SCHED_IDLE`: a thread of any other policy
/// that wakes on its core takes the core from it at once, where a thread only
/// niced below it waits out what is left of its time slice. It still runs
/// whenever the others leave the core idle. Leaving `SCHED_IDLE` again would
/// need a privilege.
pub fn run_when_idle() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
        let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        // `Min` is the only priority SCHED_IDLE takes: 0.
        let set = thread_priority::unix::set_thread_priority_and_policy(
            thread_priority::unix::thread_native_id(),
            ThreadPriority::Min,
            policy,
        );
        // The nice value is set after the policy, and a thread niced higher may
        // not set it back to 0; the policy is what counts.
        let idle = || matches!(thread_priority::unix::thread_schedule_policy(), Ok(now) if now == policy);
        match set {
            Ok(()) => {}
            Err(_) if idle() => {}
            Err(thread_priority::Error::OS(code)) => return Err(std::io::Error::from_raw_os_error(code)),
            Err(other) => return Err(std::io::Error::other(format!("{other:?}"))),
        }
    }
    Ok(())
}
