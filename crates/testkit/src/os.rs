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
