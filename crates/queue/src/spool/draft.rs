//! The spool's drafts: a message written while it arrives, into a preallocated file in `msg/`
//! (per-file commits, when one is ready: see [`super::slots`]) or else `tmp/<id>.eml`.
//!
//! The file has the final layout from its first octet (header line, then content), with the
//! size and the content's checksum in the header placeholders of fixed width
//! ([`encode_open_header`]). The session's writes go straight to it — a message of at most
//! [`KEEP_IN_MEMORY`] octets waits in memory and is written at its commit; at commit the size
//! and checksum are written in place, the file is `fdatasync`ed (with per-file commits; else
//! the committer's `syncfs` covers it) and handed to the committer, which renames it into
//! `msg/` like any other message; a draft in a slot is committed in place. Until then it lives
//! only in `tmp/` or under a slot's name, which no reader lists and recovery removes (a slot
//! whose header was never completed), so a draft cut short is never delivered; dropping a
//! draft removes its file at once.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use super::entry::{SLOT_DIGITS, Slots, encode_open_header, slot_digits};
use super::slots::SLOT_BYTES;
use super::{
    CommitMode, Committing, Inner, Staged, blocking, committer_gone, invalid_input, unix_now,
};
use crate::fsutil::{PRIVATE_FILE, queue_error};
use crate::{BoxFuture, Draft, MemoryDraft, MessageId, NewMessage, QueueError, QueuedMessage};

/// How much content may be written between two free-space checks: a message that arrives
/// while the disk fills is refused before it takes the room `min_free_bytes` keeps.
const SPACE_CHECK_EVERY: u64 = 4 * 1024 * 1024;

/// The staged file and what is known about it. Removes the file when dropped, unless it was
/// handed to the committer.
pub(super) struct Staging {
    inner: Arc<Inner>,
    id: MessageId,
    /// `None` once handed over (the committer owns the file from then on) or committed.
    path: Option<PathBuf>,
    /// Written into a preallocated slot in `msg/` (see [`super::slots`]) rather than `tmp/`:
    /// committed in place, with one flush.
    in_slot: bool,
    file: File,
    /// Octets of the header line: the content starts here.
    header_len: u64,
    /// Where the size and checksum placeholders' digits are.
    slots: Slots,
    /// Content octets before the body (the trace header given to `begin`).
    prefix_len: u64,
    /// Content octets written so far, prefix included.
    pub(super) content_len: u64,
    /// CRC-32 of the content written so far.
    checksum: crc32fast::Hasher,
    /// The checksum of the prefix alone, where a replaced body starts again.
    prefix_checksum: crc32fast::Hasher,
    since_space_check: u64,
    /// The free-space check at creation covered the whole content (nothing was appended or
    /// replaced since): the commit needs no second one.
    space_checked_whole: bool,
    /// The header on disk already holds the final size and checksum (a whole message
    /// written at once): the commit writes no placeholders.
    header_final: bool,
}

/// What [`Staging::create`] is given: the whole message, or its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Content {
    /// All of it: the header is written with its final size and checksum, together with
    /// the content in one write (except a large one in a slot), and nothing may be appended.
    Whole,
    /// What arrived so far: the header keeps its placeholders until the commit. A file in a
    /// slot with a header that matched a partial content would look complete to recovery.
    SoFar,
}

impl Staging {
    /// Creates `tmp/<id>.eml` with the header and the content so far, of which the first
    /// `prefix_len` octets are the trace header (the rest is body, for DKIM's read-back).
    /// `slot` says whether a preallocated file may be taken at all: never for a staging
    /// done on the session's own thread, whose commit must not flush there.
    pub(super) fn create(
        inner: &Arc<Inner>,
        message: &NewMessage,
        prefix_len: usize,
        slot: SlotUse,
        content: Content,
    ) -> Result<Staging, QueueError> {
        if message.recipients.is_empty() {
            return Err(invalid_input("a message needs at least one recipient"));
        }
        let (prefix, rest) = message
            .content
            .split_at(prefix_len.min(message.content.len()));
        inner.check_space(message.content.len() as u64)?;
        let id = crate::id::generate();
        let (mut header, slots) =
            encode_open_header(&QueuedMessage::accepted(id.clone(), message, unix_now()))
                .map_err(queue_error)?;
        let free_slot = match slot {
            SlotUse::IfWorthIt => take_slot(inner, header.len() + message.content.len()),
            SlotUse::Never => None,
        };
        let (path, file, in_slot) = match free_slot {
            Some((slot, file)) => (slot, file, true),
            None => {
                let path = inner.layout.tmp_message(&id);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(PRIVATE_FILE)
                    .open(&path)
                    .map_err(queue_error)?;
                (path, file, false)
            }
        };
        let mut staging = Staging {
            inner: Arc::clone(inner),
            id,
            path: Some(path),
            in_slot,
            file,
            header_len: header.len() as u64,
            slots,
            prefix_len: prefix.len() as u64,
            content_len: 0,
            checksum: crc32fast::Hasher::new(),
            prefix_checksum: crc32fast::Hasher::new(),
            since_space_check: 0,
            space_checked_whole: true,
            // In a slot, a large message keeps the placeholders until its content is
            // written: a crash in the middle then leaves a slot recovery removes quietly
            // (unfinished), not one with a final header over half its content, which it
            // would move to corrupt/. One page or less is written whole either way.
            header_final: content == Content::Whole
                && (!in_slot || header.len() + message.content.len() <= SLOT_BYTES),
        };
        staging.count_written(prefix)?;
        staging.prefix_checksum = staging.checksum.clone();
        staging.count_written(rest)?;
        if staging.header_final {
            // Then the commit has no placeholders to fill: one write, not three.
            staging.fill_placeholders(&mut header);
        }
        // On error `staging` is dropped here, which removes the partial file.
        write_both(&mut staging.file, &header, &message.content).map_err(queue_error)?;
        Ok(staging)
    }

    /// The size and checksum of the content counted so far, as the header's placeholders.
    fn final_values(&self) -> [(u64, usize); 2] {
        let checksum = u64::from(self.checksum.clone().finalize());
        [
            (self.content_len, self.slots.size),
            (checksum, self.slots.checksum),
        ]
    }

    /// Writes the final values into a header still in memory.
    fn fill_placeholders(&self, header: &mut [u8]) {
        for (value, at) in self.final_values() {
            header[at..at + SLOT_DIGITS].copy_from_slice(&slot_digits(value));
        }
    }

    /// Appends content.
    fn append(&mut self, chunk: &[u8]) -> Result<(), QueueError> {
        if self.header_final {
            return Err(invalid_input("a whole message cannot grow"));
        }
        self.space_checked_whole = false;
        self.file.write_all(chunk).map_err(queue_error)?;
        self.count_written(chunk)
    }

    /// Counts `chunk`, just written after the content so far, in the length and checksum.
    fn count_written(&mut self, chunk: &[u8]) -> Result<(), QueueError> {
        self.content_len += chunk.len() as u64;
        self.checksum.update(chunk);
        self.since_space_check += chunk.len() as u64;
        if self.since_space_check >= SPACE_CHECK_EVERY {
            self.since_space_check = 0;
            self.inner.check_space(0)?;
        }
        Ok(())
    }

    fn body_start(&self) -> u64 {
        self.header_len + self.prefix_len
    }

    fn read_body(&self) -> Result<Vec<u8>, QueueError> {
        let len = self.content_len - self.prefix_len;
        let len = usize::try_from(len).map_err(|_| invalid_input("message too large"))?;
        let mut body = vec![0; len];
        self.file
            .read_exact_at(&mut body, self.body_start())
            .map_err(queue_error)?;
        Ok(body)
    }

    fn replace_body(&mut self, body: &[u8]) -> Result<(), QueueError> {
        if self.header_final {
            return Err(invalid_input("a whole message cannot be changed"));
        }
        let start = self.body_start();
        self.file.set_len(start).map_err(queue_error)?;
        self.file
            .seek(SeekFrom::Start(start))
            .map_err(queue_error)?;
        self.content_len = self.prefix_len;
        self.checksum = self.prefix_checksum.clone();
        self.space_checked_whole = false;
        self.append(body)
    }

    /// Completes the file (its size and checksum in the header, data on disk with per-file
    /// commits; else the committer's `syncfs` covers it) and hands it to the committer; the
    /// answer comes through `staged.reply`.
    pub(super) fn submit(
        mut self,
        reply: tokio::sync::oneshot::Sender<Result<(), QueueError>>,
        committer: &mpsc::Sender<Staged>,
    ) -> Result<(), QueueError> {
        if !self.header_final {
            for (value, at) in self.final_values() {
                self.file
                    .write_all_at(&slot_digits(value), at as u64)
                    .map_err(queue_error)?;
            }
        }
        if !self.space_checked_whole {
            self.inner.check_space(0)?;
        }
        let committing = Committing::begin(&self.inner);
        if self.in_slot {
            return self.commit_in_slot(reply, committing);
        }
        if self.inner.options.commit == CommitMode::EachFile {
            // fdatasync covers the data and the file size, which is all a reader of a new
            // file needs.
            self.file.sync_data().map_err(queue_error)?;
            self.inner.message_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let staged = Staged {
            id: self.id.clone(),
            reply,
            committing,
        };
        if committer.send(staged).is_err() {
            return Err(committer_gone());
        }
        // From here the committer renames the file or removes it.
        self.path = None;
        Ok(())
    }

    /// The one-flush commit of a message in a slot: its `fdatasync` (the slot's name is
    /// durable already), then the rename to `<id>.eml` (not flushed: recovery renames a
    /// complete slot a crash left), then the answer.
    fn commit_in_slot(
        mut self,
        reply: tokio::sync::oneshot::Sender<Result<(), QueueError>>,
        committing: Committing,
    ) -> Result<(), QueueError> {
        self.file.sync_data().map_err(queue_error)?;
        self.inner.message_syncs.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.path.take() else {
            return Err(invalid_input("the message being received was lost"));
        };
        if let Err(e) = std::fs::rename(&slot, self.inner.layout.message(&self.id)) {
            let _ = std::fs::remove_file(&slot);
            return Err(queue_error(e));
        }
        self.inner.note_committed(vec![self.id.clone()]);
        // No longer under way before the client hears (see `Staged::answer`).
        drop(committing);
        let _ = reply.send(Ok(()));
        Ok(())
    }

    pub(super) fn id(&self) -> &MessageId {
        &self.id
    }
}

/// Writes `first`, then `second`, in one system call when the kernel takes both (a gathered
/// write: no copy of a large content), the rest after a short write.
fn write_both(out: &mut impl Write, first: &[u8], second: &[u8]) -> io::Result<()> {
    let written = loop {
        match out.write_vectored(&[IoSlice::new(first), IoSlice::new(second)]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    match written.checked_sub(first.len()) {
        None => {
            out.write_all(&first[written..])?;
            out.write_all(second)
        }
        Some(of_second) => out.write_all(&second[of_second..]),
    }
}

/// Whether a new staging may write into a preallocated file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotUse {
    /// When [`take_slot`]'s rule says it pays.
    IfWorthIt,
    /// Never: the staging runs on an async thread, where the slot's `fdatasync` would block
    /// every other session on it.
    Never,
}

/// Whether a small message of `len` octets can be staged and handed to the committer on the
/// session's own thread instead of a blocking-pool thread. It can when its commit will be
/// the committer's (`syncfs` commits) and another commit is under way: staging is then a
/// file creation and one write into the page cache, no flush, cheaper than the two thread
/// wake-ups of a hand-off, and the session waits for the committer's flush anyway. A lone
/// commit goes to the pool, where it may take a preallocated file and flush it itself.
pub(super) fn stages_without_waiting(inner: &Inner, len: usize) -> bool {
    inner.options.commit == CommitMode::Filesystem
        && len as u64 <= KEEP_IN_MEMORY
        && inner.committing.load(Ordering::Relaxed) > 0
}

/// A free slot (opened, and locked for as long as the staging keeps its file), if one is
/// ready and this message of `len` octets (header included) should take it: always with
/// per-file commits; with `syncfs` commits only when it fits the slot's written blocks and no
/// other commit is under way — a lone commit then costs a data-only flush instead of a
/// journal commit, while concurrent ones still share one `syncfs`. (A small message is
/// created at its commit, so "now" is when it commits.)
fn take_slot(inner: &Inner, len: usize) -> Option<(PathBuf, File)> {
    let wanted = match inner.options.commit {
        CommitMode::EachFile => true,
        CommitMode::Filesystem => {
            len <= SLOT_BYTES && inner.committing.load(Ordering::Relaxed) == 0
        }
    };
    if !wanted {
        return None;
    }
    inner.slots.take()
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Octets of content (trace header included) a draft keeps in memory before it creates its
/// file. Most mail is smaller: it reaches the disk in the one blocking call that also hands it
/// to the committer, instead of one to create the file, one per write and one to submit —
/// each a wake-up of a thread, which costs more CPU than the writes on a small machine.
/// The session writes in pieces of 64 KiB (its `FLUSH_AT`), so a larger message goes to its
/// file at its first write, and memory stays bounded per session either way.
pub(super) const KEEP_IN_MEMORY: u64 = 64 * 1024;

/// Where a [`SpoolDraft`] holds its content.
pub(super) enum Held {
    /// Small so far: in memory, no file yet.
    Memory(MemoryDraft),
    /// In `tmp/<id>.eml`.
    File(Staging),
}

/// The [`Draft`] of a [`Spool`](super::Spool). The staging moves into a blocking thread for
/// each file operation and back; if the session stops waiting, the thread drops it when done,
/// which removes the file.
pub(super) struct SpoolDraft {
    /// `None` only after an operation on the file was cancelled midway.
    pub(super) held: Option<Held>,
    /// The spool it belongs to; a draft of another spool is refused at commit.
    pub(super) spool: Arc<Inner>,
}

impl SpoolDraft {
    /// A draft that starts in memory.
    pub(super) fn new(message: NewMessage, spool: Arc<Inner>) -> SpoolDraft {
        SpoolDraft {
            held: Some(Held::Memory(MemoryDraft::new(message))),
            spool,
        }
    }

    /// Runs `work` on the staging in a blocking thread and puts it back; a draft still in
    /// memory first moves to its file.
    async fn with_staging<T, F>(&mut self, work: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Staging) -> Result<T, QueueError> + Send + 'static,
    {
        let held = self.held.take().ok_or_else(draft_lost)?;
        let inner = Arc::clone(&self.spool);
        let (staging, result) = blocking(move || {
            let mut staging = match held {
                Held::File(staging) => staging,
                Held::Memory(memory) => Staging::create(
                    &inner,
                    memory.message(),
                    memory.prefix_len(),
                    SlotUse::IfWorthIt,
                    Content::SoFar,
                )?,
            };
            let result = work(&mut staging);
            Ok((staging, result))
        })
        .await?;
        self.held = Some(Held::File(staging));
        result
    }
}

impl Draft for SpoolDraft {
    fn size(&self) -> u64 {
        match &self.held {
            Some(Held::Memory(memory)) => memory.size(),
            Some(Held::File(staging)) => staging.content_len,
            None => 0,
        }
    }

    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), QueueError>> {
        if let Some(Held::Memory(memory)) = &mut self.held
            && memory.size() + chunk.len() as u64 <= KEEP_IN_MEMORY
        {
            memory.append(chunk);
            return Box::pin(std::future::ready(Ok(())));
        }
        let chunk = chunk.to_vec();
        Box::pin(self.with_staging(move |staging| staging.append(&chunk)))
    }

    fn read_body(&mut self) -> BoxFuture<'_, Result<Vec<u8>, QueueError>> {
        if let Some(Held::Memory(memory)) = &self.held {
            return Box::pin(std::future::ready(Ok(memory.body())));
        }
        Box::pin(self.with_staging(|staging| staging.read_body()))
    }

    fn replace_body(&mut self, body: Vec<u8>) -> BoxFuture<'_, Result<(), QueueError>> {
        if let Some(Held::Memory(memory)) = &mut self.held
            && memory.prefix_len() as u64 + body.len() as u64 <= KEEP_IN_MEMORY
        {
            memory.set_body(&body);
            return Box::pin(std::future::ready(Ok(())));
        }
        Box::pin(self.with_staging(move |staging| staging.replace_body(&body)))
    }

    fn into_message(self: Box<Self>) -> BoxFuture<'static, Result<NewMessage, QueueError>> {
        // Only the spool commits its drafts, and it never asks for this.
        Box::pin(async {
            Err(QueueError::Io(io::Error::other(
                "a spool draft is committed by its spool",
            )))
        })
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    fn held_mut(&mut self) -> Option<&mut NewMessage> {
        match &mut self.held {
            Some(Held::Memory(memory)) => memory.held_mut(),
            _ => None,
        }
    }
}

/// The staging went away with a cancelled operation: the draft cannot be completed.
fn draft_lost() -> QueueError {
    QueueError::Io(io::Error::other("the message being received was lost"))
}

/// A draft handed to a spool that did not make it.
pub(super) fn foreign_draft() -> QueueError {
    invalid_input("a draft can only be committed by the queue that began it")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `step` octets per call, from one buffer or across two.
    struct Trickle {
        taken: Vec<u8>,
        step: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step);
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.step;
            for buf in bufs {
                let n = buf.len().min(room);
                self.taken.extend_from_slice(&buf[..n]);
                room -= n;
            }
            Ok(self.step - room)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn both_parts_arrive_whole_and_in_order_after_short_writes() {
        for step in [1, 3, 5, 8, 9, 100] {
            let mut out = Trickle {
                taken: Vec::new(),
                step,
            };
            write_both(&mut out, b"head:", b"body").unwrap();
            assert_eq!(out.taken, b"head:body", "{step} octets per write");
        }
    }
}
