//! Directory fsyncs shared by concurrent writers (a group commit for directory entries).
//!
//! Every Maildir delivery renames its file into the same `new/` directory and must make that
//! rename durable before it reports success. One `fsync(2)` of a directory covers every entry
//! changed before it started, so writers that arrive while one is running need not each flush
//! again: they wait for the next one, which a single writer runs for all of them. Under load the
//! directory is flushed about once per flush time instead of once per message; alone, a writer
//! pays exactly what it paid before (no thread hand-off, no timer: the caller's own thread
//! flushes).
//!
//! A failed flush fails every writer it was meant to cover, and the ones after it until a flush
//! starts after the failure: after an fsync error Linux may have dropped the dirty state, so a
//! later success proves nothing about the earlier entries.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// The directories being flushed; an entry lives only while a writer uses it, so the map holds
/// at most one entry per writer in flight, however many Maildirs exist.
#[derive(Default)]
pub(crate) struct DirSyncs {
    dirs: Mutex<HashMap<PathBuf, Arc<Group>>>,
}

/// The flushes of one directory: at most one runs; `started` and `finished` number them.
#[derive(Default)]
struct Group {
    state: Mutex<Flushes>,
    finished: Condvar,
}

#[derive(Default)]
struct Flushes {
    /// Number of the last flush that began (0: none yet).
    started: u64,
    /// Number of the last flush that ended.
    finished: u64,
    running: bool,
    /// The last flush that failed, and how.
    last_failure: Option<(u64, io::ErrorKind, String)>,
}

impl DirSyncs {
    /// Returns once a flush of `dir` that began after this call has succeeded. `flush` is how
    /// one flush is done (`sync_dir` in production; tests count and observe it).
    pub(crate) fn sync_with(
        &self,
        dir: &Path,
        flush: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let group = self.join(dir);
        let result = group.covering_flush(dir, flush);
        self.leave(dir, group);
        result
    }

    fn join(&self, dir: &Path) -> Arc<Group> {
        let mut dirs = lock(&self.dirs);
        Arc::clone(dirs.entry(dir.to_path_buf()).or_default())
    }

    /// Forgets the directory's entry when no other writer holds it (every clone is taken under
    /// the map's lock, so the count cannot grow behind our back).
    fn leave(&self, dir: &Path, group: Arc<Group>) {
        let mut dirs = lock(&self.dirs);
        let last = Arc::strong_count(&group) == 2;
        // Dropped under the lock: a writer leaving at the same time then sees the true count.
        drop(group);
        if last {
            dirs.remove(dir);
        }
    }
}

impl Group {
    fn covering_flush(
        &self,
        dir: &Path,
        flush: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut flushes = lock(&self.state);
        // A flush already running may have read the directory before our entry changed it:
        // only the next one to begin is sure to cover it.
        let needed = flushes.started + 1;
        loop {
            if flushes.finished >= needed {
                return flushes.outcome_since(needed);
            }
            if !flushes.running {
                return self.lead(flushes, dir, flush);
            }
            flushes = self
                .finished
                .wait(flushes)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Runs one flush for every writer waiting on this directory, then wakes them.
    fn lead(
        &self,
        mut flushes: MutexGuard<'_, Flushes>,
        dir: &Path,
        flush: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        flushes.running = true;
        flushes.started += 1;
        let number = flushes.started;
        drop(flushes);
        let mut leader = Leader {
            group: self,
            number,
            result: None,
        };
        let result = flush(dir);
        leader.result = Some(match &result {
            Ok(()) => Ok(()),
            Err(err) => Err((err.kind(), err.to_string())),
        });
        drop(leader);
        result
    }
}

/// The running flush's end, recorded when the leader is dropped — also if `flush` panicked
/// (then it counts as failed), so the waiters are woken and the next writer can lead.
struct Leader<'a> {
    group: &'a Group,
    number: u64,
    result: Option<Result<(), (io::ErrorKind, String)>>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut flushes = lock(&self.group.state);
        flushes.running = false;
        flushes.finished = self.number;
        match self.result.take() {
            Some(Ok(())) => {}
            Some(Err((kind, message))) => {
                flushes.last_failure = Some((self.number, kind, message));
            }
            None => {
                flushes.last_failure = Some((
                    self.number,
                    io::ErrorKind::Other,
                    "the flush panicked".to_owned(),
                ));
            }
        }
        drop(flushes);
        self.group.finished.notify_all();
    }
}

impl Flushes {
    /// Success only if no flush from `needed` on failed.
    fn outcome_since(&self, needed: u64) -> io::Result<()> {
        match &self.last_failure {
            Some((number, kind, message)) if *number >= needed => Err(io::Error::new(
                *kind,
                format!("directory flush failed: {message}"),
            )),
            _ => Ok(()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const WRITERS: usize = 16;

    /// Each writer "renames" (appends its number to `entries`) and then syncs; a flush copies
    /// `entries` into `durable`, as fsync makes the directory's entries durable.
    struct Directory {
        entries: Mutex<Vec<usize>>,
        durable: Mutex<Vec<usize>>,
        flushes: AtomicUsize,
    }

    impl Directory {
        fn new() -> Self {
            Self {
                entries: Mutex::new(Vec::new()),
                durable: Mutex::new(Vec::new()),
                flushes: AtomicUsize::new(0),
            }
        }

        fn flush(&self, fail: bool) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            let seen = lock(&self.entries).clone();
            std::thread::sleep(Duration::from_millis(30));
            if fail {
                return Err(io::Error::other("injected EIO"));
            }
            *lock(&self.durable) = seen;
            Ok(())
        }
    }

    /// Runs [`WRITERS`] writers at once; the flush numbered `fail_flush` (1 = first) fails.
    fn concurrent_writers(
        fail_flush: Option<usize>,
    ) -> (Arc<Directory>, Vec<(usize, io::Result<()>)>) {
        let syncs = Arc::new(DirSyncs::default());
        let dir = Arc::new(Directory::new());
        let barrier = Arc::new(Barrier::new(WRITERS));
        let flush_number = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (syncs, dir, barrier) = (syncs.clone(), dir.clone(), barrier.clone());
                let flush_number = flush_number.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    lock(&dir.entries).push(writer);
                    let result = syncs.sync_with(Path::new("/maildir/new"), |_| {
                        let number = flush_number.fetch_add(1, Ordering::SeqCst) + 1;
                        dir.flush(fail_flush == Some(number))
                    });
                    (writer, result)
                })
            })
            .collect();
        let results = threads
            .into_iter()
            .map(|t| t.join().expect("writer thread"))
            .collect();
        assert!(
            lock(&syncs.dirs).is_empty(),
            "entries outlive their writers"
        );
        (dir, results)
    }

    #[test]
    fn concurrent_writers_share_flushes_and_each_is_covered() {
        let (dir, results) = concurrent_writers(None);
        let durable = lock(&dir.durable).clone();
        for (writer, result) in results {
            assert!(result.is_ok(), "writer {writer}: {result:?}");
            assert!(
                durable.contains(&writer),
                "writer {writer} returned before a flush covered it"
            );
        }
        let flushes = dir.flushes.load(Ordering::SeqCst);
        assert!(
            flushes < WRITERS,
            "{flushes} flushes for {WRITERS} writers: nothing shared"
        );
    }

    /// The second flush is the one that covers the writers that waited for the first: they
    /// must hear of its failure, and whoever hears success must be durable.
    #[test]
    fn a_failed_flush_fails_the_writers_it_was_to_cover() {
        let (dir, results) = concurrent_writers(Some(2));
        let durable = lock(&dir.durable).clone();
        let failed = results.iter().filter(|(_, r)| r.is_err()).count();
        assert!(failed >= 1, "the injected failure reached no writer");
        for (writer, result) in &results {
            match result {
                Ok(()) => assert!(
                    durable.contains(writer),
                    "writer {writer} told Ok, not durable"
                ),
                Err(err) => assert!(
                    err.to_string().contains("injected EIO"),
                    "writer {writer}: {err}"
                ),
            }
        }
    }

    /// A flush that panics must not leave the directory "being flushed" for ever: the next
    /// writer leads a flush of its own.
    #[test]
    fn a_panicking_flush_does_not_block_the_next_writer() {
        let syncs = Arc::new(DirSyncs::default());
        let dir = Path::new("/maildir/new");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = syncs.sync_with(dir, |_| panic!("flush panicked"));
        }));
        assert!(panicked.is_err());
        // In a thread of its own, so that a regression fails the test instead of hanging it.
        let (done, finished) = std::sync::mpsc::channel();
        let next = Arc::clone(&syncs);
        std::thread::spawn(move || {
            let _ = done.send(next.sync_with(Path::new("/maildir/new"), |_| Ok(())));
        });
        let result = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the next writer is blocked");
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn a_lone_writer_flushes_once_per_call() {
        let syncs = DirSyncs::default();
        let dir = Directory::new();
        for _ in 0..3 {
            syncs
                .sync_with(Path::new("/maildir/new"), |_| dir.flush(false))
                .expect("flush");
        }
        assert_eq!(dir.flushes.load(Ordering::SeqCst), 3);
    }
}
