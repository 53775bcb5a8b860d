//! Group commit. Every durable write waits for a disk flush; one transaction
//! per write caps a store at one flush per write, and on SQLite concurrent
//! writers also take turns through the busy handler's sleeps. Writes therefore
//! go to one writer task per store, which commits whatever has queued up since
//! its last commit in one transaction and answers each writer only after that
//! commit: still durable before acknowledged, with one flush for many writes.

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

struct Queued {
    write: Write,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// The queue in front of a store's writer task; the task ends with the queue.
pub(super) struct WriteQueue {
    sender: mpsc::Sender<Queued>,
}

impl WriteQueue {
    pub(super) fn start(target: impl Transact) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        crate::task::spawn(commit_batches(target, receiver));
        Self { sender }
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

async fn commit_batches(target: impl Transact, mut receiver: mpsc::Receiver<Queued>) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut queued, MAX_BATCH).await > 0 {
        queued.retain(|q| !q.reply.is_closed());
        if queued.is_empty() {
            continue;
        }
        let (writes, replies): (Vec<Write>, Vec<_>) = queued.drain(..).map(|q| (q.write, q.reply)).unzip();
        match target.transact(&writes).await {
            Ok(written) => {
                for (reply, written) in replies.into_iter().zip(written) {
                    let _ = reply.send(Ok(written));
                }
            }
            Err(error) if writes.len() == 1 => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            // One bad write must not fail the others: each goes again alone,
            // and gets its own answer.
            Err(_) => {
                for (write, reply) in writes.into_iter().zip(replies) {
                    let alone = target
                        .transact(std::slice::from_ref(&write))
                        .await
                        .and_then(|mut written| {
                            written
                                .pop()
                                .ok_or_else(|| StoreError::Unavailable("a write went missing from its batch".into()))
                        });
                    let _ = reply.send(alone);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Records the batches it is given; a job named "bad" fails its transaction.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<usize>>,
        running: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Transact for std::sync::Arc<Recorder> {
        async fn transact(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
            assert_eq!(
                self.running.fetch_add(1, Ordering::SeqCst),
                0,
                "one transaction at a time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
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

    #[tokio::test]
    async fn writes_waiting_together_commit_together() {
        let recorder = std::sync::Arc::new(Recorder::default());
        let queue = std::sync::Arc::new(WriteQueue::start(recorder.clone()));
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
            assert_eq!(writer.await.expect("writer ran"), format!("j{index}"));
        }
        let batches = recorder.batches.lock().expect("not poisoned").clone();
        assert_eq!(batches.iter().sum::<usize>(), 40);
        assert!(
            batches.len() < 10,
            "40 writes queued together took {} commits",
            batches.len()
        );
    }

    #[tokio::test]
    async fn a_failing_write_fails_alone() {
        let recorder = std::sync::Arc::new(Recorder::default());
        let queue = std::sync::Arc::new(WriteQueue::start(recorder.clone()));
        let names = ["a", "bad", "c"];
        let writers: Vec<_> = names
            .iter()
            .map(|name| {
                let queue = queue.clone();
                let job = Job::for_test(name, "u");
                crate::task::spawn(async move { queue.write(Write::Create(job)).await.is_ok() })
            })
            .collect();
        let mut outcomes = Vec::new();
        for writer in writers {
            outcomes.push(writer.await.expect("writer ran"));
        }
        assert_eq!(outcomes, [true, false, true]);
    }
}
