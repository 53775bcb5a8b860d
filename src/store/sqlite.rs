//! The embedded default: SQLite in one file (WAL mode).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::batch::WriteQueue;
use super::sql::{impl_job_store, sql_writes};
use crate::jobs::model::{ErasedJob, Erasure, JobEvent};
use crate::jobs::ports::StoreError;

pub struct SqliteStore {
    pool: SqlitePool,
    writes: WriteQueue,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(database_url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(database_url)
            .map_err(|error| StoreError::Unavailable(format!("invalid sqlite DATABASE_URL: {error}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An acknowledged callback must survive power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(path) = database_url
            .strip_prefix("sqlite://")
            .or_else(|| database_url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or_default();
            if let Some(parent) = std::path::Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent)
                    .map_err(|error| StoreError::Unavailable(format!("creating {}: {error}", parent.display())))?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|error| StoreError::Unavailable(format!("migrating the database: {error}")))?;
        // One process owns the file: a reconciler lease found here is a dead
        // process's, and would only hold its jobs back until it expired.
        sqlx::query("UPDATE jobs SET lease_until = NULL WHERE lease_until IS NOT NULL")
            .execute(&pool)
            .await?;
        let writes = WriteQueue::start(pool.clone());
        Ok(Self { pool, writes })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// One file, one process: the embedded store is never shared.
    const SHARED: bool = false;

    const CLAIM_DUE_SQL: &'static str = "UPDATE jobs SET lease_until = $1
         WHERE job_id IN (SELECT job_id FROM jobs
                          WHERE next_poll_at IS NOT NULL AND next_poll_at <= $2
                            AND (lease_until IS NULL OR lease_until < $2)
                          ORDER BY next_poll_at LIMIT $3)
         RETURNING data, version, last_sequence";

    // SQLite has one writer at a time: event ids are assigned in commit order,
    // and there are no other replicas to tell.
    async fn before_batch(_: &mut sqlx::SqliteConnection) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing to hold: a job is created in a write transaction, and SQLite
    /// runs one at a time, so its check sees every deletion marked before it.
    async fn guard_user(_: &mut sqlx::SqliteConnection, _: &str, _: i64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing to lock: SQLite has one writer at a time, and the erasure's
    /// writes come first, so no other write lands until it commits.
    async fn lock_jobs_of(_: &mut sqlx::SqliteConnection, _: &str) -> Result<Option<Vec<ErasedJob>>, StoreError> {
        Ok(None)
    }

    /// One process writes the file: its own fan-out hears of every erasure.
    async fn announce_erasure(_: &mut sqlx::SqliteConnection, _: &Erasure) -> Result<(), StoreError> {
        Ok(())
    }

    async fn after_batch(_: &mut sqlx::SqliteConnection, _: &[&JobEvent]) -> Result<(), StoreError> {
        Ok(())
    }

    /// In-process: a second statement costs no round trip.
    const SAVE_WITH_EVENT_SQL: Option<&'static str> = None;

    /// Only this process deletes.
    async fn may_delete(_: &mut sqlx::SqliteConnection) -> Result<bool, StoreError> {
        Ok(true)
    }
}

sql_writes!(SqliteStore, SqlitePool, SqliteRow, sqlx::SqliteConnection);
impl_job_store!(SqliteStore, SqlitePool, SqliteRow, sqlx::SqliteConnection);
