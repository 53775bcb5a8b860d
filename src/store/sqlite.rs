//! The embedded default: SQLite in one file (WAL mode).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::sql::impl_job_store;
use super::{StoreError, millis};
use crate::jobs::model::{EventKind, Job, JobEvent};

pub struct SqliteStore {
    pool: SqlitePool,
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
        Ok(Self { pool })
    }

    const CLAIM_DUE_SQL: &'static str = "UPDATE jobs SET lease_until = $1
         WHERE job_id IN (SELECT job_id FROM jobs
                          WHERE next_poll_at IS NOT NULL AND next_poll_at <= $2
                            AND (lease_until IS NULL OR lease_until < $2)
                          ORDER BY next_poll_at LIMIT $3)
         RETURNING data, version, last_sequence";

    /// SQLite has one writer at a time, so ids are assigned in commit order.
    async fn insert_event(
        connection: &mut sqlx::SqliteConnection,
        job: &Job,
        kind: EventKind,
        data: &str,
    ) -> Result<JobEvent, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO job_events (job_id, user_id, sequence, kind, snapshot, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&job.job_id)
        .bind(&job.user_id)
        .bind(job.last_sequence as i64)
        .bind(kind.as_str())
        .bind(data)
        .bind(millis(job.updated_at))
        .fetch_one(connection)
        .await?;
        Ok(JobEvent {
            global_id: id,
            sequence: job.last_sequence,
            kind,
            at: job.updated_at,
            job: job.clone(),
        })
    }
}

impl_job_store!(SqliteStore, SqliteRow);
