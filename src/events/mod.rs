//! Fan-out of job events to every stream of this process: the domain's
//! [`EventFanout`] port, fed by local writes and, with PostgreSQL, by the
//! other replicas' `NOTIFY`s.

pub mod postgres;

use tokio::sync::broadcast;

use crate::jobs::model::EventNotice;
use crate::jobs::ports::{EventFanout, FanoutMessage};

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<FanoutMessage>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(16));
        Self { sender }
    }

    /// Tells every subscriber to re-read from the store.
    pub fn resync(&self) {
        self.send(FanoutMessage::Resync);
    }

    fn send(&self, message: FanoutMessage) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.sender.send(message);
    }
}

impl EventFanout for EventBus {
    fn publish(&self, notice: EventNotice) {
        self.send(FanoutMessage::Event(notice));
    }

    fn subscribe(&self) -> broadcast::Receiver<FanoutMessage> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(1024)
    }
}
