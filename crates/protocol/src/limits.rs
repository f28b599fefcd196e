//! Size limits from RFC 5321 §4.5.3.1. Exceeding any of them is a protocol error, never a
//! truncation: a silently shortened address is how a parser ends up relaying.

/// Longest local part, in octets (§4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain, in octets (§4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest reverse- or forward-path including the angle brackets' content (§4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// Longest command line including the CRLF (§4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest reply line including the CRLF (§4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;
/// Longest text line in DATA including the CRLF (§4.5.3.1.6): what relayward *sends*. Longer
/// received lines are folded or wrapped to this on the way out ([`crate::wrap`]).
pub const MAX_TEXT_LINE: usize = 1000;
/// Longest text line relayward *accepts* in DATA or BDAT, CRLF included. RFC 5321 says 1000,
/// but Postfix, Exim and Haraka accept longer lines (and fold or wrap them when relaying), and
/// real mail has them: unwrapped base64, long `References:` headers, HTML on one line. Beyond
/// this the message is refused, with the reply sent as soon as the line crosses the limit.
pub const MAX_ACCEPTED_TEXT_LINE: usize = 64 * 1024;
/// Longest `MAIL` command line including the CRLF: 512 plus what each extension we offer may
/// add (RFC 1870 SIZE 26, RFC 6152 BODY 14, RFC 4954 AUTH 500, RFC 3461 RET 9 and ENVID 106,
/// RFC 6531 SMTPUTF8 9), rounded up.
pub const MAX_MAIL_LINE: usize = 1280;
/// Longest `RCPT` command line including the CRLF: 512 plus RFC 3461's NOTIFY (31) and
/// ORCPT (506), rounded up.
pub const MAX_RCPT_LINE: usize = 1088;
/// Longest AUTH response line we read (RFC 4954 §4 allows 12288 octets).
pub const MAX_AUTH_LINE: usize = 12288;
/// Most `Received:` fields a message may carry when it arrives; beyond them it is looping
/// (RFC 5321 §6.3) and refused at the end of DATA with `554 5.4.6`. Postfix's
/// `hopcount_limit` is 50 too: no honest path between two mailboxes is that long.
pub const MAX_HOPS: usize = 50;

/// The longest line allowed for this command, CRLF included: an `AUTH` command with an initial
/// response may be as long as an AUTH response (RFC 4954 §4), `MAIL` and `RCPT` as long as
/// their extensions make them ([`MAX_MAIL_LINE`], [`MAX_RCPT_LINE`]), every other command 512
/// octets.
pub fn command_line_limit(line: &[u8]) -> usize {
    let starts =
        |verb: &[u8]| line.len() > verb.len() && line[..verb.len()].eq_ignore_ascii_case(verb);
    if starts(b"AUTH ") {
        MAX_AUTH_LINE
    } else if starts(b"MAIL ") {
        MAX_MAIL_LINE
    } else if starts(b"RCPT ") {
        MAX_RCPT_LINE
    } else {
        MAX_COMMAND_LINE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_lines_may_be_longer() {
        assert_eq!(command_line_limit(b"auth PLAIN AGFsaWNl"), MAX_AUTH_LINE);
        assert_eq!(command_line_limit(b"AUTH"), MAX_COMMAND_LINE);
        assert_eq!(command_line_limit(b"MAIL FROM:<a@b>"), MAX_MAIL_LINE);
        assert_eq!(command_line_limit(b"rcpt TO:<a@b>"), MAX_RCPT_LINE);
        assert_eq!(
            command_line_limit(b"NOOP MAIL FROM:<a@b>"),
            MAX_COMMAND_LINE
        );
        assert_eq!(command_line_limit(b"AUTHX PLAIN"), MAX_COMMAND_LINE);
    }
}
