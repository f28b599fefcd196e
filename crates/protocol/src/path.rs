//! RFC 5321 §4.1.2 paths, parsed strictly.
//!
//! A path is what sits between the angle brackets of `MAIL FROM:<…>` / `RCPT TO:<…>`. The parser
//! accepts exactly the RFC 5321 grammar (dot-atom or quoted-string local part, domain or address
//! literal, optional source route) within the §4.5.3.1 length limits, extended by RFC 6531
//! (SMTPUTF8): local parts may hold UTF-8, and domains may be U-labels. It refuses everything
//! else with a [`PathError`] that says what was wrong. It does not decide what an address
//! *means*: that is [`crate::resolve`].
//!
//! Every host name is stored in its canonical A-label form ([`crate::idn::to_ascii`]):
//! `exämple.test`, `EXÄMPLE.test` and `xn--exmple-cua.test` parse to the same [`Domain`], so no
//! later comparison can tell them apart. UTF-8 is only accepted as such: whether the client
//! may use it (it must have sent `SMTPUTF8` on MAIL) is the session's question, answered with
//! [`ForwardPath::is_ascii`] and friends. Lengths are counted in octets, as RFC 6531 §3.3 says.
//!
//! When several things are wrong, the first check that fails names the error, in this order:
//! angle brackets, characters (printable ASCII, space and UTF-8 letters; no control or
//! invisible formatting characters), source route, local part (length, then
//! syntax), presence of a domain, an extra `@`, domain (length, then syntax), and last the
//! whole path's length, so that a too-long part is reported as such. Two choices stricter than
//! the RFC, both deliberate: an extra `@` outside quotes and literals (`a@b@c`) is
//! [`PathError::BadLocalPart`], and the empty quoted local part `""` is refused.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::limits::{MAX_DOMAIN, MAX_LOCAL_PART, MAX_PATH};

/// A domain: a host name (stored in canonical A-label form: ASCII, lower-case, `xn--` labels
/// for internationalised ones, no trailing dot) or an address literal.
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
    Path {
        route: Vec<Domain>,
        mailbox: Mailbox,
    },
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
///
/// `<>` is refused with [`PathError::Empty`] (a recipient must name a mailbox); `<Postmaster>`
/// (any case) without a domain is [`ForwardPath::Postmaster`] (RFC 5321 §4.1.1.3).
pub fn parse_forward_path(input: &str) -> Result<ForwardPath, PathError> {
    let inner = unbracket(input)?;
    if inner.is_empty() {
        return Err(PathError::Empty);
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok(ForwardPath::Postmaster);
    }
    let (route, mailbox) = parse_route_and_mailbox(inner)?;
    check_path_length(input)?;
    Ok(ForwardPath::Path { route, mailbox })
}

/// Parses a reverse-path including its angle brackets: `<>` or `<user@example.test>`.
///
/// A bare `<postmaster>` is not special here: a sender must be fully qualified
/// ([`PathError::MissingDomain`]).
pub fn parse_reverse_path(input: &str) -> Result<ReversePath, PathError> {
    let inner = unbracket(input)?;
    if inner.is_empty() {
        return Ok(ReversePath::Null);
    }
    let (route, mailbox) = parse_route_and_mailbox(inner)?;
    check_path_length(input)?;
    Ok(ReversePath::Path { route, mailbox })
}

/// Parses a bare mailbox `local@domain` (no brackets, no source route), as written in
/// configuration (`login`, `send_as`) or on a tester's command line.
pub fn parse_mailbox(input: &str) -> Result<Mailbox, PathError> {
    check_characters(input)?;
    parse_mailbox_checked(input)
}

/// Parses a domain or address literal on its own (configuration's `local_domains`, `hostname`).
/// Host names come back lower-case.
pub fn parse_domain(input: &str) -> Result<Domain, PathError> {
    check_characters(input)?;
    parse_domain_checked(input)
}

/// Strips the angle brackets and refuses octets that can never appear in a path.
///
/// The character check runs first, so control and invisible characters are reported as
/// [`PathError::BadCharacter`] whatever else is wrong.
fn unbracket(input: &str) -> Result<&str, PathError> {
    let inner = input
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .ok_or(PathError::MissingBrackets)?;
    check_characters(inner)?;
    Ok(inner)
}

/// Printable US-ASCII, space (legal inside quoted strings only; the grammar below rejects it
/// elsewhere) and non-ASCII characters (RFC 6531 `UTF8-non-ascii`) that are neither controls
/// nor invisible: a zero-width or bidirectional-override character in an address only serves
/// to make two different mailboxes look alike in a log or a Maildir name.
fn check_characters(text: &str) -> Result<(), PathError> {
    let visible = |c: char| match c {
        ' '..='~' => true,
        c if c.is_ascii() => false,
        c => !c.is_control() && !is_invisible(c),
    };
    if text.chars().all(visible) {
        Ok(())
    } else {
        Err(PathError::BadCharacter)
    }
}

/// Format and filler characters that render as nothing (Unicode `Cf`, `Zl`, `Zp`, variation
/// selectors and the Hangul fillers): refused in addresses.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

/// The §4.5.3.1.3 limit, brackets included. Checked after the parts, so a too-long local part
/// or domain is reported as such rather than as a too-long path.
fn check_path_length(input: &str) -> Result<(), PathError> {
    if input.len() > MAX_PATH {
        Err(PathError::PathTooLong)
    } else {
        Ok(())
    }
}

/// `[A-d-l ":"] Mailbox`: a source route starts with `@` (a mailbox never does).
fn parse_route_and_mailbox(inner: &str) -> Result<(Vec<Domain>, Mailbox), PathError> {
    if inner.starts_with('@') {
        let (route, rest) = parse_source_route(inner)?;
        Ok((route, parse_mailbox_checked(rest)?))
    } else {
        Ok((Vec::new(), parse_mailbox_checked(inner)?))
    }
}

/// `A-d-l = At-domain *( "," At-domain )` followed by `:`. Returns the hops and the text after
/// the colon. Any flaw in a hop (bad name, bad literal, empty hop) is
/// [`PathError::BadSourceRoute`]: the route is discarded anyway, so the detail does not matter.
fn parse_source_route(inner: &str) -> Result<(Vec<Domain>, &str), PathError> {
    let mut route = Vec::new();
    let mut rest = inner;
    loop {
        let after_at = rest.strip_prefix('@').ok_or(PathError::BadSourceRoute)?;
        let end = hop_end(after_at).ok_or(PathError::BadSourceRoute)?;
        let hop = parse_domain_checked(&after_at[..end]).map_err(|_| PathError::BadSourceRoute)?;
        route.push(hop);
        let separator = after_at.as_bytes()[end];
        rest = &after_at[end + 1..];
        if separator == b':' {
            return Ok((route, rest));
        }
    }
}

/// Index of the `,` or `:` ending a route hop, skipping over an address literal (whose tag
/// separator is itself a colon). `None` when the route never ends.
fn hop_end(text: &str) -> Option<usize> {
    let start = if text.starts_with('[') {
        text.find(']')? + 1
    } else {
        0
    };
    text[start..].find([',', ':']).map(|offset| start + offset)
}

/// `Mailbox = Local-part "@" ( Domain / address-literal )`, on text whose characters were
/// checked.
fn parse_mailbox_checked(text: &str) -> Result<Mailbox, PathError> {
    let (local_text, domain_text) = split_mailbox(text)?;
    let local = parse_local_part(local_text)?;
    let domain_text = domain_text.ok_or(PathError::MissingDomain)?;
    check_extra_at(domain_text)?;
    let domain = parse_domain_checked(domain_text)?;
    Ok(Mailbox { local, domain })
}

/// Splits at the `@` that ends the local part: the first one after a quoted string, or the
/// first one at all for a dot-atom (atext has no `@`). `None` for the domain when there is no
/// such `@`.
fn split_mailbox(text: &str) -> Result<(&str, Option<&str>), PathError> {
    let local_end = if text.starts_with('"') {
        quoted_end(text).ok_or(PathError::BadLocalPart)?
    } else {
        text.find('@').unwrap_or(text.len())
    };
    let (local, rest) = text.split_at(local_end);
    match rest.strip_prefix('@') {
        Some(domain) => Ok((local, Some(domain))),
        None if rest.is_empty() => Ok((local, None)),
        None => Err(PathError::BadLocalPart),
    }
}

/// Byte index just past the closing quote of a quoted string starting at index 0.
fn quoted_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// A second `@` outside an address literal (`user@other.test@example.test`) means the text
/// before the *last* `@` would be the local part, and an unquoted local part cannot hold `@`:
/// [`PathError::BadLocalPart`]. This is the classic "extra @" trick, refused at the grammar.
fn check_extra_at(domain_text: &str) -> Result<(), PathError> {
    let outside_literal = match domain_text.strip_prefix('[') {
        Some(rest) => rest.find(']').map_or("", |end| &rest[end + 1..]),
        None => domain_text,
    };
    if outside_literal.contains('@') {
        Err(PathError::BadLocalPart)
    } else {
        Ok(())
    }
}

/// `Local-part = Dot-string / Quoted-string`, at most 64 octets as written.
fn parse_local_part(text: &str) -> Result<LocalPart, PathError> {
    if text.len() > MAX_LOCAL_PART {
        return Err(PathError::LocalPartTooLong);
    }
    let value = if text.starts_with('"') {
        dequote(text)?
    } else if is_dot_atom(text) {
        text.to_owned()
    } else {
        return Err(PathError::BadLocalPart);
    };
    Ok(LocalPart {
        wire: text.to_owned(),
        value,
        quoted: text.starts_with('"'),
    })
}

/// Reads a whole quoted string (`"` … `"`, nothing after) and returns its content.
///
/// Refuses the empty string `""`: the grammar allows it, but an empty mailbox name only
/// confuses lookups further down (a deliberate, stricter-than-RFC choice).
fn dequote(text: &str) -> Result<String, PathError> {
    let body = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|body| !body.is_empty())
        .ok_or(PathError::BadLocalPart)?;
    let mut value = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.push(
                chars
                    .next()
                    .filter(|&e| is_quoted_pair_char(e))
                    .ok_or(PathError::BadLocalPart)?,
            ),
            c if is_qtext(c) => value.push(c),
            _ => return Err(PathError::BadLocalPart),
        }
    }
    Ok(value)
}

/// qtextSMTP: `%d32-33 / %d35-91 / %d93-126` (printable ASCII and space but `"` and `\`),
/// and `UTF8-non-ascii` (RFC 6531 §3.3).
fn is_qtext(c: char) -> bool {
    (matches!(c, ' '..='~') && c != '"' && c != '\\') || is_utf8_letter(c)
}

/// A non-ASCII character allowed in an address (RFC 6531 `UTF8-non-ascii`, minus controls and
/// invisible characters).
fn is_utf8_letter(c: char) -> bool {
    !c.is_ascii() && !c.is_control() && !is_invisible(c)
}

/// The octet after `\` in quoted-pairSMTP: `%d32-126`.
fn is_quoted_pair_char(c: char) -> bool {
    matches!(c, ' '..='~')
}

/// RFC 5322 atext, extended by RFC 6532 §3.2 with `UTF8-non-ascii`.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_letter(c)
}

/// `Dot-string = Atom *("." Atom)`: no empty atom, hence no leading, trailing or double dot.
pub fn is_dot_atom(text: &str) -> bool {
    text.split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A domain or address literal, at most 255 octets.
fn parse_domain_checked(text: &str) -> Result<Domain, PathError> {
    if text.len() > MAX_DOMAIN {
        return Err(PathError::DomainTooLong);
    }
    if text.starts_with('[') {
        parse_address_literal(text).map(Domain::Literal)
    } else {
        parse_host_name(text).map(Domain::Name)
    }
}

/// `Domain = sub-domain *("." sub-domain)` (RFC 6531: a sub-domain may be a U-label),
/// stored in canonical A-label form.
///
/// Refused: empty names, a trailing dot, labels over 63 octets, `_`, leading or trailing `-`,
/// and names whose last label is all digits: `user@203.0.113.5` is an IP address written
/// without brackets, not a host name, and some MTAs "helpfully" resolve it. Internationalised
/// names must pass UTS 46 ([`crate::idn::to_ascii`]) and then the same ASCII rules.
fn parse_host_name(text: &str) -> Result<String, PathError> {
    let ascii = crate::idn::to_ascii(text).map_err(|_| PathError::BadDomain)?;
    let labels: Vec<&str> = ascii.split('.').collect();
    let last_is_numeric = labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if last_is_numeric || !labels.iter().all(|l| is_label(l)) {
        return Err(PathError::BadDomain);
    }
    Ok(ascii)
}

/// Whether `text` is a host name as RFC 5321 paths allow it (see [`parse_domain`]'s rules: no
/// trailing dot, LDH labels of 1–63 octets, not all-numeric at the end, at most 255 octets):
/// the one domain grammar, also used for names in the configuration.
pub fn is_host_name(text: &str) -> bool {
    text.len() <= MAX_DOMAIN && parse_host_name(text).is_ok()
}

/// `sub-domain = Let-dig [Ldh-str]`, at most 63 octets.
fn is_label(label: &str) -> bool {
    label.len() <= 63 && is_ldh_str(label)
}

/// Letters, digits and inner hyphens; non-empty.
fn is_ldh_str(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `address-literal = "[" ( IPv4 / IPv6 / General ) "]"`.
fn parse_address_literal(text: &str) -> Result<AddressLiteral, PathError> {
    let content = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .ok_or(PathError::BadAddressLiteral)?;
    let literal = match content.split_once(':') {
        None => parse_dotted_quad(content).map(AddressLiteral::V4),
        Some((tag, rest)) if tag.eq_ignore_ascii_case("IPv6") => {
            rest.parse::<Ipv6Addr>().ok().map(AddressLiteral::V6)
        }
        Some((tag, rest)) => parse_general_literal(tag, rest),
    };
    literal.ok_or(PathError::BadAddressLiteral)
}

/// Four decimal octets, each 0–255, no leading zeros (`[192.0.2.01]` is refused: some stacks
/// read it as octal).
fn parse_dotted_quad(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        *octet = parse_decimal_octet(parts.next()?)?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// `Snum = 1*3DIGIT`, value ≤ 255, without leading zeros.
fn parse_decimal_octet(text: &str) -> Option<u8> {
    let digits_ok = (1..=3).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if digits_ok && !leading_zero {
        text.parse().ok()
    } else {
        None
    }
}

/// `General-address-literal = Standardized-tag ":" 1*dcontent`, dcontent = `%d33-90 / %d94-126`.
fn parse_general_literal(tag: &str, content: &str) -> Option<AddressLiteral> {
    let dcontent_ok =
        !content.is_empty() && content.bytes().all(|b| matches!(b, 33..=90 | 94..=126));
    (is_ldh_str(tag) && dcontent_ok).then(|| AddressLiteral::General {
        tag: tag.to_owned(),
        content: content.to_owned(),
    })
}

/// Renders a dequoted local-part value in its shortest valid wire form: as is when it is a
/// dot-atom, else as a quoted string with `"` and `\` escaped (`john doe` → `"john doe"`).
///
/// `None` when the value cannot be written in RFC 5321/6531 at all (empty, or control or
/// invisible characters). The result can still exceed 64 octets; [`LocalPart::from_value`]
/// checks that.
pub fn quote_local_part(value: &str) -> Option<String> {
    if is_dot_atom(value) {
        return Some(value.to_owned());
    }
    let writable = |c: char| is_quoted_pair_char(c) || is_utf8_letter(c);
    if value.is_empty() || !value.chars().all(writable) {
        return None;
    }
    let mut wire = String::with_capacity(value.len() + 2);
    wire.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            wire.push('\\');
        }
        wire.push(c);
    }
    wire.push('"');
    Some(wire)
}

impl LocalPart {
    /// Builds a local part from its dequoted value, choosing the canonical wire form
    /// ([`quote_local_part`]) and enforcing the 64-octet limit on it.
    pub fn from_value(value: &str) -> Result<LocalPart, PathError> {
        let wire = quote_local_part(value).ok_or(PathError::BadLocalPart)?;
        if wire.len() > MAX_LOCAL_PART {
            return Err(PathError::LocalPartTooLong);
        }
        Ok(LocalPart {
            quoted: wire.starts_with('"'),
            wire,
            value: value.to_owned(),
        })
    }

    /// The canonical wire form of [`Self::value`]: `"\a"` and `a` both render `a`.
    pub fn canonical(&self) -> String {
        quote_local_part(&self.value).unwrap_or_else(|| self.wire.clone())
    }
}

impl Mailbox {
    /// `local@domain` with the local part in canonical form (re-quoted only when needed).
    pub fn canonical(&self) -> String {
        format!("{}@{}", self.local.canonical(), self.domain)
    }

    /// The mailbox as a path, angle brackets included: `<"john doe"@x.test>`. Parses back to an
    /// equal mailbox whenever the original did (canonical quoting is never longer).
    pub fn to_path(&self) -> String {
        format!("<{}>", self.canonical())
    }
}

impl ForwardPath {
    /// The mailbox, or `None` for a bare `<Postmaster>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ForwardPath::Postmaster => None,
            ForwardPath::Path { mailbox, .. } => Some(mailbox),
        }
    }

    /// The source route as written (empty without one).
    pub fn route(&self) -> &[Domain] {
        match self {
            ForwardPath::Postmaster => &[],
            ForwardPath::Path { route, .. } => route,
        }
    }
}

impl ReversePath {
    /// The mailbox, or `None` for the null sender `<>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Path { mailbox, .. } => Some(mailbox),
        }
    }

    /// True for `<>`.
    pub fn is_null(&self) -> bool {
        matches!(self, ReversePath::Null)
    }

    /// The source route as written (empty without one).
    pub fn route(&self) -> &[Domain] {
        match self {
            ReversePath::Null => &[],
            ReversePath::Path { route, .. } => route,
        }
    }
}

/// Writes `<@a,@b:mailbox>` (the route only when present).
fn write_path(f: &mut fmt::Formatter<'_>, route: &[Domain], mailbox: &Mailbox) -> fmt::Result {
    f.write_str("<")?;
    for (i, hop) in route.iter().enumerate() {
        let separator = if i + 1 == route.len() { ':' } else { ',' };
        write!(f, "@{hop}{separator}")?;
    }
    write!(f, "{}>", mailbox.canonical())
}

/// Canonical path form, brackets included; parses back to an equal value.
impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Path { route, mailbox } => write_path(f, route, mailbox),
        }
    }
}

/// Canonical path form, brackets included; parses back to an equal value.
impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Path { route, mailbox } => write_path(f, route, mailbox),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_reverse_path_and_bare_postmaster_sender() {
        assert_eq!(parse_reverse_path("<>"), Ok(ReversePath::Null));
        assert_eq!(
            parse_reverse_path("<postmaster>"),
            Err(PathError::MissingDomain)
        );
        assert_eq!(parse_forward_path("<>"), Err(PathError::Empty));
    }

    #[test]
    fn reverse_path_keeps_source_route() {
        let path = parse_reverse_path("<@Relay.Test:a@b.test>").expect("valid path");
        assert_eq!(path.route(), &[Domain::Name("relay.test".into())]);
        assert_eq!(path.to_string(), "<@relay.test:a@b.test>");
    }

    #[test]
    fn parse_domain_reaches_its_own_length_limit() {
        let label = "a".repeat(63);
        let d255 = format!("{label}.{label}.{label}.{}.ab", "d".repeat(60));
        let d256 = format!("{label}.{label}.{label}.{}.ab", "d".repeat(61));
        assert!(parse_domain(&d255).is_ok());
        assert_eq!(parse_domain(&d256), Err(PathError::DomainTooLong));
        assert_eq!(
            parse_domain("Example.TEST"),
            Ok(Domain::Name("example.test".into()))
        );
    }

    #[test]
    fn parse_mailbox_without_brackets() {
        let mailbox = parse_mailbox("Alice@Example.test").expect("valid mailbox");
        assert_eq!(mailbox.canonical(), "Alice@example.test");
        assert_eq!(parse_mailbox("<a@b.test>"), Err(PathError::BadLocalPart));
    }

    #[test]
    fn rendering_requotes_only_when_needed() {
        let path = parse_forward_path(r#"<"john doe"@X.test>"#).expect("valid path");
        let mailbox = path.mailbox().expect("has a mailbox");
        assert_eq!(mailbox.to_path(), r#"<"john doe"@x.test>"#);
        assert_eq!(quote_local_part("a\"b").as_deref(), Some(r#""a\"b""#));
        assert_eq!(
            quote_local_part("plain.atom").as_deref(),
            Some("plain.atom")
        );
        assert_eq!(quote_local_part(""), None);
        assert_eq!(quote_local_part("jürgen").as_deref(), Some("jürgen"));
        assert_eq!(
            quote_local_part("jürgen müller").as_deref(),
            Some("\"jürgen müller\"")
        );
        assert_eq!(quote_local_part("a\u{200b}b"), None);
    }

    #[test]
    fn local_part_from_value_enforces_the_wire_limit() {
        assert!(LocalPart::from_value(&"a".repeat(64)).is_ok());
        assert_eq!(
            LocalPart::from_value(&format!("{} ", "a".repeat(62))),
            Err(PathError::LocalPartTooLong)
        );
    }

    #[test]
    fn display_round_trips_through_the_parser() {
        for input in [
            "<Postmaster>",
            "<@a,@[192.0.2.1]:\"x y\"@[IPv6:2001:db8::1]>",
            "<u@[tag:content]>",
        ] {
            let path = parse_forward_path(input).expect("valid path");
            assert_eq!(parse_forward_path(&path.to_string()), Ok(path));
        }
    }
}
