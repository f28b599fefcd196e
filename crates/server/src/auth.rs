//! Authentication: password hashes, the user database, SASL PLAIN/LOGIN decoding and the
//! AUTH failure limiter.
//!
//! The session drives it in this order:
//! 1. [`AuthLimiter::check`] with the client IP (banned → [`AuthRefusal::reply`], `454 4.7.0`);
//! 2. [`SaslExchange`] turns the AUTH line and the `334` responses into [`Credentials`];
//! 3. [`AuthLimiter::check`] again, now with the login;
//! 4. [`UserDb::verify`] (argon2 on a blocking thread) → `Some(Login)` or `None`;
//! 5. on `None`: [`AuthLimiter::record_failure`], sleep the returned delay, answer
//!    [`bad_credentials_reply`] (`535 5.7.8`); on success: [`AuthLimiter::record_success`].

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use relayward_protocol::reply::Reply;

use crate::config::{Config, Limits};

/// An authenticated identity, spelt as in the configuration (`[[user]] login`).
///
/// The session should hold a `Login` only from [`UserDb::verify`]; the constructor is public so
/// that tests and the policy's callers can describe clients, and the policy still checks that
/// the login belongs to a configured user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Login(String);

impl Login {
    pub fn new(login: impl Into<String>) -> Self {
        Self(login.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hashing failed (the system RNG failed, or argon2 refused the input).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash password: {0}")]
pub struct HashError(String);

/// Hashes a password with argon2id and its default parameters, as a PHC string for
/// `[[user]] password_hash`. Takes tens of milliseconds of CPU: call it off the async runtime.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Checks that `phc` is an argon2 PHC string we can verify against (algorithm, version,
/// parameters, salt and hash all present and valid). The error says what is wrong.
pub fn check_password_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| {
        format!("not a PHC password hash ({e}); it looks like \"$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>\"")
    })?;
    Algorithm::new(hash.algorithm.as_str())
        .map_err(|_| format!("algorithm {:?} is not argon2", hash.algorithm.as_str()))?;
    Params::try_from(&hash).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("the hash has no salt or no hash value".to_string());
    }
    Ok(())
}

/// A hash of a random password with the default parameters, verified against when the login is
/// unknown, so that an unknown login costs the same argon2 work as a known one and response
/// timing does not reveal which logins exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$hqKfq9Ye2JLRBt1U2nTDrA$vXlTuySI9ru3UbSMp1KYFwKBNvadHuSfxbm5/k7rT1Q";

/// The configured users, keyed by lower-case login. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    users: Arc<HashMap<String, (Login, String)>>,
}

impl UserDb {
    /// Takes `[[user]]` entries as they are; [`Config::validate`] has checked the hashes (an
    /// invalid one just never verifies).
    pub fn from_config(config: &Config) -> UserDb {
        let users = config
            .users
            .iter()
            .map(|u| {
                let key = u.login.to_ascii_lowercase();
                (key, (Login::new(u.login.clone()), u.password_hash.clone()))
            })
            .collect();
        UserDb {
            users: Arc::new(users),
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user is configured (AUTH can never succeed).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a login (case-insensitive) and password. Runs argon2 on tokio's blocking pool, and
    /// verifies against a dummy hash for unknown logins (same cost, same timing).
    pub async fn verify(&self, login: &str, password: &[u8]) -> Option<Login> {
        let entry = self.users.get(&login.to_ascii_lowercase()).cloned();
        let hash = entry
            .as_ref()
            .map_or_else(|| DUMMY_HASH.to_string(), |(_, hash)| hash.clone());
        let password = password.to_vec();
        let matched = tokio::task::spawn_blocking(move || verify_blocking(&hash, &password)).await;
        match matched {
            Ok(true) => entry.map(|(login, _)| login),
            Ok(false) => None,
            Err(e) => {
                tracing::error!("password verification task failed: {e}");
                None
            }
        }
    }
}

fn verify_blocking(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(e) => {
            tracing::warn!("unusable password hash in configuration: {e}");
            false
        }
    }
}

/// `535 5.7.8`: the reply for wrong credentials (RFC 4954 §6). Never says whether the login
/// or the password was wrong.
pub fn bad_credentials_reply() -> Reply {
    Reply::enh(535, (5, 7, 8), "Authentication credentials invalid")
}

/// The longest AUTH response line we read (RFC 4954 §4: 12,288 octets).
pub const MAX_SASL_LINE: usize = 12_288;

/// A SASL mechanism we offer (only under TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// RFC 4616.
    Plain,
    /// The de facto LOGIN mechanism (draft-murchison-sasl-login).
    Login,
}

impl SaslMechanism {
    /// Every mechanism, in the order advertised in EHLO.
    pub const ALL: [SaslMechanism; 2] = [SaslMechanism::Plain, SaslMechanism::Login];

    /// Parses a mechanism name case-insensitively.
    pub fn from_name(name: &str) -> Result<SaslMechanism, SaslError> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Ok(SaslMechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Ok(SaslMechanism::Login)
        } else {
            Err(SaslError::UnsupportedMechanism)
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::Login => "LOGIN",
        }
    }
}

/// What the client claimed. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub login: String,
    pub password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Why a SASL exchange failed before any password was checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("client cancelled the exchange")]
    Cancelled,
    #[error("response is not valid base64")]
    BadBase64,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("authorization identity must be empty or equal the login")]
    AuthzidMismatch,
    #[error("response longer than 12,288 octets")]
    TooLong,
    #[error("unsupported mechanism")]
    UnsupportedMechanism,
    #[error("exchange already finished")]
    Finished,
}

impl SaslError {
    /// The reply for this error (RFC 4954 §4, §6).
    pub fn reply(&self) -> Reply {
        match self {
            SaslError::Cancelled => Reply::enh(501, (5, 0, 0), "Authentication cancelled"),
            SaslError::BadBase64 => Reply::enh(501, (5, 5, 2), "Cannot decode base64 response"),
            SaslError::Malformed(why) => Reply::enh(
                501,
                (5, 5, 2),
                format!("Malformed authentication response: {why}"),
            ),
            SaslError::AuthzidMismatch => Reply::enh(
                535,
                (5, 7, 8),
                "Authentication credentials invalid: authorization identity must be empty or equal the login",
            ),
            SaslError::TooLong => {
                Reply::enh(500, (5, 5, 6), "Authentication exchange line is too long")
            }
            SaslError::UnsupportedMechanism => {
                Reply::enh(504, (5, 5, 4), "Unrecognized authentication type")
            }
            SaslError::Finished => Reply::enh(503, (5, 5, 1), "Authentication already finished"),
        }
    }

    /// Whether the limiter should count this as a failed attempt. Only a credential-like
    /// failure does; protocol garbage is the session's `max_errors` business.
    pub fn counts_as_failure(&self) -> bool {
        matches!(self, SaslError::AuthzidMismatch)
    }
}

/// The next step of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Send `334 <text>` (text already base64) and feed the client's line to
    /// [`SaslExchange::respond`].
    Challenge(String),
    /// The client's credentials, to be checked with [`UserDb::verify`].
    Done(Credentials),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ExchangeState {
    PlainResponse,
    LoginUsername,
    LoginPassword { username: String },
    Finished,
}

/// One AUTH exchange: decoding only, no I/O and no password check.
#[derive(Debug, Clone)]
pub struct SaslExchange {
    state: ExchangeState,
}

/// `Username:` and `Password:` in base64, the LOGIN mechanism's challenges.
const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

impl SaslExchange {
    /// Starts an exchange for `AUTH <mechanism> [initial-response]`.
    pub fn start(
        mechanism: SaslMechanism,
        initial_response: Option<&str>,
    ) -> Result<(SaslExchange, SaslStep), SaslError> {
        let mut exchange = SaslExchange {
            state: match mechanism {
                SaslMechanism::Plain => ExchangeState::PlainResponse,
                SaslMechanism::Login => ExchangeState::LoginUsername,
            },
        };
        let step = match (mechanism, initial_response) {
            (SaslMechanism::Plain, None) => SaslStep::Challenge(String::new()),
            (SaslMechanism::Login, None) => {
                SaslStep::Challenge(LOGIN_USERNAME_CHALLENGE.to_string())
            }
            (_, Some(initial)) => exchange.respond(initial)?,
        };
        Ok((exchange, step))
    }

    /// Feeds one client line (without CRLF).
    pub fn respond(&mut self, line: &str) -> Result<SaslStep, SaslError> {
        let state = std::mem::replace(&mut self.state, ExchangeState::Finished);
        if state == ExchangeState::Finished {
            return Err(SaslError::Finished);
        }
        let decoded = decode_response(line)?;
        match state {
            ExchangeState::PlainResponse => decode_plain(&decoded).map(SaslStep::Done),
            ExchangeState::LoginUsername => {
                let username = login_username(decoded)?;
                self.state = ExchangeState::LoginPassword { username };
                Ok(SaslStep::Challenge(LOGIN_PASSWORD_CHALLENGE.to_string()))
            }
            ExchangeState::LoginPassword { username } => Ok(SaslStep::Done(Credentials {
                login: username,
                password: decoded,
            })),
            ExchangeState::Finished => Err(SaslError::Finished),
        }
    }
}

/// Base64 as RFC 4648 with padding optional (some clients omit it).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes one response line: `*` cancels (RFC 4954 §4), `=` is an empty initial response,
/// anything else must be base64.
pub fn decode_response(line: &str) -> Result<Vec<u8>, SaslError> {
    if line.len() > MAX_SASL_LINE {
        return Err(SaslError::TooLong);
    }
    let line = line.trim_matches([' ', '\t']);
    match line {
        "*" => Err(SaslError::Cancelled),
        "=" => Ok(Vec::new()),
        _ => BASE64.decode(line).map_err(|_| SaslError::BadBase64),
    }
}

/// RFC 4616 PLAIN: `authzid NUL authcid NUL passwd`. The authzid must be empty or equal the
/// authcid (case-insensitively): we do not let one user act for another.
pub fn decode_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "expected authzid, login and password separated by NUL",
        ));
    };
    let authcid =
        std::str::from_utf8(authcid).map_err(|_| SaslError::Malformed("login is not UTF-8"))?;
    let authzid = std::str::from_utf8(authzid)
        .map_err(|_| SaslError::Malformed("authorization identity is not UTF-8"))?;
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed("empty login or password"));
    }
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(authcid) {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        login: authcid.to_string(),
        password: password.to_vec(),
    })
}

fn login_username(decoded: Vec<u8>) -> Result<String, SaslError> {
    let username =
        String::from_utf8(decoded).map_err(|_| SaslError::Malformed("login is not UTF-8"))?;
    if username.is_empty() || username.contains('\0') {
        return Err(SaslError::Malformed("empty login"));
    }
    Ok(username)
}

/// Settings of the [`AuthLimiter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimitSettings {
    /// Failures from one IP (IPv6: /64) within `window` that ban it for `ban`.
    pub failures_per_ip: u32,
    /// Failures for one login within `window` after which that login is refused from IPs that
    /// failed themselves.
    pub failures_per_login: u32,
    /// How long a failure is remembered after the last one.
    pub window: Duration,
    /// Length of an IP ban.
    pub ban: Duration,
    /// Delay before answering the first failure; doubles with each further one.
    pub base_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Most IPs and most logins tracked (each); the oldest are forgotten first.
    pub max_entries: usize,
}

impl AuthLimitSettings {
    /// From `[limits]`; delays 1 s doubling to 16 s, 65,536 entries per table.
    pub fn from_limits(limits: &Limits) -> Self {
        Self {
            failures_per_ip: limits.auth_failures_per_ip.max(1),
            failures_per_login: limits.auth_failures_per_login.max(1),
            window: limits.auth_failure_window,
            ban: limits.auth_ban,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(16),
            max_entries: 65_536,
        }
    }
}

/// Why the limiter refuses an AUTH attempt before checking the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRefusal {
    /// This IP (or its /64) failed too often; banned until the given instant.
    IpBanned { until: Instant },
    /// This login failed too often, and this IP has failed too.
    LoginThrottled,
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
        };
        Reply::enh(454, (4, 7, 0), text)
    }
}

#[derive(Debug, Clone, Copy)]
struct FailureRecord {
    failures: u32,
    last_failure: Instant,
    banned_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct LimiterState {
    ips: HashMap<IpAddr, FailureRecord>,
    logins: HashMap<String, FailureRecord>,
}

/// Counts AUTH failures per client IP and per login; slows, then bans.
///
/// Design, so that an attacker cannot lock a real user out:
/// - **Per IP** (IPv6 grouped by /64, since one host owns a /64): every failure doubles the
///   delay before `535`; `failures_per_ip` failures ban the IP from AUTH for `ban` (`454`).
/// - **Per login**: failures are counted across IPs, but they only act on IPs that have failed
///   themselves: such an IP gets the larger delay, and once the login reached
///   `failures_per_login` it is refused (`454`) for that login. An IP with no failure of its
///   own — the real user at home — is never delayed or refused because of someone else's
///   attack on her login. A botnet thus gets one undelayed guess per address; the argon2 cost
///   and the per-IP ban bound the rest.
/// - Failures are forgotten `window` after the last one; a success clears that IP's record.
/// - Memory is bounded: at most `max_entries` IPs and logins each; expired entries go first,
///   then the least recently failed.
///
/// Time is passed in (`now`), so tests drive the clock.
#[derive(Debug)]
pub struct AuthLimiter {
    /// Behind a lock so a reload (SIGHUP) can change the limits without forgetting the counters.
    settings: RwLock<AuthLimitSettings>,
    state: Mutex<LimiterState>,
}

impl AuthLimiter {
    pub fn new(settings: AuthLimitSettings) -> Self {
        Self {
            settings: RwLock::new(settings),
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// New limits for the next attempts; failures and bans already counted are kept.
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

    /// Whether `ip` may attempt AUTH now (`login`: when known, after decoding).
    pub fn check(&self, ip: IpAddr, login: Option<&str>, now: Instant) -> Result<(), AuthRefusal> {
        let state = self.lock();
        let ip_record = state.ips.get(&ip_key(ip)).copied();
        if let Some(until) = ip_record.and_then(|r| r.banned_until).filter(|u| *u > now) {
            return Err(AuthRefusal::IpBanned { until });
        }
        let ip_failures = self.live_failures(ip_record, now);
        let login_failures = login
            .map(|l| self.live_failures(state.logins.get(&login_key(l)).copied(), now))
            .unwrap_or(0);
        if ip_failures > 0 && login_failures >= self.settings().failures_per_login {
            return Err(AuthRefusal::LoginThrottled);
        }
        Ok(())
    }

    /// Records a failed attempt; returns how long to wait before answering `535`.
    pub fn record_failure(&self, ip: IpAddr, login: Option<&str>, now: Instant) -> Duration {
        let mut state = self.lock();
        let ip_failures = self.bump(&mut state.ips, ip_key(ip), now, true);
        let login_failures = match login {
            Some(l) => self.bump(&mut state.logins, login_key(l), now, false),
            None => 0,
        };
        self.delay_for(ip_failures.max(login_failures))
    }

    /// Records a successful login: this IP's failures are forgotten.
    pub fn record_success(&self, ip: IpAddr, now: Instant) {
        let mut state = self.lock();
        let key = ip_key(ip);
        let banned = state
            .ips
            .get(&key)
            .and_then(|r| r.banned_until)
            .is_some_and(|until| until > now);
        if !banned {
            state.ips.remove(&key);
        }
    }

    /// Number of IPs and logins currently tracked (for tests and metrics).
    pub fn tracked_entries(&self) -> (usize, usize) {
        let state = self.lock();
        (state.ips.len(), state.logins.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        // A panic elsewhere while holding the lock leaves counters that are still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn live_failures(&self, record: Option<FailureRecord>, now: Instant) -> u32 {
        record
            .filter(|r| !self.expired(r, now))
            .map_or(0, |r| r.failures)
    }

    fn expired(&self, record: &FailureRecord, now: Instant) -> bool {
        let ban_over = record.banned_until.is_none_or(|until| until <= now);
        ban_over && now.saturating_duration_since(record.last_failure) > self.settings().window
    }

    /// Adds a failure to `key`'s record (resetting an expired one) and returns the new count.
    fn bump<K>(&self, map: &mut HashMap<K, FailureRecord>, key: K, now: Instant, ban: bool) -> u32
    where
        K: std::hash::Hash + Eq + Clone,
    {
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
        let settings = self.settings();
        if ban && record.failures >= settings.failures_per_ip {
            record.banned_until = Some(now + settings.ban);
        }
        record.failures
    }

    fn make_room<K: Clone + Eq + std::hash::Hash>(
        &self,
        map: &mut HashMap<K, FailureRecord>,
        now: Instant,
    ) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The dummy hash must be verifiable with the default parameters, or unknown logins would
    /// answer faster than known ones.
    #[test]
    fn dummy_hash_costs_as_much_as_a_real_one() {
        assert_eq!(check_password_hash(DUMMY_HASH), Ok(()));
        let hash = PasswordHash::new(DUMMY_HASH).expect("parses");
        let params = Params::try_from(&hash).expect("params");
        let default = Params::default();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
        assert_eq!(hash.algorithm.as_str(), "argon2id");
    }
}
