//! Fan-out of job events to the streams of this process that want them: the
//! domain's [`EventFanout`] port, fed by local writes and, with PostgreSQL, by
//! the other replicas' `NOTIFY`s (`store::postgres::notify`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::jobs::model::{Erasure, EventNotice};
use crate::jobs::ports::{EventFanout, FanoutMessage, Interest};

/// Notices a topic holds for a subscriber that has not read them yet; beyond
/// that a subscriber re-reads the store (a lag is a resync).
const TOPIC_CAPACITY: usize = 16;

#[derive(Default)]
struct Topics {
    jobs: HashMap<String, broadcast::Sender<FanoutMessage>>,
    users: HashMap<String, broadcast::Sender<FanoutMessage>>,
    /// Topic count at the last sweep of unsubscribed topics.
    swept_at: usize,
}

impl Topics {
    fn len(&self) -> usize {
        self.jobs.len() + self.users.len()
    }

    /// Forgets topics nobody listens to any more, when they have doubled since the last sweep.
    fn sweep(&mut self) {
        if self.len() < (self.swept_at * 2).max(64) {
            return;
        }
        self.jobs.retain(|_, sender| sender.receiver_count() > 0);
        self.users.retain(|_, sender| sender.receiver_count() > 0);
        self.swept_at = self.len();
    }
}

/// Routes notices by job and by user, so a stream wakes only for its own events.
#[derive(Clone)]
pub struct EventBus {
    all: broadcast::Sender<FanoutMessage>,
    topics: Arc<Mutex<Topics>>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (all, _) = broadcast::channel(capacity.max(16));
        Self {
            all,
            topics: Arc::default(),
        }
    }

    fn topics(&self) -> MutexGuard<'_, Topics> {
        self.topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells every subscriber to re-read from the store.
    pub fn resync(&self) {
        let topics = self.topics();
        for sender in topics.jobs.values().chain(topics.users.values()).chain([&self.all]) {
            // No subscriber is not an error: nobody is watching.
            let _ = sender.send(FanoutMessage::Resync);
        }
    }
}

fn send_to(topic: &mut HashMap<String, broadcast::Sender<FanoutMessage>>, key: &str, message: &FanoutMessage) {
    if let Some(sender) = topic.get(key)
        && sender.send(message.clone()).is_err()
    {
        topic.remove(key);
    }
}

impl EventFanout for EventBus {
    fn publish(&self, notice: EventNotice) {
        let message = FanoutMessage::Event(notice.clone());
        {
            let mut topics = self.topics();
            send_to(&mut topics.jobs, &notice.job_id, &message);
            send_to(&mut topics.users, &notice.user_id, &message);
        }
        let _ = self.all.send(message);
    }

    fn publish_erasure(&self, erasure: Erasure) {
        let user_id = erasure.user_id.clone();
        let job_ids: Vec<String> = erasure.jobs.iter().map(|job| job.job_id.clone()).collect();
        let message = FanoutMessage::Erased(Arc::new(erasure));
        {
            let mut topics = self.topics();
            for job_id in &job_ids {
                send_to(&mut topics.jobs, job_id, &message);
            }
            send_to(&mut topics.users, &user_id, &message);
        }
        let _ = self.all.send(message);
    }

    fn subscribe(&self, interest: Interest) -> broadcast::Receiver<FanoutMessage> {
        let mut topics = self.topics();
        topics.sweep();
        let topic = match interest {
            Interest::All => return self.all.subscribe(),
            Interest::Job(job_id) => topics.jobs.entry(job_id),
            Interest::User(user_id) => topics.users.entry(user_id),
        };
        topic
            .or_insert_with(|| broadcast::channel(TOPIC_CAPACITY).0)
            .subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(job_id: &str, user_id: &str) -> EventNotice {
        EventNotice {
            global_id: 1,
            job_id: job_id.into(),
            user_id: user_id.into(),
            sequence: 1,
            owner: None,
        }
    }

    #[test]
    fn a_subscriber_hears_only_its_interest_and_every_resync() {
        let bus = EventBus::default();
        let mut job = bus.subscribe(Interest::Job("j1".into()));
        let mut user = bus.subscribe(Interest::User("alice".into()));
        let mut all = bus.subscribe(Interest::All);
        bus.publish(notice("j2", "bob"));
        assert!(job.try_recv().is_err() && user.try_recv().is_err(), "not theirs");
        assert_eq!(all.try_recv().ok(), Some(FanoutMessage::Event(notice("j2", "bob"))));
        bus.publish(notice("j1", "alice"));
        assert_eq!(job.try_recv().ok(), Some(FanoutMessage::Event(notice("j1", "alice"))));
        assert_eq!(user.try_recv().ok(), Some(FanoutMessage::Event(notice("j1", "alice"))));
        bus.resync();
        for receiver in [&mut job, &mut user] {
            assert_eq!(receiver.try_recv().ok(), Some(FanoutMessage::Resync));
        }
    }

    #[test]
    fn topics_nobody_listens_to_are_forgotten() {
        let bus = EventBus::default();
        for index in 0..1000 {
            drop(bus.subscribe(Interest::Job(format!("j{index}"))));
        }
        assert!(bus.topics().len() < 200, "{} topics kept", bus.topics().len());
    }
}
