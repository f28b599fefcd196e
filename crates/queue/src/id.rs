//! Message identifiers.
//!
//! An id is 14 lower-case hex digits of microseconds since the Unix epoch followed by 10 hex
//! digits of randomness: 24 characters from `[0-9a-f]`. Fixed width makes string order equal
//! arrival order; the alphabet makes an id safe as a file name on any filesystem and impossible to
//! turn into a path (`..`, `/`); 40 random bits keep two processes from colliding within one
//! microsecond. Within one process ids are strictly increasing even if the clock steps back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::MessageId;

const TIME_DIGITS: usize = 14;
const RANDOM_DIGITS: usize = 10;
/// Length of every valid id.
pub(crate) const ID_LEN: usize = TIME_DIGITS + RANDOM_DIGITS;
const TIME_MASK: u64 = (1 << (4 * TIME_DIGITS)) - 1;
const RANDOM_MASK: u64 = (1 << (4 * RANDOM_DIGITS)) - 1;

/// The last timestamp handed out by this process, so ids generated here never go backwards.
static LAST_MICROS: AtomicU64 = AtomicU64::new(0);

/// A string that is not a queue id; carries (a prefix of) the offending text for messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue id {0:?}: expected {ID_LEN} lower-case hex digits")]
pub struct InvalidMessageId(pub String);

/// A fresh id, later than every id generated before in this process.
pub(crate) fn generate() -> MessageId {
    let micros = next_micros();
    let random = rand::random::<u64>() & RANDOM_MASK;
    MessageId(format!("{micros:014x}{random:010x}"))
}

/// The strict shape check used for every id that crosses the crate boundary.
pub(crate) fn is_valid(text: &str) -> bool {
    text.len() == ID_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Current time in microseconds, bumped past the previous value when the clock has not moved on.
fn next_micros() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut prev = LAST_MICROS.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev.saturating_add(1)) & TIME_MASK;
        match LAST_MICROS.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => prev = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_increasing() {
        let ids: Vec<MessageId> = (0..1000).map(|_| generate()).collect();
        assert!(ids.iter().all(|id| is_valid(&id.0)), "{ids:?}");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not sorted by arrival");
    }

    #[test]
    fn outside_ids_are_checked_strictly() {
        let good = generate();
        assert!(MessageId::parse(&good.0).is_ok());
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            "0000000000000000000000/a",
            "00000000000000000000000",
            "0000000000000000000000000",
            "00000000000000000000000A",
            "0000000000000000000000\0a",
            "000000000000000000000.json",
            "ÿ00000000000000000000000",
        ] {
            assert!(MessageId::parse(bad).is_err(), "accepted {bad:?}");
            assert!(!MessageId(bad.to_owned()).is_valid());
        }
    }
}
