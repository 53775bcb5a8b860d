//! How to reach Smile ID: which environment, with which credentials, timeouts and retries.

use std::time::Duration;

use rand::Rng as _;

use super::signature::Credentials;

/// Where Smile ID lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Environment {
    /// `https://testapi.smileidentity.com/v1`.
    Sandbox,
    /// `https://api.smileidentity.com/v1`.
    Production,
    /// A full base URL ending in `/v1`, e.g. the simulator's `http://127.0.0.1:8780/v1`.
    Custom(String),
}

/// Smile ID's sandbox host (docs.usesmileid.com, "Environments"); every other
/// `*.smileidentity.com` host is production.
const SANDBOX_HOST: &str = "testapi.smileidentity.com";

/// What an environment's base URL reaches, as far as what may be relaxed there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// Smile ID production, or a host that may lead there (a proxy, an alias).
    Production,
    /// Smile ID's sandbox.
    Sandbox,
    /// A server on this machine's loopback: the simulator, in development and tests.
    Loopback,
}

impl Environment {
    /// The v1 base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        match self {
            Self::Sandbox => "https://testapi.smileidentity.com/v1",
            Self::Production => "https://api.smileidentity.com/v1",
            Self::Custom(url) => url.trim_end_matches('/'),
        }
    }

    /// What the base URL reaches, by its host however it is written: only
    /// the sandbox host and loopback addresses are not production.
    pub fn upstream(&self) -> Upstream {
        let Ok(url) = reqwest::Url::parse(self.base_url()) else {
            return Upstream::Production;
        };
        match url.host() {
            Some(url::Host::Domain(host)) => {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                if host == SANDBOX_HOST {
                    Upstream::Sandbox
                } else if host == "localhost" {
                    Upstream::Loopback
                } else {
                    Upstream::Production
                }
            }
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Upstream::Loopback,
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Upstream::Loopback,
            _ => Upstream::Production,
        }
    }
}

/// Exponential backoff with full jitter for idempotent calls.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Ceiling of the wait before the first retry; it doubles with each retry.
    pub initial_backoff: Duration,
    /// Largest ceiling of a wait between attempts.
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_mins(1),
        }
    }
}

impl RetryPolicy {
    pub(crate) fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_retry_after);
        }
        let ceiling = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_backoff);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(ceiling_ms / 2..=ceiling_ms))
    }
}

#[derive(Clone, Debug)]
/// How a [`SmileIdClient`] reaches Smile ID.
pub struct ClientConfig {
    /// Which Smile ID to talk to.
    pub environment: Environment,
    /// Partner id and API keys.
    pub credentials: Credentials,
    /// Longest wait for a TCP and TLS connection.
    pub connect_timeout: Duration,
    /// Longest wait for a whole request and its answer.
    pub request_timeout: Duration,
    /// How idempotent calls are retried.
    pub retry: RetryPolicy,
    /// The partner's contact address, sent with user-management calls.
    pub contact_email: Option<String>,
}

impl ClientConfig {
    /// A configuration with the default timeouts (connect 5 s, request 30 s) and retries.
    pub fn new(environment: Environment, credentials: Credentials) -> Self {
        Self {
            environment,
            credentials,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            contact_email: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_resolve_to_documented_urls() {
        assert_eq!(Environment::Sandbox.base_url(), "https://testapi.smileidentity.com/v1");
        assert_eq!(Environment::Production.base_url(), "https://api.smileidentity.com/v1");
        assert_eq!(
            Environment::Custom("http://127.0.0.1:1/v1/".into()).base_url(),
            "http://127.0.0.1:1/v1"
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy::default();
        for attempt in 1..10 {
            let wait = policy.backoff(attempt, None);
            assert!(wait <= policy.max_backoff, "{wait:?}");
        }
        assert!(policy.backoff(3, None) >= Duration::from_secs(1));
        assert_eq!(policy.backoff(1, Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(policy.backoff(1, Some(Duration::from_mins(10))), Duration::from_mins(1));
    }
}
