//! The rows and writes both SQL stores share: decoding rows into jobs, events
//! and users, and the statements a batch of writes runs in one transaction.

/// Binds a save's eight parameters, in the order both save statements use
/// (`$1` to `$8`): the new state, data, version, last sequence, next poll and
/// update time, then the job_id and the version the save expects.
macro_rules! bind_save {
    ($query:expr, $next:expr, $job:expr, $data:expr) => {
        $query
            .bind($next.state.as_str())
            .bind(&$data)
            .bind($next.version)
            .bind($crate::store::sequence_column($next.last_sequence))
            .bind($next.next_poll_at.map($crate::store::millis))
            .bind($crate::store::millis($next.updated_at))
            .bind(&$next.job_id)
            .bind($job.version)
    };
}

pub(crate) use bind_save;

/// Defines, for `$store` on `$pool`, the row decoders and in-transaction
/// writes [`impl_job_store`](super::impl_job_store) builds on, and the
/// [`Transact`](crate::store::batch::Transact) the write queue commits with.
macro_rules! sql_writes {
    ($store:ty, $pool:ty, $row:ty, $connection:ty) => {
        /// Appends an event in the caller's transaction.
        async fn insert_event(
            connection: &mut $connection,
            job: &$crate::jobs::model::Job,
            kind: $crate::jobs::model::EventKind,
            data: &str,
        ) -> Result<$crate::jobs::model::JobEvent, $crate::jobs::ports::StoreError> {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO job_events (job_id, user_id, owner, sequence, kind, snapshot, created_at)
                 VALUES ($1, $2, $7, $3, $4, $5, $6) RETURNING id",
            )
            .bind(&job.job_id)
            .bind(&job.user_id)
            .bind($crate::store::sequence_column(job.last_sequence))
            .bind(kind.as_str())
            .bind(data)
            .bind($crate::store::millis(job.updated_at))
            .bind(job.owner.as_deref())
            .fetch_one(&mut *connection)
            .await?;
            let event = $crate::jobs::model::JobEvent {
                global_id: id,
                sequence: job.last_sequence,
                kind,
                at: job.updated_at,
                job: job.clone(),
            };
            Ok(event)
        }

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

        /// Inserts a new job with its `CREATED` event, in the caller's transaction.
        async fn create_in(
            connection: &mut $connection,
            job: &$crate::jobs::model::Job,
        ) -> Result<$crate::jobs::ports::Created, $crate::jobs::ports::StoreError> {
            use $crate::jobs::ports::{Created, StoreError};
            use $crate::store::millis;
            let mut job = job.clone();
            job.version = 1;
            job.last_sequence = 1;
            let data = serde_json::to_string(&job)?;
            // A deleted user's job is never stored, even by a submission racing
            // the deletion: the check and the insert are one statement, after
            // the store made sure no deletion is being marked meanwhile.
            <$store>::guard_user(&mut *connection, &job.user_id, millis(job.created_at)).await?;
            let inserted = sqlx::query(
                "INSERT INTO jobs (job_id, user_id, state, kind, owner, data, version, last_sequence, next_poll_at,
                                   created_at, updated_at)
                 SELECT $1, $2, $3, $8, $9, $4, 1, 1, $5, $6, $7
                 WHERE NOT EXISTS (SELECT 1 FROM users WHERE user_id = $2 AND refuses_jobs = 1)
                 ON CONFLICT (job_id) DO NOTHING",
            )
            .bind(&job.job_id)
            .bind(&job.user_id)
            .bind(job.state.as_str())
            .bind(&data)
            .bind(job.next_poll_at.map(millis))
            .bind(millis(job.created_at))
            .bind(millis(job.updated_at))
            .bind(job.kind.as_str())
            .bind(job.owner.as_deref())
            .execute(&mut *connection)
            .await?;
            if inserted.rows_affected() == 0 {
                let existing = sqlx::query("SELECT data, version, last_sequence FROM jobs WHERE job_id = $1")
                    .bind(&job.job_id)
                    .fetch_optional(&mut *connection)
                    .await?;
                if let Some(existing) = existing.as_ref().map(job_from_row).transpose()? {
                    return Ok(Created::Existing(existing));
                }
                let refused: Option<i64> =
                    sqlx::query_scalar("SELECT refuses_jobs FROM users WHERE user_id = $1 AND refuses_jobs = 1")
                        .bind(&job.user_id)
                        .fetch_optional(&mut *connection)
                        .await?;
                return match refused {
                    Some(_) => Ok(Created::UserErased),
                    None => Err(StoreError::Unavailable("job vanished during create".into())),
                };
            }
            let event = insert_event(
                &mut *connection,
                &job,
                $crate::jobs::model::EventKind::Created,
                &data,
            )
            .await?;
            Ok(Created::New(event))
        }

        /// Writes `job` if its stored version is still `job.version`, in the
        /// caller's transaction; answers with the job as written.
        async fn save_in(
            connection: &mut $connection,
            job: &$crate::jobs::model::Job,
            event: Option<$crate::jobs::model::EventKind>,
        ) -> Result<($crate::jobs::ports::Saved, $crate::jobs::model::Job), $crate::jobs::ports::StoreError> {
            use $crate::jobs::ports::Saved;
            let mut next = job.clone();
            next.version += 1;
            if event.is_some() {
                next.last_sequence += 1;
            }
            let data = serde_json::to_string(&next)?;
            if let (Some(kind), Some(sql)) = (event, <$store>::SAVE_WITH_EVENT_SQL) {
                let id: Option<i64> = $crate::store::sql::bind_save!(sqlx::query_scalar(sql), next, job, data)
                    .bind(kind.as_str())
                    .fetch_optional(&mut *connection)
                    .await?;
                let Some(id) = id else {
                    return Ok((Saved::Conflict, job.clone()));
                };
                let event = $crate::jobs::model::JobEvent {
                    global_id: id,
                    sequence: next.last_sequence,
                    kind,
                    at: next.updated_at,
                    job: next.clone(),
                };
                return Ok((Saved::Written(Some(Box::new(event))), next));
            }
            let update = sqlx::query(
                "UPDATE jobs SET state = $1, data = $2, version = $3, last_sequence = $4, next_poll_at = $5,
                                 updated_at = $6
                 WHERE job_id = $7 AND version = $8",
            );
            let updated = $crate::store::sql::bind_save!(update, next, job, data)
                .execute(&mut *connection)
                .await?;
            if updated.rows_affected() == 0 {
                return Ok((Saved::Conflict, job.clone()));
            }
            let written = match event {
                Some(kind) => Some(Box::new(
                    insert_event(&mut *connection, &next, kind, &data).await?,
                )),
                None => None,
            };
            Ok((Saved::Written(written), next))
        }

        #[async_trait::async_trait]
        impl $crate::store::batch::Transact for $pool {
            async fn transact(
                &self,
                writes: &[$crate::store::batch::Write],
            ) -> Result<Vec<$crate::store::batch::Written>, $crate::jobs::ports::StoreError> {
                use $crate::jobs::ports::{Created, Saved};
                use $crate::store::batch::{Write, Written};
                let mut tx = self.begin().await?;
                <$store>::before_batch(&mut *tx).await?;
                let mut written = Vec::with_capacity(writes.len());
                for write in writes {
                    written.push(match write {
                        Write::Create(job) => Written::Created(create_in(&mut *tx, job).await?),
                        Write::Save { job, event } => {
                            let (saved, job) = save_in(&mut *tx, job, *event).await?;
                            Written::Saved(saved, job)
                        }
                    });
                }
                let events: Vec<&$crate::jobs::model::JobEvent> = written
                    .iter()
                    .filter_map(|written| match written {
                        Written::Created(Created::New(event)) => Some(event),
                        Written::Saved(Saved::Written(Some(event)), _) => Some(&**event),
                        _ => None,
                    })
                    .collect();
                <$store>::after_batch(&mut *tx, &events).await?;
                tx.commit().await?;
                Ok(written)
            }
        }
    };
}

pub(crate) use sql_writes;
