//! A batch of creates and saves on PostgreSQL: one transaction under the
//! event-log lock, whose events are announced to the other replicas on commit.

use sqlx::postgres::{PgConnection, PgPool};

use super::{EVENT_LOG_LOCK, notify};
use crate::jobs::model::{EventKind, Job, JobEvent};
use crate::jobs::ports::{Created, Saved, StoreError};
use crate::store::batch::{Transact, Write, Written};
use crate::store::sql::{
    INSERT_EVENT, INSERT_JOB, SELECT_JOB, UPDATE_JOB, USER_REFUSES_JOBS, first_version, next_version, written_event,
};
use crate::store::{millis, sequence_column};

/// A job change and its event in one statement: one round trip per write
/// where two would queue behind each other in a batch. Binds as
/// [`UPDATE_JOB`], then `$9` the event's kind. No row: a conflict.
const SAVE_WITH_EVENT: &str = "WITH updated AS (
         UPDATE jobs SET state = $1, data = $2, version = $3, last_sequence = $4, next_poll_at = $5,
                         updated_at = $6
         WHERE job_id = $7 AND version = $8 RETURNING job_id, user_id, owner)
     INSERT INTO job_events (job_id, user_id, owner, sequence, kind, snapshot, created_at)
     SELECT job_id, user_id, owner, $4, $9, $2, $6 FROM updated RETURNING id";

#[async_trait::async_trait]
impl Transact for PgPool {
    async fn transact(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
        let mut tx = self.begin().await?;
        // Event ids are allocated and committed in id order (see the module above).
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_LOG_LOCK)
            .execute(&mut *tx)
            .await?;
        let mut written = Vec::with_capacity(writes.len());
        for write in writes {
            written.push(match write {
                Write::Create(job) => Written::Created(create(&mut tx, job).await?),
                Write::Save { job, event } => {
                    let (saved, job) = save(&mut tx, job, *event).await?;
                    Written::Saved(saved, job)
                }
            });
        }
        let events: Vec<&JobEvent> = written
            .iter()
            .filter_map(|written| match written {
                Written::Created(Created::New(event)) => Some(event),
                Written::Saved(Saved::Written(Some(event)), _) => Some(&**event),
                _ => None,
            })
            .collect();
        notify::announce_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(written)
    }
}

/// Inserts a new job with its `CREATED` event.
async fn create(tx: &mut PgConnection, job: &Job) -> Result<Created, StoreError> {
    let (job, data) = first_version(job)?;
    guard_user(tx, &job.user_id, millis(job.created_at)).await?;
    let inserted = sqlx::query(INSERT_JOB)
        .bind(&job.job_id)
        .bind(&job.user_id)
        .bind(job.state.as_str())
        .bind(&data)
        .bind(job.next_poll_at.map(millis))
        .bind(millis(job.created_at))
        .bind(millis(job.updated_at))
        .bind(job.kind.as_str())
        .bind(job.owner.as_deref())
        .execute(&mut *tx)
        .await?;
    if inserted.rows_affected() == 0 {
        let existing = sqlx::query(SELECT_JOB)
            .bind(&job.job_id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(existing) = existing.as_ref().map(super::job_from_row).transpose()? {
            return Ok(Created::Existing(existing));
        }
        let refused: Option<i64> = sqlx::query_scalar(USER_REFUSES_JOBS)
            .bind(&job.user_id)
            .fetch_optional(&mut *tx)
            .await?;
        return match refused {
            Some(_) => Ok(Created::UserErased),
            None => Err(StoreError::Unavailable("job vanished during create".into())),
        };
    }
    let id: i64 = sqlx::query_scalar(INSERT_EVENT)
        .bind(&job.job_id)
        .bind(&job.user_id)
        .bind(sequence_column(job.last_sequence))
        .bind(EventKind::Created.as_str())
        .bind(&data)
        .bind(millis(job.updated_at))
        .bind(job.owner.as_deref())
        .fetch_one(&mut *tx)
        .await?;
    Ok(Created::New(written_event(id, &job, EventKind::Created)))
}

/// Holds `user_id`'s row (made if missing) in share mode until the
/// transaction ends: a deletion marked meanwhile waits for this job to be
/// stored, and one marked before is seen by the insert that follows.
async fn guard_user(tx: &mut PgConnection, user_id: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO users (user_id, owner, created_at) VALUES ($1, '', $2) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT 1 FROM users WHERE user_id = $1 FOR SHARE")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Binds a save's eight parameters in [`UPDATE_JOB`]'s order.
macro_rules! bind_save {
    ($query:expr, $next:expr, $data:expr, $expected:expr) => {
        $query
            .bind($next.state.as_str())
            .bind($data)
            .bind($next.version)
            .bind(sequence_column($next.last_sequence))
            .bind($next.next_poll_at.map(millis))
            .bind(millis($next.updated_at))
            .bind(&$next.job_id)
            .bind($expected)
    };
}

/// Writes `job` if its stored version is still `job.version`; answers with
/// the job as written.
async fn save(tx: &mut PgConnection, job: &Job, event: Option<EventKind>) -> Result<(Saved, Job), StoreError> {
    let (next, data) = next_version(job, event)?;
    let Some(kind) = event else {
        let updated = bind_save!(sqlx::query(UPDATE_JOB), next, &data, job.version)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok((Saved::Conflict, job.clone()));
        }
        return Ok((Saved::Written(None), next));
    };
    let id: Option<i64> = bind_save!(sqlx::query_scalar(SAVE_WITH_EVENT), next, &data, job.version)
        .bind(kind.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let Some(id) = id else {
        return Ok((Saved::Conflict, job.clone()));
    };
    Ok((Saved::Written(Some(Box::new(written_event(id, &next, kind)))), next))
}
