//! Durable storage of jobs and their events, behind [`JobStore`].
//!
//! Every write is a compare-and-set on the job's `version`, and a job change and
//! its event are written in one transaction, so replicas and concurrent requests
//! cannot lose or reorder each other's updates.

mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

pub use postgres::{PgLimits, PgStore};
pub use sqlite::SqliteStore;

use crate::jobs::model::{EventKind, Job, JobEvent};

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::TypeNotFound { .. } => {
                Self::Corrupt(error.to_string())
            }
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        Self::Corrupt(error.to_string())
    }
}

/// The result of [`JobStore::create`].
#[derive(Debug)]
pub enum Created {
    /// The job is new; its `CREATED` event.
    New(JobEvent),
    /// A job with this job_id already exists.
    Existing(Job),
}

/// The result of [`JobStore::save`].
#[derive(Debug)]
pub enum Saved {
    /// Written; the event, when one was asked for.
    Written(Option<Box<JobEvent>>),
    /// Someone else wrote the job first; reload and retry.
    Conflict,
}

#[async_trait::async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts a new job with its `CREATED` event (sequence 1), unless the job_id exists.
    async fn create(&self, job: &Job) -> Result<Created, StoreError>;

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError>;

    /// Writes `job` if its stored version is still `job.version`, with an event
    /// when `event` is given. On success `job.version` and `job.last_sequence` advance.
    async fn save(&self, job: &mut Job, event: Option<EventKind>) -> Result<Saved, StoreError>;

    /// A job's events with sequence greater than `after_sequence`, in order.
    async fn job_events(&self, job_id: &str, after_sequence: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError>;

    /// The global event log after `after_global_id`, optionally one user's, in order.
    async fn log_events(
        &self,
        after_global_id: i64,
        user_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError>;

    /// The position a live-only WatchJobs starts after.
    async fn last_global_id(&self) -> Result<i64, StoreError>;

    /// Leases up to `limit` jobs whose `next_poll_at` has passed, so that one
    /// replica polls each; a lease expires after `lease`.
    async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<Job>, StoreError>;

    /// Gives up the reconciler's lease on a job once it is done with it.
    async fn release_lease(&self, job_id: &str) -> Result<(), StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

pub type SharedStore = Arc<dyn JobStore>;

/// An opened store, and the PostgreSQL pool when the store is shared by replicas.
pub struct OpenedStore {
    pub store: SharedStore,
    pub postgres: Option<sqlx::PgPool>,
}

/// Opens the store a `DATABASE_URL` names: `sqlite:` (a file, created if missing)
/// or `postgres:` / `postgresql:` (shared by several replicas).
pub async fn open(database_url: &str, limits: PgLimits) -> Result<OpenedStore, StoreError> {
    if database_url.starts_with("sqlite:") {
        return Ok(OpenedStore {
            store: Arc::new(SqliteStore::open(database_url).await?),
            postgres: None,
        });
    }
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        let store = PgStore::open(database_url, limits).await?;
        let pool = store.pool().clone();
        return Ok(OpenedStore {
            store: Arc::new(store),
            postgres: Some(pool),
        });
    }
    Err(StoreError::Unavailable(format!(
        "DATABASE_URL must start with sqlite: or postgres:// (got scheme {:?})",
        database_url.split(':').next().unwrap_or_default()
    )))
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(value: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(value).single().unwrap_or_default()
}

/// Reads a stored job document; the columns are authoritative for version and sequence.
fn decode_job(data: &str, version: i64, last_sequence: i64) -> Result<Job, StoreError> {
    let mut job: Job = serde_json::from_str(data)?;
    job.version = version;
    job.last_sequence = u64::try_from(last_sequence).map_err(|_| StoreError::Corrupt("negative sequence".into()))?;
    Ok(job)
}

fn decode_event(id: i64, sequence: i64, kind: &str, snapshot: &str, created_at: i64) -> Result<JobEvent, StoreError> {
    let kind = EventKind::parse(kind).ok_or_else(|| StoreError::Corrupt(format!("unknown event kind {kind}")))?;
    Ok(JobEvent {
        global_id: id,
        sequence: u64::try_from(sequence).map_err(|_| StoreError::Corrupt("negative sequence".into()))?,
        kind,
        job: serde_json::from_str(snapshot)?,
        at: from_millis(created_at),
    })
}
