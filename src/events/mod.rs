//! Fan-out of job events to every stream of this process.
//!
//! Notices carry ids only; subscribers read the events themselves from the
//! store, so a missed or lagging notice can never lose an event, only delay it.

use tokio::sync::broadcast;

use crate::jobs::model::{EventNotice, JobEvent};

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<EventNotice>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(16));
        Self { sender }
    }

    pub fn publish(&self, event: &JobEvent) {
        self.publish_notice(EventNotice::from(event));
    }

    pub fn publish_notice(&self, notice: EventNotice) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.sender.send(notice);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventNotice> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(1024)
    }
}
