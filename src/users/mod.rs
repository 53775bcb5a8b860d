//! The user lifecycle: re-enrolment, deactivation, fraud flags and erasure,
//! carried out at Smile ID with the guarantees of a submission. An operation
//! the service accepted is stored before it is sent, sent again until Smile
//! ID answers, and finished by whichever replica gets to it, after a restart
//! too; a deletion then erases the user's jobs everywhere and leaves a
//! tombstone that refuses their later jobs without a call to Smile ID.

pub mod model;
mod service;

pub use model::{Operation, Standing, UserRecord};
pub use service::{UserConfig, UserService, UserView};
