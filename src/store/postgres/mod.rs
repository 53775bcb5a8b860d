//! PostgreSQL, for several replicas sharing one database.
//!
//! Event ids must become visible in id order, or a WatchJobs reader could skip an
//! event committed late with a smaller id. Each batch of writes (see `batch`)
//! therefore takes one transaction-scoped advisory lock before its first event,
//! so ids are allocated and committed in order (`writes`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};

pub mod notify;
mod writes;

use super::batch::WriteQueue;
use super::sql::{impl_job_store, sql_writes};
use crate::jobs::model::{ErasedJob, Erasure};
use crate::jobs::ports::StoreError;

/// Serialises event inserts (an arbitrary constant naming this lock).
const EVENT_LOG_LOCK: i64 = 0x5E1F_1EA0;

/// Held by the one replica deleting expired jobs (another arbitrary constant).
const RETENTION_LOCK: i64 = 0x5E1F_1EA1;

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
    writes: WriteQueue,
}

impl PgStore {
    pub async fn open(database_url: &str, limits: PgLimits) -> Result<Self, StoreError> {
        let statement_timeout = format!("{}ms", limits.statement_timeout.as_millis());
        let options = PgConnectOptions::from_str(database_url)
            .map_err(|error| StoreError::Unavailable(format!("invalid postgres DATABASE_URL: {error}")))?
            .options([("statement_timeout", statement_timeout.as_str())])
            .application_name("selfie-auth");
        // One connection first: a pool that cannot connect only says it timed out,
        // where this says why (refused, unknown role, wrong password, ...).
        let probe = tokio::time::timeout(limits.acquire_timeout, PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Unavailable("connecting to PostgreSQL timed out".into()))?
            .map_err(|error| StoreError::Unavailable(format!("connecting to PostgreSQL: {error}")))?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(limits.max_connections)
            .acquire_timeout(limits.acquire_timeout)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|error| StoreError::Unavailable(format!("migrating the database: {error}")))?;
        let writes = WriteQueue::start(pool.clone());
        Ok(Self { pool, writes })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What its writer has committed so far.
    pub(super) fn commits(&self) -> std::sync::Arc<super::batch::Commits> {
        self.writes.commits()
    }

    /// Several replicas share one database.
    const SHARED: bool = true;

    // SKIP LOCKED: replicas claiming at the same moment take disjoint jobs.
    const CLAIM_DUE_SQL: &'static str = "UPDATE jobs SET lease_until = $1
         WHERE job_id IN (SELECT job_id FROM jobs
                          WHERE next_poll_at IS NOT NULL AND next_poll_at <= $2
                            AND (lease_until IS NULL OR lease_until < $2)
                          ORDER BY next_poll_at LIMIT $3
                          FOR UPDATE SKIP LOCKED)
         RETURNING data, version, last_sequence";

    /// Whether this replica's transaction is the one deleting expired jobs now.
    async fn may_delete(tx: &mut sqlx::PgConnection) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RETENTION_LOCK)
            .fetch_one(tx)
            .await?)
    }

    /// Locks the jobs of `user_id` until the transaction ends, and names them.
    async fn lock_jobs_of(tx: &mut sqlx::PgConnection, user_id: &str) -> Result<Option<Vec<ErasedJob>>, StoreError> {
        use sqlx::Row as _;
        let rows = sqlx::query("SELECT job_id, owner FROM jobs WHERE user_id = $1 FOR UPDATE")
            .bind(user_id)
            .fetch_all(tx)
            .await?;
        let jobs = rows
            .iter()
            .map(|row| {
                Ok(ErasedJob {
                    job_id: row.try_get("job_id")?,
                    owner: row.try_get("owner")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(jobs))
    }

    async fn announce_erasure(tx: &mut sqlx::PgConnection, erasure: &Erasure) -> Result<(), StoreError> {
        notify::announce_erasure(tx, erasure).await
    }
}

sql_writes!(PgStore, PgPool, PgRow, sqlx::PgConnection);
impl_job_store!(PgStore, PgPool, PgRow, sqlx::PgConnection);
