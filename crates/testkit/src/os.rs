//! The few facts about the test process the tests ask the system for, without `unsafe`.

/// True when the tests run as root: Postfix and smtp-sink then need a user to switch to, and
/// some tests that need root (a private Postfix instance) run only then.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Sends SIGKILL to `pid` (a process the test started and must not outlive it).
pub fn kill(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// A file or directory with the immutable flag set (`chattr +i`): not even root may remove,
/// rename or change it, which is how a test running as root makes a removal or a rename fail.
/// The flag is cleared again when this is dropped, however the test ends, so the temporary
/// directory can go.
pub struct Immutable(std::path::PathBuf);

impl Immutable {
    pub fn set(path: impl Into<std::path::PathBuf>) -> Immutable {
        let path = path.into();
        if let Err(why) = chattr("+i", &path) {
            panic!("{why}");
        }
        Immutable(path)
    }
}

impl Drop for Immutable {
    /// Says so rather than panics when the flag cannot be cleared: a panic while the test
    /// is already panicking would abort the whole run.
    fn drop(&mut self) {
        if let Err(why) = chattr("-i", &self.0) {
            eprintln!("{why} (remove it by hand: chattr -i, then rm)");
        }
    }
}

fn chattr(flag: &str, path: &std::path::Path) -> Result<(), String> {
    let what = format!("chattr {flag} {}", path.display());
    match std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{what}: {status}")),
        Err(e) => Err(format!("{what}: {e} (chattr is in e2fsprogs)")),
    }
}
