//! Small filesystem helpers shared by the spool and Maildir code: durable writes, directory
//! fsync, file locks, free-space checks and the mapping of "disk full" errors.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::QueueError;

/// Mode of every file the queue and the Maildir writer create: mail is private to the server's
/// user, whatever the umask of the process that writes it (the server, or a `relayward queue`
/// command run from a shell).
pub(crate) const PRIVATE_FILE: u32 = 0o600;
/// Mode of every directory they create.
pub(crate) const PRIVATE_DIR: u32 = 0o700;

/// Creates `path` (which must not exist) with mode [`PRIVATE_FILE`], writes the `parts` one
/// after the other and flushes data and size to disk. On failure the partial file is removed,
/// so callers never leave half-written temp files.
pub(crate) fn write_synced(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let result = write_synced_inner(path, parts);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn write_synced_inner(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE)
        .open(path)?;
    for part in parts {
        file.write_all(part)?;
    }
    // fdatasync covers the data and the file size, which is all a reader of a new file needs.
    file.sync_data()
}

/// Creates `dir` and its missing parents with mode [`PRIVATE_DIR`], and takes group and other
/// permissions away from `dir` itself if it already existed with them (a spool made by an older
/// version, or under a lax umask). Failing to tighten an existing directory we do not own is
/// only logged: the queue still works, and the admin hears why it is readable.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        let private = std::fs::Permissions::from_mode(mode & !0o077);
        if let Err(err) = std::fs::set_permissions(dir, private) {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot make queue directory private");
        }
    }
    Ok(())
}

/// Replaces `path` durably: the contents go to `path.tmp` (mode [`PRIVATE_FILE`], fsynced),
/// which is renamed over `path`, and the directory is fsynced. A crash leaves the old file or
/// the new one, never half of either. For small state files kept beside the queue.
pub fn replace_durably(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_synced(&tmp, &[contents])?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes the directory entries of `dir` (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes the exclusive advisory lock on `file` (`flock(2)` on Linux, which is what
/// `File::lock` uses, so a second process following the same protocol serialises with us),
/// waiting for it and retrying when a signal interrupts the wait. The lock belongs to the
/// open file description and ends when `file` is closed.
pub(crate) fn lock_exclusive(file: &File) -> io::Result<()> {
    retry_interrupted(|| file.lock())
}

/// The shared lock; on a file that holds the exclusive one, `flock(2)` converts it in place,
/// with no moment unlocked in between.
pub(crate) fn lock_shared(file: &File) -> io::Result<()> {
    retry_interrupted(|| file.lock_shared())
}

/// The exclusive lock if nobody holds any lock on the file; `Ok(false)` when someone does.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

fn retry_interrupted(mut lock: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match lock() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `path` (statvfs f_bavail).
pub(crate) fn available_bytes(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The rule for taking mail, for the queue and for local delivery before the reply alike:
/// after `size` more octets the filesystem of `path` keeps at least `min_free_bytes` free.
/// `Ok(false)` names what is free and what is needed.
pub(crate) fn room_for(
    path: &Path,
    min_free_bytes: u64,
    size: u64,
) -> io::Result<Result<(), (u64, u64)>> {
    if min_free_bytes == 0 {
        return Ok(Ok(()));
    }
    let needed = min_free_bytes.saturating_add(size);
    let available = available_bytes(path)?;
    Ok(if available < needed {
        Err((available, needed))
    } else {
        Ok(())
    })
}

/// True for the errors that mean "no room": the session answers them like a full queue.
pub(crate) fn is_full(err: &io::Error) -> bool {
    // ENOSPC and EDQUOT.
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Converts an I/O error: no space or quota → [`QueueError::Full`], anything else (EROFS, EACCES,
/// EIO…) → [`QueueError::Io`]. The session answers `452 4.3.1` to both.
pub(crate) fn queue_error(err: io::Error) -> QueueError {
    if is_full(&err) {
        QueueError::Full
    } else {
        QueueError::Io(err)
    }
}

/// Like [`queue_error`] for an error that must be reported to several waiters (io::Error is not
/// Clone): keeps the kind, the OS code when there is one, and the text.
pub(crate) fn shared_queue_error(err: &io::Error) -> QueueError {
    if is_full(err) {
        return QueueError::Full;
    }
    match err.raw_os_error() {
        Some(code) => QueueError::Io(io::Error::from_raw_os_error(code)),
        None => QueueError::Io(io::Error::new(err.kind(), err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_errors_map_to_full() {
        use rustix::io::Errno;
        for code in [Errno::NOSPC, Errno::DQUOT].map(Errno::raw_os_error) {
            let err = io::Error::from_raw_os_error(code);
            assert!(matches!(shared_queue_error(&err), QueueError::Full));
            assert!(matches!(queue_error(err), QueueError::Full));
        }
        for code in [Errno::ROFS, Errno::ACCESS, Errno::IO].map(Errno::raw_os_error) {
            let err = io::Error::from_raw_os_error(code);
            assert!(matches!(queue_error(err), QueueError::Io(_)));
        }
    }

    #[test]
    fn available_bytes_of_a_real_directory() {
        let dir = std::env::temp_dir();
        assert!(available_bytes(&dir).is_ok());
        assert!(available_bytes(Path::new("/nonexistent/relayward")).is_err());
    }
}
