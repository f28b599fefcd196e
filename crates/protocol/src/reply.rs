//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034).
//!
//! The server builds replies with [`Reply::new`] and writes [`Reply::to_wire`]; clients (the
//! tester, the delivery agent) feed received lines to [`ReplyParser`], which assembles
//! multi-line replies and judges on codes, never on substrings of the text.

use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`, e.g. `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Permanent (class 5): the same attempt will never succeed.
    pub fn is_permanent(self) -> bool {
        self.class == 5
    }

    /// The same condition, reported as temporary: `5.y.z` becomes `4.y.z` (RFC 3463 §2: the
    /// subject and detail keep their meaning across classes). Anything else is unchanged.
    pub fn as_transient(self) -> Self {
        if self.is_permanent() {
            Self { class: 4, ..self }
        } else {
            self
        }
    }

    /// Parses `2.1.5` at the start of a reply text. Returns the code and the rest of the text.
    pub fn parse_prefix(text: &str) -> Option<(EnhancedCode, &str)> {
        let (token, rest) = match text.find(' ') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, ""),
        };
        let mut parts = token.split('.');
        let class: u8 = parse_digits(parts.next()?, 1)?;
        let subject: u16 = parse_digits(parts.next()?, 3)?;
        let detail: u16 = parse_digits(parts.next()?, 3)?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some((EnhancedCode::new(class, subject, detail), rest))
    }
}

fn parse_digits<T: std::str::FromStr>(s: &str, max_len: usize) -> Option<T> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `(class, subject, detail)`, as `Reply::enh` takes it: `Failure::local((4, 4, 2), …)`.
impl From<(u8, u16, u16)> for EnhancedCode {
    fn from((class, subject, detail): (u8, u16, u16)) -> Self {
        Self::new(class, subject, detail)
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced code and one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    /// Text lines without code, enhanced code or CRLF. Never empty.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply. `text` must not contain CR or LF; any that slip in are replaced by
    /// spaces so that no caller can inject a reply line.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            lines: vec![sanitize(text.into())],
        }
    }

    /// A reply with an enhanced code, the common case: `Reply::enh(550, (5, 1, 1), "...")`.
    pub fn enh(
        code: u16,
        (class, subject, detail): (u8, u16, u16),
        text: impl Into<String>,
    ) -> Self {
        Self::new(code, Some(EnhancedCode::new(class, subject, detail)), text)
    }

    /// A multi-line reply (EHLO, HELP).
    pub fn multiline(code: u16, enhanced: Option<EnhancedCode>, lines: Vec<String>) -> Self {
        let mut lines: Vec<String> = lines.into_iter().map(sanitize).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Self {
            code,
            enhanced,
            lines,
        }
    }

    pub fn is_positive_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }
    pub fn is_positive_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The whole text, lines joined by a space (for logs and error messages).
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The reply as sent on the wire, every line CRLF-terminated.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.push_str(&self.code.to_string());
            out.push(sep);
            // Enhanced codes go on every line (RFC 2034 §4), except that EHLO keyword lines
            // are built without one.
            if let Some(enh) = self.enhanced {
                out.push_str(&enh.to_string());
                if !line.is_empty() {
                    out.push(' ');
                }
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(enh) => write!(f, "{} {} {}", self.code, enh, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

fn sanitize(text: String) -> String {
    if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], " ")
    } else {
        text
    }
}

/// Why a received reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line is not \"NNN text\": {0:?}")]
    Malformed(String),
    #[error("reply line code {got} differs from the first line's code {expected}")]
    CodeChanged { expected: u16, got: u16 },
    #[error("reply has more than {0} lines")]
    TooManyLines(usize),
}

/// Assembles replies from received lines (without CRLF). Client side.
///
/// Lenient where real servers are sloppy (a missing text after the code, a non-standard
/// enhanced code) but strict on what decides: the three-digit code and the line continuation.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// Longest multi-line reply we accept; a server streaming endless `250-` lines is hostile.
    pub const MAX_LINES: usize = 256;

    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line. Returns `Ok(Some(reply))` when the line completed a reply.
    pub fn feed(&mut self, line: &str) -> Result<Option<Reply>, ReplyError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed(line.to_string()));
        }
        let code: u16 = line[..3]
            .parse()
            .map_err(|_| ReplyError::Malformed(line.to_string()))?;
        if !(200..600).contains(&code) {
            return Err(ReplyError::Malformed(line.to_string()));
        }
        let (last, text) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(ReplyError::Malformed(line.to_string())),
        };
        if let Some(expected) = self.code
            && expected != code
        {
            self.reset();
            return Err(ReplyError::CodeChanged {
                expected,
                got: code,
            });
        }
        self.code = Some(code);
        self.lines.push(text.to_string());
        if self.lines.len() > Self::MAX_LINES {
            self.reset();
            return Err(ReplyError::TooManyLines(Self::MAX_LINES));
        }
        if !last {
            return Ok(None);
        }
        let lines = std::mem::take(&mut self.lines);
        self.code = None;
        Ok(Some(split_enhanced(code, lines)))
    }

    fn reset(&mut self) {
        self.code = None;
        self.lines.clear();
    }
}

/// Moves an enhanced code found on the first line out of the text, when it is consistent with
/// the basic code's class (RFC 3463 §2: the classes must agree).
fn split_enhanced(code: u16, mut lines: Vec<String>) -> Reply {
    let class = (code / 100) as u8;
    let found = EnhancedCode::parse_prefix(&lines[0]).filter(|(e, _)| e.class == class);
    let Some((enhanced, _)) = found else {
        return Reply {
            code,
            enhanced: None,
            lines,
        };
    };
    let prefix = enhanced.to_string();
    for line in &mut lines {
        if let Some(rest) = line.strip_prefix(&prefix) {
            *line = rest.strip_prefix(' ').unwrap_or(rest).to_string();
        }
    }
    Reply {
        code,
        enhanced: Some(enhanced),
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code_round_trips() {
        let reply = Reply::enh(554, (5, 7, 1), "<a@b.test>: Relay access denied");
        assert_eq!(
            reply.to_wire(),
            "554 5.7.1 <a@b.test>: Relay access denied\r\n"
        );
        let mut parser = ReplyParser::new();
        let parsed = parser
            .feed("554 5.7.1 <a@b.test>: Relay access denied")
            .unwrap();
        assert_eq!(parsed, Some(reply));
    }

    #[test]
    fn multiline_reply_needs_its_last_line() {
        let mut parser = ReplyParser::new();
        assert_eq!(parser.feed("250-mx.example.test").unwrap(), None);
        assert_eq!(parser.feed("250-PIPELINING").unwrap(), None);
        let reply = parser.feed("250 STARTTLS").unwrap().unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.lines, ["mx.example.test", "PIPELINING", "STARTTLS"]);
        assert_eq!(reply.enhanced, None);
    }

    #[test]
    fn text_injection_is_neutralised() {
        let reply = Reply::new(250, None, "ok\r\n250 fake");
        assert_eq!(reply.to_wire(), "250 ok  250 fake\r\n");
    }

    #[test]
    fn malformed_and_inconsistent_lines_are_errors() {
        let mut parser = ReplyParser::new();
        assert!(parser.feed("hello").is_err());
        assert!(parser.feed("25").is_err());
        assert!(parser.feed("250x ok").is_err());
        assert!(parser.feed("999 ok").is_err());
        parser.feed("250-a").unwrap();
        assert_eq!(
            parser.feed("550 b"),
            Err(ReplyError::CodeChanged {
                expected: 250,
                got: 550
            })
        );
    }

    #[test]
    fn enhanced_code_of_another_class_stays_text() {
        let mut parser = ReplyParser::new();
        let reply = parser.feed("250 5.7.1 odd").unwrap().unwrap();
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.text(), "5.7.1 odd");
    }

    #[test]
    fn a_permanent_code_reported_as_transient_keeps_its_meaning() {
        assert_eq!(
            EnhancedCode::new(5, 7, 8).as_transient(),
            EnhancedCode::new(4, 7, 8)
        );
        assert_eq!(
            EnhancedCode::new(4, 4, 1).as_transient(),
            EnhancedCode::new(4, 4, 1)
        );
        assert_eq!(
            EnhancedCode::new(2, 0, 0).as_transient(),
            EnhancedCode::new(2, 0, 0)
        );
        assert!(EnhancedCode::from((5, 1, 10)).is_permanent());
        assert_eq!(EnhancedCode::from((5, 1, 10)).to_string(), "5.1.10");
    }

    #[test]
    fn bare_code_is_a_reply() {
        let mut parser = ReplyParser::new();
        let reply = parser.feed("220").unwrap().unwrap();
        assert_eq!(reply.code, 220);
        assert_eq!(reply.lines, [""]);
    }
}
