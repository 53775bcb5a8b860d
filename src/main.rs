//! The `selfie-auth` command line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use selfie_auth::cli::{self, Action, ClientArgs, SubmitArgs};
use selfie_auth::config::{self, Config, ServeArgs};
use selfie_auth::grpc::pb;
use selfie_auth::server::{self, RunningService};
use selfie_auth::simulator::{self, SimulatorConfig, TlsFiles};
use selfie_auth::smileid::ApiKey;
use selfie_auth::telemetry::{self, LogFormat, TelemetryConfig};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "selfie-auth",
    version,
    args_override_self = true,
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
    /// Run the service against Smile ID (sandbox, production or a base URL).
    Serve(Box<ServeArgs>),
    /// Run the service and a Smile ID simulator in one process, for trying it out.
    #[command(
        mut_arg("grpc_addr", |arg| arg.default_value("127.0.0.1:50051")),
        mut_arg("http_addr", |arg| arg.default_value("127.0.0.1:8080")),
        mut_arg("reconcile_after", |arg| arg.default_value("10s")),
        mut_arg("reconcile_max_interval", |arg| arg.default_value("1m")),
        mut_arg("shutdown_delay", |arg| arg.default_value("0s")),
        // One developer's machine: nobody to tell callers apart (the README's quick start says so loudly).
        mut_arg("insecure_no_auth", |arg| arg.default_value("true")),
        mut_arg("partner_id", |arg| arg.hide(true)),
        mut_arg("api_key_file", |arg| arg.hide(true)),
        mut_arg("environment", |arg| arg.hide(true)),
        mut_arg("base_url", |arg| arg.hide(true)),
    )]
    Dev(Box<DevArgs>),
    /// Run a Smile ID simulator (v1 upload / job_status / callbacks, v2 authentication, control API).
    Simulator(SimulatorArgs),
    /// Submit a selfie for authentication.
    Submit {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: SubmitArgs,
    },
    /// Enrol a user (SmartSelfie Registration), so they can be authenticated.
    Enroll {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: SubmitArgs,
    },
    /// Show a job.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        job_id: String,
        /// Ask Smile ID for the latest status first.
        #[arg(long)]
        refresh: bool,
    },
    /// List jobs, newest first: every job or one user's, by state and kind.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: cli::ListArgs,
    },
    /// Follow a job's events until its final result.
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        job_id: String,
        /// Replay only events after this sequence.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// A user's lifecycle: show, allow re-enrolment, deactivate, reactivate, flag, unflag, delete.
    User {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::UserCommand,
    },
    /// Check a server's gRPC health; exit 0 when serving, 1 when not, 3 when unreachable
    /// (for container health checks).
    Health(cli::HealthArgs),
}

/// `dev` takes every `serve` flag; it talks to its own simulator, and its
/// addresses, database and reconciler default to what suits one machine.
#[derive(Args)]
struct DevArgs {
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

const DEV_PARTNER_ID: &str = "1234";
const DEV_API_KEY: &str = "selfie-auth-simulator-key";

/// The simulator's API key: `SMILEID_API_KEY`, else the development key.
fn simulator_api_key() -> ApiKey {
    ApiKey::new(std::env::var("SMILEID_API_KEY").unwrap_or_else(|_| DEV_API_KEY.to_owned()))
}

// mimalloc: allocation-heavy paths (HTTP, JSON, protobuf) run markedly faster
// than on glibc's malloc; `docs/benchmarks.md` shows the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|error| config::name_environment_errors(error, &config::serve_command()).exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let telemetry = match telemetry::init(&TelemetryConfig::from_env(cli.log_format)) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Command::Health(args) = &cli.command {
        return cli::health(args).await;
    }
    let command = match client_action(cli.command) {
        Ok((client, action)) => {
            let code = cli::run(&client, action).await;
            telemetry.shutdown();
            return code;
        }
        Err(command) => *command,
    };
    let outcome = run(command, &matches).await;
    telemetry.shutdown();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A reader that went away (`selfie-auth get x | head -1`) is not an error.
        Err(error) if is_broken_pipe(&error) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A client command's connection arguments and what it asks; other commands back.
fn client_action(command: Command) -> Result<(ClientArgs, Action), Box<Command>> {
    Ok(match command {
        Command::Submit { client, args } => (client, Action::Submit(args, pb::JobKind::Authentication)),
        Command::Enroll { client, args } => (client, Action::Submit(args, pb::JobKind::Enrollment)),
        Command::Get {
            client,
            job_id,
            refresh,
        } => (client, Action::Get { job_id, refresh }),
        Command::List { client, args } => (client, Action::List(args)),
        Command::User { client, command } => (client, Action::User(command)),
        Command::Watch { client, job_id, after } => (
            client,
            Action::Watch {
                job_id,
                after_sequence: after,
            },
        ),
        other => return Err(Box::new(other)),
    })
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn run(command: Command, matches: &ArgMatches) -> anyhow::Result<()> {
    let (_, command_matches) = matches.subcommand().context("a command is required")?;
    match command {
        Command::Serve(args) => {
            let config = Config::from_args(*args, command_matches, None)?;
            let running = server::start(config).await?;
            run_until_signal(running).await
        }
        Command::Dev(args) => run_dev(*args, command_matches).await,
        Command::Simulator(args) => run_simulator(args).await,
        Command::Submit { .. }
        | Command::Enroll { .. }
        | Command::Get { .. }
        | Command::List { .. }
        | Command::Watch { .. }
        | Command::User { .. }
        | Command::Health(_) => Ok(()),
    }
}

/// Serves until SIGTERM or Ctrl-C, then shuts down gracefully; a second signal exits at once.
async fn run_until_signal(running: RunningService) -> anyhow::Result<()> {
    wait_for_signal().await;
    tokio::select! {
        () = running.shutdown() => Ok(()),
        () = wait_for_signal() => {
            info!("second signal, exiting now");
            std::process::exit(130);
        }
    }
}

async fn wait_for_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

async fn run_dev(args: DevArgs, matches: &ArgMatches) -> anyhow::Result<()> {
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
    let sim = simulator::start(sim_config, simulator_addr)
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
    let grpc = running.grpc_addr;
    println!(
        "\nselfie-auth dev is running\n\
         \x20 gRPC        {grpc}   (reflection on: grpcurl -plaintext {grpc} list)\n\
         \x20 callbacks   http://{http}/callbacks/smileid   health http://{http}/readyz\n\
         \x20 simulator   {sim_url}   (Smile ID stand-in; user(s) {users} enrolled)\n\
         \x20 database    {db}\n\n\
         Try it:\n\
         \x20 cargo run --release -- submit --addr http://{grpc} --user-id demo-user --selfie {sample} --wait\n\
         \x20 grpcurl -plaintext -d '{{\"job_id\": \"JOB_ID\"}}' {grpc} selfieauth.v1.SelfieAuth/GetJob\n",
        http = running.http_addr,
        sim_url = sim.url(),
        users = enroll.join(", "),
        db = database_url,
        sample = sample.display(),
    );
    let result = run_until_signal(running).await;
    sim.shutdown().await;
    result
}

/// A synthetic 320x320 JPEG to try the service with (the simulator judges by
/// `sandbox_result`, not by the face).
fn write_sample_selfie(path: &std::path::Path) -> anyhow::Result<()> {
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
    wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}
