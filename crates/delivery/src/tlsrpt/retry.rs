//! `https:` reports whose POST failed, tried again. RFC 8460 §5.3: "In the event of a delivery
//! failure, regardless of the delivery method, a sender SHOULD attempt redelivery for up to 24
//! hours after the initial attempt", ideally on a logarithmic scale. Mailed reports need none
//! of this: they go through the queue, which retries them like any message.
//!
//! One file per report and URL in `tls-report/retry/` (named by a hash of both, so a report
//! sent again after a crash does not start a second series), holding the compressed report
//! (base64 in JSON), replaced durably after each attempt and removed when the report is
//! delivered, refused for good (see [`super::post::PostError::permanent`]) or 24 hours old.
//! Attempt `n` (the first retry is 1) waits `retry_after × 3^(n-1)`: with the default five
//! minutes, 5 m, 15 m, 45 m, 2 h 15, 6 h 45, then the last one when the 24 hours end. When a
//! file cannot be changed (a filesystem gone read-only), what should have been written is
//! remembered in memory instead, so a report is neither posted every few seconds nor again
//! after it was delivered.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use relayward_protocol::text::Escaped;
use serde::{Deserialize, Serialize};

/// RFC 8460 §5.3: how long after the first attempt a report is still worth sending.
pub const GIVE_UP_AFTER: u64 = 24 * 3600;
/// Each wait is this many times the one before.
const GROWTH: u64 = 3;
/// A temporary file older than this was left by a crash in the middle of a write.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// One report waiting for its next attempt at one URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub domain: String,
    pub report_id: String,
    pub url: String,
    /// Unix time of the first attempt (the 24 hours count from it).
    pub first_attempt: u64,
    /// Attempts so far, the first included.
    pub attempts: u32,
    pub next_attempt: u64,
    pub last_error: String,
    /// The gzip-compressed report, base64.
    body: String,
}

impl Pending {
    /// The compressed report to POST.
    pub fn body(&self) -> io::Result<Vec<u8>> {
        STANDARD
            .decode(&self.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// What [`Retries::failed_again`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Tried again at this Unix time.
    At(u64),
    /// 24 hours have passed: forgotten.
    GaveUp,
}

/// A report's first POST to one URL, which failed.
pub struct FirstAttempt<'a> {
    pub domain: &'a str,
    pub report_id: &'a str,
    pub url: &'a str,
    /// The compressed report.
    pub body: &'a [u8],
    pub error: &'a str,
    /// Unix time of the attempt.
    pub at: u64,
}

/// The retry directory.
pub struct Retries {
    dir: PathBuf,
    /// Files whose change could not be written: not due before this time (`u64::MAX`: done).
    held_back: Mutex<HashMap<PathBuf, u64>>,
}

impl Retries {
    pub fn new(dir: PathBuf) -> Retries {
        Retries {
            dir,
            held_back: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a report whose first POST failed; returns when it is tried next. A report kept
    /// already for that URL (sent again after a crash) keeps its series and its 24 hours.
    pub fn keep(&self, failed: FirstAttempt<'_>, retry_after: Duration) -> io::Result<u64> {
        let path = self.path_of(failed.report_id, failed.url);
        if let Ok(kept) = read(&path) {
            return Ok(self.held_back_until(&path).unwrap_or(kept.next_attempt));
        }
        let pending = Pending {
            domain: failed.domain.to_owned(),
            report_id: failed.report_id.to_owned(),
            url: failed.url.to_owned(),
            first_attempt: failed.at,
            attempts: 1,
            next_attempt: next_attempt(failed.at, failed.at, 1, retry_after),
            last_error: failed.error.to_owned(),
            body: STANDARD.encode(failed.body),
        };
        std::fs::create_dir_all(&self.dir)?;
        write(&path, &pending)?;
        Ok(pending.next_attempt)
    }

    /// The reports due at `now`, with their files. An unreadable file is removed with a
    /// warning (a report is worth less than a retry loop that stalls on it), and so is one
    /// past its 24 hours (the server was down, or reports were off, meanwhile).
    pub fn due(&self, now: u64) -> Vec<(PathBuf, Pending)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                remove_if_stale(&path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "json")
                || self.held_back_until(&path).is_some_and(|until| until > now)
            {
                continue;
            }
            match read(&path) {
                Ok(pending) if now > pending.first_attempt.saturating_add(GIVE_UP_AFTER) => {
                    tracing::warn!(domain = %Escaped(&pending.domain), url = %Escaped(&pending.url), report_id = %Escaped(&pending.report_id), "TLS report not delivered within 24 hours; given up");
                    self.forget(&path);
                }
                Ok(pending) if pending.next_attempt <= now => due.push((path, pending)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %Escaped(&e.to_string()), "unreadable TLS report retry removed");
                    self.forget(&path);
                }
            }
        }
        due.sort_by_key(|(_, pending)| pending.next_attempt);
        due
    }

    /// Records another failed attempt at `now`: the next one is scheduled, or, 24 hours
    /// after the first, the report is forgotten. When the file cannot be written, the next
    /// attempt is held back in memory all the same (and the error returned).
    pub fn failed_again(
        &self,
        path: &Path,
        mut pending: Pending,
        error: &str,
        now: u64,
        retry_after: Duration,
    ) -> io::Result<Next> {
        pending.attempts = pending.attempts.saturating_add(1);
        pending.last_error = error.to_owned();
        if now >= pending.first_attempt.saturating_add(GIVE_UP_AFTER) {
            self.forget(path);
            return Ok(Next::GaveUp);
        }
        pending.next_attempt =
            next_attempt(pending.first_attempt, now, pending.attempts, retry_after);
        if let Err(e) = write(path, &pending) {
            self.hold_back(path, pending.next_attempt);
            return Err(e);
        }
        Ok(Next::At(pending.next_attempt))
    }

    /// Removes a report that was delivered, refused for good, or given up; if its file
    /// cannot go, this process does not try it again.
    pub fn forget(&self, path: &Path) {
        let removed = match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        let mut held_back = self
            .held_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match removed {
            Ok(()) => {
                held_back.remove(path);
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a TLS report retry; not tried again until a restart");
                held_back.insert(path.to_path_buf(), u64::MAX);
            }
        }
    }

    /// How many reports wait (for tests).
    pub fn len(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|ext| ext == "json"))
                .count()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file of a report's retries at one URL.
    fn path_of(&self, report_id: &str, url: &str) -> PathBuf {
        let key = format!("{report_id}\n{url}");
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let name: String = digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(format!("{name}.json"))
    }

    fn hold_back(&self, path: &Path, until: u64) {
        self.held_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path.to_path_buf(), until);
    }

    fn held_back_until(&self, path: &Path) -> Option<u64> {
        self.held_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .copied()
    }
}

/// Removes a temporary file a crash left in the middle of a write (a young one may be a write
/// in progress).
fn remove_if_stale(path: &Path) {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok());
    if age.is_some_and(|age| age > STALE_TEMP) {
        let _ = std::fs::remove_file(path);
    }
}

/// When the attempt after `attempts` comes: `retry_after × 3^(attempts-1)` after `now`, but
/// never after the 24 hours end (the last attempt is made then).
fn next_attempt(first: u64, now: u64, attempts: u32, retry_after: Duration) -> u64 {
    let factor = GROWTH.saturating_pow(attempts.saturating_sub(1));
    let wait = retry_after.as_secs().max(1).saturating_mul(factor);
    now.saturating_add(wait)
        .min(first.saturating_add(GIVE_UP_AFTER))
}

fn write(path: &Path, pending: &Pending) -> io::Result<()> {
    let json = serde_json::to_vec(pending).map_err(io::Error::other)?;
    relayward_queue::replace_durably(path, &json)
}

fn read(path: &Path) -> io::Result<Pending> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    #[test]
    fn waits_grow_threefold_and_stop_at_24_hours() {
        let waits: Vec<u64> = (1..=7)
            .map(|n| next_attempt(0, 0, n, FIVE_MINUTES))
            .collect();
        assert_eq!(waits, [300, 900, 2700, 8100, 24_300, 72_900, 86_400]);
        assert_eq!(
            next_attempt(1_000, 80_000, 4, FIVE_MINUTES),
            1_000 + GIVE_UP_AFTER
        );
    }

    #[test]
    fn a_kept_report_is_due_at_its_time_and_forgotten_after_24_hours() {
        let dir = tempfile::tempdir().unwrap();
        let retries = Retries::new(dir.path().join("retry"));
        assert!(retries.due(u64::MAX).is_empty(), "no directory yet");
        let first = FirstAttempt {
            domain: "d.test",
            report_id: "r1",
            url: "https://rpt.d.test/",
            body: b"\x1f\x8b gz",
            error: "503",
            at: 1_000,
        };
        let next = retries.keep(first, FIVE_MINUTES).unwrap();
        assert_eq!(next, 1_300);
        assert!(retries.due(1_299).is_empty());
        let (path, pending) = retries.due(1_300).pop().unwrap();
        assert_eq!(pending.body().unwrap(), b"\x1f\x8b gz");
        assert_eq!(
            retries
                .failed_again(&path, pending, "timed out", 1_300, FIVE_MINUTES)
                .unwrap(),
            Next::At(1_300 + 900)
        );
        let (path, pending) = retries.due(1_300 + 900).pop().unwrap();
        assert_eq!(
            (pending.attempts, pending.last_error.as_str()),
            (2, "timed out")
        );
        assert_eq!(
            retries
                .failed_again(&path, pending, "503", 1_000 + GIVE_UP_AFTER, FIVE_MINUTES)
                .unwrap(),
            Next::GaveUp
        );
        assert!(retries.is_empty());
    }

    fn first(report_id: &'static str, at: u64) -> FirstAttempt<'static> {
        FirstAttempt {
            domain: "d.test",
            report_id,
            url: "https://rpt.d.test/",
            body: b"gz",
            error: "503",
            at,
        }
    }

    /// A period reported again after a crash keeps the series it started: one file, the
    /// first attempt's 24 hours.
    #[test]
    fn a_report_kept_twice_is_one_series() {
        let dir = tempfile::tempdir().unwrap();
        let retries = Retries::new(dir.path().to_path_buf());
        assert_eq!(
            retries.keep(first("r1", 1_000), FIVE_MINUTES).unwrap(),
            1_300
        );
        assert_eq!(
            retries.keep(first("r1", 5_000), FIVE_MINUTES).unwrap(),
            1_300
        );
        assert_eq!(retries.len(), 1);
        retries.keep(first("r2", 5_000), FIVE_MINUTES).unwrap();
        assert_eq!(retries.len(), 2, "another report is another series");
    }

    /// A retry past its 24 hours (the server was down meanwhile) is dropped, not sent.
    #[test]
    fn a_retry_past_its_24_hours_is_dropped_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let retries = Retries::new(dir.path().to_path_buf());
        retries.keep(first("r1", 1_000), FIVE_MINUTES).unwrap();
        assert!(retries.due(1_001 + GIVE_UP_AFTER).is_empty());
        assert!(retries.is_empty());
    }

    /// A retry whose file could not be changed is held back in memory: not posted again
    /// every few seconds.
    #[test]
    fn a_retry_that_cannot_be_written_is_held_back_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let retries = Retries::new(dir.path().join("retry"));
        retries.keep(first("r1", 1_000), FIVE_MINUTES).unwrap();
        let (path, pending) = retries.due(2_000).pop().unwrap();
        // The file is gone and its directory replaced by a plain file: no write can succeed.
        std::fs::remove_dir_all(dir.path().join("retry")).unwrap();
        std::fs::write(dir.path().join("retry"), b"not a directory").unwrap();
        let failed = retries.failed_again(&path, pending, "503", 2_000, FIVE_MINUTES);
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(retries.held_back_until(&path), Some(2_000 + 900));
        retries.forget(&path);
        assert_eq!(
            retries.held_back_until(&path),
            Some(u64::MAX),
            "done, in memory"
        );
    }

    #[test]
    fn an_unreadable_retry_is_removed_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0000000000000001.json"), b"{ not json").unwrap();
        let retries = Retries::new(dir.path().to_path_buf());
        assert!(retries.due(u64::MAX).is_empty());
        assert!(retries.is_empty());
    }
}
