//! How the job logic is tuned: the settings `config` fills in, with the
//! defaults `--help` shows.

use std::time::Duration;

use crate::users::UserConfig;

/// Settings of the job service as a whole.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The public URL Smile ID posts results to.
    pub callback_url: Option<String>,
    /// Confirm each callback with job_status before trusting it (its signature does not cover the body).
    pub confirm_callbacks: bool,
    pub heartbeat_interval: Duration,
    pub reconcile: ReconcilePolicy,
    pub image_limits: ImageLimits,
    /// How long a submission attempt owns a SUBMITTING job; renewed while it
    /// runs, so a replica that dies hands the job over after at most this long.
    pub submit_lease: Duration,
    /// How long the service keeps retrying a submission Smile ID could not take
    /// (unreachable, 5xx, timeouts), holding its images in memory.
    pub submit_retry_budget: Duration,
    /// Bytes of images all submissions being sent may hold at once.
    pub submission_memory_bytes: usize,
    /// Submissions checked and stored at once, callers taking turns.
    pub submission_turns: usize,
    /// Streams (WatchJob, WatchJobs, submissions waiting for their result) open at once.
    pub max_open_streams: usize,
    /// How long a call without a deadline waits for its submission (and, with
    /// `wait_for_result`, for the result).
    pub default_wait: Duration,
    /// Accept `partner_params.sandbox_result` (not against Smile ID production).
    pub sandbox_params_allowed: bool,
    /// How user operations are carried out.
    pub users: UserConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            callback_url: None,
            confirm_callbacks: true,
            heartbeat_interval: Duration::from_secs(15),
            reconcile: ReconcilePolicy::default(),
            image_limits: ImageLimits::default(),
            submit_lease: Duration::from_secs(15),
            submit_retry_budget: Duration::from_mins(2),
            submission_memory_bytes: 256 * 1024 * 1024,
            // Enough to keep each core busy while others wait for the job store.
            submission_turns: 4 * crate::fair::cores(),
            max_open_streams: 10_000,
            default_wait: Duration::from_mins(1),
            sandbox_params_allowed: true,
            users: UserConfig::default(),
        }
    }
}

/// When the reconciler asks Smile ID about jobs without a final result.
#[derive(Clone, Copy, Debug)]
pub struct ReconcilePolicy {
    /// First poll this long after submission.
    pub first_delay: Duration,
    /// Polls back off (doubling) up to this interval.
    pub max_delay: Duration,
    /// After this long without a final result the job is FAILED (RESULT_NOT_RECEIVED).
    pub give_up_after: Duration,
    /// A job Smile ID never received, that no attempt is sending, is FAILED
    /// (SUBMISSION_ABANDONED) after this long.
    pub abandon_after: Duration,
    /// How often the reconciler looks for due jobs.
    pub tick: Duration,
    /// How long a replica holds a job it is polling.
    pub lease: Duration,
    pub batch: u32,
}

impl Default for ReconcilePolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_mins(2),
            max_delay: Duration::from_mins(15),
            give_up_after: Duration::from_hours(24),
            abandon_after: Duration::from_mins(15),
            tick: Duration::from_secs(1),
            lease: Duration::from_mins(1),
            batch: 50,
        }
    }
}

impl ReconcilePolicy {
    pub(crate) fn delay(&self, attempts: u32) -> Duration {
        self.first_delay
            .saturating_mul(2u32.saturating_pow(attempts.min(16)))
            .min(self.max_delay)
    }
}

/// Size limits of one submission. Their sum stays below the gRPC message limit,
/// so an oversized image gets our precise error, not a transport error.
#[derive(Clone, Copy, Debug)]
pub struct ImageLimits {
    pub max_image_bytes: usize,
    pub max_total_bytes: usize,
    pub max_side_px: u32,
    pub min_side_px: u32,
    /// Memory all image decoding of the process may use at once; a submission
    /// waits for its share (its images' pixels, known from their headers).
    pub decode_memory_bytes: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_image_bytes: 5 * 1024 * 1024,
            max_total_bytes: 15 * 1024 * 1024,
            max_side_px: 4096,
            min_side_px: 16,
            decode_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// How long finished jobs are kept, and how often expired ones are looked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep_for: Duration,
    pub every: Duration,
}

impl RetentionPolicy {
    /// Keeps finished jobs for `keep_for`, looking a few times per period
    /// (between once a second and every five minutes).
    pub fn keeping(keep_for: Duration) -> Self {
        Self {
            keep_for,
            every: (keep_for / 4).clamp(Duration::from_secs(1), Duration::from_mins(5)),
        }
    }
}
