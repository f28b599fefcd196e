//! The SMTP command parser (RFC 5321 §4.1, RFC 3207 STARTTLS, RFC 4954 AUTH, RFC 1870 SIZE,
//! RFC 6152 8BITMIME, RFC 3030 BDAT).
//!
//! Input is one command line *without* its CRLF (see [`crate::line`]). Verbs are
//! case-insensitive; paths are parsed by [`crate::path`] and kept with their wire form so replies
//! can quote exactly what the client sent.

use crate::path::{ForwardPath, PathError, ReversePath};

/// An ESMTP parameter such as `SIZE=1000` or `BODY=8BITMIME`. Keyword upper-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub keyword: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        /// The path as written, angle brackets included, for replies and logs.
        wire: String,
        from: ReversePath,
        params: Vec<Param>,
    },
    Rcpt {
        wire: String,
        to: ForwardPath,
        params: Vec<Param>,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn(String),
    Help(Option<String>),
    StartTls,
    Auth {
        /// Upper-cased mechanism name, e.g. `PLAIN`.
        mechanism: String,
        /// The initial response as sent (base64 or `=`), if any.
        initial_response: Option<String>,
    },
}

/// Why a command line was refused; each variant names the reply the session sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// `500 5.5.1`: not a command we know.
    #[error("command unrecognized")]
    Unrecognized,
    /// `501 5.5.4` / `501 5.5.2`: known verb, bad arguments.
    #[error("syntax error in arguments: {0}")]
    Syntax(&'static str),
    /// `501 5.1.3` (RCPT) / `501 5.1.7` (MAIL): the path itself is malformed.
    #[error("bad address syntax: {0}")]
    BadPath(PathError),
    /// `555 5.5.4`: an ESMTP parameter we do not support or with a bad value.
    #[error("unsupported parameter: {0}")]
    BadParam(String),
    /// `500 5.5.2`: the line holds NUL or other forbidden octets.
    #[error("invalid character in command")]
    BadCharacter,
}

/// Parses one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let _ = line;
    todo!("command helper")
}
