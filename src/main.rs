//! The `selfie-auth` command line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use selfie_auth::simulator::{self, SimulatorConfig, TlsFiles};
use selfie_auth::smileid::ApiKey;
use selfie_auth::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "selfie-auth",
    version,
    about = "Smile ID SmartSelfie™ Authentication behind one gRPC contract"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "SELFIE_AUTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Smile ID simulator (v1 upload / job_status / callbacks, v2 authentication, control API).
    Simulator(SimulatorArgs),
}

#[derive(Args)]
struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, env = "SIMULATOR_LISTEN", default_value = "127.0.0.1:8780")]
    listen: SocketAddr,
    /// Partner id the simulator accepts.
    #[arg(long, env = "SMILEID_PARTNER_ID", default_value = "1234")]
    partner_id: String,
    /// Pre-enrol this user (repeatable).
    #[arg(long = "enroll", value_name = "USER_ID")]
    enroll: Vec<String>,
    /// Callback URL for jobs that name none.
    #[arg(long, env = "SIMULATOR_CALLBACK_URL")]
    callback_url: Option<String>,
    /// Delay before each callback is posted.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    callback_delay: Duration,
    /// Delay between a provisional result and its human-review result.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    review_delay: Duration,
    /// Jobs kept in memory before the oldest are evicted.
    #[arg(long, default_value_t = 10_000)]
    max_jobs: usize,
    /// Serve https with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The simulator's API key: `SMILEID_API_KEY`, else a fixed development key.
fn simulator_api_key() -> ApiKey {
    ApiKey::new(std::env::var("SMILEID_API_KEY").unwrap_or_else(|_| "selfie-auth-simulator-key".to_owned()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Simulator(args) => run_simulator(args).await,
    }
}

async fn run_simulator(args: SimulatorArgs) -> anyhow::Result<()> {
    let mut config = SimulatorConfig::new(args.partner_id, simulator_api_key());
    config.enrolled_users = args.enroll;
    config.default_callback_url = args.callback_url;
    config.callback_delay = args.callback_delay;
    config.review_delay = args.review_delay;
    config.max_jobs = args.max_jobs;
    config.tls = args
        .tls_cert
        .zip(args.tls_key)
        .map(|(cert, key)| TlsFiles { cert, key });
    let running = simulator::start(config, args.listen)
        .await
        .with_context(|| format!("starting the simulator on {}", args.listen))?;
    eprintln!(
        "Smile ID simulator: {}  (v1 base URL {})",
        running.url(),
        running.v1_url()
    );
    tokio::select! {
        () = running_wait(running) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn running_wait(running: simulator::RunningSimulator) {
    running.wait().await;
}
