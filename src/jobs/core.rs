//! The shared core every responsibility works through: the store, the event
//! fan-out, the counters, and the read-modify-write every change of a job goes
//! through (load, transition, publish).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::error::{JobError, UnavailableReason};
use super::model::{EventKind, EventNotice, Job, JobEvent, scoped_job_id};
use super::ports::{EventFanout, JobMetrics, Saved, SharedStore};

pub struct JobCore {
    pub(super) store: SharedStore,
    pub(super) fanout: Arc<dyn EventFanout>,
    pub(super) metrics: Arc<dyn JobMetrics>,
    pub(super) shutdown: CancellationToken,
}

impl JobCore {
    pub fn new(
        store: SharedStore,
        fanout: Arc<dyn EventFanout>,
        metrics: Arc<dyn JobMetrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            fanout,
            metrics,
            shutdown,
        })
    }

    /// Tells this process's streams about a stored event.
    pub(super) fn publish(&self, event: &JobEvent) {
        self.fanout.publish(EventNotice::from(event));
    }

    pub(super) async fn load(&self, job_id: &str) -> Result<Job, JobError> {
        self.store.get(job_id).await?.ok_or_else(|| JobError::NotFound {
            job_id: job_id.to_owned(),
        })
    }

    /// The job `job_id` names for the caller `owner`: its own, scoped one when
    /// another caller holds the job_id, else the job_id's (which the caller
    /// may see only with leave to see others' jobs).
    pub(super) async fn get_for(&self, job_id: &str, owner: Option<&str>) -> Result<Job, JobError> {
        let found = self.load(job_id).await;
        match (owner, &found) {
            (Some(owner), Ok(job)) if job.owner.as_deref() != Some(owner) => {
                match self.store.get(&scoped_job_id(job_id, owner)).await? {
                    Some(own) => Ok(own),
                    None => found,
                }
            }
            _ => found,
        }
    }

    /// Read-modify-write with compare-and-set, retried on conflict. `change`
    /// returns the event to record; a change that alters nothing writes nothing.
    pub(super) async fn transition(
        &self,
        job_id: &str,
        change: impl FnMut(&mut Job) -> Option<EventKind>,
    ) -> Result<Job, JobError> {
        let job = self.load(job_id).await?;
        self.transition_from(job, change).await
    }

    /// [`transition`](Self::transition) starting from a copy of the job the
    /// caller has read already; a stale copy costs one conflict and a reload.
    pub(super) async fn transition_from(
        &self,
        known: Job,
        mut change: impl FnMut(&mut Job) -> Option<EventKind>,
    ) -> Result<Job, JobError> {
        let job_id = known.job_id.clone();
        let mut known = Some(known);
        for _ in 0..32 {
            let mut job = match known.take() {
                Some(job) => job,
                None => self.load(&job_id).await?,
            };
            let before = job.clone();
            let event = change(&mut job);
            if event.is_none() && job == before {
                return Ok(job);
            }
            job.updated_at = Utc::now();
            match self.store.save(&mut job, event).await? {
                Saved::Written(Some(event)) => {
                    self.publish(&event);
                    self.metrics.event_written();
                    return Ok(job);
                }
                Saved::Written(None) => return Ok(job),
                Saved::Conflict => tokio::task::yield_now().await,
            }
        }
        Err(JobError::Unavailable {
            reason: UnavailableReason::Contention,
            message: "the job is being updated concurrently; retry".into(),
            retry_after: Some(Duration::from_millis(100)),
        })
    }
}
