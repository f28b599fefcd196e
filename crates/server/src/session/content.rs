//! Where the content of DATA and BDAT goes while it arrives: into the queue's draft
//! ([`relayward_queue::Draft`]) through a bounded buffer, so that a session holds at most
//! [`FLUSH_AT`] octets of a message (plus one read) however large the message is. (The file
//! spool's draft keeps a message of at most 64 KiB in memory until its end, so a small message
//! is held twice at most for a moment, never a large one.)
//!
//! The receivers of the protocol crate (dot-unstuffing, the smuggling checks, the limits)
//! write into [`ContentSink::buffer`] exactly as they wrote into the whole message before;
//! the session empties the buffer with [`ContentSink::absorb`] after every read. The
//! `Received:` fields are counted on the way through, for the loop check at the end.

use relayward_protocol::header::FieldCounter;
use relayward_queue::{Draft, QueueError};

/// Octets of content gathered before they are written to the draft: large enough that a
/// write is one system call's worth of work, small enough that 10,000 sessions in DATA stay
/// within memory.
pub(super) const FLUSH_AT: usize = 64 * 1024;

/// The content of one message on its way to the queue.
pub(super) struct ContentSink {
    draft: Option<Box<dyn Draft>>,
    /// Why the message cannot be queued (the queue refused the draft or a write). The content
    /// is still read to its end, to keep the dialogue in step; the client hears this then.
    failure: Option<QueueError>,
    buffer: Vec<u8>,
    received: FieldCounter,
}

/// What a sink came to at the end of the content.
pub(super) struct Finished {
    /// The draft holding the whole content, or why there is none.
    pub(super) draft: Result<Box<dyn Draft>, QueueError>,
    /// `Received:` fields in the content's header section.
    pub(super) hops: usize,
}

impl ContentSink {
    /// A sink in front of the draft the queue began (or the queue's refusal to begin one).
    pub(super) fn new(draft: Result<Box<dyn Draft>, QueueError>) -> ContentSink {
        let (draft, failure) = match draft {
            Ok(draft) => (Some(draft), None),
            Err(error) => (None, Some(error)),
        };
        ContentSink {
            draft,
            failure,
            buffer: Vec::with_capacity(FLUSH_AT + 16 * 1024),
            received: FieldCounter::new("Received"),
        }
    }

    /// Where the receiver appends content.
    pub(super) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    /// Writes the buffer to the draft once it holds [`FLUSH_AT`] octets.
    pub(super) async fn absorb(&mut self) {
        if self.buffer.len() >= FLUSH_AT {
            self.flush().await;
        }
    }

    /// The end of the content: everything written, the draft handed back.
    pub(super) async fn finish(mut self) -> Finished {
        self.flush().await;
        let draft = match (self.draft.take(), self.failure.take()) {
            (Some(draft), None) => Ok(draft),
            (_, Some(error)) => Err(error),
            (None, None) => Err(QueueError::Io(std::io::Error::other(
                "the message being received was lost",
            ))),
        };
        Finished {
            draft,
            hops: self.received.count(),
        }
    }

    async fn flush(&mut self) {
        self.received.feed(&self.buffer);
        if let Some(draft) = self.draft.as_mut()
            && let Err(error) = draft.write(&self.buffer).await
        {
            // Dropping the draft throws away what it holds; the rest is read and dropped.
            self.draft = None;
            self.failure = Some(error);
        }
        self.buffer.clear();
    }
}
