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
/// Longest text line in DATA including the CRLF (§4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;
/// Longest AUTH response line we read (RFC 4954 §4 allows 12288 octets).
pub const MAX_AUTH_LINE: usize = 12288;
/// Most `Received:` fields a message may carry when it arrives; beyond them it is looping
/// (RFC 5321 §6.3) and refused at the end of DATA with `554 5.4.6`. Postfix's
/// `hopcount_limit` is 50 too: no honest path between two mailboxes is that long.
pub const MAX_HOPS: usize = 50;

/// The longest line allowed for this command, CRLF included: an `AUTH` command with an initial
/// response may be as long as an AUTH response (RFC 4954 §4), every other command 512 octets.
pub fn command_line_limit(line: &[u8]) -> usize {
    let is_auth = line.len() > 5 && line[..5].eq_ignore_ascii_case(b"AUTH ");
    if is_auth {
        MAX_AUTH_LINE
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
        assert_eq!(command_line_limit(b"MAIL FROM:<a@b>"), MAX_COMMAND_LINE);
        assert_eq!(command_line_limit(b"AUTHX PLAIN"), MAX_COMMAND_LINE);
    }
}
