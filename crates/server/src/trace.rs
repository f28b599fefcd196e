//! The `Received:` trace header (RFC 5321 §4.4) and RFC 5322 dates.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::conn::TlsFacts;

/// Facts about one accepted message that go into its trace header. Never a password.
pub struct TraceFacts<'a> {
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub tls: Option<&'a TlsFacts>,
    pub auth_login: Option<&'a str>,
    /// The single recipient, when there is exactly one (RFC 5321 §4.4 "for" clause).
    pub single_recipient: Option<&'a str>,
    pub now: SystemTime,
}

/// The `with` protocol name of RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA.
fn protocol_name(facts: &TraceFacts<'_>) -> &'static str {
    match (facts.esmtp, facts.tls.is_some(), facts.auth_login.is_some()) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    }
}

/// Builds the header, folded, CRLF-terminated. The HELO name comes from the client; the command
/// parser already refused control characters in it, so it cannot break the header, and
/// [`helo_for_trace`] keeps it from opening a comment that would hide the client's address.
pub fn received_header(facts: &TraceFacts<'_>) -> String {
    let ip = match facts.client_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let mut header = format!("Received: from {} ([{ip}])\r\n", helo_for_trace(facts.helo));
    let mut by = format!("\tby {} (relayward)", facts.hostname);
    if let Some(tls) = facts.tls {
        by.push_str(&format!(" ({} {})", tls.version, tls.cipher));
    }
    if let Some(login) = facts.auth_login {
        by.push_str(&format!(" (authenticated as {login})"));
    }
    header.push_str(&by);
    header.push_str(&format!("\r\n\twith {}", protocol_name(facts)));
    if let Some(rcpt) = facts.single_recipient {
        header.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    header.push_str(&format!("; {}\r\n", rfc5322_date(facts.now)));
    header
}

/// The HELO name as written into `Received:`: letters, digits, `.`, `-`, `_`, `:` and the
/// brackets of an address literal pass; anything else becomes `?`. An address literal may
/// legally hold `(`, `)`, `;` or `"` (RFC 5321 dcontent), and `EHLO [x(]` would otherwise open
/// an RFC 5322 comment that swallows the `([client IP])` after it, so that header parsers (spam
/// filters looking for the last external hop) no longer see who sent the message.
fn helo_for_trace(helo: &str) -> String {
    helo.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']') {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The RFC 5322 date of a point in time (UTC).
pub fn rfc5322_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    relayward_protocol::date::rfc5322_date(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_rfc5322() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_601_781);
        assert_eq!(rfc5322_date(t), "Wed, 25 Nov 2026 10:16:21 +0000");
    }

    #[test]
    fn header_names_tls_and_login_but_no_secret() {
        let tls = TlsFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        };
        let header = received_header(&TraceFacts {
            helo: "client.example.test",
            client_ip: "192.0.2.7".parse().unwrap(),
            hostname: "mx.example.test",
            esmtp: true,
            tls: Some(&tls),
            auth_login: Some("alice@example.test"),
            single_recipient: Some("bob@other.test"),
            now: UNIX_EPOCH,
        });
        assert_eq!(
            header,
            "Received: from client.example.test ([192.0.2.7])\r\n\
             \tby mx.example.test (relayward) (TLSv1.3 TLS13_AES_256_GCM_SHA384) \
             (authenticated as alice@example.test)\r\n\twith ESMTPSA\r\n\
             \tfor <bob@other.test>; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
