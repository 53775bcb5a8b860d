//! PostgreSQL, for several replicas sharing one database.
//!
//! Event ids must become visible in id order, or a WatchJobs reader could skip an
//! event committed late with a smaller id. Event writes therefore take one
//! transaction-scoped advisory lock, so ids are allocated and committed in order.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use super::{Created, JobStore, Saved, StoreError, decode_event, decode_job, millis};
use crate::events::postgres::{CHANNEL, encode};
use crate::jobs::model::{EventKind, Job, JobEvent};

/// Serialises event inserts (an arbitrary constant naming this lock).
const EVENT_LOG_LOCK: i64 = 0x5E1F_1EA0;

/// Connection limits of the PostgreSQL store.
#[derive(Clone, Copy, Debug)]
pub struct PgLimits {
    pub max_connections: u32,
    pub statement_timeout: Duration,
    pub acquire_timeout: Duration,
}

impl Default for PgLimits {
    fn default() -> Self {
        Self {
            max_connections: 10,
            statement_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn open(database_url: &str, limits: PgLimits) -> Result<Self, StoreError> {
        let statement_timeout = format!("{}ms", limits.statement_timeout.as_millis());
        let options = PgConnectOptions::from_str(database_url)
            .map_err(|error| StoreError::Unavailable(format!("invalid postgres DATABASE_URL: {error}")))?
            .options([("statement_timeout", statement_timeout.as_str())])
            .application_name("selfie-auth");
        let pool = PgPoolOptions::new()
            .max_connections(limits.max_connections)
            .acquire_timeout(limits.acquire_timeout)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|error| StoreError::Unavailable(format!("migrating the database: {error}")))?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn insert_event(
        tx: &mut sqlx::PgConnection,
        job: &Job,
        kind: EventKind,
        data: &str,
    ) -> Result<JobEvent, StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_LOG_LOCK)
            .execute(&mut *tx)
            .await?;
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
        .fetch_one(&mut *tx)
        .await?;
        let event = JobEvent {
            global_id: id,
            sequence: job.last_sequence,
            kind,
            at: job.updated_at,
            job: job.clone(),
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(encode(&event))
            .execute(&mut *tx)
            .await?;
        Ok(event)
    }
}

fn job_from_row(row: &PgRow) -> Result<Job, StoreError> {
    decode_job(
        row.try_get("data")?,
        row.try_get("version")?,
        row.try_get("last_sequence")?,
    )
}

fn event_from_row(row: &PgRow) -> Result<JobEvent, StoreError> {
    decode_event(
        row.try_get("id")?,
        row.try_get("sequence")?,
        row.try_get("kind")?,
        row.try_get("snapshot")?,
        row.try_get("created_at")?,
    )
}

#[async_trait::async_trait]
impl JobStore for PgStore {
    async fn create(&self, job: &Job) -> Result<Created, StoreError> {
        let mut job = job.clone();
        job.version = 1;
        job.last_sequence = 1;
        let data = serde_json::to_string(&job)?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (job_id, user_id, state, data, version, last_sequence, next_poll_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 1, 1, $5, $6, $7) ON CONFLICT (job_id) DO NOTHING",
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
            tx.rollback().await?;
            let existing = self.get(&job.job_id).await?;
            return existing
                .map(Created::Existing)
                .ok_or_else(|| StoreError::Unavailable("job vanished during create".into()));
        }
        let event = Self::insert_event(&mut tx, &job, EventKind::Created, &data).await?;
        tx.commit().await?;
        Ok(Created::New(event))
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query("SELECT data, version, last_sequence FROM jobs WHERE job_id = $1")
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
            "UPDATE jobs SET state = $1, data = $2, version = $3, last_sequence = $4, next_poll_at = $5, updated_at = $6
             WHERE job_id = $7 AND version = $8",
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
            tx.rollback().await?;
            return Ok(Saved::Conflict);
        }
        let written = match event {
            Some(kind) => Some(Box::new(Self::insert_event(&mut tx, &next, kind, &data).await?)),
            None => None,
        };
        tx.commit().await?;
        *job = next;
        Ok(Saved::Written(written))
    }

    async fn job_events(&self, job_id: &str, after_sequence: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sequence, kind, snapshot, created_at FROM job_events
             WHERE job_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
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
             WHERE id > $1 AND ($2::TEXT IS NULL OR user_id = $2) ORDER BY id LIMIT $3",
        )
        .bind(after_global_id)
        .bind(user_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn last_global_id(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0)::BIGINT FROM job_events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<Job>, StoreError> {
        let lease_until = millis(now) + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        // SKIP LOCKED: replicas claiming at the same moment take disjoint jobs.
        let rows = sqlx::query(
            "UPDATE jobs SET lease_until = $1
             WHERE job_id IN (SELECT job_id FROM jobs
                              WHERE next_poll_at IS NOT NULL AND next_poll_at <= $2
                                AND (lease_until IS NULL OR lease_until < $2)
                              ORDER BY next_poll_at LIMIT $3
                              FOR UPDATE SKIP LOCKED)
             RETURNING data, version, last_sequence",
        )
        .bind(lease_until)
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn release_lease(&self, job_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET lease_until = NULL WHERE job_id = $1")
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
