//! relayward's durable mail queue.
//!
//! The SMTP session hands an accepted message to [`Queue::enqueue`] and answers `250` only when
//! that returns: by then envelope and content are on disk and fsynced (file and directory), so
//! the message survives `kill -9` and power loss. Concurrent sessions share fsyncs (group commit).
//!
//! The session sees only the [`Queue`] trait, so another store (a shared PostgreSQL queue) can be
//! added later without touching it. The delivery side (queue runner, `relayward queue …`) uses
//! the richer methods of the same trait.

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so the trait stays object-safe (`Arc<dyn Queue>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message as the session accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The reverse-path as `local@domain`, or empty for the null sender `<>`.
    pub sender: String,
    /// Resolved recipients as `local@domain` (domain lower-case), in RCPT order, no duplicates.
    pub recipients: Vec<String>,
    /// Full content as it will be delivered: trace header(s) first, CRLF line ends.
    pub content: Vec<u8>,
    /// Who gave us the message, for `queue show` and bounces: client IP and, if any, login.
    pub client_ip: String,
    pub auth_login: Option<String>,
}

/// Queue identifier: unique, sortable by arrival, safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub String);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the queue could not take or update a message. The session answers `452 4.3.1` to
/// [`QueueError::Full`] and [`QueueError::Io`]: never `250`.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage is full")]
    Full,
    #[error("queue I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no such message: {0}")]
    NotFound(String),
    #[error("corrupt queue entry {id}: {reason}")]
    Corrupt { id: String, reason: String },
}

/// The queue interface. See the crate documentation.
pub trait Queue: Send + Sync + 'static {
    /// Stores a message durably; returns only after the fsyncs.
    fn enqueue(&self, message: NewMessage) -> BoxFuture<'_, Result<MessageId, QueueError>>;
}
