//! The user lifecycle calls: who may act on a user, then the user service.

use tonic::{Request, Response, Status};

use super::convert;
use super::status::to_status;
use super::{DEADLINE_MARGIN, Ownership, SelfieAuthApi, caller, deadline, pb};
use crate::auth::rates::Spend;
use crate::auth::{Caller, Permission};
use crate::jobs::validate::id_problem;
use crate::jobs::{JobError, JobService};
use crate::users::Operation;

impl SelfieAuthApi {
    /// Refuses a user call unless the policy grants `permission` for
    /// `user_id`, and the caller owns the user, nobody does, or it may act for
    /// others' users.
    pub(super) async fn permit_user_operation(
        &self,
        service: &JobService,
        caller: &Caller,
        method: &'static str,
        permission: Permission,
        user_id: &str,
    ) -> Result<(), Status> {
        self.permit(caller, method, permission)?;
        if let Some(description) = id_problem(user_id) {
            return Err(to_status(&JobError::invalid_field("user_id", description)));
        }
        self.permit_user(service, caller, method, Ownership::Check, permission, user_id)
            .await
    }

    /// Runs a user operation for the caller, within its deadline.
    pub(super) async fn operate<T>(
        &self,
        request: Request<T>,
        method: &'static str,
        user_id: String,
        operation: Operation,
    ) -> Result<Response<pb::User>, Status> {
        let budget = deadline(&request);
        let caller = caller(&request)?;
        self.throttle(&caller, Spend::Call)?;
        let permission = match operation {
            Operation::Delete => Permission::DeleteUsers,
            _ => Permission::ManageUsers,
        };
        let service = &self.service;
        self.permit_user_operation(service, &caller, method, permission, &user_id)
            .await?;
        let users = service.users();
        let wait = budget.map_or(users.config().wait, |budget| budget.saturating_sub(DEADLINE_MARGIN));
        let view = users
            .operate(&user_id, operation, caller.owner(), tokio::time::Instant::now() + wait)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::user(&view)))
    }
}
