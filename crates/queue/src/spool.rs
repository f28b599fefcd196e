//! A file spool implementing [`Queue`].
//!
//! # On-disk layout (under the directory given to [`Spool::open`], normally `data_dir/queue`)
//!
//! ```text
//! lock               spool-wide lock file (see "Processes" below); never holds data
//! tmp/               files being written (when no preallocated file is ready); nothing here
//!                    was ever acknowledged
//! msg/<id>.eml       the message: one header line `relayward-queue-v1 <state JSON>` (with the
//!                    content's size and CRC-32) + content;
//!                    written once, never changed; its presence is the message's existence
//!                    (once its content matches its checksum: see "Enqueue and group commit")
//! msg/slot-<hex>.new a preallocated file for a message to come ([`slots`]): zeros, or
//!                    being written, or (after a crash) a message that recovery renames to
//!                    its id; a message written into one may be followed by the rest of its
//!                    zeros (the header's size says where the content ends)
//! msg/<id>.json      the current state (a QueuedMessage as JSON), from the first state change
//!                    on; supersedes the header; replaced whole by rename
//! corrupt/           entries that could not be read, moved aside at open for a person to inspect
//! ```
//!
//! # Enqueue and group commit
//!
//! 1. The content is written to `tmp/<id>.eml` while it arrives (a [`Draft`], see
//!    [`draft`]; a message of at most 64 KiB stays in the draft's memory and is written at its
//!    end), or at once by `enqueue`, in blocking threads, with no flush: the page cache
//!    holds it. A small message whose commit finds another under way is written on the
//!    session's own thread instead (`draft::stages_without_waiting`): it waits for the
//!    committer's flush either way, and a hand-off to the pool and back costs more than
//!    its one write.
//! 2. At its end the size and a CRC-32 of the content are written in place into the header
//!    (a message given whole, as a small draft is at its commit, gets them in its header's
//!    first and only write, together with the content), and the id goes to one committer
//!    thread. It takes the first waiting message plus every
//!    other one already waiting (up to [`SpoolOptions::max_batch`]), renames each into `msg/`
//!    and makes the batch durable with **one** flush: a `syncfs(2)` of the spool's filesystem
//!    ([`CommitMode::Filesystem`]), which writes the content and the new directory entries
//!    together. With [`CommitMode::EachFile`] (the choice on a shared filesystem) a message is
//!    written into a preallocated file in `msg/` whose name is durable already ([`slots`]),
//!    `fdatasync`ed — its one flush — renamed to `<id>.eml` and answered by its own thread, no
//!    committer involved; only when no preallocated file is ready (a burst) does it take the
//!    older path: `tmp/`, its `fdatasync`, then the committer's rename and one fsync of `msg/`
//!    for the batch. Under `syncfs` too, a message of at most a preallocated file's size
//!    whose commit finds no other under way (one client) is committed in such a file with its
//!    own `fdatasync`, which on a journaled filesystem is a data-only flush, cheaper than a
//!    `syncfs`; concurrent commits keep sharing the committer's.
//! 3. Only after that flush does each waiter get its answer; a failed flush answers every
//!    waiter of the batch with an error and removes their files (they were never
//!    acknowledged).
//!
//! While the committer is busy with one batch the next accumulates, so flushes per message fall
//! as load rises, without a timer that would add latency at low load. Under `syncfs` a single
//! session waits for one flush, as it waits for Postfix's one fsync of its queue file. But
//! `syncfs` promises no order between the content and the names it writes (and the
//! filesystem may write a rename out on its own before the `syncfs` even starts), so a crash
//! between the renames and the end of the flush can leave a name in `msg/` whose content never
//! reached the disk (zeros, or another file's old blocks): nobody got `250` for it, and
//! reading its content finds that it does not match the checksum in its header, so it is moved
//! to `corrupt/` ([`QueueError::Corrupt`], which the runner quarantines) and never delivered.
//! Recovery at open checks sizes, not checksums (that would read every queued message at each
//! start): until the runner reads such an entry, `relayward queue list` shows it like any
//! other. (Per-file commits flush the content before the rename, as every version did; files
//! from versions before the checksum have none and need none.) Older versions read the new
//! files (they ignore the extra header key), so a spool needs no migration either way — but
//! one that a crash left under `syncfs` should be opened once by this version before a
//! downgrade: an older one would deliver a torn entry's zeros. A dedicated thread (not a tokio task) keeps `open`
//! free of any runtime requirement. A renamed message may be seen by `list` a moment before
//! its flush completes; if that flush then fails, the client gets an error and may send again:
//! a duplicate, never a loss.
//!
//! Preallocated files (`slot-*.new`) are this version's: an older one takes them for strays
//! and quarantines them, an acknowledged message a power loss left under such a name
//! included, and it refuses a message followed by a slot's remaining zeros as damaged (its
//! length differs from its header's). Before a downgrade, let the queue empty, stop the
//! server cleanly (free slots are removed) and open the spool once with this version after
//! any crash.
//!
//! # State changes and processes
//!
//! `update`, `set_held`, `retry_now` and `delete` open `msg/<id>.eml` and take an exclusive
//! `flock` on it (the file never changes for the message's lifetime), check that it is still
//! linked, read the state (`.json`, else the header), change it, write
//! `tmp/<id>.<random>.json`, `fdatasync`, rename it over `msg/<id>.json` and fsync `msg/`.
//! Removal (delete, or every recipient final) unlinks `.eml` (the message is gone) then `.json`,
//! under the same lock, then, for an administrator's delete only, fsyncs: a delivered message
//! that a crash brings back is delivered once more, which at-least-once allows (Postfix does not
//! sync its removals either), and the flush per delivered message is saved. A second process
//! (the `relayward queue` CLI) following this protocol serialises with the server per message,
//! so neither loses the other's change; a waiter that gets the lock after a removal finds the
//! file unlinked and reports [`QueueError::NotFound`]. The runner's result for a message it
//! delivered from the copy kept in memory is applied on its own thread when the lock is free
//! (a removal is unlinks only; a state to write still goes to a blocking thread for its
//! flush); a lock held elsewhere sends it to a blocking thread to wait. Readers (`list`, `get`, `content`) take
//! no lock: every file is replaced by an atomic rename, so they see an old or a new state,
//! never a mix.
//! The content of a small message just committed is also kept in memory, bounded, for the
//! runner's first `content` of it (`spool/fresh.rs`).
//!
//! Every `Spool` holds a shared `flock` on `lock` for its lifetime. `open` first tries to take it
//! exclusively without waiting: if that works no other process uses the spool, and recovery runs:
//! `tmp/` is emptied, `.json` files without a message are removed (a removal cut short), and
//! unreadable entries are moved to `corrupt/` with a log line. If another process holds the
//! spool, recovery is skipped, because its temp files may belong to writes in progress; `list`
//! then skips unreadable entries with a log line. Preallocated files are settled either way:
//! each is locked by the process that made it, so one nobody holds was left by a process that
//! died, and `open` names the message in it or removes it (see [`slots`]).
//!
//! There is no in-memory index: the directory is the index, so a change made by another process
//! is visible at the next `list`, and nothing needs rebuilding after a crash.

mod draft;
mod entry;
mod fresh;
mod recover;
mod slots;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relayward_protocol::text::Escaped;
use tokio::sync::{Notify, oneshot};

use self::draft::{Content, Held, SlotUse, SpoolDraft, Staging};
use self::entry::{Change, apply_updates, parse_state, read_header};
use self::fresh::FreshContent;
use crate::fsutil::{
    PRIVATE_FILE, create_private_dir, lock_exclusive, lock_shared, queue_error, room_for,
    shared_queue_error, sync_dir, try_lock_exclusive, write_synced,
};
use crate::{
    BoxFuture, Changes, Claim, Draft, MessageId, NewMessage, Queue, QueueError, QueuedMessage,
    RecipientUpdate, claim_by_state,
};

const CONTENT_EXT: &str = "eml";
const STATE_EXT: &str = "json";
/// Touched by every admin change (hold, release, retry, delete), so the server's runner sees
/// changes another process made without listing the queue.
const MARKER: &str = "changed";
/// How often [`Queue::changes`] looks at the marker for another process's changes.
const MARKER_POLL: Duration = Duration::from_secs(1);
/// Enqueued ids kept for the runner between two calls of `changes`; beyond, it rescans.
const MAX_PENDING: usize = 100_000;

/// Settings of a [`Spool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Refuse new messages with [`QueueError::Full`] while fewer than this many bytes (plus the
    /// message itself) would stay free on the spool's filesystem, like Postfix's `queue_minfree`.
    /// Leaves room for state updates, bounces and logs; checked on every enqueue, so the queue
    /// accepts again as soon as space returns. `0` only refuses on a real ENOSPC.
    pub min_free_bytes: u64,
    /// Most messages one commit covers; bounds the wait of the last one in a batch.
    pub max_batch: usize,
    /// How the content of a batch of new messages is made durable.
    pub commit: CommitMode,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            min_free_bytes: 64 * 1024 * 1024,
            max_batch: 1024,
            commit: CommitMode::default(),
        }
    }
}

/// How the committer makes a batch of new messages durable (see the module documentation,
/// "Enqueue and group commit", and docs/benchmarks.md for the trade-off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CommitMode {
    /// The batch renamed into `msg/`, then one `syncfs(2)` of the spool's filesystem: a single
    /// flush and journal commit for content and names, however many messages finished in the
    /// window (the content's checksum covers the lack of order within it). It also writes out
    /// whatever else is dirty on that filesystem (drafts still arriving, other programs'
    /// files), so it is best on a filesystem of the spool's own.
    #[default]
    Filesystem,
    /// An `fdatasync` of each message file as it finishes (in parallel threads, which the
    /// filesystem merges into shared journal commits), as relayward did before: for a spool
    /// that shares a busy filesystem.
    EachFile,
}

/// Counters for tests and metrics (this instance only, since it was opened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Messages acknowledged by `enqueue`.
    pub committed: u64,
    /// Group commits performed (each ends with one flush: a `syncfs`, or with
    /// [`CommitMode::EachFile`] a directory fsync; per-file commits into a preallocated file
    /// need none).
    pub batches: u64,
    /// Directory fsyncs of all kinds (enqueue batches with [`CommitMode::EachFile`], batches
    /// of preallocated files, updates, removals, recovery).
    pub dir_fsyncs: u64,
    /// `syncfs` calls (one per batch with [`CommitMode::Filesystem`]).
    pub fs_syncs: u64,
    /// `fdatasync`s of new message files (one per message with [`CommitMode::EachFile`], and
    /// one per lone commit into a preallocated file with [`CommitMode::Filesystem`]).
    pub message_syncs: u64,
    /// `syncfs` calls that made a batch of preallocated files durable (see `spool/slots.rs`).
    pub slot_syncs: u64,
    /// Preallocated message files ready now (per-file commits; see `spool/slots.rs`).
    pub preallocated: usize,
    /// Small messages staged and handed to the committer on the session's own thread, with
    /// no blocking-pool hand-off, because another commit was under way (`syncfs` commits).
    pub staged_on_caller: u64,
    /// Delivery results applied on the runner's own thread: the message was delivered from
    /// the content kept in memory, and its lock was free.
    pub updated_on_caller: u64,
}

/// What recovery did at [`Spool::open`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Complete, readable messages found.
    pub messages: usize,
    /// Files removed from `tmp/` and slots removed from `msg/` (free, or writes that were never
    /// acknowledged).
    pub temp_removed: usize,
    /// Content files without a state file, removed.
    pub orphans_removed: usize,
    /// File names moved to `corrupt/`.
    pub quarantined: Vec<String>,
}

/// The file spool. See the module documentation for layout and protocols.
pub struct Spool {
    inner: Arc<Inner>,
    committer: mpsc::Sender<Staged>,
    recovery: Option<RecoveryReport>,
    /// The committer and slot threads, joined when the spool is dropped: each holds the
    /// spool (and its lock) until it ends, and a spool opened again at once must find the lock
    /// free to recover.
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Paths of the spool's parts.
#[derive(Debug, Clone)]
struct Layout {
    root: PathBuf,
    msg: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
}

/// State shared by the async front, the blocking workers and the committer thread.
struct Inner {
    layout: Layout,
    options: SpoolOptions,
    /// Current `min_free_bytes`; atomic so a configuration reload can change it in place.
    min_free_bytes: AtomicU64,
    notify: Notify,
    /// What `changes` will report next.
    pending: Mutex<Changes>,
    /// The marker's modification time as last seen (at open, then by `changes`).
    marker_seen: Mutex<Option<SystemTime>>,
    committed: AtomicU64,
    batches: AtomicU64,
    dir_fsyncs: AtomicU64,
    fs_syncs: AtomicU64,
    message_syncs: AtomicU64,
    slot_syncs: AtomicU64,
    /// Small messages staged on the caller's thread (see [`draft::stages_without_waiting`]).
    staged_on_caller: AtomicU64,
    /// Updates applied on the caller's thread (see [`Inner::update_without_waiting`]).
    updated_on_caller: AtomicU64,
    /// Commits under way, from their submit to their answer ([`Committing`]).
    committing: AtomicUsize,
    /// Content of small messages just committed, for the runner's first read.
    fresh: FreshContent,
    /// Preallocated message files for per-file commits.
    slots: slots::Slots,
    /// `tmp/`, open: the handle `syncfs` names the filesystem by.
    tmp_dir: File,
    /// Holds the shared spool lock for as long as this instance lives.
    _lock: File,
}

/// A message whose temp files are written and synced, waiting for the committer.
struct Staged {
    id: MessageId,
    reply: oneshot::Sender<Result<(), QueueError>>,
    /// Counts it as under way until it is answered ([`Staged::answer`]).
    committing: Committing,
}

impl Staged {
    /// Answers the waiter, after it stops counting as under way: a client that commits its
    /// next message as soon as it hears must not find this one still counted.
    fn answer(self, result: Result<(), QueueError>) {
        drop(self.committing);
        let _ = self.reply.send(result);
    }
}

/// One commit under way, counted in `Inner::committing` from its submit until its answer:
/// with [`CommitMode::Filesystem`] a small message whose commit finds no other under way is
/// written into a preallocated file and flushed alone (data only, no journal commit), where
/// concurrent ones share the committer's `syncfs` (see `spool/slots.rs`).
struct Committing(Arc<Inner>);

impl Committing {
    fn begin(inner: &Arc<Inner>) -> Committing {
        inner.committing.fetch_add(1, Ordering::Relaxed);
        Committing(Arc::clone(inner))
    }
}

impl Drop for Committing {
    fn drop(&mut self) {
        self.0.committing.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Spool {
    /// Opens (creating if needed) the spool at `dir`, recovering it when no other process has it
    /// open. Needs no tokio runtime; the methods of [`Queue`] do.
    pub fn open(dir: impl AsRef<Path>, options: SpoolOptions) -> Result<Spool, QueueError> {
        let layout = Layout::new(dir.as_ref());
        layout.create().map_err(queue_error)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE)
            .open(layout.root.join("lock"))
            .map_err(queue_error)?;
        let recovery = lock_and_recover(&lock, &layout).map_err(queue_error)?;
        if recovery.is_none() {
            // Recovery was skipped, but a slot left by a process that died may hold an
            // acknowledged message nobody would ever see.
            recover::adopt_slots(&layout).map_err(queue_error)?;
        }
        let marker_seen = marker_time(&layout.root);
        let tmp_dir = File::open(&layout.tmp).map_err(queue_error)?;
        let inner = Arc::new(Inner {
            layout,
            min_free_bytes: AtomicU64::new(options.min_free_bytes),
            options,
            notify: Notify::new(),
            pending: Mutex::new(Changes::default()),
            marker_seen: Mutex::new(marker_seen),
            committed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            dir_fsyncs: AtomicU64::new(0),
            fs_syncs: AtomicU64::new(0),
            message_syncs: AtomicU64::new(0),
            slot_syncs: AtomicU64::new(0),
            staged_on_caller: AtomicU64::new(0),
            updated_on_caller: AtomicU64::new(0),
            committing: AtomicUsize::new(0),
            fresh: FreshContent::default(),
            slots: slots::Slots::default(),
            tmp_dir,
            _lock: lock,
        });
        let (committer, committer_thread) = spawn_committer(&inner)?;
        let threads = vec![
            committer_thread,
            slots::spawn_refill(&inner).map_err(QueueError::Io)?,
        ];
        Ok(Spool {
            inner,
            committer,
            recovery,
            threads,
        })
    }

    /// The spool directory.
    pub fn root(&self) -> &Path {
        &self.inner.layout.root
    }

    /// What recovery did at open; `None` when another process had the spool open and recovery
    /// was skipped.
    pub fn recovery_report(&self) -> Option<&RecoveryReport> {
        self.recovery.as_ref()
    }

    /// How this spool commits new messages.
    pub fn commit_mode(&self) -> CommitMode {
        self.inner.options.commit
    }

    /// Counters since open, e.g. to check that concurrent enqueues share directory fsyncs.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            committed: self.inner.committed.load(Ordering::Relaxed),
            batches: self.inner.batches.load(Ordering::Relaxed),
            dir_fsyncs: self.inner.dir_fsyncs.load(Ordering::Relaxed),
            fs_syncs: self.inner.fs_syncs.load(Ordering::Relaxed),
            message_syncs: self.inner.message_syncs.load(Ordering::Relaxed),
            slot_syncs: self.inner.slot_syncs.load(Ordering::Relaxed),
            preallocated: self.inner.slots.ready(),
            staged_on_caller: self.inner.staged_on_caller.load(Ordering::Relaxed),
            updated_on_caller: self.inner.updated_on_caller.load(Ordering::Relaxed),
        }
    }

    /// Another process changed the queue and says so (the admin socket: `relayward queue …`
    /// after a hold, release, retry or delete): the runner rescans now instead of at the
    /// next look at the marker.
    pub fn external_change(&self) {
        self.inner.note_change(|pending| pending.rescan = true);
    }

    /// Changes [`SpoolOptions::min_free_bytes`] while running (configuration reload).
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.inner.min_free_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Stages the message, hands it to the committer and waits for the flush that covers it.
    /// Staging runs in a blocking thread, or on the caller's when another commit is under
    /// way and this one will be the committer's ([`draft::stages_without_waiting`]).
    async fn enqueue_message(&self, message: NewMessage) -> Result<MessageId, QueueError> {
        let message_len = message.content.len();
        let inner = Arc::clone(&self.inner);
        let committer = self.committer.clone();
        let (reply, answer) = oneshot::channel();
        let stage = move |slot: SlotUse| {
            let staging = Staging::create(
                &inner,
                &message,
                message.content.len(),
                slot,
                Content::Whole,
            )?;
            let id = staging.id().clone();
            // Kept before the hand-over: the runner may ask for it the moment it is committed.
            inner.fresh.keep(&id, message.content);
            if let Err(err) = staging.submit(reply, &committer) {
                inner.fresh.forget(&id);
                return Err(err);
            }
            Ok(id)
        };
        let id = if draft::stages_without_waiting(&self.inner, message_len) {
            self.inner.staged_on_caller.fetch_add(1, Ordering::Relaxed);
            stage(SlotUse::Never)?
        } else {
            // Staging and hand-over happen in one closure: if the caller gives up waiting,
            // the message is still committed or cleaned up, never left half in tmp/.
            blocking(move || stage(SlotUse::IfWorthIt)).await?
        };
        let committed = wait_for_commit(id.clone(), answer).await;
        if committed.is_err() {
            self.inner.fresh.forget(&id);
        }
        committed
    }

    /// A draft that keeps a small message in memory and moves to `tmp/` once it grows past
    /// [`draft::KEEP_IN_MEMORY`] (free space is checked then, or at commit).
    async fn begin_draft(&self, message: NewMessage) -> Result<Box<dyn Draft>, QueueError> {
        if message.recipients.is_empty() {
            return Err(invalid_input("a message needs at least one recipient"));
        }
        Ok(Box::new(SpoolDraft::new(message, Arc::clone(&self.inner))))
    }

    /// Completes a draft of this spool and waits for the fsync that covers it.
    async fn commit_draft(&self, draft: Box<dyn Draft>) -> Result<MessageId, QueueError> {
        let Ok(mut draft) = draft.into_any().downcast::<SpoolDraft>() else {
            return Err(draft::foreign_draft());
        };
        if !Arc::ptr_eq(&draft.spool, &self.inner) {
            return Err(draft::foreign_draft());
        }
        let staging = match draft.held.take() {
            // Small: written, synced and handed over in one blocking call.
            Some(Held::Memory(memory)) => return self.enqueue_message(memory.into_inner()).await,
            Some(Held::File(staging)) => staging,
            None => return Err(invalid_input("the message being received was lost")),
        };
        let id = staging.id().clone();
        let committer = self.committer.clone();
        let (reply, answer) = oneshot::channel();
        blocking(move || staging.submit(reply, &committer)).await?;
        wait_for_commit(id, answer).await
    }

    /// Runs `f` on a clone of the shared state in a blocking thread.
    fn run<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, QueueError>>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, QueueError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        Box::pin(blocking(move || f(&inner)))
    }

    /// Like [`Spool::run`] for an admin change: afterwards the marker is touched (for a runner
    /// in another process) and this instance's runner is asked to rescan.
    fn run_admin<F>(&self, f: F) -> BoxFuture<'_, Result<(), QueueError>>
    where
        F: FnOnce(&Inner) -> Result<(), QueueError> + Send + 'static,
    {
        let work = self.run(move |inner| {
            f(inner)?;
            inner.touch_marker();
            Ok(())
        });
        Box::pin(async move {
            work.await?;
            self.inner.note_change(|pending| pending.rescan = true);
            Ok(())
        })
    }

    /// The next [`Changes`]: what is buffered, else the first of a local change or another
    /// process touching the marker.
    async fn next_changes(&self) -> Changes {
        loop {
            let taken = std::mem::take(&mut *self.inner.lock_pending());
            if taken != Changes::default() {
                return taken;
            }
            let inner = Arc::clone(&self.inner);
            let marker_moved = async move {
                loop {
                    tokio::time::sleep(MARKER_POLL).await;
                    let check = Arc::clone(&inner);
                    if blocking(move || Ok(check.marker_moved()))
                        .await
                        .unwrap_or(false)
                    {
                        return;
                    }
                }
            };
            tokio::select! {
                () = self.inner.notify.notified() => {}
                () = marker_moved => return Changes { rescan: true, ..Changes::default() },
            }
        }
    }
}

impl Drop for Spool {
    /// Ends the slot thread (removing the free slots) and the committer, and waits for both:
    /// work in progress ends first (a commit being flushed, an enqueue handing over).
    fn drop(&mut self) {
        self.inner.slots.stop();
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.committer, closed));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Queue for Spool {
    fn enqueue(&self, message: NewMessage) -> BoxFuture<'_, Result<MessageId, QueueError>> {
        Box::pin(self.enqueue_message(message))
    }

    fn begin(&self, message: NewMessage) -> BoxFuture<'_, Result<Box<dyn Draft>, QueueError>> {
        Box::pin(self.begin_draft(message))
    }

    fn commit(&self, draft: Box<dyn Draft>) -> BoxFuture<'_, Result<MessageId, QueueError>> {
        Box::pin(self.commit_draft(draft))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<QueuedMessage>, QueueError>> {
        self.run(Inner::list)
    }

    fn get<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<QueuedMessage, QueueError>> {
        let id = id.clone();
        self.run(move |inner| inner.read_state(&id))
    }

    fn content<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<Vec<u8>, QueueError>> {
        if let Some(content) = self.inner.fresh.take(id) {
            return Box::pin(std::future::ready(Ok(content)));
        }
        let id = id.clone();
        self.run(move |inner| inner.read_content(&id))
    }

    /// A message delivered from the content kept in memory gets its result on this thread
    /// where no flush or wait is needed ([`Inner::update_without_waiting`]); any other goes
    /// to a blocking thread.
    fn update<'a>(
        &'a self,
        id: &'a MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let id = id.clone();
        if !self.inner.fresh.was_kept(&id) {
            return self.run(move |inner| inner.modify_by_updates(&id, updates));
        }
        Box::pin(async move {
            match self.inner.update_without_waiting(&id, updates)? {
                Unfinished::Done => Ok(()),
                Unfinished::Write(locked) => blocking(move || locked.write()).await,
                Unfinished::Busy(updates) => {
                    self.run(move |inner| inner.modify_by_updates(&id, updates))
                        .await
                }
            }
        })
    }

    /// The whole batch in one blocking call (the default reads each message in its own).
    fn claim<'a>(
        &'a self,
        ids: &'a [MessageId],
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<Claim>, QueueError>> {
        let ids = ids.to_vec();
        self.run(move |inner| {
            ids.iter()
                .map(|id| claim_by_state(id, inner.read_state(id), now))
                .collect()
        })
    }

    fn set_held<'a>(
        &'a self,
        id: &'a MessageId,
        held: bool,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let id = id.clone();
        self.run_admin(move |inner| {
            inner.modify(&id, Removal::Durable, |state| {
                if state.held == held {
                    return Ok(Change::Keep);
                }
                state.held = held;
                Ok(Change::Write)
            })
        })
    }

    fn retry_now<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>> {
        let id = id.clone();
        self.run_admin(move |inner| {
            inner.modify(&id, Removal::Durable, |state| {
                Ok(entry::retry_all(state, unix_now()))
            })
        })
    }

    fn delete<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>> {
        let id = id.clone();
        self.run_admin(move |inner| inner.modify(&id, Removal::Durable, |_| Ok(Change::Remove)))
    }

    fn quarantine<'a>(
        &'a self,
        id: &'a MessageId,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let id = id.clone();
        let reason = reason.to_owned();
        self.run(move |inner| inner.quarantine(&id, &reason))
    }

    /// Local changes wake the waiter through `Notify::notify_one`, which stores a permit when
    /// nobody waits, and are buffered in `pending`: nothing between two calls is lost.
    fn changes(&self) -> BoxFuture<'_, Changes> {
        Box::pin(self.next_changes())
    }
}

impl Layout {
    fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            msg: root.join("msg"),
            tmp: root.join("tmp"),
            corrupt: root.join("corrupt"),
        }
    }

    /// Creates the directories (private: they hold other people's mail) and makes their
    /// entries durable.
    fn create(&self) -> io::Result<()> {
        for dir in [&self.root, &self.msg, &self.tmp, &self.corrupt] {
            create_private_dir(dir)?;
        }
        sync_dir(&self.root)
    }

    /// The message file: header and content; its existence is the message's.
    fn message(&self, id: &MessageId) -> PathBuf {
        self.msg.join(format!("{id}.{CONTENT_EXT}"))
    }

    /// The current state, once the message has been changed.
    fn state(&self, id: &MessageId) -> PathBuf {
        self.msg.join(format!("{id}.{STATE_EXT}"))
    }

    /// Where a new message is written before its commit.
    fn tmp_message(&self, id: &MessageId) -> PathBuf {
        self.tmp.join(format!("{id}.{CONTENT_EXT}"))
    }

    /// A temp name for a state rewrite; random so two processes never collide.
    fn tmp_update(&self, id: &MessageId) -> PathBuf {
        let nonce = rand::random::<u64>();
        self.tmp.join(format!("{id}.{nonce:016x}.{STATE_EXT}"))
    }
}

impl Inner {
    /// Fsyncs `msg/` and counts it.
    fn sync_msg_dir(&self) -> io::Result<()> {
        self.dir_fsyncs.fetch_add(1, Ordering::Relaxed);
        sync_dir(&self.layout.msg)
    }

    /// Refuses with `Full` when the message would leave less than `min_free_bytes` free.
    fn check_space(&self, size: u64) -> Result<(), QueueError> {
        let min_free = self.min_free_bytes.load(Ordering::Relaxed);
        let room = room_for(&self.layout.root, min_free, size).map_err(queue_error)?;
        room.map_err(|(available, needed)| {
            tracing::warn!(
                available,
                needed,
                "queue refuses message: too little free space"
            );
            QueueError::Full
        })
    }

    /// Renames one staged message into `msg/` (not yet durable: the batch's flush follows).
    fn place(&self, id: &MessageId) -> io::Result<()> {
        let tmp = self.layout.tmp_message(id);
        let result = fs::rename(&tmp, self.layout.message(id));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Flushes everything written on the spool's filesystem (the staged files of the batch
    /// among it) and counts it.
    fn sync_filesystem(&self) -> io::Result<()> {
        self.fs_syncs.fetch_add(1, Ordering::Relaxed);
        rustix::fs::syncfs(&self.tmp_dir).map_err(io::Error::from)
    }

    /// One group commit: every message of the batch renamed into `msg/`, then **one** flush
    /// — a `syncfs`, which makes the content and the new names durable together, or (the
    /// content `fdatasync`ed at submit with [`CommitMode::EachFile`]) an fsync of `msg/` —
    /// then everyone answered. Under `syncfs` a crash can leave a name whose content never
    /// reached the disk; nobody was told `250` for it, and the checksum in its header keeps it
    /// from being delivered (see [`entry`]).
    fn commit_batch(&self, batch: Vec<Staged>) {
        let placed = self.place_all(batch);
        if placed.is_empty() {
            return;
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        let flushed = match self.options.commit {
            CommitMode::Filesystem => self.sync_filesystem(),
            CommitMode::EachFile => self.sync_msg_dir(),
        };
        match flushed {
            Ok(()) => {
                // From the committer (so the runner hears of it even if a waiter stopped
                // listening), and before the answers: the runner knows of a message no later
                // than its client does.
                self.note_committed(placed.iter().map(|s| s.id.clone()).collect());
                for staged in placed {
                    staged.answer(Ok(()));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, count = placed.len(), "queue commit flush failed");
                for staged in placed {
                    let _ = self.remove_files(&staged.id, Removal::Durable, true);
                    staged.answer(Err(shared_queue_error(&err)));
                }
            }
        }
    }

    /// Renames every staged message; those that failed are answered at once and dropped.
    fn place_all(&self, batch: Vec<Staged>) -> Vec<Staged> {
        let mut placed = Vec::with_capacity(batch.len());
        for staged in batch {
            match self.place(&staged.id) {
                Ok(()) => placed.push(staged),
                Err(err) => {
                    staged.answer(Err(queue_error(err)));
                }
            }
        }
        placed
    }

    /// Counts newly committed messages and tells the runner of them.
    fn note_committed(&self, ids: Vec<MessageId>) {
        self.committed
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        self.note_change(|pending| {
            if pending.enqueued.len() + ids.len() > MAX_PENDING {
                pending.enqueued.clear();
                pending.rescan = true;
            } else if !pending.rescan {
                pending.enqueued.extend(ids);
            }
        });
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Changes> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change for `changes` and wakes its waiter.
    fn note_change(&self, record: impl FnOnce(&mut Changes)) {
        record(&mut self.lock_pending());
        self.notify.notify_one();
    }

    /// Tells runners in other processes that an admin change happened. Best effort: a runner
    /// that misses it still sees the change at its next rescan.
    fn touch_marker(&self) {
        let path = self.layout.root.join(MARKER);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        if let Err(e) = write_synced(&path, &[nanos.to_string().as_bytes()]) {
            tracing::warn!(error = %e, "cannot touch the queue's change marker");
        }
    }

    /// Whether the marker changed since the last look.
    fn marker_moved(&self) -> bool {
        let modified = marker_time(&self.layout.root);
        let mut seen = self
            .marker_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let moved = *seen != modified;
        *seen = modified;
        moved
    }

    /// Moves the message's files to `corrupt/`, with a note of why, under the message lock.
    fn quarantine(&self, id: &MessageId, reason: &str) -> Result<(), QueueError> {
        id.check()?;
        self.fresh.forget(id);
        let content = self.layout.message(id);
        let file = File::open(&content).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => QueueError::not_found(id),
            _ => queue_error(e),
        })?;
        lock_exclusive(&file).map_err(queue_error)?;
        create_private_dir(&self.layout.corrupt).map_err(queue_error)?;
        let note = self.layout.corrupt.join(format!("{id}.reason"));
        write_synced(&note, &[reason.as_bytes(), b"\n"]).map_err(queue_error)?;
        let state = self.layout.state(id);
        if state.exists() {
            fs::rename(
                &state,
                self.layout.corrupt.join(format!("{id}.{STATE_EXT}")),
            )
            .map_err(queue_error)?;
        }
        fs::rename(
            &content,
            self.layout.corrupt.join(format!("{id}.{CONTENT_EXT}")),
        )
        .map_err(queue_error)?;
        sync_dir(&self.layout.corrupt).map_err(queue_error)?;
        self.sync_msg_dir().map_err(queue_error)?;
        tracing::error!(%id, reason = %Escaped(reason), "message moved to {}", self.layout.corrupt.display());
        Ok(())
    }

    /// Every readable message, oldest first; unreadable ones are logged and skipped.
    fn list(&self) -> Result<Vec<QueuedMessage>, QueueError> {
        let mut messages = Vec::new();
        for entry in fs::read_dir(&self.layout.msg).map_err(queue_error)? {
            let entry = entry.map_err(queue_error)?;
            let Some(id) = message_file_id(&entry.file_name()) else {
                continue;
            };
            match self.read_state(&id) {
                Ok(message) => messages.push(message),
                // Removed between read_dir and read: not an error.
                Err(QueueError::NotFound(_)) => {}
                Err(err) => {
                    let error = err.to_string();
                    tracing::warn!(%id, error = %Escaped(&error), "skipping unreadable queue entry");
                }
            }
        }
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(messages)
    }

    /// The current state: the `.json` file if the message was changed, else its header.
    fn read_state(&self, id: &MessageId) -> Result<QueuedMessage, QueueError> {
        id.check()?;
        if let Some(state) = self.read_state_file(id)? {
            return Ok(state);
        }
        let file = self.open_message(id)?;
        read_header(id, &file).map(|(state, _)| state)
    }

    /// The state file `msg/<id>.json`, if the message has one (from its first change on).
    fn read_state_file(&self, id: &MessageId) -> Result<Option<QueuedMessage>, QueueError> {
        match fs::read(self.layout.state(id)) {
            Ok(json) => parse_state(id, &json).map(Some),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(queue_error(err)),
        }
    }

    /// One message's content (the message file without its header).
    fn read_content(&self, id: &MessageId) -> Result<Vec<u8>, QueueError> {
        id.check()?;
        match fs::read(self.layout.message(id)) {
            Ok(file) => entry::strip_header(id, file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(QueueError::not_found(id)),
            Err(err) => Err(queue_error(err)),
        }
    }

    /// Read-modify-write of one message's state under its exclusive lock (see module docs).
    fn modify<F>(&self, id: &MessageId, removal: Removal, change: F) -> Result<(), QueueError>
    where
        F: FnOnce(&mut QueuedMessage) -> Result<Change, QueueError>,
    {
        let lock = self.open_message(id)?;
        lock_exclusive(&lock).map_err(queue_error)?;
        let (mut state, has_state_file) = self.read_locked(id, &lock)?;
        match change(&mut state)? {
            Change::Keep => Ok(()),
            Change::Write => self.write_state(&state).map_err(queue_error),
            Change::Remove => self
                .remove_files(id, removal, has_state_file)
                .map_err(queue_error),
        }
        // `lock` closes here, releasing the flock after the change is durable.
    }

    /// The delivery result for a message just delivered from the content kept in memory,
    /// applied on the caller's thread as far as that needs no flush and no wait: such a
    /// message was committed a moment ago by this process, so its lock is almost always
    /// free and its state is its header. Its last recipients final, it is removed here
    /// (unlinks, no flush: see [`Removal::Delivered`]); a state to keep is returned with the
    /// lock held, for its durable write in a blocking thread; a lock held elsewhere (the
    /// queue CLI) sends the whole update back to the blocking [`Inner::modify`], which waits.
    fn update_without_waiting(
        self: &Arc<Self>,
        id: &MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> Result<Unfinished, QueueError> {
        let lock = self.open_message(id)?;
        if !try_lock_exclusive(&lock).map_err(queue_error)? {
            return Ok(Unfinished::Busy(updates));
        }
        self.updated_on_caller.fetch_add(1, Ordering::Relaxed);
        let (mut state, has_state_file) = self.read_locked(id, &lock)?;
        match apply_updates(&mut state, updates) {
            Change::Keep => Ok(Unfinished::Done),
            Change::Remove => {
                self.remove_files(id, Removal::Delivered, has_state_file)
                    .map_err(queue_error)?;
                Ok(Unfinished::Done)
            }
            Change::Write => Ok(Unfinished::Write(LockedState {
                inner: Arc::clone(self),
                state,
                _lock: lock,
            })),
        }
    }

    /// `msg/<id>.eml`, opened to be locked.
    fn open_message(&self, id: &MessageId) -> Result<File, QueueError> {
        id.check()?;
        match File::open(self.layout.message(id)) {
            Ok(file) => Ok(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(QueueError::not_found(id)),
            Err(err) => Err(queue_error(err)),
        }
    }

    /// The state of a message whose lock `lock` holds, and whether it has a state file; a
    /// message removed by whoever held the lock before is gone.
    fn read_locked(
        &self,
        id: &MessageId,
        lock: &File,
    ) -> Result<(QueuedMessage, bool), QueueError> {
        if lock.metadata().map_err(queue_error)?.nlink() == 0 {
            return Err(QueueError::not_found(id));
        }
        // Nobody can create or remove the state file while the lock is held; the open file
        // gives the header (no second open).
        if let Some(state) = self.read_state_file(id)? {
            return Ok((state, true));
        }
        read_header(id, lock).map(|(state, _)| (state, false))
    }

    /// A runner's delivery results, applied under the message's lock.
    fn modify_by_updates(
        &self,
        id: &MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> Result<(), QueueError> {
        self.modify(id, Removal::Delivered, |state| {
            Ok(apply_updates(state, updates))
        })
    }

    /// Replaces the state file durably: temp file, fdatasync, rename, directory fsync.
    fn write_state(&self, state: &QueuedMessage) -> io::Result<()> {
        let json = serde_json::to_vec(state).map_err(io::Error::other)?;
        let tmp = self.layout.tmp_update(&state.id);
        write_synced(&tmp, &[&json])?;
        if let Err(err) = fs::rename(&tmp, self.layout.state(&state.id)) {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        self.sync_msg_dir()
    }

    /// Removes a message: the message file first (from then on it does not exist), then its
    /// state, then (for a [`Removal::Durable`]) one fsync. A crash in between leaves a lone
    /// `.json` that recovery removes.
    /// `may_have_state` is false when the caller saw under the message's lock that there is
    /// no state file (one unlink saved per delivered message).
    fn remove_files(
        &self,
        id: &MessageId,
        removal: Removal,
        may_have_state: bool,
    ) -> io::Result<()> {
        self.fresh.forget(id);
        remove_if_present(&self.layout.message(id))?;
        if may_have_state {
            remove_if_present(&self.layout.state(id))?;
        }
        match removal {
            Removal::Durable => self.sync_msg_dir(),
            Removal::Delivered => Ok(()),
        }
    }
}

/// What [`Inner::update_without_waiting`] left to do.
enum Unfinished {
    /// Nothing: the change is made.
    Done,
    /// The new state, to be written durably while the lock is still held.
    Write(LockedState),
    /// The message's lock is held elsewhere: the updates, for a blocking [`Inner::modify`].
    Busy(Vec<RecipientUpdate>),
}

/// A message's new state and the lock under which it was computed; writing it releases the
/// lock after the write is durable.
struct LockedState {
    inner: Arc<Inner>,
    state: QueuedMessage,
    _lock: File,
}

impl LockedState {
    fn write(self) -> Result<(), QueueError> {
        self.inner.write_state(&self.state).map_err(queue_error)
    }
}

/// How sure a removal must be before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removal {
    /// An administrator's delete (or a commit that failed): durable before the answer.
    Durable,
    /// Every recipient is final: no directory fsync. A crash right after it can bring the
    /// message back, which delivers it once more — never a loss. Postfix does not sync its
    /// removals either; the fsync cost one flush per delivered message, and it waited on the
    /// same directory as the committer's, which a one-session client paid for in every reply.
    Delivered,
}

/// The change marker's modification time; `None` while no admin change ever happened.
fn marker_time(root: &Path) -> Option<SystemTime> {
    fs::metadata(root.join(MARKER))
        .and_then(|m| m.modified())
        .ok()
}

/// Takes the spool lock; recovers when this is the only user (see module docs).
fn lock_and_recover(lock: &File, layout: &Layout) -> io::Result<Option<RecoveryReport>> {
    if try_lock_exclusive(lock)? {
        let report = recover::recover(layout)?;
        lock_shared(lock)?;
        Ok(Some(report))
    } else {
        lock_shared(lock)?;
        Ok(None)
    }
}

/// The committer's channel and thread.
type Committer = (mpsc::Sender<Staged>, std::thread::JoinHandle<()>);

/// Starts the committer thread; it ends when the `Spool`'s sender and the clones lent to
/// work in progress are gone.
fn spawn_committer(inner: &Arc<Inner>) -> Result<Committer, QueueError> {
    let (sender, receiver) = mpsc::channel::<Staged>();
    let inner = Arc::clone(inner);
    let thread = std::thread::Builder::new()
        .name("relayward-queue-commit".to_owned())
        .spawn(move || run_committer(&inner, &receiver))
        .map_err(QueueError::Io)?;
    Ok((sender, thread))
}

/// Collects whatever is waiting into one batch, commits it, repeats.
fn run_committer(inner: &Inner, receiver: &mpsc::Receiver<Staged>) {
    let max_batch = inner.options.max_batch.max(1);
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        inner.commit_batch(batch);
    }
}

/// `<id>.<ext>` → (id, ext) when the id is valid.
fn split_queue_name(name: &str) -> Option<(MessageId, &str)> {
    let (stem, ext) = name.split_once('.')?;
    MessageId::parse(stem).ok().map(|id| (id, ext))
}

/// The id of a message file name, if it is one.
fn message_file_id(name: &std::ffi::OsStr) -> Option<MessageId> {
    match split_queue_name(name.to_str()?) {
        Some((id, CONTENT_EXT)) => Some(id),
        _ => None,
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Runs blocking filesystem work off the async threads; a panicking worker becomes an error.
async fn blocking<T, F>(f: F) -> Result<T, QueueError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, QueueError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(err) => Err(QueueError::Io(io::Error::other(format!(
            "queue worker failed: {err}"
        )))),
    }
}

/// The answer of the committer for one message.
async fn wait_for_commit(
    id: MessageId,
    answer: oneshot::Receiver<Result<(), QueueError>>,
) -> Result<MessageId, QueueError> {
    match answer.await {
        Ok(Ok(())) => Ok(id),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(committer_gone()),
    }
}

fn committer_gone() -> QueueError {
    QueueError::Io(io::Error::other("queue committer thread stopped"))
}

fn invalid_input(reason: &str) -> QueueError {
    QueueError::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        reason.to_owned(),
    ))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
