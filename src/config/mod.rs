//! The one configuration of the service, for `serve`, `dev` and tests alike.
//!
//! Layers: a flag wins over its environment variable, which wins over the
//! default. Each default is written once — in the domain type's `Default` or
//! in the flag's attribute — and is what `--help` shows. [`Config`] is the
//! validated result, and it is pure: files it names (TLS, JWKS, policy, API
//! key) are opened by the wiring (`server::files`). An error names what the
//! user set: the variable when the value came from the environment, the flag
//! otherwise.

mod args;
mod limits;
mod sources;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches as _};

pub use args::{ServeArgs, SmileEnvironment, Span, serve_command};
pub use limits::{Admissions, GrpcLimits, HttpLimits, Keepalive};
pub use sources::{Sources, name_environment_errors};

use crate::auth::TrustedForwarders;
use crate::jobs::{RetentionPolicy, ServiceConfig};
use crate::smileid::{ApiKey, Environment, RetryPolicy};
use crate::store::PgLimits;

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
    pub smile: SmileSettings,
    pub callback_path: String,
    pub callback_window: Duration,
    pub service: ServiceConfig,
    /// Largest gRPC request accepted (SubmitAuthentication carries images).
    pub max_message_bytes: usize,
    /// SelfieAuth calls in flight, in all and per caller; more are shed with UNAVAILABLE (`OVERLOADED`).
    pub admissions: Admissions,
    /// Streams one caller may have open.
    pub caller_max_open_streams: usize,
    pub keepalive: Keepalive,
    /// How long to serve on, not ready, after a shutdown signal.
    pub shutdown_delay: Duration,
    /// Longest wait for in-flight calls at shutdown.
    pub drain_timeout: Duration,
    pub grpc_limits: GrpcLimits,
    pub http_limits: HttpLimits,
    /// Where each setting came from.
    pub sources: Sources,
    /// How callers are identified.
    pub identity: CallerIdentification,
    /// TLS on the gRPC port (none: plaintext, for a mesh sidecar in front).
    pub grpc_tls: Option<GrpcTls>,
    /// The authorization policy's file, followed for changes (none: the built-in policy).
    pub policy_file: Option<PathBuf>,
    /// How long finished jobs are kept (none: forever).
    pub retention: Option<RetentionPolicy>,
    /// How long a user's jobs are kept after their last activity (none: forever).
    pub activity_retention: Option<RetentionPolicy>,
}

/// How to reach Smile ID, as the partner.
#[derive(Clone, Debug)]
pub struct SmileSettings {
    pub environment: Environment,
    pub partner_id: String,
    pub api_key: ApiKeySetting,
    pub contact_email: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How idempotent calls are retried.
    pub retry: RetryPolicy,
    /// After the key file changes, signatures made with the previous key stay valid this long.
    pub key_overlap: Duration,
}

/// Where the Smile ID API key comes from.
#[derive(Clone, Debug)]
pub enum ApiKeySetting {
    /// Given whole (`SMILEID_API_KEY`, or by the program that embeds the service).
    Value(ApiKey),
    /// Read from this file at start, and again whenever it changes (a rotation).
    File(PathBuf),
}

/// The ways callers may identify themselves; at least one is on.
#[derive(Clone, Debug)]
pub struct CallerIdentification {
    /// `x-forwarded-client-cert`, believed only from these proxies.
    pub forwarded: Option<TrustedForwarders>,
    /// Verified client certificates on the gRPC port's TLS.
    pub client_certificates: bool,
    /// Bearer tokens, checked against a JWKS.
    pub bearer_tokens: Option<JwtSettings>,
    /// Every caller may do everything (development only).
    pub insecure_no_auth: bool,
}

/// The gRPC port's certificate, and the CA whose client certificates identify callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to this CA (PEM); none: no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// How bearer tokens are checked: the JWKS file with the keys that sign them,
/// and the claims a token must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtSettings {
    pub jwks_file: PathBuf,
    pub issuer: String,
    pub audience: String,
    /// Longest lifetime (`exp - iat`) a token may claim.
    pub max_lifetime: Duration,
}

impl Config {
    /// The configuration `args` (the `serve` flags, without the program name)
    /// and the environment give, with the API key from `SMILEID_API_KEY_FILE`
    /// when set, else from `api_key`, else from `SMILEID_API_KEY`.
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
    pub fn from_args(args: ServeArgs, matches: &ArgMatches, api_key: Option<ApiKey>) -> anyhow::Result<Self> {
        let sources = Sources::from_matches(matches);
        let name = |id: &str| sources.name(id);
        // A key file named is followed for rotations, whoever gave the first key.
        let api_key = match (&args.api_key_file, api_key) {
            (None, Some(key)) => ApiKeySetting::Value(key),
            (file, _) => sources::api_key(file.clone())?,
        };
        let smile = validate::smile(&args, api_key, &name)?;
        validate::callbacks(&args, &name)?;
        validate::positive(&args, &name)?;
        let image_limits = validate::image_limits(&args, &name)?;
        let identity = validate::identity(&args, &name)?;
        let (retention, activity_retention) = validate::retention(&args, &name)?;
        let service = validate::service(&args, image_limits, smile.environment.upstream());
        Ok(Self {
            grpc_addr: args.grpc_addr,
            http_addr: args.http_addr,
            database_url: args
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("selfie-auth.db").display())),
            database_limits: PgLimits {
                max_connections: args.database_max_connections,
                statement_timeout: args.database_statement_timeout.0,
                ..PgLimits::default()
            },
            readiness_interval: args.readiness_interval.0,
            smile,
            callback_window: args.callback_window.0,
            service,
            max_message_bytes: args.max_message_bytes,
            caller_max_open_streams: args.caller_max_open_streams.min(args.max_open_streams),
            admissions: validate::admissions(&args),
            keepalive: Keepalive {
                interval: args.http2_keepalive_interval.0,
                timeout: args.http2_keepalive_timeout.0,
            },
            shutdown_delay: args.shutdown_delay.0,
            drain_timeout: args.drain_timeout.0,
            grpc_limits: validate::grpc_limits(&args),
            http_limits: validate::http_limits(&args),
            identity,
            grpc_tls: args.grpc_tls_cert.zip(args.grpc_tls_key).map(|(cert, key)| GrpcTls {
                cert,
                key,
                client_ca: args.grpc_client_ca,
            }),
            policy_file: args.policy_file,
            retention,
            activity_retention,
            callback_path: args.callback_path,
            sources,
        })
    }
}

#[cfg(test)]
mod tests;
