//! Concurrency limits that shed excess calls at once with UNAVAILABLE (reason
//! `OVERLOADED`, with `RetryInfo`), so callers back off and retry instead of
//! queueing behind a saturated replica.
//!
//! A call is admitted once its request has arrived in full (the request limits
//! sit in front), so a caller trickling or stalling its bodies holds no slot;
//! an identified caller's calls hold a place in its own share from their start.
//! Submissions and reads (everything else) draw on pools of their own, so a
//! flood of one never refuses the other, and each caller may hold at most its
//! share of either pool, so a saturated replica still serves every caller.
//! Only SelfieAuth calls count; health checks and reflection have caps of their
//! own. A unary call holds its slot until its answer has been sent, so a
//! caller that never reads its answers holds its own share and no more; a
//! stream holds its slot only until its response starts (open streams have a
//! cap of their own), and a submission waiting for its result gives its slot
//! back once Smile ID has the job.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::middleware::{Answer, Inner, Middleware};

use super::request_limits::is_submission;
use super::status::overloaded;
use crate::auth::Caller;
use crate::config::Admissions;
use crate::metrics::{Metrics, STREAMING_METHODS};
use crate::shares::{Share, Shares};

const LIMITED_PREFIX: &str = "/selfieauth.v1.SelfieAuth/";

fn answers_in_a_stream(path: &str) -> bool {
    path.strip_prefix(LIMITED_PREFIX)
        .is_some_and(|method| STREAMING_METHODS.contains(&method))
}

/// How long a call over its caller's share waits for a place in it before it
/// is refused. A caller that retries at once, whatever `RetryInfo` says, is
/// held to a few retries a second for each call over its share.
const SHARE_WAIT: Duration = Duration::from_secs(1);

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

    /// The pool a call draws on and its caller, or `None` for a call no pool limits.
    fn pool_of<B>(&self, request: &http::Request<B>) -> Option<(&Pool, Holder)> {
        let path = request.uri().path();
        if !path.starts_with(LIMITED_PREFIX) {
            return None;
        }
        let pool = if is_submission(path) {
            &self.submissions
        } else {
            &self.reads
        };
        let caller = request.extensions().get::<Caller>().unwrap_or(&Caller::Anyone);
        Some((
            pool,
            Holder {
                name: caller.name().to_owned(),
                identified: matches!(caller, Caller::Identified(_)),
            },
        ))
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

    /// The callers' shares, checked as a call starts, before its body is
    /// read: a call over its caller's share waits for a place (up to
    /// [`SHARE_WAIT`]), then is refused. An identified caller's call takes its
    /// place as it starts, so a caller with more calls than its share cannot
    /// have bodies read only to be refused, and its stalled bodies hold its
    /// own share and no one else's. Unidentified callers share one name, so
    /// theirs take their place only once they have arrived.
    pub fn on_arrival(&self) -> ShedOnArrival {
        ShedOnArrival(self.clone())
    }
}

/// Whom a call's place in a share is held for.
struct Holder {
    name: String,
    /// Unidentified callers all go by one name.
    identified: bool,
}

/// [`LoadShed::on_arrival`].
#[derive(Clone)]
pub struct ShedOnArrival(LoadShed);

impl Middleware for ShedOnArrival {
    fn call<S: Inner<B>, B: Send + 'static>(&self, inner: &mut S, mut request: http::Request<B>) -> Answer<S::Error> {
        let Some((pool, caller)) = self.0.pool_of(&request) else {
            return Box::pin(inner.call(request));
        };
        if let Some(share) = pool.shares.take(&caller.name, 1) {
            keep_for(&caller, share, &mut request);
            return Box::pin(inner.call(request));
        }
        let (shed, pool) = (self.0.clone(), pool.clone());
        // The service that was polled ready takes this call; its clone takes the next.
        let ready = inner.clone();
        let mut inner = std::mem::replace(inner, ready);
        Box::pin(async move {
            let Some(share) = pool.shares.take_within(&caller.name, 1, SHARE_WAIT).await else {
                return shed.over_share(&pool).await;
            };
            keep_for(&caller, share, &mut request);
            inner.call(request).await
        })
    }
}

/// An identified caller's call keeps the place it took until it is admitted
/// or ends; unidentified callers' calls give it back at once, having only
/// checked that there was one.
fn keep_for<B>(caller: &Holder, share: Share<String>, request: &mut http::Request<B>) {
    if caller.identified {
        request
            .extensions_mut()
            .insert(TakenOnArrival(Arc::new(Mutex::new(Some(share)))));
    }
}

/// A caller's place in its share, taken as its call started.
#[derive(Clone)]
struct TakenOnArrival(Arc<Mutex<Option<Share<String>>>>);

impl Middleware for LoadShed {
    fn call<S: Inner<B>, B: Send + 'static>(&self, inner: &mut S, request: http::Request<B>) -> Answer<S::Error> {
        let Some((pool, caller)) = self.pool_of(&request) else {
            return Box::pin(inner.call(request));
        };
        let metrics = &self.metrics;
        let taken = request
            .extensions()
            .get::<TakenOnArrival>()
            .and_then(|taken| taken.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        let Some(share) = taken.or_else(|| pool.shares.take(&caller.name, 1)) else {
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
        let streams = answers_in_a_stream(request.uri().path());
        let mut request = request;
        request.extensions_mut().insert(admission.clone());
        let call = inner.call(request);
        let in_flight = InFlight::enter(metrics.clone());
        Box::pin(async move {
            let response = call.await;
            if streams {
                drop((admission, in_flight));
                return response;
            }
            response.map(|response| {
                response.map(|body| {
                    tonic::body::Body::new(HeldUntilSent {
                        body,
                        held: Some((admission, in_flight)),
                    })
                })
            })
        })
    }
}

/// A unary call's answer, holding the call's slot until its last frame is
/// taken to be sent, or it is dropped unsent: an answer the caller does not
/// read stays in memory until then.
struct HeldUntilSent {
    body: tonic::body::Body,
    held: Option<(Admission, InFlight)>,
}

impl Body for HeldUntilSent {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        // Given back before the last frame leaves, not after: the caller may
        // have its answer, and send its next call, before this body is dropped.
        let last = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || self.body.is_end_stream(),
            Poll::Ready(_) => true,
            Poll::Pending => false,
        };
        if last {
            self.held = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn the_streaming_methods_are_those_the_contract_declares() {
        let files = prost_types::FileDescriptorSet::decode(crate::grpc::pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        let service = files
            .file
            .iter()
            .flat_map(|file| &file.service)
            .find(|service| service.name() == "SelfieAuth")
            .expect("the service");
        let mut declared: Vec<_> = service
            .method
            .iter()
            .filter(|method| method.server_streaming())
            .map(prost_types::MethodDescriptorProto::name)
            .collect();
        declared.sort_unstable();
        assert_eq!(declared, STREAMING_METHODS);
        assert!(answers_in_a_stream("/selfieauth.v1.SelfieAuth/WatchJobs"));
        assert!(!answers_in_a_stream("/selfieauth.v1.SelfieAuth/ListJobs"));
    }
}
