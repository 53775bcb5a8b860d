//! The domain core: jobs, their state machine, submission, results, streams and
//! reconciliation. Transport-free: gRPC and HTTP adapters call into it.

pub mod error;
pub mod jpeg;
pub mod listing;
pub mod memory;
pub mod model;
pub mod ports;
pub mod reason;
pub mod reconciler;
pub mod results;
pub mod retention;
pub mod service;
pub mod submission;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub mod validate;
pub mod watch;

pub use error::{FieldViolation, InvalidReason, JobError, UnavailableReason};
pub use listing::JobPage;
pub use model::{EventKind, Job, JobEvent, JobKind, JobProblem, JobState, ProblemReason};
pub use ports::{EventFanout, JobStore, LogFilter, SharedStore, SmileId, StoreError};
pub use reason::ErrorReason;
pub use reconciler::ReconcilePolicy;
pub use results::{CallbackOutcome, Fetched};
pub use service::{JobService, JobServiceHandle, JobServiceSlot, Ports, ServiceConfig};
pub use submission::SubmitOutput;
pub use validate::{ImageLimits, SubmitRequest};
pub use watch::{LogStart, WatchItem, WatchStream};
