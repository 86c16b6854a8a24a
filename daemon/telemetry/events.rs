//! The lifecycle event bus: listener started, stopped, failed, restarted.
//!
//! A bounded broadcast channel: publishing never blocks and never waits for
//! watchers; a watcher that falls more than [`CAPACITY`] events behind is
//! told how many it missed (an EVENTS_DROPPED event) and carries on from the
//! newest. Every event is also logged by the code that publishes it.

use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::proto::{self, EventKind, ListenerKind};

/// Events kept for slow watchers.
pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<proto::Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        EventBus {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    pub fn publish(
        &self,
        kind: EventKind,
        listener: &str,
        listener_kind: ListenerKind,
        message: impl Into<String>,
    ) {
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(proto::Event {
            time: Some(SystemTime::now().into()),
            kind: kind as i32,
            listener: listener.to_string(),
            listener_kind: listener_kind as i32,
            message: message.into(),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<proto::Event> {
        self.tx.subscribe()
    }
}

/// The event a watcher gets in place of `n` it missed.
pub fn dropped(n: u64) -> proto::Event {
    proto::Event {
        time: Some(SystemTime::now().into()),
        kind: EventKind::EventsDropped as i32,
        listener: String::new(),
        listener_kind: ListenerKind::Unspecified as i32,
        message: format!("{n} events dropped: this watcher read too slowly"),
    }
}
