//! Fan-out of job events to every stream of this process.
//!
//! Notices carry ids only; subscribers read the events themselves from the
//! store, so a missed or lagging notice can never lose an event, only delay it.

pub mod postgres;

use tokio::sync::broadcast;

use crate::jobs::model::{EventNotice, JobEvent};

/// What subscribers hear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusMessage {
    /// An event was stored.
    Event(EventNotice),
    /// Notices may have been missed (a listener reconnected): re-read from the store.
    Resync,
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<BusMessage>,
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
        self.send(BusMessage::Event(notice));
    }

    pub fn resync(&self) {
        self.send(BusMessage::Resync);
    }

    fn send(&self, message: BusMessage) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.sender.send(message);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(1024)
    }
}
