//! Local delivery into Maildir (`mail_root/<domain>/<local>/{tmp,new,cur}`).
//!
//! The message is written to `tmp/` under a name no other delivery can choose, fsynced, renamed
//! into `new/` and `new/` is fsynced (one flush shared by the deliveries that arrive together):
//! a reader never sees a partial message, and once this returns the message survives a crash.
//! The call is blocking; async callers wrap it in `spawn_blocking`.
//!
//! A crash between the write into `tmp/` and the rename leaves the copy in `tmp/` for good:
//! its message was not acknowledged from there (the queue, or the client that never heard
//! `250`, still has it), so it is garbage, and [`sweep_abandoned`] removes it once it is older
//! than the Maildir convention's 36 hours.
//!
//! Domain and local part come from an address, so they are checked as hostile input even though
//! the policy only lets existing mailboxes through: nothing that could leave `mail_root` (`/`,
//! `\`, `..`, a leading `.`, NUL or other control characters) is accepted.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::dir_sync::DirSyncs;
use crate::fsutil::{PRIVATE_DIR, sync_dir, write_synced};

/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL: usize = 64;
/// Longest domain (RFC 5321 §4.5.3.1.2).
const MAX_DOMAIN: usize = 255;

/// Counts deliveries of this process, one part of the unique file name.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// Delivers `content` to the Maildir of `local_part@domain` under `mail_root`; returns the path
/// of the new file in `new/`. The domain is lower-cased; the local part is used as given (the
/// caller passes the canonical mailbox name). Unsafe names fail with `InvalidInput`.
pub fn deliver_to_maildir(
    mail_root: &Path,
    domain: &str,
    local_part: &str,
    content: &[u8],
) -> io::Result<PathBuf> {
    let staged = stage_copy(mail_root, domain, local_part, content)?;
    place(mail_root, &staged)?;
    NEW_DIR_SYNCS.sync_with(&staged.new_dir, sync_dir)?;
    Ok(staged.new)
}

/// Delivers `content` to several Maildirs at once so that either every copy is written or
/// none is, for a caller that answers once for all of them (the session's `250`) and would
/// otherwise queue a message some of whose copies were delivered already — a second copy for
/// those recipients when the sender tries again. Each copy (`(domain, local part)`) is first
/// written and flushed into its Maildir's `tmp/`; only when all are there are they renamed into
/// `new/` and each `new/` is flushed (shared with concurrent deliveries, as
/// [`deliver_to_maildir`]).
///
/// `Err` when a copy could not be written: nothing was delivered and no file is left behind.
/// Otherwise one result per copy, in order: a rename or a directory flush that failed after
/// the copies were written leaves that copy undelivered (the caller queues it; after a failed
/// flush the copy may be visible, so its recipient may get it twice, never not at all).
pub fn deliver_all_or_none(
    mail_root: &Path,
    copies: &[(&str, &str)],
    content: &[u8],
) -> io::Result<Vec<io::Result<()>>> {
    let mut staged: Vec<Staged> = Vec::with_capacity(copies.len());
    for (domain, local_part) in copies {
        match stage_copy(mail_root, domain, local_part, content) {
            Ok(copy) => staged.push(copy),
            Err(err) => {
                for copy in &staged {
                    let _ = fs::remove_file(&copy.tmp);
                }
                return Err(err);
            }
        }
    }
    let mut results: Vec<io::Result<()>> =
        staged.iter().map(|copy| place(mail_root, copy)).collect();
    let mut flushed: Vec<(&Path, io::Result<()>)> = Vec::new();
    for (copy, result) in staged.iter().zip(results.iter_mut()) {
        if result.is_err() {
            continue;
        }
        let outcome = match flushed.iter().find(|(dir, _)| *dir == copy.new_dir) {
            Some((_, outcome)) => clone_result(outcome),
            None => {
                let outcome = NEW_DIR_SYNCS.sync_with(&copy.new_dir, sync_dir);
                flushed.push((&copy.new_dir, clone_result(&outcome)));
                outcome
            }
        };
        *result = outcome;
    }
    Ok(results)
}

/// One copy written and flushed in its Maildir's `tmp/`, not yet in `new/`.
struct Staged {
    tmp: PathBuf,
    new: PathBuf,
    new_dir: PathBuf,
}

/// Writes one copy durably into `tmp/` of its Maildir (made when missing: the first delivery
/// to a mailbox, or someone removed a part of it). Unsafe names fail with `InvalidInput`.
fn stage_copy(
    mail_root: &Path,
    domain: &str,
    local_part: &str,
    content: &[u8],
) -> io::Result<Staged> {
    let domain = domain.to_ascii_lowercase();
    check_component("domain", &domain, MAX_DOMAIN)?;
    check_component("local part", local_part, MAX_LOCAL)?;
    let maildir = mail_root.join(&domain).join(local_part);
    let name = unique_name();
    let tmp = maildir.join("tmp").join(&name);
    match write_synced(&tmp, &[content]) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            ensure_maildir(mail_root, &maildir)?;
            write_synced(&tmp, &[content])?;
        }
        written => written?,
    }
    let new_dir = maildir.join("new");
    Ok(Staged {
        tmp,
        new: new_dir.join(&name),
        new_dir,
    })
}

/// Renames a staged copy into `new/` (not yet durable: `new/`'s flush follows), rebuilding a
/// `new/` someone removed in the meantime; the staged file is removed if that fails.
fn place(mail_root: &Path, copy: &Staged) -> io::Result<()> {
    let mut result = fs::rename(&copy.tmp, &copy.new);
    if let Err(err) = &result
        && err.kind() == io::ErrorKind::NotFound
        && let Some(maildir) = copy.new_dir.parent()
        && ensure_maildir(mail_root, maildir).is_ok()
    {
        result = fs::rename(&copy.tmp, &copy.new);
    }
    if result.is_err() {
        let _ = fs::remove_file(&copy.tmp);
    }
    result
}

/// An outcome shared by several copies (one directory flush covers them all).
fn clone_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
    }
}

/// Whether the filesystem holding `mail_root` keeps `min_free_bytes` free after `size` more
/// octets (the queue's rule for accepting mail); `false` when it cannot be told. `0`: always.
/// Before the first delivery `mail_root` may not exist yet: its nearest existing ancestor
/// is on the filesystem it will be made on.
pub fn has_room(mail_root: &Path, min_free_bytes: u64, size: u64) -> bool {
    if min_free_bytes == 0 {
        return true;
    }
    let existing = mail_root
        .ancestors()
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
        })
        .find(|dir| dir.exists());
    existing.is_some_and(|dir| {
        crate::fsutil::room_for(dir, min_free_bytes, size).is_ok_and(|room| room.is_ok())
    })
}

/// How long a file may sit in a Maildir's `tmp/` before it counts as abandoned: the 36 hours
/// of the Maildir convention (maildir(5)). A delivery renames its copy within seconds; a
/// mail reader or another deliverer sharing the Maildir follows the same rule.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(36 * 60 * 60);

/// What one [`sweep_abandoned`] did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Abandoned files removed.
    pub removed: usize,
    /// Files or directories that could not be read or removed; the first error says why.
    pub failed: usize,
    pub first_error: Option<io::Error>,
}

impl Swept {
    fn fail(&mut self, err: io::Error) {
        self.failed += 1;
        self.first_error.get_or_insert(err);
    }
}

/// Removes every regular file in `mail_root/<domain>/<local>/tmp/` last modified before
/// `cutoff` (now minus [`ABANDONED_AFTER`], for the caller that runs it periodically).
/// Symbolic links are neither followed nor removed, and nothing outside `tmp/` is touched:
/// the walk never leaves `mail_root`. A `mail_root` that does not exist yet has nothing to
/// sweep. Blocking; it reads every mailbox's `tmp/` once.
pub fn sweep_abandoned(mail_root: &Path, cutoff: SystemTime) -> Swept {
    let mut swept = Swept::default();
    for domain in subdirectories(mail_root, &mut swept) {
        for maildir in subdirectories(&domain, &mut swept) {
            sweep_tmp(&maildir.join("tmp"), cutoff, &mut swept);
        }
    }
    swept
}

/// The real directories (not links to one) directly inside `dir`; none when `dir` is missing.
fn subdirectories(dir: &Path, swept: &mut Swept) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(err) => {
            swept.fail(err);
            return Vec::new();
        }
    };
    let mut dirs = Vec::new();
    for entry in entries {
        match entry.and_then(|e| Ok((e.file_type()?, e.path()))) {
            Ok((kind, path)) if kind.is_dir() => dirs.push(path),
            Ok(_) => {}
            Err(err) => swept.fail(err),
        }
    }
    dirs
}

/// Removes the regular files in one `tmp/` modified before `cutoff`.
/// A `tmp/` that is missing, or not a real directory (a link), is left alone.
fn sweep_tmp(tmp: &Path, cutoff: SystemTime, swept: &mut Swept) {
    match fs::symlink_metadata(tmp) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return,
        Err(err) => return swept.fail(err),
    }
    let entries = match fs::read_dir(tmp) {
        Ok(entries) => entries,
        Err(err) => return swept.fail(err),
    };
    for entry in entries {
        let abandoned = entry.and_then(|e| {
            let meta = e.metadata()?; // does not follow a link
            Ok((meta.is_file() && meta.modified()? < cutoff).then(|| e.path()))
        });
        match abandoned {
            Ok(Some(path)) => match fs::remove_file(&path) {
                Ok(()) => swept.removed += 1,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => swept.fail(err),
            },
            Ok(None) => {}
            Err(err) => swept.fail(err),
        }
    }
}

/// Every delivery's rename into a `new/` waits for a flush of that directory; deliveries that
/// arrive together share one (see [`crate::dir_sync`]).
static NEW_DIR_SYNCS: LazyLock<DirSyncs> = LazyLock::new(DirSyncs::default);

/// Refuses anything that is not a single, ordinary path component.
fn check_component(what: &str, name: &str, max_len: usize) -> io::Result<()> {
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsafe {what} {name:?} for a Maildir path: {why}"),
        ))
    };
    if name.is_empty() {
        return refuse("empty");
    }
    if name.len() > max_len {
        return refuse("too long");
    }
    if name.starts_with('.') {
        return refuse("starts with a dot");
    }
    if name.contains("..") {
        return refuse("contains \"..\"");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return refuse("contains a slash, backslash or control character");
    }
    Ok(())
}

/// Creates `maildir` and its three subdirectories when missing, fsyncing each parent whose
/// entries changed, so a delivery is never acknowledged into a directory a crash can lose.
fn ensure_maildir(mail_root: &Path, maildir: &Path) -> io::Result<()> {
    if !mail_root.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(mail_root)?;
        // The first delivery ever also makes `mail_root` itself: its name must survive too.
        if let Some(parent) = mail_root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let domain_dir = maildir.parent().unwrap_or(mail_root);
    create_synced(mail_root, domain_dir)?;
    create_synced(domain_dir, maildir)?;
    for sub in ["tmp", "new", "cur"] {
        create_synced(maildir, &maildir.join(sub))?;
    }
    Ok(())
}

/// Creates `dir` (mode 0700, mail is private) inside `parent` if missing, then fsyncs `parent`.
fn create_synced(parent: &Path, dir: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(PRIVATE_DIR).create(dir) {
        Ok(()) => sync_dir(parent),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(err) => Err(err),
    }
}

/// `secs.M<micros>P<pid>Q<count>R<random>.<host>`: unique across processes (pid), within a
/// process (counter) and across reboots and hosts sharing storage (time, random, host name).
fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let count = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{}P{}Q{}R{:016x}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        count,
        rand::random::<u64>(),
        host_name()
    )
}

/// The host name with `/` and `:` encoded as the Maildir convention asks; `localhost` if unknown.
fn host_name() -> String {
    let raw = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let safe: String = raw
        .chars()
        .map(|c| match c {
            '/' => "\\057".to_owned(),
            ':' => "\\072".to_owned(),
            c if c.is_control() => String::new(),
            c => c.to_string(),
        })
        .collect();
    if safe.is_empty() {
        "localhost".to_owned()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> usize {
        fs::read_dir(dir).map_or(0, |rd| rd.count())
    }

    #[test]
    fn all_copies_land_together() {
        let root = tempfile::tempdir().expect("tempdir");
        let copies = [("Example.Test", "alice"), ("example.test", "bob")];
        let results = deliver_all_or_none(root.path(), &copies, b"hello\r\n").expect("staged");
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        for local in ["alice", "bob"] {
            let maildir = root.path().join("example.test").join(local);
            assert_eq!(files_in(&maildir.join("new")), 1, "{local}");
            assert_eq!(files_in(&maildir.join("tmp")), 0, "{local}");
        }
    }

    #[test]
    fn one_copy_that_cannot_be_written_leaves_no_other_behind() {
        let root = tempfile::tempdir().expect("tempdir");
        let domain = root.path().join("example.test");
        fs::create_dir_all(&domain).expect("domain");
        fs::write(domain.join("bob"), b"in the way").expect("block bob");
        let copies = [("example.test", "alice"), ("example.test", "bob")];
        assert!(deliver_all_or_none(root.path(), &copies, b"hello\r\n").is_err());
        let alice = domain.join("alice");
        assert_eq!(files_in(&alice.join("new")), 0);
        assert_eq!(files_in(&alice.join("tmp")), 0);
        let unsafe_name = [("example.test", "alice"), ("example.test", "../x")];
        let refused = deliver_all_or_none(root.path(), &unsafe_name, b"x").expect_err("unsafe");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(files_in(&alice.join("new")), 0);
        assert_eq!(files_in(&alice.join("tmp")), 0);
    }

    #[test]
    fn room_is_told_for_a_mail_root_not_made_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_yet = dir.path().join("data").join("mail");
        assert!(has_room(&not_yet, 1, 1000));
        assert!(!has_room(&not_yet, u64::MAX / 2, 1000));
        assert!(has_room(Path::new("/nonexistent/relayward"), 0, 1000));
        // A relative root not made yet: the working directory's filesystem.
        assert!(has_room(Path::new("not-made-yet/mail"), 1, 1000));
    }

    /// A file in `tmp/` whose modification time is `age` ago.
    fn aged(path: &Path, age: Duration) {
        fs::write(path, b"half a message").expect("write");
        let file = fs::File::options().write(true).open(path).expect("open");
        file.set_modified(SystemTime::now() - age)
            .expect("set mtime");
    }

    #[test]
    fn abandoned_tmp_files_are_swept_and_nothing_else() {
        let root = tempfile::tempdir().expect("tempdir");
        deliver_to_maildir(root.path(), "example.test", "alice", b"kept\r\n").expect("deliver");
        let alice = root.path().join("example.test").join("alice");
        let old = Duration::from_secs(40 * 3600);
        aged(&alice.join("tmp").join("crashed"), old);
        aged(
            &alice.join("tmp").join("being-written"),
            Duration::from_secs(60),
        );
        aged(&alice.join("cur").join("read-long-ago"), old);
        // A link in tmp/ to a file elsewhere: the link is not followed, its target stays.
        let outside = tempfile::tempdir().expect("outside");
        aged(&outside.path().join("target"), old);
        std::os::unix::fs::symlink(
            outside.path().join("target"),
            alice.join("tmp").join("link"),
        )
        .expect("symlink");
        // A linked mailbox is not walked into.
        let elsewhere = outside.path().join("box");
        fs::create_dir_all(elsewhere.join("tmp")).expect("box");
        aged(&elsewhere.join("tmp").join("foreign"), old);
        std::os::unix::fs::symlink(&elsewhere, root.path().join("example.test").join("linked"))
            .expect("symlink");

        let swept = sweep_abandoned(root.path(), SystemTime::now() - ABANDONED_AFTER);
        assert_eq!((swept.removed, swept.failed), (1, 0), "{swept:?}");
        assert!(!alice.join("tmp").join("crashed").exists());
        for kept in [
            alice.join("tmp").join("being-written"),
            alice.join("cur").join("read-long-ago"),
            outside.path().join("target"),
            elsewhere.join("tmp").join("foreign"),
        ] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        assert!(fs::symlink_metadata(alice.join("tmp").join("link")).is_ok());
        assert_eq!(files_in(&alice.join("new")), 1);
    }

    #[test]
    fn a_file_that_cannot_be_removed_is_counted_and_the_rest_still_swept() {
        let root = tempfile::tempdir().expect("tempdir");
        let old = Duration::from_secs(40 * 3600);
        let tmp = |local: &str| root.path().join("example.test").join(local).join("tmp");
        for local in ["alice", "bob"] {
            fs::create_dir_all(tmp(local)).expect("tmp/");
        }
        aged(&tmp("alice").join("stuck"), old);
        aged(&tmp("alice").join("crashed"), old);
        aged(&tmp("bob").join("crashed"), old);
        let _stuck = relayward_testkit::os::Immutable::set(tmp("alice").join("stuck"));

        let swept = sweep_abandoned(root.path(), SystemTime::now() - ABANDONED_AFTER);
        assert_eq!((swept.removed, swept.failed), (2, 1), "{swept:?}");
        let why = swept.first_error.expect("the failure's error");
        assert_eq!(why.kind(), io::ErrorKind::PermissionDenied, "{why}");
        assert!(tmp("alice").join("stuck").exists());
        assert!(!tmp("alice").join("crashed").exists());
        assert!(!tmp("bob").join("crashed").exists());
    }

    #[test]
    fn a_mail_root_not_made_yet_has_nothing_to_sweep() {
        let root = tempfile::tempdir().expect("tempdir");
        let swept = sweep_abandoned(&root.path().join("mail"), SystemTime::now());
        assert_eq!((swept.removed, swept.failed), (0, 0), "{swept:?}");
    }

    #[test]
    fn unique_names_differ_and_are_single_components() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        assert!(!a.contains('/') && !a.contains(':'), "{a}");
    }

    #[test]
    fn components_are_checked() {
        assert!(check_component("x", "alice", 64).is_ok());
        assert!(check_component("x", "first.last+tag", 64).is_ok());
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", "a\0b", ".hidden", "a..b", "a\nb",
        ] {
            assert!(check_component("x", bad, 64).is_err(), "accepted {bad:?}");
        }
        assert!(check_component("x", &"a".repeat(65), 64).is_err());
    }
}
