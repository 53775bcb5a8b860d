//! [`UserService`]: accepts user operations, carries them out at Smile ID, and
//! applies what they mean to the store.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::model::{Operation, Pending, UserRecord};
use crate::jobs::model::{Refusal, RefusalCause};
use crate::jobs::ports::{Activity, EventFanout, ManageFailure, SharedStore, SmileId};
use crate::jobs::{JobError, JobProblem, ProblemReason, UnavailableReason};

/// The log target of audit events (the same trail as reads of results).
const AUDIT: &str = crate::auth::audit::TARGET;
/// Users whose due operations one pass of the worker takes up.
const DUE_BATCH: u32 = 16;
/// Compare-and-set rounds before a write under contention gives up.
const WRITE_ROUNDS: usize = 32;

#[derive(Clone, Copy, Debug)]
pub struct UserConfig {
    /// How long one call waits for its operation before answering
    /// USER_OPERATION_IN_PROGRESS (a shorter call deadline wins).
    pub wait: Duration,
    /// The first pause between attempts; it doubles up to `longest_retry`.
    pub first_retry: Duration,
    pub longest_retry: Duration,
    /// How often the worker looks for operations whose next attempt is due.
    pub every: Duration,
}

impl Default for UserConfig {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(10),
            first_retry: Duration::from_millis(200),
            longest_retry: Duration::from_mins(5),
            every: Duration::from_secs(1),
        }
    }
}

impl UserConfig {
    /// How long an attempt owns an operation: longer than it may wait, so
    /// two never run at once, and short enough that a dead replica's
    /// operation is taken over soon.
    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.wait + Duration::from_secs(5)).unwrap_or(chrono::Duration::MAX)
    }
}

/// A user as GetUser and the operations answer with it.
#[derive(Clone, Debug, PartialEq)]
pub struct UserView {
    pub user: UserRecord,
    pub activity: Activity,
}

/// What accepting an operation found.
enum Accepted {
    /// The user stands as the operation would leave them already.
    Done,
    /// This call owns the operation's next attempt.
    Leased(Box<UserRecord>),
    /// Another call or replica is carrying it out now.
    Elsewhere,
}

#[derive(Clone)]
pub struct UserService {
    store: SharedStore,
    fanout: Arc<dyn EventFanout>,
    smile: Arc<dyn SmileId>,
    config: UserConfig,
    shutdown: CancellationToken,
}

impl UserService {
    pub fn new(
        store: SharedStore,
        fanout: Arc<dyn EventFanout>,
        smile: Arc<dyn SmileId>,
        config: UserConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            fanout,
            smile,
            config,
            shutdown,
        }
    }

    pub fn config(&self) -> &UserConfig {
        &self.config
    }

    /// What the service knows of `user_id`: its record, or its jobs alone
    /// when nothing was ever set for it.
    pub async fn get(&self, user_id: &str) -> Result<UserView, JobError> {
        let user = self.store.user(user_id).await?;
        let activity = self.store.user_activity(user_id).await?;
        let user = match user {
            Some(user) => user,
            // Jobs, but nothing ever set: what the jobs say is all there is.
            None if activity.job_count > 0 => UserRecord::new(user_id, None, Utc::now()),
            None => {
                return Err(JobError::UserNotFound {
                    user_id: user_id.to_owned(),
                });
            }
        };
        Ok(UserView { user, activity })
    }

    /// Carries out `operation` for `user_id` on behalf of `by`, waiting for
    /// Smile ID until `deadline`; the user as it then stands. A user nobody
    /// owns yet becomes `by`'s.
    pub async fn operate(
        &self,
        user_id: &str,
        operation: Operation,
        by: Option<String>,
        deadline: Instant,
    ) -> Result<UserView, JobError> {
        let deadline = deadline.min(Instant::now() + self.config.wait);
        match self.accept(user_id, operation, by).await? {
            Accepted::Done => {}
            Accepted::Leased(user) => self.carry_out(*user, deadline).await?,
            Accepted::Elsewhere => self.wait_elsewhere(user_id, operation, deadline).await?,
        }
        self.get(user_id).await
    }

    /// Stores the operation as pending (or joins the same one pending) and
    /// takes its lease when nobody holds it.
    async fn accept(&self, user_id: &str, operation: Operation, by: Option<String>) -> Result<Accepted, JobError> {
        for _ in 0..WRITE_ROUNDS {
            let now = Utc::now();
            let mut user = match self.store.user(user_id).await? {
                Some(user) => user,
                None => UserRecord::new(user_id, by.clone(), now),
            };
            if user.is_deleted() {
                return match operation {
                    Operation::Delete => Ok(Accepted::Done),
                    _ => Err(JobError::UserDeleted {
                        user_id: user_id.to_owned(),
                    }),
                };
            }
            let fresh = match &user.pending {
                Some(pending) if pending.operation != operation => {
                    return Err(pending_error(user_id, pending.operation, Duration::from_secs(1)));
                }
                Some(pending) if pending.leased_at(now) => return Ok(Accepted::Elsewhere),
                Some(_) => false,
                None if operation.is_done_for(&user) => return Ok(Accepted::Done),
                None => {
                    user.pending = Some(Pending {
                        operation,
                        requested_by: by.clone(),
                        requested_at: now,
                        attempts: 0,
                        next_attempt_at: now,
                        lease_until: None,
                        last_error: None,
                    });
                    true
                }
            };
            if let Some(pending) = user.pending.as_mut() {
                pending.lease_until = Some(now + self.config.lease());
            }
            if self.store.put_user(&mut user).await? {
                if fresh {
                    info!(target: AUDIT, caller = by.as_deref().unwrap_or("anyone"), user_id, operation = operation.as_str(), "audit: user operation accepted");
                }
                return Ok(Accepted::Leased(Box::new(user)));
            }
        }
        Err(contention())
    }

    /// Sends the leased operation to Smile ID until it is done, refused, or
    /// `deadline` comes; then the next attempt is the worker's.
    async fn carry_out(&self, mut user: UserRecord, deadline: Instant) -> Result<(), JobError> {
        let Some(operation) = user.pending.as_ref().map(|pending| pending.operation) else {
            return Ok(());
        };
        let mut backoff = self.config.first_retry;
        loop {
            let answer = tokio::select! {
                answer = self.smile.manage_user(&user.user_id, operation) => answer,
                () = tokio::time::sleep_until(deadline) => Err(ManageFailure::Unavailable {
                    retry_after: None,
                    detail: "smile id did not answer before the call's deadline".into(),
                }),
            };
            match answer {
                Ok(()) => return self.complete(user).await,
                Err(ManageFailure::Refused(refusal)) => {
                    let problem = refusal_problem(&refusal);
                    self.give_up(user, &problem).await?;
                    return Err(JobError::Rejected(problem));
                }
                Err(ManageFailure::Unavailable { retry_after, detail }) => {
                    warn!(user_id = ?user.user_id, operation = operation.as_str(), error = %detail, "user operation not confirmed by smile id");
                    let wait = retry_after.unwrap_or(backoff).min(self.config.longest_retry);
                    backoff = (backoff * 2).min(self.config.longest_retry);
                    if Instant::now() + wait >= deadline || self.shutdown.is_cancelled() {
                        self.postpone(&mut user, wait, detail).await?;
                        return Err(pending_error(
                            &user.user_id,
                            operation,
                            wait.max(Duration::from_secs(1)),
                        ));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Hands the next attempt to the worker, `wait` from now.
    async fn postpone(&self, user: &mut UserRecord, wait: Duration, detail: String) -> Result<(), JobError> {
        let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        if let Some(pending) = user.pending.as_mut() {
            pending.attempts += 1;
            pending.next_attempt_at = next;
            pending.lease_until = None;
            pending.last_error = Some(detail);
        }
        // Lost to another writer: its copy still holds the operation, due when its lease ends.
        self.store.put_user(user).await?;
        Ok(())
    }

    /// Records that Smile ID carried the operation out; a deletion erases the
    /// user's jobs in the same transaction.
    async fn complete(&self, mut user: UserRecord) -> Result<(), JobError> {
        for _ in 0..WRITE_ROUNDS {
            let requested_by = user.pending.as_ref().and_then(|pending| pending.requested_by.clone());
            let Some(operation) = user.complete(Utc::now()) else {
                return Ok(());
            };
            let written = if operation == Operation::Delete {
                match self.store.erase_user(&mut user).await? {
                    Some(erasure) => {
                        let jobs = erasure.jobs.len();
                        self.announce(erasure);
                        // A submission whose insert raced the tombstone's commit.
                        let late = self.store.erase_jobs_of(&user.user_id).await?;
                        if !late.jobs.is_empty() {
                            self.announce(late);
                        }
                        info!(user_id = ?user.user_id, jobs, "user erased");
                        true
                    }
                    None => false,
                }
            } else {
                self.store.put_user(&mut user).await?
            };
            if written {
                info!(target: AUDIT, caller = requested_by.as_deref().unwrap_or("anyone"), user_id = user.user_id, operation = operation.as_str(), "audit: user operation carried out");
                return Ok(());
            }
            match self.store.user(&user.user_id).await? {
                Some(again)
                    if again
                        .pending
                        .as_ref()
                        .is_some_and(|pending| pending.operation == operation) =>
                {
                    user = again;
                }
                // Someone else recorded it.
                _ => return Ok(()),
            }
        }
        Err(contention())
    }

    /// Drops an operation Smile ID refused.
    async fn give_up(&self, mut user: UserRecord, problem: &JobProblem) -> Result<(), JobError> {
        for _ in 0..WRITE_ROUNDS {
            let Some(pending) = user.pending.take() else {
                return Ok(());
            };
            if self.store.put_user(&mut user).await? {
                warn!(target: AUDIT, caller = pending.requested_by.as_deref().unwrap_or("anyone"), user_id = user.user_id, operation = pending.operation.as_str(), error = %problem.message, "audit: user operation refused by smile id");
                return Ok(());
            }
            match self.store.user(&user.user_id).await? {
                Some(again) => user = again,
                None => return Ok(()),
            }
        }
        Err(contention())
    }

    /// Waits while another call or replica carries the operation out.
    async fn wait_elsewhere(&self, user_id: &str, operation: Operation, deadline: Instant) -> Result<(), JobError> {
        loop {
            let user = self.store.user(user_id).await?;
            let pending = user.as_ref().and_then(|user| user.pending.as_ref());
            match pending {
                Some(pending) if pending.operation == operation => {}
                Some(other) => return Err(pending_error(user_id, other.operation, Duration::from_secs(1))),
                None => return Ok(()),
            }
            if Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(pending_error(user_id, operation, Duration::from_secs(1)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn announce(&self, erasure: crate::jobs::model::Erasure) {
        self.fanout.publish_erasure(erasure);
    }

    /// Carries out every accepted operation whose next attempt is due, until
    /// shutdown: what callers stopped waiting for, and what a dead replica left.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.config.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            if let Err(error) = self.carry_out_due().await {
                warn!(error = %error, "carrying out due user operations failed; trying again later");
            }
        }
    }

    /// One pass of [`run`](Self::run).
    pub async fn carry_out_due(&self) -> Result<(), JobError> {
        for mut user in self.store.due_user_operations(Utc::now(), DUE_BATCH).await? {
            let now = Utc::now();
            let Some(pending) = user.pending.as_mut().filter(|pending| !pending.leased_at(now)) else {
                continue;
            };
            pending.lease_until = Some(now + self.config.lease());
            if !self.store.put_user(&mut user).await? {
                continue;
            }
            let user_id = user.user_id.clone();
            match self.carry_out(user, Instant::now() + self.config.wait).await {
                Ok(()) | Err(JobError::UserOperationPending { .. }) => {}
                Err(error) => warn!(user_id, error = %error, "a user operation ended without effect"),
            }
        }
        Ok(())
    }
}

fn pending_error(user_id: &str, operation: Operation, retry_after: Duration) -> JobError {
    JobError::UserOperationPending {
        user_id: user_id.to_owned(),
        operation,
        retry_after,
    }
}

fn contention() -> JobError {
    JobError::Unavailable {
        reason: UnavailableReason::Contention,
        message: "the user is being updated concurrently; retry".into(),
        retry_after: Some(Duration::from_millis(100)),
    }
}

/// What a Smile ID refusal of a user operation tells the caller.
fn refusal_problem(refusal: &Refusal) -> JobProblem {
    let (reason, message) = match refusal.cause {
        RefusalCause::Credentials => (
            ProblemReason::UpstreamAuthFailed,
            "Smile ID refused this service's credentials; check the partner id, API key and environment".to_owned(),
        ),
        _ => (
            ProblemReason::UpstreamRejected,
            format!("Smile ID refused the user operation: {}", refusal.message),
        ),
    };
    JobProblem {
        reason,
        message,
        smile_code: Some(refusal.code.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::ServiceConfig;
    use crate::jobs::testing::{Harness, SmileCall};

    fn users() -> (Harness, UserService) {
        let config = ServiceConfig {
            users: UserConfig {
                wait: Duration::from_millis(300),
                first_retry: Duration::from_millis(20),
                ..UserConfig::default()
            },
            ..ServiceConfig::default()
        };
        let harness = Harness::new(config);
        let users = harness.service.users();
        (harness, users)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_refused_operation_leaves_nothing_pending_and_says_why() {
        let (harness, users) = users();
        harness.smile.answer_manage(Err(ManageFailure::Refused(Refusal {
            cause: RefusalCause::Other,
            code: "2203".into(),
            code_text: "Invalid user".into(),
            message: "invalid user".into(),
        })));
        let refused = users
            .operate("u-1", Operation::Deactivate, Some("cn:a".into()), soon())
            .await
            .expect_err("refused");
        assert!(matches!(&refused, JobError::Rejected(problem) if problem.reason == ProblemReason::UpstreamRejected));
        let user = users.get("u-1").await.expect("the user is known now");
        assert_eq!(
            (user.user.pending, user.user.standing),
            (None, super::super::Standing::Active)
        );
        assert_eq!(
            user.user.owner.as_deref(),
            Some("cn:a"),
            "the first to manage a user owns it"
        );
    }

    #[tokio::test]
    async fn an_unconfirmed_operation_is_retried_then_finished_by_the_worker() {
        let (harness, users) = users();
        for _ in 0..12 {
            harness.smile.answer_manage(Err(ManageFailure::Unavailable {
                retry_after: Some(Duration::from_millis(10)),
                detail: "503".into(),
            }));
        }
        let pending = users
            .operate(
                "u-2",
                Operation::Flag,
                None,
                Instant::now() + Duration::from_millis(100),
            )
            .await
            .expect_err("in doubt");
        assert!(matches!(
            pending,
            JobError::UserOperationPending {
                operation: Operation::Flag,
                ..
            }
        ));
        let attempts_then = harness.smile.calls().len();
        assert!(attempts_then >= 2, "retried within the call: {attempts_then}");
        let mut finished = false;
        // Within a lease or two, however slow the machine.
        let give_up = Instant::now() + Duration::from_secs(20);
        while Instant::now() < give_up {
            users.carry_out_due().await.expect("a pass");
            let user = users.get("u-2").await.expect("user");
            if user.user.pending.is_none() {
                assert!(user.user.fraud_flagged);
                finished = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(finished, "the worker carried the operation out");
        let calls = harness.smile.calls();
        assert!(calls.iter().all(|call| matches!(
            call,
            SmileCall::Manage {
                operation: Operation::Flag,
                ..
            }
        )));
    }
}
