//! The authorization policy: which identities may do what. A TOML file,
//! checked when the service starts and re-read when it changes (a Kubernetes
//! ConfigMap update), for example:
//!
//! ```toml
//! [[grant]]
//! identities = ["spiffe://cluster.local/ns/payments/sa/checkout"]
//! permissions = ["submit", "enroll", "get", "list", "watch_job"]
//! users = ["pay-*"]
//!
//! [[grant]]
//! identities = ["spiffe://cluster.local/ns/support/*"]
//! permissions = ["get", "list", "watch_job", "watch_all", "image_links", "others_jobs"]
//!
//! [[grant]]
//! identities = ["spiffe://cluster.local/ns/privacy/sa/erasure"]
//! permissions = ["read_users", "manage_users", "delete_users", "others_users"]
//!
//! [[limit]]
//! identities = ["spiffe://cluster.local/ns/batch/*"]
//! requests_per_second = 20.0
//! burst = 40
//! refreshes_per_second = 0.5
//! ```
//!
//! An identity or user ending in `*` matches every one with that prefix. A
//! grant with `users` lets its identities submit and enrol only for those
//! user_ids. Whoever enrols a user first owns it: other callers may act for it
//! only with `others_users`. Without a file, every identified caller may
//! submit, enrol, get, list and watch its own jobs, for users no other caller
//! owns, and nothing more: reading, managing and deleting users
//! (`read_users`, `manage_users`, `delete_users`) are granted only by name. A `[[limit]]` gives each identity it names buckets
//! of its own: SelfieAuth calls a second (with a burst), and `GetJob
//! refresh=true` calls a second (each costs a Smile ID call; burst
//! `refresh_burst`, 1 by default); the first limit naming an identity applies.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{AuthError, Caller};

/// What a caller may be permitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// SubmitAuthentication.
    Submit,
    /// EnrollUser.
    Enroll,
    /// GetJob.
    Get,
    /// ListJobs.
    List,
    /// WatchJob.
    WatchJob,
    /// WatchJobs over every caller's jobs (without it, a caller's own only).
    WatchAll,
    /// Smile ID's signed links to a user's images.
    ImageLinks,
    /// Jobs other callers created.
    OthersJobs,
    /// Submitting and enrolling for users another caller enrolled, and
    /// reading or managing them.
    OthersUsers,
    /// GetUser.
    ReadUsers,
    /// AllowReenrollment, DeactivateUser, ReactivateUser, SetUserFraudFlag.
    ManageUsers,
    /// DeleteUser: erases a user for good.
    DeleteUsers,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Enroll => "enroll",
            Self::Get => "get",
            Self::List => "list",
            Self::WatchJob => "watch_job",
            Self::WatchAll => "watch_all",
            Self::ImageLinks => "image_links",
            Self::OthersJobs => "others_jobs",
            Self::OthersUsers => "others_users",
            Self::ReadUsers => "read_users",
            Self::ManageUsers => "manage_users",
            Self::DeleteUsers => "delete_users",
        }
    }

    /// What the permission allows, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Submit => "submit authentications",
            Self::Enroll => "enrol users",
            Self::Get => "get jobs",
            Self::List => "list jobs",
            Self::WatchJob => "watch jobs",
            Self::WatchAll => "watch every caller's jobs",
            Self::ImageLinks => "fetch image links",
            Self::OthersJobs => "see jobs other callers created",
            Self::OthersUsers => "act for users other callers enrolled",
            Self::ReadUsers => "read users",
            Self::ManageUsers => "re-enrol, deactivate, reactivate or flag users",
            Self::DeleteUsers => "delete users",
        }
    }
}

/// Identities a grant names: exact, or a prefix before a trailing `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(format!("{text:?}: only a trailing * is allowed")),
            Some(prefix) => Ok(Self::Prefix(prefix.to_owned())),
            None if text.is_empty() || text.contains('*') => {
                Err(format!("{text:?}: an identity, or a prefix ending in *"))
            }
            None => Ok(Self::Exact(text.to_owned())),
        }
    }

    fn matches(&self, identity: &str) -> bool {
        match self {
            Self::Exact(exact) => identity == exact,
            Self::Prefix(prefix) => identity.starts_with(prefix.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    identities: Vec<Pattern>,
    permissions: BTreeSet<Permission>,
    /// The user_ids submissions and enrolments under this grant may name; none: any.
    users: Option<Vec<Pattern>>,
}

/// A rate: tokens a second, and how many may be spent at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Clone, Debug, PartialEq)]
struct Limit {
    identities: Vec<Pattern>,
    requests: Option<Rate>,
    refreshes: Option<Rate>,
}

/// Who may do what, and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    grants: Vec<Grant>,
    limits: Vec<Limit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    grant: Vec<GrantFile>,
    #[serde(default)]
    limit: Vec<LimitFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitFile {
    identities: Vec<String>,
    requests_per_second: Option<f64>,
    burst: Option<u32>,
    refreshes_per_second: Option<f64>,
    refresh_burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    identities: Vec<String>,
    permissions: Vec<Permission>,
    users: Option<Vec<String>>,
}

impl Default for Policy {
    /// Every identified caller may work with its own jobs.
    fn default() -> Self {
        Self {
            grants: vec![Grant {
                identities: vec![Pattern::Prefix(String::new())],
                permissions: [
                    Permission::Submit,
                    Permission::Enroll,
                    Permission::Get,
                    Permission::List,
                    Permission::WatchJob,
                ]
                .into(),
                users: None,
            }],
            limits: Vec::new(),
        }
    }
}

impl Policy {
    /// Reads a policy file's text; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut grants = Vec::new();
        for (index, grant) in file.grant.into_iter().enumerate() {
            if grant.identities.is_empty() || grant.permissions.is_empty() {
                return Err(format!("grant {}: needs identities and permissions", index + 1));
            }
            let patterns = |texts: &[String]| {
                texts
                    .iter()
                    .map(|text| Pattern::parse(text).map_err(|error| format!("grant {}: {error}", index + 1)))
                    .collect::<Result<Vec<_>, _>>()
            };
            let identities = patterns(&grant.identities)?;
            let users = match &grant.users {
                Some(users) if users.is_empty() => {
                    return Err(format!("grant {}: users, when given, names at least one", index + 1));
                }
                Some(users) => Some(patterns(users)?),
                None => None,
            };
            grants.push(Grant {
                identities,
                permissions: grant.permissions.into_iter().collect(),
                users,
            });
        }
        let mut limits = Vec::new();
        for (index, limit) in file.limit.into_iter().enumerate() {
            let context = |error: String| format!("limit {}: {error}", index + 1);
            if limit.identities.is_empty() {
                return Err(context("needs identities".into()));
            }
            let identities = limit
                .identities
                .iter()
                .map(|text| Pattern::parse(text).map_err(context))
                .collect::<Result<Vec<_>, _>>()?;
            let rate = |per_second: Option<f64>, burst: Option<u32>, name: &str| match per_second {
                None if burst.is_some() => Err(context(format!("a burst needs {name}"))),
                None => Ok(None),
                Some(rate) if !(rate.is_finite() && rate > 0.0) => {
                    Err(context(format!("{name} must be a positive number")))
                }
                Some(rate) => Ok(Some(Rate {
                    per_second: rate,
                    burst: f64::from(burst.unwrap_or(1).max(1)),
                })),
            };
            let requests = rate(limit.requests_per_second, limit.burst, "requests_per_second")?;
            let refreshes = rate(limit.refreshes_per_second, limit.refresh_burst, "refreshes_per_second")?;
            if requests.is_none() && refreshes.is_none() {
                return Err(context("needs requests_per_second or refreshes_per_second".into()));
            }
            limits.push(Limit {
                identities,
                requests,
                refreshes,
            });
        }
        Ok(Self { grants, limits })
    }

    /// The rate `identity` may spend `spend` at, from the first limit naming it.
    pub fn rate_for(&self, identity: &str, spend: super::rates::Spend) -> Option<Rate> {
        let limit = self
            .limits
            .iter()
            .find(|limit| limit.identities.iter().any(|pattern| pattern.matches(identity)))?;
        match spend {
            super::rates::Spend::Call => limit.requests,
            super::rates::Spend::Refresh => limit.refreshes,
        }
    }

    pub fn allows(&self, caller: &Caller, permission: Permission) -> bool {
        self.granting(caller, permission).next().is_some() || matches!(caller, Caller::Anyone)
    }

    /// Whether `caller` holds `permission` for `user_id`: by a grant that
    /// names no users, or one of whose users patterns matches it.
    pub fn allows_for_user(&self, caller: &Caller, permission: Permission, user_id: &str) -> bool {
        matches!(caller, Caller::Anyone)
            || self.granting(caller, permission).any(|grant| {
                grant
                    .users
                    .as_ref()
                    .is_none_or(|users| users.iter().any(|pattern| pattern.matches(user_id)))
            })
    }

    /// The grants that give `caller` `permission`.
    fn granting(&self, caller: &Caller, permission: Permission) -> impl Iterator<Item = &Grant> {
        let identity = match caller {
            Caller::Anyone => None,
            Caller::Identified(identity) => Some(identity.as_str()),
        };
        self.grants.iter().filter(move |grant| {
            identity.is_some_and(|identity| {
                grant.permissions.contains(&permission)
                    && grant.identities.iter().any(|pattern| pattern.matches(identity))
            })
        })
    }
}

/// The policy in force: the file's latest valid contents, or the default.
#[derive(Debug)]
pub struct PolicySource {
    current: RwLock<Arc<Policy>>,
    path: Option<PathBuf>,
}

impl PolicySource {
    /// The policy `path` holds (none: the default); a file that cannot be read
    /// or parsed stops the service from starting.
    pub fn open(path: Option<&Path>) -> Result<Self, String> {
        let policy = match path {
            Some(path) => read(path)?.1,
            None => Policy::default(),
        };
        Ok(Self {
            current: RwLock::new(Arc::new(policy)),
            path: path.map(Path::to_path_buf),
        })
    }

    pub fn current(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Checks `permission`, as the current policy says.
    pub fn check(&self, caller: &Caller, permission: Permission) -> Result<(), AuthError> {
        if self.current().allows(caller, permission) {
            Ok(())
        } else {
            Err(AuthError::Denied(permission))
        }
    }

    /// Re-reads the file every `interval` until `shutdown`, and puts a changed,
    /// valid policy in force; an invalid one is logged and the last kept.
    pub async fn follow(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let Some(path) = self.path.clone() else { return };
        let mut seen = read(&path).map(|(digest, _)| digest).ok();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match read(&path) {
                Ok((digest, _)) if Some(&digest) == seen.as_ref() => {}
                Ok((digest, policy)) => {
                    *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
                    seen = Some(digest);
                    info!(path = %path.display(), "authorization policy reloaded");
                }
                Err(error) => {
                    warn!(path = %path.display(), %error, "authorization policy not reloaded; the last one stays");
                }
            }
        }
    }
}

/// A policy file's digest and contents.
fn read(path: &Path) -> Result<([u8; 32], Policy), String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("reading {}: {error}", path.display()))?;
    let policy = Policy::parse(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    Ok((Sha256::digest(text.as_bytes()).into(), policy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;

    fn caller(name: &str) -> Caller {
        Caller::Identified(Identity::token_subject(name).expect("an identity"))
    }

    #[test]
    fn grants_match_exact_identities_and_prefixes() {
        let policy = Policy::parse(
            r#"
            [[grant]]
            identities = ["spiffe://c/ns/pay/sa/api"]
            permissions = ["submit", "get"]

            [[grant]]
            identities = ["spiffe://c/ns/support/*"]
            permissions = ["get", "others_jobs", "watch_all"]
            "#,
        )
        .expect("valid");
        assert!(policy.allows(&caller("spiffe://c/ns/pay/sa/api"), Permission::Submit));
        assert!(!policy.allows(&caller("spiffe://c/ns/pay/sa/api"), Permission::OthersJobs));
        assert!(!policy.allows(&caller("spiffe://c/ns/pay/sa/api2"), Permission::Submit));
        assert!(policy.allows(&caller("spiffe://c/ns/support/sa/desk"), Permission::WatchAll));
        assert!(!policy.allows(&caller("spiffe://c/ns/other/sa/x"), Permission::Get));
        assert!(
            policy.allows(&Caller::Anyone, Permission::ImageLinks),
            "no authentication, no limits"
        );
    }

    #[test]
    fn grants_with_users_cover_those_users_only() {
        let policy = Policy::parse(
            r#"
            [[grant]]
            identities = ["spiffe://c/ns/pay/*"]
            permissions = ["submit", "enroll"]
            users = ["pay-*", "shared-user"]

            [[grant]]
            identities = ["spiffe://c/ns/pay/sa/api"]
            permissions = ["get"]
            "#,
        )
        .expect("valid");
        let api = caller("spiffe://c/ns/pay/sa/api");
        assert!(policy.allows_for_user(&api, Permission::Submit, "pay-123"));
        assert!(policy.allows_for_user(&api, Permission::Enroll, "shared-user"));
        assert!(!policy.allows_for_user(&api, Permission::Enroll, "ride-123"));
        assert!(!policy.allows_for_user(&api, Permission::OthersUsers, "pay-123"));
        assert!(policy.allows_for_user(&Caller::Anyone, Permission::Submit, "ride-123"));
        assert!(Policy::parse("[[grant]]\nidentities = [\"a\"]\npermissions = [\"get\"]\nusers = []").is_err());
    }

    #[test]
    fn the_default_lets_callers_work_with_their_own_jobs_only() {
        let policy = Policy::default();
        for permission in [
            Permission::Submit,
            Permission::Enroll,
            Permission::Get,
            Permission::List,
            Permission::WatchJob,
        ] {
            assert!(policy.allows(&caller("spiffe://any"), permission));
        }
        for permission in [
            Permission::WatchAll,
            Permission::ImageLinks,
            Permission::OthersJobs,
            Permission::OthersUsers,
            Permission::ReadUsers,
            Permission::ManageUsers,
            Permission::DeleteUsers,
        ] {
            assert!(!policy.allows(&caller("spiffe://any"), permission));
        }
    }

    #[test]
    fn invalid_files_say_what_is_wrong() {
        for (text, says) in [
            (
                "[[grant]]\nidentities = [\"a\"]\npermissions = [\"fly\"]",
                "unknown variant",
            ),
            (
                "[[grant]]\nidentities = []\npermissions = [\"get\"]",
                "needs identities",
            ),
            (
                "[[grant]]\nidentities = [\"a*b*\"]\npermissions = [\"get\"]",
                "only a trailing *",
            ),
            ("[[grants]]\nidentities = [\"a\"]", "unknown field"),
        ] {
            let error = Policy::parse(text).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
