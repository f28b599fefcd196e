//! What guessing passwords may cost relayward, and what it must never cost the real user.
//!
//! Three bounds, shared by every session and kept across reloads (a SIGHUP must not forgive an
//! attacker):
//! - **CPU and memory:** an argon2 check takes tens of milliseconds and 19 MiB. At most
//!   [`AuthLimitSettings::max_verifications`] run at once (the cores, at most a few); an attempt
//!   that finds none free within [`AuthLimitSettings::verification_wait`] is answered
//!   `454 4.7.0`. Without it, 400 parallel wrong passwords held 400 × 19 MiB.
//! - **Guesses per address:** an attempt is counted as a failure when it is admitted, before its
//!   password is checked, and only a correct password takes it back. Twenty guesses sent in
//!   parallel thus count against each other: the fifth bans the address, the sixth is refused
//!   unchecked. Every failure doubles the delay before `535`; `failures_per_ip` failures ban the
//!   address (IPv6: its /64) for `ban`.
//! - **Guesses per login, from many addresses:** failures are also counted per login. Once a
//!   login has `failures_per_login`, an address that itself failed *for that login* more than
//!   once is refused for it; its delays are the login's. One typo is forgiven: the owner who
//!   mistyped once at home still gets in with the right password, however many others attack her
//!   login. An address that never failed is never slowed or refused because of others.
//!
//! A success takes back its own attempt and clears that login's failures, never the address's:
//! an attacker with one account cannot log into it to wipe the failures of her guesses at
//! another. Addresses in `trusted_networks` are slowed like any other but never banned or
//! refused: they are the admin's own machines (her webmail, her `relayward probe` runs), and a
//! ban there would lock out every user behind them.
//!
//! Memory is bounded: at most `max_entries` addresses, logins and address–login pairs each;
//! expired entries go first, then the least recently failed. Time is passed in (`now`), so tests
//! drive the clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use relayward_protocol::reply::Reply;

use super::checks::{CheckSlot, PasswordChecks};

use crate::config::Limits;

/// Settings of the [`AuthLimiter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimitSettings {
    /// Failures from one address (IPv6: /64) within `window` that ban it for `ban`.
    pub failures_per_ip: u32,
    /// Failures for one login within `window` after which that login is refused from addresses
    /// that failed for it more than once themselves.
    pub failures_per_login: u32,
    /// How long a failure is remembered after the last one.
    pub window: Duration,
    /// Length of an address ban.
    pub ban: Duration,
    /// Delay before answering the first failure; doubles with each further one.
    pub base_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Most addresses, logins and address–login pairs tracked (each); the oldest go first.
    pub max_entries: usize,
    /// Password checks that may run at once; fixed when the limiter is made.
    pub max_verifications: usize,
    /// How long an admitted attempt waits for a free password check before `454 4.7.0`.
    pub verification_wait: Duration,
}

impl AuthLimitSettings {
    /// From `[limits]`; delays 1 s doubling to 16 s, 65,536 entries per table, one password
    /// check at a time per core (at most 4), 2 s of waiting for one.
    pub fn from_limits(limits: &Limits) -> Self {
        Self {
            failures_per_ip: limits.auth_failures_per_ip.max(1),
            failures_per_login: limits.auth_failures_per_login.max(1),
            window: limits.auth_failure_window,
            ban: limits.auth_ban,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(16),
            max_entries: 65_536,
            max_verifications: default_verifications(),
            verification_wait: Duration::from_secs(2),
        }
    }
}

/// One check per core: more would only queue inside the OS while holding their memory.
/// At most 4, so a large machine does not hold hundreds of MiB for guessers.
fn default_verifications() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Who attempts to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthClient {
    pub ip: IpAddr,
    /// In `trusted_networks`: slowed like anyone, never banned or refused (see module docs).
    pub trusted: bool,
}

/// Why an AUTH attempt is refused before its password is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRefusal {
    /// This address (or its /64) failed too often; banned until the given instant.
    IpBanned { until: Instant },
    /// This login is under attack, and this address has failed for it too.
    LoginThrottled,
    /// Every password check stayed busy for `verification_wait`.
    Busy,
}

impl AuthRefusal {
    /// `454 4.7.0` (RFC 4954 §6: temporary authentication failure).
    pub fn reply(&self) -> Reply {
        let text = match self {
            AuthRefusal::IpBanned { .. } => {
                "Too many failed authentication attempts from your address, try again later"
            }
            AuthRefusal::LoginThrottled => {
                "Too many failed authentication attempts, try again later"
            }
            AuthRefusal::Busy => "Too many authentication attempts in progress, try again later",
        };
        Reply::enh(454, (4, 7, 0), text)
    }
}

/// An admitted attempt, counted as a failure until [`AuthLimiter::succeeded`] or
/// [`AuthLimiter::withdraw`] takes it back. Dropped unconcluded (the client left during the
/// check), it stays a failure: as far as we know, it was a guess.
#[must_use = "conclude the attempt with succeeded, failed or withdraw"]
#[derive(Debug)]
pub struct Attempt {
    client: AuthClient,
    login: String,
}

#[derive(Debug, Clone, Copy)]
struct FailureRecord {
    failures: u32,
    last_failure: Instant,
    banned_until: Option<Instant>,
}

type Pair = (IpAddr, String);

#[derive(Debug, Default)]
struct LimiterState {
    ips: HashMap<IpAddr, FailureRecord>,
    logins: HashMap<String, FailureRecord>,
    /// Failures of one address for one login: the owner's own, as opposed to her attackers'.
    pairs: HashMap<Pair, FailureRecord>,
}

/// One address banned from AUTH, as `relayward bans list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthBan {
    /// The address as counted (IPv6: its /64).
    pub address: IpAddr,
    pub failures: u32,
    pub remaining: Duration,
}

/// Failures of an address for a login that still let it in while the login is under attack.
const OWN_FAILURES_FORGIVEN: u32 = 1;

/// Counts AUTH failures and bounds password checks; see the module documentation.
#[derive(Debug)]
pub struct AuthLimiter {
    /// Behind a lock so a reload (SIGHUP) can change the limits without forgetting the counters.
    settings: RwLock<AuthLimitSettings>,
    state: Mutex<LimiterState>,
    checks: PasswordChecks,
}

impl AuthLimiter {
    pub fn new(settings: AuthLimitSettings) -> Self {
        Self {
            checks: PasswordChecks::new(settings.max_verifications),
            settings: RwLock::new(settings),
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// New limits for the next attempts; failures and bans already counted are kept, and so
    /// is the number of parallel password checks.
    pub fn set_settings(&self, settings: AuthLimitSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = settings;
    }

    fn settings(&self) -> AuthLimitSettings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `client` may start an AUTH exchange at all (before its login is known).
    pub fn check(&self, client: AuthClient, now: Instant) -> Result<(), AuthRefusal> {
        let state = self.lock();
        self.ban_of(&state, client, now)
    }

    /// Admits an attempt for `login`, counting it as a failure at once, or refuses it. Check
    /// and count happen under one lock, so parallel attempts cannot all pass the same check.
    pub fn begin(
        &self,
        client: AuthClient,
        login: &str,
        now: Instant,
    ) -> Result<Attempt, AuthRefusal> {
        let settings = self.settings();
        let mut state = self.lock();
        self.ban_of(&state, client, now)?;
        let login = login_key(login);
        let pair = (ip_key(client.ip), login.clone());
        let under_attack =
            self.live_failures(state.logins.get(&login), now) >= settings.failures_per_login;
        let own_failures = self.live_failures(state.pairs.get(&pair), now);
        if !client.trusted && under_attack && own_failures > OWN_FAILURES_FORGIVEN {
            return Err(AuthRefusal::LoginThrottled);
        }
        let ban_at = (!client.trusted).then_some(settings.failures_per_ip);
        self.bump(&mut state.ips, ip_key(client.ip), now, ban_at);
        self.bump(&mut state.logins, login.clone(), now, None);
        self.bump(&mut state.pairs, pair, now, None);
        Ok(Attempt { client, login })
    }

    /// The password was right: the attempt was no failure, and the login's failures are
    /// forgotten (the owner is in; the address keeps its other failures).
    pub fn succeeded(&self, attempt: Attempt, _now: Instant) {
        let mut state = self.lock();
        self.take_back(&mut state, &attempt);
        state.logins.remove(&attempt.login);
        state
            .pairs
            .remove(&(ip_key(attempt.client.ip), attempt.login));
    }

    /// The password was wrong: the failure counted at [`AuthLimiter::begin`] stands. Returns
    /// how long to wait before answering `535`.
    pub fn failed(&self, attempt: Attempt, now: Instant) -> Duration {
        let state = self.lock();
        let ip_failures = self.live_failures(state.ips.get(&ip_key(attempt.client.ip)), now);
        let login_failures = self.live_failures(state.logins.get(&attempt.login), now);
        self.delay_for(ip_failures.max(login_failures))
    }

    /// The password was never checked (no check slot came free): neither success nor failure.
    pub fn withdraw(&self, attempt: Attempt) {
        let mut state = self.lock();
        self.take_back(&mut state, &attempt);
    }

    /// A failed exchange without a login (e.g. an authorization identity for someone else);
    /// returns the delay before answering.
    pub fn record_failure(&self, client: AuthClient, now: Instant) -> Duration {
        let ban_at = (!client.trusted).then_some(self.settings().failures_per_ip);
        let mut state = self.lock();
        let failures = self.bump(&mut state.ips, ip_key(client.ip), now, ban_at);
        self.delay_for(failures)
    }

    /// Waits (at most `verification_wait`) for one of the few password checks that may run at
    /// once. Hold the slot for the check only, not for the delay after a failure.
    pub async fn verification_slot(&self) -> Result<CheckSlot<'_>, AuthRefusal> {
        let wait = self.settings().verification_wait;
        self.checks.slot(wait).await.ok_or(AuthRefusal::Busy)
    }

    /// The addresses banned from AUTH right now (IPv6: their /64), soonest-ending first.
    pub fn bans(&self, now: Instant) -> Vec<AuthBan> {
        let state = self.lock();
        let mut bans: Vec<AuthBan> = state
            .ips
            .iter()
            .filter_map(|(ip, record)| {
                let until = record.banned_until.filter(|until| *until > now)?;
                Some(AuthBan {
                    address: *ip,
                    failures: record.failures,
                    remaining: until.saturating_duration_since(now),
                })
            })
            .collect();
        bans.sort_by_key(|b| (b.remaining, b.address));
        bans
    }

    /// Lifts `ip`'s ban (the admin says so) and forgets its failures, for every login it
    /// tried; true when it was banned.
    pub fn lift(&self, ip: IpAddr, now: Instant) -> bool {
        let key = ip_key(ip);
        let mut state = self.lock();
        let was_banned = state
            .ips
            .remove(&key)
            .and_then(|r| r.banned_until)
            .is_some_and(|until| until > now);
        state.pairs.retain(|(pair_ip, _), _| *pair_ip != key);
        was_banned
    }

    /// Lifts every ban and forgets every failure; returns how many addresses were banned.
    pub fn lift_all(&self, now: Instant) -> usize {
        let mut state = self.lock();
        let banned = state
            .ips
            .values()
            .filter(|r| r.banned_until.is_some_and(|until| until > now))
            .count();
        state.ips.clear();
        state.logins.clear();
        state.pairs.clear();
        banned
    }

    /// Number of addresses and logins currently tracked (for tests and metrics).
    pub fn tracked_entries(&self) -> (usize, usize) {
        let state = self.lock();
        (state.ips.len(), state.logins.len())
    }

    fn lock(&self) -> MutexGuard<'_, LimiterState> {
        // A panic elsewhere while holding the lock leaves counters that are still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err` when `client` is banned (never for trusted networks).
    fn ban_of(
        &self,
        state: &LimiterState,
        client: AuthClient,
        now: Instant,
    ) -> Result<(), AuthRefusal> {
        if client.trusted {
            return Ok(());
        }
        let banned = state
            .ips
            .get(&ip_key(client.ip))
            .and_then(|r| r.banned_until)
            .filter(|until| *until > now);
        match banned {
            Some(until) => Err(AuthRefusal::IpBanned { until }),
            None => Ok(()),
        }
    }

    /// Undoes the failure [`AuthLimiter::begin`] counted for `attempt`, and the address ban it
    /// may have caused (a ban that other failures alone earn stays).
    fn take_back(&self, state: &mut LimiterState, attempt: &Attempt) {
        let ban_at = self.settings().failures_per_ip;
        let ip = ip_key(attempt.client.ip);
        unbump(&mut state.ips, &ip, Some(ban_at));
        unbump(&mut state.logins, &attempt.login, None);
        unbump(&mut state.pairs, &(ip, attempt.login.clone()), None);
    }

    fn live_failures(&self, record: Option<&FailureRecord>, now: Instant) -> u32 {
        record
            .filter(|r| !self.expired(r, now))
            .map_or(0, |r| r.failures)
    }

    fn expired(&self, record: &FailureRecord, now: Instant) -> bool {
        let ban_over = record.banned_until.is_none_or(|until| until <= now);
        ban_over && now.saturating_duration_since(record.last_failure) > self.settings().window
    }

    /// Adds a failure to `key`'s record (resetting an expired one), banning at `ban_at`
    /// failures when given; returns the new count.
    fn bump<K: Hash + Eq + Clone>(
        &self,
        map: &mut HashMap<K, FailureRecord>,
        key: K,
        now: Instant,
        ban_at: Option<u32>,
    ) -> u32 {
        if !map.contains_key(&key) {
            self.make_room(map, now);
        }
        let fresh = FailureRecord {
            failures: 0,
            last_failure: now,
            banned_until: None,
        };
        let record = map.entry(key).or_insert(fresh);
        if self.expired(record, now) {
            *record = fresh;
        }
        record.failures = record.failures.saturating_add(1);
        record.last_failure = now;
        if ban_at.is_some_and(|limit| record.failures >= limit) {
            record.banned_until = Some(now + self.settings().ban);
        }
        record.failures
    }

    fn make_room<K: Hash + Eq + Clone>(&self, map: &mut HashMap<K, FailureRecord>, now: Instant) {
        let max_entries = self.settings().max_entries;
        if map.len() < max_entries {
            return;
        }
        map.retain(|_, r| !self.expired(r, now));
        while map.len() >= max_entries {
            let oldest = map
                .iter()
                .min_by_key(|(_, r)| r.last_failure)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => map.remove(&key),
                None => break,
            };
        }
    }

    fn delay_for(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        let settings = self.settings();
        settings
            .base_delay
            .saturating_mul(1u32 << doublings)
            .min(settings.max_delay)
    }
}

/// Takes one failure off `key`'s record, lifting its ban once it is under `ban_at`.
fn unbump<K: Hash + Eq>(map: &mut HashMap<K, FailureRecord>, key: &K, ban_at: Option<u32>) {
    let Some(record) = map.get_mut(key) else {
        return;
    };
    record.failures = record.failures.saturating_sub(1);
    if ban_at.is_some_and(|limit| record.failures < limit) {
        record.banned_until = None;
    }
    if record.failures == 0 && record.banned_until.is_none() {
        map.remove(key);
    }
}

/// The key under which a client address is counted by every limiter: IPv4 as is, IPv6 by its
/// /64, since one host or home network usually owns a whole /64 and could otherwise rotate
/// through 2^64 addresses to escape any per-address limit.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

fn login_key(login: &str) -> String {
    login.to_ascii_lowercase()
}
