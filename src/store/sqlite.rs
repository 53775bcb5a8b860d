//! The embedded default: SQLite in one file (WAL mode).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::{Created, JobStore, Saved, StoreError, decode_event, decode_job, millis};
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
}

fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    decode_job(
        row.try_get("data")?,
        row.try_get("version")?,
        row.try_get("last_sequence")?,
    )
}

fn event_from_row(row: &SqliteRow) -> Result<JobEvent, StoreError> {
    decode_event(
        row.try_get("id")?,
        row.try_get("sequence")?,
        row.try_get("kind")?,
        row.try_get("snapshot")?,
        row.try_get("created_at")?,
    )
}

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn create(&self, job: &Job) -> Result<Created, StoreError> {
        let mut job = job.clone();
        job.version = 1;
        job.last_sequence = 1;
        let data = serde_json::to_string(&job)?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (job_id, user_id, state, data, version, last_sequence, next_poll_at, created_at, updated_at)
             VALUES (?, ?, ?, ?, 1, 1, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(&job.job_id)
        .bind(&job.user_id)
        .bind(job.state.as_str())
        .bind(&data)
        .bind(job.next_poll_at.map(millis))
        .bind(millis(job.created_at))
        .bind(millis(job.updated_at))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            drop(tx);
            let existing = self.get(&job.job_id).await?;
            return existing
                .map(Created::Existing)
                .ok_or_else(|| StoreError::Unavailable("job vanished during create".into()));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO job_events (job_id, user_id, sequence, kind, snapshot, created_at) VALUES (?, ?, 1, ?, ?, ?) RETURNING id",
        )
        .bind(&job.job_id)
        .bind(&job.user_id)
        .bind(EventKind::Created.as_str())
        .bind(&data)
        .bind(millis(job.updated_at))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Created::New(JobEvent {
            global_id: id,
            sequence: 1,
            kind: EventKind::Created,
            at: job.updated_at,
            job,
        }))
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query("SELECT data, version, last_sequence FROM jobs WHERE job_id = ?")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn save(&self, job: &mut Job, event: Option<EventKind>) -> Result<Saved, StoreError> {
        let mut next = job.clone();
        next.version += 1;
        if event.is_some() {
            next.last_sequence += 1;
        }
        let data = serde_json::to_string(&next)?;
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE jobs SET state = ?, data = ?, version = ?, last_sequence = ?, next_poll_at = ?, updated_at = ?
             WHERE job_id = ? AND version = ?",
        )
        .bind(next.state.as_str())
        .bind(&data)
        .bind(next.version)
        .bind(next.last_sequence as i64)
        .bind(next.next_poll_at.map(millis))
        .bind(millis(next.updated_at))
        .bind(&next.job_id)
        .bind(job.version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(Saved::Conflict);
        }
        let written = match event {
            Some(kind) => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO job_events (job_id, user_id, sequence, kind, snapshot, created_at)
                     VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                )
                .bind(&next.job_id)
                .bind(&next.user_id)
                .bind(next.last_sequence as i64)
                .bind(kind.as_str())
                .bind(&data)
                .bind(millis(next.updated_at))
                .fetch_one(&mut *tx)
                .await?;
                Some(Box::new(JobEvent {
                    global_id: id,
                    sequence: next.last_sequence,
                    kind,
                    at: next.updated_at,
                    job: next.clone(),
                }))
            }
            None => None,
        };
        tx.commit().await?;
        *job = next;
        Ok(Saved::Written(written))
    }

    async fn job_events(&self, job_id: &str, after_sequence: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sequence, kind, snapshot, created_at FROM job_events
             WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
        )
        .bind(job_id)
        .bind(after_sequence as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn log_events(
        &self,
        after_global_id: i64,
        user_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sequence, kind, snapshot, created_at FROM job_events
             WHERE id > ? AND (? IS NULL OR user_id = ?) ORDER BY id LIMIT ?",
        )
        .bind(after_global_id)
        .bind(user_id)
        .bind(user_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn last_global_id(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM job_events")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<Job>, StoreError> {
        let lease_until = millis(now) + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let rows = sqlx::query(
            "UPDATE jobs SET lease_until = ?
             WHERE job_id IN (SELECT job_id FROM jobs
                              WHERE next_poll_at IS NOT NULL AND next_poll_at <= ?
                                AND (lease_until IS NULL OR lease_until < ?)
                              ORDER BY next_poll_at LIMIT ?)
             RETURNING data, version, last_sequence",
        )
        .bind(lease_until)
        .bind(millis(now))
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn release_lease(&self, job_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET lease_until = NULL WHERE job_id = ?")
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
