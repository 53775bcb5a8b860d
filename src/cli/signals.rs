//! How a long-running command ends: SIGTERM or Ctrl-C.

use tracing::info;

use crate::server::RunningService;

/// Serves until SIGTERM or Ctrl-C, then shuts down gracefully; a second signal exits at once.
pub async fn run_until_signal(running: RunningService) -> anyhow::Result<()> {
    wait_for_signal().await;
    tokio::select! {
        () = running.shutdown() => Ok(()),
        () = wait_for_signal() => {
            info!("second signal, exiting now");
            std::process::exit(130);
        }
    }
}

pub async fn wait_for_signal() {
    let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
