//! The domain's [`SmileId`] port over the Smile ID protocol client.

use crate::jobs::ports::{Accepted, SmileId, SmileJob, StatusFailure, StatusReport, SubmitFailure};
use crate::smileid::wire::JOB_TYPE_AUTHENTICATION;
use crate::smileid::{JobSubmission, PartnerParams, SmileIdClient, SmileIdError, StatusOptions, SubmitOutcome};

pub struct SmileIdAdapter {
    client: SmileIdClient,
}

impl SmileIdAdapter {
    pub fn new(client: SmileIdClient) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl SmileId for SmileIdAdapter {
    async fn submit(&self, job: SmileJob<'_>) -> Result<Accepted, SubmitFailure> {
        let partner_params = PartnerParams {
            user_id: job.user_id.to_owned(),
            job_id: job.job_id.to_owned(),
            job_type: JOB_TYPE_AUTHENTICATION,
            extra: job.partner_params.clone(),
        };
        let submission = JobSubmission {
            partner_params: &partner_params,
            callback_url: job.callback_url,
            selfie_jpeg: job.selfie_jpeg,
            liveness_jpegs: job.liveness_jpegs,
            may_resume: job.may_resume,
        };
        match self.client.submit(&submission).await {
            Ok(submitted) => Ok(Accepted {
                smile_job_id: submitted.smile_job_id,
                resumed: submitted.resumed,
            }),
            Err(error) => {
                let detail = format!("{:?}: {}", error.stage, error.source);
                Err(match (error.outcome, error.source) {
                    (SubmitOutcome::Refused, SmileIdError::Refused { code, message, .. }) => {
                        SubmitFailure::Refused { code, message }
                    }
                    (SubmitOutcome::NotSent, source) => SubmitFailure::NotSent {
                        retry_after: source.retry_after(),
                        detail,
                    },
                    _ => SubmitFailure::Unknown {
                        smile_job_id: error.smile_job_id,
                        detail,
                    },
                })
            }
        }
    }

    async fn job_status(
        &self,
        user_id: &str,
        job_id: &str,
        options: StatusOptions,
    ) -> Result<StatusReport, StatusFailure> {
        match self.client.job_status(user_id, job_id, options).await {
            Ok(status) => Ok(StatusReport {
                complete: status.job_complete,
                result: status.result,
                history: status.history,
                image_links: status.image_links,
            }),
            Err(SmileIdError::NotFound) => Err(StatusFailure::NotFound),
            Err(error) if error.is_transient() => Err(StatusFailure::Unavailable {
                retry_after: error.retry_after(),
                detail: error.to_string(),
            }),
            Err(error) => Err(StatusFailure::Unusable(error.to_string())),
        }
    }
}
