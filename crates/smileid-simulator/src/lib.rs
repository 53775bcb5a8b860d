//! A faithful Smile ID simulator (HTTP): v1 `upload` / pre-signed `PUT` /
//! `job_status`, the v2 `smart-selfie-authentication` endpoint, signed callbacks,
//! and a control API that lets a test script faults.
//!
//! It shares only the signature function with [`smileid`]: requests are
//! read as raw JSON with its own tolerant rules, so a mistake in our client
//! cannot hide behind the same mistake here.
#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

mod app;
mod control;
mod delivery;
mod results;
mod serve;
mod state;
mod task;
mod users;
mod v1;
mod v2;
mod zip_check;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use serve::RunningSimulator;
pub use state::{CallbackMode, Counters, Endpoint, Fault, UserCall, UserStanding};

use smileid::signature::{ApiKey, Credentials};

/// How to run a simulator.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    pub credentials: Credentials,
    /// Users enrolled from the start (job_type 2 needs an enrolled user).
    pub enrolled_users: Vec<String>,
    /// Where callbacks go when a job names no `callback_url`.
    pub default_callback_url: Option<String>,
    /// Delay between a result and its callback.
    pub callback_delay: Duration,
    /// Delay between a provisional result and the human-review result.
    pub review_delay: Duration,
    /// Jobs kept in memory; the oldest are evicted beyond this.
    pub max_jobs: usize,
    /// Largest zip accepted by the upload `PUT`.
    pub max_zip_bytes: usize,
    /// Serve https with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SimulatorConfig {
    pub fn new(partner_id: impl Into<String>, api_key: ApiKey) -> Self {
        Self {
            credentials: Credentials::new(partner_id, api_key),
            enrolled_users: Vec::new(),
            default_callback_url: None,
            callback_delay: Duration::from_millis(100),
            review_delay: Duration::from_secs(2),
            max_jobs: 10_000,
            max_zip_bytes: 32 * 1024 * 1024,
            tls: None,
        }
    }
}

/// Binds `addr` and serves until [`RunningSimulator::shutdown`].
pub async fn start(config: SimulatorConfig, addr: SocketAddr) -> anyhow::Result<RunningSimulator> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve::run(config, listener)
}
