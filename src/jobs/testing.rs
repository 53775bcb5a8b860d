//! In-memory fakes of the store and Smile ID ports, so the job logic can be
//! tested without sockets, files or a database.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::model::{Decision, ErasedJob, Erasure, EventKind, EventNotice, Job, JobEvent, LogFilter, SmileResult};
use super::ports::{
    Accepted, Activity, Created, EventFanout, FanoutMessage, JobMetrics, JobStore, ManageFailure, Saved, SmileId,
    SmileJob, StatusExtras, StatusFailure, StatusReport, StoreError, SubmitFailure,
};
use super::service::{JobService, Ports};
use super::settings::ServiceConfig;
use crate::users::model::{Operation, UserRecord};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct Tables {
    jobs: BTreeMap<String, Job>,
    events: Vec<JobEvent>,
    leases: BTreeMap<String, DateTime<Utc>>,
    users: BTreeMap<String, UserRecord>,
    /// The last position given out in the global log; erased events keep theirs.
    last_global_id: i64,
}

impl Tables {
    fn erase_jobs_of(&mut self, user_id: &str) -> Erasure {
        let jobs = self
            .jobs
            .values()
            .filter(|job| job.user_id == user_id)
            .map(|job| ErasedJob {
                job_id: job.job_id.clone(),
                owner: job.owner.clone(),
            })
            .collect();
        self.jobs.retain(|_, job| job.user_id != user_id);
        self.events.retain(|event| event.job.user_id != user_id);
        Erasure {
            user_id: user_id.to_owned(),
            jobs,
        }
    }

    /// Writes `user` if its stored version is still `user.version`; a user's
    /// first owner stays, as the SQL stores keep it.
    fn put_user(&mut self, user: &mut UserRecord) -> bool {
        let stored = self.users.get(&user.user_id);
        if stored.map_or(0, |stored| stored.version) != user.version {
            return false;
        }
        let owner = stored
            .and_then(|stored| stored.owner.clone())
            .or_else(|| user.owner.clone());
        user.version += 1;
        let mut kept = user.clone();
        kept.owner = owner;
        self.users.insert(user.user_id.clone(), kept);
        true
    }
}

/// A [`JobStore`] in memory, with the SQL stores' semantics, and faults on request.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    /// The next this many saves answer `Conflict`, as if another writer won.
    conflicts: AtomicU32,
    /// The next this many event reads fail as if the database were down.
    failing_reads: AtomicU32,
    /// Whether it plays a store other replicas share.
    shared: std::sync::atomic::AtomicBool,
    /// Reads of the global event log so far.
    log_reads: AtomicU32,
    /// Reads of one job so far.
    job_reads: AtomicU32,
    /// How many times a user's owner was read.
    owner_reads: AtomicU32,
    /// Creates wait while a test holds this.
    creates: Arc<tokio::sync::RwLock<()>>,
}

impl MemoryStore {
    pub fn inject_conflicts(&self, count: u32) {
        self.conflicts.store(count, Ordering::SeqCst);
    }

    /// Holds every create until the guard is dropped.
    pub fn hold_creates(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.creates
            .clone()
            .try_write_owned()
            .expect("creates are held once at a time")
    }

    /// The jobs created, in the order they were.
    pub fn created(&self) -> Vec<String> {
        lock(&self.tables)
            .events
            .iter()
            .filter(|event| event.kind == EventKind::Created)
            .map(|event| event.job.job_id.clone())
            .collect()
    }

    pub fn log_reads(&self) -> u32 {
        self.log_reads.load(Ordering::SeqCst)
    }

    pub fn job_reads(&self) -> u32 {
        self.job_reads.load(Ordering::SeqCst)
    }

    pub fn owner_reads(&self) -> u32 {
        self.owner_reads.load(Ordering::SeqCst)
    }

    pub fn set_shared(&self, shared: bool) {
        self.shared.store(shared, Ordering::SeqCst);
    }

    pub fn fail_reads(&self, count: u32) {
        self.failing_reads.store(count, Ordering::SeqCst);
    }

    /// Changes a stored job behind the service's back (a crash, time passing).
    pub fn edit(&self, job_id: &str, change: impl FnOnce(&mut Job)) {
        let mut tables = lock(&self.tables);
        let job = tables.jobs.get_mut(job_id).expect("the job exists");
        change(job);
    }

    pub fn job(&self, job_id: &str) -> Job {
        lock(&self.tables).jobs.get(job_id).cloned().expect("the job exists")
    }

    /// The kinds of a job's stored events, in order.
    pub fn kinds(&self, job_id: &str) -> Vec<EventKind> {
        lock(&self.tables)
            .events
            .iter()
            .filter(|event| event.job.job_id == job_id)
            .map(|event| event.kind)
            .collect()
    }

    fn take_fault(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok()
    }

    fn read_fault(&self) -> Result<(), StoreError> {
        if Self::take_fault(&self.failing_reads) {
            return Err(StoreError::Unavailable("injected read failure".into()));
        }
        Ok(())
    }
}

fn append(tables: &mut Tables, job: &Job, kind: EventKind) -> JobEvent {
    tables.last_global_id += 1;
    let event = JobEvent {
        global_id: tables.last_global_id,
        sequence: job.last_sequence,
        kind,
        job: job.clone(),
        at: job.updated_at,
    };
    tables.events.push(event.clone());
    event
}

#[async_trait::async_trait]
impl JobStore for MemoryStore {
    async fn create(&self, job: &Job) -> Result<Created, StoreError> {
        let _open = self.creates.read().await;
        let mut tables = lock(&self.tables);
        if let Some(existing) = tables.jobs.get(&job.job_id) {
            return Ok(Created::Existing(existing.clone()));
        }
        if tables.users.get(&job.user_id).is_some_and(UserRecord::refuses_jobs) {
            return Ok(Created::UserErased);
        }
        let mut job = job.clone();
        job.version = 1;
        job.last_sequence = 1;
        tables.jobs.insert(job.job_id.clone(), job.clone());
        Ok(Created::New(append(&mut tables, &job, EventKind::Created)))
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        self.job_reads.fetch_add(1, Ordering::SeqCst);
        Ok(lock(&self.tables).jobs.get(job_id).cloned())
    }

    async fn save(&self, job: &mut Job, event: Option<EventKind>) -> Result<Saved, StoreError> {
        if Self::take_fault(&self.conflicts) {
            return Ok(Saved::Conflict);
        }
        let mut tables = lock(&self.tables);
        let stored_version = tables.jobs.get(&job.job_id).map(|stored| stored.version);
        if stored_version != Some(job.version) {
            return Ok(Saved::Conflict);
        }
        let mut next = job.clone();
        next.version += 1;
        if event.is_some() {
            next.last_sequence += 1;
        }
        tables.jobs.insert(next.job_id.clone(), next.clone());
        let written = event.map(|kind| Box::new(append(&mut tables, &next, kind)));
        *job = next;
        Ok(Saved::Written(written))
    }

    async fn job_events(&self, job_id: &str, after_sequence: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        self.read_fault()?;
        Ok(lock(&self.tables)
            .events
            .iter()
            .filter(|event| event.job.job_id == job_id && event.sequence > after_sequence)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn log_events(
        &self,
        after_global_id: i64,
        filter: &LogFilter,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        self.log_reads.fetch_add(1, Ordering::SeqCst);
        // A database answers a moment later, not at once.
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.read_fault()?;
        Ok(lock(&self.tables)
            .events
            .iter()
            .filter(|event| event.global_id > after_global_id)
            .filter(|event| filter.matches(event))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn last_global_id(&self, owner: Option<&str>) -> Result<i64, StoreError> {
        Ok(lock(&self.tables)
            .events
            .iter()
            .rev()
            .find(|event| owner.is_none_or(|owner| event.job.owner.as_deref() == Some(owner)))
            .map_or(0, |event| event.global_id))
    }

    async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<Job>, StoreError> {
        let mut tables = lock(&self.tables);
        let mut due: Vec<Job> = tables
            .jobs
            .values()
            .filter(|job| job.next_poll_at.is_some_and(|at| at <= now))
            .filter(|job| tables.leases.get(&job.job_id).is_none_or(|until| *until < now))
            .cloned()
            .collect();
        due.sort_by_key(|job| job.next_poll_at);
        due.truncate(limit as usize);
        let lease_until = now + lease;
        for job in &due {
            tables.leases.insert(job.job_id.clone(), lease_until);
        }
        Ok(due)
    }

    async fn release_lease(&self, job_id: &str) -> Result<(), StoreError> {
        lock(&self.tables).leases.remove(job_id);
        Ok(())
    }

    async fn backlog(&self, now: DateTime<Utc>) -> Result<super::ports::Backlog, StoreError> {
        let tables = lock(&self.tables);
        Ok(super::ports::Backlog {
            due: tables
                .jobs
                .values()
                .filter(|job| job.next_poll_at.is_some_and(|at| at <= now))
                .count() as u64,
            oldest_unfinished: tables
                .jobs
                .values()
                .filter(|job| !job.state.is_terminal())
                .map(|job| job.created_at)
                .min(),
        })
    }

    async fn list_jobs(
        &self,
        filter: &super::ports::JobFilter,
        after: Option<&super::ports::JobCursor>,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let tables = lock(&self.tables);
        let mut jobs: Vec<Job> = tables
            .jobs
            .values()
            .filter(|job| {
                // The SQL stores' WHERE clause, and their (created_ms, job_id) descending order.
                filter
                    .owner
                    .as_ref()
                    .is_none_or(|owner| job.owner.as_ref() == Some(owner))
                    && filter.user_id.as_ref().is_none_or(|user| *user == job.user_id)
                    && filter.state.is_none_or(|state| state == job.state)
                    && filter.kind.is_none_or(|kind| kind == job.kind)
                    && after.is_none_or(|cursor| {
                        let this = super::ports::JobCursor::of(job);
                        (this.created_ms, &this.job_id) < (cursor.created_ms, &cursor.job_id)
                    })
            })
            .cloned()
            .collect();
        jobs.sort_by_key(|job| std::cmp::Reverse((job.created_at.timestamp_millis(), job.job_id.clone())));
        jobs.truncate(limit as usize);
        Ok(jobs)
    }

    async fn delete_finished(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError> {
        let mut tables = lock(&self.tables);
        let doomed: Vec<String> = tables
            .jobs
            .values()
            .filter(|job| job.state.is_terminal() && job.updated_at < before)
            .take(limit as usize)
            .map(|job| job.job_id.clone())
            .collect();
        for job_id in &doomed {
            tables.jobs.remove(job_id);
        }
        tables.events.retain(|event| !doomed.contains(&event.job.job_id));
        Ok(doomed)
    }

    async fn claim_user(&self, user_id: &str, owner: &str) -> Result<String, StoreError> {
        let mut tables = lock(&self.tables);
        let user = tables
            .users
            .entry(user_id.to_owned())
            .or_insert_with(|| UserRecord::new(user_id, None, Utc::now()));
        Ok(user.owner.get_or_insert_with(|| owner.to_owned()).clone())
    }

    async fn user_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        self.owner_reads.fetch_add(1, Ordering::SeqCst);
        Ok(lock(&self.tables)
            .users
            .get(user_id)
            .and_then(|user| user.owner.clone()))
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(lock(&self.tables).users.get(user_id).cloned())
    }

    async fn put_user(&self, user: &mut UserRecord) -> Result<bool, StoreError> {
        Ok(lock(&self.tables).put_user(user))
    }

    async fn user_activity(&self, user_id: &str) -> Result<Activity, StoreError> {
        let tables = lock(&self.tables);
        let jobs: Vec<&Job> = tables.jobs.values().filter(|job| job.user_id == user_id).collect();
        Ok(Activity {
            job_count: jobs.len() as u64,
            last_job_at: jobs.iter().map(|job| job.updated_at).max(),
            latest_enrollment: jobs
                .iter()
                .filter(|job| job.kind == super::JobKind::Enrollment)
                .max_by_key(|job| (job.created_at.timestamp_millis(), job.job_id.clone()))
                .map(|job| (*job).clone()),
        })
    }

    async fn erase_user(&self, user: &mut UserRecord) -> Result<Option<Erasure>, StoreError> {
        let mut tables = lock(&self.tables);
        if !tables.put_user(user) {
            return Ok(None);
        }
        Ok(Some(tables.erase_jobs_of(&user.user_id)))
    }

    async fn erase_jobs_of(&self, user_id: &str) -> Result<Erasure, StoreError> {
        Ok(lock(&self.tables).erase_jobs_of(user_id))
    }

    async fn due_user_operations(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<UserRecord>, StoreError> {
        let tables = lock(&self.tables);
        let mut due: Vec<UserRecord> = tables
            .users
            .values()
            .filter(|user| user.due_at().is_some_and(|at| at <= now))
            .cloned()
            .collect();
        due.sort_by_key(UserRecord::due_at);
        due.truncate(limit as usize);
        Ok(due)
    }

    async fn idle_users(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError> {
        let tables = lock(&self.tables);
        let mut last: BTreeMap<&str, (DateTime<Utc>, bool)> = BTreeMap::new();
        for job in tables.jobs.values() {
            let entry = last.entry(&job.user_id).or_insert((job.updated_at, true));
            entry.0 = entry.0.max(job.updated_at);
            entry.1 &= job.state.is_terminal();
        }
        let mut idle: Vec<(DateTime<Utc>, String)> = last
            .into_iter()
            .filter(|(_, (at, finished))| *finished && *at < before)
            .map(|(user, (at, _))| (at, user.to_owned()))
            .collect();
        idle.sort();
        Ok(idle.into_iter().take(limit as usize).map(|(_, user)| user).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_shared(&self) -> bool {
        self.shared.load(Ordering::SeqCst)
    }
}

/// An [`EventFanout`] within one process, as a single replica has it.
pub struct LocalFanout(tokio::sync::broadcast::Sender<FanoutMessage>);

impl Default for LocalFanout {
    fn default() -> Self {
        Self(tokio::sync::broadcast::channel(64).0)
    }
}

impl EventFanout for LocalFanout {
    fn publish(&self, notice: EventNotice) {
        let _ = self.0.send(FanoutMessage::Event(notice));
    }

    fn publish_erasure(&self, erasure: Erasure) {
        let _ = self.0.send(FanoutMessage::Erased(Arc::new(erasure)));
    }

    fn subscribe(&self, _interest: super::ports::Interest) -> tokio::sync::broadcast::Receiver<FanoutMessage> {
        self.0.subscribe()
    }
}

/// A call the job logic made to Smile ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmileCall {
    Submit { job_id: String, may_resume: bool },
    Status { job_id: String },
    Manage { user_id: String, operation: Operation },
}

/// Smile ID answering from scripts: queued answers first, then acceptance of
/// every submission and `NotFound` for every status.
#[derive(Default)]
pub struct FakeSmileId {
    submits: Mutex<VecDeque<Result<Accepted, SubmitFailure>>>,
    statuses: Mutex<VecDeque<Result<StatusReport, StatusFailure>>>,
    manages: Mutex<VecDeque<Result<(), ManageFailure>>>,
    calls: Mutex<Vec<SmileCall>>,
    /// How long each submission takes.
    submit_delay: Mutex<Duration>,
}

impl FakeSmileId {
    pub fn delay_submissions(&self, delay: Duration) {
        *lock(&self.submit_delay) = delay;
    }

    pub fn answer_submit(&self, answer: Result<Accepted, SubmitFailure>) {
        lock(&self.submits).push_back(answer);
    }

    pub fn answer_status(&self, answer: Result<StatusReport, StatusFailure>) {
        lock(&self.statuses).push_back(answer);
    }

    pub fn answer_manage(&self, answer: Result<(), ManageFailure>) {
        lock(&self.manages).push_back(answer);
    }

    pub fn calls(&self) -> Vec<SmileCall> {
        lock(&self.calls).clone()
    }
}

#[async_trait::async_trait]
impl SmileId for FakeSmileId {
    async fn submit(&self, job: SmileJob<'_>) -> Result<Accepted, SubmitFailure> {
        lock(&self.calls).push(SmileCall::Submit {
            job_id: job.job_id.to_owned(),
            may_resume: job.may_resume,
        });
        let delay = *lock(&self.submit_delay);
        tokio::time::sleep(delay).await;
        lock(&self.submits).pop_front().unwrap_or_else(|| {
            Ok(Accepted {
                smile_job_id: format!("smile-{}", job.job_id),
                resumed: job.may_resume,
            })
        })
    }

    async fn job_status(
        &self,
        _user_id: &str,
        job_id: &str,
        _extras: StatusExtras,
    ) -> Result<StatusReport, StatusFailure> {
        lock(&self.calls).push(SmileCall::Status {
            job_id: job_id.to_owned(),
        });
        lock(&self.statuses).pop_front().unwrap_or(Err(StatusFailure::NotFound))
    }

    async fn manage_user(&self, user_id: &str, operation: Operation) -> Result<(), ManageFailure> {
        lock(&self.calls).push(SmileCall::Manage {
            user_id: user_id.to_owned(),
            operation,
        });
        lock(&self.manages).pop_front().unwrap_or(Ok(()))
    }
}

/// Counters the unit tests do not read.
struct Uncounted;

impl JobMetrics for Uncounted {
    fn job_created(&self) {}
    fn event_written(&self) {}
    fn submission(&self, _outcome: &'static str) {}
    fn reconcile_poll(&self) {}
    fn backlog(&self, _due: u64, _oldest_unfinished: Duration) {}
    fn jobs_deleted(&self, _count: u64) {}
    fn turn_waited(&self, _waited: Duration) {}
    fn shed(&self, _limit: crate::jobs::Limit) {}
}

/// A job service over the fakes, and the fakes themselves.
pub struct Harness {
    pub service: Arc<JobService>,
    pub store: Arc<MemoryStore>,
    pub smile: Arc<FakeSmileId>,
}

impl Harness {
    pub fn new(config: ServiceConfig) -> Self {
        let store = Arc::new(MemoryStore::default());
        let smile = Arc::new(FakeSmileId::default());
        let ports = Ports {
            store: store.clone(),
            fanout: Arc::new(LocalFanout::default()),
            smile: smile.clone(),
            metrics: Arc::new(Uncounted),
        };
        let service = JobService::new(ports, config, CancellationToken::new());
        Self { service, store, smile }
    }
}

/// A Smile ID result with `code`, as a callback or job_status carries it.
pub fn result(code: &str, is_final: bool) -> SmileResult {
    SmileResult {
        result_code: code.into(),
        result_text: String::new(),
        result_type: "SAIA".into(),
        smile_job_id: "0000000007".into(),
        is_final,
        is_machine_result: true,
        confidence: 90.0,
        actions: BTreeMap::new(),
        partner_params: BTreeMap::new(),
        timestamp: None,
        decision: match code {
            "0820" | "1220" => Decision::Approved,
            "0822" | "0825" => Decision::ProvisionallyApproved,
            "0821" | "1221" => Decision::Rejected,
            other => Decision::Unknown(other.to_owned()),
        },
    }
}

/// A valid submission of a small generated JPEG; `seed` varies the content.
#[expect(clippy::cast_possible_truncation, reason = "pixel patterns wrap on purpose")]
pub fn submission(user_id: &str, job_id: &str, seed: u8) -> super::SubmitRequest {
    let image = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8, y as u8, seed]));
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .expect("encode a jpeg");
    super::SubmitRequest {
        kind: super::JobKind::Authentication,
        owner: None,
        user_id: user_id.into(),
        job_id: job_id.into(),
        selfie: jpeg.into_inner().into(),
        liveness: Vec::new(),
        partner_params: BTreeMap::new(),
        allow_new_enroll: false,
        precedence: crate::fair::Precedence::Ahead,
    }
}
