//! Jobs kept in memory for a store only this process writes (SQLite): a
//! GetJob, and the read before each write, need not touch the database. Every
//! write goes through here, so the copy can only be replaced by a newer one.
//! Users' owners are kept too, once set, so the check that a caller may use a
//! user_id does not read the database on every submission.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::jobs::model::LogFilter;
use crate::jobs::model::{Erasure, EventKind, Job, JobEvent};
use crate::jobs::ports::{Activity, Backlog, Created, JobCursor, JobFilter, JobStore, Saved, StoreError};
use crate::users::model::UserRecord;

/// Jobs kept; the oldest kept first goes first.
const CAPACITY: usize = 4096;

/// A kept job, with the place it took in the order.
struct Kept {
    job: Job,
    stamp: u64,
}

/// The jobs kept and the order they came in. Forgetting one is a lookup in
/// each, not a pass over the order: beside a flood most submissions meet a
/// conflict (recording Smile ID's acceptance as the callback arrives) and
/// forget under the lock every read takes.
#[derive(Default)]
struct Recent {
    jobs: HashMap<String, Kept>,
    /// Each kept job's id under its stamp: the first entry goes first.
    order: BTreeMap<u64, String>,
}

impl Recent {
    fn job(&self, job_id: &str) -> Option<&Job> {
        self.jobs.get(job_id).map(|kept| &kept.job)
    }

    /// Keeps `job` unless a newer version of it is kept already.
    fn keep(&mut self, job: &Job) {
        match self.jobs.get_mut(&job.job_id) {
            Some(kept) if kept.job.version >= job.version => {}
            Some(kept) => kept.job = job.clone(),
            None => {
                if self.jobs.len() >= CAPACITY
                    && let Some((_, oldest)) = self.order.pop_first()
                {
                    self.jobs.remove(&oldest);
                }
                // After every stamp in use: stamps only need to keep the order.
                let stamp = self.order.last_key_value().map_or(0, |(last, _)| last + 1);
                self.order.insert(stamp, job.job_id.clone());
                self.jobs.insert(
                    job.job_id.clone(),
                    Kept {
                        job: job.clone(),
                        stamp,
                    },
                );
            }
        }
    }

    fn forget<'a>(&mut self, forgotten: impl IntoIterator<Item = &'a str>) {
        for job_id in forgotten {
            if let Some(kept) = self.jobs.remove(job_id) {
                self.order.remove(&kept.stamp);
            }
        }
    }

    /// After a save of `job` met a conflict: the copy kept is stale if it is
    /// the one that save started from (a write committed without this cache
    /// seeing it). A newer copy is the write that won, and stays.
    fn conflicted(&mut self, job: &Job) {
        if self.job(&job.job_id).is_some_and(|kept| kept.version <= job.version) {
            self.forget([job.job_id.as_str()]);
        }
    }
}

/// Owners of users: an owner is set once and never changes (a user keeps its
/// first owner, and its row outlives an erasure), so one kept cannot go stale.
/// A user without an owner yet is asked of the database each time.
#[derive(Default)]
struct Owners {
    owners: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Owners {
    fn keep(&mut self, user_id: &str, owner: &str) {
        if self.owners.contains_key(user_id) {
            return;
        }
        if self.owners.len() >= CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.owners.remove(&oldest);
        }
        self.order.push_back(user_id.to_owned());
        self.owners.insert(user_id.to_owned(), owner.to_owned());
    }
}

pub struct CachedStore<S> {
    inner: S,
    recent: Mutex<Recent>,
    owners: Mutex<Owners>,
}

impl<S> CachedStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            recent: Mutex::default(),
            owners: Mutex::default(),
        }
    }

    /// Drops every kept job of `user_id`: the user's jobs were erased.
    fn forget_user(&self, user_id: &str) {
        let mut recent = self.recent();
        let erased: Vec<String> = recent
            .jobs
            .values()
            .filter(|kept| kept.job.user_id == user_id)
            .map(|kept| kept.job.job_id.clone())
            .collect();
        recent.forget(erased.iter().map(String::as_str));
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn owners(&self) -> MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl<S: JobStore> JobStore for CachedStore<S> {
    async fn create(&self, job: &Job) -> Result<Created, StoreError> {
        let created = self.inner.create(job).await?;
        match &created {
            Created::New(event) => self.recent().keep(&event.job),
            Created::Existing(existing) => self.recent().keep(existing),
            Created::UserErased => {}
        }
        Ok(created)
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        if let Some(job) = self.recent().job(job_id) {
            return Ok(Some(job.clone()));
        }
        let job = self.inner.get(job_id).await?;
        if let Some(job) = &job {
            self.recent().keep(job);
        }
        Ok(job)
    }

    async fn save(&self, job: &mut Job, event: Option<EventKind>) -> Result<Saved, StoreError> {
        let saved = self.inner.save(job, event).await?;
        match saved {
            Saved::Written(_) => self.recent().keep(job),
            // A write whose caller stopped waiting still commits, unseen here:
            // the next read of a stale copy goes to the database.
            Saved::Conflict => self.recent().conflicted(job),
        }
        Ok(saved)
    }

    async fn job_events(&self, job_id: &str, after_sequence: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        self.inner.job_events(job_id, after_sequence, limit).await
    }

    async fn log_events(
        &self,
        after_global_id: i64,
        filter: &LogFilter,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        self.inner.log_events(after_global_id, filter, limit).await
    }

    async fn last_global_id(&self, owner: Option<&str>) -> Result<i64, StoreError> {
        self.inner.last_global_id(owner).await
    }

    async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<Job>, StoreError> {
        self.inner.claim_due(now, lease, limit).await
    }

    async fn release_lease(&self, job_id: &str) -> Result<(), StoreError> {
        self.inner.release_lease(job_id).await
    }

    async fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, StoreError> {
        self.inner.backlog(now).await
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&JobCursor>,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner.list_jobs(filter, after, limit).await
    }

    async fn delete_finished(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError> {
        let deleted = self.inner.delete_finished(before, limit).await?;
        self.recent().forget(deleted.iter().map(String::as_str));
        Ok(deleted)
    }

    async fn claim_user(&self, user_id: &str, owner: &str) -> Result<String, StoreError> {
        let owner = self.inner.claim_user(user_id, owner).await?;
        // A claim made while authentication was off leaves the user nobody's.
        if !owner.is_empty() {
            self.owners().keep(user_id, &owner);
        }
        Ok(owner)
    }

    async fn user_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        if let Some(owner) = self.owners().owners.get(user_id) {
            return Ok(Some(owner.clone()));
        }
        let owner = self.inner.user_owner(user_id).await?;
        if let Some(owner) = &owner {
            self.owners().keep(user_id, owner);
        }
        Ok(owner)
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.inner.user(user_id).await
    }

    async fn put_user(&self, user: &mut UserRecord) -> Result<bool, StoreError> {
        self.inner.put_user(user).await
    }

    async fn user_activity(&self, user_id: &str) -> Result<Activity, StoreError> {
        self.inner.user_activity(user_id).await
    }

    async fn erase_user(&self, user: &mut UserRecord) -> Result<Option<Erasure>, StoreError> {
        let erasure = self.inner.erase_user(user).await?;
        self.forget_user(&user.user_id);
        Ok(erasure)
    }

    async fn erase_jobs_of(&self, user_id: &str) -> Result<Erasure, StoreError> {
        let erasure = self.inner.erase_jobs_of(user_id).await?;
        self.forget_user(user_id);
        Ok(erasure)
    }

    async fn due_user_operations(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<UserRecord>, StoreError> {
        self.inner.due_user_operations(now, limit).await
    }

    async fn idle_users(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, StoreError> {
        self.inner.idle_users(before, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_newer_version_replaces_a_kept_job() {
        let mut recent = Recent::default();
        let mut job = Job::for_test("j", "u");
        job.version = 3;
        recent.keep(&job);
        let mut older = job.clone();
        older.version = 2;
        recent.keep(&older);
        assert_eq!(recent.jobs["j"].job.version, 3, "a late writer cannot roll a job back");
        for index in 0..CAPACITY + 10 {
            recent.keep(&Job::for_test(&format!("k{index}"), "u"));
        }
        assert_eq!(recent.jobs.len(), CAPACITY);
    }

    fn order(recent: &Recent) -> Vec<&str> {
        recent.order.values().map(String::as_str).collect()
    }

    #[test]
    fn jobs_forgotten_leave_the_order_matching_what_is_kept() {
        let mut recent = Recent::default();
        for index in 0..10 {
            recent.keep(&Job::for_test(&format!("k{index}"), "u"));
        }
        recent.forget(["k2", "k5", "absent", "k2"]);
        assert_eq!(recent.jobs.len(), 8);
        assert_eq!(order(&recent), ["k0", "k1", "k3", "k4", "k6", "k7", "k8", "k9"]);
        // The order still says which goes first once the kept jobs fill up.
        for index in 10..CAPACITY + 4 {
            recent.keep(&Job::for_test(&format!("k{index}"), "u"));
        }
        assert_eq!((recent.jobs.len(), recent.order.len()), (CAPACITY, CAPACITY));
        assert!(!recent.jobs.contains_key("k0") && !recent.jobs.contains_key("k1"));
        assert!(recent.jobs.contains_key("k3"));
    }

    #[test]
    fn a_job_kept_after_the_newest_was_forgotten_still_goes_last() {
        let mut recent = Recent::default();
        for job_id in ["a", "b", "c"] {
            recent.keep(&Job::for_test(job_id, "u"));
        }
        recent.forget(["c"]);
        recent.keep(&Job::for_test("d", "u"));
        recent.keep(&Job::for_test("c", "u"));
        assert_eq!(order(&recent), ["a", "b", "d", "c"]);
        assert_eq!(recent.order.len(), recent.jobs.len());
    }

    #[test]
    fn a_conflict_forgets_the_copy_it_started_from_but_not_the_write_that_won() {
        let mut recent = Recent::default();
        let mut job = Job::for_test("j", "u");
        job.version = 2;
        recent.keep(&job);
        let mut lost = job.clone();
        lost.version = 1;
        recent.conflicted(&lost);
        assert_eq!(
            recent.job("j").map(|kept| kept.version),
            Some(2),
            "the winner's copy stays"
        );
        recent.conflicted(&job);
        assert!(recent.job("j").is_none(), "a copy that met a conflict itself is stale");
        assert!(recent.order.is_empty());
    }

    #[tokio::test]
    async fn a_stale_copy_is_read_again_after_its_save_conflicts() {
        let store = CachedStore::new(crate::jobs::testing::MemoryStore::default());
        store.create(&Job::for_test("j", "u")).await.expect("created");
        let mut kept = store.get("j").await.expect("read").expect("kept");
        // A write this cache never sees, as one whose caller stopped waiting.
        let mut unseen = kept.clone();
        store.inner.save(&mut unseen, None).await.expect("saved elsewhere");
        assert!(matches!(store.save(&mut kept, None).await, Ok(Saved::Conflict)));
        let read = store.get("j").await.expect("read").expect("stored");
        assert_eq!(read.version, unseen.version, "the next read goes to the store");
    }

    #[tokio::test]
    async fn jobs_of_an_erased_user_are_forgotten_and_others_kept() {
        let store = CachedStore::new(crate::jobs::testing::MemoryStore::default());
        for (job_id, user_id) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
            store.create(&Job::for_test(job_id, user_id)).await.expect("created");
        }
        store.forget_user("alice");
        let recent = store.recent();
        assert_eq!(recent.jobs.keys().collect::<Vec<_>>(), ["b1"]);
        assert_eq!(order(&recent), ["b1"]);
    }

    #[tokio::test]
    async fn an_owner_once_set_is_kept_and_a_user_without_one_is_asked_again() {
        let store = CachedStore::new(crate::jobs::testing::MemoryStore::default());
        assert_eq!(store.user_owner("u").await.expect("read"), None);
        assert_eq!(store.user_owner("u").await.expect("read"), None);
        assert_eq!(store.inner.owner_reads(), 2, "no owner yet is never kept");

        assert_eq!(store.claim_user("u", "team-a").await.expect("claimed"), "team-a");
        assert_eq!(store.claim_user("u", "team-b").await.expect("claimed"), "team-a");
        for _ in 0..3 {
            assert_eq!(store.user_owner("u").await.expect("read").as_deref(), Some("team-a"));
        }
        assert_eq!(store.inner.owner_reads(), 2, "a claimed user's owner is kept");

        store.inner.claim_user("v", "team-b").await.expect("claimed elsewhere");
        assert_eq!(store.user_owner("v").await.expect("read").as_deref(), Some("team-b"));
        assert_eq!(store.user_owner("v").await.expect("read").as_deref(), Some("team-b"));
        assert_eq!(store.inner.owner_reads(), 3, "an owner read once is kept");
    }

    #[test]
    fn owners_kept_are_bounded() {
        let mut owners = Owners::default();
        for index in 0..CAPACITY + 10 {
            owners.keep(&format!("u{index}"), "team");
        }
        assert_eq!(owners.owners.len(), CAPACITY);
        assert_eq!(owners.order.len(), CAPACITY);
        assert!(!owners.owners.contains_key("u0"), "the first kept goes first");
    }
}
