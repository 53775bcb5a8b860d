//! selfie-auth: a gRPC gateway for Smile ID SmartSelfie™ Authentication.
//!
//! Dependencies point one way: `grpc` / `callbacks` → `jobs` → `store` / `events` / `smileid`.
#![forbid(unsafe_code)]

pub mod callbacks;
pub mod cli;
pub mod config;
pub mod events;
pub mod grpc;
pub mod jobs;
pub mod metrics;
pub mod net;
pub mod server;
pub mod simulator;
pub mod smileid;
pub mod store;
pub mod telemetry;
