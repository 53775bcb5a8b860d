//! The `serve` flags: each one's variable, default and help, as `--help` shows them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use crate::jobs::{ImageLimits, ReconcilePolicy, ServiceConfig};
use crate::smileid::{ApiKey, ClientConfig, Credentials, Environment};
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
    /// How often readiness re-checks the job database (NOT_SERVING after two failures in a row).
    #[arg(long, env = "SELFIE_AUTH_READINESS_INTERVAL", default_value = "2s")]
    pub readiness_interval: Span,
    /// How often the gRPC port pings an idle HTTP/2 connection, so dead peers and proxies are noticed.
    #[arg(long, env = "SELFIE_AUTH_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s")]
    pub http2_keepalive_interval: Span,
    /// A connection that does not answer a keepalive ping within this long, or
    /// reads nothing the gRPC port sends it for this long, is closed.
    #[arg(long, env = "SELFIE_AUTH_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s")]
    pub http2_keepalive_timeout: Span,

    /// A request (a gRPC call's message, a callback's body) must arrive in full within this long.
    #[arg(long, env = "SELFIE_AUTH_REQUEST_TIMEOUT", default_value = "30s")]
    pub request_timeout: Span,
    /// A new connection must send its request headers (gRPC: its HTTP/2 preface) within this long.
    #[arg(long, env = "SELFIE_AUTH_HEADER_TIMEOUT", default_value = "10s")]
    pub header_timeout: Span,
    /// An HTTP-port connection idle this long, or whose peer reads nothing it
    /// is sent for this long, is closed.
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

/// The `serve` flags as a command, to look settings up by id.
pub fn serve_command() -> clap::Command {
    // A flag given twice takes its last value, as a later layer overrides an earlier one.
    ServeArgs::augment_args(clap::Command::new("serve").args_override_self(true))
}
