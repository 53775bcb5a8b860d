//! Cross-replica fan-out through PostgreSQL `LISTEN/NOTIFY`.
//!
//! The store sends a notice (ids only) in the same transaction as each event, so
//! it is delivered exactly when the event is visible. Each replica listens and
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
use crate::jobs::model::{EventNotice, JobEvent};

pub const CHANNEL: &str = "selfie_auth_events";

/// `global_id sequence job_id user_id`: ids never contain spaces.
pub fn encode(event: &JobEvent) -> String {
    format!(
        "{} {} {} {}",
        event.global_id, event.sequence, event.job.job_id, event.job.user_id
    )
}

pub fn decode(payload: &str) -> Option<EventNotice> {
    let mut parts = payload.split(' ');
    let notice = EventNotice {
        global_id: parts.next()?.parse().ok()?,
        sequence: parts.next()?.parse().ok()?,
        job_id: parts.next()?.to_owned(),
        user_id: parts.next()?.to_owned(),
    };
    parts.next().is_none().then_some(notice)
}

/// Listens until shutdown, reconnecting with backoff.
pub fn spawn_listener(pool: PgPool, bus: EventBus, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
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
                    Ok(Some(notification)) => match decode(notification.payload()) {
                        Some(notice) => bus.publish_notice(notice),
                        None => warn!("ignoring a malformed event notice"),
                    },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_garbage_is_refused() {
        let notice = decode("42 3 job-1 user@x").expect("notice");
        assert_eq!(
            notice,
            EventNotice {
                global_id: 42,
                sequence: 3,
                job_id: "job-1".into(),
                user_id: "user@x".into()
            }
        );
        for bad in ["", "1 2 3", "x 1 j u", "1 2 j u extra"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
