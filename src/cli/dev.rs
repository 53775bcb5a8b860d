//! `selfie-auth dev` (the service and a simulator in one process) and
//! `selfie-auth simulator`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgMatches, Args};
use smileid::ApiKey;
use smileid_simulator::{RunningSimulator, SimulatorConfig, TlsFiles};

use super::signals::{run_until_signal, wait_for_signal};
use crate::config::{Config, ServeArgs};
use crate::server::{self, RunningService};

/// `dev` takes every `serve` flag; it talks to its own simulator, and its
/// addresses, database and reconciler default to what suits one machine.
#[derive(Args)]
pub struct DevArgs {
    /// Address of the built-in Smile ID simulator.
    #[arg(long, env = "SELFIE_AUTH_SIMULATOR_ADDR", default_value = "127.0.0.1:8780")]
    simulator_addr: SocketAddr,
    /// Users the simulator knows as enrolled (repeatable).
    #[arg(long = "enroll", default_value = "demo-user")]
    enroll: Vec<String>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args)]
pub struct SimulatorArgs {
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

const DEV_PARTNER_ID: &str = "1234";
const DEV_API_KEY: &str = "selfie-auth-simulator-key";

/// The simulator's API key: `SMILEID_API_KEY`, else the development key.
fn simulator_api_key() -> ApiKey {
    ApiKey::new(std::env::var("SMILEID_API_KEY").unwrap_or_else(|_| DEV_API_KEY.to_owned()))
}

pub async fn run_dev(args: DevArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let DevArgs {
        simulator_addr,
        enroll,
        mut serve,
    } = args;
    let callback_url = serve
        .callback_url
        .get_or_insert_with(|| format!("http://{}/callbacks/smileid", serve.http_addr))
        .clone();
    let mut sim_config = SimulatorConfig::new(DEV_PARTNER_ID, ApiKey::new(DEV_API_KEY));
    sim_config.enrolled_users = enroll.clone();
    sim_config.default_callback_url = Some(callback_url);
    let sim = smileid_simulator::start(sim_config, simulator_addr)
        .await
        .with_context(|| format!("starting the simulator on {simulator_addr} (--simulator-addr)"))?;

    let database = serve.data_dir.join("dev.db");
    serve
        .database_url
        .get_or_insert_with(|| format!("sqlite://{}", database.display()));
    serve.partner_id = Some(DEV_PARTNER_ID.into());
    serve.base_url = Some(sim.v1_url());
    let data_dir = serve.data_dir.clone();
    let config = Config::from_args(serve, matches, Some(ApiKey::new(DEV_API_KEY)))?;
    let database_url = config.database_url.clone();
    let running = server::start(config).await?;
    let sample = data_dir.join("sample-selfie.jpg");
    write_sample_selfie(&sample).with_context(|| format!("writing {}", sample.display()))?;
    print_banner(&running, &sim, &enroll, &database_url, &sample);
    let result = run_until_signal(running).await;
    sim.shutdown().await;
    result
}

/// Where everything `dev` started listens, and how to try it.
fn print_banner(
    running: &RunningService,
    sim: &RunningSimulator,
    enrolled: &[String],
    database_url: &str,
    sample: &Path,
) {
    let grpc = running.grpc_addr;
    println!(
        "\nselfie-auth dev is running\n\
         \x20 gRPC        {grpc}   (reflection on: grpcurl -plaintext {grpc} list)\n\
         \x20 callbacks   http://{http}/callbacks/smileid   health http://{http}/readyz\n\
         \x20 simulator   {sim_url}   (Smile ID stand-in; user(s) {users} enrolled)\n\
         \x20 database    {database_url}\n\n\
         Try it:\n\
         \x20 cargo run --release -- submit --addr http://{grpc} --user-id demo-user --selfie {sample} --wait\n\
         \x20 grpcurl -plaintext -d '{{\"job_id\": \"JOB_ID\"}}' {grpc} selfieauth.v1.SelfieAuth/GetJob\n",
        http = running.http_addr,
        sim_url = sim.url(),
        users = enrolled.join(", "),
        sample = sample.display(),
    );
}

/// A synthetic 320x320 JPEG to try the service with (the simulator judges by
/// `sandbox_result`, not by the face).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "pixel coordinates below 320 are exact as f32 and halve into a byte"
)]
fn write_sample_selfie(path: &Path) -> anyhow::Result<()> {
    let image = image::RgbImage::from_fn(320, 320, |x, y| {
        let dx = x as f32 - 160.0;
        let dy = y as f32 - 150.0;
        let face = (dx * dx) / (90.0 * 90.0) + (dy * dy) / (120.0 * 120.0) <= 1.0;
        if face {
            image::Rgb([224, 172, 140])
        } else {
            image::Rgb([40, 60, (y / 2) as u8])
        }
    });
    image.save_with_format(path, image::ImageFormat::Jpeg)?;
    Ok(())
}

pub async fn run_simulator(args: SimulatorArgs) -> anyhow::Result<()> {
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
    let running = smileid_simulator::start(config, args.listen)
        .await
        .with_context(|| format!("starting the simulator on {}", args.listen))?;
    eprintln!(
        "Smile ID simulator: {}  (v1 base URL {})",
        running.url(),
        running.v1_url()
    );
    wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}
