//! A few threads for CPU-heavy work, taken from each caller's queue in turn.
//!
//! Work that burns CPU for a caller (checking a submission's images,
//! fingerprinting them) is not left to the runtime's blocking pool, which
//! starts a thread per task: under a flood of submissions dozens of such
//! threads would share the cores with the runtime's own, and every call —
//! reads, streams, Smile ID's callbacks — would wait for a turn on a CPU. Here
//! the work has as many threads as the process has cores, and they serve
//! callers round robin: a caller with many submissions in flight waits behind
//! its own work, while another's waits at most one piece of work per thread.
//! The threads may run at a lower CPU priority than the runtime's, so that
//! calls waiting on the runtime (reads, health checks, callbacks) go first.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::turns::Turns;

type Work = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queues {
    turns: Turns<Work>,
    closed: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    waiting: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A thread's life: the next work in turn, until the lane is closed and empty.
    fn serve(&self) {
        loop {
            let work = {
                let mut queues = self.lock();
                loop {
                    if let Some(work) = queues.turns.next() {
                        break work;
                    }
                    if queues.closed {
                        return;
                    }
                    queues = self
                        .waiting
                        .wait(queues)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            // A panic ends only that work: its caller is told, the thread goes on.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(work));
        }
    }
}

/// The lane; its threads end once it is dropped and its work is done.
pub struct FairLane {
    shared: Arc<Shared>,
    threads: usize,
}

/// The work did not finish: its thread could not run it, or it panicked.
#[derive(Debug, thiserror::Error)]
#[error("the work was interrupted")]
pub struct Interrupted;

impl FairLane {
    /// A lane of `threads` threads named `name-N`, each `nice` steps below
    /// normal CPU priority. Fewer start if the system refuses some; with none,
    /// work runs on the runtime's blocking pool.
    pub fn new(name: &str, threads: usize, nice: u8) -> Self {
        let shared = Arc::new(Shared {
            queues: Mutex::default(),
            waiting: Condvar::new(),
        });
        let started = (0..threads)
            .filter(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{index}"))
                    .spawn(move || {
                        if let Err(error) = crate::task::lower_thread_priority(nice) {
                            tracing::warn!(error = %error, "could not lower a lane thread's priority");
                        }
                        shared.serve();
                    })
                    .inspect_err(|error| tracing::error!(error = %error, lane = name, "could not start a lane thread"))
                    .is_ok()
            })
            .count();
        Self {
            shared,
            threads: started,
        }
    }

    /// One thread per core this process may use (its cgroup's quota included).
    pub fn per_core(name: &str, nice: u8) -> Self {
        Self::new(name, super::cores(), nice)
    }

    /// Runs `work` in `caller`'s turn and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        caller: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Interrupted> {
        if self.threads == 0 {
            return tokio::task::spawn_blocking(work).await.map_err(|_| Interrupted);
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move || {
            let _ = done.send(work());
        });
        self.shared.lock().turns.push(caller, work);
        self.shared.waiting.notify_one();
        result.await.map_err(|_| Interrupted)
    }
}

impl Drop for FairLane {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.waiting.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Work that holds its thread until `gate` opens.
    fn blocked(gate: &Arc<AtomicBool>) -> impl FnOnce() + Send + 'static {
        let gate = gate.clone();
        move || {
            while !gate.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[tokio::test]
    async fn a_caller_with_one_piece_of_work_waits_behind_one_of_a_greedy_callers() {
        let lane = Arc::new(FairLane::new("test-lane", 1, 0));
        let gate = Arc::new(AtomicBool::new(false));
        let order = Arc::new(Mutex::new(Vec::new()));
        // The thread is busy; the greedy caller queues ten more before the honest one queues one.
        let busy = crate::task::spawn({
            let lane = lane.clone();
            let work = blocked(&gate);
            async move { lane.run("greedy", work).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut waiting = Vec::new();
        for (caller, index) in std::iter::repeat_n("greedy", 10).zip(0..).chain([("honest", 0)]) {
            let (lane, order) = (lane.clone(), order.clone());
            waiting.push(crate::task::spawn(async move {
                lane.run(caller, move || order.lock().expect("order").push((caller, index)))
                    .await
            }));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gate.store(true, Ordering::Release);
        busy.await.expect("task").expect("ran");
        for task in waiting {
            task.await.expect("task").expect("ran");
        }
        let order = order.lock().expect("order").clone();
        assert_eq!(order.len(), 11);
        let honest_turn = order.iter().position(|(caller, _)| *caller == "honest");
        assert_eq!(honest_turn, Some(1), "the honest caller goes second: {order:?}");
        let greedy: Vec<_> = order
            .iter()
            .filter(|(caller, _)| *caller == "greedy")
            .map(|(_, index)| *index)
            .collect();
        assert_eq!(
            greedy,
            (0..10).collect::<Vec<_>>(),
            "a caller's own work keeps its order"
        );
    }

    #[tokio::test]
    async fn a_panic_is_an_interruption_and_the_thread_goes_on() {
        let lane = FairLane::new("test-lane", 1, 0);
        let failed = lane.run("a", || -> u32 { panic!("broken work") }).await;
        assert!(failed.is_err());
        assert_eq!(lane.run("a", || 7).await.expect("the thread still serves"), 7);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn its_threads_run_below_normal_priority() {
        let nice_of_this_thread = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let before = nice_of_this_thread().expect("getpriority");
        let lane = FairLane::new("test-lane-nice", 1, 10);
        let in_lane = lane
            .run("a", nice_of_this_thread)
            .await
            .expect("ran")
            .expect("getpriority");
        assert_eq!(in_lane, (before + 10).min(19));
        assert_eq!(
            nice_of_this_thread().expect("getpriority"),
            before,
            "the caller's thread keeps its priority"
        );
    }

    #[tokio::test]
    async fn its_threads_end_with_it() {
        let lane = FairLane::new("test-lane-end", 2, 0);
        assert_eq!(lane.run("a", || 1).await.expect("ran"), 1);
        let shared = Arc::downgrade(&lane.shared);
        drop(lane);
        for _ in 0..200 {
            if shared.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the lane's threads are still running");
    }
}
