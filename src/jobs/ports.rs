//! What the domain needs from the outside world, in the domain's own terms: the
//! job store, the event fan-out, Smile ID and the counters it keeps. `store`,
//! `events`, `smile_adapter` and `metrics` implement these traits; the job
//! logic knows nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use super::model::{
    Erasure, EventKind, EventNotice, Job, JobEvent, JobKind, JobState, LogFilter, Refusal, SmileResult,
};
use crate::fair::Precedence;
use crate::users::model::{Operation, UserRecord};

// === the job store ===

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
}

/// The result of [`JobStore::create`].
#[derive(Debug)]
pub enum Created {
    /// The job is new; its `CREATED` event.
    New(JobEvent),
    /// A job with this job_id already exists.
    Existing(Job),
    /// The job's user is deleted, or being deleted: nothing was stored.
    UserErased,
}

/// The result of [`JobStore::save`].
#[derive(Debug)]
pub enum Saved {
    /// Written; the event, when one was asked for.
    Written(Option<Box<JobEvent>>),
    /// Someone else wrote the job first; reload and retry.
    Conflict,
}

/// Durable jobs and their events. Every write is a compare-and-set on the job's
/// `version`, and a job change and its event are written in one transaction.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts a new job with its `CREATED` event (sequence 1), unless the job_id exists.
    async fn create(&self, job: &Job) -> Result<Created, StoreError>;

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError>;

    /// Writes `job` if its stored version is still `job.version`, with an event
    /// when `event` is given. On success `job.version` and `job.last_sequence` advance.
    async fn save(&self, job: &mut Job, event: Option<EventKind>) -> Result<Saved, StoreError>;

    /// A job's events with sequence greater than `after_sequence`, in order.
    async fn job_events(&self, job_id: &str, after_sequence: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError>;

    /// The global event log after `after_global_id`, the events `filter` matches, in order.
    async fn log_events(
        &self,
        after_global_id: i64,
        filter: &LogFilter,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError>;

    /// The position of the last event in the log, or of the last of the jobs
    /// `owner` created: where a live-only WatchJobs starts.
    async fn last_global_id(&self, owner: Option<&str>) -> Result<i64, StoreError>;

    /// Leases up to `limit` jobs whose `next_poll_at` has passed, so that one
    /// replica polls each; a lease expires after `lease`.
    async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<Job>, StoreError>;

    /// Gives up the reconciler's lease on a job once it is done with it.
    async fn release_lease(&self, job_id: &str) -> Result<(), StoreError>;

    /// How far behind the reconciler is.
    async fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, StoreError>;

    /// Up to `limit` jobs matching `filter`, newest first (by creation, then
    /// job_id descending), starting after `after`.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&JobCursor>,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError>;

    /// Deletes up to `limit` finished (COMPLETED or FAILED) jobs last changed
    /// before `before`, with their events, and answers with their job_ids. On a
    /// shared store one replica deletes at a time; the others get nothing.
    async fn delete_finished(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError>;

    /// Records `owner` as the caller that enrols `user_id`, unless a caller
    /// did before; answers with the user's owner, whoever that is.
    async fn claim_user(&self, user_id: &str, owner: &str) -> Result<String, StoreError>;

    /// The caller that enrolled `user_id` through this service, if any.
    async fn user_owner(&self, user_id: &str) -> Result<Option<String>, StoreError>;

    /// The user as stored, with its version.
    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Writes `user` if its stored version is still `user.version` (0: inserts
    /// it, unless it exists); on success `user.version` advances. False when
    /// someone else wrote the user first.
    async fn put_user(&self, user: &mut UserRecord) -> Result<bool, StoreError>;

    /// What the stored jobs of `user_id` say about them.
    async fn user_activity(&self, user_id: &str) -> Result<Activity, StoreError>;

    /// Writes the tombstone `user` (compare-and-set as in [`put_user`](Self::put_user))
    /// and, in the same transaction, deletes every job and event of the user.
    /// `None` when someone else wrote the user first.
    async fn erase_user(&self, user: &mut UserRecord) -> Result<Option<Erasure>, StoreError>;

    /// Deletes every job and event of `user_id`, keeping the user.
    async fn erase_jobs_of(&self, user_id: &str) -> Result<Erasure, StoreError>;

    /// Up to `limit` users whose pending operation is due at `now`.
    async fn due_user_operations(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<UserRecord>, StoreError>;

    /// Up to `limit` users all of whose jobs are finished and none of which
    /// changed since `before`.
    async fn idle_users(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether other processes (replicas) write this store too. When not, a
    /// submission lease that this process does not hold is a dead process's.
    fn is_shared(&self) -> bool;
}

pub type SharedStore = Arc<dyn JobStore>;

/// Which jobs a listing returns; `None` matches any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct JobFilter {
    /// Jobs this identity created.
    pub owner: Option<String>,
    pub user_id: Option<String>,
    pub state: Option<JobState>,
    pub kind: Option<JobKind>,
}

/// Where a listing page ended: the last job it returned. Stores order by
/// creation time in milliseconds, then job_id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobCursor {
    pub created_ms: i64,
    pub job_id: String,
}

impl JobCursor {
    pub fn of(job: &Job) -> Self {
        Self {
            created_ms: job.created_at.timestamp_millis(),
            job_id: job.job_id.clone(),
        }
    }
}

/// What the stored jobs of a user say about them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Activity {
    pub job_count: u64,
    /// When a job of the user last changed.
    pub last_job_at: Option<DateTime<Utc>>,
    /// The user's latest enrolment job.
    pub latest_enrollment: Option<Job>,
}

/// Jobs waiting on the reconciler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Jobs due for a poll now.
    pub due: u64,
    /// When the oldest job without a final state was created.
    pub oldest_unfinished: Option<DateTime<Utc>>,
}

// === the event fan-out ===

/// What stream subscribers hear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FanoutMessage {
    /// An event was stored.
    Event(EventNotice),
    /// Notices may have been missed (a listener reconnected): re-read from the store.
    Resync,
    /// A user's jobs were erased: streams send a last event for each.
    Erased(Arc<Erasure>),
}

/// Which events a subscriber wants to hear of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Interest {
    Job(String),
    User(String),
    All,
}

/// Tells this process's streams that events were stored. Notices carry ids
/// only; subscribers read events from the store, so a missed notice can delay
/// an event but never lose it. A subscriber hears only what it is interested
/// in (and every resync), so idle streams cost nothing when others' jobs move.
pub trait EventFanout: Send + Sync + 'static {
    fn publish(&self, notice: EventNotice);

    /// Tells the streams of the erased jobs, and those of their user, that
    /// they are gone.
    fn publish_erasure(&self, erasure: Erasure);

    fn subscribe(&self, interest: Interest) -> broadcast::Receiver<FanoutMessage>;
}

// === Smile ID ===

/// One job for Smile ID: who, what, and the images (JPEG).
pub struct SmileJob<'a> {
    pub kind: JobKind,
    pub user_id: &'a str,
    pub job_id: &'a str,
    pub partner_params: &'a BTreeMap<String, String>,
    pub callback_url: Option<&'a str>,
    pub selfie_jpeg: &'a Bytes,
    pub liveness_jpegs: &'a [Bytes],
    /// An earlier attempt may have reached Smile ID: resume that job rather
    /// than be refused as a duplicate.
    pub may_resume: bool,
    /// Enrol the user again although they are enrolled.
    pub allow_new_enroll: bool,
    /// Where the submission stands among its caller's: those beyond the first
    /// few go over connections of their own.
    pub precedence: Precedence,
}

impl std::fmt::Debug for SmileJob<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmileJob")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .field("job_id", &self.job_id)
            .field("selfie_bytes", &self.selfie_jpeg.len())
            .field("liveness_frames", &self.liveness_jpegs.len())
            .field("may_resume", &self.may_resume)
            .finish_non_exhaustive()
    }
}

/// Smile ID accepted the job and its images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub smile_job_id: String,
    pub resumed: bool,
}

/// Why a submission did not complete, by what Smile ID may now hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitFailure {
    /// Smile ID refused the job; nothing exists there.
    #[error("smile id refused the job with code {}: {}", .0.code, .0.message)]
    Refused(Refusal),
    /// The request certainly never reached Smile ID.
    #[error("smile id was not reached: {detail}")]
    NotSent {
        retry_after: Option<Duration>,
        detail: String,
    },
    /// A Smile ID job may exist, with or without its images.
    #[error("the submission's outcome is unknown: {detail}")]
    Unknown {
        smile_job_id: Option<String>,
        detail: String,
    },
}

/// What a job_status lookup should return besides the latest result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusExtras {
    /// Every result so far, not only the latest.
    pub history: bool,
    /// Links to the job's images (short-lived, and personal data).
    pub image_links: bool,
}

impl StatusExtras {
    /// What confirming a result needs: the history, no images.
    pub const HISTORY: Self = Self {
        history: true,
        image_links: false,
    };

    pub fn any(self) -> bool {
        self.history || self.image_links
    }
}

/// What Smile ID says about a job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusReport {
    pub complete: bool,
    /// The latest result, when there is one.
    pub result: Option<SmileResult>,
    pub history: Vec<SmileResult>,
    pub image_links: BTreeMap<String, String>,
}

/// Why a job_status lookup gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusFailure {
    /// Smile ID has no job with this job_id.
    #[error("smile id has no such job")]
    NotFound,
    /// Smile ID could not be reached or answered 5xx/429; asking again may help.
    #[error("smile id is unavailable: {detail}")]
    Unavailable {
        retry_after: Option<Duration>,
        detail: String,
    },
    /// Smile ID answered something we cannot trust or use.
    #[error("smile id's answer is unusable: {0}")]
    Unusable(String),
}

/// Smile ID, as the job logic uses it.
#[async_trait::async_trait]
pub trait SmileId: Send + Sync + 'static {
    async fn submit(&self, job: SmileJob<'_>) -> Result<Accepted, SubmitFailure>;

    async fn job_status(
        &self,
        user_id: &str,
        job_id: &str,
        extras: StatusExtras,
    ) -> Result<StatusReport, StatusFailure>;

    /// Carries out a user operation at Smile ID.
    async fn manage_user(&self, user_id: &str, operation: Operation) -> Result<(), ManageFailure>;
}

/// Why Smile ID did not carry out a user operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManageFailure {
    /// Smile ID refused it; repeating it will not help.
    #[error("smile id refused the user operation with code {}: {}", .0.code, .0.message)]
    Refused(Refusal),
    /// Smile ID could not be reached or did not say; it may or may not be done.
    #[error("smile id did not confirm the user operation: {detail}")]
    Unavailable {
        retry_after: Option<Duration>,
        detail: String,
    },
}

// === counters ===

/// What the job logic counts; the service's metrics implement it.
pub trait JobMetrics: Send + Sync + 'static {
    fn job_created(&self);
    fn event_written(&self);
    /// A submission Smile ID `"accepted"` or `"refused"`.
    fn submission(&self, outcome: &'static str);
    fn reconcile_poll(&self);
    /// The reconciler's backlog: jobs due, and how old the oldest unfinished job is.
    fn backlog(&self, due: u64, oldest_unfinished: Duration);
    fn jobs_deleted(&self, count: u64);
    /// How long a submission waited for its caller's turn to be checked and stored.
    fn turn_waited(&self, waited: Duration);
    /// A call refused because `limit` was full.
    fn shed(&self, limit: super::Limit);
}
