//! The job store, timed: each operation's duration goes to the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::jobs::model::{Erasure, EventKind, Job, JobEvent, LogFilter};
use crate::jobs::ports::{Activity, Backlog, Created, JobCursor, JobFilter, JobStore, Saved, SharedStore, StoreError};
use crate::metrics::Metrics;
use crate::users::model::UserRecord;

pub struct TimedStore {
    inner: SharedStore,
    metrics: Arc<Metrics>,
}

impl TimedStore {
    pub fn new(inner: SharedStore, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(&self, operation: &'static str, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let outcome = work.await;
        self.metrics.observe_db(operation, started.elapsed());
        outcome
    }
}

#[async_trait::async_trait]
impl JobStore for TimedStore {
    async fn create(&self, job: &Job) -> Result<Created, StoreError> {
        self.timed("create", self.inner.create(job)).await
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        self.timed("get", self.inner.get(job_id)).await
    }

    async fn save(&self, job: &mut Job, event: Option<EventKind>) -> Result<Saved, StoreError> {
        self.timed("save", self.inner.save(job, event)).await
    }

    async fn job_events(&self, job_id: &str, after_sequence: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        self.timed("job_events", self.inner.job_events(job_id, after_sequence, limit))
            .await
    }

    async fn log_events(
        &self,
        after_global_id: i64,
        filter: &LogFilter,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        self.timed("log_events", self.inner.log_events(after_global_id, filter, limit))
            .await
    }

    async fn last_global_id(&self, owner: Option<&str>) -> Result<i64, StoreError> {
        self.timed("last_global_id", self.inner.last_global_id(owner)).await
    }

    async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<Job>, StoreError> {
        self.timed("claim_due", self.inner.claim_due(now, lease, limit)).await
    }

    async fn release_lease(&self, job_id: &str) -> Result<(), StoreError> {
        self.timed("release_lease", self.inner.release_lease(job_id)).await
    }

    async fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, StoreError> {
        self.timed("backlog", self.inner.backlog(now)).await
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&JobCursor>,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        self.timed("list_jobs", self.inner.list_jobs(filter, after, limit))
            .await
    }

    async fn delete_finished(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError> {
        self.timed("delete_finished", self.inner.delete_finished(before, limit))
            .await
    }

    async fn claim_user(&self, user_id: &str, owner: &str) -> Result<String, StoreError> {
        self.timed("claim_user", self.inner.claim_user(user_id, owner)).await
    }

    async fn user_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        self.timed("user_owner", self.inner.user_owner(user_id)).await
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.timed("user", self.inner.user(user_id)).await
    }

    async fn put_user(&self, user: &mut UserRecord) -> Result<bool, StoreError> {
        self.timed("put_user", self.inner.put_user(user)).await
    }

    async fn user_activity(&self, user_id: &str) -> Result<Activity, StoreError> {
        self.timed("user_activity", self.inner.user_activity(user_id)).await
    }

    async fn erase_user(&self, user: &mut UserRecord) -> Result<Option<Erasure>, StoreError> {
        self.timed("erase_user", self.inner.erase_user(user)).await
    }

    async fn erase_jobs_of(&self, user_id: &str) -> Result<Erasure, StoreError> {
        self.timed("erase_jobs_of", self.inner.erase_jobs_of(user_id)).await
    }

    async fn due_user_operations(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<UserRecord>, StoreError> {
        self.timed("due_user_operations", self.inner.due_user_operations(now, limit))
            .await
    }

    async fn idle_users(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError> {
        self.timed("idle_users", self.inner.idle_users(before, limit)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}
