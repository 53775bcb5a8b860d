//! Follows the Smile ID API key file, so a rotation (a Kubernetes Secret
//! update, which replaces the file in place) needs no restart: the new key
//! signs from then on, and signatures made with the previous one stay valid
//! for the configured overlap, so no callback signed just before is refused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::smileid::ApiKey;
use crate::smileid::signature::KeyRing;

/// How often the file is read.
const INTERVAL: Duration = Duration::from_secs(2);

pub async fn follow(
    path: PathBuf,
    keys: Arc<KeyRing>,
    overlap: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
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
