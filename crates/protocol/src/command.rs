//! The SMTP command parser (RFC 5321 §4.1, RFC 3207 STARTTLS, RFC 4954 AUTH, RFC 1870 SIZE,
//! RFC 6152 8BITMIME, RFC 3030 BDAT, RFC 3461 DSN, RFC 6531 SMTPUTF8).
//!
//! Input is one command line *without* its CRLF (see [`crate::line`]). Verbs are
//! case-insensitive; paths are parsed by [`crate::path`] and kept with their wire form so replies
//! can quote exactly what the client sent.
//!
//! Octets outside printable ASCII are refused, except well-formed UTF-8 (no controls) in `MAIL`
//! and `RCPT`, where RFC 6531 allows it in addresses. Whether the client may use it — it must
//! have put `SMTPUTF8` on its `MAIL` — is the session's check ([`needs_smtputf8`]).

use std::fmt::Write as _;

use base64::Engine as _;

use crate::dsn::{MailDsn, Notify, Orcpt, RcptDsn, Ret, is_xtext, parse_envid};
use crate::limits::command_line_limit;
use crate::path::{Domain, ForwardPath, Mailbox, PathError, ReversePath};

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

/// Longest EHLO/HELO argument: a domain can be no longer (RFC 5321 §4.5.3.1.2).
const MAX_HELO_ARG: usize = 255;
/// Longest SASL mechanism name (RFC 4422 §3.1).
const MAX_MECHANISM: usize = 20;
/// Longest `SIZE=` value we read (RFC 1870 allows 20 digits).
const MAX_SIZE_DIGITS: usize = 20;

/// What separates words. RFC 5321 says SP; HTAB is taken too, as Postfix does, since clients
/// that send it mean a separator and nothing is gained by refusing them.
const BLANK: [char; 2] = [' ', '\t'];

/// Parses one command line (without CRLF).
///
/// The checks run cheapest first: octets, length, verb, then parameters, and the path last,
/// so a line with several faults reports the most basic one.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = checked_text(line)?;
    if line.len() + 2 > command_line_limit(line.as_bytes()) {
        return Err(CommandError::Syntax("command line too long"));
    }
    let line = line.trim_end_matches(BLANK);
    let (verb, args) = match line.split_once(BLANK) {
        Some((verb, args)) => (verb, args.trim_start_matches(BLANK)),
        None => (line, ""),
    };
    parse_verb(&verb.to_ascii_uppercase(), args)
}

/// The line as text: printable ASCII, space and tab; UTF-8 (without controls) only in `MAIL`
/// and `RCPT` lines.
fn checked_text(line: &[u8]) -> Result<&str, CommandError> {
    let ascii_ok = |b: u8| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b);
    if line.iter().all(|&b| ascii_ok(b)) {
        return std::str::from_utf8(line).map_err(|_| CommandError::BadCharacter);
    }
    let may_hold_utf8 = line.len() > 5
        && (line[..5].eq_ignore_ascii_case(b"MAIL ") || line[..5].eq_ignore_ascii_case(b"RCPT "));
    let text = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacter)?;
    let chars_ok = text.chars().all(|c| {
        if c.is_ascii() {
            ascii_ok(c as u8)
        } else {
            !c.is_control()
        }
    });
    if may_hold_utf8 && chars_ok {
        Ok(text)
    } else {
        Err(CommandError::BadCharacter)
    }
}

fn parse_verb(verb: &str, args: &str) -> Result<Command, CommandError> {
    match verb {
        "EHLO" => helo_argument(args).map(Command::Ehlo),
        "HELO" => helo_argument(args).map(Command::Helo),
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_argument(args, Command::Data),
        "BDAT" => parse_bdat(args),
        "RSET" => no_argument(args, Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_argument(args, Command::Quit),
        "VRFY" => required_argument(args).map(Command::Vrfy),
        "EXPN" => required_argument(args).map(Command::Expn),
        "HELP" => Ok(Command::Help((!args.is_empty()).then(|| args.to_owned()))),
        "STARTTLS" => no_argument(args, Command::StartTls),
        "AUTH" => parse_auth(args),
        _ => Err(CommandError::Unrecognized),
    }
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(BLANK).filter(|w| !w.is_empty())
}

fn no_argument(args: &str, command: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(CommandError::Syntax("this command takes no argument"))
    }
}

fn required_argument(args: &str) -> Result<String, CommandError> {
    if args.is_empty() {
        Err(CommandError::Syntax("argument required"))
    } else {
        Ok(args.to_owned())
    }
}

/// Lenient on purpose, as Postfix is: many real clients greet with a bare host name, an
/// underscore or a numeric name, and refusing them gains nothing. Spaces and anything outside
/// printable ASCII are still refused.
fn helo_argument(args: &str) -> Result<String, CommandError> {
    if args.is_empty() {
        return Err(CommandError::Syntax(
            "a domain or address literal is required",
        ));
    }
    if args.len() > MAX_HELO_ARG {
        return Err(CommandError::Syntax("domain too long"));
    }
    let valid = if let Some(inner) = args.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(is_literal_content)
    } else {
        args.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if valid {
        Ok(args.to_owned())
    } else {
        Err(CommandError::Syntax("invalid domain or address literal"))
    }
}

/// RFC 5321 `dcontent`, which also covers the IPv4 and `IPv6:` forms.
fn is_literal_content(inner: &str) -> bool {
    !inner.is_empty() && inner.bytes().all(|b| matches!(b, 33..=90 | 94..=126))
}

fn parse_mail(args: &str) -> Result<Command, CommandError> {
    let (wire, rest) = split_path(args, "FROM:")?;
    let params = parse_params(rest, check_mail_param)?;
    let from = crate::path::parse_reverse_path(wire).map_err(CommandError::BadPath)?;
    Ok(Command::Mail {
        wire: wire.to_owned(),
        from,
        params,
    })
}

fn parse_rcpt(args: &str) -> Result<Command, CommandError> {
    let (wire, rest) = split_path(args, "TO:")?;
    let params = parse_params(rest, check_rcpt_param)?;
    let to = crate::path::parse_forward_path(wire).map_err(CommandError::BadPath)?;
    Ok(Command::Rcpt {
        wire: wire.to_owned(),
        to,
        params,
    })
}

/// Splits `FROM:<path> params` into the bracketed path and the parameter text.
///
/// The closing `>` is found with quotes in mind: `<"a b>c"@x.test>` is one path, so a quoted
/// local part cannot smuggle text into the parameters or cut the path short.
fn split_path<'a>(args: &'a str, keyword: &str) -> Result<(&'a str, &'a str), CommandError> {
    let after = match args.get(..keyword.len()) {
        Some(head) if head.eq_ignore_ascii_case(keyword) => &args[keyword.len()..],
        _ => return Err(CommandError::Syntax("expected FROM:<path> or TO:<path>")),
    };
    let path = after.trim_start_matches(BLANK);
    if path.is_empty() {
        return Err(CommandError::Syntax("path required"));
    }
    if !path.starts_with('<') {
        return Err(CommandError::BadPath(PathError::MissingBrackets));
    }
    let end = closing_bracket(path).ok_or(CommandError::BadPath(PathError::MissingBrackets))?;
    let (wire, rest) = path.split_at(end + 1);
    if !rest.is_empty() && !rest.starts_with(BLANK) {
        return Err(CommandError::Syntax(
            "text after the path must be parameters",
        ));
    }
    Ok((wire, rest))
}

/// Index of the `>` closing the path that opens `text`, skipping quoted strings (with their
/// backslash escapes).
fn closing_bracket(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in text.bytes().enumerate().skip(1) {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => quoted = !quoted,
            (false, _, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits `KEYWORD[=VALUE]` parameters (any number of spaces between them), checks their
/// syntax, refuses duplicates, and hands each to `check` for the verb's own rules.
fn parse_params(
    text: &str,
    check: impl Fn(&mut Param) -> Result<(), CommandError>,
) -> Result<Vec<Param>, CommandError> {
    let mut params: Vec<Param> = Vec::new();
    for token in words(text) {
        let mut param = parse_param(token)?;
        if params.iter().any(|p| p.keyword == param.keyword) {
            return Err(CommandError::BadParam(param.keyword));
        }
        check(&mut param)?;
        params.push(param);
    }
    Ok(params)
}

/// RFC 5321 §4.1.2 `esmtp-param`.
fn parse_param(token: &str) -> Result<Param, CommandError> {
    let (keyword, value) = match token.split_once('=') {
        Some((keyword, value)) => (keyword, Some(value)),
        None => (token, None),
    };
    let keyword_ok = keyword.starts_with(|c: char| c.is_ascii_alphanumeric())
        && keyword
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !keyword_ok {
        return Err(CommandError::Syntax("invalid parameter keyword"));
    }
    let keyword = keyword.to_ascii_uppercase();
    if value.is_some_and(|v| v.is_empty() || v.contains('=')) {
        return Err(CommandError::BadParam(keyword));
    }
    Ok(Param {
        keyword,
        value: value.map(str::to_owned),
    })
}

fn check_mail_param(param: &mut Param) -> Result<(), CommandError> {
    let value = param.value.as_deref().unwrap_or("");
    let ok = match param.keyword.as_str() {
        "SIZE" => (1..=MAX_SIZE_DIGITS).contains(&value.len()) && is_digits(value),
        "BODY" => {
            let body = value.to_ascii_uppercase();
            let ok = body == "7BIT" || body == "8BITMIME";
            param.value = Some(body);
            ok
        }
        "AUTH" => value == "<>" || is_xtext(value),
        "SMTPUTF8" => param.value.is_none(),
        "RET" => Ret::parse(value).is_some(),
        "ENVID" => parse_envid(value).is_some(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(CommandError::BadParam(param.keyword.clone()))
    }
}

/// RCPT parameters: RFC 3461 `NOTIFY` and `ORCPT`.
fn check_rcpt_param(param: &mut Param) -> Result<(), CommandError> {
    let value = param.value.as_deref().unwrap_or("");
    let ok = match param.keyword.as_str() {
        "NOTIFY" => Notify::parse(value).is_some(),
        "ORCPT" => Orcpt::parse(value).is_some(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(CommandError::BadParam(param.keyword.clone()))
    }
}

fn is_digits(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

fn param_value<'a>(params: &'a [Param], keyword: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|p| p.keyword == keyword)
        .and_then(|p| p.value.as_deref())
}

/// The RFC 3461 parameters of a parsed `MAIL` (`RET`, `ENVID`).
pub fn mail_dsn(params: &[Param]) -> MailDsn {
    MailDsn {
        ret: param_value(params, "RET").and_then(Ret::parse),
        envid: param_value(params, "ENVID").and_then(parse_envid),
    }
}

/// The RFC 3461 parameters of a parsed `RCPT` (`NOTIFY`, `ORCPT`).
pub fn rcpt_dsn(params: &[Param]) -> RcptDsn {
    RcptDsn {
        notify: param_value(params, "NOTIFY").and_then(Notify::parse),
        orcpt: param_value(params, "ORCPT").and_then(Orcpt::parse),
    }
}

/// Whether a `MAIL` carried the RFC 6531 `SMTPUTF8` parameter.
pub fn has_smtputf8(params: &[Param]) -> bool {
    params.iter().any(|p| p.keyword == "SMTPUTF8")
}

/// Whether a path as written needs SMTPUTF8: it holds UTF-8 (a local part or a U-label).
/// Without `SMTPUTF8` on MAIL such a path is refused (RFC 6531 §3.5: `553 5.6.7`).
pub fn needs_smtputf8(wire: &str) -> bool {
    !wire.is_ascii()
}

fn parse_bdat(args: &str) -> Result<Command, CommandError> {
    let mut words = words(args);
    let size = words
        .next()
        .filter(|w| is_digits(w))
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(CommandError::Syntax("BDAT needs a chunk size"))?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("BDAT takes a size and LAST only")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("BDAT takes a size and LAST only"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(args: &str) -> Result<Command, CommandError> {
    let mut words = words(args);
    let mechanism = words
        .next()
        .filter(|m| is_mechanism(m))
        .ok_or(CommandError::Syntax("AUTH needs a mechanism"))?
        .to_ascii_uppercase();
    let initial_response = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(CommandError::Syntax(
            "AUTH takes a mechanism and one response",
        ));
    }
    if initial_response
        .as_deref()
        .is_some_and(|r| !is_initial_response(r))
    {
        return Err(CommandError::Syntax("initial response must be base64 or ="));
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

/// RFC 4422 §3.1 mechanism name, accepted in any case.
fn is_mechanism(name: &str) -> bool {
    name.len() <= MAX_MECHANISM
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 4954 §4: base64, or `=` for an empty response. Checked here so that garbage is refused
/// as a syntax error before any mechanism sees it.
fn is_initial_response(response: &str) -> bool {
    response == "="
        || base64::engine::general_purpose::STANDARD
            .decode(response)
            .is_ok()
}

impl Command {
    /// The verb, upper-case, for logs and metrics.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Expn(_) => "EXPN",
            Command::Help(_) => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
        }
    }

    /// `MAIL FROM` for a client, with the wire form written from the path so the two agree.
    pub fn mail(from: ReversePath, params: Vec<Param>) -> Command {
        let wire = match &from {
            ReversePath::Null => "<>".to_owned(),
            ReversePath::Path { route, mailbox } => path_wire(route, mailbox),
        };
        Command::Mail { wire, from, params }
    }

    /// `RCPT TO` for a client, with the wire form written from the path so the two agree.
    pub fn rcpt(to: ForwardPath, params: Vec<Param>) -> Command {
        let wire = match &to {
            ForwardPath::Postmaster => "<Postmaster>".to_owned(),
            ForwardPath::Path { route, mailbox } => path_wire(route, mailbox),
        };
        Command::Rcpt { wire, to, params }
    }

    /// The `SIZE=` a client declared on MAIL, saturating: a 20-digit size is over any limit.
    pub fn declared_size(&self) -> Option<u64> {
        let Command::Mail { params, .. } = self else {
            return None;
        };
        let value = params
            .iter()
            .find(|p| p.keyword == "SIZE")?
            .value
            .as_deref()?;
        let size = value.bytes().try_fold(0u64, |acc, b| {
            acc.checked_mul(10)?
                .checked_add(u64::from(b.checked_sub(b'0')?))
        });
        Some(size.unwrap_or(u64::MAX))
    }

    /// The command line a client sends, without CRLF. Paths are written in their `wire` form,
    /// so what the tester builds byte for byte is what goes out.
    pub fn to_line(&self) -> String {
        match self {
            Command::Ehlo(domain) => format!("EHLO {domain}"),
            Command::Helo(domain) => format!("HELO {domain}"),
            Command::Mail { wire, params, .. } => with_params(format!("MAIL FROM:{wire}"), params),
            Command::Rcpt { wire, params, .. } => with_params(format!("RCPT TO:{wire}"), params),
            Command::Bdat { size, last } => {
                format!("BDAT {size}{}", if *last { " LAST" } else { "" })
            }
            Command::Vrfy(arg) => format!("VRFY {arg}"),
            Command::Expn(arg) => format!("EXPN {arg}"),
            Command::Help(Some(arg)) => format!("HELP {arg}"),
            Command::Auth {
                mechanism,
                initial_response: Some(response),
            } => format!("AUTH {mechanism} {response}"),
            Command::Auth { mechanism, .. } => format!("AUTH {mechanism}"),
            _ => self.verb().to_owned(),
        }
    }
}

fn path_wire(route: &[Domain], mailbox: &Mailbox) -> String {
    let mut wire = String::from("<");
    for (i, domain) in route.iter().enumerate() {
        let sep = if i + 1 == route.len() { ':' } else { ',' };
        let _ = write!(wire, "@{domain}{sep}");
    }
    let _ = write!(wire, "{mailbox}>");
    wire
}

fn with_params(mut line: String, params: &[Param]) -> String {
    for param in params {
        line.push(' ');
        line.push_str(&param.keyword);
        if let Some(value) = &param.value {
            line.push('=');
            line.push_str(value);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(args: &str) -> Result<(&str, &str), CommandError> {
        split_path(args, "TO:")
    }

    #[test]
    fn path_split_is_quote_aware() {
        assert_eq!(
            split(r#"TO:<"a b>c"@x.test> NOTIFY=NEVER"#),
            Ok((r#"<"a b>c"@x.test>"#, " NOTIFY=NEVER"))
        );
        assert_eq!(
            split(r#"to:  <"a\"> b"@x.test>"#),
            Ok((r#"<"a\"> b"@x.test>"#, ""))
        );
        assert_eq!(
            split("TO:<a@x.test>>"),
            Err(CommandError::Syntax(
                "text after the path must be parameters"
            ))
        );
        assert_eq!(
            split(r#"TO:<"a>b@x.test"#),
            Err(CommandError::BadPath(PathError::MissingBrackets))
        );
        assert_eq!(
            split("TO:a@x.test"),
            Err(CommandError::BadPath(PathError::MissingBrackets))
        );
        assert_eq!(split("TO:"), Err(CommandError::Syntax("path required")));
        assert!(matches!(
            split("TO <a@x.test>"),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn xtext() {
        assert!(is_xtext("alice+40example.test"));
        assert!(!is_xtext("a+4"));
        assert!(!is_xtext("a+ZZ"));
        assert!(!is_xtext(""));
    }

    #[test]
    fn dsn_parameters_are_read_back() {
        let Ok(Command::Rcpt { params, .. }) =
            parse_command(b"RCPT TO:<b@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bt@x.test")
        else {
            panic!("refused");
        };
        let dsn = rcpt_dsn(&params);
        assert!(dsn.effective_notify().success);
        assert_eq!(dsn.orcpt.map(|o| o.address).as_deref(), Some("b+t@x.test"));
        let Ok(Command::Mail { params, .. }) =
            parse_command(b"MAIL FROM:<a@x.test> RET=HDRS ENVID=Q+2B1 SMTPUTF8")
        else {
            panic!("refused");
        };
        assert_eq!(mail_dsn(&params).ret, Some(Ret::Hdrs));
        assert_eq!(mail_dsn(&params).envid.as_deref(), Some("Q+1"));
        assert!(has_smtputf8(&params));
    }

    #[test]
    fn declared_size_saturates() {
        let mail = |size: &str| Command::Mail {
            wire: "<>".into(),
            from: ReversePath::Null,
            params: vec![Param {
                keyword: "SIZE".into(),
                value: Some(size.into()),
            }],
        };
        assert_eq!(mail("1000").declared_size(), Some(1000));
        assert_eq!(mail("99999999999999999999").declared_size(), Some(u64::MAX));
    }
}
