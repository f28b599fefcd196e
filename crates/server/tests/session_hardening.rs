//! The session's defences in-process: pregreet and unauthorised pipelining, timeouts in every
//! state (before TLS too) and the session time limit, and hostile input — NUL and invalid
//! UTF-8, recipient floods, garbage SASL, SMTP smuggling, bare CR/LF, STARTTLS injection, the
//! error limit, message size. Each test fails when its defence is switched off, and checks
//! that nothing was queued behind the client's back and how the session ended.
//!
//! The clock is paused (see `support`): the timeout tests measure exactly the configured time.
//! Moved here from the end-to-end suite (`crates/relayward/tests/hardening_session.rs`), which
//! keeps what needs real sockets or the binary: PROXY, per-user limits named in the log,
//! state that must survive SIGHUP.

mod support;

use std::time::Duration;

use relayward_server::session::Ending;
use support::{PASSWORD, Server, Smtp, config_with_relay, standard_config};

const SECOND: Duration = Duration::from_secs(1);

/// Nothing was acknowledged behind the test's back.
#[track_caller]
fn assert_nothing_queued(server: &Server) {
    assert!(
        server.queue.is_empty(),
        "queued: {:?}",
        server.queue.messages()
    );
}

fn open_transaction(server: &Server) -> Smtp {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<a@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250);
    smtp
}

// ---------------------------------------------------------------------------------------------
// Pregreet and unauthorised pipelining
// ---------------------------------------------------------------------------------------------

#[test]
fn client_talking_before_the_banner_is_refused() {
    let server = Server::start(&standard_config("[limits]\ngreet_pause = \"1s\""));
    server
        .connect_silent("mx")
        .raw(b"EHLO impatient.robot.test\r\n")
        .expect_text(554, "5.5.1")
        .expect_closed();
    // Waiting for the banner is all it takes; it comes after the pause.
    let start = server.now();
    let mut patient = server.smtp("mx");
    let waited = server.now() - start;
    assert_eq!(waited, Duration::from_secs(1));
    patient.send("EHLO patient.mta.test").expect(250);
    // Submission clients are authenticated users' programs: no pause.
    let start = server.now();
    server.smtp("submission");
    assert_eq!(server.now() - start, Duration::ZERO);
    assert_eq!(server.endings()[0], Some(Ending::Pregreet));
}

/// A client that waited for the banner once is greeted at once for `greet_pause_ttl`
/// (postscreen's cache), per IPv4 address and IPv6 /64; a robot that talks early is refused
/// every time and never remembered; a remembered client that pipelines without permission is
/// tested again.
#[test]
fn a_client_that_waited_once_is_greeted_at_once_until_the_ttl_ends() {
    let server = Server::start(&standard_config(
        "[limits]\ngreet_pause = \"1s\"\ngreet_pause_ttl = \"1h\"",
    ));
    let banner_wait = |ip: &str| {
        let start = server.now();
        server.smtp_from("mx", ip).send("QUIT").expect(221);
        server.now() - start
    };
    assert_eq!(banner_wait("192.0.2.7"), Duration::from_secs(1));
    assert_eq!(banner_wait("192.0.2.7"), Duration::ZERO);
    assert_eq!(banner_wait("192.0.2.8"), Duration::from_secs(1));
    assert_eq!(banner_wait("2001:db8:1:2::25"), Duration::from_secs(1));
    assert_eq!(banner_wait("2001:db8:1:2::99"), Duration::ZERO);

    // Early talkers: refused each time, whatever their neighbours did.
    for _ in 0..2 {
        server
            .connect_silent_from("mx", "198.51.100.9")
            .raw(b"EHLO impatient.robot.test\r\n")
            .expect_text(554, "5.5.1")
            .expect_closed();
    }
    // A remembered client is not tested before the banner...
    server
        .connect_silent_from("mx", "192.0.2.7")
        .raw(b"EHLO busy.mta.test\r\n")
        .expect(220)
        .expect(250)
        .raw(b"QUIT\r\n")
        .expect(221);
    // ...but pipelining before EHLO makes it a robot again.
    server
        .smtp_from("mx", "192.0.2.7")
        .raw(b"HELO robot.test\r\nMAIL FROM:<a@other.test>\r\n")
        .expect_text(554, "5.5.1")
        .expect_closed();
    assert_eq!(banner_wait("192.0.2.7"), Duration::from_secs(1));

    // After the TTL everybody waits again.
    server.advance(Duration::from_secs(3600));
    assert_eq!(banner_wait("2001:db8:1:2::25"), Duration::from_secs(1));
}

/// `greet_pause_ttl = "0s"`: no memory, every connection waits.
#[test]
fn a_zero_ttl_makes_every_connection_wait() {
    let server = Server::start(&standard_config(
        "[limits]\ngreet_pause = \"1s\"\ngreet_pause_ttl = \"0s\"",
    ));
    for _ in 0..2 {
        let start = server.now();
        server.smtp_from("mx", "192.0.2.7").send("QUIT").expect(221);
        assert_eq!(server.now() - start, Duration::from_secs(1));
    }
}

/// Trusted networks are not put through the pregreet test: an application on the admin's own
/// network that talks first still gets its banner and its mail through.
#[test]
fn trusted_clients_skip_the_pregreet_test() {
    let server = Server::start(&config_with_relay(
        "trusted_networks = [\"127.0.0.1/32\"]",
        "[limits]\ngreet_pause = \"1s\"",
    ));
    server
        .connect_silent("mx")
        .raw(b"EHLO app.internal.test\r\n")
        .expect(220)
        .expect(250)
        .send("QUIT")
        .expect(221);
}

#[test]
fn pipelining_before_ehlo_is_refused() {
    let server = Server::start(&standard_config(""));
    server
        .smtp("mx")
        .raw(b"HELO robot.test\r\nMAIL FROM:<a@other.test>\r\nRCPT TO:<alice@example.test>\r\n")
        .expect_text(554, "5.5.1")
        .expect_closed();
    // A HELO session never gets PIPELINING.
    server
        .smtp("mx")
        .send("HELO old.mta.test")
        .expect(250)
        .raw(b"MAIL FROM:<a@other.test>\r\nRCPT TO:<alice@example.test>\r\n")
        .expect_text(554, "5.5.1")
        .expect_closed();
    // After EHLO, pipelining is what it is for.
    server
        .smtp("mx")
        .send("EHLO modern.mta.test")
        .expect(250)
        .raw(b"MAIL FROM:<a@other.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        .expect(250)
        .expect(250)
        .expect(354)
        .raw(b"Subject: pipelined\r\n\r\nok\r\n.\r\nQUIT\r\n")
        .expect(250)
        .expect(221);
    let queued = server.queue.messages();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].recipients(), ["alice@example.test"]);
    let endings = server.endings();
    assert_eq!(
        endings[..2],
        [
            Some(Ending::ImproperPipelining),
            Some(Ending::ImproperPipelining)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts in every state, before TLS too
// ---------------------------------------------------------------------------------------------

fn timeout_config() -> String {
    standard_config(
        "[limits]\ngreeting_timeout = \"1s\"\ncommand_timeout = \"1s\"\ndata_block_timeout = \"1s\"\nsession_timeout = \"3s\"",
    )
}

/// Expects a `421 4.4.2` and the close, `limit` after `start` on the server's clock.
#[track_caller]
fn expect_421_after(
    server: &Server,
    smtp: &mut Smtp,
    start: tokio::time::Instant,
    limit: Duration,
) {
    smtp.expect_text(421, "4.4.2").expect_closed();
    assert_eq!(server.now() - start, limit, "{}", smtp.transcript());
}

/// A connection to `kind` that sends EHLO, after its reply `after_ehlo` (pipelined
/// commands), then `pattern` one octet every 500 ms until the server closes. The session
/// limit (3 s from the connect) must end it with `421 4.4.2`, though no single wait is long.
#[track_caller]
fn slowloris(server: &Server, kind: &str, after_ehlo: &[u8], pattern: &[u8]) {
    let start = server.now();
    let mut smtp = server.smtp(kind);
    smtp.send("EHLO slow.test").expect(250).raw(after_ehlo);
    // Only what has arrived: the client is slow, not patient.
    smtp.read_timeout(Duration::from_millis(1));
    for &octet in pattern.iter().cycle().take(100) {
        smtp.idle(Duration::from_millis(500));
        while smtp.read_reply().is_some() {}
        if smtp.closed() {
            break;
        }
        smtp.raw(&[octet]);
    }
    assert!(smtp.closed(), "never cut off:\n{}", smtp.transcript());
    assert!(
        smtp.transcript().contains("<<< 421 4.4.2"),
        "{}",
        smtp.transcript()
    );
    let took = server.now() - start;
    assert!(
        took >= 3 * SECOND && took <= 3 * SECOND + Duration::from_millis(500),
        "{took:?}"
    );
}

#[test]
fn silent_clients_get_421_in_every_state() {
    let server = Server::start(&timeout_config());
    // Silent after the banner (greeting timeout).
    let mut smtp = server.smtp("mx");
    let start = server.now();
    expect_421_after(&server, &mut smtp, start, SECOND);
    // Silent after EHLO (command timeout).
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO quiet.test").expect(250);
    let start = server.now();
    expect_421_after(&server, &mut smtp, start, SECOND);
    // Silent inside DATA (data block timeout).
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO quiet.test")
        .expect(250)
        .send("MAIL FROM:<a@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: half a message\r\n");
    let start = server.now();
    expect_421_after(&server, &mut smtp, start, SECOND);
    assert_nothing_queued(&server);
    let data_timeout = Ending::Protocol("timeout in DATA");
    assert_eq!(
        server.endings(),
        [
            Some(Ending::Timeout),
            Some(Ending::Timeout),
            Some(data_timeout)
        ]
    );
}

#[test]
fn silent_clients_before_tls_are_cut_off() {
    let server = Server::start(&timeout_config());
    // Implicit TLS: connected, no ClientHello. The greeting timeout bounds the handshake.
    let start = server.now();
    server.connect_silent("submissions").expect_closed();
    assert_eq!(server.now() - start, SECOND);
    // STARTTLS answered, then no ClientHello.
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO quiet.test")
        .expect(250)
        .send("STARTTLS")
        .expect(220);
    let start = server.now();
    smtp.expect_closed();
    assert_eq!(server.now() - start, SECOND);
    assert_eq!(server.endings(), [None, Some(Ending::Timeout)]);
}

/// A client that pipelines commands and never reads the replies stalls the server's writes
/// once the pipe is full (1 MiB here); that wait is bounded by the command timeout too, not
/// only by the 30-minute session limit, so such clients cannot hold the connection slots.
///
/// ```text
/// EHLO stalled.test                 -> 250
/// EHLO × 100,000, nothing read      -> (replies pile up) ... closed after ~1 s, Timeout
/// ```
#[test]
fn a_client_that_stops_reading_replies_is_cut_off_by_the_command_timeout() {
    let server = Server::start(&standard_config("[limits]\ncommand_timeout = \"1s\""));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO stalled.test").expect(250);
    let start = server.now();
    // EHLO, not NOOP: past 100 NOOPs the error limit would end the session first.
    smtp.raw(&b"EHLO stalled.test\r\n".repeat(100_000));
    let ending = server.endings();
    let took = server.now() - start;
    assert_eq!(ending, [Some(Ending::Timeout)]);
    // The command timeout and the farewell (closing, draining), far from the session limit.
    assert!(took <= 5 * SECOND, "cut off after {took:?}");
    assert_nothing_queued(&server);
}

/// Commands that move no mail (NOOP, RSET, VRFY, HELP) are answered, but past 100 of them
/// since the last accepted message each counts as an error (Postfix's
/// `smtpd_junk_command_limit`), so they cannot hold a connection slot for the whole session
/// limit; an accepted message starts the count again.
/// ```text
/// NOOP ×100, MAIL … DATA . (250), NOOP/RSET/VRFY/HELP ×100  -> all answered
/// NOOP ×10                                                  -> 250 ×10, then 421 4.7.0
/// ```
#[test]
fn commands_that_move_no_mail_count_as_errors_past_a_hundred() {
    let server = Server::start(&standard_config(""));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO idler.test").expect(250);
    smtp.raw(&b"NOOP\r\n".repeat(100));
    for _ in 0..100 {
        smtp.expect(250);
    }
    smtp.send("MAIL FROM:<a@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: between the idling\r\n\r\nhi\r\n.\r\n")
        .expect(250);
    smtp.raw(&b"NOOP\r\nRSET\r\nVRFY alice\r\nHELP\r\n".repeat(25));
    for _ in 0..25 {
        smtp.expect(250).expect(250).expect(252).expect(214);
    }
    smtp.raw(&b"NOOP\r\n".repeat(10));
    for _ in 0..10 {
        smtp.expect(250);
    }
    smtp.expect_text(421, "4.7.0").expect_closed();
    assert_eq!(server.endings(), [Some(Ending::TooManyErrors)]);
    assert_eq!(server.queue.messages().len(), 1);
}

#[test]
fn slowloris_clients_are_cut_off_by_the_session_limit() {
    let server = Server::start(&timeout_config());
    // A command line that never ends, one octet at a time.
    slowloris(&server, "submission", b"NOOP ", b"NOOP ");
    // Complete commands, slowly: each arrives in time, the session still ends.
    slowloris(&server, "mx", b"NOOP\r\n", b"NOOP\r\n");
    // Message content, slowly.
    let opening = b"MAIL FROM:<a@other.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n";
    slowloris(&server, "mx", opening, b"x");
    assert_nothing_queued(&server);
    assert!(server.endings().iter().all(|e| *e == Some(Ending::Timeout)));
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

#[test]
fn nul_bytes_and_invalid_utf8_in_commands_are_refused() {
    let server = Server::start(&standard_config(""));
    let mut smtp = server.smtp("mx");
    smtp.raw(b"EHLO nul\0.test\r\n")
        .expect_text(500, "5.5.2")
        .send("EHLO client.outside.test")
        .expect(250)
        .raw(b"MAIL FROM:<\xff\xfe@other.test>\r\n")
        .expect_text(500, "5.5.2")
        .raw(b"MAIL FROM:<a@other.test>\0 SIZE=1\r\n")
        .expect_text(500, "5.5.2")
        .raw(b"RCPT TO:<alice@example.test>\r\n")
        .expect_text(503, "5.5.1")
        .raw(b"MAIL FROM:<a@other.test>\r\n")
        .expect(250)
        .raw(b"RCPT TO:<alice\0@example.test>\r\n")
        .expect_text(500, "5.5.2")
        // Well-formed UTF-8 is an SMTPUTF8 address: refused without SMTPUTF8 on MAIL.
        .raw(b"RCPT TO:<alic\xc3\xa9@example.test>\r\n")
        .expect_text(553, "5.6.7")
        .send("NOOP")
        .expect(250);
}

/// RFC 5321 §4.5.3.1.10: a client that gets `452` for too many recipients sends the rest in
/// a new transaction. A bulk sender pipelining 150 recipients against the limit of 100 gets
/// 50 × `452` and its message queued for the first 100 — the `452`s are not errors that end
/// the session (Postfix's `smtpd_recipient_overshoot_limit`, 1,000), then a second
/// transaction for the rest.
/// ```text
/// RCPT ×150 (pipelined)   -> 250 ×100, 452 4.5.3 ×50
/// DATA … .                -> 354, 250 (100 recipients)
/// MAIL, RCPT ×50, DATA    -> 250 … 250 (50 recipients)
/// ```
#[test]
fn a_pipelined_transaction_past_the_recipient_limit_keeps_its_first_hundred() {
    let server = Server::start(&config_with_relay(
        "trusted_networks = [\"127.0.0.1/32\"]",
        "",
    ));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO bulk.test").expect(250);
    for range in [0..150, 100..150] {
        let count = range.len();
        let mut batch = b"MAIL FROM:<bulk@example.test>\r\n".to_vec();
        for i in range {
            batch.extend_from_slice(format!("RCPT TO:<rcpt{i}@other.test>\r\n").as_bytes());
        }
        batch.extend_from_slice(b"DATA\r\n");
        smtp.raw(&batch).expect(250);
        for _ in 0..count.min(100) {
            smtp.expect_text(250, "2.1.5");
        }
        for _ in 100..count {
            smtp.expect_text(452, "4.5.3");
        }
        smtp.expect(354)
            .raw(b"Subject: bulk\r\n\r\nhello\r\n.\r\n")
            .expect(250);
    }
    smtp.send("QUIT").expect(221);
    let queued: Vec<usize> = server
        .queue
        .messages()
        .iter()
        .map(|m| m.message.recipients.len())
        .collect();
    assert_eq!(queued, [100, 50]);
}

/// Past the overshoot allowance (1,000 refused recipients in one transaction) each further
/// `452` counts as an error, and the error limit (10) ends the session.
#[test]
fn ten_thousand_rcpts_hit_the_recipient_limit_then_the_error_limit() {
    // A trusted client may relay, so each RCPT is a new accepted recipient.
    let server = Server::start(&config_with_relay(
        "trusted_networks = [\"127.0.0.1/32\"]",
        "",
    ));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO bulk.test")
        .expect(250)
        .send("MAIL FROM:<bulk@example.test>")
        .expect(250);
    let mut all = Vec::new();
    for i in 0..10_000 {
        all.extend_from_slice(format!("RCPT TO:<rcpt{i}@other.test>\r\n").as_bytes());
    }
    smtp.raw(&all);
    for _ in 0..100 {
        smtp.expect_text(250, "2.1.5");
    }
    for _ in 0..1_000 + 10 {
        smtp.expect_text(452, "4.5.3");
    }
    smtp.expect_text(421, "4.7.0").expect_closed();
    assert_nothing_queued(&server);
}

#[test]
fn auth_with_garbage_base64_is_refused_and_the_session_goes_on() {
    let server = Server::start(&standard_config(""));
    let mut smtp = server.smtp("submissions");
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .send("AUTH PLAIN !!!not*base64")
        .expect_text(501, "5.5.")
        .send("AUTH PLAIN ====")
        .expect_text(501, "5.5.")
        .send("AUTH LOGIN")
        .expect(334)
        .raw(b"%%%\xff\r\n")
        .expect_text(501, "5.5.2")
        .send("AUTH LOGIN")
        .expect(334)
        .send("*")
        .expect_text(501, "5.0.0")
        .auth_plain("alice@example.test", PASSWORD)
        .expect(235);
}

#[test]
fn auth_response_over_12288_octets_is_refused_and_the_session_stays_in_sync() {
    let server = Server::start(&standard_config(""));
    let mut smtp = server.smtp("submissions");
    let huge = "QUFB".repeat(13_000 / 4);
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .send("AUTH LOGIN")
        .expect(334)
        .send(&huge)
        .expect_text(500, "5.5.6")
        .send("NOOP")
        .expect(250)
        .auth_plain("alice@example.test", PASSWORD)
        .expect(235);
    // Just under the limit is an ordinary (bad) response, not an overflow: a login longer
    // than any configured one.
    let mut smtp = server.smtp("submissions");
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .send("AUTH LOGIN")
        .expect(334)
        .send(&"QUFB".repeat(12_000 / 4))
        .expect_text(501, "login longer than 256 octets")
        .send("NOOP")
        .expect(250);
}

#[test]
fn client_dropping_mid_data_queues_nothing() {
    let server = Server::start(&standard_config(""));
    let mut smtp = open_transaction(&server);
    smtp.send("DATA")
        .expect(354)
        .raw(b"Subject: cut short\r\n\r\nhalf a message\r\n");
    drop(smtp);
    // And once more, dropping right after a lone dot that is not the end.
    let mut smtp = open_transaction(&server);
    smtp.send("DATA")
        .expect(354)
        .raw(b"Subject: x\r\n\r\nbody\r\n.");
    drop(smtp);
    let endings = server.endings();
    assert_eq!(
        endings,
        [Some(Ending::ClientClosed), Some(Ending::ClientClosed)]
    );
    assert_nothing_queued(&server);
}

#[test]
fn smtp_smuggling_vectors_are_refused_and_nothing_is_queued() {
    let server = Server::start(&standard_config(""));
    let smuggled = b"MAIL FROM:<evil@other.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n";
    for vector in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n.\rX\r\n.\r\n",
        b"\rbare CR inside a line\r\n",
        b"\nbare LF inside a line\r\n",
    ] {
        let mut smtp = open_transaction(&server);
        let mut content = b"Subject: innocent\r\n\r\nbody".to_vec();
        content.extend_from_slice(vector);
        content.extend_from_slice(smuggled);
        smtp.send("DATA")
            .expect(354)
            .raw(&content)
            .expect_text(521, "5.5.2")
            .expect_closed();
    }
    assert_nothing_queued(&server);
}

#[test]
fn bare_cr_and_bare_lf_in_commands_close_the_session() {
    let server = Server::start(&standard_config(""));
    for command in [
        &b"NOOP\rRCPT TO:<bob@example.test>\r\n"[..],
        b"NOOP\nRCPT TO:<bob@example.test>\r\n",
        b"RCPT TO:<bob@example.test>\r",
    ] {
        let mut smtp = open_transaction(&server);
        smtp.raw(command).raw(b"\r\nDATA\r\n");
        smtp.expect_text(521, "5.5.2").expect_closed();
    }
    assert_nothing_queued(&server);
}

/// An AUTH response is a line like any other: a bare CR or LF in it closes the session as it
/// does in a command. It was answered `501` and the octets after it were framed afresh and
/// read as commands.
#[test]
fn bare_cr_and_bare_lf_in_auth_responses_close_the_session() {
    let server = Server::start(&standard_config(""));
    for response in [
        &b"YWxpY2U=\nMAIL FROM:<alice@example.test>\r\n"[..],
        b"YWxpY2U=\rMAIL FROM:<alice@example.test>\r\n",
    ] {
        let mut smtp = server.smtp("submissions");
        smtp.send("EHLO laptop.example.test")
            .expect(250)
            .send("AUTH LOGIN")
            .expect(334)
            .raw(response)
            .expect_text(521, "5.5.2")
            .expect_closed();
    }
    assert_nothing_queued(&server);
}

#[test]
fn plaintext_mail_from_injected_after_starttls_is_discarded() {
    let server = Server::start(&standard_config(""));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .raw(b"STARTTLS\r\nMAIL FROM:<evil@other.test>\r\nRCPT TO:<alice@example.test>\r\n")
        .expect(220)
        .upgrade_without_command(server.ca())
        .send("EHLO client.outside.test")
        .expect(250)
        // Had the injected MAIL survived, this would be a nested MAIL (503).
        .send("RCPT TO:<alice@example.test>")
        .expect_text(503, "5.5.1")
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("QUIT")
        .expect(221);
    assert_nothing_queued(&server);
}

#[test]
fn too_many_errors_end_the_session_with_421() {
    let server = Server::start(&standard_config("[limits]\nmax_errors = 5"));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO confused.test").expect(250);
    for _ in 0..4 {
        smtp.send("FOO").expect_text(500, "5.5.1");
    }
    smtp.send("RCPT TO:<alice@example.test>")
        .expect_text(503, "5.5.1")
        .expect_text(421, "4.7.0")
        .expect_closed();
    assert_eq!(server.endings(), [Some(Ending::TooManyErrors)]);
}

#[test]
fn message_size_is_advertised_and_enforced_at_mail_and_in_data() {
    let server = Server::start(&standard_config("[limits]\nmax_message_size = 10000"));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test").expect(250);
    assert!(
        smtp.last_lines().iter().any(|l| l == "SIZE 10000"),
        "{:?}",
        smtp.last_lines()
    );
    smtp.send("MAIL FROM:<a@other.test> SIZE=10001")
        .expect_text(552, "5.3.4")
        // 20 digits (RFC 1870's most) but past u64: too big, not "no size declared".
        .send("MAIL FROM:<a@other.test> SIZE=99999999999999999999")
        .expect_text(552, "5.3.4")
        .send("MAIL FROM:<a@other.test> SIZE=5000")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354);
    let mut big = b"Subject: too big\r\n\r\n".to_vec();
    for _ in 0..200 {
        big.extend_from_slice(&[b'x'; 98]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b".\r\n");
    smtp.raw(&big)
        .expect_text(552, "5.3.4")
        .send("NOOP")
        .expect(250)
        .send("QUIT")
        .expect(221);
    assert_nothing_queued(&server);
}
