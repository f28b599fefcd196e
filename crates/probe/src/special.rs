//! Session-level relay tricks: the ones that are not a MAIL/RCPT pair (research §6 U43, U44,
//! U45, U52, U56). They change the session before or around the transaction — claim a trusted
//! address with `XCLIENT` or a PROXY header, fail an `AUTH`, pipeline the commands, mix a local
//! recipient in — and then try the plain external relay (`plain-external`'s MAIL and RCPT).
//!
//! They live here, not in [`relayward_protocol::battery`]: `relayward check-config` replays
//! that static list against the relay policy in-process, and these tricks do not render to
//! plain MAIL/RCPT lines. Ids are stable like the battery's and never collide with them.
//!
//! This module holds the table, the lines the tricks send and the dialogue of each trick on
//! an open connection; [`crate::probe`] decides which connection (the shared one, or a fresh
//! one for the tricks that change who the session claims to be) and builds the verdict.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use relayward_protocol::battery::RenderedTrick;
use relayward_protocol::reply::Reply;

use crate::conn::{Conn, ConnError};
use crate::report::{Outcome, ReplyInfo, SetupStep, TestResult};
use crate::session;
use crate::transcript::Transcript;
use crate::verdict;

/// `kind` of a session-level trick in reports.
pub const KIND: &str = "session";

pub const PIPELINED_RELAY: &str = "pipelined-relay";
pub const LOCAL_THEN_EXTERNAL: &str = "local-then-external";
pub const XCLIENT_SPOOF: &str = "xclient-spoof";
pub const PROXY_HEADER_SPOOF: &str = "proxy-header-spoof";
pub const FAILED_AUTH_THEN_RELAY: &str = "failed-auth-then-relay";

/// One session-level trick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTrick {
    /// Stable identifier. Never renamed.
    pub id: &'static str,
    /// One line: what is sent.
    pub description: &'static str,
    /// The server bug it targets.
    pub targets: &'static str,
    /// The research id (`shared/research/relay-testers.md` §6).
    pub research: &'static str,
    /// Runs on a connection of its own, closed afterwards: the trick changes who the session
    /// claims to be, and that must not leak into other tests.
    pub own_connection: bool,
}

const SPECIALS: &[SpecialTrick] = &[
    SpecialTrick {
        id: PIPELINED_RELAY,
        description: "MAIL, RCPT and RSET in one write (only when PIPELINING is offered)",
        targets: "relay checks skipped or evaluated out of order when commands arrive pipelined",
        research: "U52",
        own_connection: false,
    },
    SpecialTrick {
        id: LOCAL_THEN_EXTERNAL,
        description: "one transaction: RCPT to postmaster at a local name, then the external RCPT",
        targets: "relay decided once per transaction (by its first recipient), not per recipient",
        research: "U56",
        own_connection: false,
    },
    SpecialTrick {
        id: XCLIENT_SPOOF,
        description: "XCLIENT ADDR=127.0.0.1 NAME=localhost, EHLO again, then the plain external relay",
        targets: "XCLIENT accepted from untrusted clients: anyone can claim a trusted address",
        research: "U43",
        own_connection: true,
    },
    SpecialTrick {
        id: PROXY_HEADER_SPOOF,
        description: "a fresh connection opened with a PROXY v1 header claiming 127.0.0.1, then the plain external relay",
        targets: "PROXY protocol header honoured from untrusted clients: anyone can claim a trusted address",
        research: "U44",
        own_connection: true,
    },
    SpecialTrick {
        id: FAILED_AUTH_THEN_RELAY,
        description: "one failed AUTH (PLAIN with a login that cannot exist, else LOGIN cancelled with *), then the plain external relay (only when AUTH is offered and plain-external was refused)",
        targets: "a failed or cancelled AUTH leaves the session authenticated or trusted",
        research: "U45",
        own_connection: true,
    },
];

/// Every session-level trick, in table order (the run order is in [`crate::probe`]).
pub fn specials() -> &'static [SpecialTrick] {
    SPECIALS
}

/// Looks a session-level trick up by id.
pub fn special(id: &str) -> Option<&'static SpecialTrick> {
    SPECIALS.iter().find(|s| s.id == id)
}

/// The trusted address the spoofing tricks claim: loopback is in almost every server's
/// trusted networks (Postfix's default `mynetworks` included).
pub const SPOOFED_IPV4: &str = "127.0.0.1";
pub const SPOOFED_IPV6: &str = "::1";
/// Source port claimed in the PROXY header (any value does).
pub const SPOOFED_PORT: u16 = 12345;

/// `XCLIENT ADDR=127.0.0.1 NAME=localhost` (Postfix's XCLIENT extension).
pub fn xclient_line() -> String {
    format!("XCLIENT ADDR={SPOOFED_IPV4} NAME=localhost")
}

/// `PROXY TCP4 127.0.0.1 <target> 12345 <port>` (PROXY protocol v1), `TCP6 ::1 …` for an
/// IPv6 target (the header's two addresses must be of one family).
pub fn proxy_line(target: SocketAddr) -> String {
    let port = target.port();
    match target.ip().to_canonical() {
        IpAddr::V4(dst) => format!("PROXY TCP4 {SPOOFED_IPV4} {dst} {SPOOFED_PORT} {port}"),
        IpAddr::V6(dst) => format!("PROXY TCP6 {SPOOFED_IPV6} {dst} {SPOOFED_PORT} {port}"),
    }
}

/// `AUTH PLAIN <base64("\0rw-probe-NONCE@NONCE.invalid\0NONCE")>`: a login that cannot
/// exist (`.invalid`, RFC 2606) and a random password, so no real user's failure count moves.
pub fn auth_plain_line(nonce: &str) -> String {
    let blob = format!("\0rw-probe-{nonce}@{nonce}.invalid\0{nonce}");
    format!("AUTH PLAIN {}", STANDARD.encode(blob))
}

/// A SASL mechanism name as advertised (RFC 4422 §3.1: upper-case letters, digits, `-`, `_`,
/// at most 20 characters); anything else from a hostile EHLO is never echoed back.
pub fn is_mechanism(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `RCPT TO:<postmaster@LOCAL>`: at the local domain, else the host name, else the address
/// literal — postmaster exists everywhere (RFC 5321 §4.5.1).
pub fn local_recipient(local_domain: Option<&str>, host: Option<&str>, ip: IpAddr) -> String {
    let is_domain = |d: &&str| {
        !d.is_empty()
            && d.len() <= 253
            && d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    let domain = local_domain
        .filter(is_domain)
        .or(host.filter(is_domain))
        .map(str::to_string)
        .unwrap_or_else(|| relayward_protocol::battery::address_literal(ip));
    format!("RCPT TO:<postmaster@{domain}>")
}

/// What one run of a session-level trick got.
#[derive(Debug, Default)]
pub struct Run {
    pub setup: Vec<SetupStep>,
    pub mail_from: String,
    pub rcpt_to: String,
    pub mail: Option<Reply>,
    pub rcpt: Option<Reply>,
    /// The reply to the end of DATA (confirm mode).
    pub data: Option<Reply>,
    /// DATA itself answered otherwise than 354 (confirm mode): no message was sent.
    pub data_refused: Option<Reply>,
    /// The server refused the trick's premise (XCLIENT refused, PROXY header answered as a
    /// command): the trick failed before the relay attempt.
    pub refused: Option<String>,
    /// The trick does not apply (PIPELINING or AUTH not offered; host timeout).
    pub skipped: Option<String>,
    /// The connection failed (drop, timeout, 421).
    pub broken: Option<String>,
    pub notes: Vec<String>,
}

impl Run {
    pub fn skipped(why: &str) -> Self {
        Self {
            skipped: Some(why.to_string()),
            ..Self::default()
        }
    }

    /// The test result: refused premise → `refused`; else judged like any trick on the
    /// external RCPT's code.
    pub fn into_result(self, trick: &SpecialTrick, attempts: u32) -> TestResult {
        let mail = self.mail.as_ref().map(ReplyInfo::from);
        let rcpt = self.rcpt.as_ref().map(ReplyInfo::from);
        let mut notes = Vec::new();
        let outcome = if let Some(why) = &self.skipped {
            notes.push(why.clone());
            Outcome::Skipped
        } else if let Some(why) = &self.refused {
            notes.push(why.clone());
            Outcome::Refused
        } else {
            let o = verdict::classify(mail.as_ref(), rcpt.as_ref());
            match &self.broken {
                Some(why) if o != Outcome::Accepted => {
                    notes.push(why.clone());
                    Outcome::Error
                }
                _ => o,
            }
        };
        notes.extend(self.notes);
        TestResult {
            id: trick.id.to_string(),
            kind: KIND.to_string(),
            description: trick.description.to_string(),
            mail_from: self.mail_from,
            rcpt_to: self.rcpt_to,
            mail_reply: mail,
            rcpt_reply: rcpt,
            fallback: None,
            outcome,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            attempts: if outcome == Outcome::Skipped {
                0
            } else {
                attempts
            },
            setup: self.setup,
        }
    }

    pub fn step(&mut self, sent: &str, reply: Option<&Reply>) {
        self.setup.push(SetupStep {
            sent: sent.to_string(),
            reply: reply.map(ReplyInfo::from),
        });
    }

    fn fail(&mut self, why: impl Into<String>) -> bool {
        self.broken = Some(why.into());
        false
    }
}

/// One command; `None` (and the run marked broken) on a connection failure or a 421.
async fn command(
    conn: &mut Conn,
    line: &str,
    log: &mut Transcript,
    run: &mut Run,
) -> Option<Reply> {
    match conn.command(line, log).await {
        Ok(r) if r.code == 421 => {
            run.fail(format!("server closed the session (421) at {}", verb(line)));
            None
        }
        Ok(r) => Some(r),
        Err(e) => {
            run.fail(e.to_string());
            None
        }
    }
}

fn verb(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or("")
}

/// MAIL, (a local RCPT,) the external RCPT, and in confirm mode DATA and the message.
/// Returns whether the connection is still usable.
pub async fn transaction(
    conn: &mut Conn,
    log: &mut Transcript,
    run: &mut Run,
    plain: &RenderedTrick,
    local_rcpt: Option<&str>,
    message: Option<&str>,
) -> bool {
    run.mail_from = plain.mail_from.clone();
    run.rcpt_to = plain.rcpt_to.clone();
    let Some(mail) = command(conn, &plain.mail_from, log, run).await else {
        return false;
    };
    run.mail = Some(mail);
    if let Some(local) = local_rcpt {
        let Some(reply) = command(conn, local, log, run).await else {
            return false;
        };
        if !reply.is_positive_completion() {
            run.notes.push(format!(
                "the local recipient was refused ({}), so the transaction held only the external one",
                ReplyInfo::from(&reply)
            ));
        }
        run.step(local, Some(&reply));
    }
    let Some(rcpt) = command(conn, &plain.rcpt_to, log, run).await else {
        return false;
    };
    let accepted = rcpt.is_positive_completion();
    run.rcpt = Some(rcpt);
    match message {
        Some(message) if accepted => match data(conn, message, log).await {
            Ok((reply, ended)) => {
                let usable = reply.code != 421;
                if ended {
                    run.data = Some(reply);
                } else {
                    run.data_refused = Some(reply);
                }
                usable
            }
            Err(e) => run.fail(e.to_string()),
        },
        _ => true,
    }
}

/// U44 once the PROXY header drew no reply: the plain relay, then — when it was accepted —
/// QUIT, which must be answered 221. "No reply" was judged by waiting a moment for a second
/// reply to EHLO, and a server slow to answer EHLO after refusing the header as a command
/// looks the same for that long: its late replies then answer the relay attempt a step behind
/// (RCPT reads MAIL's 250, QUIT reads RCPT's 554). Only QUIT is answered 221, so an accepted
/// relay whose QUIT got anything else is not taken for an honoured header: the run is broken
/// (retried, then an `error`). Returns whether the connection is still usable; after an
/// accepted relay it is not (QUIT was sent).
pub async fn proxy_relay(
    conn: &mut Conn,
    log: &mut Transcript,
    run: &mut Run,
    plain: &RenderedTrick,
    message: Option<&str>,
) -> bool {
    let usable = transaction(conn, log, run, plain, None, message).await;
    let accepted = run.rcpt.as_ref().is_some_and(Reply::is_positive_completion);
    if !usable || !accepted {
        return usable;
    }
    let got = match conn.command("QUIT", log).await {
        Ok(reply) if reply.code == 221 => return false,
        Ok(reply) => ReplyInfo::from(&reply).to_string(),
        Err(e) => e.to_string(),
    };
    if let Some(rcpt) = run.rcpt.take() {
        run.step(&plain.rcpt_to, Some(&rcpt));
    }
    run.fail(format!(
        "QUIT got {got}, not 221: the replies to the relay attempt may belong to earlier \
         commands (a server slow to answer EHLO after refusing the header looks like one \
         that honoured it)"
    ))
}

/// DATA, the message (dot-stuffed; the probe's messages have no leading dots anyway), the
/// final dot. Returns the reply to the final dot and `true`, or DATA's own reply and `false`
/// when DATA was not answered 354.
pub async fn data(
    conn: &mut Conn,
    message: &str,
    log: &mut Transcript,
) -> Result<(Reply, bool), ConnError> {
    let reply = conn.command("DATA", log).await?;
    if reply.code != 354 {
        return Ok((reply, false));
    }
    Ok((send_body(conn, message, log).await?, true))
}

/// The message after a 354, then the final dot; returns the reply to the dot.
async fn send_body(
    conn: &mut Conn,
    message: &str,
    log: &mut Transcript,
) -> Result<Reply, ConnError> {
    let mut body = String::with_capacity(message.len() + 64);
    for line in message.lines() {
        log.client(line);
        if line.starts_with('.') {
            body.push('.');
        }
        body.push_str(line);
        body.push_str("\r\n");
    }
    log.client(".");
    body.push_str(".\r\n");
    // A reply already there after the 354 would be read as the final dot's.
    conn.ensure_in_step(log).await?;
    conn.send_raw(body.as_bytes()).await?;
    conn.read_reply(log).await
}

/// U52: MAIL, RCPT and RSET (DATA in confirm mode) in one write, then the three replies.
pub async fn pipelined(
    conn: &mut Conn,
    log: &mut Transcript,
    run: &mut Run,
    plain: &RenderedTrick,
    message: Option<&str>,
) -> bool {
    run.mail_from = plain.mail_from.clone();
    run.rcpt_to = plain.rcpt_to.clone();
    let last = if message.is_some() { "DATA" } else { "RSET" };
    let mut batch = String::new();
    for line in [plain.mail_from.as_str(), plain.rcpt_to.as_str(), last] {
        log.client(line);
        batch.push_str(line);
        batch.push_str("\r\n");
    }
    if let Err(e) = conn.send_raw(batch.as_bytes()).await {
        return run.fail(e.to_string());
    }
    let mut replies = Vec::with_capacity(3);
    for _ in 0..3 {
        match conn.read_reply(log).await {
            Ok(r) => replies.push(r),
            Err(e) => {
                let (mail, rcpt) = (replies.first().cloned(), replies.get(1).cloned());
                (run.mail, run.rcpt) = (mail, rcpt);
                return run.fail(e.to_string());
            }
        }
    }
    // A fourth reply already there means the three were not the answers to the three
    // commands (a closed server answering MAIL twice): the RCPT's real answer is not known.
    if let Err(e) = conn.ensure_in_step(log).await {
        run.mail = replies.first().cloned();
        return run.fail(e.to_string());
    }
    let last_reply = replies.pop();
    run.rcpt = replies.pop();
    run.mail = replies.pop();
    run.step(&format!("{last} (same write)"), last_reply.as_ref());
    let Some(last_reply) = last_reply else {
        return run.fail("no reply");
    };
    if [&run.mail, &run.rcpt]
        .iter()
        .any(|r| r.as_ref().is_some_and(|r| r.code == 421))
        || last_reply.code == 421
    {
        return run.fail("server closed the session (421) after the pipelined commands");
    }
    let Some(message) = message else {
        return last_reply.code == 250;
    };
    if last_reply.code != 354 {
        run.data_refused = Some(last_reply);
        return true;
    }
    let accepted = run.rcpt.as_ref().is_some_and(Reply::is_positive_completion);
    // 354 although RCPT was refused: send an empty message so the session stays in step.
    let text = if accepted { message } else { "" };
    match send_body(conn, text, log).await {
        Ok(reply) => {
            let usable = reply.code != 421;
            if accepted {
                run.data = Some(reply);
            }
            usable
        }
        Err(e) => run.fail(e.to_string()),
    }
}

/// U43: XCLIENT claiming loopback; if taken (2xx; Postfix answers 220 and wants a new EHLO),
/// EHLO again and the plain relay. XCLIENT is sent whether or not EHLO advertised it: a
/// server that does not know it answers 5xx, and one that honours it unadvertised is the
/// worse bug.
pub async fn xclient(
    conn: &mut Conn,
    log: &mut Transcript,
    run: &mut Run,
    helo: &str,
    advertised: bool,
    plain: &RenderedTrick,
    message: Option<&str>,
) -> bool {
    if !advertised {
        run.notes.push("XCLIENT not advertised; sent anyway".into());
    }
    let line = xclient_line();
    let Some(reply) = command(conn, &line, log, run).await else {
        return false;
    };
    run.step(&line, Some(&reply));
    if !reply.is_positive_completion() && reply.code != 220 {
        run.refused = Some(format!("XCLIENT refused: {}", ReplyInfo::from(&reply)));
        return true;
    }
    match session::hello(conn, helo, log).await {
        Ok((hello, _)) => run.step(&format!("EHLO {helo}"), Some(&hello)),
        Err(e) => return run.fail(format!("EHLO after XCLIENT: {e}")),
    }
    transaction(conn, log, run, plain, None, message).await
}

/// U45: one failed login, then the plain relay. `mechanisms` is the AUTH line of EHLO. Exactly
/// one attempt, with a login that cannot exist (at an invented `.invalid` domain): servers
/// count failed logins per address and per login and ban after a few, so the trick must cost
/// the target (and the prober's address) as little as it can. PLAIN when offered (a complete
/// failed login); else LOGIN, or the first other mechanism, cancelled with `*` (RFC 4954 §4).
pub async fn failed_auth(
    conn: &mut Conn,
    log: &mut Transcript,
    run: &mut Run,
    mechanisms: &[String],
    nonce: &str,
    plain: &RenderedTrick,
    message: Option<&str>,
) -> bool {
    let offered = |m: &str| mechanisms.iter().any(|x| x == m);
    let line = if offered("PLAIN") {
        auth_plain_line(nonce)
    } else if offered("LOGIN") {
        "AUTH LOGIN".to_string()
    } else if let Some(m) = mechanisms.iter().find(|m| is_mechanism(m)) {
        format!("AUTH {m}")
    } else {
        run.skipped = Some("AUTH offers no mechanism the probe can fail".into());
        return true;
    };
    let Some(reply) = command(conn, &line, log, run).await else {
        return false;
    };
    run.step(&line, Some(&reply));
    let mut last = reply;
    if last.code == 334 {
        // A challenge: cancel the exchange.
        let Some(reply) = command(conn, "*", log, run).await else {
            return false;
        };
        run.step("*", Some(&reply));
        last = reply;
    }
    if last.is_positive_completion() {
        run.notes.push(format!(
            "{} with invented credentials was ACCEPTED ({}): AUTH lets anyone in",
            line_without_secret(&line),
            last.code
        ));
    }
    transaction(conn, log, run, plain, None, message).await
}

/// `AUTH PLAIN <blob>` → `AUTH PLAIN` for notes.
fn line_without_secret(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_protocol::battery;
    use std::collections::HashSet;

    #[test]
    fn failed_auth_blob_is_plain_with_an_impossible_login() {
        assert_eq!(
            auth_plain_line("abc"),
            "AUTH PLAIN AHJ3LXByb2JlLWFiY0BhYmMuaW52YWxpZABhYmM="
        );
    }

    /// Ids are a public contract; they never collide with the battery's.
    #[test]
    fn ids_are_stable_and_distinct_from_the_battery() {
        let ids: Vec<&str> = specials().iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            [
                "pipelined-relay",
                "local-then-external",
                "xclient-spoof",
                "proxy-header-spoof",
                "failed-auth-then-relay"
            ]
        );
        let mut seen: HashSet<&str> = battery::battery().iter().map(|t| t.id).collect();
        for s in specials() {
            assert!(seen.insert(s.id), "{} collides", s.id);
            assert!(battery::trick(s.id).is_none());
            assert!(!s.description.is_empty() && !s.targets.is_empty());
            assert!(s.research.starts_with('U'));
        }
        let research: HashSet<&str> = specials().iter().map(|s| s.research).collect();
        for u in ["U43", "U44", "U45", "U52", "U56"] {
            assert!(research.contains(u), "{u} not covered");
        }
    }

    #[test]
    fn lines() {
        assert_eq!(xclient_line(), "XCLIENT ADDR=127.0.0.1 NAME=localhost");
        assert_eq!(
            proxy_line("192.0.2.7:25".parse().unwrap()),
            "PROXY TCP4 127.0.0.1 192.0.2.7 12345 25"
        );
        assert_eq!(
            proxy_line("[2001:db8::7]:2525".parse().unwrap()),
            "PROXY TCP6 ::1 2001:db8::7 12345 2525"
        );
        assert_eq!(
            proxy_line("[::ffff:192.0.2.7]:25".parse().unwrap()),
            "PROXY TCP4 127.0.0.1 192.0.2.7 12345 25"
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            local_recipient(Some("example.test"), Some("mx.example.test"), ip),
            "RCPT TO:<postmaster@example.test>"
        );
        assert_eq!(
            local_recipient(None, Some("mx.example.test"), ip),
            "RCPT TO:<postmaster@mx.example.test>"
        );
        assert_eq!(
            local_recipient(None, None, ip),
            "RCPT TO:<postmaster@[192.0.2.7]>"
        );
        assert_eq!(
            local_recipient(Some("x>\r\nDATA"), None, ip),
            "RCPT TO:<postmaster@[192.0.2.7]>"
        );
    }

    #[test]
    fn hostile_mechanism_names_are_not_echoed() {
        assert!(is_mechanism("CRAM-MD5"));
        assert!(is_mechanism("SCRAM-SHA-256"));
        assert!(!is_mechanism("X\r\nRCPT"));
        assert!(!is_mechanism("lower"));
        assert!(!is_mechanism(""));
    }
}
