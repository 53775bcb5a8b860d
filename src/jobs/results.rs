//! Results: what Smile ID says about a job, from callbacks and job_status, applied
//! through the job's state machine.

use std::time::Duration;

use chrono::Utc;
use tracing::warn;

use super::error::{JobError, UnavailableReason};
use super::model::Job;
use super::ports::{StatusFailure, StatusReport};
use super::service::JobService;
use crate::smileid::{ResultEntry, StatusOptions, VerifiedCallback};

/// Extra data fetched from Smile ID on request; never stored.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub history: Vec<ResultEntry>,
    pub image_links: std::collections::BTreeMap<String, String>,
}

/// What became of a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The job changed.
    Applied,
    /// Nothing new (a duplicate, or a late result after the final one).
    Unchanged,
    /// The result could not be confirmed now; the reconciler will fetch it.
    Deferred,
    /// No job of ours matches.
    UnknownJob,
}

impl JobService {
    /// Asks Smile ID for the job's status, applies what it says, and returns the
    /// job with the history and image links Smile ID returned.
    pub async fn refresh(&self, job_id: &str, options: StatusOptions) -> Result<(Job, Fetched), JobError> {
        let job = self.load(job_id).await?;
        let status = self.smile.job_status(&job.user_id, &job.job_id, options).await;
        match status {
            Ok(status) => {
                let fetched = Fetched {
                    history: status.history.clone(),
                    image_links: status.image_links.clone(),
                };
                let job = self.apply_status(&job.job_id, status).await?;
                Ok((job, fetched))
            }
            Err(StatusFailure::NotFound) => Ok((job, Fetched::default())),
            Err(failure) => Err(upstream_unavailable(&failure)),
        }
    }

    /// Applies a verified callback; answers only after the outcome is durable.
    #[tracing::instrument(name = "job.callback", skip_all, fields(job_id = callback.result.job_id().unwrap_or_default()))]
    pub async fn handle_callback(&self, callback: VerifiedCallback) -> Result<CallbackOutcome, JobError> {
        let result = callback.result;
        let Some(job_id) = result.job_id().map(str::to_owned) else {
            self.metrics.callbacks_unknown_job.inc();
            warn!(smile_job_id = %result.smile_job_id, "callback without PartnerParams.job_id");
            return Ok(CallbackOutcome::UnknownJob);
        };
        let Some(job) = self.store.get(&job_id).await? else {
            self.metrics.callbacks_unknown_job.inc();
            warn!(job_id = %job_id, smile_job_id = %result.smile_job_id, "callback for an unknown job");
            return Ok(CallbackOutcome::UnknownJob);
        };
        let smile_job_mismatch = matches!(&job.smile_job_id, Some(known) if !result.smile_job_id.is_empty() && *known != result.smile_job_id);
        if smile_job_mismatch
            || result
                .partner_params
                .get("user_id")
                .is_some_and(|user| *user != job.user_id)
        {
            self.metrics.callbacks_unknown_job.inc();
            warn!(job_id = %job_id, smile_job_id = %result.smile_job_id, "callback does not match the stored job");
            return Ok(CallbackOutcome::UnknownJob);
        }
        if job.state.is_terminal() {
            return Ok(CallbackOutcome::Unchanged);
        }
        if !self.config.confirm_callbacks {
            let before = job.last_sequence;
            let after = self.apply_results(&job_id, vec![result]).await?;
            return Ok(if after.last_sequence > before {
                CallbackOutcome::Applied
            } else {
                CallbackOutcome::Unchanged
            });
        }
        let options = StatusOptions {
            history: true,
            image_links: false,
        };
        match self.smile.job_status(&job.user_id, &job_id, options).await {
            Ok(status) => {
                let before = job.last_sequence;
                let after = self.apply_status(&job_id, status).await?;
                Ok(if after.last_sequence > before {
                    CallbackOutcome::Applied
                } else {
                    CallbackOutcome::Unchanged
                })
            }
            Err(error) => {
                warn!(job_id = %job_id, error = %error, "could not confirm a callback; the reconciler will fetch the result");
                let now = Utc::now();
                self.transition(&job_id, |job| job.poll_at(now)).await?;
                Ok(CallbackOutcome::Deferred)
            }
        }
    }

    /// Applies a job_status answer: every result in order, then the latest.
    pub(crate) async fn apply_status(&self, job_id: &str, status: StatusReport) -> Result<Job, JobError> {
        let mut results = status.history;
        if let Some(latest) = status.result {
            results.push(latest);
        }
        // Smile ID does not promise history order; a provisional result must precede a final one.
        results.sort_by_key(|result| result.is_final);
        self.apply_results(job_id, results).await
    }

    async fn apply_results(&self, job_id: &str, results: Vec<ResultEntry>) -> Result<Job, JobError> {
        let mut applied = None;
        for result in results {
            let now = Utc::now();
            applied = Some(
                self.transition(job_id, |job| job.apply_result(result.clone(), now))
                    .await?,
            );
        }
        match applied {
            Some(job) => Ok(job),
            None => self.load(job_id).await,
        }
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
