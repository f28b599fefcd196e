//! RFC 3461 delivery status notification parameters, as SMTP carries them.
//!
//! `MAIL FROM:<…> RET=FULL|HDRS ENVID=xtext` and `RCPT TO:<…> NOTIFY=… ORCPT=type;xtext`
//! ask what the relay reports and to whom. This module parses and writes them (with the
//! RFC 3461 §4 `xtext` and the RFC 6533 `utf-8-addr-xtext` encodings), strictly: a malformed
//! value is refused at the command, never stored half-understood. What the values *do* is the
//! delivery side's business.

use std::fmt::Write as _;

/// Longest `ENVID` value, encoded (RFC 3461 §4.4: 100 characters).
pub const MAX_ENVID: usize = 100;
/// Longest `ORCPT` value, encoded (RFC 3461 §4.2: 500 characters).
pub const MAX_ORCPT: usize = 500;

/// `NOTIFY=`: when the sender wants a notice for this recipient (RFC 3461 §4.1).
///
/// `NEVER` is all three false. Without `NOTIFY`, the default is failure (and delay, at the
/// relay's choice) notices: see [`Notify::default_for_missing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// What a recipient without `NOTIFY` gets (RFC 3461 §4.1: "as if NOTIFY=FAILURE,DELAY").
    pub fn default_for_missing() -> Notify {
        Notify {
            success: false,
            failure: true,
            delay: true,
        }
    }

    /// Parses the value: `NEVER`, or a comma-separated list of `SUCCESS`, `FAILURE`, `DELAY`
    /// (any case, each at most once). `NEVER` cannot be combined.
    pub fn parse(value: &str) -> Option<Notify> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Some(Notify::NEVER);
        }
        let mut notify = Notify::NEVER;
        for word in value.split(',') {
            let slot = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut notify.success,
                "FAILURE" => &mut notify.failure,
                "DELAY" => &mut notify.delay,
                _ => return None,
            };
            if *slot {
                return None;
            }
            *slot = true;
        }
        Some(notify)
    }

    /// The parameter value: `NEVER` or e.g. `SUCCESS,FAILURE`.
    pub fn to_value(self) -> String {
        let words: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, word)| on.then_some(word))
        .collect();
        if words.is_empty() {
            "NEVER".to_owned()
        } else {
            words.join(",")
        }
    }
}

/// `RET=`: how much of the message a failure notice returns (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn parse(value: &str) -> Option<Ret> {
        if value.eq_ignore_ascii_case("FULL") {
            Some(Ret::Full)
        } else if value.eq_ignore_ascii_case("HDRS") {
            Some(Ret::Hdrs)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// `ORCPT=addr-type;address`: the recipient as the original sender wrote it (RFC 3461 §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Orcpt {
    /// The address type, lower-case: `rfc822` or `utf-8` (RFC 6533), or another atom.
    pub addr_type: String,
    /// The address, decoded from xtext (or utf-8-addr-xtext / unitext).
    pub address: String,
}

impl Orcpt {
    /// Parses the value, at most [`MAX_ORCPT`] octets. For `utf-8` the address may be
    /// `utf-8-addr-xtext` (`\x{HEX}` escapes) or raw UTF-8 (`utf-8-addr-unitext`); for any
    /// other type it is xtext.
    pub fn parse(value: &str) -> Option<Orcpt> {
        if value.len() > MAX_ORCPT {
            return None;
        }
        let (addr_type, encoded) = value.split_once(';')?;
        let type_ok = !addr_type.is_empty()
            && addr_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !type_ok {
            return None;
        }
        let addr_type = addr_type.to_ascii_lowercase();
        let address = if addr_type == "utf-8" {
            utf8_addr_decode(encoded)?
        } else {
            xtext_decode(encoded)?
        };
        if address.is_empty() || address.chars().any(char::is_control) {
            return None;
        }
        Some(Orcpt { addr_type, address })
    }

    /// The parameter value, ASCII whatever the address: `rfc822;` with xtext for ASCII
    /// addresses, `utf-8;` with `utf-8-addr-xtext` otherwise (valid for any peer, RFC 6533 §3).
    pub fn to_value(&self) -> String {
        if self.address.is_ascii() && self.addr_type != "utf-8" {
            format!("{};{}", self.addr_type, xtext_encode(&self.address))
        } else {
            format!("utf-8;{}", utf8_addr_xtext_encode(&self.address))
        }
    }
}

/// The DSN parameters of one transaction (MAIL).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailDsn {
    pub ret: Option<Ret>,
    /// The decoded envelope id.
    pub envid: Option<String>,
}

/// The DSN parameters of one recipient (RCPT).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RcptDsn {
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

impl MailDsn {
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none()
    }
}

impl RcptDsn {
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// The notices this recipient asked for, with the RFC 3461 default when it did not say.
    pub fn effective_notify(&self) -> Notify {
        self.notify.unwrap_or_else(Notify::default_for_missing)
    }
}

/// Checks an `ENVID` value and decodes it: xtext, at most [`MAX_ENVID`] octets encoded.
pub fn parse_envid(value: &str) -> Option<String> {
    if value.len() > MAX_ENVID {
        return None;
    }
    let decoded = xtext_decode(value)?;
    (!decoded.chars().any(char::is_control)).then_some(decoded)
}

/// RFC 3461 §4 `xtext` decoding: `+XX` is the octet XX (hex, either case), any other
/// printable ASCII octet but `+` and `=` stands for itself. `None` for malformed input, an
/// empty value, or a result that is not UTF-8.
pub fn xtext_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            b @ 33..=126 => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Whether `text` is well-formed xtext (non-empty).
pub fn is_xtext(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            33..=126 => i += 1,
            _ => return false,
        }
    }
    !bytes.is_empty()
}

/// RFC 3461 §4 `xtext` encoding: `+`, `=`, controls, space and 8-bit octets as `+XX`.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

/// RFC 6533 §3 `utf-8-addr-xtext`: ASCII, with `\x{HEX}` for every non-ASCII character and
/// for `+`, `=`, `\`, space and controls.
pub fn utf8_addr_xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
        }
    }
    out
}

/// Decodes `utf-8-addr-xtext` and `utf-8-addr-unitext` (RFC 6533 §3): `\x{HEX}` escapes,
/// raw UTF-8, printable ASCII but `+`, `=` and a lone `\`.
fn utf8_addr_decode(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(escaped) = rest.strip_prefix("\\x{") {
            let end = escaped.find('}')?;
            let hex = &escaped[..end];
            if hex.is_empty() || hex.len() > 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
            rest = &escaped[end + 1..];
            continue;
        }
        let allowed = match c {
            '+' | '=' | '\\' => false,
            c if c.is_ascii() => c.is_ascii_graphic(),
            c => !c.is_control(),
        };
        if !allowed {
            return None;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_values() {
        assert_eq!(Notify::parse("NEVER"), Some(Notify::NEVER));
        assert_eq!(
            Notify::parse("success,Delay"),
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        assert_eq!(Notify::parse("NEVER,SUCCESS"), None);
        assert_eq!(Notify::parse("SUCCESS,SUCCESS"), None);
        assert_eq!(Notify::parse(""), None);
        assert_eq!(Notify::parse("SUCCESS,"), None);
        assert_eq!(
            Notify::parse("FAILURE,SUCCESS")
                .map(Notify::to_value)
                .as_deref(),
            Some("SUCCESS,FAILURE")
        );
        assert_eq!(Notify::NEVER.to_value(), "NEVER");
    }

    #[test]
    fn xtext_round_trips() {
        for text in ["alice@example.test", "a+b=c d", "ü", "+"] {
            let encoded = xtext_encode(text);
            assert!(is_xtext(&encoded), "{encoded}");
            assert_eq!(xtext_decode(&encoded).as_deref(), Some(text));
        }
        assert_eq!(xtext_encode("a+b=c"), "a+2Bb+3Dc");
        assert_eq!(xtext_decode("a+2bb"), Some("a+b".into()));
        assert_eq!(xtext_decode("a+4"), None);
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode(""), None);
        assert_eq!(xtext_decode("+FF"), None);
    }

    #[test]
    fn orcpt_both_address_types() {
        let ascii = Orcpt::parse("rfc822;bob+2Btag@example.test").expect("valid");
        assert_eq!(ascii.address, "bob+tag@example.test");
        assert_eq!(ascii.to_value(), "rfc822;bob+2Btag@example.test");
        let escaped = Orcpt::parse("utf-8;b\\x{F8}b@example.test").expect("valid");
        assert_eq!(escaped.address, "bøb@example.test");
        let raw = Orcpt::parse("UTF-8;bøb@example.test").expect("valid");
        assert_eq!(raw, escaped);
        assert_eq!(raw.to_value(), "utf-8;b\\x{F8}b@example.test");
        for bad in [
            "bob@example.test",
            ";bob@example.test",
            "rfc822;",
            "rfc822;a+0Db",
            "utf-8;a\\x{}b",
            "utf-8;a\\x{110000}",
            "utf-8;a=b",
            "rf c;x",
        ] {
            assert_eq!(Orcpt::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Orcpt::parse(&format!("rfc822;{}", "a".repeat(MAX_ORCPT))),
            None
        );
    }

    #[test]
    fn envid_is_bounded_xtext() {
        assert_eq!(parse_envid("QQ+2B1").as_deref(), Some("QQ+1"));
        assert_eq!(
            parse_envid(&"a".repeat(MAX_ENVID)).map(|e| e.len()),
            Some(100)
        );
        assert_eq!(parse_envid(&"a".repeat(MAX_ENVID + 1)), None);
        assert_eq!(parse_envid("a+0Ab"), None);
    }

    #[test]
    fn missing_notify_means_failure_and_delay() {
        let dsn = RcptDsn::default();
        assert_eq!(dsn.effective_notify(), Notify::default_for_missing());
        assert!(!dsn.effective_notify().success);
    }
}
