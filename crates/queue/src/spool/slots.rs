//! Preallocated message files ("slots"): a message committed alone costs one data-only flush.
//!
//! A per-file commit used to create its file in `tmp/`, `fdatasync` it, rename it into `msg/`
//! and wait for an fsync of `msg/`: two flushes in turn before `250`, where Postfix waits for
//! one. A slot is a file created ahead of time in `msg/` as `slot-<random>.new`, holding
//! [`SLOT_BYTES`] of zeros, made durable — name, blocks and zeros — by a background thread
//! that creates them in batches (one `syncfs` per batch). A message is written over a slot's
//! zeros, `fdatasync`ed — the one flush, and on a journaled filesystem a cheap one: the name
//! is durable already, and a message that fits changes neither the file's size nor its
//! blocks, so the flush writes data alone where a grown file would also commit the journal
//! (measured on ext4: about twice the messages per second for one client) — and only then
//! renamed to `<id>.eml` and acknowledged. The rename is not flushed: after a crash the
//! message may be back under its slot name, and recovery renames a complete slot (size and
//! checksum of its header right) to its id and removes the others (free, or written but
//! never acknowledged). A message shorter than its slot leaves the rest of the zeros behind
//! its content: readers take the length from the header and check that the rest is zeros.
//!
//! With per-file commits ([`super::CommitMode::EachFile`]) every message takes a slot when one
//! is ready. With `syncfs` commits only a message that fits a slot and finds no other commit
//! under way does (one client: one data-only flush instead of a `syncfs`); concurrent commits
//! share the committer's `syncfs`, which costs less per message than a flush each.
//!
//! Readers never see a slot: `list` and the queue CLI know messages by `<id>.eml` names only,
//! and a message is renamed before anyone is told of it. When the pool is empty (a burst) a
//! message takes the `tmp/` path as before. Only a spool that stages messages fills a pool
//! (the queue CLI never does), and free slots are removed when the spool is dropped.
//!
//! Every slot is held under an exclusive `flock` by the process that made it, from its
//! creation to its rename or removal. A slot nobody holds was left by a process that died:
//! recovery settles it, and so does every open of the spool when recovery is skipped (another
//! process holds the spool), so a message acknowledged just before a power loss is found by
//! the next server even when a `relayward queue` command was running as it started.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::Inner;
use crate::fsutil::PRIVATE_FILE;

/// Slots kept ready (at most).
const POOL: usize = 64;
/// The pool is refilled when fewer than this are free.
const REFILL_BELOW: usize = POOL / 2;
/// Octets of zeros every slot is made with: a message that fits is written over blocks that
/// are allocated and on disk already, so its `fdatasync` flushes data alone — no journal
/// commit for a new block or a new file size, which on a journaled filesystem costs as much
/// again. 4 KiB holds the header and a message of about 3 KB; a larger one grows its file,
/// and its flush commits the journal as before. Readers take a message's length from its
/// header and check that the rest is zeros.
pub(super) const SLOT_BYTES: usize = 4096;
/// How slot files are named: `slot-<16 hex digits>.new`.
const PREFIX: &str = "slot-";
pub(super) const EXT: &str = "new";

/// Whether a file name in `msg/` is a slot's.
pub(super) fn is_slot_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix(&format!(".{EXT}")))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A slot: its path and its file, opened and locked.
pub(super) type Slot = (PathBuf, File);

#[derive(Default)]
struct Pool {
    free: Vec<Slot>,
    /// Set by the first `take`: a spool that never stages creates no slots.
    wanted: bool,
    stopped: bool,
}

/// The free slots and the refill thread's signal.
#[derive(Default)]
pub(super) struct Slots {
    pool: Mutex<Pool>,
    changed: Condvar,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A free slot, if one is ready; asks for more when the pool runs low.
    pub(super) fn take(&self) -> Option<Slot> {
        let mut pool = self.lock();
        pool.wanted = true;
        let slot = pool.free.pop();
        if pool.free.len() < REFILL_BELOW {
            self.changed.notify_all();
        }
        slot
    }

    /// How many free slots are ready.
    pub(super) fn ready(&self) -> usize {
        self.lock().free.len()
    }

    /// Ends the refill thread and removes the free slots (best effort: recovery removes what
    /// is left).
    pub(super) fn stop(&self) {
        let free = {
            let mut pool = self.lock();
            pool.stopped = true;
            std::mem::take(&mut pool.free)
        };
        self.changed.notify_all();
        for (path, _file) in free {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Starts the thread that keeps the pool filled; it ends at [`Slots::stop`].
pub(super) fn spawn_refill(inner: &Arc<Inner>) -> io::Result<std::thread::JoinHandle<()>> {
    let inner = Arc::clone(inner);
    std::thread::Builder::new()
        .name("relayward-queue-slots".to_owned())
        .spawn(move || run_refill(&inner))
}

fn run_refill(inner: &Inner) {
    // Failures in a row: each waits twice as long (up to a minute), and only the first logs.
    let mut failures: u32 = 0;
    loop {
        {
            let slots = &inner.slots;
            let mut pool = slots.lock();
            while !pool.stopped && (!pool.wanted || pool.free.len() >= REFILL_BELOW) {
                pool = slots
                    .changed
                    .wait(pool)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if pool.stopped {
                return;
            }
        }
        let wanted = POOL.saturating_sub(inner.slots.ready());
        let made = match make_slots(&inner.layout.tmp, &inner.layout.msg, wanted) {
            Ok(made) => {
                if failures > 0 {
                    tracing::info!("queue files are preallocated again");
                }
                failures = 0;
                made
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot preallocate queue files; messages take the slower path until it works again");
                }
                failures = failures.saturating_add(1);
                // Not again at once: the disk is full or failing. (A stop ends the wait.)
                let wait = std::time::Duration::from_secs(1 << failures.min(6));
                let pool = inner.slots.lock();
                let _ = inner
                    .slots
                    .changed
                    .wait_timeout_while(pool, wait, |pool| !pool.stopped);
                continue;
            }
        };
        inner.slot_syncs.fetch_add(1, Ordering::Relaxed);
        let mut pool = inner.slots.lock();
        if pool.stopped {
            drop(pool);
            for (path, _file) in made {
                let _ = std::fs::remove_file(path);
            }
            return;
        }
        pool.free.extend(made);
    }
}

/// Creates `count` slot files of zeros in `dir`, each opened and locked, and makes them durable
/// (one `syncfs`: the names, the blocks and the zeros). On error the files made so far are
/// removed.
///
/// Each is created and locked in `staging` (`tmp/`, which only an exclusive recovery touches)
/// and only then renamed into `dir`: a slot must never be seen in `msg/` unlocked, or a
/// `relayward queue` command settling leftovers at that moment takes it for a dead process's
/// and removes it — the message later written into it then fails at its rename (seen in CI:
/// a bounce could not be queued).
fn make_slots(staging: &Path, dir: &Path, count: usize) -> io::Result<Vec<Slot>> {
    let mut made: Vec<Slot> = Vec::with_capacity(count);
    let result = (|| {
        for _ in 0..count {
            let name = format!("{PREFIX}{:016x}.{EXT}", rand::random::<u64>());
            let (draft, path) = (staging.join(&name), dir.join(&name));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(PRIVATE_FILE)
                .open(&draft)?;
            let placed = crate::fsutil::lock_exclusive(&file)
                .and_then(|()| file.write_all_at(&[0; SLOT_BYTES], 0))
                .and_then(|()| std::fs::rename(&draft, &path));
            if let Err(e) = placed {
                let _ = std::fs::remove_file(&draft);
                return Err(e);
            }
            made.push((path, file));
        }
        // One flush for the batch: the zeros, their blocks and the names.
        match made.first() {
            Some((_, file)) => rustix::fs::syncfs(file).map_err(io::Error::from),
            None => Ok(()),
        }
    })();
    match result {
        Ok(()) => Ok(made),
        Err(e) => {
            for (path, _file) in made {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_told_from_queue_names() {
        assert!(is_slot_name("slot-0123456789abcdef.new"));
        for name in [
            "slot-0123456789abcdef.eml",
            "slot-0123.new",
            "slot-0123456789abcdeg.new",
            "0661962fa78b330f874117e9.eml",
            "slot-.new",
        ] {
            assert!(!is_slot_name(name), "{name}");
        }
    }

    #[test]
    fn slots_are_made_durable_in_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        let made = make_slots(staging.path(), dir.path(), 5).unwrap();
        assert!(std::fs::read_dir(staging.path()).unwrap().next().is_none());
        assert_eq!(made.len(), 5);
        for (path, file) in &made {
            assert!(
                !crate::fsutil::try_lock_exclusive(&File::open(path).unwrap()).unwrap(),
                "a slot is held by its maker"
            );
            let _ = file;
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(is_slot_name(name), "{name}");
            assert_eq!(std::fs::read(path).unwrap(), vec![0; SLOT_BYTES]);
        }
    }
}
