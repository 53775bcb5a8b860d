//! The client commands: `submit`, `enroll`, `get`, `list`, `watch` and `user`.
//! Text for people; `--json` prints each message as grpcurl does (proto3 JSON),
//! one per line, and errors as JSON on stderr. Exit codes tell failures apart
//! (see [`exit_code`]).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};
use tonic_types::StatusExt as _;

use super::{is_broken_pipe, server_url};
use crate::grpc::pb::{self, selfie_auth_client::SelfieAuthClient};

#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Address of a selfie-auth server: host:port or a URL.
    #[arg(
        long,
        env = "SELFIE_AUTH_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Print proto3 JSON, one message per line, as grpcurl prints it; errors as JSON on stderr.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The user to authenticate (or, with `enroll`, to enrol).
    #[arg(long)]
    pub user_id: String,
    /// Idempotency key; generated when omitted.
    #[arg(long, default_value = "")]
    pub job_id: String,
    /// Selfie image file (JPEG or PNG).
    #[arg(long)]
    pub selfie: PathBuf,
    /// Liveness frame files (none, or 6 to 8).
    #[arg(long = "liveness", num_args = 1..)]
    pub liveness: Vec<PathBuf>,
    /// Extra partner params, KEY=VALUE (repeatable).
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Follow the job to its final result, printing each event as it arrives.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with --wait.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A job state to list.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StateArg {
    Submitting,
    Submitted,
    Provisional,
    Completed,
    Failed,
}

/// A job kind to list.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    Authentication,
    Enrollment,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this user's jobs.
    #[arg(long, default_value = "")]
    pub user_id: String,
    /// Only jobs in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// Only jobs of this kind.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Jobs per page (the server's default when omitted).
    #[arg(long, default_value_t = 0)]
    pub page_size: i32,
    /// Start at this page (a previous page's next page token).
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Every page, not only the first.
    #[arg(long)]
    pub all: bool,
}

/// What a client command asks of the server.
pub enum Action {
    Submit(SubmitArgs, pb::JobKind),
    Get { job_id: String, refresh: bool },
    List(ListArgs),
    Watch { job_id: String, after_sequence: u64 },
    User(UserCommand),
}

/// `selfie-auth user ...`: a user's lifecycle.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Show what the service knows of a user.
    Get { user_id: String },
    /// Let a user enrol again under the same user_id.
    AllowReenroll { user_id: String },
    /// Deactivate a user: their jobs are refused until reactivated.
    Deactivate { user_id: String },
    /// Reactivate a deactivated user.
    Reactivate { user_id: String },
    /// Flag a user as suspected of fraud: Smile ID marks their jobs failed.
    Flag { user_id: String },
    /// Clear a user's fraud flag.
    Unflag { user_id: String },
    /// Delete a user for good at Smile ID, and erase their jobs here.
    Delete {
        user_id: String,
        /// Confirm the deletion (needed when run at a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// Why a client command failed.
#[derive(Debug)]
enum Failure {
    /// Before or beside the server: a file, an address, the terminal.
    Local(anyhow::Error),
    /// The server's (or the connection's) answer.
    Rpc(tonic::Status),
    /// The command was not given what it needs.
    Usage(String),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::Local(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Self::Local(error.into())
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc(status)
    }
}

/// Exit status of a local failure (a file, an address, the output).
pub const EXIT_LOCAL: u8 = 1;
/// Exit status of a command used wrongly, as clap exits for a bad flag.
pub const EXIT_USAGE: u8 = 2;
/// A gRPC error exits with this plus its code: NOT_FOUND 15, INVALID_ARGUMENT 13,
/// FAILED_PRECONDITION 19, UNAVAILABLE 24 (a server that cannot be reached included).
pub const EXIT_RPC_BASE: u8 = 10;

/// The exit status a failure reports.
fn exit_code(failure: &Failure) -> u8 {
    match failure {
        Failure::Local(_) => EXIT_LOCAL,
        Failure::Usage(_) => EXIT_USAGE,
        Failure::Rpc(status) => EXIT_RPC_BASE + status.code() as u8,
    }
}

/// Runs a client command and reports how it ended.
pub async fn run(args: &ClientArgs, action: Action) -> ExitCode {
    let outcome = match action {
        Action::Submit(submit, kind) => self::submit(args, submit, kind).await,
        Action::Get { job_id, refresh } => get(args, job_id, refresh).await,
        Action::List(list) => self::list(args, list).await,
        Action::Watch { job_id, after_sequence } => watch(args, job_id, after_sequence).await,
        Action::User(command) => user(args, command).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`selfie-auth get x | head -1`) is not an error.
        Err(Failure::Local(error)) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(failure) => {
            let text = if args.json {
                error_json(&failure).to_string()
            } else {
                error_text(&failure)
            };
            eprintln!("{text}");
            ExitCode::from(exit_code(&failure))
        }
    }
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

async fn connect(args: &ClientArgs) -> Result<SelfieAuthClient<tonic::transport::Channel>, Failure> {
    let endpoint = tonic::transport::Endpoint::from_shared(server_url(&args.addr))
        .map_err(|_| anyhow::anyhow!("--addr {:?} is not host:port or a URL", args.addr))?;
    let channel = endpoint.connect().await.map_err(|error| {
        tonic::Status::unavailable(format!("cannot connect to {}: {}", args.addr, error_source(&error)))
    })?;
    Ok(SelfieAuthClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024))
}

/// The innermost cause of an error, which says what went wrong (connection refused, ...).
fn error_source(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A failure for people: the code, message, ErrorInfo reason and field problems.
fn error_text(failure: &Failure) -> String {
    let status = match failure {
        Failure::Local(error) => return format!("error: {error:#}"),
        Failure::Usage(message) => return format!("error: {message}"),
        Failure::Rpc(status) => status,
    };
    let details = status.get_error_details();
    let mut text = format!("error: {:?}: {}", status.code(), status.message());
    if let Some(info) = details.error_info() {
        let _ = write!(text, " [{}]", info.reason);
    }
    if let Some(bad_request) = details.bad_request() {
        for violation in &bad_request.field_violations {
            let _ = write!(text, "\n  {}: {}", violation.field, violation.description);
        }
    }
    text
}

/// A failure for scripts: `code` (a gRPC code name, or `LOCAL`), `message`, and
/// for server errors the ErrorInfo `reason` and every detail in proto3 JSON.
fn error_json(failure: &Failure) -> Value {
    let status = match failure {
        Failure::Local(error) => return json!({"code": "LOCAL", "message": format!("{error:#}")}),
        Failure::Usage(message) => return json!({"code": "USAGE", "message": message}),
        Failure::Rpc(status) => status,
    };
    let mut answer = json!({
        "code": crate::grpc::status::code_name(status.code()),
        "message": status.message(),
    });
    if let Some(info) = status.get_error_details().error_info() {
        answer["reason"] = Value::from(info.reason.clone());
    }
    if let Ok(full) = tonic_types::pb::Status::decode(status.details()) {
        answer["details"] = proto_json(&full, "google.rpc.Status")["details"].clone();
    }
    answer
}

/// The contract and the google.rpc details, for proto3 JSON.
static DESCRIPTORS: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).ok());

/// `message` (of the type `full_name`) in proto3 JSON, as grpcurl prints it:
/// lowerCamelCase names, enum names, default values left out.
fn proto_json(message: &impl prost::Message, full_name: &str) -> Value {
    DESCRIPTORS
        .as_ref()
        .and_then(|pool| pool.get_message_by_name(full_name))
        .and_then(|descriptor| DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).ok())
        .and_then(|dynamic| serde_json::to_value(&dynamic).ok())
        .unwrap_or(Value::Null)
}

fn print_json(message: &impl prost::Message, full_name: &str) -> std::io::Result<()> {
    writeln!(std::io::stdout().lock(), "{}", proto_json(message, full_name))
}

/// `submit` (an authentication) or `enroll` (an enrolment), as `kind` says.
async fn submit(client_args: &ClientArgs, args: SubmitArgs, kind: pb::JobKind) -> Result<(), Failure> {
    let selfie = std::fs::read(&args.selfie).with_context(|| format!("reading {}", args.selfie.display()))?;
    let liveness = args
        .liveness
        .iter()
        .map(|path| {
            std::fs::read(path)
                .map(Into::into)
                .with_context(|| format!("reading {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut client = connect(client_args).await?;
    let request = pb::SubmitAuthenticationRequest {
        user_id: args.user_id,
        job_id: args.job_id,
        selfie_image: selfie.into(),
        liveness_images: liveness,
        partner_params: args.params.into_iter().collect(),
        ..Default::default()
    };
    let (job, created) = if kind == pb::JobKind::Enrollment {
        let response = client
            .enroll_user(pb::EnrollUserRequest::from(request))
            .await?
            .into_inner();
        if client_args.json {
            print_json(&response, "selfieauth.v1.EnrollUserResponse")?;
        }
        (response.job.unwrap_or_default(), response.created)
    } else {
        let response = client.submit_authentication(request).await?.into_inner();
        if client_args.json {
            print_json(&response, "selfieauth.v1.SubmitAuthenticationResponse")?;
        }
        (response.job.unwrap_or_default(), response.created)
    };
    if !client_args.json {
        writeln!(
            std::io::stdout().lock(),
            "{} job {}",
            if created { "created" } else { "existing" },
            job.job_id
        )?;
        if !args.wait {
            print_job(&job)?;
        }
    }
    if args.wait {
        let followed = follow(client_args, &mut client, job.job_id.clone(), 0);
        tokio::time::timeout(args.timeout, followed).await.map_err(|_| {
            tonic::Status::deadline_exceeded(format!(
                "no final result within {}; follow it with `selfie-auth watch {}`",
                humantime::format_duration(args.timeout),
                job.job_id
            ))
        })??;
    }
    Ok(())
}

async fn get(client_args: &ClientArgs, job_id: String, refresh: bool) -> Result<(), Failure> {
    let mut client = connect(client_args).await?;
    let request = pb::GetJobRequest {
        job_id,
        refresh,
        include_history: true,
        include_image_links: refresh,
    };
    let job = client.get_job(request).await?.into_inner();
    if client_args.json {
        print_json(&job, "selfieauth.v1.Job")?;
    } else {
        print_job(&job)?;
    }
    Ok(())
}

async fn user(client_args: &ClientArgs, command: UserCommand) -> Result<(), Failure> {
    use std::io::IsTerminal as _;
    if let UserCommand::Delete { user_id, yes: false } = &command
        && std::io::stdin().is_terminal()
    {
        return Err(Failure::Usage(format!(
            "deleting {user_id} erases their enrolment at Smile ID and every job of theirs here, for good; \
             pass --yes to do it"
        )));
    }
    let mut client = connect(client_args).await?;
    let user = match command {
        UserCommand::Get { user_id } => client.get_user(pb::GetUserRequest { user_id }).await,
        UserCommand::AllowReenroll { user_id } => {
            client
                .allow_reenrollment(pb::AllowReenrollmentRequest { user_id })
                .await
        }
        UserCommand::Deactivate { user_id } => client.deactivate_user(pb::DeactivateUserRequest { user_id }).await,
        UserCommand::Reactivate { user_id } => client.reactivate_user(pb::ReactivateUserRequest { user_id }).await,
        UserCommand::Flag { user_id } => {
            client
                .set_user_fraud_flag(pb::SetUserFraudFlagRequest { user_id, flagged: true })
                .await
        }
        UserCommand::Unflag { user_id } => {
            client
                .set_user_fraud_flag(pb::SetUserFraudFlagRequest {
                    user_id,
                    flagged: false,
                })
                .await
        }
        UserCommand::Delete { user_id, .. } => client.delete_user(pb::DeleteUserRequest { user_id }).await,
    }?
    .into_inner();
    if client_args.json {
        print_json(&user, "selfieauth.v1.User")?;
    } else {
        print_user(&user)?;
    }
    Ok(())
}

fn print_user(user: &pb::User) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "  user_id     {}", user.user_id)?;
    writeln!(
        out,
        "  state       {}",
        enum_name(user.state().as_str_name(), "USER_STATE_")
    )?;
    if !user.owner.is_empty() {
        writeln!(out, "  owner       {}", user.owner)?;
    }
    writeln!(out, "  flagged     {}", user.fraud_flagged)?;
    if user.reenrollment_allowed {
        writeln!(out, "  may re-enrol")?;
    }
    if !user.enrollment_job_id.is_empty() {
        writeln!(
            out,
            "  enrolment   {} {}",
            user.enrollment_job_id,
            enum_name(user.enrollment_decision().as_str_name(), "DECISION_")
        )?;
    }
    writeln!(out, "  jobs        {}", user.job_count)?;
    if let Some(at) = user.last_activity_time.and_then(rfc3339) {
        writeln!(out, "  last active {at}")?;
    }
    if user.pending_operation() != pb::UserOperation::Unspecified {
        writeln!(
            out,
            "  pending     {}",
            enum_name(user.pending_operation().as_str_name(), "USER_OPERATION_")
        )?;
    }
    if let Some(at) = user.delete_time.and_then(rfc3339) {
        writeln!(out, "  deleted     {at} by {}", user.deleted_by)?;
    }
    Ok(())
}

async fn list(client_args: &ClientArgs, args: ListArgs) -> Result<(), Failure> {
    let mut client = connect(client_args).await?;
    let state = args.state.map_or(pb::JobState::Unspecified, |state| match state {
        StateArg::Submitting => pb::JobState::Submitting,
        StateArg::Submitted => pb::JobState::Submitted,
        StateArg::Provisional => pb::JobState::Provisional,
        StateArg::Completed => pb::JobState::Completed,
        StateArg::Failed => pb::JobState::Failed,
    });
    let kind = args.kind.map_or(pb::JobKind::Unspecified, |kind| match kind {
        KindArg::Authentication => pb::JobKind::Authentication,
        KindArg::Enrollment => pb::JobKind::Enrollment,
    });
    let mut page_token = args.page_token;
    loop {
        let request = pb::ListJobsRequest {
            user_id: args.user_id.clone(),
            state: state as i32,
            kind: kind as i32,
            page_size: args.page_size,
            page_token: page_token.clone(),
        };
        let page = client.list_jobs(request).await?.into_inner();
        if client_args.json {
            print_json(&page, "selfieauth.v1.ListJobsResponse")?;
        } else {
            for job in &page.jobs {
                writeln!(
                    std::io::stdout().lock(),
                    "{:<28} {:<20} {:<14} {:<11} {:<22} {}",
                    job.job_id,
                    job.user_id,
                    enum_name(job.kind().as_str_name(), "JOB_KIND_"),
                    enum_name(job.state().as_str_name(), "JOB_STATE_"),
                    enum_name(job.decision().as_str_name(), "DECISION_"),
                    job.create_time.and_then(rfc3339).unwrap_or_default()
                )?;
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        if !args.all {
            if !client_args.json {
                eprintln!("more: --page-token {} (or --all)", page.next_page_token);
            }
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

async fn watch(client_args: &ClientArgs, job_id: String, after_sequence: u64) -> Result<(), Failure> {
    let mut client = connect(client_args).await?;
    follow(client_args, &mut client, job_id, after_sequence).await
}

/// Prints a job's events as they arrive, until its final one.
async fn follow(
    client_args: &ClientArgs,
    client: &mut SelfieAuthClient<tonic::transport::Channel>,
    job_id: String,
    after_sequence: u64,
) -> Result<(), Failure> {
    let mut stream = client
        .watch_job(pb::WatchJobRequest { job_id, after_sequence })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        if event.kind() == pb::JobEventKind::Heartbeat {
            if !client_args.json {
                eprintln!("  (waiting; last event {})", event.sequence);
            }
        } else if client_args.json {
            print_json(&event, "selfieauth.v1.JobEvent")?;
        } else {
            let kind = enum_name(event.kind().as_str_name(), "JOB_EVENT_KIND_");
            writeln!(std::io::stdout().lock(), "#{} {kind}", event.sequence)?;
            if let Some(job) = &event.job {
                print_job(job)?;
            }
        }
    }
    Ok(())
}

fn enum_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_owned()
}

fn rfc3339(at: prost_types::Timestamp) -> Option<String> {
    let at = chrono::DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn print_job(job: &pb::Job) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "  job_id      {}", job.job_id)?;
    writeln!(out, "  user_id     {}", job.user_id)?;
    writeln!(
        out,
        "  kind        {}",
        enum_name(job.kind().as_str_name(), "JOB_KIND_")
    )?;
    if !job.smile_job_id.is_empty() {
        writeln!(out, "  smile job   {}", job.smile_job_id)?;
    }
    writeln!(
        out,
        "  state       {}",
        enum_name(job.state().as_str_name(), "JOB_STATE_")
    )?;
    if let Some(result) = &job.result {
        writeln!(
            out,
            "  decision    {}",
            enum_name(job.decision().as_str_name(), "DECISION_")
        )?;
        writeln!(
            out,
            "  result      {} {} (confidence {}, {})",
            result.result_code,
            result.result_text,
            result.confidence,
            if result.is_final { "final" } else { "provisional" }
        )?;
    }
    for (index, entry) in job.history.iter().enumerate() {
        writeln!(out, "  history[{index}]  {} {}", entry.result_code, entry.result_text)?;
    }
    if let Some(error) = &job.error {
        writeln!(out, "  error       {}", error.message)?;
    }
    Ok(())
}
