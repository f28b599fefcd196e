//! The report book: per policy domain and per period, the sessions that met the domain's TLS
//! policy and the ones that failed (by result type, sending and receiving address and MX
//! host), kept in `data_dir/tls-report/`.
//!
//! Durability: the counts live in memory and are written to `current.json` (temporary file,
//! fsync, rename, directory fsync) by [`ReportBook::save`], which the reporter calls every
//! [`crate::tlsrpt::SAVE_EVERY`] while something changed and when the server stops. A restart
//! keeps the period's counts; a crash loses at most the sessions of the last few seconds. A
//! period being reported is first written to `sending.json` and removed once every report of it
//! went out, so a crash in between sends it again at the next start (same report ids).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dane::TlsaRecord;
use crate::mta_sts::StsPolicy;
use crate::tls_policy::{TlsOutcome, TlsResult};

/// Most (domain, policy) entries kept per period; sessions of further ones are not counted.
const MAX_POLICIES: usize = 10_000;
/// Most distinct failure details per policy; further failures count in the summary only.
const MAX_FAILURE_DETAILS: usize = 100;
/// Most the policies of one period may weigh together ([`ReportPolicy::weight`]): a domain's
/// zone decides how big its MTA-STS policy is (up to 64 KiB), and 10,000 of the biggest would
/// be more than a gigabyte held, and written to `current.json` at every save. Sessions of
/// policies beyond are not counted, as beyond [`MAX_POLICIES`].
const MAX_POLICIES_WEIGHT: usize = 16 * 1024 * 1024;

const CURRENT: &str = "current.json";
const SENDING: &str = "sending.json";

/// RFC 8460 §4.4 `policy-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyType {
    #[serde(rename = "sts")]
    Sts,
    #[serde(rename = "tlsa")]
    Tlsa,
    #[serde(rename = "no-policy-found")]
    NoPolicyFound,
}

/// The policy a session was held to, as a report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportPolicy {
    pub policy_type: PolicyType,
    /// The recipient domain (the policy domain), lower-case.
    pub domain: String,
    /// `policy-string`: the MTA-STS policy's lines, or the host's TLSA records.
    pub strings: Vec<String>,
    /// `mx-host`: the MX patterns of an MTA-STS policy.
    pub mx_host: Vec<String>,
}

impl ReportPolicy {
    /// About what the policy holds in memory.
    fn weight(&self) -> usize {
        const OVERHEAD: usize = 128;
        let strings = |list: &[String]| list.iter().map(|s| s.len() + 24).sum::<usize>();
        OVERHEAD + self.domain.len() + strings(&self.strings) + strings(&self.mx_host)
    }

    /// An MTA-STS policy, written back in its canonical form (one `key: value` per line).
    pub fn sts(domain: &str, policy: &StsPolicy) -> Self {
        let mut strings = vec![
            "version: STSv1".to_string(),
            format!("mode: {}", policy.mode.as_str()),
        ];
        strings.extend(policy.mx.iter().map(|mx| format!("mx: {mx}")));
        strings.push(format!("max_age: {}", policy.max_age));
        Self {
            policy_type: PolicyType::Sts,
            domain: normalise(domain),
            strings,
            mx_host: policy.mx.clone(),
        }
    }

    /// DANE: the TLSA records of `host` (presentation format; empty when they could not be
    /// had or none was usable).
    pub fn tlsa(domain: &str, host: &str, port: u16, records: &[TlsaRecord]) -> Self {
        let owner = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
        let strings = records
            .iter()
            .map(|r| {
                let data: String = r.data.iter().map(|b| format!("{b:02X}")).collect();
                format!(
                    "{owner} IN TLSA {} {} {} {data}",
                    r.usage, r.selector, r.matching
                )
            })
            .collect();
        Self {
            policy_type: PolicyType::Tlsa,
            domain: normalise(domain),
            strings,
            mx_host: Vec::new(),
        }
    }

    /// A domain whose policy could not be had (its MTA-STS policy fetch failed, none cached).
    pub fn none_found(domain: &str) -> Self {
        Self {
            policy_type: PolicyType::NoPolicyFound,
            domain: normalise(domain),
            strings: Vec::new(),
            mx_host: Vec::new(),
        }
    }
}

fn normalise(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// One failed session's details (RFC 8460 §4.4 `failure-details`, without the count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureKey {
    pub result_type: String,
    pub sending_ip: Option<IpAddr>,
    pub receiving_ip: Option<IpAddr>,
    pub receiving_mx_hostname: String,
    /// What went wrong, in words (`failure-reason-code`).
    pub reason: Option<String>,
}

impl FailureKey {
    /// The details of a failed outcome; `None` for one that met the policy.
    pub fn of(outcome: &TlsOutcome) -> Option<Self> {
        (outcome.result == TlsResult::Failed).then(|| Self {
            result_type: outcome
                .result_type
                .unwrap_or("validation-failure")
                .to_string(),
            sending_ip: outcome.sending_ip,
            receiving_ip: outcome.receiving_ip,
            receiving_mx_hostname: outcome.host.to_ascii_lowercase(),
            reason: outcome.detail.clone(),
        })
    }
}

/// A failure detail and how often it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCount {
    #[serde(flatten)]
    pub key: FailureKey,
    pub count: u64,
}

/// The counts for one policy of one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub policy: ReportPolicy,
    pub successes: u64,
    pub failures: u64,
    pub details: Vec<FailureCount>,
}

/// One period's counts: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub start: u64,
    pub end: u64,
    pub tallies: Vec<Tally>,
}

impl Period {
    /// The period of `interval` that contains `now` (aligned to the epoch: `1d` is a UTC day).
    pub fn containing(now: u64, interval: Duration) -> Period {
        let length = interval.as_secs().max(1);
        let start = now - now % length;
        Period {
            start,
            end: start + length,
            tallies: Vec::new(),
        }
    }

    /// The policy domains in this period, each once, sorted.
    pub fn domains(&self) -> Vec<String> {
        let mut domains: Vec<String> = self
            .tallies
            .iter()
            .map(|t| t.policy.domain.clone())
            .collect();
        domains.sort();
        domains.dedup();
        domains
    }

    fn count(&mut self, policy: ReportPolicy, failure: Option<FailureKey>) {
        let index = match self.tallies.iter().position(|t| t.policy == policy) {
            Some(index) => index,
            None if self.tallies.len() < MAX_POLICIES
                && self
                    .tallies
                    .iter()
                    .map(|t| t.policy.weight())
                    .sum::<usize>()
                    .saturating_add(policy.weight())
                    <= MAX_POLICIES_WEIGHT =>
            {
                self.tallies.push(Tally {
                    policy,
                    successes: 0,
                    failures: 0,
                    details: Vec::new(),
                });
                self.tallies.len() - 1
            }
            None => return,
        };
        let tally = &mut self.tallies[index];
        let Some(key) = failure else {
            tally.successes += 1;
            return;
        };
        tally.failures += 1;
        if let Some(known) = tally.details.iter_mut().find(|d| d.key == key) {
            known.count += 1;
        } else if tally.details.len() < MAX_FAILURE_DETAILS {
            tally.details.push(FailureCount { key, count: 1 });
        }
    }
}

struct State {
    current: Period,
    /// A period closed and being reported (also on disk as `sending.json`).
    sending: Option<Period>,
    dirty: bool,
}

/// See the module documentation.
pub struct ReportBook {
    dir: PathBuf,
    state: Mutex<State>,
    /// Held from a snapshot of the state until its file is written (`save` from the
    /// schedule, `close` from `send-now`): writes land in the order their snapshots were
    /// taken, so an older snapshot never replaces a newer file, and the two never share the
    /// temporary file `replace_durably` writes through.
    files: Mutex<()>,
    /// Held while a period is reported: the schedule and `send-now` take turns.
    pub(crate) turn: tokio::sync::Mutex<()>,
}

impl ReportBook {
    /// Opens (creating) `dir` and reads what a previous run left there. An unreadable file is
    /// moved aside (`*.corrupt`) with a warning: reports are worth less than a server that
    /// starts.
    pub fn open(dir: &Path, interval: Duration, now: u64) -> std::io::Result<ReportBook> {
        std::fs::create_dir_all(dir)?;
        let mut current =
            load(&dir.join(CURRENT)).unwrap_or_else(|| Period::containing(now, interval));
        let sending = load(&dir.join(SENDING));
        if let Some(ended) = &sending
            && current.start < ended.end
        {
            // A crash between the two writes of `close`: `current.json` still holds the period
            // `sending.json` reports; counting on in it would report those sessions twice.
            current = Period::containing(now.max(ended.end), interval);
            current.start = current.start.max(ended.end);
        }
        Ok(ReportBook {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                current,
                sending,
                dirty: false,
            }),
            files: Mutex::new(()),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// The directory the book keeps its files in (`data_dir/tls-report`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counts one session of the current period.
    pub fn record(&self, policy: ReportPolicy, failure: Option<FailureKey>) {
        let mut state = self.lock();
        state.current.count(policy, failure);
        state.dirty = true;
    }

    /// The current period (a copy), for tests and `send-now`'s answer.
    pub fn current(&self) -> Period {
        self.lock().current.clone()
    }

    /// Whether the current period has ended at `now`.
    pub fn is_due(&self, now: u64) -> bool {
        now >= self.lock().current.end
    }

    /// Writes the current period if it changed since the last save.
    pub fn save(&self) -> std::io::Result<()> {
        let _files = self.lock_files();
        let text = {
            let mut state = self.lock();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            serde_json::to_vec(&state.current).map_err(std::io::Error::other)?
        };
        let written = relayward_queue::replace_durably(&self.dir.join(CURRENT), &text);
        if written.is_err() {
            self.lock().dirty = true;
        }
        written
    }

    /// Ends the current period at `now` (or at its end, if that is earlier) and starts the
    /// next one, up to the next boundary of `interval`. The ended period is written to
    /// `sending.json` before the new one replaces it in `current.json`, and returned to be
    /// reported; a period left over from a crash is returned first.
    pub fn close(&self, now: u64, interval: Duration) -> std::io::Result<Period> {
        let _files = self.lock_files();
        let (ended, next) = {
            let mut state = self.lock();
            if let Some(pending) = &state.sending {
                return Ok(pending.clone());
            }
            let mut ended = state.current.clone();
            ended.end = ended.end.min(now).max(ended.start);
            let mut next = Period::containing(now, interval);
            if now < state.current.end {
                // Ended early (send-now): the next period starts where this one stopped.
                next.start = ended.end;
            }
            // Written before the state changes, under its lock (once per period): if it
            // fails, nothing changed, in memory or on disk, and the counts go on.
            let text = serde_json::to_vec(&ended).map_err(std::io::Error::other)?;
            relayward_queue::replace_durably(&self.dir.join(SENDING), &text)?;
            state.sending = Some(ended.clone());
            state.current = next.clone();
            state.dirty = false;
            (ended, next)
        };
        let text = serde_json::to_vec(&next).map_err(std::io::Error::other)?;
        if let Err(e) = relayward_queue::replace_durably(&self.dir.join(CURRENT), &text) {
            self.lock().dirty = true;
            return Err(e);
        }
        Ok(ended)
    }

    /// The period returned by [`ReportBook::close`] has been reported: forget it.
    pub fn sent(&self) -> std::io::Result<()> {
        self.lock().sending = None;
        match std::fs::remove_file(self.dir.join(SENDING)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether a closed period waits to be reported (left by a crash, or being sent now).
    pub fn has_pending(&self) -> bool {
        self.lock().sending.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, ()> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A period file, or `None` when there is none; a file that does not parse is moved aside.
fn load(path: &Path) -> Option<Period> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "TLS report counts not readable; starting afresh");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(period) => Some(period),
        Err(e) => {
            let aside = path.with_extension("corrupt");
            let _ = std::fs::rename(path, &aside);
            tracing::warn!(file = %path.display(), moved_to = %aside.display(), error = %e, "TLS report counts unreadable; moved aside, starting afresh");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn failure(host: &str) -> FailureKey {
        FailureKey {
            result_type: "certificate-expired".into(),
            sending_ip: Some("192.0.2.1".parse().expect("ip")),
            receiving_ip: Some("192.0.2.25".parse().expect("ip")),
            receiving_mx_hostname: host.into(),
            reason: None,
        }
    }

    #[test]
    fn counts_survive_a_restart_and_periods_are_utc_days() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_764_600_000; // 2025-12-01T14:40:00Z
        let book = ReportBook::open(dir.path(), DAY, now).expect("open");
        let policy = ReportPolicy::none_found("Example.TEST.");
        book.record(policy.clone(), None);
        book.record(policy.clone(), Some(failure("mx1")));
        book.record(policy.clone(), Some(failure("mx1")));
        book.record(policy.clone(), Some(failure("mx2")));
        book.save().expect("save");
        drop(book);

        let book = ReportBook::open(dir.path(), DAY, now + 60).expect("reopen");
        let period = book.current();
        assert_eq!(period.start % 86_400, 0);
        assert_eq!(period.end - period.start, 86_400);
        assert_eq!(period.tallies.len(), 1);
        let tally = &period.tallies[0];
        assert_eq!(tally.policy.domain, "example.test");
        assert_eq!((tally.successes, tally.failures), (1, 3));
        let counts: Vec<u64> = tally.details.iter().map(|d| d.count).collect();
        assert_eq!(counts, [2, 1]);
        assert!(!book.is_due(now + 60));
        assert!(book.is_due(period.end));
    }

    #[test]
    fn a_closed_period_is_kept_until_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_764_600_000;
        let book = ReportBook::open(dir.path(), DAY, now).expect("open");
        book.record(ReportPolicy::none_found("a.test"), None);
        let ended = book.close(now + 10, DAY).expect("close");
        assert_eq!(ended.end, now + 10, "send-now ends the period early");
        assert_eq!(book.current().start, now + 10);
        assert!(book.current().tallies.is_empty());
        // A crash before the reports went out: the next start reports it again.
        drop(book);
        let book = ReportBook::open(dir.path(), DAY, now + 20).expect("reopen");
        assert!(book.has_pending());
        assert_eq!(book.close(now + 30, DAY).expect("close"), ended);
        book.sent().expect("sent");
        drop(book);
        let book = ReportBook::open(dir.path(), DAY, now + 40).expect("reopen");
        assert!(!book.has_pending());
    }

    /// A crash after `sending.json` was written but before `current.json` was: the next start
    /// reports the ended period once, and does not count on in (and report again) its copy
    /// still in `current.json`.
    #[test]
    fn a_crash_between_the_two_files_of_a_close_reports_the_period_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_764_600_000;
        let book = ReportBook::open(dir.path(), DAY, now).expect("open");
        book.record(ReportPolicy::none_found("a.test"), None);
        book.save().expect("save");
        let before_close = std::fs::read(dir.path().join(CURRENT)).expect("current.json");
        let ended = book.close(now + 10, DAY).expect("close");
        drop(book);
        // Undo the second write, as a crash right before it would have left the files.
        std::fs::write(dir.path().join(CURRENT), &before_close).expect("write");

        let book = ReportBook::open(dir.path(), DAY, now + 20).expect("reopen");
        assert!(book.has_pending());
        let current = book.current();
        assert!(
            current.tallies.is_empty(),
            "the reported sessions count again: {current:?}"
        );
        assert!(current.start >= ended.end, "{current:?} overlaps {ended:?}");
        assert_eq!(book.close(now + 30, DAY).expect("close"), ended);
        book.sent().expect("sent");
        let next = book.close(now + 40, DAY).expect("close");
        assert!(next.tallies.is_empty(), "reported twice: {next:?}");
    }

    /// The schedule's `save` and `send-now`'s `close` at the same time: neither fails on the
    /// other's temporary file, and what is on disk at the end is what is in memory.
    #[test]
    fn saves_and_closes_at_once_neither_fail_nor_leave_an_older_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_764_600_000;
        let book = std::sync::Arc::new(ReportBook::open(dir.path(), DAY, now).expect("open"));
        let saver = {
            let book = std::sync::Arc::clone(&book);
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for n in 0..150 {
                    book.record(ReportPolicy::none_found(&format!("d{n}.test")), None);
                    if let Err(e) = book.save() {
                        failures.push(format!("save: {e}"));
                    }
                }
                failures
            })
        };
        let mut failures = Vec::new();
        for n in 0..30 {
            match book.close(now + 1 + n, DAY) {
                Ok(_) => book.sent().expect("sent"),
                Err(e) => failures.push(format!("close: {e}")),
            }
        }
        failures.extend(saver.join().expect("saver"));
        assert_eq!(failures, Vec::<String>::new());
        book.save().expect("save");
        let on_disk = load(&dir.path().join(CURRENT)).expect("current.json");
        assert_eq!(on_disk, book.current());
    }

    /// `sending.json` cannot be written: the close fails and changes nothing — the period
    /// is still the current one, counted on and saved, not a pending one only memory knows.
    #[test]
    fn a_close_that_cannot_write_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_764_600_000;
        let book = ReportBook::open(dir.path(), DAY, now).expect("open");
        book.record(ReportPolicy::none_found("a.test"), None);
        let before = book.current();
        let blocker = dir.path().join(SENDING);
        std::fs::create_dir_all(blocker.join("keep")).expect("mkdir");
        assert!(book.close(now + 10, DAY).is_err());
        assert!(!book.has_pending(), "a pending period only memory knows");
        assert_eq!(book.current(), before);
        book.save().expect("save");
        assert_eq!(load(&dir.path().join(CURRENT)), Some(before));
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CURRENT), b"{not json").expect("write");
        let book = ReportBook::open(dir.path(), DAY, 86_400 * 3).expect("open");
        assert!(book.current().tallies.is_empty());
        assert!(dir.path().join("current.corrupt").exists());
    }

    /// Domains serving policies near the 64 KiB limit: the period holds a bounded weight of
    /// them (the sessions of later ones are not counted), not 10,000.
    #[test]
    fn a_period_holds_a_bounded_weight_of_policies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = ReportBook::open(dir.path(), DAY, 1_764_600_000).expect("open");
        let policy = StsPolicy {
            mode: crate::mta_sts::StsMode::Enforce,
            mx: (0..2000).map(|i| format!("mx{i:05}.big.test")).collect(),
            max_age: 86_400,
        };
        for n in 0..1000 {
            book.record(ReportPolicy::sts(&format!("d{n}.big.test"), &policy), None);
        }
        let kept = book.current().tallies.len();
        assert!(kept > 0 && kept < 500, "kept {kept}");
    }
}
