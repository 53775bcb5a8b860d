//! The SQL both stores share. The same statements run on SQLite and PostgreSQL
//! (`$N` placeholders, `CAST(.. AS TEXT)`); what differs between them — opening
//! and migrating, what surrounds a batch of writes, claiming due jobs — each
//! store defines as inherent `before_batch`, `after_batch` and `CLAIM_DUE_SQL`.

/// Implements [`JobStore`](crate::jobs::ports::JobStore) for `$store`, whose pool is `$pool`,
/// whose rows are `$row` and whose connections are `$connection`; writes go
/// through the store's [`WriteQueue`](super::batch::WriteQueue) in `writes`.
macro_rules! impl_job_store {
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
            use $crate::store::millis;
            let mut next = job.clone();
            next.version += 1;
            if event.is_some() {
                next.last_sequence += 1;
            }
            let data = serde_json::to_string(&next)?;
            if let (Some(kind), Some(sql)) = (event, <$store>::SAVE_WITH_EVENT_SQL) {
                let id: Option<i64> = sqlx::query_scalar(sql)
                    .bind(next.state.as_str())
                    .bind(&data)
                    .bind(next.version)
                    .bind($crate::store::sequence_column(next.last_sequence))
                    .bind(next.next_poll_at.map(millis))
                    .bind(millis(next.updated_at))
                    .bind(&next.job_id)
                    .bind(job.version)
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
            let updated = sqlx::query(
                "UPDATE jobs SET state = $1, data = $2, version = $3, last_sequence = $4, next_poll_at = $5,
                                 updated_at = $6
                 WHERE job_id = $7 AND version = $8",
            )
            .bind(next.state.as_str())
            .bind(&data)
            .bind(next.version)
            .bind($crate::store::sequence_column(next.last_sequence))
            .bind(next.next_poll_at.map(millis))
            .bind(millis(next.updated_at))
            .bind(&next.job_id)
            .bind(job.version)
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

        #[async_trait::async_trait]
        impl $crate::jobs::ports::JobStore for $store {
            async fn create(
                &self,
                job: &$crate::jobs::model::Job,
            ) -> Result<$crate::jobs::ports::Created, $crate::jobs::ports::StoreError> {
                match self
                    .writes
                    .write($crate::store::batch::Write::Create(job.clone()))
                    .await?
                {
                    $crate::store::batch::Written::Created(created) => Ok(created),
                    $crate::store::batch::Written::Saved(..) => unreachable!("a create answers as a create"),
                }
            }

            async fn get(
                &self,
                job_id: &str,
            ) -> Result<Option<$crate::jobs::model::Job>, $crate::jobs::ports::StoreError> {
                let row = sqlx::query("SELECT data, version, last_sequence FROM jobs WHERE job_id = $1")
                    .bind(job_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(job_from_row).transpose()
            }

            async fn save(
                &self,
                job: &mut $crate::jobs::model::Job,
                event: Option<$crate::jobs::model::EventKind>,
            ) -> Result<$crate::jobs::ports::Saved, $crate::jobs::ports::StoreError> {
                let write = $crate::store::batch::Write::Save {
                    job: job.clone(),
                    event,
                };
                match self.writes.write(write).await? {
                    $crate::store::batch::Written::Saved(saved, written) => {
                        if let $crate::jobs::ports::Saved::Written(_) = saved {
                            *job = written;
                        }
                        Ok(saved)
                    }
                    $crate::store::batch::Written::Created(_) => unreachable!("a save answers as a save"),
                }
            }

            async fn job_events(
                &self,
                job_id: &str,
                after_sequence: u64,
                limit: u32,
            ) -> Result<Vec<$crate::jobs::model::JobEvent>, $crate::jobs::ports::StoreError> {
                let rows = sqlx::query(
                    "SELECT id, sequence, kind, snapshot, created_at FROM job_events
                     WHERE job_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
                )
                .bind(job_id)
                .bind(i64::try_from(after_sequence).unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(event_from_row).collect()
            }

            async fn log_events(
                &self,
                after_global_id: i64,
                filter: &$crate::jobs::model::LogFilter,
                limit: u32,
            ) -> Result<Vec<$crate::jobs::model::JobEvent>, $crate::jobs::ports::StoreError> {
                // One statement per filter, each served by its own index.
                let (sql, first, second) = match (filter.user_id.as_deref(), filter.owner.as_deref()) {
                    (None, None) => (
                        "SELECT id, sequence, kind, snapshot, created_at FROM job_events
                         WHERE id > $1 ORDER BY id LIMIT $2",
                        None,
                        None,
                    ),
                    (Some(user), None) => (
                        "SELECT id, sequence, kind, snapshot, created_at FROM job_events
                         WHERE user_id = $3 AND id > $1 ORDER BY id LIMIT $2",
                        Some(user),
                        None,
                    ),
                    (None, Some(owner)) => (
                        "SELECT id, sequence, kind, snapshot, created_at FROM job_events
                         WHERE owner = $3 AND id > $1 ORDER BY id LIMIT $2",
                        Some(owner),
                        None,
                    ),
                    (Some(user), Some(owner)) => (
                        "SELECT id, sequence, kind, snapshot, created_at FROM job_events
                         WHERE user_id = $3 AND owner = $4 AND id > $1 ORDER BY id LIMIT $2",
                        Some(user),
                        Some(owner),
                    ),
                };
                let mut query = sqlx::query(sql).bind(after_global_id).bind(i64::from(limit));
                if let Some(first) = first {
                    query = query.bind(first);
                }
                if let Some(second) = second {
                    query = query.bind(second);
                }
                let rows = query.fetch_all(&self.pool).await?;
                rows.iter().map(event_from_row).collect()
            }

            async fn last_global_id(&self, owner: Option<&str>) -> Result<i64, $crate::jobs::ports::StoreError> {
                let query = match owner {
                    None => sqlx::query_scalar("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM job_events"),
                    Some(owner) => sqlx::query_scalar(
                        "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM job_events WHERE owner = $1",
                    )
                    .bind(owner),
                };
                Ok(query.fetch_one(&self.pool).await?)
            }

            async fn claim_due(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                lease: std::time::Duration,
                limit: u32,
            ) -> Result<Vec<$crate::jobs::model::Job>, $crate::jobs::ports::StoreError> {
                use $crate::store::millis;
                let lease_until = millis(now) + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
                let rows = sqlx::query(Self::CLAIM_DUE_SQL)
                    .bind(lease_until)
                    .bind(millis(now))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(job_from_row).collect()
            }

            async fn release_lease(&self, job_id: &str) -> Result<(), $crate::jobs::ports::StoreError> {
                sqlx::query("UPDATE jobs SET lease_until = NULL WHERE job_id = $1")
                    .bind(job_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn backlog(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::jobs::ports::Backlog, $crate::jobs::ports::StoreError> {
                let due: i64 = sqlx::query_scalar(
                    "SELECT CAST(COUNT(*) AS BIGINT) FROM jobs WHERE next_poll_at IS NOT NULL AND next_poll_at <= $1",
                )
                .bind($crate::store::millis(now))
                .fetch_one(&self.pool)
                .await?;
                let oldest: Option<i64> =
                    sqlx::query_scalar("SELECT MIN(created_at) FROM jobs WHERE state NOT IN ('COMPLETED', 'FAILED')")
                        .fetch_one(&self.pool)
                        .await?;
                Ok($crate::jobs::ports::Backlog {
                    due: u64::try_from(due).unwrap_or_default(),
                    oldest_unfinished: oldest.map($crate::store::from_millis),
                })
            }

            async fn list_jobs(
                &self,
                filter: &$crate::jobs::ports::JobFilter,
                after: Option<&$crate::jobs::ports::JobCursor>,
                limit: u32,
            ) -> Result<Vec<$crate::jobs::model::Job>, $crate::jobs::ports::StoreError> {
                // Only the conditions asked for, so each combination is a plain
                // range scan of `jobs_newest` or `jobs_newest_by_user`.
                let mut sql = String::from("SELECT data, version, last_sequence FROM jobs WHERE TRUE");
                let mut next = 0;
                let mut placeholder = || {
                    next += 1;
                    format!("${next}")
                };
                if filter.owner.is_some() {
                    sql += &format!(" AND owner = {}", placeholder());
                }
                if filter.user_id.is_some() {
                    sql += &format!(" AND user_id = {}", placeholder());
                }
                if filter.state.is_some() {
                    sql += &format!(" AND state = {}", placeholder());
                }
                if filter.kind.is_some() {
                    sql += &format!(" AND kind = {}", placeholder());
                }
                if after.is_some() {
                    let (at, at_again, job_id) = (placeholder(), placeholder(), placeholder());
                    sql += &format!(" AND (created_at < {at} OR (created_at = {at_again} AND job_id < {job_id}))");
                }
                sql += &format!(" ORDER BY created_at DESC, job_id DESC LIMIT {}", placeholder());
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                if let Some(owner) = &filter.owner {
                    query = query.bind(owner);
                }
                if let Some(user_id) = &filter.user_id {
                    query = query.bind(user_id);
                }
                if let Some(state) = filter.state {
                    query = query.bind(state.as_str());
                }
                if let Some(kind) = filter.kind {
                    query = query.bind(kind.as_str());
                }
                if let Some(cursor) = after {
                    query = query
                        .bind(cursor.created_ms)
                        .bind(cursor.created_ms)
                        .bind(&cursor.job_id);
                }
                let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
                rows.iter().map(job_from_row).collect()
            }

            async fn claim_user(&self, user_id: &str, owner: &str) -> Result<String, $crate::jobs::ports::StoreError> {
                sqlx::query(
                    "INSERT INTO users (user_id, owner, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id) DO UPDATE SET owner = excluded.owner WHERE users.owner = ''",
                )
                .bind(user_id)
                .bind(owner)
                .bind($crate::store::millis(chrono::Utc::now()))
                .execute(&self.pool)
                .await?;
                self.user_owner(user_id)
                    .await?
                    .ok_or_else(|| $crate::jobs::ports::StoreError::Unavailable("a claimed user vanished".into()))
            }

            async fn user_owner(&self, user_id: &str) -> Result<Option<String>, $crate::jobs::ports::StoreError> {
                let owner: Option<String> = sqlx::query_scalar("SELECT owner FROM users WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await?;
                // A user first managed while authentication was off is nobody's.
                Ok(owner.filter(|owner| !owner.is_empty()))
            }

            async fn user(
                &self,
                user_id: &str,
            ) -> Result<Option<$crate::users::model::UserRecord>, $crate::jobs::ports::StoreError> {
                let row = sqlx::query("SELECT user_id, owner, created_at, data, version FROM users WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn put_user(
                &self,
                user: &mut $crate::users::model::UserRecord,
            ) -> Result<bool, $crate::jobs::ports::StoreError> {
                let mut connection = self.pool.acquire().await?;
                write_user_in(&mut *connection, user).await
            }

            async fn user_activity(
                &self,
                user_id: &str,
            ) -> Result<$crate::jobs::ports::Activity, $crate::jobs::ports::StoreError> {
                let (count, last): (i64, Option<i64>) =
                    sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT), MAX(updated_at) FROM jobs WHERE user_id = $1")
                        .bind(user_id)
                        .fetch_one(&self.pool)
                        .await?;
                let enrollment = sqlx::query(
                    "SELECT data, version, last_sequence FROM jobs WHERE user_id = $1 AND kind = 'ENROLLMENT'
                     ORDER BY created_at DESC, job_id DESC LIMIT 1",
                )
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok($crate::jobs::ports::Activity {
                    job_count: u64::try_from(count).unwrap_or_default(),
                    last_job_at: last.map($crate::store::from_millis),
                    latest_enrollment: enrollment.as_ref().map(job_from_row).transpose()?,
                })
            }

            async fn erase_user(
                &self,
                user: &mut $crate::users::model::UserRecord,
            ) -> Result<Option<$crate::jobs::model::Erasure>, $crate::jobs::ports::StoreError> {
                let mut tx = self.pool.begin().await?;
                // The jobs before the user: a submission holds a job and then
                // waits for its user, never the other way round.
                let locked = <$store>::lock_jobs_of(&mut *tx, &user.user_id).await?;
                if !write_user_in(&mut *tx, user).await? {
                    return Ok(None);
                }
                let erasure = erase_jobs_in(&mut *tx, &user.user_id, locked).await?;
                tx.commit().await?;
                Ok(Some(erasure))
            }

            async fn erase_jobs_of(
                &self,
                user_id: &str,
            ) -> Result<$crate::jobs::model::Erasure, $crate::jobs::ports::StoreError> {
                let mut tx = self.pool.begin().await?;
                let locked = <$store>::lock_jobs_of(&mut *tx, user_id).await?;
                let erasure = erase_jobs_in(&mut *tx, user_id, locked).await?;
                tx.commit().await?;
                Ok(erasure)
            }

            async fn due_user_operations(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::users::model::UserRecord>, $crate::jobs::ports::StoreError> {
                let rows = sqlx::query(
                    "SELECT user_id, owner, created_at, data, version FROM users
                     WHERE due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at LIMIT $2",
                )
                .bind($crate::store::millis(now))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(user_from_row).collect()
            }

            async fn idle_users(
                &self,
                before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<String>, $crate::jobs::ports::StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT user_id FROM jobs GROUP BY user_id
                     HAVING MAX(updated_at) < $1
                        AND SUM(CASE WHEN state IN ('COMPLETED', 'FAILED') THEN 0 ELSE 1 END) = 0
                     ORDER BY MAX(updated_at) LIMIT $2",
                )
                .bind($crate::store::millis(before))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn delete_finished(
                &self,
                before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<String>, $crate::jobs::ports::StoreError> {
                let mut tx = self.pool.begin().await?;
                if !<$store>::may_delete(&mut *tx).await? {
                    return Ok(Vec::new());
                }
                // Writes first (see `erase_jobs_in`); both pick the same batch.
                let batch = "SELECT job_id FROM jobs WHERE state IN ('COMPLETED', 'FAILED') AND updated_at < $1
                             ORDER BY updated_at, job_id LIMIT $2";
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM job_events WHERE job_id IN ({batch})"
                )))
                .bind($crate::store::millis(before))
                .bind(i64::from(limit))
                .execute(&mut *tx)
                .await?;
                let doomed: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM jobs WHERE job_id IN ({batch}) RETURNING job_id"
                )))
                .bind($crate::store::millis(before))
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(doomed)
            }

            async fn ping(&self) -> Result<(), $crate::jobs::ports::StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            fn is_shared(&self) -> bool {
                Self::SHARED
            }
        }
    };
}

pub(super) use impl_job_store;
