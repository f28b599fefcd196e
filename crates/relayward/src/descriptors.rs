//! The process's open files limit. Every SMTP session, delivery and probed target holds a
//! descriptor; a shell's soft limit is often 1,024, and at the limit `accept` and `connect`
//! fail with EMFILE: a server stops greeting, a scan reports hosts it never reached.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft open-files limit to the hard one, as Go's runtime and many servers do at
/// start. Returns the new limit when it was raised; a failure leaves the limit as it was. An
/// unlimited hard limit is left alone (Linux caps the soft one at `nr_open` anyway).
pub fn raise_to_hard_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return None;
    };
    if soft >= hard {
        return None;
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    setrlimit(Resource::Nofile, raised).ok()?;
    Some(hard)
}

/// The hard limit, which [`raise_to_hard_limit`] raises the soft one to (`None`: unlimited).
pub fn hard_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).maximum
}

/// The soft limit in force (`None`: unlimited).
pub fn soft_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Descriptors open now (those in `/proc/self/fd`); `None` where that cannot be read.
pub fn open_now() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    u64::try_from(entries.count()).ok()
}
