//! Authentication: password hashes, the user database, SASL PLAIN/LOGIN decoding, and (in
//! [`limiter`]) the bounds on what guessing passwords can cost us.
//!
//! The session drives it in this order:
//! 1. [`AuthLimiter::check`] with the client address (banned → [`AuthRefusal::reply`],
//!    `454 4.7.0`);
//! 2. [`SaslExchange`] turns the AUTH line and the `334` responses into [`Credentials`];
//! 3. [`AuthLimiter::begin`] with the login: refused, or admitted and counted as a failure
//!    until the password proves otherwise, so parallel guesses count against each other;
//! 4. [`AuthLimiter::verification_slot`]: one of the few password checks that may run at
//!    once (none free in time → `454 4.7.0`, the attempt withdrawn);
//! 5. [`UserDb::verify`] (argon2 on a blocking thread) → `Some(Login)` or `None`;
//! 6. on `None`: [`AuthLimiter::failed`], sleep the returned delay, answer
//!    [`bad_credentials_reply`] (`535 5.7.8`); on success: [`AuthLimiter::succeeded`].

mod checks;
mod limiter;

pub use checks::{CheckSlot, PasswordChecks};
pub use limiter::{
    Attempt, AuthBan, AuthClient, AuthLimitSettings, AuthLimiter, AuthRefusal, ip_key,
};

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use relayward_protocol::reply::Reply;

use crate::config::Config;

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

pub use relayward_config::{HashError, check_password_hash, hash_password};

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

    /// Whether `login` is the same account in `newer` (a reloaded configuration): still there,
    /// with the same password hash. A session authenticated under the old configuration keeps
    /// its login only then — removing a user, or changing a stolen password, takes effect in
    /// open sessions too, not only in new ones.
    pub fn same_account_in(&self, newer: &UserDb, login: &str) -> bool {
        let key = login.to_ascii_lowercase();
        match (self.users.get(&key), newer.users.get(&key)) {
            (Some((_, before)), Some((_, now))) => before == now,
            _ => false,
        }
    }

    /// Checks a login (case-insensitive) and password in `slot` (a [`CheckSlot`]), against a
    /// dummy hash for unknown logins (same cost, same timing).
    pub async fn verify(
        &self,
        login: &str,
        password: &[u8],
        slot: &mut CheckSlot<'_>,
    ) -> Option<Login> {
        let entry = self.users.get(&login.to_ascii_lowercase()).cloned();
        let hash = entry
            .as_ref()
            .map_or_else(|| DUMMY_HASH.to_string(), |(_, hash)| hash.clone());
        let matched = slot.matches(hash, password.to_vec()).await;
        entry.filter(|_| matched).map(|(login, _)| login)
    }
}

/// `535 5.7.8`: the reply for wrong credentials (RFC 4954 §6). Never says whether the login
/// or the password was wrong.
pub fn bad_credentials_reply() -> Reply {
    Reply::enh(535, (5, 7, 8), "Authentication credentials invalid")
}

/// The longest AUTH response line we read (RFC 4954 §4: 12,288 octets).
pub const MAX_SASL_LINE: usize = 12_288;

/// The longest login a `[[user]]` may have (the configuration refuses longer ones). A longer
/// SASL login can never succeed; it is refused before the limiter, which keeps the logins of
/// failed attempts, would hold it (a response line allows a 9 KiB one).
pub const MAX_LOGIN: usize = 256;

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
    /// A bare CR or LF in a response: the framing is lost, as in a command line, and the
    /// session closes.
    #[error("bare CR or LF in a response")]
    BareLineEnding,
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
            SaslError::BareLineEnding => Reply::enh(
                521,
                (5, 5, 2),
                "Bare CR or LF received; closing (SMTP smuggling defence)",
            ),
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
    if authcid.len() > MAX_LOGIN {
        return Err(SaslError::Malformed("login longer than 256 octets"));
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
    if username.len() > MAX_LOGIN {
        return Err(SaslError::Malformed("login longer than 256 octets"));
    }
    Ok(username)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{Params, PasswordHash};

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
