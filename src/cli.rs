//! The client commands: `submit`, `get`, `watch`. Readable by people, `--json` for scripts.

use std::path::PathBuf;

use std::io::Write as _;

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};
use tonic_types::StatusExt as _;

use crate::grpc::pb::{self, selfie_auth_client::SelfieAuthClient};

#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Address of a selfie-auth server.
    #[arg(
        long,
        env = "SELFIE_AUTH_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Print JSON (one object per line for watch) instead of text.
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
    /// Wait for the final result.
    #[arg(long)]
    pub wait: bool,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

/// A server address as a URL: `host:port` (as grpcurl takes it) or a URL.
fn server_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

async fn connect(args: &ClientArgs) -> anyhow::Result<SelfieAuthClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(server_url(&args.addr))
        .map_err(|_| anyhow::anyhow!("--addr {:?} is not host:port or a URL", args.addr))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| anyhow::anyhow!("cannot connect to {}: {}", args.addr, error_source(&error)))?;
    let client = SelfieAuthClient::new(channel);
    Ok(client
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

/// Turns a gRPC error into a readable message with its ErrorInfo reason and field problems.
fn explain(status: tonic::Status) -> anyhow::Error {
    let details = status.get_error_details();
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(info) = details.error_info() {
        text.push_str(&format!(" [{}]", info.reason));
    }
    if let Some(bad_request) = details.bad_request() {
        for violation in &bad_request.field_violations {
            text.push_str(&format!("\n  {}: {}", violation.field, violation.description));
        }
    }
    anyhow::anyhow!(text)
}

/// A request that waits for a final result gets two minutes.
fn waiting<T>(message: T, wait: bool) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if wait {
        request.set_timeout(std::time::Duration::from_secs(120));
    }
    request
}

/// `submit` (an authentication) or `enroll` (an enrolment), as `kind` says.
pub async fn submit(client_args: &ClientArgs, args: SubmitArgs, kind: pb::JobKind) -> anyhow::Result<()> {
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
    let wait = args.wait;
    let request = pb::SubmitAuthenticationRequest {
        user_id: args.user_id,
        job_id: args.job_id,
        selfie_image: selfie.into(),
        liveness_images: liveness,
        partner_params: args.params.into_iter().collect(),
        wait_for_result: args.wait,
        include_history: args.wait,
        include_image_links: false,
    };
    let (job, created) = if kind == pb::JobKind::Enrollment {
        let request = pb::EnrollUserRequest {
            user_id: request.user_id,
            job_id: request.job_id,
            selfie_image: request.selfie_image,
            liveness_images: request.liveness_images,
            partner_params: request.partner_params,
            wait_for_result: request.wait_for_result,
            include_history: request.include_history,
            include_image_links: request.include_image_links,
        };
        let response = client
            .enroll_user(waiting(request, wait))
            .await
            .map_err(explain)?
            .into_inner();
        (response.job, response.created)
    } else {
        let response = client
            .submit_authentication(waiting(request, wait))
            .await
            .map_err(explain)?
            .into_inner();
        (response.job, response.created)
    };
    let job = job.unwrap_or_default();
    if client_args.json {
        writeln!(
            std::io::stdout().lock(),
            "{}",
            json!({"created": created, "job": job_json(&job)})
        )?;
    } else {
        writeln!(
            std::io::stdout().lock(),
            "{} job {}",
            if created { "created" } else { "existing" },
            job.job_id
        )?;
        print_job(&job)?;
    }
    Ok(())
}

pub async fn get(client_args: &ClientArgs, job_id: String, refresh: bool) -> anyhow::Result<()> {
    let mut client = connect(client_args).await?;
    let request = pb::GetJobRequest {
        job_id,
        refresh,
        include_history: true,
        include_image_links: refresh,
    };
    let job = client.get_job(request).await.map_err(explain)?.into_inner();
    if client_args.json {
        writeln!(std::io::stdout().lock(), "{}", job_json(&job))?;
    } else {
        print_job(&job)?;
    }
    Ok(())
}

pub async fn watch(client_args: &ClientArgs, job_id: String, after_sequence: u64) -> anyhow::Result<()> {
    let mut client = connect(client_args).await?;
    let mut stream = client
        .watch_job(pb::WatchJobRequest { job_id, after_sequence })
        .await
        .map_err(explain)?
        .into_inner();
    while let Some(event) = stream.message().await.map_err(explain)? {
        let kind = event
            .kind()
            .as_str_name()
            .trim_start_matches("JOB_EVENT_KIND_")
            .to_owned();
        if client_args.json {
            writeln!(
                std::io::stdout().lock(),
                "{}",
                json!({"sequence": event.sequence, "kind": kind, "job": event.job.as_ref().map(job_json)})
            )?;
        } else if event.kind() == pb::JobEventKind::Heartbeat {
            eprintln!("  (waiting; last event {})", event.sequence);
        } else {
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

fn result_json(result: &pb::Result) -> Value {
    json!({
        "result_code": result.result_code, "result_text": result.result_text, "result_type": result.result_type,
        "confidence": result.confidence, "is_final": result.is_final, "is_machine_result": result.is_machine_result,
        "decision": enum_name(result.decision().as_str_name(), "DECISION_"), "actions": result.actions,
    })
}

fn job_json(job: &pb::Job) -> Value {
    json!({
        "job_id": job.job_id, "user_id": job.user_id, "smile_job_id": job.smile_job_id,
        "kind": enum_name(job.kind().as_str_name(), "JOB_KIND_"),
        "state": enum_name(job.state().as_str_name(), "JOB_STATE_"),
        "decision": enum_name(job.decision().as_str_name(), "DECISION_"),
        "result": job.result.as_ref().map(result_json),
        "history": job.history.iter().map(result_json).collect::<Vec<_>>(),
        "image_links": job.image_links,
        "error": job.error.as_ref().map(|error| json!({"code": error.code, "message": error.message})),
        "partner_params": job.partner_params,
        "create_time": job.create_time.and_then(rfc3339), "update_time": job.update_time.and_then(rfc3339),
    })
}

fn rfc3339(at: prost_types::Timestamp) -> Option<String> {
    let at = chrono::DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn print_job(job: &pb::Job) -> std::io::Result<()> {
    writeln!(std::io::stdout().lock(), "  job_id      {}", job.job_id)?;
    writeln!(std::io::stdout().lock(), "  user_id     {}", job.user_id)?;
    if !job.smile_job_id.is_empty() {
        writeln!(std::io::stdout().lock(), "  smile job   {}", job.smile_job_id)?;
    }
    writeln!(
        std::io::stdout().lock(),
        "  state       {}",
        enum_name(job.state().as_str_name(), "JOB_STATE_")
    )?;
    if let Some(result) = &job.result {
        writeln!(
            std::io::stdout().lock(),
            "  decision    {}",
            enum_name(job.decision().as_str_name(), "DECISION_")
        )?;
        writeln!(
            std::io::stdout().lock(),
            "  result      {} {} (confidence {}, {})",
            result.result_code,
            result.result_text,
            result.confidence,
            if result.is_final { "final" } else { "provisional" }
        )?;
    }
    for (index, entry) in job.history.iter().enumerate() {
        writeln!(
            std::io::stdout().lock(),
            "  history[{index}]  {} {}",
            entry.result_code,
            entry.result_text
        )?;
    }
    if let Some(error) = &job.error {
        writeln!(std::io::stdout().lock(), "  error       {}", error.message)?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// gRPC address of the server: host:port or a URL.
    #[arg(long, env = "SELFIE_AUTH_HEALTH_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Service to check; empty: the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Longest wait for an answer.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// Exit codes of `health`.
const NOT_SERVING: u8 = 1;
const UNREACHABLE: u8 = 3;

/// `selfie-auth health`: the server's gRPC health as an exit code, and a line saying it.
pub async fn health(args: &HealthArgs) -> std::process::ExitCode {
    use tonic_health::pb::health_check_response::ServingStatus;
    let url = server_url(&args.addr);
    let checked = async {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect_timeout(args.timeout)
            .timeout(args.timeout)
            .connect()
            .await?;
        let response = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: args.service.clone(),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(response.into_inner().status())
    };
    match tokio::time::timeout(args.timeout, checked).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            std::process::ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            std::process::ExitCode::from(NOT_SERVING)
        }
        Ok(Err(error)) => {
            eprintln!("error: {} is unreachable: {error}", args.addr);
            std::process::ExitCode::from(UNREACHABLE)
        }
        Err(_) => {
            eprintln!("error: {} did not answer within {:?}", args.addr, args.timeout);
            std::process::ExitCode::from(UNREACHABLE)
        }
    }
}
