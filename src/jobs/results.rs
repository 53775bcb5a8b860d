//! Results: what Smile ID says about a job, from callbacks and job_status, applied
//! through the job's state machine.

use std::time::Duration;

use chrono::Utc;
use tracing::warn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

use super::core::JobCore;
use super::error::{JobError, UnavailableReason};
use super::model::{Job, SmileResult};
use super::ports::{SmileId, StatusExtras, StatusFailure, StatusReport};

/// Extra data fetched from Smile ID on request; never stored.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub history: Vec<SmileResult>,
    pub image_links: std::collections::BTreeMap<String, String>,
}

/// What became of a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The job changed.
    Applied,
    /// Nothing new (a duplicate, or a late result after the final one).
    Unchanged,
    /// The result could not be confirmed now: it is stored as awaiting
    /// confirmation, and the reconciler confirms it.
    Deferred,
    /// No job of ours matches.
    UnknownJob,
}

impl CallbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Deferred => "deferred",
            Self::UnknownJob => "unknown_job",
        }
    }
}

/// Takes in what Smile ID says about jobs, from callbacks (confirmed with
/// job_status when asked to) and from job_status itself.
pub struct ResultIntake {
    core: Arc<JobCore>,
    smile: Arc<dyn SmileId>,
    /// Confirm each callback with job_status before trusting it (its signature does not cover the body).
    confirm_callbacks: bool,
    confirmations: Confirmations,
}

impl ResultIntake {
    pub fn new(core: Arc<JobCore>, smile: Arc<dyn SmileId>, confirm_callbacks: bool) -> Self {
        Self {
            core,
            smile,
            confirm_callbacks,
            confirmations: Confirmations::default(),
        }
    }

    /// Asks Smile ID for the job's status, applies what it says, and returns the
    /// job with the history and image links Smile ID returned.
    pub async fn refresh(&self, job_id: &str, extras: StatusExtras) -> Result<(Job, Fetched), JobError> {
        let job = self.core.load(job_id).await?;
        let status = self.smile.job_status(&job.user_id, &job.job_id, extras).await;
        match status {
            Ok(status) => {
                let fetched = Fetched {
                    history: status.history.clone(),
                    image_links: status.image_links.clone(),
                };
                let job = self.apply_status(job, status).await?;
                Ok((job, fetched))
            }
            Err(StatusFailure::NotFound) => Ok((job, Fetched::default())),
            Err(failure) => Err(upstream_unavailable(&failure)),
        }
    }

    /// Applies a result from a callback whose signature was verified; answers
    /// only after the outcome is durable.
    #[tracing::instrument(name = "job.callback", skip_all, fields(job_id = result.job_id().unwrap_or_default()))]
    pub async fn handle_callback(&self, result: SmileResult) -> Result<CallbackOutcome, JobError> {
        let Some(job_id) = result.job_id().map(str::to_owned) else {
            warn!(smile_job_id = ?result.smile_job_id, "callback without PartnerParams.job_id");
            return Ok(CallbackOutcome::UnknownJob);
        };
        let Some(job) = self.core.store.get(&job_id).await? else {
            warn!(job_id = ?job_id, smile_job_id = ?result.smile_job_id, "callback for an unknown job");
            return Ok(CallbackOutcome::UnknownJob);
        };
        let smile_job_mismatch = matches!(&job.smile_job_id, Some(known) if !result.smile_job_id.is_empty() && *known != result.smile_job_id);
        if smile_job_mismatch
            || result
                .partner_params
                .get("user_id")
                .is_some_and(|user| *user != job.user_id)
        {
            warn!(job_id = ?job_id, smile_job_id = ?result.smile_job_id, "callback does not match the stored job");
            return Ok(CallbackOutcome::UnknownJob);
        }
        // A duplicate, a replay, or anything after the final result: nothing to ask Smile ID.
        if !job.takes_results() || job.has_result(&result) {
            return Ok(CallbackOutcome::Unchanged);
        }
        if !self.confirm_callbacks {
            let before = job.last_sequence;
            let after = self.apply_results(job, vec![result]).await?;
            return Ok(if after.last_sequence > before {
                CallbackOutcome::Applied
            } else {
                CallbackOutcome::Unchanged
            });
        }
        let before = job.last_sequence;
        let after = match self.confirmations.confirm(&self.smile, &job.user_id, &job_id).await {
            Ok(status) => self.apply_status(job, status).await?,
            Err(error) => {
                warn!(job_id = ?job_id, error = %error, "could not confirm a callback; it is kept until the reconciler can");
                job
            }
        };
        if after.takes_results() && !after.has_result(&result) {
            // Smile ID has not confirmed it (yet): keep it, durably, before answering.
            let now = Utc::now();
            self.core
                .transition(&job_id, |job| job.await_confirmation(result.clone(), now))
                .await?;
            return Ok(CallbackOutcome::Deferred);
        }
        Ok(if after.last_sequence > before {
            CallbackOutcome::Applied
        } else {
            CallbackOutcome::Unchanged
        })
    }

    /// Applies a job_status answer: every result in order, then the latest.
    pub(super) async fn apply_status(&self, job: Job, status: StatusReport) -> Result<Job, JobError> {
        let mut results = status.history;
        if let Some(latest) = status.result {
            results.push(latest);
        }
        // Smile ID does not promise history order; a provisional result must precede a final one.
        results.sort_by_key(|result| result.is_final);
        self.apply_results(job, results).await
    }

    /// Applies `results` in order to `job`, a copy read before Smile ID was asked.
    async fn apply_results(&self, mut job: Job, results: Vec<SmileResult>) -> Result<Job, JobError> {
        for result in results {
            let now = Utc::now();
            job = self
                .core
                .transition_from(job, |job| job.apply_result(result.clone(), now))
                .await?;
        }
        Ok(job)
    }
}

fn upstream_unavailable(failure: &StatusFailure) -> JobError {
    match failure {
        StatusFailure::Unavailable { retry_after, .. } => JobError::Unavailable {
            reason: UnavailableReason::UpstreamUnavailable,
            message: "Smile ID could not be reached".into(),
            retry_after: Some(retry_after.unwrap_or(Duration::from_secs(1))),
        },
        StatusFailure::NotFound | StatusFailure::Unusable(_) => {
            JobError::Internal(format!("smile id job_status failed: {failure}"))
        }
    }
}

/// How long a job_status answer confirms further callbacks of the same job.
const CONFIRMATION_REUSE: Duration = Duration::from_secs(5);
/// Jobs whose last confirmation is remembered.
const CONFIRMATIONS_KEPT: usize = 4096;

type StatusAnswer = Result<StatusReport, StatusFailure>;

enum Confirmation {
    Asking(Shared<BoxFuture<'static, StatusAnswer>>),
    Answered { at: Instant, report: Box<StatusReport> },
}

/// Callback confirmations: at most one job_status in flight per job, shared by
/// every callback of that job arriving meanwhile, and an answer reused for a
/// moment, so a burst or a replay of callbacks costs one upstream call.
#[derive(Default)]
struct Confirmations {
    jobs: Mutex<HashMap<String, Confirmation>>,
}

impl Confirmations {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Confirmation>> {
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn confirm(&self, smile: &Arc<dyn SmileId>, user_id: &str, job_id: &str) -> StatusAnswer {
        let asking = {
            let mut jobs = self.lock();
            match jobs.get(job_id) {
                Some(Confirmation::Answered { at, report }) if at.elapsed() < CONFIRMATION_REUSE => {
                    return Ok(StatusReport::clone(report));
                }
                Some(Confirmation::Asking(asking)) => asking.clone(),
                _ => {
                    if jobs.len() >= CONFIRMATIONS_KEPT {
                        jobs.retain(|_, kept| match kept {
                            Confirmation::Asking(_) => true,
                            Confirmation::Answered { at, .. } => at.elapsed() < CONFIRMATION_REUSE,
                        });
                    }
                    let smile = smile.clone();
                    let (user, job) = (user_id.to_owned(), job_id.to_owned());
                    let asking = async move { smile.job_status(&user, &job, StatusExtras::HISTORY).await }
                        .boxed()
                        .shared();
                    jobs.insert(job_id.to_owned(), Confirmation::Asking(asking.clone()));
                    asking
                }
            }
        };
        let answer = asking.await;
        let mut jobs = self.lock();
        match &answer {
            Ok(report) => {
                jobs.insert(
                    job_id.to_owned(),
                    Confirmation::Answered {
                        at: Instant::now(),
                        report: Box::new(report.clone()),
                    },
                );
            }
            Err(_) => {
                jobs.remove(job_id);
            }
        }
        answer
    }
}
