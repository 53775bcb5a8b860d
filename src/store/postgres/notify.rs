//! Cross-replica fan-out through PostgreSQL `LISTEN/NOTIFY`: the notices'
//! format, the statements that send them, and the listener.
//!
//! The store sends a notice (ids only) in the same transaction as each event,
//! so it is delivered exactly when the event is visible. Each replica listens
//! and republishes notices on its own bus. When the listening connection drops,
//! notices may be lost: subscribers are told to re-read from the store, from
//! the last position they delivered.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::events::EventBus;
use crate::jobs::model::{Erasure, EventNotice, JobEvent};
use crate::jobs::ports::{EventFanout as _, StoreError};

/// The `NOTIFY` channel announcing each stored event to every replica.
pub const EVENT_CHANNEL: &str = "selfie_auth_events";

/// The most bytes of one erasure notice's payload: PostgreSQL refuses `NOTIFY`
/// payloads of 8,000 bytes or more.
const ERASURE_PAYLOAD_BYTES: usize = 7000;

/// A notice as text: `global_id sequence job_id user_id owner` (ids never
/// contain spaces, and the owner, which may, comes last).
fn notice_payload(notice: &EventNotice) -> String {
    let owner = notice.owner.as_deref().unwrap_or_default();
    format!(
        "{} {} {} {} {owner}",
        notice.global_id, notice.sequence, notice.job_id, notice.user_id
    )
}

fn parse_notice(payload: &str) -> Option<EventNotice> {
    let mut parts = payload.splitn(5, ' ');
    let notice = EventNotice {
        global_id: parts.next()?.parse().ok()?,
        sequence: parts.next()?.parse().ok()?,
        job_id: parts.next()?.to_owned(),
        user_id: parts.next()?.to_owned(),
        owner: parts.next().filter(|owner| !owner.is_empty()).map(str::to_owned),
    };
    (!notice.user_id.contains(' ')).then_some(notice)
}

/// The length of `value` as JSON.
fn json_len(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |json| json.len())
}

/// An erasure as payloads, each under PostgreSQL's limit, in as few as fit. A
/// payload is JSON, so it cannot be taken for an event notice.
fn erasure_payloads(erasure: &Erasure) -> Vec<String> {
    let empty = Erasure {
        user_id: erasure.user_id.clone(),
        jobs: Vec::new(),
    };
    let mut payloads = Vec::new();
    let mut part = empty.clone();
    let mut size = json_len(&empty);
    for job in &erasure.jobs {
        // As serialized, escapes included, and a comma.
        let job_size = json_len(job) + 1;
        if !part.jobs.is_empty() && size + job_size > ERASURE_PAYLOAD_BYTES {
            payloads.push(serde_json::to_string(&part).unwrap_or_default());
            part.jobs.clear();
            size = json_len(&empty);
        }
        size += job_size;
        part.jobs.push(job.clone());
    }
    if !part.jobs.is_empty() || payloads.is_empty() {
        payloads.push(serde_json::to_string(&part).unwrap_or_default());
    }
    payloads
}

fn parse_erasure(payload: &str) -> Option<Erasure> {
    payload
        .starts_with('{')
        .then(|| serde_json::from_str(payload).ok())
        .flatten()
}

/// Tells every replica's streams that a user's jobs are erased; delivered
/// when the transaction commits.
pub(super) async fn announce_erasure(tx: &mut sqlx::PgConnection, erasure: &Erasure) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS n(payload)")
        .bind(EVENT_CHANNEL)
        .bind(erasure_payloads(erasure))
        .execute(tx)
        .await?;
    Ok(())
}

/// Announces a batch's events to every replica, in one statement; delivered
/// when the transaction commits.
pub(super) async fn announce_events(tx: &mut sqlx::PgConnection, events: &[&JobEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = events
        .iter()
        .map(|event| notice_payload(&EventNotice::from(*event)))
        .collect();
    // WITH ORDINALITY keeps the notices in commit order.
    sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) WITH ORDINALITY AS n(payload, at) ORDER BY at")
        .bind(EVENT_CHANNEL)
        .bind(payloads)
        .execute(tx)
        .await?;
    Ok(())
}

/// Listens for every replica's notices until shutdown, reconnecting with
/// backoff, and republishes them on this process's bus.
pub fn spawn_listener(pool: PgPool, bus: EventBus, shutdown: CancellationToken) -> JoinHandle<()> {
    crate::task::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(EVENT_CHANNEL).await?;
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
                        if let Some(notice) = parse_notice(payload) {
                            bus.publish(notice);
                        } else if let Some(erasure) = parse_erasure(payload) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::ErasedJob;

    #[test]
    fn notices_round_trip_as_payloads_and_garbage_is_refused() {
        let mut notice = EventNotice {
            global_id: 42,
            sequence: 3,
            job_id: "job-1".into(),
            user_id: "user@x".into(),
            owner: None,
        };
        assert_eq!(notice_payload(&notice), "42 3 job-1 user@x ");
        assert_eq!(parse_notice(&notice_payload(&notice)), Some(notice.clone()));
        assert_eq!(
            parse_notice("42 3 job-1 user@x"),
            Some(notice.clone()),
            "a replica that does not say who owns the job"
        );
        notice.owner = Some("cn:Payments API".into());
        assert_eq!(notice_payload(&notice), "42 3 job-1 user@x cn:Payments API");
        assert_eq!(parse_notice(&notice_payload(&notice)), Some(notice));
        for bad in ["", "1 2 3", "x 1 j u"] {
            assert_eq!(parse_notice(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_erasure_of_many_jobs_is_told_in_payloads_postgres_accepts() {
        let erasure = Erasure {
            user_id: "user@x".into(),
            jobs: (0..400)
                .map(|index| ErasedJob {
                    job_id: format!("{}-{index}", "j".repeat(90)),
                    // JSON escapes each of these six times over.
                    owner: Some("\u{1}".repeat(40)),
                })
                .collect(),
        };
        let payloads = erasure_payloads(&erasure);
        assert!(payloads.len() > 1, "split");
        let mut jobs = Vec::new();
        for payload in &payloads {
            assert!(payload.len() < 8000, "{} bytes", payload.len());
            assert!(parse_notice(payload).is_none(), "never read as an event notice");
            let part = parse_erasure(payload).expect("a payload reads back");
            assert_eq!(part.user_id, erasure.user_id);
            jobs.extend(part.jobs);
        }
        assert_eq!(jobs, erasure.jobs, "every job, in order, once");
        let none = Erasure {
            user_id: "u".into(),
            jobs: Vec::new(),
        };
        assert_eq!(erasure_payloads(&none).len(), 1);
    }
}
