//! Smile ID user management: re-enrolment, deactivation, fraud flags and
//! deletion of an enrolled user.
//!
//! Source: docs.usesmileid.com, "How to re-enroll, deactivate or delete a
//! user?" (`/further-reading/faqs/how-to-re-enroll-or-delete-a-user`). The
//! call is `POST {host}/v2/block-user`, signed like every other call (headers
//! `smileid-partner-id`, `smileid-request-signature`, `smileid-timestamp`,
//! and the same `signature` and `timestamp` in the body), with a JSON body
//! naming the user, the environment (`test` or `production`), the partner's
//! contact `email`, and exactly one flag:
//!
//! | action | flag | effect at Smile ID |
//! |---|---|---|
//! | allow re-enrolment | `allow_new_enroll: true` | the next enrolment under the user_id is accepted (otherwise 2209) |
//! | deactivate | `active: false` | the user's jobs are refused with 2207 until reactivated |
//! | reactivate | `active: true` | undoes a deactivation |
//! | flag fraud | `is_fraudulent: true` | jobs are still processed, and all are marked failed |
//! | clear flag | `is_fraudulent: false` | undoes the flag |
//! | delete | `delete: true` | permanent: the enrolment is removed and later jobs get 2208 |
//!
//! The answer's shape is not documented beyond its status: a 2xx means done,
//! a 400 carries `{code, error}` like the v1 endpoints, and 5xx or 429 may be
//! retried. Every action is idempotent, so the client retries transient failures.

use serde::Serialize;
use serde_json::Value;

use super::client::SmileIdClient;
use super::config::Upstream;
use super::error::SmileIdError;
use super::wire::{SOURCE_SDK, SOURCE_SDK_VERSION};

/// One user-management action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UserAction {
    /// Let an enrolled user enrol again (`allow_new_enroll`).
    AllowNewEnroll,
    /// Refuse the user's jobs until reactivated (`active: false`).
    Deactivate,
    /// Accept the user's jobs again (`active: true`).
    Reactivate,
    /// Mark the user as fraudulent (`is_fraudulent: true`).
    FlagFraud,
    /// Clear the fraud mark (`is_fraudulent: false`).
    ClearFraud,
    /// Delete the user and their enrolment (`delete: true`); it cannot be undone.
    Delete,
}

impl UserAction {
    /// The body's one flag, as Smile ID names it.
    fn flag(self) -> (&'static str, bool) {
        match self {
            Self::AllowNewEnroll => ("allow_new_enroll", true),
            Self::Deactivate => ("active", false),
            Self::Reactivate => ("active", true),
            Self::FlagFraud => ("is_fraudulent", true),
            Self::ClearFraud => ("is_fraudulent", false),
            Self::Delete => ("delete", true),
        }
    }

    /// The action a request body asks for: exactly one flag, with a boolean.
    pub fn from_body(body: &serde_json::Map<String, Value>) -> Option<Self> {
        let flag = |name: &str| body.get(name).map(Value::as_bool);
        let present: Vec<(&str, Option<bool>)> = ["allow_new_enroll", "active", "is_fraudulent", "delete"]
            .into_iter()
            .filter_map(|name| flag(name).map(|value| (name, value)))
            .collect();
        match present.as_slice() {
            [("allow_new_enroll", Some(true))] => Some(Self::AllowNewEnroll),
            [("active", Some(false))] => Some(Self::Deactivate),
            [("active", Some(true))] => Some(Self::Reactivate),
            [("is_fraudulent", Some(true))] => Some(Self::FlagFraud),
            [("is_fraudulent", Some(false))] => Some(Self::ClearFraud),
            [("delete", Some(true))] => Some(Self::Delete),
            _ => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowNewEnroll => "allow_new_enroll",
            Self::Deactivate => "deactivate",
            Self::Reactivate => "reactivate",
            Self::FlagFraud => "flag_fraud",
            Self::ClearFraud => "clear_fraud",
            Self::Delete => "delete",
        }
    }
}

/// The path of the user-management endpoint on the API host.
pub const BLOCK_USER_PATH: &str = "/v2/block-user";

#[derive(Serialize)]
struct BlockUserRequest<'a> {
    user_id: &'a str,
    partner_id: &'a str,
    environment: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    source_sdk: &'a str,
    source_sdk_version: &'a str,
    timestamp: &'a str,
    signature: &'a str,
    #[serde(flatten)]
    flag: serde_json::Map<String, Value>,
}

impl SmileIdClient {
    /// `POST /v2/block-user`: applies `action` to `user_id` at Smile ID.
    /// Transient failures are retried; `Ok` means Smile ID said it is done.
    #[tracing::instrument(
        name = "POST block-user",
        skip_all,
        fields(
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            http.response.status_code = tracing::field::Empty,
            smileid.operation = "block_user",
            action = action.as_str(),
            user_id,
        )
    )]
    pub async fn manage_user(&self, user_id: &str, action: UserAction) -> Result<(), SmileIdError> {
        let credentials = self.credentials();
        let environment = match self.environment().upstream() {
            Upstream::Production => "production",
            Upstream::Sandbox | Upstream::Loopback => "test",
        };
        let (name, value) = action.flag();
        let url = self.host_endpoint(BLOCK_USER_PATH);
        self.with_retries("block_user", || async {
            let (timestamp, signature) = credentials.sign_now();
            let body = BlockUserRequest {
                user_id,
                partner_id: &credentials.partner_id,
                environment,
                email: self.contact_email(),
                source_sdk: SOURCE_SDK,
                source_sdk_version: SOURCE_SDK_VERSION,
                timestamp: &timestamp,
                signature: signature.as_str(),
                flag: serde_json::Map::from_iter([(name.to_owned(), Value::Bool(value))]),
            };
            let headers = [
                ("smileid-partner-id", credentials.partner_id.as_str()),
                ("smileid-request-signature", signature.as_str()),
                ("smileid-timestamp", timestamp.as_str()),
            ];
            let response = self.post_json(&url, &body, &headers).await?;
            let _: Value = super::client::read_json(response).await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_through_its_body_flag() {
        for action in [
            UserAction::AllowNewEnroll,
            UserAction::Deactivate,
            UserAction::Reactivate,
            UserAction::FlagFraud,
            UserAction::ClearFraud,
            UserAction::Delete,
        ] {
            let (name, value) = action.flag();
            let body = serde_json::Map::from_iter([(name.to_owned(), Value::Bool(value))]);
            assert_eq!(UserAction::from_body(&body), Some(action));
        }
    }

    #[test]
    fn a_body_with_no_flag_two_flags_or_a_non_boolean_asks_for_nothing() {
        let body = |pairs: &[(&str, Value)]| {
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect::<serde_json::Map<_, _>>()
        };
        assert_eq!(UserAction::from_body(&body(&[])), None);
        assert_eq!(
            UserAction::from_body(&body(&[("active", false.into()), ("delete", true.into())])),
            None
        );
        assert_eq!(UserAction::from_body(&body(&[("delete", "true".into())])), None);
        assert_eq!(UserAction::from_body(&body(&[("delete", false.into())])), None);
        assert_eq!(
            UserAction::from_body(&body(&[("allow_new_enroll", false.into())])),
            None
        );
    }
}
