//! The embedded default: SQLite in one file (WAL mode). Creates and saves go
//! through one connection on a thread of its own (`writer`); everything else
//! through sqlx's pool.

mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::batch::WriteQueue;
use super::sql::{impl_job_store, sql_writes};
use crate::jobs::model::{ErasedJob, Erasure};
use crate::jobs::ports::StoreError;
use writer::Writer;

/// How long the writer waits for more writes once they come together. At 16
/// submissions in flight it took the writer's CPU a submission from 0.28-0.32
/// to 0.20-0.22 ms (`--only submit`, two runs each, interleaved); 1 ms did no
/// better, and a submission waits for two commits.
const LINGER: Duration = Duration::from_micros(500);

pub struct SqliteStore {
    pool: SqlitePool,
    writes: WriteQueue,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(database_url: &str) -> Result<Self, StoreError> {
        // The writer's connection and the pool's would each see a database of its own.
        if database_url.contains(":memory:") || database_url.contains("mode=memory") {
            return Err(StoreError::Unavailable(
                "DATABASE_URL names an in-memory SQLite database; the store keeps jobs in a file \
                 (sqlite://path/to/selfie-auth.db)"
                    .into(),
            ));
        }
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
            .connect_with(options.clone())
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
        // Opened after the migrations, which made the file and chose WAL.
        let writer = Writer::open(options.get_filename())?;
        let writes = WriteQueue::start_on_thread("sqlite-writer", writer, LINGER)
            .map_err(|error| StoreError::Unavailable(format!("starting the SQLite writer: {error}")))?;
        Ok(Self { pool, writes })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// What its writer has committed so far.
    pub(super) fn commits(&self) -> std::sync::Arc<super::batch::Commits> {
        self.writes.commits()
    }

    /// One file, one process: the embedded store is never shared.
    const SHARED: bool = false;

    const CLAIM_DUE_SQL: &'static str = "UPDATE jobs SET lease_until = $1
         WHERE job_id IN (SELECT job_id FROM jobs
                          WHERE next_poll_at IS NOT NULL AND next_poll_at <= $2
                            AND (lease_until IS NULL OR lease_until < $2)
                          ORDER BY next_poll_at LIMIT $3)
         RETURNING data, version, last_sequence";

    /// Nothing to lock: SQLite has one writer at a time, and the erasure's
    /// writes come first, so no other write lands until it commits.
    async fn lock_jobs_of(_: &mut sqlx::SqliteConnection, _: &str) -> Result<Option<Vec<ErasedJob>>, StoreError> {
        Ok(None)
    }

    /// One process writes the file: its own fan-out hears of every erasure.
    async fn announce_erasure(_: &mut sqlx::SqliteConnection, _: &Erasure) -> Result<(), StoreError> {
        Ok(())
    }

    /// Only this process deletes.
    async fn may_delete(_: &mut sqlx::SqliteConnection) -> Result<bool, StoreError> {
        Ok(true)
    }
}

sql_writes!(SqliteStore, SqlitePool, SqliteRow, sqlx::SqliteConnection);
impl_job_store!(SqliteStore, SqlitePool, SqliteRow, sqlx::SqliteConnection);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_in_memory_database_is_refused_with_the_reason() {
        for url in ["sqlite::memory:", "sqlite://:memory:", "sqlite://jobs.db?mode=memory"] {
            let Err(StoreError::Unavailable(message)) = SqliteStore::open(url).await else {
                panic!("{url} was opened");
            };
            assert!(
                message.contains("in-memory") && message.contains("file"),
                "{url}: {message}"
            );
        }
    }

    #[test]
    fn the_writer_refuses_a_file_it_cannot_write_jobs_to() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let missing = dir.path().join("missing.db");
        let Err(StoreError::Unavailable(message)) = Writer::open(&missing) else {
            panic!("a missing file was opened");
        };
        assert!(message.contains("missing.db"), "{message}");
        assert!(!missing.exists(), "the writer made the file the migrations should have");

        let empty = dir.path().join("empty.db");
        rusqlite::Connection::open(&empty).expect("an empty database");
        let Err(StoreError::Unavailable(message)) = Writer::open(&empty) else {
            panic!("a database without the schema was opened");
        };
        assert!(message.contains("jobs table"), "{message}");
    }

    #[tokio::test]
    async fn writes_from_the_writer_thread_are_read_through_the_pool_and_survive_reopening() {
        use crate::jobs::model::{EventKind, Job, JobState};
        use crate::jobs::ports::{Created, JobStore as _, Saved};

        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let store = SqliteStore::open(&url).await.expect("opened");
        let Created::New(created) = store.create(&Job::for_test("job-1", "user-1")).await.expect("created") else {
            panic!("a new job_id is created");
        };
        let mut job = created.job.clone();
        job.state = JobState::Submitted;
        let Saved::Written(Some(event)) = store.save(&mut job, Some(EventKind::Submitted)).await.expect("saved") else {
            panic!("a save at the stored version is written");
        };
        assert!(event.global_id > created.global_id);
        drop(store);

        let store = SqliteStore::open(&url).await.expect("opened again");
        let stored = store.get("job-1").await.expect("read").expect("kept");
        assert_eq!(
            (stored.version, stored.last_sequence, stored.state),
            (2, 2, JobState::Submitted)
        );
        let events = store.job_events("job-1", 0, 10).await.expect("events");
        let kinds: Vec<_> = events.iter().map(|event| event.kind).collect();
        assert_eq!(kinds, [EventKind::Created, EventKind::Submitted]);
    }
}
