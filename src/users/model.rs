//! A user as this service keeps them: who owns them, where they stand as last
//! set through the service, and the operation being carried out at Smile ID.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a user stands, as last set through this service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Standing {
    #[default]
    Active,
    Deactivated,
    /// Deleted for good: only the tombstone is left.
    Deleted,
}

/// A change of a user that Smile ID carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operation {
    AllowReenrollment,
    Deactivate,
    Reactivate,
    Flag,
    Unflag,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowReenrollment => "ALLOW_REENROLLMENT",
            Self::Deactivate => "DEACTIVATE",
            Self::Reactivate => "REACTIVATE",
            Self::Flag => "FLAG",
            Self::Unflag => "UNFLAG",
            Self::Delete => "DELETE",
        }
    }

    /// Whether the user already stands as this operation would leave them, so
    /// repeating it has nothing to do.
    pub fn is_done_for(self, user: &UserRecord) -> bool {
        match self {
            Self::AllowReenrollment => user.reenrollment_allowed,
            Self::Deactivate => user.standing == Standing::Deactivated,
            Self::Reactivate => user.standing == Standing::Active,
            Self::Flag => user.fraud_flagged,
            Self::Unflag => !user.fraud_flagged,
            Self::Delete => user.standing == Standing::Deleted,
        }
    }

    /// Records on `user` that Smile ID carried the operation out.
    fn apply(self, user: &mut UserRecord, by: Option<String>, now: DateTime<Utc>) {
        match self {
            Self::AllowReenrollment => user.reenrollment_allowed = true,
            Self::Deactivate => user.standing = Standing::Deactivated,
            Self::Reactivate => user.standing = Standing::Active,
            Self::Flag => user.fraud_flagged = true,
            Self::Unflag => user.fraud_flagged = false,
            Self::Delete => {
                // The tombstone: who and when, nothing of the person.
                user.standing = Standing::Deleted;
                user.fraud_flagged = false;
                user.reenrollment_allowed = false;
                user.deleted_at = Some(now);
                user.deleted_by = by;
            }
        }
    }
}

/// An operation accepted and not yet carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub operation: Operation,
    /// The identity of the caller that asked for it (none: authentication is off).
    pub requested_by: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub attempts: u32,
    /// When the next attempt is due (an attempt in progress holds `lease_until`).
    pub next_attempt_at: DateTime<Utc>,
    /// An attempt owns the operation until then; another waits or takes over after.
    pub lease_until: Option<DateTime<Utc>>,
    /// Why the last attempt failed, for GetUser and the logs.
    pub last_error: Option<String>,
}

impl Pending {
    pub fn leased_at(&self, now: DateTime<Utc>) -> bool {
        self.lease_until.is_some_and(|until| until > now)
    }
}

/// A user as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: String,
    /// The caller that owns the user (enrolled them first, or first managed them).
    #[serde(skip)]
    pub owner: Option<String>,
    #[serde(skip)]
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub standing: Standing,
    #[serde(default)]
    pub fraud_flagged: bool,
    #[serde(default)]
    pub reenrollment_allowed: bool,
    #[serde(default)]
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub deleted_by: Option<String>,
    #[serde(default)]
    pub pending: Option<Pending>,
    /// When the user was last managed.
    #[serde(default)]
    pub managed_at: Option<DateTime<Utc>>,
    /// Bumped by every write; writes are compare-and-set on it (0: not stored yet).
    #[serde(skip)]
    pub version: i64,
}

impl UserRecord {
    /// A user the service has not stored yet.
    pub fn new(user_id: &str, owner: Option<String>, now: DateTime<Utc>) -> Self {
        Self {
            user_id: user_id.to_owned(),
            owner,
            created_at: now,
            standing: Standing::Active,
            fraud_flagged: false,
            reenrollment_allowed: false,
            deleted_at: None,
            deleted_by: None,
            pending: None,
            managed_at: None,
            version: 0,
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.standing == Standing::Deleted
    }

    /// Whether new jobs for the user must be refused here, without Smile ID:
    /// deleted, or being deleted.
    pub fn refuses_jobs(&self) -> bool {
        self.is_deleted()
            || self
                .pending
                .as_ref()
                .is_some_and(|pending| pending.operation == Operation::Delete)
    }

    /// When the reconciler of user operations should look at the user next.
    pub fn due_at(&self) -> Option<DateTime<Utc>> {
        self.pending.as_ref().map(|pending| {
            pending
                .lease_until
                .map_or(pending.next_attempt_at, |until| until.max(pending.next_attempt_at))
        })
    }

    /// Marks the pending operation carried out.
    pub fn complete(&mut self, now: DateTime<Utc>) -> Option<Operation> {
        let pending = self.pending.take()?;
        pending.operation.apply(self, pending.requested_by, now);
        self.managed_at = Some(now);
        Some(pending.operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_is_done_once_the_user_stands_as_it_leaves_them() {
        let now = Utc::now();
        for operation in [
            Operation::AllowReenrollment,
            Operation::Deactivate,
            Operation::Reactivate,
            Operation::Flag,
            Operation::Unflag,
            Operation::Delete,
        ] {
            let mut user = UserRecord::new("u", Some("cn:a".into()), now);
            if operation == Operation::Reactivate {
                user.standing = Standing::Deactivated;
            }
            if operation == Operation::Unflag {
                user.fraud_flagged = true;
            }
            assert!(!operation.is_done_for(&user), "{operation:?}");
            user.pending = Some(Pending {
                operation,
                requested_by: Some("cn:b".into()),
                requested_at: now,
                attempts: 0,
                next_attempt_at: now,
                lease_until: None,
                last_error: None,
            });
            assert_eq!(user.complete(now), Some(operation));
            assert!(operation.is_done_for(&user), "{operation:?}");
            assert_eq!(user.pending, None);
        }
    }

    #[test]
    fn a_tombstone_keeps_who_and_when_and_refuses_jobs() {
        let now = Utc::now();
        let mut user = UserRecord::new("u", Some("cn:a".into()), now);
        user.fraud_flagged = true;
        user.pending = Some(Pending {
            operation: Operation::Delete,
            requested_by: Some("cn:b".into()),
            requested_at: now,
            attempts: 2,
            next_attempt_at: now,
            lease_until: None,
            last_error: Some("timeout".into()),
        });
        assert!(user.refuses_jobs(), "a deletion in progress already refuses jobs");
        user.complete(now);
        assert!(user.refuses_jobs() && user.is_deleted());
        assert_eq!((user.deleted_by.as_deref(), user.deleted_at), (Some("cn:b"), Some(now)));
        assert!(!user.fraud_flagged);
    }
}
