//! The simulator's memory: partner, enrolled users, jobs, faults and counters.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use smileid::ErrorCode;

/// A request path whose behaviour a test can script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Upload,
    Put,
    JobStatus,
    V2Authentication,
    BlockUser,
}

impl Endpoint {
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(Value::String(name.to_owned())).ok()
    }
}

/// What to do to the next requests of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Answer with this HTTP status instead of handling the request.
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` seconds to send with `status`.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Wait this long before handling (or failing) the request.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Never answer (until the client gives up or the simulator stops).
    #[serde(default)]
    pub hang: bool,
    /// Sign the response with a wrong key (job_status only).
    #[serde(default)]
    pub corrupt_signature: bool,
    /// Apply to this many requests, then clear (absent: until cleared).
    #[serde(default)]
    pub times: Option<u32>,
}

/// How results are delivered to callback URLs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackMode {
    #[default]
    Deliver,
    Drop,
    Duplicate,
    /// A job's provisional result is delivered after its final one.
    Reorder,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub prep_uploads: u64,
    pub uploads: u64,
    pub job_status_requests: u64,
    pub v2_requests: u64,
    pub user_management_requests: u64,
    pub callbacks_sent: u64,
    pub callbacks_dropped: u64,
    pub callbacks_failed: u64,
    pub signature_failures: u64,
    /// Smile ID jobs created per partner job_id (a billed job each).
    pub jobs_created_by_job_id: BTreeMap<String, u64>,
    /// Accepted zip uploads per partner job_id.
    pub uploads_by_job_id: BTreeMap<String, u64>,
    pub job_status_by_job_id: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SimJob {
    pub job_id: String,
    pub user_id: String,
    pub job_type: u32,
    pub smile_job_id: String,
    pub ref_id: String,
    /// Token that makes this job's upload URL valid (the simulator's "pre-signature").
    #[serde(skip)]
    pub upload_token: String,
    pub partner_params: serde_json::Map<String, Value>,
    pub callback_url: Option<String>,
    pub zip_received: bool,
    pub liveness_frames: usize,
    pub results: Vec<Value>,
    /// Callbacks held back by [`CallbackMode::Reorder`] until the final result.
    #[serde(skip)]
    pub held_callbacks: Vec<Value>,
}

impl SimJob {
    pub fn final_result(&self) -> Option<&Value> {
        self.results
            .iter()
            .rev()
            .find(|result| result.get("IsFinalResult").and_then(Value::as_str) == Some("true"))
    }
}

/// Where an enrolled user stands with Smile ID; the control API sets it, so
/// each refusal Smile ID documents for a user can be produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStanding {
    Active,
    Disabled,
    Deleted,
    ReEnrollmentRequired,
    NoPhoto,
}

impl UserStanding {
    /// Why an authentication (job_type 2) of a user standing so is refused.
    pub fn refuses_authentication(standing: Option<Self>) -> Option<ErrorCode> {
        match standing {
            None => Some(ErrorCode::UserNotEnrolled),
            Some(Self::Active) => None,
            Some(Self::Disabled) => Some(ErrorCode::UserDisabled),
            Some(Self::Deleted) => Some(ErrorCode::UserDeleted),
            Some(Self::ReEnrollmentRequired) => Some(ErrorCode::ReEnrollmentRequired),
            Some(Self::NoPhoto) => Some(ErrorCode::NoPhotoOnFile),
        }
    }

    /// Why an enrolment (job_type 4) of a user standing so is refused: an
    /// enrolled user is enrolled once, unless allowed to enrol again; a
    /// deleted user_id is never used again.
    pub fn refuses_enrolment(standing: Option<Self>, new_enrolment_allowed: bool) -> Option<ErrorCode> {
        match standing {
            Some(Self::Active | Self::NoPhoto) if new_enrolment_allowed => None,
            Some(Self::Active | Self::NoPhoto) => Some(ErrorCode::UserAlreadyEnrolled),
            Some(Self::Disabled) => Some(ErrorCode::UserDisabled),
            Some(Self::Deleted) => Some(ErrorCode::UserDeleted),
            None | Some(Self::ReEnrollmentRequired) => None,
        }
    }
}

/// One user-management call the simulator took, for tests to assert what was sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserCall {
    pub user_id: String,
    /// `allow_new_enroll`, `deactivate`, `reactivate`, `flag_fraud`, `clear_fraud` or `delete`.
    pub action: String,
    pub environment: String,
    pub email: Option<String>,
}

/// The user-management calls kept for the control API; older ones are forgotten.
pub const USER_CALLS_KEPT: usize = 1000;

pub struct SimState {
    pub users: HashMap<String, UserStanding>,
    /// Users flagged as suspected fraud: their jobs are processed and fail.
    pub flagged: HashSet<String>,
    /// Enrolled users allowed one new enrolment.
    pub reenrollment_allowed: HashSet<String>,
    pub user_calls: VecDeque<UserCall>,
    pub jobs: HashMap<String, SimJob>,
    job_order: VecDeque<String>,
    pub by_ref: HashMap<String, String>,
    next_smile_job_id: u64,
    pub faults: HashMap<Endpoint, Fault>,
    pub callback_mode: CallbackMode,
    pub counters: Counters,
    pub max_jobs: usize,
    pub review_delay: Duration,
    pub callback_delay: Duration,
}

impl SimState {
    pub fn new(
        enrolled: impl IntoIterator<Item = String>,
        max_jobs: usize,
        review_delay: Duration,
        callback_delay: Duration,
    ) -> Self {
        Self {
            users: enrolled.into_iter().map(|user| (user, UserStanding::Active)).collect(),
            flagged: HashSet::new(),
            reenrollment_allowed: HashSet::new(),
            user_calls: VecDeque::new(),
            jobs: HashMap::new(),
            job_order: VecDeque::new(),
            by_ref: HashMap::new(),
            next_smile_job_id: 1000,
            faults: HashMap::new(),
            callback_mode: CallbackMode::default(),
            counters: Counters::default(),
            max_jobs: max_jobs.max(1),
            review_delay,
            callback_delay,
        }
    }

    pub fn next_smile_job_id(&mut self) -> String {
        self.next_smile_job_id += 1;
        format!("{:010}", self.next_smile_job_id)
    }

    /// Stores a job, evicting the oldest ones beyond the cap so memory stays bounded.
    pub fn insert_job(&mut self, job: SimJob) {
        self.by_ref.insert(job.ref_id.clone(), job.job_id.clone());
        self.job_order.push_back(job.job_id.clone());
        self.jobs.insert(job.job_id.clone(), job);
        while self.jobs.len() > self.max_jobs {
            let Some(oldest) = self.job_order.pop_front() else {
                break;
            };
            if let Some(evicted) = self.jobs.remove(&oldest) {
                self.by_ref.remove(&evicted.ref_id);
            }
        }
        // Counters are keyed by job_id too; they forget evicted jobs so memory stays bounded.
        if self.counters.jobs_created_by_job_id.len() > self.max_jobs {
            let jobs = &self.jobs;
            for map in [
                &mut self.counters.jobs_created_by_job_id,
                &mut self.counters.uploads_by_job_id,
                &mut self.counters.job_status_by_job_id,
            ] {
                map.retain(|job_id, _| jobs.contains_key(job_id));
            }
        }
    }

    /// Takes one use of the endpoint's fault, if any.
    pub fn take_fault(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let fault = self.faults.get_mut(&endpoint)?;
        let taken = fault.clone();
        if let Some(times) = fault.times.as_mut() {
            *times = times.saturating_sub(1);
            if *times == 0 {
                self.faults.remove(&endpoint);
            }
        }
        Some(taken)
    }
}
