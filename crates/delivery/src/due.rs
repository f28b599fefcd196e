//! The runner's index of what is due when: a min-heap of (next attempt, message id).
//!
//! Listing the spool reads and parses every entry; with 100,000 deferred messages that is
//! seconds of work, and the runner used to do it on every enqueue and every few seconds. The
//! index is filled once from a full listing (at start, and when the queue asks for a rescan),
//! then kept up to date from what the runner learns anyway: the ids the queue reports as
//! enqueued, and each message's next attempt after the runner updated it. Entries may be
//! stale (a message delivered, held or deleted meanwhile): the runner reads the message's
//! state when an entry falls due and acts on that, so a stale entry costs one read.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use relayward_queue::{MessageId, QueuedMessage};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct DueIndex {
    heap: BinaryHeap<Reverse<(u64, MessageId)>>,
}

impl DueIndex {
    /// Replaces the whole index with the due times of `messages` (a full listing).
    pub fn rebuild<'a>(&mut self, messages: impl IntoIterator<Item = &'a QueuedMessage>) {
        self.heap = messages
            .into_iter()
            .filter_map(|m| next_attempt(m).map(|at| Reverse((at, m.id.clone()))))
            .collect();
    }

    /// Notes that `id` is due at `at` (Unix seconds).
    pub fn push(&mut self, at: u64, id: MessageId) {
        self.heap.push(Reverse((at, id)));
    }

    /// Takes every id due at or before `now`, each once.
    pub fn take_due(&mut self, now: u64) -> Vec<MessageId> {
        let mut seen = HashSet::new();
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, id))) = self.heap.pop()
                && seen.insert(id.clone())
            {
                due.push(id);
            }
        }
        due
    }

    /// When the next entry falls due, if any.
    pub fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// When a message wants its next attempt ([`QueuedMessage::next_attempt`]).
pub fn next_attempt(message: &QueuedMessage) -> Option<u64> {
    message.next_attempt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId(format!("{n:024x}"))
    }

    #[test]
    fn takes_what_is_due_in_order_once_each() {
        let mut index = DueIndex::default();
        index.push(30, id(3));
        index.push(10, id(1));
        index.push(20, id(2));
        index.push(10, id(1));
        assert_eq!(index.next_at(), Some(10));
        assert_eq!(index.take_due(20), [id(1), id(2)]);
        assert_eq!(index.next_at(), Some(30));
        assert!(index.take_due(29).is_empty());
        assert_eq!(index.take_due(u64::MAX), [id(3)]);
        assert!(index.is_empty());
    }
}
