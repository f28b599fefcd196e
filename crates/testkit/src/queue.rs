//! [`MemoryQueue`]: a [`Queue`] in memory, for sessions run in-process. A test reads what the
//! session queued (or that it queued nothing) without a spool or a delivery runner, and can
//! make the queue refuse (`452`) to see what the session answers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use relayward_protocol::route::{NextHop, Route, RouteClass};
use relayward_queue::{
    BoxFuture, Changes, MessageId, NewMessage, NewRecipient, Queue, QueueError, QueuedMessage,
    RecipientUpdate,
};
use tokio::sync::Notify;

/// A recipient routed by MX to its domain, for queue tests: the queue stores routes, it does
/// not judge them.
pub fn by_mx(address: &str) -> NewRecipient {
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
    NewRecipient {
        address: address.to_owned(),
        route: Route {
            class: RouteClass::Remote,
            next_hop: NextHop::Mx { domain },
        },
    }
}

/// One message as the session handed it over, with its queue id.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: MessageId,
    pub message: NewMessage,
    pub state: QueuedMessage,
}

impl Stored {
    /// The content as text (lossy), for assertions on headers.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.message.content).into_owned()
    }

    /// The recipients' addresses in RCPT order.
    pub fn recipients(&self) -> Vec<String> {
        self.message
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect()
    }
}

#[derive(Default)]
pub struct MemoryQueue {
    messages: Mutex<Vec<Stored>>,
    next_id: AtomicU64,
    full: AtomicBool,
    pending: Mutex<Changes>,
    changed: Notify,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message enqueued and not yet removed, oldest first.
    pub fn messages(&self) -> Vec<Stored> {
        self.lock().clone()
    }

    /// How many messages are queued.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// While `full`, enqueue fails with [`QueueError::Full`] (the session must answer `452`).
    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Stored>> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, id: &MessageId) -> Result<Stored, QueueError> {
        self.lock()
            .iter()
            .find(|s| &s.id == id)
            .cloned()
            .ok_or_else(|| QueueError::NotFound(id.to_string()))
    }

    /// Changes one message's state; removes it when `change` says so or every recipient is final.
    fn modify(
        &self,
        id: &MessageId,
        change: impl FnOnce(&mut QueuedMessage) -> bool,
    ) -> Result<(), QueueError> {
        let mut messages = self.lock();
        let index = messages
            .iter()
            .position(|s| &s.id == id)
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        let remove = change(&mut messages[index].state);
        let done = messages[index]
            .state
            .recipients
            .iter()
            .all(|r| r.status.is_final());
        if remove || done {
            messages.remove(index);
        }
        Ok(())
    }

    fn changed_by_admin(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rescan = true;
        self.changed.notify_one();
    }

    fn store(&self, message: NewMessage) -> Result<MessageId, QueueError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(QueueError::Full);
        }
        let n = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let id = MessageId(format!("{n:024x}"));
        let now = unix_now();
        let state = QueuedMessage::accepted(id.clone(), &message, now);
        self.lock().push(Stored {
            id: id.clone(),
            message,
            state,
        });
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.enqueued.push(id.clone());
        drop(pending);
        self.changed.notify_one();
        Ok(id)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Queue for MemoryQueue {
    fn enqueue(&self, message: NewMessage) -> BoxFuture<'_, Result<MessageId, QueueError>> {
        let result = self.store(message);
        Box::pin(async move { result })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<QueuedMessage>, QueueError>> {
        let list = self.lock().iter().map(|s| s.state.clone()).collect();
        Box::pin(async move { Ok(list) })
    }

    fn get<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<QueuedMessage, QueueError>> {
        let found = self.find(id).map(|s| s.state);
        Box::pin(async move { found })
    }

    fn content<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<Vec<u8>, QueueError>> {
        let found = self.find(id).map(|s| s.message.content);
        Box::pin(async move { found })
    }

    fn update<'a>(
        &'a self,
        id: &'a MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let result = self.modify(id, |state| state.apply(updates));
        Box::pin(async move { result })
    }

    fn set_held<'a>(
        &'a self,
        id: &'a MessageId,
        held: bool,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let result = self.modify(id, |state| {
            state.held = held;
            false
        });
        self.changed_by_admin();
        Box::pin(async move { result })
    }

    fn retry_now<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>> {
        let now = unix_now();
        let result = self.modify(id, |state| {
            for r in &mut state.recipients {
                r.next_attempt = now;
            }
            false
        });
        self.changed_by_admin();
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>> {
        let result = self.modify(id, |_| true);
        self.changed_by_admin();
        Box::pin(async move { result })
    }

    fn quarantine<'a>(
        &'a self,
        id: &'a MessageId,
        _reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let result = self.modify(id, |_| true);
        Box::pin(async move { result })
    }

    fn changes(&self) -> BoxFuture<'_, Changes> {
        Box::pin(async move {
            loop {
                let taken =
                    std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
                if !taken.enqueued.is_empty() || taken.rescan {
                    return taken;
                }
                self.changed.notified().await;
            }
        })
    }
}
