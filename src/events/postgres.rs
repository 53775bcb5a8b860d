//! Cross-replica fan-out through PostgreSQL `LISTEN/NOTIFY`.
//!
//! The store sends a notice (ids only) on `channel` in the same transaction as
//! each event, so it is delivered exactly when the event is visible. Each replica listens and
//! republishes notices on its own bus. When the listening connection drops,
//! notices may be lost: subscribers are told to re-read from the store, from the
//! last position they delivered.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::EventBus;
use crate::jobs::model::{Erasure, EventNotice};
use crate::jobs::ports::EventFanout as _;

/// Listens on `channel` until shutdown, reconnecting with backoff.
pub fn spawn_listener(
    pool: PgPool,
    channel: &'static str,
    bus: EventBus,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    crate::task::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(channel).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                connected = listener => match connected {
                    Ok(listener) => listener,
                    Err(error) => {
                        warn!(%error, "event listener cannot connect; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = shutdown.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            // Anything written while we were not listening is found by re-reading.
            bus.resync();
            backoff = Duration::from_millis(100);
            debug!("event listener connected");
            loop {
                let received = tokio::select! {
                    received = listener.try_recv() => received,
                    () = shutdown.cancelled() => return,
                };
                match received {
                    Ok(Some(notification)) => {
                        let payload = notification.payload();
                        if let Some(notice) = EventNotice::from_payload(payload) {
                            bus.publish(notice);
                        } else if let Some(erasure) = Erasure::from_payload(payload) {
                            bus.publish_erasure(erasure);
                        } else {
                            warn!("ignoring a malformed event notice");
                        }
                    }
                    Ok(None) => {
                        warn!("event listener connection lost; reconnecting");
                        break;
                    }
                    Err(error) => {
                        warn!(%error, "event listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    })
}
