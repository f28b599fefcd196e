//! RFC 5321 §4.1.2 paths, parsed strictly.
//!
//! A path is what sits between the angle brackets of `MAIL FROM:<…>` / `RCPT TO:<…>`. The parser
//! accepts exactly the RFC 5321 grammar (dot-atom or quoted-string local part, domain or address
//! literal, optional source route) within the §4.5.3.1 length limits, and refuses everything else
//! with a [`PathError`] that says what was wrong. It does not decide what an address *means*:
//! that is [`crate::resolve`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A domain: a host name (stored lower-case, ASCII, no trailing dot) or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    Name(String),
    Literal(AddressLiteral),
}

/// `[192.0.2.1]`, `[IPv6:2001:db8::1]` or a general literal `[tag:content]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AddressLiteral {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    General { tag: String, content: String },
}

/// A local part as written on the wire and as it reads once unquoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalPart {
    /// Exactly as received, quotes and backslashes included.
    pub wire: String,
    /// Dequoted value: `"a\"b"` reads `a"b`. Equal to `wire` for a dot-atom.
    pub value: String,
    /// Whether the wire form was a quoted string.
    pub quoted: bool,
}

/// `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub local: LocalPart,
    pub domain: Domain,
}

/// A forward-path (RCPT TO). `<Postmaster>` without a domain is allowed (RFC 5321 §4.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Path {
        /// RFC 821 source route (`@a,@b:`), in order. Kept so the resolver can strip it visibly.
        route: Vec<Domain>,
        mailbox: Mailbox,
    },
}

/// A reverse-path (MAIL FROM). `<>` is the null sender of bounces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Path { route: Vec<Domain>, mailbox: Mailbox },
}

/// Why a path was refused. Each maps to `501 5.1.3` (bad syntax) or `501 5.1.x` in the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must be enclosed in angle brackets")]
    MissingBrackets,
    #[error("path is longer than 256 octets")]
    PathTooLong,
    #[error("local part is longer than 64 octets")]
    LocalPartTooLong,
    #[error("domain is longer than 255 octets")]
    DomainTooLong,
    #[error("empty path where a mailbox is required")]
    Empty,
    #[error("mailbox has no domain")]
    MissingDomain,
    #[error("invalid local part")]
    BadLocalPart,
    #[error("invalid domain")]
    BadDomain,
    #[error("invalid address literal")]
    BadAddressLiteral,
    #[error("invalid source route")]
    BadSourceRoute,
    #[error("invalid character in path")]
    BadCharacter,
}

/// Parses a forward-path including its angle brackets: `<user@example.test>`.
pub fn parse_forward_path(input: &str) -> Result<ForwardPath, PathError> {
    let _ = input;
    todo!("path helper")
}

/// Parses a reverse-path including its angle brackets: `<>` or `<user@example.test>`.
pub fn parse_reverse_path(input: &str) -> Result<ReversePath, PathError> {
    let _ = input;
    todo!("path helper")
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(name) => f.write_str(name),
            Domain::Literal(AddressLiteral::V4(ip)) => write!(f, "[{ip}]"),
            Domain::Literal(AddressLiteral::V6(ip)) => write!(f, "[IPv6:{ip}]"),
            Domain::Literal(AddressLiteral::General { tag, content }) => {
                write!(f, "[{tag}:{content}]")
            }
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local.wire, self.domain)
    }
}
