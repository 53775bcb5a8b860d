//! The rows and writes both SQL stores share: the statements of a job's create
//! and save, decoding rows into jobs, events and users, and the writes of users
//! and erasures.

use crate::jobs::model::{EventKind, Job, JobEvent};
use crate::jobs::ports::StoreError;

/// Stores a new job: `$1` job_id, `$2` user_id, `$3` state, `$4` data, `$5`
/// next poll, `$6` created, `$7` updated, `$8` kind, `$9` owner. It inserts
/// nothing if the job_id is taken or the user refuses jobs: a deleted user's job
/// is never stored, even by a submission racing the deletion, as the check and
/// the insert are one statement.
pub(in crate::store) const INSERT_JOB: &str =
    "INSERT INTO jobs (job_id, user_id, state, kind, owner, data, version, last_sequence, next_poll_at,
                       created_at, updated_at)
     SELECT $1, $2, $3, $8, $9, $4, 1, 1, $5, $6, $7
     WHERE NOT EXISTS (SELECT 1 FROM users WHERE user_id = $2 AND refuses_jobs = 1)
     ON CONFLICT (job_id) DO NOTHING";

/// One job by `$1` job_id.
pub(in crate::store) const SELECT_JOB: &str = "SELECT data, version, last_sequence FROM jobs WHERE job_id = $1";

/// A row when user `$1` refuses jobs (its deletion is marked).
pub(in crate::store) const USER_REFUSES_JOBS: &str =
    "SELECT refuses_jobs FROM users WHERE user_id = $1 AND refuses_jobs = 1";

/// Appends an event: `$1` job_id, `$2` user_id, `$3` sequence, `$4` kind, `$5`
/// snapshot, `$6` time, `$7` owner; answers its id.
pub(in crate::store) const INSERT_EVENT: &str =
    "INSERT INTO job_events (job_id, user_id, owner, sequence, kind, snapshot, created_at)
     VALUES ($1, $2, $7, $3, $4, $5, $6) RETURNING id";

/// Writes a job if its stored version is still the one read: `$1` state, `$2`
/// data, `$3` version, `$4` last sequence, `$5` next poll, `$6` updated, `$7`
/// job_id, `$8` the version the save expects. No row changed: a conflict.
pub(in crate::store) const UPDATE_JOB: &str =
    "UPDATE jobs SET state = $1, data = $2, version = $3, last_sequence = $4, next_poll_at = $5, updated_at = $6
     WHERE job_id = $7 AND version = $8";

/// A job as its create stores it (version and sequence 1), and its document.
pub(in crate::store) fn first_version(job: &Job) -> Result<(Job, String), StoreError> {
    let mut job = job.clone();
    job.version = 1;
    job.last_sequence = 1;
    let data = serde_json::to_string(&job)?;
    Ok((job, data))
}

/// `job` as a save stores it (its version, and its sequence when an event is
/// written, advanced), and its document.
pub(in crate::store) fn next_version(job: &Job, event: Option<EventKind>) -> Result<(Job, String), StoreError> {
    let mut next = job.clone();
    next.version += 1;
    if event.is_some() {
        next.last_sequence += 1;
    }
    let data = serde_json::to_string(&next)?;
    Ok((next, data))
}

/// The event stored with id `global_id` for `job` as written.
pub(in crate::store) fn written_event(global_id: i64, job: &Job, kind: EventKind) -> JobEvent {
    JobEvent {
        global_id,
        sequence: job.last_sequence,
        kind,
        at: job.updated_at,
        job: job.clone(),
    }
}

/// Defines, for `$store`, the row decoders and in-transaction writes
/// [`impl_job_store`](super::impl_job_store) builds on.
macro_rules! sql_writes {
    ($store:ty, $pool:ty, $row:ty, $connection:ty) => {
        fn job_from_row(row: &$row) -> Result<$crate::jobs::model::Job, $crate::jobs::ports::StoreError> {
            use sqlx::Row as _;
            $crate::store::decode_job(
                row.try_get("data")?,
                row.try_get("version")?,
                row.try_get("last_sequence")?,
            )
        }

        fn event_from_row(row: &$row) -> Result<$crate::jobs::model::JobEvent, $crate::jobs::ports::StoreError> {
            use sqlx::Row as _;
            $crate::store::decode_event(
                row.try_get("id")?,
                row.try_get("sequence")?,
                row.try_get("kind")?,
                row.try_get("snapshot")?,
                row.try_get("created_at")?,
            )
        }

        fn user_from_row(row: &$row) -> Result<$crate::users::model::UserRecord, $crate::jobs::ports::StoreError> {
            use sqlx::Row as _;
            let user_id: String = row.try_get("user_id")?;
            let data: Option<String> = row.try_get("data")?;
            let mut user = match data {
                Some(data) => serde_json::from_str(&data)?,
                None => $crate::users::model::UserRecord::new(&user_id, None, chrono::Utc::now()),
            };
            let owner: String = row.try_get("owner")?;
            user.user_id = user_id;
            user.owner = Some(owner).filter(|owner| !owner.is_empty());
            user.created_at = $crate::store::from_millis(row.try_get("created_at")?);
            user.version = row.try_get("version")?;
            Ok(user)
        }

        /// Writes `user` if its stored version is still `user.version` (0:
        /// inserts it), in the caller's transaction; advances the version.
        async fn write_user_in(
            connection: &mut $connection,
            user: &mut $crate::users::model::UserRecord,
        ) -> Result<bool, $crate::jobs::ports::StoreError> {
            use $crate::store::millis;
            let data = serde_json::to_string(&*user)?;
            let owner = user.owner.as_deref().unwrap_or_default();
            let due_at = user.due_at().map(millis);
            let refuses_jobs = i64::from(user.refuses_jobs());
            let written = if user.version == 0 {
                sqlx::query(
                    "INSERT INTO users (user_id, owner, created_at, data, version, due_at, refuses_jobs)
                     VALUES ($1, $2, $3, $4, 1, $5, $6) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(&user.user_id)
                .bind(owner)
                .bind(millis(user.created_at))
                .bind(&data)
                .bind(due_at)
                .bind(refuses_jobs)
                .execute(&mut *connection)
                .await?
            } else {
                sqlx::query(
                    "UPDATE users SET owner = CASE WHEN owner = '' THEN $2 ELSE owner END, data = $3,
                                      version = version + 1, due_at = $4, refuses_jobs = $5
                     WHERE user_id = $1 AND version = $6",
                )
                .bind(&user.user_id)
                .bind(owner)
                .bind(&data)
                .bind(due_at)
                .bind(refuses_jobs)
                .bind(user.version)
                .execute(&mut *connection)
                .await?
            };
            if written.rows_affected() == 0 {
                return Ok(false);
            }
            user.version += 1;
            Ok(true)
        }

        /// Deletes every job and event of `user_id`, in the caller's
        /// transaction, which locked the user's jobs (`locked`) when its store
        /// has row locks.
        async fn erase_jobs_in(
            connection: &mut $connection,
            user_id: &str,
            locked: Option<Vec<$crate::jobs::model::ErasedJob>>,
        ) -> Result<$crate::jobs::model::Erasure, $crate::jobs::ports::StoreError> {
            use sqlx::Row as _;
            sqlx::query("DELETE FROM job_events WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *connection)
                .await?;
            let jobs = match locked {
                Some(locked) => {
                    for job in &locked {
                        sqlx::query("DELETE FROM jobs WHERE job_id = $1")
                            .bind(&job.job_id)
                            .execute(&mut *connection)
                            .await?;
                    }
                    locked
                }
                None => {
                    let rows = sqlx::query("DELETE FROM jobs WHERE user_id = $1 RETURNING job_id, owner")
                        .bind(user_id)
                        .fetch_all(&mut *connection)
                        .await?;
                    rows.iter()
                        .map(|row| {
                            Ok($crate::jobs::model::ErasedJob {
                                job_id: row.try_get("job_id")?,
                                owner: row.try_get("owner")?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()?
                }
            };
            let erasure = $crate::jobs::model::Erasure {
                user_id: user_id.to_owned(),
                jobs,
            };
            <$store>::announce_erasure(&mut *connection, &erasure).await?;
            Ok(erasure)
        }
    };
}

pub(crate) use sql_writes;
