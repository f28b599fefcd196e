//! Showing text that came from the other side of a connection.
//!
//! A client's AUTH user name, a server's banner, a header of a queued message: any of them may
//! carry CR, LF, ESC or Unicode direction overrides. Written raw into a text log, such a string
//! forges a second log line; printed raw to a terminal, it moves the cursor and redraws what the
//! operator reads. Every string from outside that reaches a log line, a table or a report goes
//! through [`escape_control`] (or the [`Escaped`] wrapper in `tracing` fields) first. JSON output
//! needs nothing more: its encoder escapes control characters itself.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal or a line-oriented log as it is: C0 and C1 controls,
/// DEL, and the invisible Unicode formatting characters that reorder or hide text (bidi
/// embeddings, overrides and isolates, the line and paragraph separators, the BOM).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}')
}

/// `text` with every unsafe character (see [`is_unsafe_char`]) written as an escape: `\r`,
/// `\n`, `\t`; `\x1b` for other ASCII controls; `\u{202e}` for the rest. Backslashes stay as
/// they are: the aim is that nothing from outside can start a line or move a cursor, not a
/// reversible encoding (JSON output is that). Borrowed when nothing needed escaping, the
/// common case.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// Bytes from the wire shown as text: valid UTF-8 as in [`escape_control`], every byte that is
/// not part of valid UTF-8 as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped(&mut out, c);
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    if !is_unsafe_char(c) {
        out.push(c);
        return;
    }
    match c {
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        c if c.is_ascii() => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

/// A `Display` wrapper that escapes as [`escape_control`] does, for `tracing` fields and
/// `format!`: `tracing::info!(login = %Escaped(&name), "…")`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_control(self.0))
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", escape_control(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let text = "alice@example.test ünïcödé [127.0.0.1]";
        assert!(matches!(escape_control(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn a_forged_log_line_stays_on_one_line() {
        let name = "bob\nINFO authenticated client=10.9.9.9\r";
        assert_eq!(
            escape_control(name),
            "bob\\nINFO authenticated client=10.9.9.9\\r"
        );
    }

    #[test]
    fn terminal_escapes_and_direction_overrides_are_visible() {
        assert_eq!(escape_control("\u{1b}[2K\u{1b}[1A"), "\\x1b[2K\\x1b[1A");
        assert_eq!(escape_control("OPEN\u{202e}DESOLC"), "OPEN\\u{202e}DESOLC");
        assert_eq!(escape_control("a\u{7f}b\u{85}c\0"), "a\\x7fb\\u{85}c\\x00");
        assert_eq!(escape_control("\t"), "\\t");
    }

    #[test]
    fn invalid_utf8_bytes_are_shown_as_hex() {
        assert_eq!(escape_bytes(b"ok \xff\xfe\x1b!"), "ok \\xff\\xfe\\x1b!");
        assert_eq!(escape_bytes("é".as_bytes()), "é");
    }

    #[test]
    fn the_display_wrapper_escapes() {
        assert_eq!(format!("{}", Escaped("a\nb")), "a\\nb");
        assert_eq!(format!("{:?}", Escaped("a\nb")), "\"a\\nb\"");
    }
}
