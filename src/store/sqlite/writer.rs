//! Creates and saves on SQLite: one connection on a thread of its own runs a
//! whole batch and commits it. Through sqlx's pool each statement is a round
//! trip between the runtime and the connection's thread, about ten thread
//! switches a write; here a write is handed over once and answered once.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Statement, ToSql, TransactionBehavior};

use crate::jobs::model::{EventKind, Job};
use crate::jobs::ports::{Created, Saved, StoreError};
use crate::store::batch::{TransactBlocking, Write, Written};
use crate::store::sql::{
    INSERT_EVENT, INSERT_JOB, SELECT_JOB, UPDATE_JOB, USER_REFUSES_JOBS, first_version, next_version, written_event,
};
use crate::store::{decode_job, millis, sequence_column};

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        use rusqlite::Error::{FromSqlConversionFailure, IntegralValueOutOfRange, InvalidColumnType, Utf8Error};
        match error {
            FromSqlConversionFailure(..) | IntegralValueOutOfRange(..) | InvalidColumnType(..) | Utf8Error(..) => {
                Self::Corrupt(error.to_string())
            }
            other => Self::Unavailable(other.to_string()),
        }
    }
}

pub(super) struct Writer {
    connection: Connection,
}

impl Writer {
    /// Opens the database file at `path`, which must exist and be migrated.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags)
            .map_err(|error| StoreError::Unavailable(format!("opening {} to write: {error}", path.display())))?;
        connection.busy_timeout(Duration::from_secs(10))?;
        // As the pool's connections: acknowledged writes survive power loss.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        if let Err(error) = connection.prepare(SELECT_JOB) {
            return Err(StoreError::Unavailable(format!(
                "the SQLite writer does not see the jobs table of {} (an in-memory database cannot be shared \
                 between connections; name a file): {error}",
                path.display()
            )));
        }
        Ok(Self { connection })
    }
}

impl TransactBlocking for Writer {
    fn transact(&mut self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
        // Immediate: the write lock is taken at once, or waited for, rather
        // than found taken midway through the batch.
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let written = writes
            .iter()
            .map(|write| match write {
                Write::Create(job) => create(&tx, job).map(Written::Created),
                Write::Save { job, event } => save(&tx, job, *event).map(|(saved, job)| Written::Saved(saved, job)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(written)
    }
}

/// Inserts a new job with its `CREATED` event.
fn create(connection: &Connection, job: &Job) -> Result<Created, StoreError> {
    let (job, data) = first_version(job)?;
    let mut insert = connection.prepare_cached(INSERT_JOB)?;
    bind(
        &mut insert,
        &[
            &job.job_id,
            &job.user_id,
            &job.state.as_str(),
            &data,
            &job.next_poll_at.map(millis),
            &millis(job.created_at),
            &millis(job.updated_at),
            &job.kind.as_str(),
            &job.owner.as_deref(),
        ],
    )?;
    if insert.raw_execute()? == 0 {
        let mut select = connection.prepare_cached(SELECT_JOB)?;
        bind(&mut select, &[&job.job_id])?;
        let mut rows = select.raw_query();
        if let Some(row) = rows.next()? {
            let data: String = row.get(0)?;
            return Ok(Created::Existing(decode_job(&data, row.get(1)?, row.get(2)?)?));
        }
        drop(rows);
        let mut refused = connection.prepare_cached(USER_REFUSES_JOBS)?;
        bind(&mut refused, &[&job.user_id])?;
        return match refused.raw_query().next()? {
            Some(_) => Ok(Created::UserErased),
            None => Err(StoreError::Unavailable("job vanished during create".into())),
        };
    }
    let id = insert_event(connection, &job, EventKind::Created, &data)?;
    Ok(Created::New(written_event(id, &job, EventKind::Created)))
}

/// Writes `job` if its stored version is still `job.version`; answers with
/// the job as written.
fn save(connection: &Connection, job: &Job, event: Option<EventKind>) -> Result<(Saved, Job), StoreError> {
    let (next, data) = next_version(job, event)?;
    let mut update = connection.prepare_cached(UPDATE_JOB)?;
    bind(
        &mut update,
        &[
            &next.state.as_str(),
            &data,
            &next.version,
            &sequence_column(next.last_sequence),
            &next.next_poll_at.map(millis),
            &millis(next.updated_at),
            &next.job_id,
            &job.version,
        ],
    )?;
    if update.raw_execute()? == 0 {
        return Ok((Saved::Conflict, job.clone()));
    }
    let Some(kind) = event else {
        return Ok((Saved::Written(None), next));
    };
    let id = insert_event(connection, &next, kind, &data)?;
    Ok((Saved::Written(Some(Box::new(written_event(id, &next, kind)))), next))
}

/// Appends `job`'s latest event, whose snapshot is `data`; answers its id.
fn insert_event(connection: &Connection, job: &Job, kind: EventKind, data: &str) -> Result<i64, StoreError> {
    let mut insert = connection.prepare_cached(INSERT_EVENT)?;
    bind(
        &mut insert,
        &[
            &job.job_id,
            &job.user_id,
            &sequence_column(job.last_sequence),
            &kind.as_str(),
            &data,
            &millis(job.updated_at),
            &job.owner.as_deref(),
        ],
    )?;
    let mut rows = insert.raw_query();
    let row = rows
        .next()?
        .ok_or_else(|| StoreError::Unavailable("an event insert answered no id".into()))?;
    Ok(row.get(0)?)
}

/// The placeholders of the shared statements, named as sqlx names them.
const NUMBERED: [&str; 9] = ["$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9"];

/// Binds `values` to `$1`, `$2`, ... in order, as sqlx does, so both drivers
/// run the same statements.
fn bind(statement: &mut Statement<'_>, values: &[&dyn ToSql]) -> rusqlite::Result<()> {
    if values.len() > NUMBERED.len() {
        return Err(rusqlite::Error::InvalidParameterCount(values.len(), NUMBERED.len()));
    }
    for (name, value) in NUMBERED.into_iter().zip(values) {
        statement.raw_bind_parameter(name, value)?;
    }
    Ok(())
}
