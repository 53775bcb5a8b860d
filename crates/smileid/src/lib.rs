#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]
#![warn(missing_docs)]

pub mod callback;
pub mod client;
pub mod codes;
pub mod config;
/// Why a call to Smile ID failed, and what Smile ID may hold after a failed submission.
pub mod error;
pub mod package;
pub mod signature;
pub mod users;
pub mod wire;

pub use callback::{CallbackError, VerifiedCallback, verify_callback};
pub use client::{JobStatus, JobSubmission, SmileIdClient, StatusOptions, Submitted};
pub use codes::{Decision, ErrorCode, classify_result};
pub use config::{ClientConfig, Environment, RetryPolicy, Upstream};
pub use error::{SmileIdError, SubmitError, SubmitOutcome, SubmitStage};
pub use signature::{ApiKey, Credentials};
pub use users::UserAction;
pub use wire::{PartnerParams, ResultEntry};
