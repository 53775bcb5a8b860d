//! Configuration of `selfie-auth serve`, from flags and environment variables.
//! Invalid or missing settings stop start-up with a message naming the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::jobs::{ImageLimits, ReconcilePolicy, ServiceConfig};
use crate::server::Settings;
use crate::smileid::{ApiKey, ClientConfig, Credentials, Environment};
use crate::store::PgLimits;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SmileEnvironment {
    Sandbox,
    Production,
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "SELFIE_AUTH_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address: the Smile ID callback endpoint, /healthz, /readyz, /metrics.
    #[arg(long, env = "SELFIE_AUTH_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Job database (`sqlite://path`). Default: a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// PostgreSQL pool size per replica.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
    /// PostgreSQL statement timeout.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_statement_timeout: Duration,
    /// Where the default SQLite database lives.
    #[arg(long, env = "SELFIE_AUTH_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Smile ID partner id, exactly as the portal shows it (e.g. "085").
    #[arg(long, env = "SMILEID_PARTNER_ID")]
    pub partner_id: Option<String>,
    /// File holding the Smile ID API key (or set SMILEID_API_KEY; never a flag).
    #[arg(long, env = "SMILEID_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Smile ID environment.
    #[arg(long = "smileid-environment", env = "SMILEID_ENVIRONMENT", value_enum)]
    pub environment: Option<SmileEnvironment>,
    /// Smile ID v1 base URL; overrides the environment (e.g. a simulator's http://127.0.0.1:8780/v1).
    #[arg(long = "smileid-base-url", env = "SMILEID_BASE_URL")]
    pub base_url: Option<String>,
    #[arg(long = "smileid-connect-timeout", env = "SMILEID_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    #[arg(long = "smileid-request-timeout", env = "SMILEID_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// The public URL Smile ID posts results to (this service's callback endpoint).
    #[arg(long, env = "SELFIE_AUTH_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// Path of the callback endpoint on the HTTP port.
    #[arg(long, env = "SELFIE_AUTH_CALLBACK_PATH", default_value = "/callbacks/smileid")]
    pub callback_path: String,
    /// Accepted distance between a callback's signed timestamp and now.
    #[arg(long, env = "SELFIE_AUTH_CALLBACK_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub callback_window: Duration,
    /// Confirm each callback with job_status before trusting it.
    #[arg(long, env = "SELFIE_AUTH_CONFIRM_CALLBACKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub confirm_callbacks: bool,

    /// Heartbeat interval of idle streams.
    #[arg(long, env = "SELFIE_AUTH_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// First job_status poll of a job without a final result.
    #[arg(long, env = "SELFIE_AUTH_RECONCILE_AFTER", default_value = "2m", value_parser = humantime::parse_duration)]
    pub reconcile_after: Duration,
    /// Longest interval between polls (they back off up to it).
    #[arg(long, env = "SELFIE_AUTH_RECONCILE_MAX_INTERVAL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub reconcile_max_interval: Duration,
    /// A job without a final result after this long is FAILED (RESULT_NOT_RECEIVED).
    #[arg(long, env = "SELFIE_AUTH_RECONCILE_GIVE_UP", default_value = "24h", value_parser = humantime::parse_duration)]
    pub reconcile_give_up: Duration,

    /// Largest gRPC request, in bytes (SubmitAuthentication carries images).
    #[arg(long, env = "SELFIE_AUTH_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// SelfieAuth calls in flight before load shedding (UNAVAILABLE, reason OVERLOADED).
    #[arg(long, env = "SELFIE_AUTH_CONCURRENCY_LIMIT", default_value_t = 256)]
    pub concurrency_limit: usize,
    /// Longest wait for in-flight calls at shutdown.
    #[arg(long, env = "SELFIE_AUTH_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

impl ServeArgs {
    /// Checks everything and builds the settings, reading the API key from
    /// `SMILEID_API_KEY_FILE` or `SMILEID_API_KEY`.
    pub fn into_settings(self) -> anyhow::Result<Settings> {
        let api_key = read_api_key(self.api_key_file.as_deref())?;
        self.into_settings_with_key(api_key)
    }

    /// Checks everything and builds the settings with the given API key.
    pub fn into_settings_with_key(self, api_key: ApiKey) -> anyhow::Result<Settings> {
        let partner_id = self
            .partner_id
            .filter(|id| !id.trim().is_empty())
            .context("SMILEID_PARTNER_ID is not set: the Smile ID partner id is required")?;
        let environment = match (self.base_url, self.environment) {
            (Some(url), _) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("SMILEID_BASE_URL must be an http:// or https:// URL, got {url:?}");
                }
                Environment::Custom(url)
            }
            (None, Some(SmileEnvironment::Sandbox)) => Environment::Sandbox,
            (None, Some(SmileEnvironment::Production)) => Environment::Production,
            (None, None) => {
                bail!("SMILEID_ENVIRONMENT is not set: choose sandbox or production (or set SMILEID_BASE_URL)")
            }
        };
        if let Some(url) = &self.callback_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("SELFIE_AUTH_CALLBACK_URL must be an http:// or https:// URL, got {url:?}");
        }
        if !self.callback_path.starts_with('/') {
            bail!(
                "SELFIE_AUTH_CALLBACK_PATH must start with '/', got {:?}",
                self.callback_path
            );
        }
        let limits = ImageLimits::default();
        // Images must fit in a message with room for the other fields.
        let image_budget = self.max_message_bytes.saturating_sub(64 * 1024);
        if image_budget < 1024 * 1024 {
            bail!(
                "SELFIE_AUTH_MAX_MESSAGE_BYTES must be at least 1 MiB + 64 KiB, got {}",
                self.max_message_bytes
            );
        }
        let image_limits = ImageLimits {
            max_total_bytes: limits.max_total_bytes.min(image_budget),
            max_image_bytes: limits.max_image_bytes.min(image_budget),
            ..limits
        };
        if self.concurrency_limit == 0 {
            bail!("SELFIE_AUTH_CONCURRENCY_LIMIT must be at least 1");
        }
        if self.heartbeat_interval.is_zero() {
            bail!("SELFIE_AUTH_HEARTBEAT_INTERVAL must be greater than zero");
        }
        let database_url = self
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("selfie-auth.db").display()));
        let mut smile = ClientConfig::new(environment.clone(), Credentials::new(partner_id, api_key));
        smile.connect_timeout = self.connect_timeout;
        smile.request_timeout = self.request_timeout;
        if self.database_max_connections == 0 {
            bail!("DATABASE_MAX_CONNECTIONS must be at least 1");
        }
        Ok(Settings {
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            database_url,
            database_limits: PgLimits {
                max_connections: self.database_max_connections,
                statement_timeout: self.database_statement_timeout,
                ..PgLimits::default()
            },
            readiness_interval: Duration::from_secs(2),
            smile,
            callback_path: self.callback_path,
            callback_window: self.callback_window,
            service: ServiceConfig {
                callback_url: self.callback_url,
                confirm_callbacks: self.confirm_callbacks,
                heartbeat_interval: self.heartbeat_interval,
                reconcile: ReconcilePolicy {
                    first_delay: self.reconcile_after,
                    max_delay: self.reconcile_max_interval.max(self.reconcile_after),
                    give_up_after: self.reconcile_give_up,
                    ..ReconcilePolicy::default()
                },
                image_limits,
                sandbox_params_allowed: environment != Environment::Production,
                ..ServiceConfig::default()
            },
            max_message_bytes: self.max_message_bytes,
            concurrency_limit: self.concurrency_limit,
            http2_keepalive_interval: Duration::from_secs(30),
            drain_timeout: self.drain_timeout,
        })
    }
}

/// The API key from `SMILEID_API_KEY`, or the file `SMILEID_API_KEY_FILE` names.
fn read_api_key(file: Option<&std::path::Path>) -> anyhow::Result<ApiKey> {
    if let Some(path) = file {
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("SMILEID_API_KEY_FILE: cannot read {}", path.display()))?;
        let key = key.trim();
        if key.is_empty() {
            bail!("SMILEID_API_KEY_FILE: {} is empty", path.display());
        }
        return Ok(ApiKey::new(key));
    }
    match std::env::var("SMILEID_API_KEY") {
        Ok(key) if !key.trim().is_empty() => Ok(ApiKey::new(key.trim())),
        _ => bail!("SMILEID_API_KEY is not set: give the Smile ID API key in SMILEID_API_KEY or SMILEID_API_KEY_FILE"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Harness {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["selfie-auth"];
        argv.extend_from_slice(args);
        Harness::try_parse_from(argv).expect("parses").serve
    }

    fn error_of(args: &[&str]) -> String {
        match parse(args).into_settings_with_key(ApiKey::new("k")) {
            Ok(_) => panic!("expected an error for {args:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn every_invalid_setting_is_named_in_the_error() {
        let base = ["--partner-id", "085", "--smileid-environment", "sandbox"];
        assert!(error_of(&[]).contains("SMILEID_PARTNER_ID"));
        assert!(error_of(&["--partner-id", "085"]).contains("SMILEID_ENVIRONMENT"));
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            base.iter().copied().chain(extra.iter().copied()).collect()
        };
        assert!(error_of(&with(&["--smileid-base-url", "ftp://x"])).contains("SMILEID_BASE_URL"));
        assert!(error_of(&with(&["--callback-url", "nope"])).contains("SELFIE_AUTH_CALLBACK_URL"));
        assert!(error_of(&with(&["--callback-path", "cb"])).contains("SELFIE_AUTH_CALLBACK_PATH"));
        assert!(error_of(&with(&["--max-message-bytes", "1000"])).contains("SELFIE_AUTH_MAX_MESSAGE_BYTES"));
        assert!(error_of(&with(&["--concurrency-limit", "0"])).contains("SELFIE_AUTH_CONCURRENCY_LIMIT"));
        assert!(error_of(&with(&["--database-max-connections", "0"])).contains("DATABASE_MAX_CONNECTIONS"));
    }

    #[test]
    fn the_api_key_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let error = read_api_key(Some(&missing)).expect_err("missing file");
        assert!(error.to_string().contains("SMILEID_API_KEY_FILE"));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        assert!(
            read_api_key(Some(&empty))
                .expect_err("empty")
                .to_string()
                .contains("is empty")
        );
        let good = dir.path().join("key");
        std::fs::write(&good, "secret-key\n").expect("write");
        let key = read_api_key(Some(&good)).expect("key");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }

    #[test]
    fn defaults_build_working_settings() {
        let settings = parse(&["--partner-id", "085", "--smileid-environment", "production"])
            .into_settings_with_key(ApiKey::new("k"))
            .expect("settings");
        assert_eq!(settings.smile.environment, Environment::Production);
        assert!(
            !settings.service.sandbox_params_allowed,
            "sandbox_result never reaches production"
        );
        assert_eq!(settings.database_url, "sqlite://data/selfie-auth.db");
        assert_eq!(settings.grpc_addr.port(), 50051);
        assert_eq!(settings.service.reconcile.first_delay, Duration::from_secs(120));
        assert!(settings.service.image_limits.max_total_bytes < settings.max_message_bytes);
        let custom = parse(&["--partner-id", "1", "--smileid-base-url", "http://127.0.0.1:8780/v1"])
            .into_settings_with_key(ApiKey::new("k"))
            .expect("settings");
        assert_eq!(
            custom.smile.environment,
            Environment::Custom("http://127.0.0.1:8780/v1".into())
        );
    }
}
