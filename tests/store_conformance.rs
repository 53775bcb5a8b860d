//! One conformance suite for every `JobStore`: SQLite, PostgreSQL, and the
//! in-memory store the job logic's unit tests run on.

use std::time::Duration;

use chrono::Utc;
use selfie_auth::jobs::LogFilter;
use selfie_auth::jobs::model::{EventKind, Job, JobKind, JobState};
use selfie_auth::jobs::ports::{Created, JobCursor, JobFilter, Saved, SharedStore};
use selfie_auth::store::PgLimits;
use selfie_auth::users::model::{Operation, Pending, UserRecord};

fn job(job_id: &str, user_id: &str) -> Job {
    let mut job = Job::for_test(job_id, user_id);
    job.content_hash = "hash".into();
    job
}

/// A store with job `job_id` of `user_id` written once after its creation:
/// events 1 (CREATED) and 2 (SUBMITTED), version 2.
async fn with_submitted_job(store: &SharedStore, job_id: &str, user_id: &str) -> Job {
    let Created::New(_) = store.create(&job(job_id, user_id)).await.expect("create") else {
        panic!("new")
    };
    let mut current = store.get(job_id).await.expect("get").expect("exists");
    current.state = JobState::Submitted;
    let Saved::Written(Some(_)) = store
        .save(&mut current, Some(EventKind::Submitted))
        .await
        .expect("save")
    else {
        panic!("written")
    };
    current
}

async fn create_is_insert_once(store: SharedStore) {
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
    let events = store.job_events("j1", 0, 10).await.expect("events");
    assert_eq!(events.len(), 1, "a create that found the job appends no event");
    assert!(store.get("nope").await.expect("get").is_none());
    store.ping().await.expect("ping");
}

async fn save_is_compare_and_set_on_version(store: SharedStore) {
    store.create(&job("j1", "alice")).await.expect("create");
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
    let events = store.job_events("j1", 0, 10).await.expect("events");
    assert_eq!(events.len(), 2, "a save that lost the race appends no event");
    let Saved::Written(None) = store.save(&mut current, None).await.expect("save") else {
        panic!("no event")
    };
    assert_eq!((current.version, current.last_sequence), (3, 2));
    assert_eq!(
        store.get("j1").await.expect("get").expect("exists").state,
        JobState::Submitted
    );
}

async fn job_events_are_in_order_after_a_sequence(store: SharedStore) {
    with_submitted_job(&store, "j1", "alice").await;
    let events = store.job_events("j1", 0, 100).await.expect("events");
    assert_eq!(
        events.iter().map(|e| (e.sequence, e.kind)).collect::<Vec<_>>(),
        [(1, EventKind::Created), (2, EventKind::Submitted)]
    );
    assert_eq!(store.job_events("j1", 1, 100).await.expect("events").len(), 1);
    assert_eq!(store.job_events("j1", 0, 1).await.expect("events").len(), 1, "limit");
}

async fn the_global_log_is_ordered_and_filtered_by_user_and_owner(store: SharedStore) {
    let owned = |job_id: &str, user_id: &str, owner: &str| {
        let mut job = job(job_id, user_id);
        job.owner = Some(owner.into());
        job
    };
    with_submitted_job(&store, "j1", "alice").await;
    store.create(&owned("j2", "bob", "cn:billing")).await.expect("create");
    store
        .create(&owned("j3", "alice", "cn:checkout"))
        .await
        .expect("create");
    let all = LogFilter::default();
    let log = store.log_events(0, &all, 100).await.expect("log");
    assert_eq!(log.len(), 4);
    assert!(log.windows(2).all(|pair| pair[0].global_id < pair[1].global_id));
    assert_eq!(store.last_global_id(None).await.expect("last"), log[3].global_id);
    let ids = |events: Vec<selfie_auth::jobs::JobEvent>| events.into_iter().map(|e| e.job.job_id).collect::<Vec<_>>();
    let filter = |user: Option<&str>, owner: Option<&str>| LogFilter {
        user_id: user.map(str::to_owned),
        owner: owner.map(str::to_owned),
    };
    let bobs = store.log_events(0, &filter(Some("bob"), None), 100).await.expect("log");
    assert_eq!(ids(bobs), ["j2"]);
    let checkouts = store
        .log_events(0, &filter(None, Some("cn:checkout")), 100)
        .await
        .expect("log");
    assert_eq!(ids(checkouts), ["j3"]);
    let both = store
        .log_events(0, &filter(Some("alice"), Some("cn:checkout")), 100)
        .await
        .expect("log");
    assert_eq!(ids(both), ["j3"]);
    assert!(
        store
            .log_events(0, &filter(Some("bob"), Some("cn:checkout")), 100)
            .await
            .expect("log")
            .is_empty()
    );
    // Positions in an owner's view are its own events'.
    assert_eq!(
        store.last_global_id(Some("cn:billing")).await.expect("last"),
        log[2].global_id
    );
    assert_eq!(store.last_global_id(Some("cn:nobody")).await.expect("last"), 0);
    assert!(
        store
            .log_events(log[3].global_id, &all, 100)
            .await
            .expect("log")
            .is_empty()
    );
}

async fn claim_due_leases_to_one_claimant_until_expiry(store: SharedStore) {
    store.create(&job("j1", "alice")).await.expect("create");
    store.create(&job("j2", "bob")).await.expect("create");
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
    store.release_lease("j2").await.expect("release");
    assert_eq!(
        store.claim_due(now, lease, 10).await.expect("claim").len(),
        1,
        "released"
    );
}

async fn concurrent_writers_all_land_with_contiguous_sequences(store: SharedStore) {
    store.create(&job("j3", "carol")).await.expect("create");
    let mut writers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        writers.push(selfie_auth::task::spawn(async move {
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
}

/// A fresh SQLite store; the directory lives as long as the test.
async fn listing_pages_newest_first_by_filter(store: SharedStore) {
    let base = Utc::now() - chrono::Duration::hours(1);
    // Seven jobs, one a minute; j3 and j4 share a creation time (job_id breaks the tie).
    for (index, user) in ["alice", "bob", "alice", "alice", "bob", "alice", "alice"]
        .iter()
        .enumerate()
    {
        let mut new = job(&format!("j{index}"), user);
        new.created_at = base
            + chrono::Duration::minutes(if index == 4 {
                3
            } else {
                i64::try_from(index).expect("a few jobs")
            });
        if index % 2 == 1 {
            new.kind = JobKind::Enrollment;
        }
        store.create(&new).await.expect("create");
    }
    let mut done = store.get("j6").await.expect("get").expect("exists");
    done.state = JobState::Completed;
    store.save(&mut done, Some(EventKind::FinalResult)).await.expect("save");

    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|job| job.job_id).collect::<Vec<_>>();
    let every = JobFilter::default();
    assert_eq!(
        ids(store.list_jobs(&every, None, 10).await.expect("list")),
        ["j6", "j5", "j4", "j3", "j2", "j1", "j0"]
    );
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_jobs(&every, after.as_ref(), 3).await.expect("list");
        after = page.last().map(JobCursor::of);
        let full = page.len() == 3;
        pages.push(ids(page));
        if !full {
            break;
        }
    }
    assert_eq!(
        pages,
        [vec!["j6", "j5", "j4"], vec!["j3", "j2", "j1"], vec!["j0"]],
        "pages meet without a gap or a repeat, ties included"
    );
    let alice = JobFilter {
        user_id: Some("alice".into()),
        ..JobFilter::default()
    };
    assert_eq!(
        ids(store.list_jobs(&alice, None, 10).await.expect("list")),
        ["j6", "j5", "j3", "j2", "j0"]
    );
    let alice_enrolments = JobFilter {
        kind: Some(JobKind::Enrollment),
        ..alice.clone()
    };
    assert_eq!(
        ids(store.list_jobs(&alice_enrolments, None, 10).await.expect("list")),
        ["j5", "j3"]
    );
    let completed = JobFilter {
        state: Some(JobState::Completed),
        ..JobFilter::default()
    };
    assert_eq!(ids(store.list_jobs(&completed, None, 10).await.expect("list")), ["j6"]);
    assert_eq!(
        store.get("j5").await.expect("get").expect("exists").kind,
        JobKind::Enrollment,
        "the kind is kept"
    );
}

async fn retention_deletes_only_finished_jobs_older_than_the_cutoff(store: SharedStore) {
    let now = Utc::now();
    let cutoff = now - chrono::Duration::minutes(10);
    for (job_id, state, minutes_ago) in [
        ("old-done", JobState::Completed, 60),
        ("old-failed", JobState::Failed, 30),
        ("old-open", JobState::Submitted, 60),
        ("new-done", JobState::Completed, 1),
    ] {
        store.create(&job(job_id, "alice")).await.expect("create");
        let mut current = store.get(job_id).await.expect("get").expect("exists");
        current.state = state;
        current.updated_at = now - chrono::Duration::minutes(minutes_ago);
        store
            .save(&mut current, Some(EventKind::Submitted))
            .await
            .expect("save");
    }
    let mut deleted = store.delete_finished(cutoff, 1).await.expect("delete a batch");
    assert_eq!(deleted.len(), 1, "batches are bounded");
    deleted.extend(store.delete_finished(cutoff, 10).await.expect("delete the rest"));
    deleted.sort();
    assert_eq!(deleted, ["old-done", "old-failed"]);
    for gone in ["old-done", "old-failed"] {
        assert!(store.get(gone).await.expect("get").is_none(), "{gone}");
        assert!(
            store.job_events(gone, 0, 10).await.expect("events").is_empty(),
            "{gone}'s events"
        );
    }
    for kept in ["old-open", "new-done"] {
        assert!(store.get(kept).await.expect("get").is_some(), "{kept}");
    }
    let log = store.log_events(0, &LogFilter::default(), 100).await.expect("log");
    assert!(
        log.iter()
            .all(|event| event.job.job_id.starts_with("old-open") || event.job.job_id == "new-done")
    );
    assert!(
        store
            .delete_finished(cutoff, 10)
            .await
            .expect("nothing left")
            .is_empty()
    );
}

fn pending(operation: Operation, next_attempt_at: chrono::DateTime<Utc>) -> Pending {
    Pending {
        operation,
        requested_by: Some("cn:privacy".into()),
        requested_at: Utc::now(),
        attempts: 0,
        next_attempt_at,
        lease_until: None,
        last_error: None,
    }
}

async fn users_are_compare_and_set_and_keep_their_first_owner(store: SharedStore) {
    let now = Utc::now();
    let mut user = UserRecord::new("alice", None, now);
    assert!(store.put_user(&mut user).await.expect("insert"));
    assert_eq!(user.version, 1);
    let mut twin = UserRecord::new("alice", Some("cn:b".into()), now);
    assert!(!store.put_user(&mut twin).await.expect("insert again"), "inserted once");
    // A user first stored without an owner goes to the first caller that claims it.
    assert_eq!(store.claim_user("alice", "cn:a").await.expect("claim"), "cn:a");
    assert_eq!(store.claim_user("alice", "cn:b").await.expect("claim"), "cn:a");
    user.fraud_flagged = true;
    assert!(store.put_user(&mut user).await.expect("update"));
    let mut stale = store.user("alice").await.expect("get").expect("stored");
    stale.version -= 1;
    assert!(
        !store.put_user(&mut stale).await.expect("stale"),
        "compare-and-set on the version"
    );
    let stored = store.user("alice").await.expect("get").expect("stored");
    assert_eq!(
        (stored.owner.as_deref(), stored.fraud_flagged, stored.version),
        (Some("cn:a"), true, 2),
        "a write without the owner keeps the claim"
    );
    assert_eq!(store.user_owner("alice").await.expect("owner").as_deref(), Some("cn:a"));
    assert!(store.user("nobody").await.expect("get").is_none());
}

async fn erasing_a_user_removes_their_jobs_and_refuses_new_ones(store: SharedStore) {
    for (job_id, user_id) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
        let mut owned = job(job_id, user_id);
        owned.owner = Some(format!("cn:{user_id}"));
        store.create(&owned).await.expect("create");
    }
    // A store may have made the user's record with its first job.
    let mut alice = store
        .user("alice")
        .await
        .expect("get")
        .unwrap_or_else(|| UserRecord::new("alice", Some("cn:alice".into()), Utc::now()));
    alice.pending = Some(pending(Operation::Delete, Utc::now()));
    assert!(store.put_user(&mut alice).await.expect("pending deletion"));
    let Created::UserErased = store.create(&job("a3", "alice")).await.expect("create") else {
        panic!("a user being deleted takes no new job")
    };
    alice.complete(Utc::now());
    let mut erasure = store.erase_user(&mut alice).await.expect("erase").expect("written");
    erasure.jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let erased: Vec<(&str, Option<&str>)> = erasure
        .jobs
        .iter()
        .map(|job| (job.job_id.as_str(), job.owner.as_deref()))
        .collect();
    assert_eq!(erased, [("a1", Some("cn:alice")), ("a2", Some("cn:alice"))]);
    for gone in ["a1", "a2", "a3"] {
        assert!(store.get(gone).await.expect("get").is_none(), "{gone}");
    }
    let filter = LogFilter {
        user_id: Some("alice".into()),
        owner: None,
    };
    assert!(store.log_events(0, &filter, 10).await.expect("log").is_empty());
    assert_eq!(store.user_activity("alice").await.expect("activity").job_count, 0);
    assert!(store.user("alice").await.expect("get").expect("tombstone").is_deleted());
    let Created::UserErased = store.create(&job("a4", "alice")).await.expect("create") else {
        panic!("a deleted user takes no new job")
    };
    assert!(
        store.get("b1").await.expect("get").is_some(),
        "another user's job stays"
    );
    assert_eq!(store.user_activity("bob").await.expect("activity").job_count, 1);
    // Positions in the log are never given out twice, erased events' included:
    // a WatchJobs stream resuming from one must not skip what comes after.
    let Created::New(fresh) = store.create(&job("c1", "carol")).await.expect("create") else {
        panic!("new")
    };
    assert!(fresh.global_id > 3, "after the three jobs' events: {}", fresh.global_id);
    let mut stale = UserRecord::new("bob", None, Utc::now());
    stale.version = 7;
    assert!(
        store.erase_user(&mut stale).await.expect("erase").is_none(),
        "compare-and-set"
    );
    assert!(
        store.get("b1").await.expect("get").is_some(),
        "a lost erasure erases nothing"
    );
}

async fn due_operations_and_idle_users_are_found(store: SharedStore) {
    let now = Utc::now();
    let mut due = UserRecord::new("due", None, now);
    due.pending = Some(pending(Operation::Deactivate, now - chrono::Duration::seconds(1)));
    let mut later = UserRecord::new("later", None, now);
    later.pending = Some(pending(Operation::Flag, now + chrono::Duration::minutes(5)));
    let mut idle = UserRecord::new("idle", None, now);
    for user in [&mut due, &mut later, &mut idle] {
        assert!(store.put_user(user).await.expect("insert"));
    }
    let found: Vec<String> = store
        .due_user_operations(now, 10)
        .await
        .expect("due")
        .into_iter()
        .map(|user| user.user_id)
        .collect();
    assert_eq!(found, ["due"]);

    for (job_id, user_id, state, minutes_ago) in [
        ("i1", "idle", JobState::Completed, 60),
        ("i2", "idle", JobState::Failed, 40),
        ("r1", "recent", JobState::Completed, 1),
        ("o1", "open", JobState::Submitted, 60),
    ] {
        store.create(&job(job_id, user_id)).await.expect("create");
        let mut current = store.get(job_id).await.expect("get").expect("exists");
        current.state = state;
        current.updated_at = now - chrono::Duration::minutes(minutes_ago);
        store.save(&mut current, None).await.expect("save");
    }
    let idle_users = store
        .idle_users(now - chrono::Duration::minutes(10), 10)
        .await
        .expect("idle");
    assert_eq!(idle_users, ["idle"], "all finished and none recent");
    let erasure = store.erase_jobs_of("idle").await.expect("erase");
    assert_eq!(erasure.jobs.len(), 2);
    assert!(
        store.user("idle").await.expect("get").is_some(),
        "the user record stays"
    );
}

async fn sqlite_store() -> (SharedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opened = selfie_auth::store::open(&selfie_auth_testkit::sqlite_url(&dir), PgLimits::default())
        .await
        .expect("open");
    (opened.store, dir)
}

/// A fresh PostgreSQL store in its own schema; `None` when PostgreSQL is not there.
async fn postgres_store() -> Option<SharedStore> {
    let url = selfie_auth_testkit::pg_schema_url().await?;
    let opened = selfie_auth::store::open(&url, PgLimits::default()).await.expect("open");
    assert!(opened.postgres.is_some());
    Some(opened.store)
}

/// Runs each case as its own test against each store, so one failure hides no other.
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = super::sqlite_store().await;
                    super::$case(store).await;
                }
            )+
        }

        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store: selfie_auth::jobs::SharedStore =
                        std::sync::Arc::new(selfie_auth::jobs::testing::MemoryStore::default());
                    super::$case(store).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(store) = super::postgres_store().await else { return };
                    super::$case(store).await;
                }
            )+
        }
    };
}

conformance!(
    create_is_insert_once,
    save_is_compare_and_set_on_version,
    job_events_are_in_order_after_a_sequence,
    the_global_log_is_ordered_and_filtered_by_user_and_owner,
    claim_due_leases_to_one_claimant_until_expiry,
    concurrent_writers_all_land_with_contiguous_sequences,
    listing_pages_newest_first_by_filter,
    retention_deletes_only_finished_jobs_older_than_the_cutoff,
    users_are_compare_and_set_and_keep_their_first_owner,
    erasing_a_user_removes_their_jobs_and_refuses_new_ones,
    due_operations_and_idle_users_are_found,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_postgres_replica_deletes_expired_jobs_at_a_time() {
    use sqlx::Connection as _;
    let Some(url) = selfie_auth_testkit::pg_schema_url().await else {
        return;
    };
    let store = selfie_auth::store::open(&url, PgLimits::default())
        .await
        .expect("open")
        .store;
    let mut done = job("expired", "alice");
    done.state = JobState::Completed;
    store.create(&done).await.expect("create");
    let later = Utc::now() + chrono::Duration::minutes(1);
    // Another replica holds the retention lock: this one deletes nothing meanwhile.
    let mut other = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut holding = other.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock(x'5E1F1EA1'::bigint)")
        .execute(&mut *holding)
        .await
        .expect("lock");
    assert!(store.delete_finished(later, 10).await.expect("delete").is_empty());
    holding.rollback().await.expect("release");
    assert_eq!(store.delete_finished(later, 10).await.expect("delete"), ["expired"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_one_database_once() {
    let Some(url) = selfie_auth_testkit::pg_schema_url().await else {
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
