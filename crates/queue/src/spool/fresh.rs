//! The content of small messages committed a moment ago, kept for the runner's first read.
//!
//! The runner reads a message's content right after its commit, to deliver it. For a small
//! message that read is a blocking-pool hand-off and three system calls to get back bytes the
//! spool had in memory a millisecond earlier. So the spool keeps them, bounded in count and in
//! octets, and gives each away once: the first `content` takes it, later reads (a retry) go to
//! the file as before. A copy here is only ever the bytes written to the file, and only
//! `content` reads it; what is not taken is pushed out by newer entries.
//!
//! An id stays remembered after its content was taken, until newer entries push it out or
//! the message leaves the queue: [`FreshContent::was_kept`] then tells the spool that the
//! delivery result coming for it belongs to a message delivered a moment ago from memory,
//! whose state nobody else has touched yet, so the update can usually be applied on the
//! runner's own thread (see `Inner::update_without_waiting`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use crate::MessageId;

/// Largest content kept (the drafts keep this much in memory anyway).
const MAX_ENTRY: usize = 64 * 1024;
/// Most octets kept in all.
const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Most entries remembered, taken or not (bounds the order queue).
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub(super) struct FreshContent {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// `None` once the content was taken (the id is still remembered).
    by_id: HashMap<MessageId, Option<Vec<u8>>>,
    /// Ids in the order they came, oldest first (some already taken).
    order: VecDeque<MessageId>,
    bytes: usize,
}

impl FreshContent {
    /// Keeps `content` for `id` if it is small enough; older entries make room.
    pub(super) fn keep(&self, id: &MessageId, content: Vec<u8>) {
        if content.len() > MAX_ENTRY {
            return;
        }
        let mut state = self.lock();
        state.bytes += content.len();
        if let Some(Some(old)) = state.by_id.insert(id.clone(), Some(content)) {
            state.bytes -= old.len();
        }
        state.order.push_back(id.clone());
        while state.bytes > MAX_BYTES || state.order.len() > MAX_ENTRIES {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            if let Some(Some(dropped)) = state.by_id.remove(&oldest) {
                state.bytes -= dropped.len();
            }
        }
    }

    /// The content kept for `id`, given away (the next read goes to the file); the id stays
    /// remembered.
    pub(super) fn take(&self, id: &MessageId) -> Option<Vec<u8>> {
        let mut state = self.lock();
        let content = state.by_id.get_mut(id)?.take()?;
        state.bytes -= content.len();
        Some(content)
    }

    /// Whether `id` was kept here and is still remembered, its content taken or not.
    pub(super) fn was_kept(&self, id: &MessageId) -> bool {
        self.lock().by_id.contains_key(id)
    }

    /// Forgets `id` (its commit failed, or it left the queue). Its place in the order stays
    /// until it is pushed out, where the missing entry is skipped.
    pub(super) fn forget(&self, id: &MessageId) {
        let mut state = self.lock();
        if let Some(Some(content)) = state.by_id.remove(id) {
            state.bytes -= content.len();
        }
    }

    /// Octets kept now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> MessageId {
        MessageId(format!("{n:024x}"))
    }

    #[test]
    fn content_is_given_once() {
        let fresh = FreshContent::default();
        fresh.keep(&id(1), b"hello".to_vec());
        assert_eq!(fresh.take(&id(1)).as_deref(), Some(&b"hello"[..]));
        assert_eq!(fresh.take(&id(1)), None);
        assert_eq!(fresh.bytes(), 0);
    }

    #[test]
    fn an_id_is_remembered_after_its_content_is_taken_until_forgotten() {
        let fresh = FreshContent::default();
        assert!(!fresh.was_kept(&id(1)));
        fresh.keep(&id(1), b"hello".to_vec());
        assert!(fresh.was_kept(&id(1)));
        assert!(fresh.take(&id(1)).is_some());
        assert!(fresh.was_kept(&id(1)));
        fresh.forget(&id(1));
        assert!(!fresh.was_kept(&id(1)));
        assert_eq!(fresh.take(&id(1)), None);
        // Forgetting content never taken gives its octets back.
        fresh.keep(&id(2), b"world".to_vec());
        fresh.forget(&id(2));
        assert_eq!(fresh.bytes(), 0);
    }

    #[test]
    fn ids_pushed_out_are_no_longer_remembered() {
        let fresh = FreshContent::default();
        for n in 0..MAX_ENTRIES + 1 {
            fresh.keep(&id(n), b"z".to_vec());
            let _ = fresh.take(&id(n));
        }
        assert!(!fresh.was_kept(&id(0)));
        assert!(fresh.was_kept(&id(MAX_ENTRIES)));
    }

    #[test]
    fn large_content_is_not_kept() {
        let fresh = FreshContent::default();
        fresh.keep(&id(1), vec![b'x'; MAX_ENTRY + 1]);
        assert_eq!(fresh.take(&id(1)), None);
    }

    #[test]
    fn octets_and_entries_stay_bounded() {
        let fresh = FreshContent::default();
        for n in 0..1000 {
            fresh.keep(&id(n), vec![b'x'; MAX_ENTRY]);
            assert!(fresh.bytes() <= MAX_BYTES);
        }
        // The newest are there, the oldest were pushed out.
        assert!(fresh.take(&id(999)).is_some());
        assert!(fresh.take(&id(0)).is_none());
        for n in 0..10 * MAX_ENTRIES {
            fresh.keep(&id(n), b"y".to_vec());
            let _ = fresh.take(&id(n));
        }
        assert!(fresh.lock().order.len() <= MAX_ENTRIES);
        assert_eq!(fresh.bytes(), 0);
    }
}
