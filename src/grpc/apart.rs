//! Submissions are answered away from the threads that serve connections and
//! reads: on runtimes of their own, at a lower CPU priority. A runtime shares
//! its threads by task, whoever the task serves; on one runtime, a flood of
//! submissions (bodies being read, images checked, jobs sent to Smile ID)
//! puts hundreds of tasks in the queue ahead of every read, health check and
//! callback. Apart, the flood waits behind them for the CPU instead.
//!
//! Among submissions the same holds between callers: on one runtime, a caller
//! with 60 submissions in flight has 60 tasks to another's four, and under a
//! flood the other got 39-41% of the submissions, not half (the benchmark's
//! rows under attack; 47-49% this way). So each caller's first few submissions in flight
//! run on one runtime and any further ones on a second, lower still: while
//! the CPU is short, every caller's first few go ahead of anyone's further
//! ones, and when it is not, the further ones run as soon as the others.
//! Nothing waits for a place here, so a caller alone (or Smile ID being slow)
//! is never held to a few submissions at once. With authentication off there
//! is one caller, and all its submissions go ahead.

use std::sync::Arc;
use std::time::Duration;

use super::middleware::{Answer, Inner, Middleware};
use super::request_limits::is_submission;
use super::status::to_status;
use crate::auth::Caller;
use crate::fair::{BelowCalls, Precedence};
use crate::jobs::JobError;
use crate::shares::Shares;

/// How far below the connections' threads submissions are answered.
const SUBMISSIONS_NICE: u8 = 10;
/// How far below them a caller's submissions beyond its first few are answered.
const FURTHER_NICE: u8 = 19;
/// How long a runtime's threads wait for more submissions before they end,
/// giving back the memory the last ones used.
const IDLE_FOR: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SubmissionsApart {
    /// Each caller's first submissions in flight.
    ahead: Arc<BelowCalls>,
    /// Any caller's further ones.
    further: Arc<BelowCalls>,
    /// Each caller's submissions on `ahead`.
    places: Shares<String>,
}

impl SubmissionsApart {
    /// Starts the runtimes' threads. Each caller's first `places` submissions
    /// in flight go ahead: as many as the service checks and stores at once
    /// (its submission turns), enough for one caller to keep the CPU busy.
    pub fn start(places: usize) -> Self {
        Self {
            ahead: Arc::new(BelowCalls::per_core("submissions", SUBMISSIONS_NICE, IDLE_FOR)),
            further: Arc::new(BelowCalls::per_core("submissions+", FURTHER_NICE, IDLE_FOR)),
            places: Shares::new(places as u64),
        }
    }
}

impl Middleware for SubmissionsApart {
    fn call<S: Inner<B>, B: Send + 'static>(&self, inner: &mut S, mut request: http::Request<B>) -> Answer<S::Error> {
        if !is_submission(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let (runtime, precedence, place) = match request.extensions().get::<Caller>() {
            Some(Caller::Identified(identity)) => match self.places.take(&identity.as_str().to_owned(), 1) {
                Some(place) => (&self.ahead, Precedence::Ahead, Some(place)),
                None => (&self.further, Precedence::Further, None),
            },
            // With authentication off every call is the one caller's, with no
            // one else's to go ahead of.
            Some(Caller::Anyone) | None => (&self.ahead, Precedence::Ahead, None),
        };
        let runtime = runtime.clone();
        // The submission waits for its turns where it stands.
        request.extensions_mut().insert(precedence);
        let call = inner.call(request);
        Box::pin(async move {
            // Spawned once polled, inside the call's span, so its trace goes with
            // it. The place is given back as the call ends, however it ends.
            let mut task = AbortOnDrop(runtime.spawn(async move {
                let answer = call.await;
                drop(place);
                answer
            }));
            (&mut task.0).await.unwrap_or_else(|_| {
                let error = JobError::Internal("a submission's task ended abnormally".into());
                Ok(to_status(&error).into_http())
            })
        })
    }
}

/// A caller that goes away takes its call's task with it, as it would on the
/// runtime serving its connection. (What a submission sends to Smile ID runs
/// in a task of its own, which goes on.)
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::{Semaphore, mpsc};

    use super::*;
    use crate::auth::Identity;
    use crate::grpc::middleware::GrpcResponse;

    const SUBMIT: &str = "/selfieauth.v1.SelfieAuth/SubmitAuthentication";

    fn caller(name: &str) -> Caller {
        Caller::Identified(Identity::token_subject(name).expect("an identity"))
    }

    /// The rest of the stack: tells which thread each call ran on (and where
    /// it stood, if not there), then holds it in flight until `release` lets it go.
    fn recording(
        release: Arc<Semaphore>,
    ) -> (
        impl Inner<(), Error = Infallible>,
        mpsc::UnboundedReceiver<(String, String)>,
    ) {
        let (ran, runs) = mpsc::unbounded_channel();
        let inner = tower::service_fn(move |request: http::Request<()>| {
            let (ran, release) = (ran.clone(), release.clone());
            async move {
                let thread = std::thread::current().name().unwrap_or_default().to_owned();
                // A submission stands where it runs; one that does not says both.
                let stands = request.extensions().get::<Precedence>().copied();
                let fits = match thread.as_str() {
                    "submissions" => stands == Some(Precedence::Ahead),
                    "submissions+" => stands == Some(Precedence::Further),
                    _ => stands.is_none(),
                };
                let thread = if fits {
                    thread
                } else {
                    format!("{thread}, standing {stands:?}")
                };
                let name = request
                    .extensions()
                    .get::<Caller>()
                    .map(|caller| caller.name().to_owned());
                ran.send((name.unwrap_or_default(), thread)).expect("the test listens");
                release.acquire().await.expect("open").forget();
                Ok::<_, Infallible>(GrpcResponse::default())
            }
        });
        (inner, runs)
    }

    fn request(path: &str, who: Caller) -> http::Request<()> {
        let mut request = http::Request::builder().uri(path).body(()).expect("a request");
        request.extensions_mut().insert(who);
        request
    }

    async fn next_thread(runs: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
        tokio::time::timeout(Duration::from_secs(10), runs.recv())
            .await
            .expect("the call ran")
            .expect("a run")
    }

    #[tokio::test]
    async fn a_callers_submissions_beyond_its_first_few_run_below_everyones_first_few() {
        let apart = SubmissionsApart::start(2);
        let release = Arc::new(Semaphore::new(0));
        let (mut inner, mut runs) = recording(release.clone());
        let mut calls = Vec::new();
        for _ in 0..3 {
            calls.push(crate::task::spawn(
                apart.call(&mut inner, request(SUBMIT, caller("greedy"))),
            ));
            let (_, thread) = next_thread(&mut runs).await;
            let expected = if calls.len() <= 2 {
                "submissions"
            } else {
                "submissions+"
            };
            assert_eq!(thread, expected, "greedy's submission {}", calls.len());
        }
        // Another caller's first goes ahead, whatever the greedy one holds.
        calls.push(crate::task::spawn(
            apart.call(&mut inner, request(SUBMIT, caller("honest"))),
        ));
        assert_eq!(
            next_thread(&mut runs).await,
            ("honest".to_owned(), "submissions".to_owned())
        );
        // With authentication off, the one caller's submissions all go ahead.
        for _ in 0..3 {
            calls.push(crate::task::spawn(
                apart.call(&mut inner, request(SUBMIT, Caller::Anyone)),
            ));
            assert_eq!(next_thread(&mut runs).await.1, "submissions");
        }

        // Reads stay on the runtime serving the connection.
        let read = crate::task::spawn(apart.call(
            &mut inner,
            request("/selfieauth.v1.SelfieAuth/GetJob", caller("greedy")),
        ));
        let (_, thread) = next_thread(&mut runs).await;
        assert!(!thread.starts_with("submissions"), "a read ran on {thread}");

        release.add_permits(8);
        for call in calls.into_iter().chain([read]) {
            let Ok(_answer) = call.await.expect("the call's task");
        }
        // Places come back as calls end.
        let _next = crate::task::spawn(apart.call(&mut inner, request(SUBMIT, caller("greedy"))));
        assert_eq!(next_thread(&mut runs).await.1, "submissions");
        release.add_permits(1);
    }

    #[tokio::test]
    async fn a_call_given_up_gives_its_place_back() {
        let apart = SubmissionsApart::start(1);
        let release = Arc::new(Semaphore::new(0));
        let (mut inner, mut runs) = recording(release.clone());
        let first = crate::task::spawn(apart.call(&mut inner, request(SUBMIT, caller("greedy"))));
        assert_eq!(next_thread(&mut runs).await.1, "submissions");
        // The caller goes away mid-call: its task is aborted and the place is free.
        first.abort();
        let _ = first.await;
        let mut freed = false;
        for _ in 0..100 {
            if apart.places.take(&"greedy".to_owned(), 1).is_some() {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "an abandoned call still holds its place");
        // A call never polled holds none either.
        drop(apart.call(&mut inner, request(SUBMIT, caller("other"))));
        assert!(apart.places.take(&"other".to_owned(), 1).is_some());
    }
}
