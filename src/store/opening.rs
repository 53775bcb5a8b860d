//! The job store as the service holds it from its first moment: it answers
//! `Unavailable` until the database is open (the process serves health
//! before its database answers), then passes every operation on, timed for
//! the metrics.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::jobs::model::{Erasure, EventKind, Job, JobEvent, LogFilter};
use crate::jobs::ports::{Activity, Backlog, Created, JobCursor, JobFilter, JobStore, Saved, SharedStore, StoreError};
use crate::metrics::Metrics;
use crate::users::model::UserRecord;

pub struct OpeningStore {
    opened: OnceLock<SharedStore>,
    metrics: Arc<Metrics>,
}

impl OpeningStore {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            opened: OnceLock::new(),
            metrics,
        })
    }

    /// The database is open: operations reach `store` from now on.
    pub fn open(&self, store: SharedStore) {
        let _ = self.opened.set(store);
    }

    /// Runs `work` on the open store, timed; `Unavailable` until it is open.
    async fn timed<'a, T, F>(
        &'a self,
        operation: &'static str,
        work: impl FnOnce(&'a SharedStore) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let store = self.opened.get().ok_or_else(|| {
            StoreError::Unavailable("the service is starting and its job database is not open yet".into())
        })?;
        let started = Instant::now();
        let outcome = work(store).await;
        self.metrics.observe_db(operation, started.elapsed());
        outcome
    }
}

#[async_trait::async_trait]
impl JobStore for OpeningStore {
    async fn create(&self, job: &Job) -> Result<Created, StoreError> {
        self.timed("create", |store| store.create(job)).await
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        self.timed("get", |store| store.get(job_id)).await
    }

    async fn save(&self, job: &mut Job, event: Option<EventKind>) -> Result<Saved, StoreError> {
        self.timed("save", |store| store.save(job, event)).await
    }

    async fn job_events(&self, job_id: &str, after_sequence: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        self.timed("job_events", |store| store.job_events(job_id, after_sequence, limit))
            .await
    }

    async fn log_events(
        &self,
        after_global_id: i64,
        filter: &LogFilter,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        self.timed("log_events", |store| store.log_events(after_global_id, filter, limit))
            .await
    }

    async fn last_global_id(&self, owner: Option<&str>) -> Result<i64, StoreError> {
        self.timed("last_global_id", |store| store.last_global_id(owner)).await
    }

    async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<Job>, StoreError> {
        self.timed("claim_due", |store| store.claim_due(now, lease, limit))
            .await
    }

    async fn release_lease(&self, job_id: &str) -> Result<(), StoreError> {
        self.timed("release_lease", |store| store.release_lease(job_id)).await
    }

    async fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, StoreError> {
        self.timed("backlog", |store| store.backlog(now)).await
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&JobCursor>,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        self.timed("list_jobs", |store| store.list_jobs(filter, after, limit))
            .await
    }

    async fn delete_finished(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError> {
        self.timed("delete_finished", |store| store.delete_finished(before, limit))
            .await
    }

    async fn claim_user(&self, user_id: &str, owner: &str) -> Result<String, StoreError> {
        self.timed("claim_user", |store| store.claim_user(user_id, owner)).await
    }

    async fn user_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        self.timed("user_owner", |store| store.user_owner(user_id)).await
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.timed("user", |store| store.user(user_id)).await
    }

    async fn put_user(&self, user: &mut UserRecord) -> Result<bool, StoreError> {
        self.timed("put_user", |store| store.put_user(user)).await
    }

    async fn user_activity(&self, user_id: &str) -> Result<Activity, StoreError> {
        self.timed("user_activity", |store| store.user_activity(user_id)).await
    }

    async fn erase_user(&self, user: &mut UserRecord) -> Result<Option<Erasure>, StoreError> {
        self.timed("erase_user", |store| store.erase_user(user)).await
    }

    async fn erase_jobs_of(&self, user_id: &str) -> Result<Erasure, StoreError> {
        self.timed("erase_jobs_of", |store| store.erase_jobs_of(user_id)).await
    }

    async fn due_user_operations(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<UserRecord>, StoreError> {
        self.timed("due_user_operations", |store| store.due_user_operations(now, limit))
            .await
    }

    async fn idle_users(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError> {
        self.timed("idle_users", |store| store.idle_users(before, limit)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", |store| store.ping()).await
    }

    fn is_shared(&self) -> bool {
        self.opened.get().is_some_and(|store| store.is_shared())
    }
}
