//! 8BITMIME downgrade (RFC 6152 §3): making an 8-bit message 7-bit clean for a next hop that
//! did not announce 8BITMIME, as Postfix does.
//!
//! The message structure is read with `mail-parser`; every MIME leaf whose body holds 8-bit
//! octets is re-encoded from its raw octets — `text/*` as quoted-printable, anything else as
//! base64 — and its `Content-Transfer-Encoding` replaced. A `message/rfc822` part is
//! downgraded recursively and marked `7bit`. A message without MIME headers gets
//! `MIME-Version: 1.0` and a `text/plain` type (charset `utf-8` when its body is UTF-8, else
//! `unknown-8bit`, RFC 1428) so that readers know how to decode it. Decoding the result gives
//! back the original octets of every part.
//!
//! What cannot be converted is refused with [`DowngradeError`], and the runner bounces it with
//! a DSN (`5.6.3`): 8-bit octets in a header field (that needs SMTPUTF8, not 8BITMIME), in a
//! part that already claims quoted-printable or base64, or between parts.

use std::borrow::Cow;
use std::ops::Range;

use base64::Engine as _;
use mail_parser::{Encoding, MessageParser, MessagePart, MimeHeaders, PartType};

/// Why a message could not be made 7-bit clean.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot convert 8-bit message to 7 bit: {0}")]
pub struct DowngradeError(pub &'static str);

/// Deepest `message/rfc822` nesting we convert; deeper is refused (a hostile message must not
/// make us recurse without end).
const MAX_NESTING: usize = 8;

/// Whether the content holds any 8-bit octet (then it needs 8BITMIME or a downgrade).
pub fn is_8bit(content: &[u8]) -> bool {
    !content.is_ascii()
}

/// The message made 7-bit clean; borrowed when it already is.
pub fn downgrade(content: &[u8]) -> Result<Cow<'_, [u8]>, DowngradeError> {
    if !is_8bit(content) {
        return Ok(Cow::Borrowed(content));
    }
    downgrade_at_depth(content, 0).map(Cow::Owned)
}

fn downgrade_at_depth(raw: &[u8], depth: usize) -> Result<Vec<u8>, DowngradeError> {
    if depth > MAX_NESTING {
        return Err(DowngradeError("message/rfc822 parts nested too deep"));
    }
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(DowngradeError("the message cannot be parsed"))?;
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    for (index, part) in message.parts.iter().enumerate() {
        let header = range(part.offset_header, part.offset_body, raw)?;
        let body = range(part.offset_body, part.offset_end, raw)?;
        if !raw[header.clone()].is_ascii() {
            return Err(DowngradeError(
                "8-bit octets in a header field (that needs SMTPUTF8)",
            ));
        }
        if raw[body.clone()].is_ascii() || matches!(part.body, PartType::Multipart(_)) {
            continue;
        }
        let top = index == 0;
        let (new_header, new_body) = match &part.body {
            PartType::Message(_) => (
                set_encoding(&raw[header.clone()], "7bit", None),
                downgrade_at_depth(&raw[body.clone()], depth + 1)?,
            ),
            PartType::Text(_) | PartType::Html(_) => {
                check_not_encoded(part)?;
                let mime = top.then(|| missing_mime_headers(part, &raw[body.clone()]));
                (
                    set_encoding(&raw[header.clone()], "quoted-printable", mime),
                    quoted_printable::encode(&raw[body.clone()]),
                )
            }
            PartType::Binary(_) | PartType::InlineBinary(_) => {
                check_not_encoded(part)?;
                (
                    set_encoding(&raw[header.clone()], "base64", None),
                    base64_lines(&raw[body.clone()], top),
                )
            }
            PartType::Multipart(_) => continue,
        };
        edits.push((header, new_header));
        edits.push((body, new_body));
    }
    let out = apply(raw, edits);
    if is_8bit(&out) {
        return Err(DowngradeError(
            "8-bit octets outside any MIME part (preamble or epilogue)",
        ));
    }
    Ok(out)
}

fn range(start: u32, end: u32, raw: &[u8]) -> Result<Range<usize>, DowngradeError> {
    let (start, end) = (start as usize, end as usize);
    if start <= end && end <= raw.len() {
        Ok(start..end)
    } else {
        Err(DowngradeError("the MIME structure is inconsistent"))
    }
}

/// 8-bit octets inside a part that says it is quoted-printable or base64 are not what they
/// claim; encoding them again would hide the damage.
fn check_not_encoded(part: &MessagePart<'_>) -> Result<(), DowngradeError> {
    let declared = part.content_transfer_encoding().unwrap_or("");
    let encoded = declared.eq_ignore_ascii_case("quoted-printable")
        || declared.eq_ignore_ascii_case("base64")
        || !matches!(part.encoding, Encoding::None);
    if encoded {
        Err(DowngradeError(
            "8-bit octets in a part declared quoted-printable or base64",
        ))
    } else {
        Ok(())
    }
}

/// For a message without MIME headers: what it needs so that a reader can decode the
/// quoted-printable body.
fn missing_mime_headers(part: &MessagePart<'_>, body: &[u8]) -> Vec<String> {
    let mut add = Vec::new();
    let has = |name: &str| {
        part.headers
            .iter()
            .any(|h| h.name.as_str().eq_ignore_ascii_case(name))
    };
    if !has("MIME-Version") {
        add.push("MIME-Version: 1.0".to_owned());
    }
    if part.content_type().is_none() {
        let charset = if std::str::from_utf8(body).is_ok() {
            "utf-8"
        } else {
            "unknown-8bit"
        };
        add.push(format!("Content-Type: text/plain; charset={charset}"));
    }
    add
}

/// The header block with every `Content-Transfer-Encoding` field (and its continuation
/// lines) removed and `Content-Transfer-Encoding: {encoding}` added, with `extra` fields,
/// before the empty line that ends the block.
fn set_encoding(header: &[u8], encoding: &str, extra: Option<Vec<String>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + 64);
    let mut dropping = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if !continuation {
            dropping = field_name(line).eq_ignore_ascii_case(b"content-transfer-encoding");
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    for field in extra.into_iter().flatten() {
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Transfer-Encoding: {encoding}\r\n\r\n").as_bytes());
    out
}

fn field_name(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b':').unwrap_or(line.len());
    line[..end].trim_ascii()
}

/// Base64 in 76-character lines (RFC 2045 §6.8). A top-level body ends with CRLF, as the
/// message did; a part's body does not (the boundary line supplies it).
fn base64_lines(body: &[u8], top: bool) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(body);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for (i, line) in encoded.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line);
    }
    if top {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Applies non-overlapping replacements, in order of position.
fn apply(raw: &[u8], mut edits: Vec<(Range<usize>, Vec<u8>)>) -> Vec<u8> {
    edits.sort_by_key(|(range, _)| range.start);
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 3 + 256);
    let mut at = 0;
    for (range, replacement) in edits {
        if range.start < at {
            continue;
        }
        out.extend_from_slice(&raw[at..range.start]);
        out.extend_from_slice(&replacement);
        at = range.end;
    }
    out.extend_from_slice(&raw[at..]);
    out
}
