//! The tonic adapter: request checks, conversion, streaming. Logic lives in [`crate::jobs`].

pub mod apart;
pub mod codec;
pub mod convert;
pub mod identity;
pub mod load_shed;
pub mod middleware;
pub mod observe;
pub mod request_limits;
pub mod status;
pub mod stream_caps;
mod submit;
mod user_calls;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::rates::{RateLimits, Spend};
use crate::auth::{AuthError, Caller, Permission, PolicySource, audit};
use crate::jobs::listing;
use crate::jobs::validate::id_problem;
use crate::jobs::{Job, JobError, JobKind, JobService, LogFilter, LogStart, StatusExtras, WatchItem};
use crate::metrics::Metrics;
use crate::shares::{Share, Shares};
use crate::users::Operation;
use convert::Include;
use status::{auth_status, to_status};

/// Generated code of `proto/selfieauth/v1/selfie_auth.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("selfieauth.v1");

    /// The encoded descriptor set of the contract and its imports, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/selfieauth_descriptor.bin"));

    /// A `Debug` that shows image sizes, never image bytes.
    macro_rules! redacting_debug {
        ($message:ident) => {
            impl std::fmt::Debug for $message {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.debug_struct(stringify!($message))
                        .field("user_id", &self.user_id)
                        .field("job_id", &self.job_id)
                        .field("selfie_image_bytes", &self.selfie_image.len())
                        .field("liveness_images", &self.liveness_images.len())
                        .field("partner_params", &self.partner_params)
                        .field("wait_for_result", &self.wait_for_result)
                        .finish_non_exhaustive()
                }
            }
        };
    }
    redacting_debug!(SubmitAuthenticationRequest);
    redacting_debug!(EnrollUserRequest);

    /// An enrolment asks for what an authentication asks, field for field.
    macro_rules! same_fields {
        ($from:ident => $to:ident $(, $extra:ident: $value:expr)*) => {
            impl From<$from> for $to {
                fn from(request: $from) -> Self {
                    Self {
                        user_id: request.user_id,
                        job_id: request.job_id,
                        selfie_image: request.selfie_image,
                        liveness_images: request.liveness_images,
                        partner_params: request.partner_params,
                        wait_for_result: request.wait_for_result,
                        include_history: request.include_history,
                        include_image_links: request.include_image_links,
                        $($extra: $value,)*
                    }
                }
            }
        };
    }
    same_fields!(EnrollUserRequest => SubmitAuthenticationRequest);
    same_fields!(SubmitAuthenticationRequest => EnrollUserRequest, allow_new_enroll: false);
}

use pb::selfie_auth_server::SelfieAuth;

pub use pb::selfie_auth_server::SelfieAuthServer;

/// Time kept back from a caller's deadline so `wait_for_result` answers before it expires.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

pub struct SelfieAuthApi {
    service: Arc<JobService>,
    policy: Arc<PolicySource>,
    metrics: Arc<Metrics>,
    /// The policy's per-caller rate limits, spent as calls come.
    rates: RateLimits,
    /// Streams each caller has open (watches, and submissions waiting for their result).
    streams: Shares<String>,
}

impl SelfieAuthApi {
    /// The API over `service`; each caller may have `caller_streams` streams open.
    pub fn new(
        service: Arc<JobService>,
        policy: Arc<PolicySource>,
        metrics: Arc<Metrics>,
        caller_streams: usize,
    ) -> Self {
        Self {
            service,
            policy,
            metrics,
            rates: RateLimits::default(),
            streams: Shares::new(caller_streams as u64),
        }
    }

    /// Refuses a call over the caller's rate limit (RESOURCE_EXHAUSTED with QuotaFailure).
    fn throttle(&self, caller: &Caller, spend: Spend) -> Result<(), Status> {
        self.rates.spend(&self.policy.current(), caller, spend).map_err(|over| {
            self.metrics.shed(match spend {
                Spend::Call => "rate",
                Spend::Refresh => "refresh_rate",
            });
            status::rate_limited(&over, caller.name())
        })
    }

    /// A stream slot of `caller`'s share, or UNAVAILABLE when it has as many open as it may.
    fn caller_stream(&self, caller: &Caller) -> Result<Share<String>, Status> {
        self.streams.take(&caller.name().to_owned(), 1).ok_or_else(|| {
            self.metrics.shed("caller_streams");
            let message = format!(
                "this caller has {} streams open, its share of this replica; close some or retry shortly",
                self.streams.limit()
            );
            status::overloaded(message, "caller_streams", Duration::from_secs(1))
        })
    }

    /// Refuses the call unless the policy grants `caller` the `permission`.
    fn permit(&self, caller: &Caller, method: &'static str, permission: Permission) -> Result<(), Status> {
        self.policy.check(caller, permission).map_err(|error| {
            self.metrics.denied(method, permission.as_str());
            audit::denied(caller, method, permission.as_str());
            auth_status(&error)
        })
    }

    /// Refuses the call unless `caller` created the job, or may see others' jobs.
    /// A job the caller may not see answers exactly as no job does (the denial
    /// is still counted and audited), so its existence cannot be probed.
    fn permit_job(&self, caller: &Caller, method: &'static str, job: &Job) -> Result<(), Status> {
        if caller.owns(job.owner.as_deref()) {
            return Ok(());
        }
        self.permit(caller, method, Permission::OthersJobs).map_err(|_| {
            to_status(&JobError::NotFound {
                job_id: crate::jobs::model::public_job_id(&job.job_id).to_owned(),
            })
        })
    }
}

impl SelfieAuthApi {
    /// Refuses a submission for `user_id` unless the policy lets `caller` act
    /// for that user and no other caller owns it (or `caller` may act for
    /// others' users). An enrolment makes its caller the owner of a user
    /// nobody owns yet, atomically, so two callers cannot both enrol one user.
    async fn permit_user(
        &self,
        service: &JobService,
        caller: &Caller,
        method: &'static str,
        ownership: Ownership,
        permission: Permission,
        user_id: &str,
    ) -> Result<(), Status> {
        let Some(identity) = caller.owner() else {
            return Ok(());
        };
        if id_problem(user_id).is_some() {
            // The submission's own checks say what is wrong with it.
            return Ok(());
        }
        let policy = self.policy.current();
        let refuse = || {
            self.metrics.denied(method, Permission::OthersUsers.as_str());
            audit::denied(caller, method, Permission::OthersUsers.as_str());
            status::user_not_permitted(user_id)
        };
        if !policy.allows_for_user(caller, permission, user_id) {
            return Err(refuse());
        }
        let owner = match ownership {
            Ownership::Claim => Some(service.claim_user(user_id, &identity).await),
            Ownership::Check => service.user_owner(user_id).await.transpose(),
        };
        match owner.transpose().map_err(|error| to_status(&error))? {
            Some(owner) if owner != identity && !policy.allows(caller, Permission::OthersUsers) => Err(refuse()),
            _ => Ok(()),
        }
    }
}

/// What a call does with the ownership of the user it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ownership {
    /// Becomes the user's owner if nobody is (an enrolment).
    Claim,
    /// Only checks it.
    Check,
}

/// The caller the identity layer found.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| auth_status(&AuthError::Unidentified("the caller could not be identified".into())))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send + 'static>>;

/// `stream`, holding `held` (a caller's stream slot) for as long as it is open.
fn holding<T: Send + 'static>(
    stream: impl Stream<Item = T> + Send + 'static,
    held: impl Send + 'static,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold((Box::pin(stream), held), |(mut stream, held)| async move {
        let item = stream.next().await?;
        Some((item, (stream, held)))
    })
}

fn check_job_id(job_id: &str) -> Result<(), Status> {
    match id_problem(job_id) {
        None => Ok(()),
        Some(description) => Err(to_status(&JobError::invalid_field("job_id", description))),
    }
}

/// Reads the caller's deadline from the `grpc-timeout` header.
fn deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Records a result an event carries.
fn audit_event(caller: &Caller, method: &'static str, event: &pb::JobEvent) {
    if let Some(job) = event.job.as_ref().filter(|job| job.result.is_some()) {
        audit::read(caller, method, &job.job_id, audit::Read::Result);
    }
}

/// Records the reads a job answer carries.
fn audit_job(caller: &Caller, method: &'static str, job: &pb::Job) {
    if job.result.is_some() {
        audit::read(caller, method, &job.job_id, audit::Read::Result);
    }
    if !job.image_links.is_empty() {
        audit::read(caller, method, &job.job_id, audit::Read::ImageLinks);
    }
}

#[tonic::async_trait]
impl SelfieAuth for SelfieAuthApi {
    async fn submit_authentication(
        &self,
        request: Request<pb::SubmitAuthenticationRequest>,
    ) -> Result<Response<pb::SubmitAuthenticationResponse>, Status> {
        let (job, created) = self
            .submit(JobKind::Authentication, "SubmitAuthentication", request, false)
            .await?;
        Ok(Response::new(pb::SubmitAuthenticationResponse {
            job: Some(job),
            created,
        }))
    }

    async fn enroll_user(
        &self,
        request: Request<pb::EnrollUserRequest>,
    ) -> Result<Response<pb::EnrollUserResponse>, Status> {
        let allow_new_enroll = request.get_ref().allow_new_enroll;
        let request = request.map(pb::SubmitAuthenticationRequest::from);
        let (job, created) = self
            .submit(JobKind::Enrollment, "EnrollUser", request, allow_new_enroll)
            .await?;
        Ok(Response::new(pb::EnrollUserResponse {
            job: Some(job),
            created,
        }))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        const METHOD: &str = "ListJobs";
        let caller = caller(&request)?;
        self.throttle(&caller, Spend::Call)?;
        self.permit(&caller, METHOD, Permission::List)?;
        let request = request.into_inner();
        let mut filter = convert::job_filter(&request).map_err(|error| to_status(&error))?;
        if !self.policy.current().allows(&caller, Permission::OthersJobs) {
            filter.owner = caller.owner();
        }
        let page_size = listing::page_size(request.page_size).map_err(|error| to_status(&error))?;
        let page = self
            .service
            .list_jobs(&filter, page_size, &request.page_token)
            .await
            .map_err(|error| to_status(&error))?;
        let jobs: Vec<pb::Job> = page
            .jobs
            .iter()
            .map(|job| convert::job(job, Include { history: false }, None))
            .collect();
        for job in &jobs {
            audit_job(&caller, METHOD, job);
        }
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        const METHOD: &str = "GetJob";
        let caller = caller(&request)?;
        self.throttle(&caller, Spend::Call)?;
        self.permit(&caller, METHOD, Permission::Get)?;
        let request = request.into_inner();
        if request.refresh && request.include_image_links {
            self.permit(&caller, METHOD, Permission::ImageLinks)?;
        }
        check_job_id(&request.job_id)?;
        if request.refresh {
            self.throttle(&caller, Spend::Refresh)?;
        }
        let service = &self.service;
        let stored = service
            .get_for(&request.job_id, caller.owner().as_deref())
            .await
            .map_err(|e| to_status(&e))?;
        self.permit_job(&caller, METHOD, &stored)?;
        let include = Include {
            history: request.include_history,
        };
        let job = if request.refresh {
            let extras = StatusExtras {
                history: request.include_history,
                image_links: request.include_image_links,
            };
            let (job, fetched) = service
                .refresh(&stored.job_id, extras)
                .await
                .map_err(|e| to_status(&e))?;
            convert::job(&job, include, Some(&fetched))
        } else {
            convert::job(&stored, include, None)
        };
        audit_job(&caller, METHOD, &job);
        Ok(Response::new(job))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<EventStream>, Status> {
        const METHOD: &str = "WatchJob";
        let caller = caller(&request)?;
        self.throttle(&caller, Spend::Call)?;
        self.permit(&caller, METHOD, Permission::WatchJob)?;
        let request = request.into_inner();
        check_job_id(&request.job_id)?;
        let service = &self.service;
        let stored = service
            .get_for(&request.job_id, caller.owner().as_deref())
            .await
            .map_err(|e| to_status(&e))?;
        self.permit_job(&caller, METHOD, &stored)?;
        let share = self.caller_stream(&caller)?;
        let items = service
            .watch_job(&stored.job_id, request.after_sequence)
            .await
            .map_err(|e| to_status(&e))?;
        let stream = ReceiverStream::new(items).map(move |item| match item {
            Ok(WatchItem::Event(event)) => {
                let event = convert::event(&event, String::new());
                audit_event(&caller, METHOD, &event);
                Ok(event)
            }
            Ok(WatchItem::Heartbeat { last_sequence, .. }) => Ok(convert::heartbeat(last_sequence, String::new())),
            Ok(WatchItem::Erased(erased)) => Ok(convert::erased(
                &erased.job,
                &erased.user_id,
                erased.sequence,
                String::new(),
            )),
            Err(error) => Err(to_status(&error)),
        });
        Ok(Response::new(Box::pin(holding(stream, share))))
    }

    type WatchJobsStream = EventStream;

    async fn watch_jobs(&self, request: Request<pb::WatchJobsRequest>) -> Result<Response<EventStream>, Status> {
        const METHOD: &str = "WatchJobs";
        let caller = caller(&request)?;
        self.throttle(&caller, Spend::Call)?;
        self.permit(&caller, METHOD, Permission::WatchJob)?;
        // Without watch_all, a caller hears of its own jobs only.
        let everyone = self.policy.current().allows(&caller, Permission::WatchAll);
        let request = request.into_inner();
        let user_id = (!request.user_id.is_empty()).then_some(request.user_id);
        if let Some(description) = user_id.as_deref().and_then(id_problem) {
            return Err(to_status(&JobError::invalid_field("user_id", description)));
        }
        let start = if !request.resume_token.is_empty() {
            LogStart::After(
                convert::parse_resume_token(&request.resume_token)
                    .ok_or_else(|| to_status(&JobError::InvalidResumeToken))?,
            )
        } else if request.from_start {
            LogStart::Beginning
        } else {
            LogStart::Now
        };
        // The store reads a caller's own events by index, and positions are its own view's.
        let filter = LogFilter {
            user_id,
            owner: if everyone { None } else { caller.owner() },
        };
        let share = self.caller_stream(&caller)?;
        let items = self.service.watch_log(filter, start).await.map_err(|e| to_status(&e))?;
        let stream = ReceiverStream::new(items).map(move |item| match item {
            Ok(WatchItem::Event(event)) => {
                let event = convert::event(&event, convert::resume_token(event.global_id));
                audit_event(&caller, METHOD, &event);
                Ok(event)
            }
            Ok(WatchItem::Heartbeat { log_position, .. }) => {
                Ok(convert::heartbeat(0, convert::resume_token(log_position)))
            }
            Ok(WatchItem::Erased(erased)) => Ok(convert::erased(
                &erased.job,
                &erased.user_id,
                0,
                convert::resume_token(erased.log_position),
            )),
            Err(error) => Err(to_status(&error)),
        });
        Ok(Response::new(Box::pin(holding(stream, share))))
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        const METHOD: &str = "GetUser";
        let caller = caller(&request)?;
        self.throttle(&caller, Spend::Call)?;
        let user_id = request.into_inner().user_id;
        let service = &self.service;
        self.permit_user_operation(service, &caller, METHOD, Permission::ReadUsers, &user_id)
            .await?;
        let view = service.users().get(&user_id).await.map_err(|e| to_status(&e))?;
        audit::read_user(&caller, METHOD, &user_id);
        Ok(Response::new(convert::user(&view)))
    }

    async fn allow_reenrollment(
        &self,
        request: Request<pb::AllowReenrollmentRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let user_id = request.get_ref().user_id.clone();
        self.operate(request, "AllowReenrollment", user_id, Operation::AllowReenrollment)
            .await
    }

    async fn deactivate_user(&self, request: Request<pb::DeactivateUserRequest>) -> Result<Response<pb::User>, Status> {
        let user_id = request.get_ref().user_id.clone();
        self.operate(request, "DeactivateUser", user_id, Operation::Deactivate)
            .await
    }

    async fn reactivate_user(&self, request: Request<pb::ReactivateUserRequest>) -> Result<Response<pb::User>, Status> {
        let user_id = request.get_ref().user_id.clone();
        self.operate(request, "ReactivateUser", user_id, Operation::Reactivate)
            .await
    }

    async fn set_user_fraud_flag(
        &self,
        request: Request<pb::SetUserFraudFlagRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let pb::SetUserFraudFlagRequest { user_id, flagged } = request.get_ref().clone();
        let operation = if flagged { Operation::Flag } else { Operation::Unflag };
        self.operate(request, "SetUserFraudFlag", user_id, operation).await
    }

    async fn delete_user(&self, request: Request<pb::DeleteUserRequest>) -> Result<Response<pb::User>, Status> {
        let user_id = request.get_ref().user_id.clone();
        self.operate(request, "DeleteUser", user_id, Operation::Delete).await
    }
}
