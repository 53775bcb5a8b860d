//! Event streams: replay from the store, then live, with no gap and no
//! duplicate at the seam. Live notices only say "look again"; events are always
//! read from the store after the last delivered position.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::error::{JobError, Limit};
use super::model::{ErasedJob, Erasure, EventNotice, Job, JobEvent};
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};

use super::core::JobCore;
use super::model::LogFilter;
use super::ports::{FanoutMessage, Interest, SharedStore, StoreError};
use super::settings::ServiceConfig;

const PAGE: u32 = 200;
/// Items a stream holds for a slow reader before it waits for it.
const STREAM_BUFFER: usize = 16;
/// The longest pause between retries of a failed read (about 1.5 s in all).
const READ_RETRY_CEILING: Duration = Duration::from_millis(800);
/// Erased jobs a WatchJobs stream remembers announcing, so a second notice of
/// one erasure (every replica's) is not announced twice.
const ANNOUNCED_ERASURES: usize = 4096;

/// One item of a stream.
#[derive(Debug)]
pub enum WatchItem {
    Event(Box<JobEvent>),
    /// Nothing happened. `last_sequence` is the last sequence delivered
    /// (WatchJob); `log_position` the global event id a WatchJobs stream
    /// resumes after.
    Heartbeat {
        last_sequence: u64,
        log_position: i64,
    },
    /// The job was erased with its user; nothing of it follows.
    Erased(Box<ErasedItem>),
}

/// A job erased with its user, as a stream announces it. Boxed in
/// [`WatchItem`], as events are: a stream's channel holds its items inline,
/// a block of 32 at a time, and tens of thousands of idle streams should cost
/// little.
#[derive(Debug)]
pub struct ErasedItem {
    pub job: ErasedJob,
    pub user_id: String,
    /// The sequence after the last one delivered (WatchJob); the log
    /// position a WatchJobs stream resumes after.
    pub sequence: u64,
    pub log_position: i64,
}

/// A stream's items. The error is boxed, as the larger items are (see
/// [`ErasedItem`]).
pub type WatchStream = mpsc::Receiver<Result<WatchItem, Box<JobError>>>;

/// Where a WatchJobs stream starts.
#[derive(Clone, Copy, Debug)]
pub enum LogStart {
    /// After this global event id (a resume token).
    After(i64),
    /// Every stored event first.
    Beginning,
    /// Only events from now on.
    Now,
}

/// Serves streams of events and waits for results, each holding a slot of
/// the process's open streams.
pub struct Watcher {
    core: Arc<JobCore>,
    heartbeat_interval: Duration,
    open_streams: Arc<Semaphore>,
    log_reads: LogReads,
}

impl Watcher {
    pub fn new(core: Arc<JobCore>, config: &ServiceConfig) -> Self {
        Self {
            core,
            heartbeat_interval: config.heartbeat_interval,
            open_streams: Arc::new(Semaphore::new(config.max_open_streams)),
            log_reads: LogReads::default(),
        }
    }

    /// A slot among the streams (and waits for results) this process holds open
    /// at once; none free is `UNAVAILABLE` / `OVERLOADED`. Streams cost little
    /// each, but a client opening connections without end must not exhaust memory.
    pub fn hold_stream(&self) -> Result<OwnedSemaphorePermit, JobError> {
        self.open_streams.clone().try_acquire_owned().map_err(|_| {
            self.core.metrics.shed(Limit::OpenStreams);
            JobError::overloaded(
                Limit::OpenStreams,
                "the server holds as many open streams as it can; retry shortly",
            )
        })
    }

    /// Waits until the job is final or `deadline`, then returns it as it stands.
    pub async fn wait_for_final(&self, job_id: &str, deadline: tokio::time::Instant) -> Result<Job, JobError> {
        let mut notices = self.core.fanout.subscribe(Interest::Job(job_id.to_owned()));
        loop {
            let job = self.core.load(job_id).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            loop {
                tokio::select! {
                    notice = notices.recv() => match notice {
                        Ok(FanoutMessage::Event(notice)) if notice.job_id == job_id => break,
                        Ok(FanoutMessage::Resync | FanoutMessage::Erased(_)) => break,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(job),
                    },
                    () = tokio::time::sleep_until(deadline) => return self.core.load(job_id).await,
                    () = self.core.shutdown.cancelled() => return Ok(job),
                    // Events may come from other replicas without a notice here.
                    () = tokio::time::sleep(self.heartbeat_interval) => break,
                }
            }
        }
    }

    /// Streams one job's events after `after_sequence`; ends after its final event.
    pub async fn watch_job(self: &Arc<Self>, job_id: &str, after_sequence: u64) -> Result<WatchStream, JobError> {
        let stream = self.hold_stream()?;
        // Subscribe before the first read so nothing falls between replay and live.
        let mut notices = self.core.fanout.subscribe(Interest::Job(job_id.to_owned()));
        let job = self.core.load(job_id).await?;
        if after_sequence > job.last_sequence {
            return Err(JobError::invalid_field(
                "after_sequence",
                format!("is past the job's last event ({})", job.last_sequence),
            ));
        }
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let service = self.clone();
        let job_id = job.job_id.clone();
        crate::task::spawn(async move {
            let _stream = stream;
            let mut cursor = after_sequence;
            if job.state.is_terminal() && cursor >= job.last_sequence {
                return;
            }
            let mut heartbeat = tokio::time::interval(service.heartbeat_interval);
            heartbeat.tick().await;
            loop {
                // Drain everything stored after the cursor.
                loop {
                    let events = match service
                        .read_patiently(|| service.core.store.job_events(&job_id, cursor, PAGE))
                        .await
                    {
                        Ok(events) => events,
                        Err(error) => {
                            let _ = sender.send(Err(Box::new(error.into()))).await;
                            return;
                        }
                    };
                    if events.is_empty() {
                        break;
                    }
                    for event in events {
                        cursor = event.sequence;
                        let last = event.kind.is_final();
                        if sender.send(Ok(WatchItem::Event(Box::new(event)))).await.is_err() || last {
                            return;
                        }
                    }
                }
                let relevant = |notice: &EventNotice| notice.job_id == job_id && notice.sequence > cursor;
                let heartbeat_item = WatchItem::Heartbeat {
                    last_sequence: cursor,
                    log_position: 0,
                };
                match service
                    .wait_to_look(&mut notices, &mut heartbeat, &sender, relevant, heartbeat_item)
                    .await
                {
                    Wake::Stop => return,
                    Wake::Erased(erasure) => {
                        if let Some(erased) = erasure.jobs.iter().find(|erased| erased.job_id == job_id) {
                            let item = WatchItem::Erased(Box::new(ErasedItem {
                                job: erased.clone(),
                                user_id: erasure.user_id.clone(),
                                sequence: cursor + 1,
                                log_position: 0,
                            }));
                            let _ = sender.send(Ok(item)).await;
                            return;
                        }
                    }
                    Wake::Look { .. } => {}
                }
            }
        });
        Ok(receiver)
    }

    /// Streams the events `filter` matches from `start`; never ends by itself.
    ///
    /// Positions — where the stream starts, what heartbeats report, which
    /// resume tokens are valid — are those of the filter's owner's own view of
    /// the log, so a caller learns nothing of how others' jobs move.
    pub async fn watch_log(self: &Arc<Self>, filter: LogFilter, start: LogStart) -> Result<WatchStream, JobError> {
        let stream = self.hold_stream()?;
        let interest = filter.user_id.clone().map_or(Interest::All, Interest::User);
        let mut notices = self.core.fanout.subscribe(interest);
        let mut cursor = match start {
            LogStart::After(id) => {
                // A position past the end of the caller's view was never issued to it.
                if id > self.core.store.last_global_id(filter.owner.as_deref()).await? {
                    return Err(JobError::InvalidResumeToken);
                }
                id
            }
            LogStart::Beginning => 0,
            LogStart::Now => self.core.store.last_global_id(filter.owner.as_deref()).await?,
        };
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let service = self.clone();
        crate::task::spawn(async move {
            let _stream = stream;
            let mut heartbeat = tokio::time::interval(service.heartbeat_interval);
            heartbeat.tick().await;
            let mut wanted = None;
            // Erasures this stream announced: every replica's notice of one reaches it.
            let mut announced = std::collections::HashSet::new();
            loop {
                loop {
                    let events = match service
                        .read_patiently(|| service.log_reads.read(&service.core.store, cursor, &filter, wanted))
                        .await
                    {
                        Ok(events) => events,
                        Err(error) => {
                            let _ = sender.send(Err(Box::new(error.into()))).await;
                            return;
                        }
                    };
                    // Seen: the rest of the log is read like any other page.
                    wanted = None;
                    if events.is_empty() {
                        break;
                    }
                    for event in events {
                        cursor = event.global_id;
                        if sender.send(Ok(WatchItem::Event(Box::new(event)))).await.is_err() {
                            return;
                        }
                    }
                }
                let relevant = |notice: &EventNotice| notice.global_id > cursor && notice.may_match(&filter);
                let heartbeat_item = WatchItem::Heartbeat {
                    last_sequence: 0,
                    log_position: cursor,
                };
                match service
                    .wait_to_look(&mut notices, &mut heartbeat, &sender, relevant, heartbeat_item)
                    .await
                {
                    Wake::Look { wanted: event } => wanted = event,
                    Wake::Erased(erasure) => {
                        if announced.len() > ANNOUNCED_ERASURES {
                            announced.clear();
                        }
                        for erased in erasure.visible_to(&filter) {
                            if !announced.insert(erased.job_id.clone()) {
                                continue;
                            }
                            let item = WatchItem::Erased(Box::new(ErasedItem {
                                job: erased.clone(),
                                user_id: erasure.user_id.clone(),
                                sequence: 0,
                                log_position: cursor,
                            }));
                            if sender.send(Ok(item)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Wake::Stop => return,
                }
            }
        });
        Ok(receiver)
    }

    /// A stream's read of the store, retried for a moment when the database is
    /// unavailable: a connection lost with a replica's database recovers in
    /// well under a second, and a stream should outlive that.
    async fn read_patiently<F, Fut>(&self, mut read: F) -> Result<Vec<JobEvent>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Vec<JobEvent>, StoreError>>,
    {
        let mut backoff = Duration::from_millis(50);
        loop {
            match read().await {
                Err(StoreError::Unavailable(_)) if backoff <= READ_RETRY_CEILING => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                outcome => return outcome,
            }
        }
    }

    /// Waits for a reason to read the store again: a relevant notice, a resync
    /// after missed notices, or a heartbeat (sent; events written by another
    /// replica may arrive without a local notice, so it also means "look").
    /// `Stop` when the caller went away or the server shuts down (the caller is told).
    async fn wait_to_look(
        &self,
        notices: &mut broadcast::Receiver<FanoutMessage>,
        heartbeat: &mut tokio::time::Interval,
        sender: &mpsc::Sender<Result<WatchItem, Box<JobError>>>,
        relevant: impl Fn(&EventNotice) -> bool,
        heartbeat_item: WatchItem,
    ) -> Wake {
        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Ok(FanoutMessage::Event(notice)) if relevant(&notice) => {
                        return Wake::Look { wanted: Some(notice.global_id) };
                    }
                    Ok(FanoutMessage::Resync) | Err(RecvError::Lagged(_)) => return Wake::Look { wanted: None },
                    Ok(FanoutMessage::Erased(erasure)) => return Wake::Erased(erasure),
                    Ok(FanoutMessage::Event(_)) => {}
                    Err(RecvError::Closed) => return Wake::Stop,
                },
                _ = heartbeat.tick() => {
                    return if sender.send(Ok(heartbeat_item)).await.is_ok() {
                        Wake::Look { wanted: None }
                    } else {
                        Wake::Stop
                    };
                }
                () = self.core.shutdown.cancelled() => {
                    let _ = sender.send(Err(Box::new(JobError::shutting_down()))).await;
                    return Wake::Stop;
                }
                () = sender.closed() => return Wake::Stop,
            }
        }
    }
}

/// What a stream does after waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wake {
    /// Read the store after the cursor; an event notice says which event must be seen.
    Look {
        wanted: Option<i64>,
    },
    /// A user's jobs were erased.
    Erased(Arc<Erasure>),
    Stop,
}

type LogPage = Result<Arc<Vec<JobEvent>>, StoreError>;
type SharedPage = Shared<BoxFuture<'static, LogPage>>;
/// A place in the log: after this global id, the events a filter matches.
type LogPlace = (i64, LogFilter);

/// Reads of the event log shared by every WatchJobs stream at the same place:
/// streams woken by one event, at one position, cost one database read.
#[derive(Default)]
struct LogReads {
    reading: std::sync::Mutex<HashMap<LogPlace, SharedPage>>,
}

impl LogReads {
    /// The page of the log after `after` that `filter` matches, from the read
    /// in flight at that place if there is one. A read that began before the
    /// event `wanted` was stored may not hold it: then the page is read again.
    pub async fn read(
        &self,
        store: &SharedStore,
        after: i64,
        filter: &LogFilter,
        wanted: Option<i64>,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let key = (after, filter.clone());
        let shared = self.page(store, &key, false).await?;
        let reaches = |page: &[JobEvent]| wanted.is_none_or(|id| page.last().is_some_and(|last| last.global_id >= id));
        if reaches(&shared) {
            return Ok(shared.as_ref().clone());
        }
        Ok(self.page(store, &key, true).await?.as_ref().clone())
    }

    async fn page(&self, store: &SharedStore, key: &LogPlace, fresh: bool) -> LogPage {
        let page = {
            let mut reading = self.reading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match reading.get(key) {
                Some(page) if !fresh => page.clone(),
                _ => {
                    let store = store.clone();
                    let (after, filter) = key.clone();
                    let page = async move { store.log_events(after, &filter, PAGE).await.map(Arc::new) }
                        .boxed()
                        .shared();
                    reading.insert(key.clone(), page.clone());
                    page
                }
            }
        };
        let events = page.clone().await;
        let mut reading = self.reading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The read is over: later wake-ups read afresh.
        if reading.get(key).is_some_and(|current| current.ptr_eq(&page)) {
            reading.remove(key);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's channel allocates its items' slots 32 at a time, the first
    /// block as the stream opens: each byte an item takes inline costs an idle
    /// stream 32. Erasures held inline once made the item 88 bytes, and every
    /// open stream 2.5 KiB larger.
    #[test]
    fn a_stream_item_takes_little_room_inline() {
        let size = std::mem::size_of::<Result<WatchItem, Box<JobError>>>();
        assert!(size <= 24, "a stream item takes {size} bytes inline");
    }
}
