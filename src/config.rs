//! The one configuration of the service, for `serve`, `dev` and tests alike.
//!
//! Layers: a flag wins over its environment variable, which wins over the
//! default. Each default is written once — in the domain type's `Default` or
//! in the flag's attribute — and is what `--help` shows. [`Config`] is the
//! validated result; an error names what the user set: the variable when the
//! value came from the environment, the flag otherwise.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches as _};

use crate::auth::jwt::JwtVerifier;
use crate::auth::{Identity, IdentityModes, PolicySource, TrustedForwarders};
use crate::grpc::load_shed::Admissions;
use crate::jobs::retention::RetentionPolicy;
use crate::jobs::{ImageLimits, ReconcilePolicy, ServiceConfig};
use crate::server::tls::{GrpcTls, GrpcTlsAcceptor};
use crate::server::{GrpcLimits, HttpLimits};
use crate::smileid::{ApiKey, ClientConfig, Credentials, Environment, Upstream};
use crate::store::PgLimits;

/// A duration written as people write them (`90s`, `2m`, `1h 30m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = humantime::DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text).map(Span)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SmileEnvironment {
    Sandbox,
    Production,
}

fn service_defaults() -> ServiceConfig {
    ServiceConfig::default()
}

fn client_defaults() -> ClientConfig {
    ClientConfig::new(Environment::Sandbox, Credentials::new("", ApiKey::new("")))
}

/// The flags of `serve` (and of `dev`, which fills in its own defaults).
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "SELFIE_AUTH_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address: the Smile ID callback endpoint, /healthz, /readyz, /metrics.
    #[arg(long, env = "SELFIE_AUTH_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Job database: `sqlite://PATH` or `postgres://...`. Default: a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// PostgreSQL pool size per replica.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = PgLimits::default().max_connections)]
    pub database_max_connections: u32,
    /// PostgreSQL statement timeout.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value_t = Span(PgLimits::default().statement_timeout))]
    pub database_statement_timeout: Span,
    /// Where the default SQLite database lives.
    #[arg(long, env = "SELFIE_AUTH_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Smile ID partner id, exactly as the portal shows it (e.g. "085").
    #[arg(long, env = "SMILEID_PARTNER_ID")]
    pub partner_id: Option<String>,
    /// File holding the Smile ID API key (or set SMILEID_API_KEY; never a flag).
    #[arg(long, env = "SMILEID_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// After the key file changes, signatures made with the previous key stay valid this long.
    #[arg(long, env = "SMILEID_API_KEY_OVERLAP", default_value = "15m")]
    pub api_key_overlap: Span,
    /// The partner's contact address, sent with user-management calls to Smile ID.
    #[arg(long = "smileid-contact-email", env = "SMILEID_CONTACT_EMAIL")]
    pub contact_email: Option<String>,
    /// Smile ID environment.
    #[arg(long = "smileid-environment", env = "SMILEID_ENVIRONMENT", value_enum)]
    pub environment: Option<SmileEnvironment>,
    /// Smile ID v1 base URL; overrides the environment (e.g. a simulator's http://127.0.0.1:8780/v1).
    #[arg(long = "smileid-base-url", env = "SMILEID_BASE_URL")]
    pub base_url: Option<String>,
    /// Longest wait for a connection to Smile ID.
    #[arg(long = "smileid-connect-timeout", env = "SMILEID_CONNECT_TIMEOUT", default_value_t = Span(client_defaults().connect_timeout))]
    pub smileid_connect_timeout: Span,
    /// Longest wait for one Smile ID request.
    #[arg(long = "smileid-request-timeout", env = "SMILEID_REQUEST_TIMEOUT", default_value_t = Span(client_defaults().request_timeout))]
    pub smileid_request_timeout: Span,

    /// The public URL Smile ID posts results to (this service's callback endpoint).
    #[arg(long, env = "SELFIE_AUTH_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// Path of the callback endpoint on the HTTP port.
    #[arg(long, env = "SELFIE_AUTH_CALLBACK_PATH", default_value = "/callbacks/smileid")]
    pub callback_path: String,
    /// Accepted distance between a callback's signed timestamp and now.
    #[arg(long, env = "SELFIE_AUTH_CALLBACK_WINDOW", default_value = "5m")]
    pub callback_window: Span,
    /// Confirm each callback with job_status before trusting it.
    #[arg(long, env = "SELFIE_AUTH_CONFIRM_CALLBACKS", default_value_t = service_defaults().confirm_callbacks, action = clap::ArgAction::Set)]
    pub confirm_callbacks: bool,

    /// Heartbeat interval of idle streams.
    #[arg(long, env = "SELFIE_AUTH_HEARTBEAT_INTERVAL", default_value_t = Span(service_defaults().heartbeat_interval))]
    pub heartbeat_interval: Span,
    /// First job_status poll of a job without a final result.
    #[arg(long, env = "SELFIE_AUTH_RECONCILE_AFTER", default_value_t = Span(ReconcilePolicy::default().first_delay))]
    pub reconcile_after: Span,
    /// Longest interval between polls (they back off up to it).
    #[arg(long, env = "SELFIE_AUTH_RECONCILE_MAX_INTERVAL", default_value_t = Span(ReconcilePolicy::default().max_delay))]
    pub reconcile_max_interval: Span,
    /// A job without a final result after this long is FAILED (RESULT_NOT_RECEIVED).
    #[arg(long, env = "SELFIE_AUTH_RECONCILE_GIVE_UP", default_value_t = Span(ReconcilePolicy::default().give_up_after))]
    pub reconcile_give_up: Span,

    /// How long the service retries a submission Smile ID could not take (unreachable, 5xx, timeouts).
    #[arg(long, env = "SELFIE_AUTH_SUBMIT_RETRY_BUDGET", default_value_t = Span(service_defaults().submit_retry_budget))]
    pub submit_retry_budget: Span,
    /// How long a replica sending a job holds it (renewed while it sends); a replica that dies hands its jobs over after this.
    #[arg(long, env = "SELFIE_AUTH_SUBMIT_LEASE", default_value_t = Span(service_defaults().submit_lease))]
    pub submit_lease: Span,
    /// A job Smile ID never received, that nobody resubmits, is FAILED (SUBMISSION_ABANDONED) after this long.
    #[arg(long, env = "SELFIE_AUTH_ABANDON_AFTER", default_value_t = Span(ReconcilePolicy::default().abandon_after))]
    pub abandon_after: Span,

    /// Largest gRPC request, in bytes (SubmitAuthentication carries images).
    #[arg(long, env = "SELFIE_AUTH_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Bytes of memory all image decoding may use at once (submissions wait for their share).
    #[arg(long, env = "SELFIE_AUTH_DECODE_MEMORY_BYTES", default_value_t = ImageLimits::default().decode_memory_bytes)]
    pub decode_memory_bytes: usize,
    /// Bytes of images all submissions being sent (and retried) may hold at once.
    #[arg(long, env = "SELFIE_AUTH_SUBMISSION_MEMORY_BYTES", default_value_t = service_defaults().submission_memory_bytes)]
    pub submission_memory_bytes: usize,
    /// Bytes of gRPC requests arriving at once (by their declared sizes); more are shed (OVERLOADED).
    #[arg(long, env = "SELFIE_AUTH_REQUEST_MEMORY_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub request_memory_bytes: usize,
    /// SelfieAuth calls in flight before load shedding (UNAVAILABLE, reason OVERLOADED): submissions
    /// and reads each have this many.
    #[arg(long, env = "SELFIE_AUTH_CONCURRENCY_LIMIT", default_value_t = 256)]
    pub concurrency_limit: usize,
    /// Calls one caller (identity) may have in flight, of submissions and of reads each.
    #[arg(long, env = "SELFIE_AUTH_CALLER_CONCURRENCY_LIMIT", default_value_t = 64)]
    pub caller_concurrency_limit: usize,
    /// Bytes of requests one caller may have arriving at once (by declared size).
    #[arg(long, env = "SELFIE_AUTH_CALLER_REQUEST_MEMORY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub caller_request_memory_bytes: usize,
    /// After SIGTERM, how long to keep serving while not ready, so load balancers and meshes withdraw this replica first.
    #[arg(long, env = "SELFIE_AUTH_SHUTDOWN_DELAY", default_value = "5s")]
    pub shutdown_delay: Span,
    /// Longest wait for in-flight calls at shutdown.
    #[arg(long, env = "SELFIE_AUTH_DRAIN_TIMEOUT", default_value = "10s")]
    pub drain_timeout: Span,

    /// A request (a gRPC call's message, a callback's body) must arrive in full within this long.
    #[arg(long, env = "SELFIE_AUTH_REQUEST_TIMEOUT", default_value = "30s")]
    pub request_timeout: Span,
    /// A new connection must send its request headers (gRPC: its HTTP/2 preface) within this long.
    #[arg(long, env = "SELFIE_AUTH_HEADER_TIMEOUT", default_value = "10s")]
    pub header_timeout: Span,
    /// An HTTP-port connection idle this long is closed.
    #[arg(long, env = "SELFIE_AUTH_IDLE_TIMEOUT", default_value = "1m")]
    pub idle_timeout: Span,
    /// Connections open at once on the gRPC port; more are closed on arrival.
    #[arg(long, env = "SELFIE_AUTH_GRPC_MAX_CONNECTIONS", default_value_t = 4096)]
    pub grpc_max_connections: usize,
    /// Connections open at once on the HTTP port; more are closed on arrival.
    #[arg(long, env = "SELFIE_AUTH_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,
    /// Connections one peer address may have open on the gRPC port (a mesh sidecar needs a few).
    #[arg(long, env = "SELFIE_AUTH_GRPC_MAX_CONNECTIONS_PER_PEER", default_value_t = 1024)]
    pub grpc_max_connections_per_peer: usize,
    /// Health Watch streams open at once (they need no identity); more are refused (UNAVAILABLE).
    #[arg(long, env = "SELFIE_AUTH_MAX_HEALTH_WATCHES", default_value_t = 256)]
    pub max_health_watches: usize,
    /// Connections one peer address may have open on the HTTP port.
    #[arg(long, env = "SELFIE_AUTH_HTTP_MAX_CONNECTIONS_PER_PEER", default_value_t = 256)]
    pub http_max_connections_per_peer: usize,
    /// Streams (WatchJob, WatchJobs, submissions waiting for their result) open at once; more are shed (OVERLOADED).
    #[arg(long, env = "SELFIE_AUTH_MAX_OPEN_STREAMS", default_value_t = service_defaults().max_open_streams)]
    pub max_open_streams: usize,
    /// Streams one caller (identity) may have open; more are shed (OVERLOADED).
    #[arg(long, env = "SELFIE_AUTH_CALLER_MAX_OPEN_STREAMS", default_value_t = 2500)]
    pub caller_max_open_streams: usize,
    /// HTTP/2 streams (calls and watches) one gRPC connection may have open.
    #[arg(long, env = "SELFIE_AUTH_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Identify callers by the x-forwarded-client-cert header a service mesh proxy sets, when the
    /// call comes from a trusted proxy (--xfcc-trusted-peers, --xfcc-trusted-proxies).
    #[arg(long, env = "SELFIE_AUTH_TRUST_XFCC", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_xfcc: bool,
    /// Addresses or networks (comma-separated, e.g. 127.0.0.6/32 for an Istio sidecar) whose
    /// connections may carry x-forwarded-client-cert; from anyone else it is refused.
    #[arg(
        long,
        env = "SELFIE_AUTH_XFCC_TRUSTED_PEERS",
        value_delimiter = ',',
        requires = "trust_xfcc"
    )]
    pub xfcc_trusted_peers: Vec<String>,
    /// SPIFFE IDs (comma-separated) of proxies whose client certificates may carry
    /// x-forwarded-client-cert (with --grpc-client-ca).
    #[arg(
        long,
        env = "SELFIE_AUTH_XFCC_TRUSTED_PROXIES",
        value_delimiter = ',',
        requires = "trust_xfcc"
    )]
    pub xfcc_trusted_proxies: Vec<String>,
    /// Serve gRPC over TLS with this certificate (PEM; with --grpc-tls-key).
    #[arg(long, env = "SELFIE_AUTH_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --grpc-tls-cert.
    #[arg(long, env = "SELFIE_AUTH_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// Require client certificates from this CA (PEM) and identify callers by them (SPIFFE URI SAN, else CN).
    #[arg(long, env = "SELFIE_AUTH_GRPC_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_client_ca: Option<PathBuf>,
    /// Identify callers by bearer JWTs signed with a key of this JWKS file (with --jwt-issuer and --jwt-audience).
    #[arg(long, env = "SELFIE_AUTH_JWT_JWKS_FILE", requires_all = ["jwt_issuer", "jwt_audience"])]
    pub jwt_jwks_file: Option<PathBuf>,
    /// The `iss` a bearer token must carry.
    #[arg(long, env = "SELFIE_AUTH_JWT_ISSUER", requires = "jwt_jwks_file")]
    pub jwt_issuer: Option<String>,
    /// The `aud` a bearer token must carry.
    #[arg(long, env = "SELFIE_AUTH_JWT_AUDIENCE", requires = "jwt_jwks_file")]
    pub jwt_audience: Option<String>,
    /// Longest lifetime a bearer token may have (from its `iat`, or from now without one).
    #[arg(long, env = "SELFIE_AUTH_JWT_MAX_LIFETIME", default_value = "24h")]
    pub jwt_max_lifetime: Span,
    /// Identify nobody and let every caller do everything. For development only.
    #[arg(long, env = "SELFIE_AUTH_INSECURE_NO_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub insecure_no_auth: bool,
    /// Authorization policy (TOML): which identities may do what. Re-read when it changes.
    #[arg(long, env = "SELFIE_AUTH_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// Delete finished jobs and their events this long after they finished (e.g. 90d). Off when unset.
    #[arg(long, env = "SELFIE_AUTH_RETENTION")]
    pub retention: Option<Span>,
    /// Erase a user's jobs and events this long after their last job changed, once all are finished (e.g. 3y). Off when unset.
    #[arg(long, env = "SELFIE_AUTH_RETENTION_AFTER_LAST_ACTIVITY")]
    pub retention_after_last_activity: Option<Span>,
}

/// Where each setting came from, to name it as the user wrote it.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// Setting id → its flag, its variable, and whether the variable gave the value.
    names: HashMap<String, (String, Option<String>, bool)>,
}

impl Sources {
    fn from_matches(matches: &ArgMatches) -> Self {
        let names = serve_command()
            .get_arguments()
            .map(|arg| {
                let id = arg.get_id().as_str().to_owned();
                let flag = arg.get_long().map_or_else(|| id.clone(), |long| format!("--{long}"));
                let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
                let from_env = matches!(matches.value_source(&id), Some(ValueSource::EnvVariable));
                (id, (flag, env, from_env))
            })
            .collect();
        Self { names }
    }

    /// The setting `id` as the user set it: its variable when the value came
    /// from the environment, else its flag (with the variable as an alternative).
    pub fn name(&self, id: &str) -> String {
        match self.names.get(id) {
            Some((_, Some(env), true)) => env.clone(),
            Some((flag, Some(env), false)) => format!("{flag} ({env})"),
            Some((flag, None, _)) => flag.clone(),
            None => id.to_owned(),
        }
    }
}

/// Everything a running service needs, checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database_url: String,
    /// Pool and statement limits when `database_url` is PostgreSQL.
    pub database_limits: PgLimits,
    /// How often readiness re-checks the database.
    pub readiness_interval: Duration,
    pub smile: ClientConfig,
    pub callback_path: String,
    pub callback_window: Duration,
    pub service: ServiceConfig,
    /// Largest gRPC request accepted (SubmitAuthentication carries images).
    pub max_message_bytes: usize,
    /// SelfieAuth calls in flight, in all and per caller; more are shed with UNAVAILABLE (`OVERLOADED`).
    pub admissions: Admissions,
    /// Streams one caller may have open.
    pub caller_max_open_streams: usize,
    pub http2_keepalive_interval: Duration,
    /// How long to serve on, not ready, after a shutdown signal.
    pub shutdown_delay: Duration,
    /// Longest wait for in-flight calls at shutdown.
    pub drain_timeout: Duration,
    pub grpc_limits: GrpcLimits,
    pub http_limits: HttpLimits,
    /// Where each setting came from.
    pub sources: Sources,
    /// How callers are identified.
    pub identity: IdentityModes,
    /// TLS on the gRPC port (none: plaintext, for a mesh sidecar in front).
    pub grpc_tls: Option<GrpcTlsAcceptor>,
    /// The authorization policy in force, followed in its file when there is one.
    pub policy: std::sync::Arc<PolicySource>,
    /// How long finished jobs are kept (none: forever).
    pub retention: Option<RetentionPolicy>,
    /// How long a user's jobs are kept after their last activity (none: forever).
    pub activity_retention: Option<RetentionPolicy>,
    /// The API key's file, followed for rotations (none: the key came from the environment).
    pub api_key_file: Option<PathBuf>,
    /// How long the previous key stays valid after a rotation.
    pub api_key_overlap: Duration,
}

impl Config {
    /// The configuration `args` (the `serve` flags, without the program name)
    /// and the environment give, with the API key from `api_key` or, when
    /// `None`, from `SMILEID_API_KEY_FILE` / `SMILEID_API_KEY`.
    pub fn parse_from<I, T>(args: I, api_key: Option<ApiKey>) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = serve_command()
            .no_binary_name(true)
            .try_get_matches_from(args)
            .map_err(|error| anyhow::anyhow!("{}", name_environment_errors(error, &serve_command())))?;
        let args = ServeArgs::from_arg_matches(&matches)?;
        Self::from_args(args, &matches, api_key)
    }

    /// Checks parsed flags; `matches` tells where each value came from.
    #[expect(
        clippy::too_many_lines,
        reason = "to be split into sources and pure validation (config/)"
    )]
    pub fn from_args(args: ServeArgs, matches: &ArgMatches, api_key: Option<ApiKey>) -> anyhow::Result<Self> {
        let sources = Sources::from_matches(matches);
        let name = |id: &str| sources.name(id);
        let api_key = match api_key {
            Some(key) => key,
            None => read_api_key(args.api_key_file.as_deref(), &name("api_key_file"))?,
        };
        let partner_id = args
            .partner_id
            .filter(|id| !id.trim().is_empty())
            .with_context(|| format!("{} is not set: the Smile ID partner id is required", name("partner_id")))?;
        let environment = match (args.base_url, args.environment) {
            (Some(url), _) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("{} must be an http:// or https:// URL, got {url:?}", name("base_url"));
                }
                Environment::Custom(url)
            }
            (None, Some(SmileEnvironment::Sandbox)) => Environment::Sandbox,
            (None, Some(SmileEnvironment::Production)) => Environment::Production,
            (None, None) => bail!(
                "{} is not set: choose sandbox or production (or set {})",
                name("environment"),
                name("base_url")
            ),
        };
        let upstream = environment.upstream();
        if !args.confirm_callbacks && upstream == Upstream::Production {
            bail!(
                "{} is false, but {} reaches Smile ID production (or a host that may lead there): every \
                 callback must be confirmed with job_status there, since Smile ID's signature does not cover \
                 the result. Only the sandbox ({}) and loopback simulators may skip it",
                name("confirm_callbacks"),
                environment.base_url(),
                Environment::Sandbox.base_url()
            );
        }
        if let Some(url) = &args.callback_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!(
                "{} must be an http:// or https:// URL, got {url:?}",
                name("callback_url")
            );
        }
        if !args.callback_path.starts_with('/') {
            bail!(
                "{} must start with '/', got {:?}",
                name("callback_path"),
                args.callback_path
            );
        }
        // Images must fit in a message with room for the other fields.
        let image_budget = args.max_message_bytes.saturating_sub(64 * 1024);
        if image_budget < 1024 * 1024 {
            bail!(
                "{} must be at least 1 MiB + 64 KiB, got {}",
                name("max_message_bytes"),
                args.max_message_bytes
            );
        }
        for (id, bytes) in [
            ("submission_memory_bytes", args.submission_memory_bytes),
            ("request_memory_bytes", args.request_memory_bytes),
            ("caller_request_memory_bytes", args.caller_request_memory_bytes),
        ] {
            if bytes < args.max_message_bytes {
                bail!(
                    "{} must be at least the largest request ({}), got {bytes}",
                    name(id),
                    args.max_message_bytes
                );
            }
        }
        let limits = ImageLimits::default();
        let image_limits = ImageLimits {
            max_total_bytes: limits.max_total_bytes.min(image_budget),
            max_image_bytes: limits.max_image_bytes.min(image_budget),
            decode_memory_bytes: args.decode_memory_bytes,
            ..limits
        };
        // The largest image allowed must be decodable: 4096 x 4096 RGBA.
        let largest = limits.max_side_px as usize * limits.max_side_px as usize * 4;
        if args.decode_memory_bytes < largest {
            bail!(
                "{} must be at least {largest} (one {}x{} image), got {}",
                name("decode_memory_bytes"),
                limits.max_side_px,
                limits.max_side_px,
                args.decode_memory_bytes
            );
        }
        for (id, value) in [
            ("concurrency_limit", args.concurrency_limit),
            ("caller_concurrency_limit", args.caller_concurrency_limit),
        ] {
            if value == 0 {
                bail!("{} must be at least 1", name(id));
            }
        }
        if args.heartbeat_interval.0.is_zero() {
            bail!("{} must be greater than zero", name("heartbeat_interval"));
        }
        for (id, value) in [
            ("grpc_max_connections", args.grpc_max_connections),
            ("http_max_connections", args.http_max_connections),
            ("grpc_max_connections_per_peer", args.grpc_max_connections_per_peer),
            ("max_health_watches", args.max_health_watches),
            ("http_max_connections_per_peer", args.http_max_connections_per_peer),
            ("max_concurrent_streams", args.max_concurrent_streams as usize),
            ("max_open_streams", args.max_open_streams),
            ("caller_max_open_streams", args.caller_max_open_streams),
        ] {
            if value == 0 {
                bail!("{} must be at least 1", name(id));
            }
        }
        for (id, span) in [
            ("submit_lease", args.submit_lease),
            ("request_timeout", args.request_timeout),
            ("header_timeout", args.header_timeout),
            ("idle_timeout", args.idle_timeout),
        ] {
            if span.0.is_zero() {
                bail!("{} must be greater than zero", name(id));
            }
        }
        if args.database_max_connections == 0 {
            bail!("{} must be at least 1", name("database_max_connections"));
        }
        let grpc_tls_files = args.grpc_tls_cert.zip(args.grpc_tls_key).map(|(cert, key)| GrpcTls {
            cert,
            key,
            client_ca: args.grpc_client_ca,
        });
        let grpc_tls = grpc_tls_files
            .as_ref()
            .map(crate::server::tls::acceptor)
            .transpose()
            .map_err(|error| anyhow::anyhow!("{}: {error:#}", name("grpc_tls_cert")))?;
        if args.jwt_max_lifetime.0.is_zero() {
            bail!("{} must be greater than zero", name("jwt_max_lifetime"));
        }
        let bearer_tokens = match (&args.jwt_jwks_file, &args.jwt_issuer, &args.jwt_audience) {
            (Some(path), Some(issuer), Some(audience)) => Some(std::sync::Arc::new(
                JwtVerifier::open(path, issuer, audience, args.jwt_max_lifetime.0)
                    .map_err(|error| anyhow::anyhow!("{}: {error}", name("jwt_jwks_file")))?,
            )),
            _ => None,
        };
        let forwarded = args
            .trust_xfcc
            .then(|| trusted_forwarders(&args.xfcc_trusted_peers, &args.xfcc_trusted_proxies, &name))
            .transpose()?;
        let client_certificates = grpc_tls_files.as_ref().is_some_and(|tls| tls.client_ca.is_some());
        if forwarded
            .as_ref()
            .is_some_and(|trusted| !trusted.certificates.is_empty())
            && !client_certificates
        {
            bail!(
                "{} names proxies by their client certificates, which needs {}",
                name("xfcc_trusted_proxies"),
                name("grpc_client_ca")
            );
        }
        let identity = IdentityModes {
            forwarded,
            client_certificates,
            insecure_no_auth: args.insecure_no_auth,
            bearer_tokens,
        };
        if !identity.is_configured() {
            bail!(
                "no way to identify callers: set {} behind a service mesh that sets x-forwarded-client-cert, \
                 or {} to require client certificates, or {} for bearer tokens, or {} to let every caller do \
                 everything (development only)",
                name("trust_xfcc"),
                name("grpc_client_ca"),
                name("jwt_jwks_file"),
                name("insecure_no_auth")
            );
        }
        if args.retention.is_some_and(|span| span.0.is_zero()) {
            bail!("{} must be greater than zero, or unset to keep jobs", name("retention"));
        }
        if args.retention_after_last_activity.is_some_and(|span| span.0.is_zero()) {
            bail!(
                "{} must be greater than zero, or unset to keep users' jobs",
                name("retention_after_last_activity")
            );
        }
        let policy = PolicySource::open(args.policy_file.as_deref())
            .map_err(|error| anyhow::anyhow!("{}: {error}", name("policy_file")))?;
        let database_url = args
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("selfie-auth.db").display()));
        let mut smile = ClientConfig::new(environment.clone(), Credentials::new(partner_id, api_key));
        smile.contact_email.clone_from(&args.contact_email);
        smile.connect_timeout = args.smileid_connect_timeout.0;
        smile.request_timeout = args.smileid_request_timeout.0;
        let service = ServiceConfig {
            callback_url: args.callback_url,
            confirm_callbacks: args.confirm_callbacks,
            heartbeat_interval: args.heartbeat_interval.0,
            reconcile: ReconcilePolicy {
                first_delay: args.reconcile_after.0,
                max_delay: args.reconcile_max_interval.0.max(args.reconcile_after.0),
                give_up_after: args.reconcile_give_up.0,
                abandon_after: args.abandon_after.0,
                ..ReconcilePolicy::default()
            },
            submit_retry_budget: args.submit_retry_budget.0,
            submit_lease: args.submit_lease.0,
            submission_memory_bytes: args.submission_memory_bytes,
            max_open_streams: args.max_open_streams,
            image_limits,
            sandbox_params_allowed: upstream != Upstream::Production,
            ..ServiceConfig::default()
        };
        Ok(Self {
            grpc_addr: args.grpc_addr,
            http_addr: args.http_addr,
            database_url,
            database_limits: PgLimits {
                max_connections: args.database_max_connections,
                statement_timeout: args.database_statement_timeout.0,
                ..PgLimits::default()
            },
            readiness_interval: Duration::from_secs(2),
            smile,
            callback_path: args.callback_path,
            callback_window: args.callback_window.0,
            service,
            max_message_bytes: args.max_message_bytes,
            caller_max_open_streams: args.caller_max_open_streams.min(args.max_open_streams),
            admissions: Admissions {
                submissions: args.concurrency_limit,
                reads: args.concurrency_limit,
                per_caller: args.caller_concurrency_limit.min(args.concurrency_limit),
            },
            http2_keepalive_interval: Duration::from_secs(30),
            shutdown_delay: args.shutdown_delay.0,
            drain_timeout: args.drain_timeout.0,
            grpc_limits: GrpcLimits {
                max_connections: args.grpc_max_connections,
                max_connections_per_peer: args.grpc_max_connections_per_peer.min(args.grpc_max_connections),
                max_health_watches: args.max_health_watches,
                max_concurrent_streams: args.max_concurrent_streams,
                preface_timeout: args.header_timeout.0,
                request_timeout: args.request_timeout.0,
                request_memory_bytes: args.request_memory_bytes,
                caller_request_memory_bytes: args.caller_request_memory_bytes.min(args.request_memory_bytes),
            },
            http_limits: HttpLimits {
                max_connections: args.http_max_connections,
                max_connections_per_peer: args.http_max_connections_per_peer.min(args.http_max_connections),
                header_timeout: args.header_timeout.0,
                idle_timeout: args.idle_timeout.0,
                body_timeout: args.request_timeout.0,
            },
            sources,
            identity,
            grpc_tls,
            policy: std::sync::Arc::new(policy),
            retention: args.retention.map(|span| RetentionPolicy::keeping(span.0)),
            activity_retention: args
                .retention_after_last_activity
                .map(|span| RetentionPolicy::keeping(span.0)),
            api_key_file: args.api_key_file,
            api_key_overlap: args.api_key_overlap.0,
        })
    }
}

/// Rewrites clap's "invalid value for '--flag'" to name the variable when the
/// value came from the environment, since that is what the user wrote.
pub fn name_environment_errors(error: clap::Error, command: &clap::Command) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return error;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) =
        (error.get(ContextKind::InvalidArg), error.get(ContextKind::InvalidValue))
    else {
        return error;
    };
    let long = arg
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_start_matches("--");
    let from_env = command.get_arguments().find_map(|candidate| {
        let env = candidate.get_env()?;
        let set = std::env::var_os(env).is_some_and(|set| set.to_string_lossy() == value.as_str());
        (candidate.get_long() == Some(long) && set).then(|| env.to_string_lossy().into_owned())
    });
    let Some(env) = from_env else {
        return error;
    };
    let reason = std::error::Error::source(&error).map_or_else(String::new, |source| format!(": {source}"));
    clap::Error::raw(
        ErrorKind::ValueValidation,
        format!("invalid value '{value}' for {env}{reason}\n"),
    )
}

/// The proxies trusted to forward identities; at least one must be named, since
/// a header believed from anyone makes anyone anyone.
fn trusted_forwarders(
    peers: &[String],
    proxies: &[String],
    name: &dyn Fn(&str) -> String,
) -> anyhow::Result<TrustedForwarders> {
    let networks = peers
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{}: {text:?} is not an address or network (e.g. 127.0.0.6/32)",
                        name("xfcc_trusted_peers")
                    )
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let certificates = proxies
        .iter()
        .map(|text| {
            Identity::spiffe(text.trim())
                .with_context(|| format!("{}: {:?} is not a SPIFFE ID", name("xfcc_trusted_proxies"), text.trim()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let trusted = TrustedForwarders { networks, certificates };
    if trusted.is_empty() {
        bail!(
            "{} is true, but no proxy is trusted to set x-forwarded-client-cert: set {} to the addresses the \
             mesh proxy connects from (Istio's sidecar: 127.0.0.6/32), or {} to its client certificate's SPIFFE ID",
            name("trust_xfcc"),
            name("xfcc_trusted_peers"),
            name("xfcc_trusted_proxies")
        );
    }
    Ok(trusted)
}

/// The API key from `SMILEID_API_KEY`, or the file `SMILEID_API_KEY_FILE` names.
fn read_api_key(file: Option<&std::path::Path>, file_setting: &str) -> anyhow::Result<ApiKey> {
    if let Some(path) = file {
        let key =
            std::fs::read_to_string(path).with_context(|| format!("{file_setting}: cannot read {}", path.display()))?;
        let key = key.trim();
        if key.is_empty() {
            bail!("{file_setting}: {} is empty", path.display());
        }
        return Ok(ApiKey::new(key));
    }
    match std::env::var("SMILEID_API_KEY") {
        Ok(key) if !key.trim().is_empty() => Ok(ApiKey::new(key.trim())),
        _ => bail!("SMILEID_API_KEY is not set: give the Smile ID API key in SMILEID_API_KEY or SMILEID_API_KEY_FILE"),
    }
}

/// The `serve` flags as a command, to look settings up by id.
pub fn serve_command() -> clap::Command {
    // A flag given twice takes its last value, as a later layer overrides an earlier one.
    ServeArgs::augment_args(clap::Command::new("serve").args_override_self(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(args: &[&str]) -> String {
        match Config::parse_from(args, Some(ApiKey::new("k"))) {
            Ok(_) => panic!("expected an error for {args:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn every_invalid_setting_is_named_as_the_user_set_it() {
        let base = ["--partner-id", "085", "--smileid-environment", "sandbox"];
        assert!(error_of(&[]).contains("--partner-id (SMILEID_PARTNER_ID)"));
        assert!(error_of(&["--partner-id", "085"]).contains("--smileid-environment (SMILEID_ENVIRONMENT)"));
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            base.iter().copied().chain(extra.iter().copied()).collect()
        };
        for (flag, value) in [
            ("--smileid-base-url", "ftp://x"),
            ("--callback-url", "nope"),
            ("--callback-path", "cb"),
            ("--max-message-bytes", "1000"),
            ("--concurrency-limit", "0"),
            ("--database-max-connections", "0"),
            ("--heartbeat-interval", "0s"),
        ] {
            let error = error_of(&with(&[flag, value]));
            assert!(error.starts_with(flag), "{flag}: {error}");
        }
        let error = error_of(&with(&["--drain-timeout", "10"]));
        assert!(error.contains("--drain-timeout"), "{error}");
        let unconfirmed_production = error_of(&[
            "--partner-id",
            "085",
            "--smileid-environment",
            "production",
            "--confirm-callbacks",
            "false",
        ]);
        assert!(
            unconfirmed_production.starts_with("--confirm-callbacks"),
            "{unconfirmed_production}"
        );
    }

    #[test]
    fn production_is_production_however_it_is_named() {
        let unconfirmed = |url: &str| {
            Config::parse_from(
                [
                    "--partner-id",
                    "085",
                    "--smileid-base-url",
                    url,
                    "--confirm-callbacks",
                    "false",
                    "--insecure-no-auth",
                    "true",
                ],
                Some(ApiKey::new("k")),
            )
        };
        for production in [
            "https://api.smileidentity.com/v1",
            "https://API.SmileIdentity.com./v1/",
            "https://api.smileidentity.com:443/v1",
            "https://prod.smileidentity.com/api/v2",
            "https://smileid-proxy.internal/v1",
            "http://10.0.0.1:8780/v1",
        ] {
            let error = unconfirmed(production).expect_err(production).to_string();
            assert!(error.starts_with("--confirm-callbacks"), "{production}: {error}");
        }
        for relaxed in [
            "http://127.0.0.1:8780/v1",
            "http://[::1]:8780/v1",
            "http://localhost:8780/v1",
            "https://testapi.smileidentity.com/v1",
        ] {
            let config = unconfirmed(relaxed).unwrap_or_else(|error| panic!("{relaxed}: {error}"));
            assert!(config.service.sandbox_params_allowed, "{relaxed}");
        }
        let proxied = Config::parse_from(
            [
                "--partner-id",
                "085",
                "--smileid-base-url",
                "https://api.smileidentity.com/v1",
                "--insecure-no-auth",
                "true",
            ],
            Some(ApiKey::new("k")),
        )
        .expect("confirmed production");
        assert!(
            !proxied.service.sandbox_params_allowed,
            "sandbox_result never reaches production"
        );
    }

    #[test]
    fn a_trusted_mesh_needs_a_trusted_proxy() {
        let mesh = |extra: &[&str]| {
            let mut args = vec![
                "--partner-id",
                "085",
                "--smileid-environment",
                "sandbox",
                "--trust-xfcc",
                "true",
            ];
            args.extend_from_slice(extra);
            Config::parse_from(args, Some(ApiKey::new("k")))
        };
        let error = mesh(&[]).expect_err("no proxy named").to_string();
        assert!(
            error.contains("--xfcc-trusted-peers") && error.contains("127.0.0.6/32"),
            "{error}"
        );
        let error = mesh(&["--xfcc-trusted-peers", "sidecar"])
            .expect_err("not an address")
            .to_string();
        assert!(error.starts_with("--xfcc-trusted-peers"), "{error}");
        let error = mesh(&["--xfcc-trusted-proxies", "spiffe://c/ns/mesh/sa/gw"])
            .expect_err("proxy certificates need client certificates")
            .to_string();
        assert!(error.contains("--grpc-client-ca"), "{error}");
        let config = mesh(&["--xfcc-trusted-peers", "127.0.0.6,fd00::/8"]).expect("config");
        let trusted = config.identity.forwarded.expect("trusted");
        assert_eq!(trusted.networks.len(), 2);
    }

    #[test]
    fn the_api_key_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let setting = "--api-key-file";
        let missing = dir.path().join("missing");
        let error = read_api_key(Some(&missing), setting).expect_err("missing file");
        assert!(error.to_string().starts_with(setting));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        assert!(
            read_api_key(Some(&empty), setting)
                .expect_err("empty")
                .to_string()
                .contains("is empty")
        );
        let good = dir.path().join("key");
        std::fs::write(&good, "secret-key\n").expect("write");
        let key = read_api_key(Some(&good), setting).expect("key");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }

    #[test]
    fn defaults_are_the_domain_defaults_and_build_working_settings() {
        let unidentified = Config::parse_from(
            ["--partner-id", "085", "--smileid-environment", "production"],
            Some(ApiKey::new("k")),
        )
        .expect_err("serve needs a way to identify callers");
        assert!(
            unidentified.to_string().contains("--trust-xfcc")
                && unidentified.to_string().contains("--insecure-no-auth"),
            "{unidentified}"
        );
        let config = Config::parse_from(
            [
                "--partner-id",
                "085",
                "--smileid-environment",
                "production",
                "--trust-xfcc",
                "true",
                "--xfcc-trusted-peers",
                "127.0.0.6/32,::1",
            ],
            Some(ApiKey::new("k")),
        )
        .expect("config");
        assert_eq!(config.smile.environment, Environment::Production);
        assert!(
            !config.service.sandbox_params_allowed,
            "sandbox_result never reaches production"
        );
        assert_eq!(config.database_url, "sqlite://data/selfie-auth.db");
        assert_eq!(config.grpc_addr.port(), 50051);
        let defaults = ServiceConfig::default();
        assert_eq!(config.service.reconcile.first_delay, defaults.reconcile.first_delay);
        assert_eq!(config.service.reconcile.max_delay, defaults.reconcile.max_delay);
        assert_eq!(config.service.heartbeat_interval, defaults.heartbeat_interval);
        assert_eq!(config.smile.request_timeout, client_defaults().request_timeout);
        assert_eq!(
            config.database_limits.statement_timeout,
            PgLimits::default().statement_timeout
        );
        assert!(config.service.image_limits.max_total_bytes < config.max_message_bytes);
        let custom = Config::parse_from(
            [
                "--partner-id",
                "1",
                "--smileid-base-url",
                "http://127.0.0.1:8780/v1",
                "--insecure-no-auth",
                "true",
            ],
            Some(ApiKey::new("k")),
        )
        .expect("config");
        assert_eq!(
            custom.smile.environment,
            Environment::Custom("http://127.0.0.1:8780/v1".into())
        );
    }

    #[test]
    fn spans_read_and_print_as_people_write_them() {
        assert_eq!("1h 30m".parse::<Span>().expect("span").0, Duration::from_mins(90));
        assert_eq!(Span(Duration::from_mins(2)).to_string(), "2m");
        assert!("10".parse::<Span>().is_err());
    }

    /// The configuration table of docs/operations.md: `(variables, defaults)` of each row.
    fn documented() -> Vec<(String, String)> {
        crate::documented_table(
            include_str!("../docs/operations.md"),
            "| variable | default | meaning |",
        )
        .into_iter()
        .map(|cells| (cells[0].clone(), cells[1].clone()))
        .collect()
    }

    #[test]
    fn the_operations_docs_show_the_defaults_the_flags_have() {
        let command = serve_command();
        let mut checked = 0;
        for (variables, defaults) in documented() {
            let variables: Vec<&str> = variables.split(" / ").map(|v| v.trim_matches('`')).collect();
            // A default is a literal in backticks; anything else ("required ...") is none.
            let defaults: Vec<Option<&str>> = defaults
                .split(" / ")
                .map(|d| d.strip_prefix('`').and_then(|d| d.strip_suffix('`')))
                .collect();
            for (index, variable) in variables.iter().enumerate() {
                let Some(arg) = command
                    .get_arguments()
                    .find(|arg| arg.get_env().is_some_and(|env| env == *variable))
                else {
                    continue;
                };
                let flag_default: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect();
                let documented = defaults.get(index).copied().flatten();
                assert_eq!(
                    flag_default.first().map(String::as_str),
                    documented,
                    "{variable}: docs/operations.md and --help disagree"
                );
                checked += 1;
            }
        }
        assert!(
            checked >= 20,
            "only {checked} settings were found in docs/operations.md"
        );
    }
}
