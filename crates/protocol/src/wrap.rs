//! Long lines on the way out: fold header fields and wrap body lines to at most 998 octets
//! (RFC 5321 §4.5.3.1.6, RFC 5322 §2.1.1), as Postfix's `smtp_line_length_limit` does.
//!
//! relayward accepts lines up to [`crate::limits::MAX_ACCEPTED_TEXT_LINE`] octets, but sends
//! none longer than RFC 5321 allows, so a strict next hop never refuses what we took:
//! - a header line is folded at the last space or tab that keeps it within the limit, which
//!   RFC 5322 unfolding undoes exactly (the field's value is unchanged); a header line without
//!   any such blank is broken by inserting CRLF SP, as Postfix does;
//! - a body line is broken by inserting CRLF SP, as Postfix does: the leading space keeps a
//!   piece from ever starting a MIME boundary (`--…`) or an SMTP dot, and base64 and
//!   format=flowed readers ignore it.
//!
//! Breaks never fall inside a UTF-8 sequence.

use std::borrow::Cow;

/// Longest line sent, CRLF excluded (1000 with it).
pub const MAX_LINE_OUT: usize = 998;

/// `message` with every line at most [`MAX_LINE_OUT`] octets; borrowed when nothing had to
/// change (the common case costs one scan).
pub fn wrap_long_lines(message: &[u8]) -> Cow<'_, [u8]> {
    if !has_long_line(message) {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / MAX_LINE_OUT * 3 + 3);
    let mut in_header = true;
    for line in split_lines(message) {
        let (text, ending) = split_ending(line);
        if in_header && text.is_empty() {
            in_header = false;
        }
        if text.len() <= MAX_LINE_OUT {
            out.extend_from_slice(line);
            continue;
        }
        if in_header {
            fold_header_line(text, &mut out);
        } else {
            break_line(text, &mut out);
        }
        out.extend_from_slice(ending);
    }
    Cow::Owned(out)
}

/// Whether some line (CRLF excluded) is longer than [`MAX_LINE_OUT`].
pub fn has_long_line(message: &[u8]) -> bool {
    split_lines(message).any(|line| split_ending(line).0.len() > MAX_LINE_OUT)
}

/// Lines with their endings (LF, CRLF); the last one may have none.
fn split_lines(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message.split_inclusive(|&b| b == b'\n')
}

fn split_ending(line: &[u8]) -> (&[u8], &[u8]) {
    let cut = if line.ends_with(b"\r\n") {
        line.len() - 2
    } else if line.ends_with(b"\n") {
        line.len() - 1
    } else {
        line.len()
    };
    line.split_at(cut)
}

/// Folds one header line: before the last blank that keeps each piece within the limit (never
/// inside the field name, never leaving a line of blanks only), or with an inserted CRLF SP
/// where there is no such blank.
fn fold_header_line(text: &[u8], out: &mut Vec<u8>) {
    let mut rest: Cow<'_, [u8]> = Cow::Borrowed(text);
    let mut earliest = text.iter().position(|&b| b == b':').map_or(1, |i| i + 1);
    while rest.len() > MAX_LINE_OUT {
        let blank = rest[..=MAX_LINE_OUT]
            .iter()
            .enumerate()
            .skip(earliest.max(1))
            .rev()
            .find(|&(_, &b)| b == b' ' || b == b'\t')
            .map(|(i, _)| i)
            .filter(|&at| rest[..at].iter().any(|&b| b != b' ' && b != b'\t'));
        rest = match blank {
            Some(at) => {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(b"\r\n");
                Cow::Owned(rest[at..].to_vec())
            }
            None => {
                let at = char_boundary(&rest, MAX_LINE_OUT);
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(b"\r\n");
                // The inserted space starts the next piece and counts towards its length.
                Cow::Owned([b" ", &rest[at..]].concat())
            }
        };
        earliest = 1;
    }
    out.extend_from_slice(&rest);
}

/// Breaks a body line into pieces of at most the limit, each after the first starting with
/// the inserted space.
fn break_line(text: &[u8], out: &mut Vec<u8>) {
    let at = char_boundary(text, MAX_LINE_OUT);
    out.extend_from_slice(&text[..at]);
    let mut rest = &text[at..];
    while !rest.is_empty() {
        out.extend_from_slice(b"\r\n ");
        let at = char_boundary(rest, MAX_LINE_OUT - 1);
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at..];
    }
}

/// The largest cut at most `limit` that does not split a UTF-8 sequence (at least 1, so the
/// loop always advances even on garbage).
fn char_boundary(bytes: &[u8], limit: usize) -> usize {
    if bytes.len() <= limit {
        return bytes.len();
    }
    let mut at = limit;
    while at > 1 && (bytes[at] & 0b1100_0000) == 0b1000_0000 {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lines_are_borrowed_untouched() {
        let message = b"Subject: hi\r\n\r\nbody\r\n";
        assert!(matches!(wrap_long_lines(message), Cow::Borrowed(_)));
    }

    #[test]
    fn utf8_is_never_split() {
        let body = "é".repeat(800);
        let message = format!("A: b\r\n\r\n{body}\r\n");
        let wrapped = wrap_long_lines(message.as_bytes());
        let text = std::str::from_utf8(&wrapped).expect("still UTF-8");
        assert!(text.lines().all(|l| l.len() <= MAX_LINE_OUT));
    }
}
