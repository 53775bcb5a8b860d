//! A runtime whose threads run below the ones answering calls.
//!
//! The scheduler of a runtime shares its threads by task, not by caller: on
//! one runtime, a flood of submissions puts hundreds of tasks (bodies
//! arriving, Smile ID calls) in the queue ahead of every read, health check
//! and callback. Work moved here has threads of its own at a lower CPU
//! priority, so the operating system runs what answers calls first and gives
//! this work what is left.

use std::cell::RefCell;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The runtime, started when work first arrives and stopped once it has had
/// none for a while: a thread's allocator keeps the memory its work used
/// until the thread allocates again or ends, so idle threads would hold a
/// burst's memory for good (60 s after a named caller's burst of 500, the
/// process held 43.2 MiB; with the threads ended, 30.1; `--only submit`). It
/// stops, with whatever it was running, once dropped.
pub struct BelowCalls {
    name: String,
    nice: u8,
    idle_for: Duration,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    threads: Threads,
    /// Futures spawned and not yet finished or dropped.
    running: usize,
    idle_since: Option<Instant>,
}

#[derive(Default)]
enum Threads {
    /// Not started yet, or stopped when idle: the next work starts them.
    #[default]
    Stopped,
    Started(Runtime),
    /// They could not start; work runs on the caller's runtime.
    Unavailable,
}

impl State {
    /// The runtime, if started, leaving its threads stopped.
    fn stop(&mut self) -> Option<Runtime> {
        match std::mem::take(&mut self.threads) {
            Threads::Started(runtime) => Some(runtime),
            other => {
                self.threads = other;
                None
            }
        }
    }
}

impl BelowCalls {
    /// One worker per core this process may use, named `name`, each `nice`
    /// steps below normal CPU priority, stopped after `idle_for` with no work.
    /// If it cannot start, work runs on the caller's runtime.
    pub fn per_core(name: &str, nice: u8, idle_for: Duration) -> Self {
        Self {
            name: name.to_owned(),
            nice,
            idle_for,
            state: Arc::default(),
        }
    }

    /// Spawns `future` on this runtime, inside the caller's current span.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = {
            let mut state = lock(&self.state);
            if matches!(state.threads, Threads::Stopped) {
                state.threads = match self.start() {
                    Some(runtime) => {
                        // Started by whichever call comes first, but none of its own.
                        crate::task::spawn_detached(retire_when_idle(Arc::downgrade(&self.state), self.idle_for));
                        Threads::Started(runtime)
                    }
                    None => Threads::Unavailable,
                };
            }
            match &state.threads {
                Threads::Started(runtime) => {
                    let handle = runtime.handle().clone();
                    state.running += 1;
                    Some(handle)
                }
                Threads::Stopped | Threads::Unavailable => None,
            }
        };
        match handle {
            Some(handle) => {
                let running = Running(self.state.clone());
                crate::task::spawn_on(&handle, async move {
                    let _running = running;
                    future.await
                })
            }
            None => crate::task::spawn(future),
        }
    }

    fn start(&self) -> Option<Runtime> {
        let nice = self.nice;
        let state = Arc::downgrade(&self.state);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(super::cores())
            .thread_name(&self.name)
            .enable_all()
            .on_thread_start(move || {
                RUNS_ON.with_borrow_mut(|runs_on| *runs_on = Some(state.clone()));
                if let Err(error) = crate::task::lower_thread_priority(nice) {
                    tracing::warn!(error = %error, "could not lower a runtime thread's priority");
                }
            })
            .build()
            .inspect_err(|error| tracing::error!(error = %error, runtime = %self.name, "could not start a runtime"))
            .ok()
    }
}

thread_local! {
    /// The runtime a thread of a `BelowCalls` belongs to.
    static RUNS_ON: RefCell<Option<Weak<Mutex<State>>>> = const { RefCell::new(None) };
}

/// Keeps the threads the caller runs on from ending while held, if they are a
/// [`BelowCalls`]'s. Work spawned from there outlives the call that spawned
/// it (a submission still retrying Smile ID after its caller gave up), and
/// ending the threads would drop it unfinished.
pub struct KeepThreads {
    _held: Option<Running>,
}

impl KeepThreads {
    pub fn here() -> Self {
        let state = RUNS_ON.with_borrow(|runs_on| runs_on.as_ref().and_then(Weak::upgrade));
        Self {
            _held: state.map(|state| {
                lock(&state).running += 1;
                Running(state)
            }),
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The counts stay consistent whatever panicked while the lock was held.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a spawned future as running until it finishes or is dropped.
struct Running(Arc<Mutex<State>>);

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.running -= 1;
        if state.running == 0 {
            state.idle_since = Some(Instant::now());
        }
    }
}

/// Stops the runtime once it has run nothing for `idle_for`; ends with it,
/// or when its `BelowCalls` is gone.
async fn retire_when_idle(state: Weak<Mutex<State>>, idle_for: Duration) {
    loop {
        tokio::time::sleep(idle_for / 4).await;
        let Some(state) = state.upgrade() else { return };
        let retired = {
            let mut state = lock(&state);
            let idle = state.running == 0 && state.idle_since.is_some_and(|since| since.elapsed() >= idle_for);
            if idle { state.stop() } else { None }
        };
        if let Some(runtime) = retired {
            runtime.shutdown_background();
            return;
        }
    }
}

impl Drop for BelowCalls {
    fn drop(&mut self) {
        // Dropped from async code too (a test's server), where a blocking drop
        // panics; unlocked first, as the futures it drops count themselves out.
        let runtime = lock(&self.state).stop();
        if let Some(runtime) = runtime {
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
        let below = BelowCalls::per_core("test-below", 10, Duration::from_mins(1));
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

    /// How many of this process's threads are named `name`.
    #[cfg(target_os = "linux")]
    fn threads_named(name: &str) -> usize {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        tasks
            .flatten()
            .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name))
            .count()
    }

    /// Whether `name`'s threads have all ended within five seconds.
    #[cfg(target_os = "linux")]
    async fn threads_end(name: &str) -> bool {
        for _ in 0..100 {
            if threads_named(name) == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn its_threads_end_once_idle_and_start_again_for_more_work() {
        const NAME: &str = "test-below-idle";
        let below = BelowCalls::per_core(NAME, 0, Duration::from_millis(200));
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let busy = below.spawn(async move { finished.await.is_ok() });
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(threads_named(NAME) > 0, "its threads stay while they have work");
        finish.send(()).expect("the work waits");
        assert!(busy.await.expect("ran"));
        assert!(threads_end(NAME).await, "its threads end once idle");

        let name = below
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some(NAME), "it starts again for more work");
        // Work dropped unfinished counts out too.
        below.spawn(std::future::pending::<()>()).abort();
        assert!(threads_end(NAME).await, "its threads end once idle again");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn work_it_spawned_keeps_its_threads_while_held() {
        const NAME: &str = "test-below-keep";
        let below = BelowCalls::per_core(NAME, 0, Duration::from_millis(200));
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let (done, outlived) = tokio::sync::oneshot::channel::<bool>();
        // The call ends at once; the work it spawned goes on, holding the threads.
        below
            .spawn(async move {
                let keep = KeepThreads::here();
                drop(crate::task::spawn(async move {
                    let _keep = keep;
                    let _ = done.send(finished.await.is_ok());
                }));
            })
            .await
            .expect("ran");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(threads_named(NAME) > 0, "its threads ended under work still running");
        finish.send(()).expect("the work waits");
        assert!(outlived.await.expect("the work finished"));
        assert!(threads_end(NAME).await, "its threads end once the work is done");
    }

    #[tokio::test]
    async fn dropping_it_inside_a_runtime_stops_its_work() {
        let below = BelowCalls::per_core("test-below-drop", 0, Duration::from_mins(1));
        let forever = below.spawn(std::future::pending::<()>());
        drop(below);
        let stopped = forever.await.expect_err("the work stopped with the runtime");
        assert!(stopped.is_cancelled());
    }
}
