//! Per-caller rate limits, as the policy's `[[limit]]` tables set them for the
//! identities they name: SelfieAuth calls a second with a burst, and apart from
//! them `GetJob refresh=true`, which costs a Smile ID call each. Each identity
//! has buckets of its own; identities no limit names are not limited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Caller;
use super::policy::{Policy, Rate};

/// What a call spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Spend {
    /// Any SelfieAuth call.
    Call,
    /// A `GetJob` that asks Smile ID afresh.
    Refresh,
}

impl Spend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "requests",
            Self::Refresh => "refreshes",
        }
    }
}

/// Why a call was refused: the limit it is over, and when a token is back.
#[derive(Clone, Debug, PartialEq)]
pub struct OverRate {
    pub spend: Spend,
    pub rate: Rate,
    pub retry_after: Duration,
}

/// A token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept at most; idle ones are forgotten first.
const BUCKETS_KEPT: usize = 10_000;

/// Every limited caller's buckets.
#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<(String, Spend), Bucket>>,
}

impl RateLimits {
    /// Spends one token of `caller`'s `spend` bucket, if `policy` limits it.
    pub fn spend(&self, policy: &Policy, caller: &Caller, spend: Spend) -> Result<(), OverRate> {
        let Caller::Identified(identity) = caller else {
            return Ok(());
        };
        let Some(rate) = policy.rate_for(identity.as_str(), spend) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= BUCKETS_KEPT {
            let full_after = |bucket: &Bucket| now.duration_since(bucket.at) > Duration::from_mins(10);
            buckets.retain(|_, bucket| !full_after(bucket));
        }
        let bucket = buckets.entry((identity.as_str().to_owned(), spend)).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let refilled = bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate.per_second;
        bucket.tokens = refilled.min(rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let retry_after = Duration::from_secs_f64(((1.0 - bucket.tokens) / rate.per_second).max(0.001));
        Err(OverRate {
            spend,
            rate,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;

    #[test]
    fn a_named_caller_spends_its_burst_then_its_rate() {
        let policy = Policy::parse(
            "[[grant]]\nidentities = [\"*\"]\npermissions = [\"get\"]\n\n\
             [[limit]]\nidentities = [\"batch-*\"]\nrequests_per_second = 10.0\nburst = 3\nrefreshes_per_second = 0.5\n",
        )
        .expect("valid");
        let limits = RateLimits::default();
        let batch = Caller::Identified(Identity::token_subject("batch-1").expect("id"));
        let other = Caller::Identified(Identity::token_subject("web").expect("id"));
        for _ in 0..3 {
            assert!(limits.spend(&policy, &batch, Spend::Call).is_ok());
        }
        let over = limits.spend(&policy, &batch, Spend::Call).expect_err("burst spent");
        assert!(over.retry_after <= Duration::from_millis(100), "{over:?}");
        assert!(limits.spend(&policy, &other, Spend::Call).is_ok(), "not limited");
        assert!(limits.spend(&policy, &Caller::Anyone, Spend::Call).is_ok());
        assert!(limits.spend(&policy, &batch, Spend::Refresh).is_ok(), "a burst of one");
        let over = limits
            .spend(&policy, &batch, Spend::Refresh)
            .expect_err("one refresh in two seconds");
        assert!(over.retry_after > Duration::from_secs(1), "{over:?}");
        std::thread::sleep(Duration::from_millis(150));
        assert!(limits.spend(&policy, &batch, Spend::Call).is_ok(), "refilled");
    }
}
