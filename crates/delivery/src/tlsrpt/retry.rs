//! `https:` reports whose POST failed, tried again. RFC 8460 §5.3: "In the event of a delivery
//! failure, regardless of the delivery method, a sender SHOULD attempt redelivery for up to 24
//! hours after the initial attempt", ideally on a logarithmic scale. Mailed reports need none
//! of this: they go through the queue, which retries them like any message.
//!
//! One file per report and URL in `tls-report/retry/`, holding the compressed report (base64
//! in JSON), replaced durably after each attempt and removed when the report is delivered,
//! refused for good (see [`super::post::PostError::permanent`]) or 24 hours old. Attempt `n`
//! (the first retry is 1) waits `retry_after × 3^(n-1)`: with the default five minutes, 5 m,
//! 15 m, 45 m, 2 h 15, 6 h 45, then the last one when the 24 hours end.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use relayward_protocol::text::Escaped;
use serde::{Deserialize, Serialize};

/// RFC 8460 §5.3: how long after the first attempt a report is still worth sending.
pub const GIVE_UP_AFTER: u64 = 24 * 3600;
/// Each wait is this many times the one before.
const GROWTH: u64 = 3;

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
}

impl Retries {
    pub fn new(dir: PathBuf) -> Retries {
        Retries { dir }
    }

    /// Keeps a report whose first POST failed; returns when it is tried next.
    pub fn keep(&self, failed: FirstAttempt<'_>, retry_after: Duration) -> io::Result<u64> {
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
        let path = self
            .dir
            .join(format!("{:016x}.json", rand::random::<u64>()));
        write(&path, &pending)?;
        Ok(pending.next_attempt)
    }

    /// The reports due at `now`, with their files. An unreadable file is removed with a
    /// warning (a report is worth less than a retry loop that stalls on it).
    pub fn due(&self, now: u64) -> Vec<(PathBuf, Pending)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match read(&path) {
                Ok(pending) if pending.next_attempt <= now => due.push((path, pending)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %Escaped(&e.to_string()), "unreadable TLS report retry removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        due.sort_by_key(|(_, pending)| pending.next_attempt);
        due
    }

    /// Records another failed attempt at `now`: the next one is scheduled, or, 24 hours
    /// after the first, the report is forgotten.
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
            forget(path)?;
            return Ok(Next::GaveUp);
        }
        pending.next_attempt =
            next_attempt(pending.first_attempt, now, pending.attempts, retry_after);
        write(path, &pending)?;
        Ok(Next::At(pending.next_attempt))
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
}

/// Removes a report that was delivered, refused for good, or given up.
pub fn forget(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
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
        let (path, pending) = retries.due(u64::MAX).pop().unwrap();
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

    #[test]
    fn an_unreadable_retry_is_removed_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0000000000000001.json"), b"{ not json").unwrap();
        let retries = Retries::new(dir.path().to_path_buf());
        assert!(retries.due(u64::MAX).is_empty());
        assert!(retries.is_empty());
    }
}
