//! Small filesystem helpers shared by the spool and Maildir code: durable writes, directory
//! fsync, `flock`, free-space checks and the mapping of "disk full" errors.

use std::ffi::CString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
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

/// Makes the directory entries of `dir` (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes an advisory `flock` (`libc::LOCK_EX`, `LOCK_SH`, optionally `| LOCK_NB`), retrying on
/// EINTR. The lock belongs to the open file description and ends when `file` is closed.
pub(crate) fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only reads the descriptor number, which `file` keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `path` (statvfs f_bavail).
pub(crate) fn available_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut stat = MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory of the
    // right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: rc == 0, so statvfs initialised the structure.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let bytes = u64::from(stat.f_bavail).saturating_mul(stat.f_frsize as u64);
    Ok(bytes)
}

/// True for the errors that mean "no room": the session answers them like a full queue.
pub(crate) fn is_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
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
        for code in [libc::ENOSPC, libc::EDQUOT] {
            let err = io::Error::from_raw_os_error(code);
            assert!(matches!(shared_queue_error(&err), QueueError::Full));
            assert!(matches!(queue_error(err), QueueError::Full));
        }
        for code in [libc::EROFS, libc::EACCES, libc::EIO] {
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
