//! selfie-auth: a gRPC gateway for Smile ID SmartSelfie™ Authentication.
#![forbid(unsafe_code)]

pub mod simulator;
pub mod smileid;
pub mod telemetry;
