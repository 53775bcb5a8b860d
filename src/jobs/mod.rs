//! The domain core: jobs, their state machine, submission, results, streams,
//! reconciliation and retention. Transport-free: gRPC and HTTP adapters call
//! into it through [`JobService`].
//!
//! Layers, each using only those below it: `settings`, `reason` and `model`
//! (the job and its events); `error`, `ports` (what the domain needs from
//! outside); `core` (load, transition, publish); one module per
//! responsibility (`submission`, `results`, `watch`, `reconciler`,
//! `retention`, `listing`); and `service`, the front the transports hold.

mod core;
pub mod error;
pub mod fingerprint;
pub mod jpeg;
pub mod listing;
pub mod memory;
pub mod model;
pub mod ports;
pub mod reason;
mod reconciler;
mod results;
pub mod retention;
mod service;
pub mod settings;
mod submission;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod validate;
mod watch;

pub use error::{FieldViolation, InvalidReason, JobError, Limit, UnavailableReason};
pub use listing::JobPage;
pub use model::{EventKind, Job, JobEvent, JobKind, JobProblem, JobState, LogFilter, ProblemReason};
pub use ports::{EventFanout, JobMetrics, JobStore, SharedStore, SmileId, StatusExtras, StoreError};
pub use reason::ErrorReason;
pub use results::{CallbackOutcome, Fetched};
pub use retention::Expiry;
pub use service::{JobService, Ports};
pub use settings::{ImageLimits, ReconcilePolicy, RetentionPolicy, ServiceConfig};
pub use submission::SubmitOutput;
pub use validate::SubmitRequest;
pub use watch::{LogStart, WatchItem, WatchStream};
