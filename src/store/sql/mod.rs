//! The SQL both stores share. The same statements run on SQLite and PostgreSQL
//! (`$N` placeholders, `CAST(.. AS TEXT)`); what differs between them — opening
//! and migrating, committing a batch of creates and saves, claiming due jobs,
//! locking for erasures and retention — each store defines itself.

mod writes;

pub(super) use writes::{
    INSERT_EVENT, INSERT_JOB, SELECT_JOB, UPDATE_JOB, USER_REFUSES_JOBS, first_version, next_version, sql_writes,
    written_event,
};

/// Implements [`JobStore`](crate::jobs::ports::JobStore) for `$store`, whose pool is `$pool`,
/// whose rows are `$row` and whose connections are `$connection`; writes go
/// through the store's [`WriteQueue`](super::batch::WriteQueue) in `writes`.
/// [`sql_writes`] must be invoked beside it, with the same arguments.
macro_rules! impl_job_store {
    ($store:ty, $pool:ty, $row:ty, $connection:ty) => {
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
                let row = sqlx::query($crate::store::sql::SELECT_JOB)
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
