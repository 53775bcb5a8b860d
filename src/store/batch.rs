//! Group commit. Every durable write waits for a disk flush; one transaction
//! per write caps a store at one flush per write, and on SQLite concurrent
//! writers also take turns through the busy handler's sleeps. Writes therefore
//! go to one writer per store (a task, or a thread of its own for a driver that
//! blocks), which commits whatever has queued up since its last commit in one
//! transaction and answers each writer only after that commit: still durable
//! before acknowledged, with one flush for many writes. A writer on a thread
//! also waits a moment for more while writes keep coming together.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::jobs::model::{EventKind, Job};
use crate::jobs::ports::{Created, Saved, StoreError};

/// Writes committed together at most: bounds one transaction's length.
const MAX_BATCH: usize = 128;

/// Writes waiting for the writer; writers beyond this wait to queue.
const QUEUE: usize = 1024;

/// One write, as [`JobStore::create`](crate::jobs::ports::JobStore::create) and
/// [`JobStore::save`](crate::jobs::ports::JobStore::save) ask for it.
pub(super) enum Write {
    Create(Job),
    Save { job: Job, event: Option<EventKind> },
}

/// What a [`Write`] did.
pub(super) enum Written {
    Created(Created),
    /// The outcome, and the job as written (its version and sequence advanced).
    Saved(Saved, Job),
}

/// A store's way to run writes in one transaction.
#[async_trait::async_trait]
pub(super) trait Transact: Send + Sync + 'static {
    /// Runs `writes` in order in one transaction and commits it: all or none.
    async fn transact(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError>;
}

/// The same, for a store whose driver blocks: it runs on a thread of its own.
pub(super) trait TransactBlocking: Send + 'static {
    /// Runs `writes` in order in one transaction and commits it: all or none.
    fn transact(&mut self, writes: &[Write]) -> Result<Vec<Written>, StoreError>;
}

type Reply = oneshot::Sender<Result<Written, StoreError>>;

struct Queued {
    write: Write,
    reply: Reply,
}

/// The queue in front of a store's writer; the writer ends with the queue.
pub(super) struct WriteQueue {
    sender: mpsc::Sender<Queued>,
    commits: Arc<Commits>,
}

/// What a store's writer has committed since it started: over the commits,
/// the writes tell how many shared each one.
#[derive(Debug, Default)]
pub struct Commits {
    commits: AtomicU64,
    writes: AtomicU64,
}

impl Commits {
    fn committed(&self, writes: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
    }

    /// `(commits, writes)` so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

impl WriteQueue {
    /// Commits batches in a task of the runtime.
    pub(super) fn start(target: impl Transact) -> Self {
        let (sender, mut receiver) = mpsc::channel(QUEUE);
        let commits = Arc::new(Commits::default());
        let counted = commits.clone();
        crate::task::spawn(async move {
            let mut queued = Vec::with_capacity(MAX_BATCH);
            while receiver.recv_many(&mut queued, MAX_BATCH).await > 0 {
                let (writes, replies) = take_batch(&mut queued);
                if writes.is_empty() {
                    continue;
                }
                let outcome = target.transact(&writes).await;
                for (write, reply) in answer(&counted, writes, replies, outcome) {
                    let alone = target.transact(std::slice::from_ref(&write)).await;
                    let _ = reply.send(only(&counted, alone));
                }
            }
        });
        Self { sender, commits }
    }

    /// Commits batches on a thread named `name` that waits for them itself, so
    /// a write costs one hand-over to that thread and one answer back.
    ///
    /// While writes keep arriving together, it waits `linger` after the first
    /// of a batch for others to join it: a commit costs more than the writes
    /// in it. With this schema's statements under `FULL`, a commit per write
    /// took 0.28-0.36 ms of CPU a submission and a commit per four writes
    /// 0.12-0.14 ms (`examples/sqlite_commit_cost.py`), yet commits end quickly
    /// enough that under load each found few writes queued. A write after a
    /// batch of one is committed at once, so a caller writing alone never waits.
    ///
    /// The thread runs under `SCHED_IDLE` ([`crate::task::run_when_idle`]).
    /// At its own priority, a commit's work (0.2-0.4 ms at once under load)
    /// held the core while the thread serving connections waited its turn:
    /// with a submission flood beside it, GetJob's p99 was 0.66-0.73 ms where
    /// it is 0.38-0.41 under `SCHED_IDLE` (`--only hostile`, service on its own
    /// core, three runs each). A flood of other work cannot hold writes back
    /// for long: the writes waiting meanwhile go together into the next commit.
    pub(super) fn start_on_thread(
        name: &str,
        mut target: impl TransactBlocking,
        linger: Duration,
    ) -> std::io::Result<Self> {
        let (sender, mut receiver) = mpsc::channel(QUEUE);
        let commits = Arc::new(Commits::default());
        let counted = commits.clone();
        std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            if let Err(error) = crate::task::run_when_idle() {
                tracing::warn!(error = %error, "the store's writer runs at normal priority");
            }
            let mut queued = Vec::with_capacity(MAX_BATCH);
            let mut together = false;
            while receiver.blocking_recv_many(&mut queued, MAX_BATCH) > 0 {
                if together && queued.len() < MAX_BATCH {
                    std::thread::sleep(linger);
                    while queued.len() < MAX_BATCH {
                        let Ok(more) = receiver.try_recv() else { break };
                        queued.push(more);
                    }
                }
                // More are likely on their way while writes keep coming together;
                // a lone write after one alone is committed at once.
                together = queued.len() > 1;
                let (writes, replies) = take_batch(&mut queued);
                if writes.is_empty() {
                    continue;
                }
                let outcome = target.transact(&writes);
                for (write, reply) in answer(&counted, writes, replies, outcome) {
                    let alone = target.transact(std::slice::from_ref(&write));
                    let _ = reply.send(only(&counted, alone));
                }
            }
        })?;
        Ok(Self { sender, commits })
    }

    /// What the writer has committed so far.
    pub(super) fn commits(&self) -> Arc<Commits> {
        self.commits.clone()
    }

    /// Queues `write` and waits for its commit. A caller that stops waiting
    /// before its batch begins takes the write back, as dropping a transaction
    /// would; once the batch runs, the write commits or fails with it.
    pub(super) async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the store's writer has stopped".into());
        self.sender.send(Queued { write, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The writes queued, less those whose caller stopped waiting.
fn take_batch(queued: &mut Vec<Queued>) -> (Vec<Write>, Vec<Reply>) {
    queued
        .drain(..)
        .filter(|q| !q.reply.is_closed())
        .map(|q| (q.write, q.reply))
        .unzip()
}

/// Answers every write of a batch with its outcome, and hands back the writes
/// that must go again one at a time: one bad write must not fail the others.
fn answer(
    commits: &Commits,
    writes: Vec<Write>,
    replies: Vec<Reply>,
    outcome: Result<Vec<Written>, StoreError>,
) -> Vec<(Write, Reply)> {
    match outcome {
        Ok(written) => {
            commits.committed(written.len());
            for (reply, written) in replies.into_iter().zip(written) {
                let _ = reply.send(Ok(written));
            }
            Vec::new()
        }
        Err(error) if writes.len() == 1 => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
            Vec::new()
        }
        Err(_) => writes.into_iter().zip(replies).collect(),
    }
}

/// The one write of a batch of one.
fn only(commits: &Commits, outcome: Result<Vec<Written>, StoreError>) -> Result<Written, StoreError> {
    let mut written = outcome?;
    commits.committed(written.len());
    written
        .pop()
        .ok_or_else(|| StoreError::Unavailable("a write went missing from its batch".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// Records the batches it is given; a job named "bad" fails its transaction.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<usize>>,
        running: AtomicUsize,
    }

    impl Recorder {
        fn begin(&self) {
            assert_eq!(
                self.running.fetch_add(1, Ordering::SeqCst),
                0,
                "one transaction at a time"
            );
        }

        fn end(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.batches.lock().expect("not poisoned").push(writes.len());
            writes
                .iter()
                .map(|write| match write {
                    Write::Create(job) if job.job_id == "bad" => Err(StoreError::Corrupt("refused".into())),
                    Write::Create(job) => Ok(Written::Created(Created::Existing(job.clone()))),
                    Write::Save { job, .. } => Ok(Written::Saved(Saved::Conflict, job.clone())),
                })
                .collect()
        }
    }

    #[async_trait::async_trait]
    impl Transact for Arc<Recorder> {
        async fn transact(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
            self.begin();
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.end(writes)
        }
    }

    /// The same recorder, as a store whose driver blocks.
    struct Blocking(Arc<Recorder>);

    impl TransactBlocking for Blocking {
        fn transact(&mut self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
            self.0.begin();
            std::thread::sleep(Duration::from_millis(5));
            self.0.end(writes)
        }
    }

    /// The same recorder committing at once, as a fast disk would.
    struct Quick(Arc<Recorder>);

    impl TransactBlocking for Quick {
        fn transact(&mut self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
            self.0.begin();
            self.0.end(writes)
        }
    }

    /// A queue on a thread committing at once to a recorder, lingering `linger`.
    fn quick_queue(linger: Duration) -> (Arc<WriteQueue>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let queue = WriteQueue::start_on_thread("test-writer", Quick(recorder.clone()), linger).expect("thread");
        (Arc::new(queue), recorder)
    }

    /// `writers` callers each writing `rounds` times, one write after another.
    async fn write_in_rounds(queue: &Arc<WriteQueue>, writers: usize, rounds: usize) {
        let writers: Vec<_> = (0..writers)
            .map(|writer| {
                let queue = queue.clone();
                crate::task::spawn(async move {
                    for round in 0..rounds {
                        let job = Job::for_test(&format!("w{writer}-{round}"), "u");
                        assert!(queue.write(Write::Create(job)).await.is_ok(), "write answered");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer ran");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_keep_coming_together_wait_for_each_other() {
        let (queue, recorder) = quick_queue(Duration::from_millis(50));
        write_in_rounds(&queue, 8, 20).await;
        let batches = recorder.batches.lock().expect("not poisoned").clone();
        assert_eq!(batches.iter().sum::<usize>(), 160);
        assert_eq!(queue.commits().totals(), (batches.len() as u64, 160), "as counted");
        // Each writer's next write arrives within the linger, so once two have
        // come together a round of eight commits as one batch. Committed as
        // they came, the same writes took 52 commits.
        assert!(
            batches.len() <= 30,
            "160 writes from 8 writers took {} commits: {batches:?}",
            batches.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_alone_is_committed_without_lingering() {
        // A linger no test could sit through: one taken would fail the test's timeout.
        let (queue, recorder) = quick_queue(Duration::from_hours(1));
        tokio::time::timeout(Duration::from_secs(30), write_in_rounds(&queue, 1, 200))
            .await
            .expect("a lone writer's writes committed without waiting for others");
        assert_eq!(*recorder.batches.lock().expect("not poisoned"), vec![1; 200]);
    }

    /// A queue in a task and one on a thread, each with the recorder it commits to.
    fn queues() -> [(&'static str, Arc<WriteQueue>, Arc<Recorder>); 2] {
        let in_task = Arc::new(Recorder::default());
        let on_thread = Arc::new(Recorder::default());
        [
            ("in a task", Arc::new(WriteQueue::start(in_task.clone())), in_task),
            (
                "on a thread",
                Arc::new(
                    WriteQueue::start_on_thread("test-writer", Blocking(on_thread.clone()), Duration::ZERO)
                        .expect("thread"),
                ),
                on_thread,
            ),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_waiting_together_commit_together() {
        for (name, queue, recorder) in queues() {
            let writers: Vec<_> = (0..40)
                .map(|index| {
                    let queue = queue.clone();
                    crate::task::spawn(async move {
                        let job = Job::for_test(&format!("j{index}"), "u");
                        match queue.write(Write::Create(job)).await {
                            Ok(Written::Created(Created::Existing(job))) => job.job_id,
                            _ => panic!("each writer gets its own answer"),
                        }
                    })
                })
                .collect();
            for (index, writer) in writers.into_iter().enumerate() {
                assert_eq!(writer.await.expect("writer ran"), format!("j{index}"), "{name}");
            }
            let batches = recorder.batches.lock().expect("not poisoned").clone();
            assert_eq!(batches.iter().sum::<usize>(), 40, "{name}");
            assert_eq!(
                queue.commits().totals(),
                (batches.len() as u64, 40),
                "{name}: as counted"
            );
            assert!(
                batches.len() < 10,
                "{name}: 40 writes queued together took {} commits",
                batches.len()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone() {
        for (name, queue, _) in queues() {
            let writers: Vec<_> = ["a", "bad", "c"]
                .iter()
                .map(|job_id| {
                    let queue = queue.clone();
                    let job = Job::for_test(job_id, "u");
                    crate::task::spawn(async move { queue.write(Write::Create(job)).await.is_ok() })
                })
                .collect();
            let mut outcomes = Vec::new();
            for writer in writers {
                outcomes.push(writer.await.expect("writer ran"));
            }
            assert_eq!(outcomes, [true, false, true], "{name}");
        }
    }

    #[tokio::test]
    async fn a_writer_on_a_thread_ends_with_its_queue() {
        let recorder = Arc::new(Recorder::default());
        let queue =
            WriteQueue::start_on_thread("test-writer", Blocking(recorder.clone()), Duration::ZERO).expect("thread");
        assert!(queue.write(Write::Create(Job::for_test("a", "u"))).await.is_ok());
        // The thread holds the only other reference to the recorder.
        drop(queue);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&recorder) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer's thread outlived its queue"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A store that keeps the scheduling policy of the thread committing to it.
    #[cfg(target_os = "linux")]
    struct PolicyOfWriter(Arc<std::sync::Mutex<Option<thread_priority::ThreadSchedulePolicy>>>);

    #[cfg(target_os = "linux")]
    impl TransactBlocking for PolicyOfWriter {
        fn transact(&mut self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
            *self.0.lock().expect("not poisoned") = thread_priority::unix::thread_schedule_policy().ok();
            Quick(Arc::default()).transact(writes)
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_runs_under_sched_idle() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let seen = Arc::default();
        let queue = WriteQueue::start_on_thread("idle-writer", PolicyOfWriter(Arc::clone(&seen)), Duration::ZERO)
            .expect("thread");
        assert!(
            queue.write(Write::Create(Job::for_test("first", "u"))).await.is_ok(),
            "write answered"
        );
        assert_eq!(
            *seen.lock().expect("not poisoned"),
            Some(ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_commit_while_other_threads_keep_every_core_busy() {
        let (queue, recorder) = quick_queue(Duration::from_micros(500));
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        // Normal-priority threads that never wait, one a core (and bounded,
        // should the writes never finish).
        let spinners: Vec<_> = (0..crate::fair::cores())
            .map(|_| {
                let busy = busy.clone();
                std::thread::spawn(move || {
                    let started = std::time::Instant::now();
                    while busy.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(1) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let written = tokio::time::timeout(Duration::from_secs(30), write_in_rounds(&queue, 16, 10)).await;
        busy.store(false, Ordering::Relaxed);
        for spinner in spinners {
            spinner.join().expect("spinner ended");
        }
        written.expect("writes committed while every core was busy");
        let batches = recorder.batches.lock().expect("not poisoned").clone();
        assert_eq!(batches.iter().sum::<usize>(), 160);
    }
}
