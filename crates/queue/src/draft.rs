//! A message being received: the session writes its content to the store while it arrives
//! ([`Queue::begin`](crate::Queue::begin)), so a session's memory does not grow with the size
//! of the message, and asks for the durable commit at the end
//! ([`Queue::commit`](crate::Queue::commit)).
//!
//! A draft is never a queued message: the queue delivers, lists or recovers nothing of it
//! until its commit returned (the session may deliver a small one into local Maildirs itself,
//! from [`Draft::held_mut`], and then not commit it). Dropping a draft (the client went away, the session was cut short,
//! the message was refused) throws away what it holds.

use std::any::Any;

use crate::{BoxFuture, NewMessage, QueueError};

/// The content of a message being received. Its first part (the trace header, given to
/// `begin` in [`NewMessage::content`]) is fixed; the *body* is everything written after it.
pub trait Draft: Send + Sync {
    /// Appends `chunk` to the body.
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Octets of content so far, trace header included (the queued message's size).
    fn size(&self) -> u64;

    /// The body written so far, read back whole (DKIM signing needs it at once).
    fn read_body(&mut self) -> BoxFuture<'_, Result<Vec<u8>, QueueError>>;

    /// Replaces the body (with its signed form).
    fn replace_body(&mut self, body: Vec<u8>) -> BoxFuture<'_, Result<(), QueueError>>;

    /// The whole message in memory, for a store that takes it in one piece (the default
    /// [`Queue::commit`](crate::Queue::commit)).
    fn into_message(self: Box<Self>) -> BoxFuture<'static, Result<NewMessage, QueueError>>;

    /// The concrete draft, for the store that made it.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;

    /// The whole message, while the draft still holds it in memory (a small message): the
    /// session delivers mail for local mailboxes from it before the reply, and narrows the
    /// recipients to those left for the queue. `None` once the content is on disk.
    fn held_mut(&mut self) -> Option<&mut NewMessage> {
        None
    }
}

/// A draft held in memory: what a store gets unless it stages content itself. The whole
/// message is in memory while it arrives, bounded by `max_message_size`.
#[derive(Debug)]
pub struct MemoryDraft {
    message: NewMessage,
    prefix_len: usize,
}

impl MemoryDraft {
    /// The message so far (its content: trace header and body written up to now).
    pub fn message(&self) -> &NewMessage {
        &self.message
    }

    /// The message, content complete.
    pub fn into_inner(self) -> NewMessage {
        self.message
    }

    /// Octets of the trace header given to `begin`.
    pub fn prefix_len(&self) -> usize {
        self.prefix_len
    }

    /// Appends to the body.
    pub fn append(&mut self, chunk: &[u8]) {
        self.message.content.extend_from_slice(chunk);
    }

    /// A copy of the body.
    pub fn body(&self) -> Vec<u8> {
        self.message.content[self.prefix_len..].to_vec()
    }

    /// Replaces the body.
    pub fn set_body(&mut self, body: &[u8]) {
        self.message.content.truncate(self.prefix_len);
        self.message.content.extend_from_slice(body);
    }

    pub fn new(message: NewMessage) -> MemoryDraft {
        let prefix_len = message.content.len();
        MemoryDraft {
            message,
            prefix_len,
        }
    }
}

impl Draft for MemoryDraft {
    fn size(&self) -> u64 {
        self.message.content.len() as u64
    }

    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), QueueError>> {
        self.append(chunk);
        Box::pin(async { Ok(()) })
    }

    fn read_body(&mut self) -> BoxFuture<'_, Result<Vec<u8>, QueueError>> {
        let body = self.body();
        Box::pin(async move { Ok(body) })
    }

    fn replace_body(&mut self, body: Vec<u8>) -> BoxFuture<'_, Result<(), QueueError>> {
        self.set_body(&body);
        Box::pin(async { Ok(()) })
    }

    fn into_message(self: Box<Self>) -> BoxFuture<'static, Result<NewMessage, QueueError>> {
        Box::pin(async move { Ok(self.into_inner()) })
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    fn held_mut(&mut self) -> Option<&mut NewMessage> {
        Some(&mut self.message)
    }
}
