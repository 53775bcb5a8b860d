//! One conformance suite for every `JobStore`: SQLite and PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use selfie_auth::jobs::model::{EventKind, Job, JobState, Submission};
use selfie_auth::jobs::ports::{Created, Saved, SharedStore};
use selfie_auth::store::PgLimits;

fn job(job_id: &str, user_id: &str) -> Job {
    let now = Utc::now();
    Job {
        job_id: job_id.into(),
        user_id: user_id.into(),
        smile_job_id: None,
        state: JobState::Submitting,
        submission: Submission::InFlight { lease_until: now },
        results: Vec::new(),
        problem: None,
        partner_params: Default::default(),
        content_hash: "hash".into(),
        created_at: now,
        updated_at: now,
        next_poll_at: None,
        poll_attempts: 0,
        version: 0,
        last_sequence: 0,
    }
}

async fn conformance(store: SharedStore) {
    // create is insert-once.
    let Created::New(event) = store.create(&job("j1", "alice")).await.expect("create") else {
        panic!("new")
    };
    assert_eq!(
        (event.sequence, event.kind, event.job.version),
        (1, EventKind::Created, 1)
    );
    let Created::Existing(existing) = store.create(&job("j1", "mallory")).await.expect("create") else {
        panic!("existing")
    };
    assert_eq!(existing.user_id, "alice");

    // save is compare-and-set on version.
    let mut current = store.get("j1").await.expect("get").expect("exists");
    let mut stale = current.clone();
    current.state = JobState::Submitted;
    let Saved::Written(Some(event)) = store
        .save(&mut current, Some(EventKind::Submitted))
        .await
        .expect("save")
    else {
        panic!("written")
    };
    assert_eq!((event.sequence, current.version, current.last_sequence), (2, 2, 2));
    assert_eq!(event.job.state, JobState::Submitted);
    stale.state = JobState::Failed;
    assert!(matches!(
        store.save(&mut stale, Some(EventKind::Failed)).await.expect("save"),
        Saved::Conflict
    ));
    let Saved::Written(None) = store.save(&mut current, None).await.expect("save") else {
        panic!("no event")
    };
    assert_eq!((current.version, current.last_sequence), (3, 2));
    assert_eq!(
        store.get("j1").await.expect("get").expect("exists").state,
        JobState::Submitted
    );
    assert!(store.get("nope").await.expect("get").is_none());

    // Per-job events, in order, after a sequence.
    let events = store.job_events("j1", 0, 100).await.expect("events");
    assert_eq!(
        events.iter().map(|e| (e.sequence, e.kind)).collect::<Vec<_>>(),
        [(1, EventKind::Created), (2, EventKind::Submitted)]
    );
    assert_eq!(store.job_events("j1", 1, 100).await.expect("events").len(), 1);
    assert_eq!(store.job_events("j1", 0, 1).await.expect("events").len(), 1, "limit");

    // The global log, in order, filtered by user, with its last position.
    store.create(&job("j2", "bob")).await.expect("create");
    let log = store.log_events(0, None, 100).await.expect("log");
    assert_eq!(log.len(), 3);
    assert!(log.windows(2).all(|pair| pair[0].global_id < pair[1].global_id));
    assert_eq!(store.last_global_id().await.expect("last"), log[2].global_id);
    let bobs = store.log_events(0, Some("bob"), 100).await.expect("log");
    assert_eq!(bobs.iter().map(|e| e.job.job_id.as_str()).collect::<Vec<_>>(), ["j2"]);
    assert!(
        store
            .log_events(log[2].global_id, None, 100)
            .await
            .expect("log")
            .is_empty()
    );

    // claim_due leases: one claimant until the lease expires.
    let mut due = store.get("j2").await.expect("get").expect("exists");
    due.next_poll_at = Some(Utc::now() - chrono::Duration::seconds(1));
    store.save(&mut due, None).await.expect("save");
    let now = Utc::now();
    let lease = Duration::from_secs(30);
    let claimed = store.claim_due(now, lease, 10).await.expect("claim");
    assert_eq!(claimed.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(), ["j2"]);
    assert!(
        store.claim_due(now, lease, 10).await.expect("claim").is_empty(),
        "leased"
    );
    let later = now + chrono::Duration::seconds(31);
    assert_eq!(
        store.claim_due(later, lease, 10).await.expect("claim").len(),
        1,
        "lease expired"
    );

    // Concurrent writers: every increment lands, sequences stay contiguous.
    store.create(&job("j3", "carol")).await.expect("create");
    let mut writers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let mut job = store.get("j3").await.expect("get").expect("exists");
                job.poll_attempts += 1;
                if let Saved::Written(_) = store
                    .save(&mut job, Some(EventKind::ProvisionalResult))
                    .await
                    .expect("save")
                {
                    return;
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("join");
    }
    let final_job = store.get("j3").await.expect("get").expect("exists");
    assert_eq!((final_job.poll_attempts, final_job.last_sequence), (8, 9));
    let sequences: Vec<u64> = store
        .job_events("j3", 0, 100)
        .await
        .expect("events")
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(sequences, (1..=9).collect::<Vec<_>>());
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opened = selfie_auth::store::open(&common::sqlite_url(&dir), PgLimits::default())
        .await
        .expect("open");
    conformance(opened.store).await;
}

#[tokio::test]
async fn postgres_store_conforms() {
    let Some(url) = common::pg_schema_url().await else {
        return;
    };
    let opened = selfie_auth::store::open(&url, PgLimits::default()).await.expect("open");
    assert!(opened.postgres.is_some());
    conformance(Arc::clone(&opened.store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_one_database_once() {
    let Some(url) = common::pg_schema_url().await else {
        return;
    };
    let opened = futures::future::join_all((0..3).map(|_| selfie_auth::store::open(&url, PgLimits::default()))).await;
    let stores: Vec<_> = opened
        .into_iter()
        .map(|opened| opened.expect("every replica opens").store)
        .collect();
    let Created::New(_) = stores[0].create(&job("m1", "u")).await.expect("create") else {
        panic!("new")
    };
    assert!(stores[2].get("m1").await.expect("get").is_some(), "one schema, shared");
}

#[tokio::test]
async fn unknown_database_schemes_are_refused_with_a_clear_message() {
    let Err(error) = selfie_auth::store::open("mysql://localhost/db", PgLimits::default()).await else {
        panic!("refused")
    };
    assert!(error.to_string().contains("DATABASE_URL"), "{error}");
}
