//! Concurrency limits that shed excess calls at once with UNAVAILABLE (reason
//! `OVERLOADED`, with `RetryInfo`), so callers back off and retry instead of
//! queueing behind a saturated replica.
//!
//! A call is admitted once its request has arrived in full (the request limits
//! sit in front), so a caller trickling or stalling its bodies holds no slot.
//! Submissions and reads (everything else) draw on pools of their own, so a
//! flood of one never refuses the other, and each caller may hold at most its
//! share of either pool, so a saturated replica still serves every caller.
//! Only SelfieAuth calls count; health checks and reflection have caps of their
//! own. A stream holds its slot only until its response starts, and a
//! submission waiting for its result gives its slot back once Smile ID has the job.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::middleware::{Answer, Inner, Middleware};

use super::request_limits::is_submission;
use super::status::overloaded;
use crate::auth::Caller;
use crate::config::Admissions;
use crate::metrics::Metrics;
use crate::shares::{Share, Shares};

const LIMITED_PREFIX: &str = "/selfieauth.v1.SelfieAuth/";

/// One pool of slots, and each caller's share of it.
#[derive(Clone)]
struct Pool {
    name: &'static str,
    slots: Arc<Semaphore>,
    shares: Shares<String>,
}

impl Pool {
    fn new(name: &'static str, slots: usize, per_caller: usize) -> Self {
        Self {
            name,
            slots: Arc::new(Semaphore::new(slots)),
            shares: Shares::new(per_caller.min(slots) as u64),
        }
    }
}

#[derive(Clone)]
pub struct LoadShed {
    submissions: Pool,
    reads: Pool,
    metrics: Arc<Metrics>,
}

impl LoadShed {
    pub fn new(admissions: Admissions, metrics: Arc<Metrics>) -> Self {
        Self {
            submissions: Pool::new("submissions", admissions.submissions, admissions.per_caller),
            reads: Pool::new("reads", admissions.reads, admissions.per_caller),
            metrics,
        }
    }

    /// The pool a call draws on and its caller's name, or `None` for a call
    /// no pool limits.
    fn pool_of<B>(&self, request: &http::Request<B>) -> Option<(&Pool, String)> {
        let path = request.uri().path();
        if !path.starts_with(LIMITED_PREFIX) {
            return None;
        }
        let pool = if is_submission(path) {
            &self.submissions
        } else {
            &self.reads
        };
        let caller = request
            .extensions()
            .get::<Caller>()
            .map_or_else(|| "anyone".to_owned(), |caller| caller.name().to_owned());
        Some((pool, caller))
    }

    /// What a caller over its share is told.
    fn over_share<E: Send + 'static>(&self, pool: &Pool) -> Answer<E> {
        self.metrics.shed("caller_share");
        let message = format!(
            "this caller has {} {} in flight, its share of this replica; retry shortly",
            pool.shares.limit(),
            pool.name
        );
        Box::pin(async move { Ok(overloaded(message, "caller_share", Duration::from_millis(200)).into_http()) })
    }

    /// The callers' shares, checked as a call starts: a caller already
    /// holding its whole share is refused before its body is read, not once
    /// the body has arrived only to be refused.
    pub fn on_arrival(&self) -> ShedOnArrival {
        ShedOnArrival(self.clone())
    }
}

/// [`LoadShed::on_arrival`].
#[derive(Clone)]
pub struct ShedOnArrival(LoadShed);

impl Middleware for ShedOnArrival {
    fn call<S: Inner<B>, B>(&self, inner: &mut S, request: http::Request<B>) -> Answer<S::Error> {
        let shed = &self.0;
        match shed.pool_of(&request) {
            Some((pool, caller)) if pool.shares.held(&caller) >= pool.shares.limit() => shed.over_share(pool),
            _ => Box::pin(inner.call(request)),
        }
    }
}

impl Middleware for LoadShed {
    fn call<S: Inner<B>, B>(&self, inner: &mut S, request: http::Request<B>) -> Answer<S::Error> {
        let Some((pool, caller)) = self.pool_of(&request) else {
            return Box::pin(inner.call(request));
        };
        let metrics = &self.metrics;
        let Some(share) = pool.shares.take(&caller, 1) else {
            return self.over_share(pool);
        };
        let Ok(permit) = pool.slots.clone().try_acquire_owned() else {
            metrics.shed("concurrency");
            let message = format!(
                "the server is at its concurrency limit for {}; retry shortly",
                pool.name
            );
            return Box::pin(
                async move { Ok(overloaded(message, "concurrency", Duration::from_millis(200)).into_http()) },
            );
        };
        let admission = Admission(Arc::new(Mutex::new(Some((permit, share)))));
        let mut request = request;
        request.extensions_mut().insert(admission.clone());
        let call = inner.call(request);
        let in_flight = InFlight::enter(metrics.clone());
        Box::pin(async move {
            let response = call.await;
            drop((admission, in_flight));
            response
        })
    }
}

/// A call's slot under the concurrency limit. A handler may give it back
/// early, once the admitted work is done and it only waits (a submission
/// waiting for its result).
#[derive(Clone)]
pub struct Admission(Arc<Mutex<Option<Slot>>>);

/// A pool's slot and the caller's share of it.
type Slot = (OwnedSemaphorePermit, Share<String>);

impl Admission {
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }
}

/// Counts a call in flight until dropped, even when the caller goes away mid-call.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn enter(metrics: Arc<Metrics>) -> Self {
        metrics.calls_in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.calls_in_flight.dec();
    }
}
