//! SubmitAuthentication and EnrollUser: checks, then the job service, then the answer.

use tonic::{Request, Status};

use super::convert::{self, Include};
use super::load_shed::Admission;
use super::status::to_status;
use super::{DEADLINE_MARGIN, Ownership, SelfieAuthApi, audit_job, caller, deadline, pb};
use crate::auth::Permission;
use crate::auth::rates::Spend;
use crate::fair::Precedence;
use crate::jobs::{JobKind, StatusExtras, SubmitRequest};

impl SelfieAuthApi {
    /// Submits a job of `kind` and answers with it and whether it is new; with
    /// `wait_for_result`, once it is final or the call's deadline nears.
    pub(super) async fn submit(
        &self,
        kind: JobKind,
        method: &'static str,
        request: Request<pb::SubmitAuthenticationRequest>,
        allow_new_enroll: bool,
    ) -> Result<(pb::Job, bool), Status> {
        let (budget, admission) = (deadline(&request), request.extensions().get::<Admission>().cloned());
        let precedence = request.extensions().get::<Precedence>().copied().unwrap_or_default();
        let caller = &caller(&request)?;
        self.throttle(caller, Spend::Call)?;
        let submission = request.into_inner();
        let permission = match kind {
            JobKind::Authentication => Permission::Submit,
            JobKind::Enrollment => Permission::Enroll,
        };
        self.permit(caller, method, permission)?;
        if submission.wait_for_result && submission.include_image_links {
            self.permit(caller, method, Permission::ImageLinks)?;
        }
        let service = &self.service;
        let ownership = match kind {
            JobKind::Enrollment => Ownership::Claim,
            JobKind::Authentication => Ownership::Check,
        };
        self.permit_user(service, caller, method, ownership, permission, &submission.user_id)
            .await?;
        let request = SubmitRequest {
            kind,
            owner: caller.owner(),
            user_id: submission.user_id,
            job_id: submission.job_id,
            selfie: submission.selfie_image,
            liveness: submission.liveness_images,
            partner_params: submission.partner_params.into_iter().collect(),
            allow_new_enroll,
            precedence,
        };
        let wait = budget.map_or(service.config().default_wait, |budget| {
            budget.saturating_sub(DEADLINE_MARGIN)
        });
        let deadline = tokio::time::Instant::now() + wait;
        let output = service
            .submit(request, deadline)
            .await
            .map_err(|error| to_status(&error))?;
        let (job, fetched) = if submission.wait_for_result {
            // Admission is what the concurrency limit protects; waiting is cheap, and
            // counts among the open streams instead, the caller's own included (without a
            // free one, it stays admitted). A job already final needs no wait.
            let _stream = (!output.job.state.is_terminal())
                .then(|| self.caller_stream(caller).ok())
                .flatten()
                .and_then(|share| Some((share, service.hold_stream().ok()?)))
                .inspect(|_| {
                    if let Some(admission) = &admission {
                        admission.release();
                    }
                });
            let extras = StatusExtras {
                history: submission.include_history,
                image_links: submission.include_image_links,
            };
            service
                .settle(output.job, deadline, extras)
                .await
                .map_err(|error| to_status(&error))?
        } else {
            (output.job, None)
        };
        let include = Include {
            history: submission.include_history,
        };
        let job = convert::job(&job, include, fetched.as_ref());
        audit_job(caller, method, &job);
        Ok((job, output.created))
    }
}
