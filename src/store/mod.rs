//! Durable storage of jobs and their events: the domain's
//! [`JobStore`](crate::jobs::ports::JobStore) port on SQLite and PostgreSQL.
//!
//! Every write is a compare-and-set on the job's `version`, and a job change and
//! its event are written in one transaction, so replicas and concurrent requests
//! cannot lose or reorder each other's updates.

mod batch;
mod cached;
mod opening;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

pub use opening::OpeningStore;
pub use postgres::notify::spawn_listener as spawn_event_listener;
pub use postgres::{PgLimits, PgStore};
pub use sqlite::SqliteStore;

use crate::jobs::model::{EventKind, Job, JobEvent};
use crate::jobs::ports::{SharedStore, StoreError};

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

/// An opened store, and the PostgreSQL pool when the store is shared by replicas.
pub struct OpenedStore {
    pub store: SharedStore,
    pub postgres: Option<sqlx::PgPool>,
    /// The pool's connections: `(open, idle)`.
    pub pool_status: crate::metrics::PoolStatus,
    /// What its writer has committed.
    pub commits: crate::metrics::CommitTotals,
}

fn pool_status<DB: sqlx::Database>(pool: sqlx::Pool<DB>) -> crate::metrics::PoolStatus {
    Box::new(move || (pool.size(), u32::try_from(pool.num_idle()).unwrap_or(u32::MAX)))
}

fn commit_totals(commits: std::sync::Arc<batch::Commits>) -> crate::metrics::CommitTotals {
    Box::new(move || commits.totals())
}

/// Checks that `database_url` names a store this service has: a
/// configuration error, as opposed to a database that does not answer yet.
pub fn check_url(database_url: &str) -> Result<(), StoreError> {
    let known = ["sqlite:", "postgres://", "postgresql://"];
    if known.iter().any(|scheme| database_url.starts_with(scheme)) {
        return Ok(());
    }
    Err(StoreError::Unavailable(format!(
        "DATABASE_URL must start with sqlite: or postgres:// (got scheme {:?})",
        database_url.split(':').next().unwrap_or_default()
    )))
}

/// Opens the store a `DATABASE_URL` names: `sqlite:` (a file, created if missing)
/// or `postgres:` / `postgresql:` (shared by several replicas).
pub async fn open(database_url: &str, limits: PgLimits) -> Result<OpenedStore, StoreError> {
    if database_url.starts_with("sqlite:") {
        let store = SqliteStore::open(database_url).await?;
        let (pool, commits) = (store.pool().clone(), store.commits());
        return Ok(OpenedStore {
            // Only this process writes the file: its own copy of a job is never stale.
            store: Arc::new(cached::CachedStore::new(store)),
            postgres: None,
            pool_status: pool_status(pool),
            commits: commit_totals(commits),
        });
    }
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        let store = PgStore::open(database_url, limits).await?;
        let (pool, commits) = (store.pool().clone(), store.commits());
        return Ok(OpenedStore {
            store: Arc::new(store),
            postgres: Some(pool.clone()),
            pool_status: pool_status(pool),
            commits: commit_totals(commits),
        });
    }
    Err(StoreError::Unavailable(format!(
        "DATABASE_URL must start with sqlite: or postgres:// (got scheme {:?})",
        database_url.split(':').next().unwrap_or_default()
    )))
}

pub(crate) fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn from_millis(value: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(value).single().unwrap_or_default()
}

/// A job's event sequence as its column holds it (BIGINT). Sequences count
/// events from 1 and never come near `i64::MAX`; saturating keeps one from ever
/// being stored as a negative number.
pub(crate) fn sequence_column(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
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
