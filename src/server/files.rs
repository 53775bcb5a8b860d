//! The one place the files the configuration names are opened: the Smile ID
//! API key, the gRPC port's TLS certificate and CA, the JWKS, and the
//! authorization policy. Each error names the setting as the user wrote it.
//!
//! The API key file is then followed, so a rotation (a Kubernetes Secret
//! update, which replaces the file in place) needs no restart: the new key
//! signs from then on, and signatures made with the previous one stay valid
//! for the configured overlap, so no callback signed just before is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::tls::{self, GrpcTlsAcceptor};
use crate::auth::IdentityModes;
use crate::auth::jwt::JwtVerifier;
use crate::auth::policy::PolicySource;
use crate::config::{ApiKeySetting, Config};
use crate::metrics::Metrics;
use crate::smileid::signature::KeyRing;
use crate::smileid::{ApiKey, ClientConfig, Credentials};

/// How often the API key file is read for a rotation.
const KEY_FILE_INTERVAL: Duration = Duration::from_secs(2);

/// What the configuration's files hold, read and checked.
pub struct Opened {
    pub smile: ClientConfig,
    pub identity: IdentityModes,
    pub grpc_tls: Option<GrpcTlsAcceptor>,
    pub policy: Arc<PolicySource>,
}

impl Opened {
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let name = |id: &str| config.sources.name(id);
        let api_key = match &config.smile.api_key {
            ApiKeySetting::Value(key) => key.clone(),
            ApiKeySetting::File(path) => read_api_key(path, &name("api_key_file"))?,
        };
        let settings = &config.smile;
        let mut smile = ClientConfig::new(
            settings.environment.clone(),
            Credentials::new(settings.partner_id.clone(), api_key),
        );
        smile.contact_email.clone_from(&settings.contact_email);
        smile.connect_timeout = settings.connect_timeout;
        smile.request_timeout = settings.request_timeout;
        smile.retry = settings.retry;
        let grpc_tls = config
            .grpc_tls
            .as_ref()
            .map(tls::acceptor)
            .transpose()
            .map_err(|error| anyhow::anyhow!("{}: {error:#}", name("grpc_tls_cert")))?;
        let bearer_tokens = config
            .identity
            .bearer_tokens
            .as_ref()
            .map(|jwt| JwtVerifier::open(&jwt.jwks_file, &jwt.issuer, &jwt.audience, jwt.max_lifetime))
            .transpose()
            .map_err(|error| anyhow::anyhow!("{}: {error}", name("jwt_jwks_file")))?;
        let identity = IdentityModes {
            forwarded: config.identity.forwarded.clone(),
            client_certificates: config.identity.client_certificates,
            insecure_no_auth: config.identity.insecure_no_auth,
            bearer_tokens: bearer_tokens.map(Arc::new),
        };
        let policy = PolicySource::open(config.policy_file.as_deref())
            .map_err(|error| anyhow::anyhow!("{}: {error}", name("policy_file")))?;
        Ok(Self {
            smile,
            identity,
            grpc_tls,
            policy: Arc::new(policy),
        })
    }
}

/// The key in `path`, which must not be empty.
fn read_api_key(path: &Path, setting: &str) -> anyhow::Result<ApiKey> {
    let key = std::fs::read_to_string(path).with_context(|| format!("{setting}: cannot read {}", path.display()))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("{setting}: {} is empty", path.display());
    }
    Ok(ApiKey::new(key))
}

/// Reads the API key file until shutdown, rotating `keys` when it changes.
pub async fn follow_api_key(
    path: PathBuf,
    keys: Arc<KeyRing>,
    overlap: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(KEY_FILE_INTERVAL) => {}
        }
        let key = match tokio::fs::read_to_string(&path).await {
            Ok(text) if !text.trim().is_empty() => ApiKey::new(text.trim()),
            // A Secret update swaps a symlink: the file may be missing for a moment.
            Ok(_) => continue,
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot read the API key file; keeping the current key");
                continue;
            }
        };
        if keys.rotate(key, overlap) {
            metrics.api_key_rotations.inc();
            info!(
                path = %path.display(),
                overlap_seconds = overlap.as_secs(),
                "Smile ID API key rotated; signatures with the previous key are accepted for the overlap"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let setting = "--api-key-file";
        let error = read_api_key(&dir.path().join("missing"), setting).expect_err("missing file");
        assert!(error.to_string().starts_with(setting));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let error = read_api_key(&empty, setting).expect_err("empty");
        assert!(error.to_string().contains("is empty"), "{error}");
        let good = dir.path().join("key");
        std::fs::write(&good, "secret-key\n").expect("write");
        let key = read_api_key(&good, setting).expect("key");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }
}
