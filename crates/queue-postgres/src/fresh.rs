//! This node's own new mail, kept in memory from its commit until the runner takes it.
//!
//! A message this node accepted is leased to this node by the very transaction that stores it
//! (see [`crate::writer`]), and the runner claims it a moment later, usually within
//! milliseconds. Asking the database for it then would read back what this process has just
//! written: its state (a message just accepted, [`QueuedMessage::accepted`]) and its content.
//! [`Fresh`] keeps both, so that the claim and the content read of fresh mail cost no SQL.
//!
//! What may have happened in the database since the commit, and why memory is still right:
//!
//! - Another node cannot have claimed it: the lease is this node's, and the heartbeat extends
//!   it like any other lease this node holds.
//! - An administrator may have held or deleted it through another node or `relayward queue`.
//!   Memory answers only within [`Fresh::window`] of the commit (at most a second); a hold or
//!   delete in that moment may not stop the first attempt, as it would not have stopped an
//!   attempt already under way. A held message's delivery is attempted once; a deleted
//!   message's result finds no row to update and nothing is recreated. A hold or delete
//!   through this process's own handle forgets the entry at once ([`Fresh::forget`]).
//! - The database may be unreachable: then the claim goes to SQL (and fails, so delivery
//!   pauses), as for any other message.
//!
//! Memory is bounded: content is kept only for messages up to [`MAX_CACHED_MESSAGE`] octets
//! and in total up to the configured limit (oldest entries give way first); entries are
//! dropped when taken, forgotten, or [`KEEP`] after their commit, whichever comes first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use relayward_queue::{MessageId, QueuedMessage};

/// Largest content kept in memory; larger messages are read from the database.
pub const MAX_CACHED_MESSAGE: usize = 256 * 1024;
/// Content kept in memory in total, by default.
pub const DEFAULT_CONTENT_LIMIT: usize = 16 * 1024 * 1024;
/// How long an entry is kept at most (the runner takes fresh mail within milliseconds; this
/// only bounds what a runner that never comes leaves behind).
pub const KEEP: Duration = Duration::from_secs(10);

/// Fresh mail of this node; see the module documentation.
#[derive(Debug)]
pub struct Fresh {
    window: Duration,
    content_limit: usize,
    content_bytes: usize,
    entries: HashMap<MessageId, Entry>,
    /// Commit order, for pruning; may name entries already taken (skipped when met).
    order: VecDeque<(Instant, MessageId)>,
}

#[derive(Debug)]
struct Entry {
    committed: Instant,
    message: Option<QueuedMessage>,
    content: Option<Vec<u8>>,
}

impl Fresh {
    /// `window`: how long after its commit a claim is answered from memory.
    pub fn new(window: Duration, content_limit: usize) -> Fresh {
        Fresh {
            window,
            content_limit,
            content_bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// How long after its commit a claim is answered from memory.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Octets of content held now (never more than the limit).
    pub fn content_bytes(&self) -> usize {
        self.content_bytes
    }

    /// A message just committed, with its content (kept if it fits).
    pub fn insert(&mut self, message: QueuedMessage, content: Vec<u8>, now: Instant) {
        self.prune(now);
        let content =
            (content.len() <= MAX_CACHED_MESSAGE.min(self.content_limit)).then_some(content);
        if let Some(content) = &content {
            self.make_room(content.len());
            self.content_bytes += content.len();
        }
        self.order.push_back((now, message.id.clone()));
        self.entries.insert(
            message.id.clone(),
            Entry {
                committed: now,
                message: Some(message),
                content,
            },
        );
    }

    /// The state of a message committed within the window, once: a second claim, or one
    /// after the window, goes to the database.
    pub fn take_message(&mut self, id: &MessageId, now: Instant) -> Option<QueuedMessage> {
        let entry = self.entries.get_mut(id)?;
        if now.saturating_duration_since(entry.committed) > self.window {
            entry.message = None;
        }
        let message = entry.message.take();
        self.drop_if_empty(id);
        message
    }

    /// The content, once.
    pub fn take_content(&mut self, id: &MessageId) -> Option<Vec<u8>> {
        let content = self.entries.get_mut(id)?.content.take()?;
        self.content_bytes -= content.len();
        self.drop_if_empty(id);
        Some(content)
    }

    /// The message changed or went away by other means (held, deleted, quarantined).
    pub fn forget(&mut self, id: &MessageId) {
        if let Some(entry) = self.entries.remove(id)
            && let Some(content) = entry.content
        {
            self.content_bytes -= content.len();
        }
    }

    fn drop_if_empty(&mut self, id: &MessageId) {
        if self
            .entries
            .get(id)
            .is_some_and(|e| e.message.is_none() && e.content.is_none())
        {
            self.entries.remove(id);
        }
    }

    /// Drops entries older than [`KEEP`], and what was taken before them.
    fn prune(&mut self, now: Instant) {
        while let Some((committed, id)) = self.order.front() {
            let current = self
                .entries
                .get(id)
                .is_some_and(|e| e.committed == *committed);
            if current && now.saturating_duration_since(*committed) <= KEEP {
                break;
            }
            if current {
                let id = id.clone();
                self.forget(&id);
            }
            self.order.pop_front();
        }
    }

    /// Drops the oldest contents until `len` more octets fit.
    fn make_room(&mut self, len: usize) {
        let mut position = 0;
        while self.content_bytes + len > self.content_limit && position < self.order.len() {
            let (committed, id) = &self.order[position];
            if let Some(entry) = self.entries.get_mut(id)
                && entry.committed == *committed
                && let Some(content) = entry.content.take()
            {
                self.content_bytes -= content.len();
                let id = id.clone();
                self.drop_if_empty(&id);
            }
            position += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_queue::{Esmtp, NewMessage, Origin};

    fn message(n: u32) -> QueuedMessage {
        let new = NewMessage {
            sender: "s@example.test".into(),
            recipients: Vec::new(),
            content: Vec::new(),
            client_ip: "192.0.2.1".into(),
            auth_login: None,
            origin: Origin::Stranger,
            esmtp: Esmtp::default(),
        };
        QueuedMessage::accepted(MessageId(format!("{n:024x}")), &new, 1)
    }

    fn id(n: u32) -> MessageId {
        MessageId(format!("{n:024x}"))
    }

    #[test]
    fn a_claim_is_answered_once_and_only_within_the_window() {
        let start = Instant::now();
        let mut fresh = Fresh::new(Duration::from_millis(500), 1000);
        fresh.insert(message(1), b"one".to_vec(), start);
        fresh.insert(message(2), b"two".to_vec(), start);
        assert_eq!(fresh.take_message(&id(1), start).map(|m| m.id), Some(id(1)));
        assert_eq!(fresh.take_message(&id(1), start), None, "only once");
        let late = start + Duration::from_millis(600);
        assert_eq!(fresh.take_message(&id(2), late), None, "after the window");
        // The content of both is still there for the delivery, once.
        assert_eq!(fresh.take_content(&id(1)).as_deref(), Some(&b"one"[..]));
        assert_eq!(fresh.take_content(&id(1)), None);
        assert_eq!(fresh.take_content(&id(2)).as_deref(), Some(&b"two"[..]));
        assert_eq!(fresh.content_bytes(), 0);
        assert!(fresh.entries.is_empty());
    }

    #[test]
    fn the_content_never_exceeds_its_bound() {
        let start = Instant::now();
        let limit = 10_000;
        let mut fresh = Fresh::new(Duration::from_secs(1), limit);
        for n in 0..100 {
            let size = [900, 3_000, 4_100, 10_001, 1][n as usize % 5];
            fresh.insert(message(n), vec![b'x'; size], start);
            assert!(
                fresh.content_bytes() <= limit,
                "{} octets held after message {n}",
                fresh.content_bytes()
            );
            let held: usize = fresh
                .entries
                .values()
                .filter_map(|e| e.content.as_ref().map(Vec::len))
                .sum();
            assert_eq!(held, fresh.content_bytes(), "the count is the truth");
        }
        // A message larger than the bound is never kept; the newest small one is.
        assert_eq!(fresh.take_content(&id(98)), None);
        assert_eq!(fresh.take_content(&id(99)).map(|c| c.len()), Some(1));
        // Oldest contents gave way to the newest.
        assert_eq!(fresh.take_content(&id(0)), None);
    }

    #[test]
    fn entries_go_when_forgotten_or_too_old() {
        let start = Instant::now();
        let mut fresh = Fresh::new(Duration::from_secs(1), 1000);
        fresh.insert(message(1), b"held".to_vec(), start);
        fresh.forget(&id(1));
        assert_eq!(fresh.take_message(&id(1), start), None);
        assert_eq!(fresh.content_bytes(), 0);
        fresh.insert(message(2), b"never claimed".to_vec(), start);
        // The next commit after KEEP drops what no runner came for.
        fresh.insert(
            message(3),
            b"new".to_vec(),
            start + KEEP + Duration::from_secs(1),
        );
        assert_eq!(fresh.take_content(&id(2)), None);
        assert_eq!(fresh.content_bytes(), 3);
        assert_eq!(fresh.order.len(), 1, "{:?}", fresh.order);
    }
}
