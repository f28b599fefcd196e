//! Per-user sending limits: the compromised-account defence.
//!
//! The incident relayward grew out of was one stolen password sending hundreds of thousands of
//! messages until the server's address was blacklisted for everyone. Authentication cannot stop
//! that; a ceiling per login can. Each authenticated login gets four budgets — messages and
//! recipients, per hour and per day — in fixed windows that start with the login's first use
//! and reset when they run out.
//!
//! Budgets are spent when the session accepts the command, not when the message is queued:
//! `MAIL` spends one message, each newly accepted `RCPT` one recipient. Check and spend happen
//! under one lock, so many parallel sessions of the same login cannot overshoot the limit; an
//! abandoned transaction still counts, which only errs on the side of the victim's reputation.
//!
//! The limiter lives for the whole process (a SIGHUP reload only changes its settings), so a
//! reload is never a way to reset the counters. Memory is bounded by `max_entries`; expired
//! entries are forgotten first.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use relayward_protocol::reply::Reply;

use crate::config::Limits;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Budgets per authenticated login, from `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLimitSettings {
    pub messages_per_hour: u32,
    pub messages_per_day: u32,
    pub recipients_per_hour: u32,
    pub recipients_per_day: u32,
    /// Most logins tracked at once.
    pub max_entries: usize,
}

impl UserLimitSettings {
    pub fn from_limits(limits: &Limits) -> Self {
        Self {
            messages_per_hour: limits.messages_per_user_per_hour,
            messages_per_day: limits.messages_per_user_per_day,
            recipients_per_hour: limits.recipients_per_user_per_hour,
            recipients_per_day: limits.recipients_per_user_per_day,
            max_entries: 65_536,
        }
    }
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    MessagesPerHour(u32),
    MessagesPerDay(u32),
    RecipientsPerHour(u32),
    RecipientsPerDay(u32),
}

impl Exceeded {
    /// `451 4.7.1`: temporary, so a legitimate sender's mail is retried once the window resets.
    pub fn reply(&self) -> Reply {
        Reply::enh(
            451,
            (4, 7, 1),
            format!("Sending limit reached ({self}); try again later"),
        )
    }
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exceeded::MessagesPerHour(n) => write!(f, "{n} messages per hour"),
            Exceeded::MessagesPerDay(n) => write!(f, "{n} messages per day"),
            Exceeded::RecipientsPerHour(n) => write!(f, "{n} recipients per hour"),
            Exceeded::RecipientsPerDay(n) => write!(f, "{n} recipients per day"),
        }
    }
}

/// One fixed window: when it started and what was spent in it.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    used: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            start: now,
            used: 0,
        }
    }

    /// Spent so far, after resetting a window that has run out.
    fn current(&mut self, now: Instant, length: Duration) -> u32 {
        if now.saturating_duration_since(self.start) >= length {
            *self = Window::new(now);
        }
        self.used
    }
}

/// One login's budgets: an hour and a day window, for messages and for recipients.
#[derive(Debug, Clone, Copy)]
struct Usage {
    messages: [Window; 2],
    recipients: [Window; 2],
    last_use: Instant,
}

impl Usage {
    fn new(now: Instant) -> Self {
        Self {
            messages: [Window::new(now); 2],
            recipients: [Window::new(now); 2],
            last_use: now,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_use) >= DAY
    }
}

#[derive(Debug, Clone, Copy)]
enum Budget {
    Messages,
    Recipients,
}

/// Shared by every session of the process; see the module docs.
#[derive(Debug)]
pub struct UserRateLimiter {
    settings: RwLock<UserLimitSettings>,
    usage: Mutex<HashMap<String, Usage>>,
}

impl UserRateLimiter {
    pub fn new(settings: UserLimitSettings) -> Self {
        Self {
            settings: RwLock::new(settings),
            usage: Mutex::new(HashMap::new()),
        }
    }

    /// New budgets (SIGHUP); what was spent so far stays spent.
    pub fn set_settings(&self, settings: UserLimitSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = settings;
    }

    /// Spends one message of `login`'s budget, or says which limit stops it (`MAIL`).
    pub fn try_message(&self, login: &str, now: Instant) -> Result<(), Exceeded> {
        self.try_spend(login, Budget::Messages, now)
    }

    /// Spends one recipient of `login`'s budget, or says which limit stops it (`RCPT`).
    pub fn try_recipient(&self, login: &str, now: Instant) -> Result<(), Exceeded> {
        self.try_spend(login, Budget::Recipients, now)
    }

    /// Number of logins tracked (tests and metrics).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn try_spend(&self, login: &str, budget: Budget, now: Instant) -> Result<(), Exceeded> {
        let settings = self
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (per_hour, per_day) = match budget {
            Budget::Messages => (settings.messages_per_hour, settings.messages_per_day),
            Budget::Recipients => (settings.recipients_per_hour, settings.recipients_per_day),
        };
        let mut usage = self.lock();
        let key = login.to_ascii_lowercase();
        if !usage.contains_key(&key) {
            make_room(&mut usage, settings.max_entries, now);
        }
        let entry = usage.entry(key).or_insert_with(|| Usage::new(now));
        entry.last_use = now;
        let windows = match budget {
            Budget::Messages => &mut entry.messages,
            Budget::Recipients => &mut entry.recipients,
        };
        let [hour, day] = windows;
        if hour.current(now, HOUR) >= per_hour {
            return Err(exceeded(budget, true, per_hour));
        }
        if day.current(now, DAY) >= per_day {
            return Err(exceeded(budget, false, per_day));
        }
        hour.used += 1;
        day.used += 1;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
        // Counters stay usable even if a panic elsewhere poisoned the lock.
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn exceeded(budget: Budget, hourly: bool, limit: u32) -> Exceeded {
    match (budget, hourly) {
        (Budget::Messages, true) => Exceeded::MessagesPerHour(limit),
        (Budget::Messages, false) => Exceeded::MessagesPerDay(limit),
        (Budget::Recipients, true) => Exceeded::RecipientsPerHour(limit),
        (Budget::Recipients, false) => Exceeded::RecipientsPerDay(limit),
    }
}

/// Keeps the table under `max_entries`: logins idle for a day first (their windows have all
/// reset anyway), then the least recently used.
fn make_room(usage: &mut HashMap<String, Usage>, max_entries: usize, now: Instant) {
    if usage.len() < max_entries {
        return;
    }
    usage.retain(|_, u| !u.expired(now));
    while usage.len() >= max_entries.max(1) {
        let oldest = usage
            .iter()
            .min_by_key(|(_, u)| u.last_use)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(key) => usage.remove(&key),
            None => break,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(mh: u32, md: u32, rh: u32, rd: u32) -> UserRateLimiter {
        UserRateLimiter::new(UserLimitSettings {
            messages_per_hour: mh,
            messages_per_day: md,
            recipients_per_hour: rh,
            recipients_per_day: rd,
            max_entries: 3,
        })
    }

    #[test]
    fn hourly_message_budget_resets_after_the_hour() {
        let l = limiter(2, 10, 100, 100);
        let t = Instant::now();
        assert!(l.try_message("alice", t).is_ok());
        assert!(l.try_message("ALICE", t).is_ok());
        assert_eq!(l.try_message("alice", t), Err(Exceeded::MessagesPerHour(2)));
        assert!(l.try_message("bob", t).is_ok(), "other users unaffected");
        assert!(l.try_message("alice", t + HOUR).is_ok());
    }

    #[test]
    fn daily_budget_outlasts_hourly_resets() {
        let l = limiter(100, 100, 2, 3);
        let t = Instant::now();
        assert!(l.try_recipient("a", t).is_ok());
        assert!(l.try_recipient("a", t).is_ok());
        assert_eq!(l.try_recipient("a", t), Err(Exceeded::RecipientsPerHour(2)));
        assert!(l.try_recipient("a", t + HOUR).is_ok());
        assert_eq!(
            l.try_recipient("a", t + HOUR),
            Err(Exceeded::RecipientsPerDay(3))
        );
        assert!(l.try_recipient("a", t + DAY).is_ok());
    }

    #[test]
    fn refused_attempts_do_not_spend() {
        let l = limiter(1, 2, 100, 100);
        let t = Instant::now();
        assert!(l.try_message("a", t).is_ok());
        for _ in 0..5 {
            assert!(l.try_message("a", t).is_err());
        }
        assert!(l.try_message("a", t + HOUR).is_ok(), "day budget not eaten");
    }

    #[test]
    fn new_settings_keep_what_was_spent() {
        let l = limiter(5, 5, 5, 5);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.try_message("a", t).is_ok());
        }
        l.set_settings(UserLimitSettings {
            messages_per_hour: 3,
            messages_per_day: 3,
            recipients_per_hour: 3,
            recipients_per_day: 3,
            max_entries: 3,
        });
        assert!(l.try_message("a", t).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let l = limiter(5, 5, 5, 5);
        let t = Instant::now();
        for i in 0..100 {
            let _ = l.try_message(&format!("user{i}"), t + Duration::from_secs(i));
        }
        assert!(l.tracked() <= 3);
    }
}
