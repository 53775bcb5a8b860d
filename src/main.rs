//! The `selfie-auth` command line.
#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

use anyhow::Context as _;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
#[cfg(feature = "simulator")]
use selfie_auth::cli::dev::{self, DevArgs, SimulatorArgs};
use selfie_auth::cli::signals::run_until_signal;
use selfie_auth::cli::{self, Action, ClientArgs, SubmitArgs, is_broken_pipe};
use selfie_auth::config::{self, Config, ServeArgs};
use selfie_auth::grpc::pb;
use selfie_auth::server;
use selfie_auth::telemetry::{self, LogFormat, TelemetryConfig};

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
    #[cfg(feature = "simulator")]
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
    #[cfg(feature = "simulator")]
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

async fn run(command: Command, matches: &ArgMatches) -> anyhow::Result<()> {
    let (_, command_matches) = matches.subcommand().context("a command is required")?;
    match command {
        Command::Serve(args) => {
            let config = Config::from_args(*args, command_matches, None)?;
            let running = server::start(config).await?;
            run_until_signal(running).await
        }
        #[cfg(feature = "simulator")]
        Command::Dev(args) => dev::run_dev(*args, command_matches).await,
        #[cfg(feature = "simulator")]
        Command::Simulator(args) => dev::run_simulator(args).await,
        Command::Submit { .. }
        | Command::Enroll { .. }
        | Command::Get { .. }
        | Command::List { .. }
        | Command::Watch { .. }
        | Command::User { .. }
        | Command::Health(_) => Ok(()),
    }
}
