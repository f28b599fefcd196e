//! Red-team attacks on the session by an untrusted, unauthenticated client, in-process: the
//! attacks that held (postmaster variants, case, quoting, literals, source routes, length
//! edges, ESMTP parameters, pipelined bursts, CRLF-dot-LF smuggling, AUTH edge cases), each
//! a transcript that must relay and queue nothing.
//!
//! Moved here from the end-to-end suite (`crates/relayward/tests/redteam.rs`), which keeps the
//! findings that need the binary: configurations `serve` refuses, delivery, bounces.

mod support;

use support::{Server, Smtp, standard_config};

/// Many refusals in one session: keep the error limit out of the way.
const LENIENT: &str = "[limits]\nmax_errors = 1000\n";

/// An mx session after EHLO with an open transaction from a stranger.
fn stranger_transaction(server: &Server) -> Smtp {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<victim@other.test>")
        .expect(250);
    smtp
}

/// Nothing was acknowledged behind the test's back.
#[track_caller]
fn assert_nothing_queued(server: &Server) {
    assert!(
        server.queue.is_empty(),
        "queued: {:?}",
        server.queue.messages()
    );
}

#[test]
fn postmaster_variants_relay_nothing() {
    let server = Server::start(&standard_config(""));
    let mut smtp = stranger_transaction(&server);
    for (rcpt, code, enhanced) in [
        ("<postmaster@other.test>", 554, "5.7.1"),
        ("<Postmaster@[127.0.0.1]>", 554, "5.7.1"),
        ("<postmaster@[IPv6:::1]>", 554, "5.7.1"),
        ("<\"postmaster\">", 501, "5.1.3"),
        ("<postmaster%other.test@example.test>", 554, "5.7.1"),
        ("<\"postmaster@other.test\"@example.test>", 554, "5.7.1"),
        ("<@example.test:postmaster@other.test>", 554, "5.7.1"),
        ("<POSTMASTER>", 250, "2.1.5"),
        ("<PostMaster@EXAMPLE.TEST>", 250, "2.1.5"),
        ("<\"post\\master\"@example.test>", 250, "2.1.5"),
    ] {
        smtp.send(&format!("RCPT TO:{rcpt}"))
            .expect_text(code, enhanced);
    }
}

#[test]
fn case_quoting_literals_and_routes_relay_nothing() {
    let server = Server::start(&standard_config(LENIENT));
    let mut smtp = stranger_transaction(&server);
    for (rcpt, code, enhanced) in [
        // Case tricks: the domain is folded, the result is still remote.
        ("<victim@OTHER.TEST>", 554, "5.7.1"),
        ("<victim@Example.Test.Other.Test>", 554, "5.7.1"),
        ("<victim@sub.EXAMPLE.test>", 554, "5.7.1"),
        ("<nobody@EXAMPLE.TEST>", 550, "5.1.1"),
        ("<ALICE@EXAMPLE.TEST>", 250, "2.1.5"),
        // Quoted local parts with escapes are looked into.
        (r#"<"a\@other.test"@example.test>"#, 554, "5.7.1"),
        (r#"<"a\"@other.test"@example.test>"#, 554, "5.7.1"),
        (r#"<"a\%other.test"@example.test>"#, 554, "5.7.1"),
        (r#"<"other.test\!a"@example.test>"#, 554, "5.7.1"),
        (r#"<"al\ice"@example.test>"#, 250, "2.1.5"),
        (r#"<"../../x"@example.test>"#, 550, "5.1.1"),
        (r#"<"alice "@example.test>"#, 550, "5.1.1"),
        // Address literals, general tags and odd-case IPv6 tags.
        ("<victim@[IPv4:127.0.0.1]>", 554, "5.7.1"),
        ("<victim@[x:y]>", 554, "5.7.1"),
        ("<victim@[IPV6:::1]>", 554, "5.7.1"),
        ("<victim@[ipv6:::ffff:127.0.0.1]>", 554, "5.7.1"),
        ("<alice@[127.0.0.1]>", 554, "5.7.1"),
        ("<victim@[127.0.0.01]>", 501, "5.1.3"),
        // Source routes are stripped: only the last hop counts.
        ("<@example.test:victim@other.test>", 554, "5.7.1"),
        ("<@[127.0.0.1]:victim@other.test>", 554, "5.7.1"),
        (
            "<@other.test,@example.test:victim@other.test>",
            554,
            "5.7.1",
        ),
        ("<@other.test:alice@example.test>", 250, "2.1.5"),
        // Malformed: refused by the parser.
        ("<victim@other.test@example.test>", 501, "5.1.3"),
        ("<alice@example.test.>", 501, "5.1.3"),
        ("<victim@127.0.0.1>", 501, "5.1.3"),
        ("<a.\"b@c\"@example.test>", 501, "5.1.3"),
    ] {
        smtp.send(&format!("RCPT TO:{rcpt}"))
            .expect_text(code, enhanced);
        if smtp.last.as_ref().is_some_and(|(c, _)| *c == 421) {
            panic!("error limit reached");
        }
    }
}

#[test]
fn length_edges_and_eight_bit_addresses() {
    let server = Server::start(&standard_config(""));
    let mut smtp = stranger_transaction(&server);
    let l64 = "a".repeat(64);
    let l65 = "a".repeat(65);
    smtp.send(&format!("RCPT TO:<{l64}@example.test>"))
        .expect_text(550, "5.1.1")
        .send(&format!("RCPT TO:<{l65}@example.test>"))
        .expect_text(501, "5.1.3")
        .send(&format!("RCPT TO:<{l64}@other.test>"))
        .expect_text(554, "5.7.1")
        // UTF-8 addresses need SMTPUTF8 on MAIL (RFC 6531 §3.5).
        .send("RCPT TO:<j\u{fc}rgen@example.test>")
        .expect_text(553, "5.6.7")
        .send("RCPT TO:<victim@b\u{fc}cher.example>")
        .expect_text(553, "5.6.7");
    // A 256-octet path is the limit; one more is refused whatever the domain.
    let label = "d".repeat(60);
    let domain = format!("{label}.{label}.{label}.other.test");
    let local = "v".repeat(256 - 2 - 1 - domain.len());
    smtp.send(&format!("RCPT TO:<{local}@{domain}>"))
        .expect_text(554, "5.7.1")
        .send(&format!("RCPT TO:<{local}v@{domain}>"))
        .expect_text(501, "5.1.3");
}

#[test]
fn esmtp_parameters_cannot_smuggle_a_recipient() {
    let server = Server::start(&standard_config(""));
    let mut smtp = stranger_transaction(&server);
    // DSN parameters are taken (RFC 3461); an ORCPT naming a stranger is only a label for
    // notices and never becomes a recipient.
    smtp.send("RCPT TO:<alice@example.test> NOTIFY=SUCCESS")
        .expect(250)
        .send("RCPT TO:<alice@example.test> ORCPT=rfc822;victim@other.test")
        .expect(250)
        .send("RCPT TO:<alice@example.test> <victim@other.test>")
        .expect(501)
        .send("RCPT TO:<\"a>b\"@example.test> x")
        .expect(555)
        .send("RCPT TO:<alice@example.test>,<victim@other.test>")
        .expect(501)
        .send("RSET")
        .expect(250);
    drop(smtp);
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<a@other.test> RCPT=<victim@other.test>")
        .expect_text(555, "5.5.4")
        .send("MAIL FROM:<a@other.test> AUTH=alice@example.test")
        .expect(250)
        .send("RCPT TO:<victim@other.test>")
        .expect_text(554, "5.7.1");
    assert_nothing_queued(&server);
}

#[test]
fn pipelined_bursts_rset_and_data_after_refusals_queue_nothing_remote() {
    let server = Server::start(&standard_config(LENIENT));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test").expect(250);
    // One burst: the refused recipient, DATA refused for want of recipients, then a body whose
    // lines are read as commands and are refused in turn.
    smtp.raw(
        b"MAIL FROM:<a@other.test>\r\nRCPT TO:<victim@other.test>\r\nDATA\r\n\
Subject: spam\r\nRCPT TO:<victim2@other.test>\r\n.\r\nRSET\r\n",
    );
    smtp.expect(250)
        .expect_text(554, "5.7.1")
        .expect_text(554, "5.5.1")
        .expect(500)
        .expect_text(554, "5.7.1")
        .expect(500)
        .expect(250);
    // RSET between recipients forgets the transaction: no RCPT or DATA without a new MAIL.
    smtp.raw(b"MAIL FROM:<a@other.test>\r\nRCPT TO:<alice@example.test>\r\nRSET\r\nRCPT TO:<victim@other.test>\r\nDATA\r\n");
    smtp.expect(250)
        .expect(250)
        .expect(250)
        .expect_text(503, "5.5.1")
        .expect_text(503, "5.5.1");
    // A second MAIL inside a transaction is refused and keeps the first one.
    smtp.send("MAIL FROM:<a@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("MAIL FROM:<b@other.test>")
        .expect_text(503, "5.5.1")
        .send("RCPT TO:<victim@other.test>")
        .expect_text(554, "5.7.1")
        .send("RSET")
        .expect(250)
        // BDAT without a transaction: refused, and its ten octets are not commands.
        .raw(b"BDAT 10 LAST\r\nRCPT TO:<x")
        .expect_text(503, "5.5.1")
        .send("QUIT")
        .expect(221);
    assert_nothing_queued(&server);
}

/// A RCPT between two BDAT chunks was answered `250 2.1.5 Ok`, but the message had been
/// begun in the queue with the recipients of the first chunk: the late recipient was
/// acknowledged and then silently never delivered (and the log counted it). RFC 3030 has the
/// recipients before the first BDAT; a RCPT after it is out of sequence now (`503 5.5.1`),
/// and the queued message has exactly the recipients the client was told it has.
#[test]
fn rcpt_between_bdat_chunks_is_out_of_sequence() {
    let server = Server::start(&standard_config(""));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<a@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .raw(b"BDAT 12\r\nSubject: x\r\n")
        .expect(250)
        .send("RCPT TO:<postmaster@example.test>")
        .expect_text(503, "5.5.1")
        .send("RCPT TO:<victim@other.test>")
        .expect_text(503, "5.5.1")
        .raw(b"BDAT 9 LAST\r\n\r\nhello\r\n")
        .expect(250)
        .send("QUIT")
        .expect(221);
    let queued = server.queue.messages();
    assert_eq!(queued.len(), 1, "{queued:?}");
    let rcpts: Vec<&str> = queued[0]
        .message
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["alice@example.test"]);
}

#[test]
fn smuggling_with_crlf_dot_lf_is_refused() {
    let server = Server::start(&standard_config(""));
    for vector in [&b"\r\n.\n"[..], b"\r\n.\r\r\n", b"\r\n\x00.\r\n"] {
        let mut smtp = server.smtp("mx");
        smtp.send("EHLO attacker.outside.test")
            .expect(250)
            .send("MAIL FROM:<a@other.test>")
            .expect(250)
            .send("RCPT TO:<alice@example.test>")
            .expect(250)
            .send("DATA")
            .expect(354);
        let mut content = b"Subject: innocent\r\n\r\nbody".to_vec();
        content.extend_from_slice(vector);
        content.extend_from_slice(
            b"MAIL FROM:<a@other.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n",
        );
        smtp.raw(&content);
        if vector.contains(&0) {
            // NUL is content to us, but a next hop that strips it would end the message there
            // and take the rest as a second one from us: refused whole (issue 10, finding 8).
            smtp.expect_text(554, "5.6.0").send("QUIT").expect(221);
        } else {
            smtp.expect_text(521, "5.5.2").expect_closed();
        }
    }
    assert_nothing_queued(&server);
}

#[test]
fn auth_edge_cases_grant_no_relay() {
    let server = Server::start(&standard_config(""));
    let ca = server.ca();
    // On mx: AUTH in clear is refused, and TLS starts the session over.
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .send("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB4")
        .expect_text(538, "5.7.11")
        .starttls(&ca)
        .send("STARTTLS")
        .expect(503)
        .send("MAIL FROM:<a@other.test>")
        .expect_text(503, "5.5.1")
        .send("EHLO attacker.outside.test")
        .expect(250)
        // Cancelled exchanges and wrong passwords leave the client a stranger.
        .send("AUTH LOGIN")
        .expect(334)
        .send("*")
        .expect(501)
        .send("AUTH PLAIN")
        .expect(334)
        .send("*")
        .expect(501)
        .auth_plain("alice@example.test", "wrong")
        .expect_text(535, "5.7.8")
        .send("MAIL FROM:<a@other.test>")
        .expect(250)
        .send("RCPT TO:<victim@other.test>")
        .expect_text(554, "5.7.1");
    // Submission without AUTH: no MAIL, hence no RCPT, not even to a local mailbox.
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .starttls(&ca)
        .send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<>")
        .expect_text(530, "5.7.0")
        .send("RCPT TO:<alice@example.test>")
        .expect_text(503, "5.5.1")
        .send("DATA")
        .expect(503);
    assert_nothing_queued(&server);
}

/// A BDAT whose size cannot be read (too many digits for a u64, a sign, hex, a word after
/// LAST) was answered `501` and the session went on: the chunk behind it, whoever wrote it,
/// was then read as commands. An upstream relay forwarding a message this way would have run
/// its content as commands in its own (trusted or authenticated) session. The chunk's end
/// cannot be known, so the session closes.
#[test]
fn a_bdat_whose_size_cannot_be_read_closes_the_session() {
    let server = Server::start(&standard_config(""));
    for bdat in [
        &b"BDAT 99999999999999999999 LAST\r\n"[..],
        b"BDAT -1 LAST\r\n",
        b"BDAT +37 LAST\r\n",
        b"BDAT 0x25 LAST\r\n",
        b"BDAT 37 LAST junk\r\n",
        b"BDAT\r\n",
        b"bdat 37\xff LAST\r\n",
    ] {
        let mut smtp = stranger_transaction(&server);
        smtp.send("RCPT TO:<alice@example.test>").expect(250);
        let mut packet = bdat.to_vec();
        packet.extend_from_slice(b"RSET\r\nMAIL FROM:<evil@other.test>\r\n");
        smtp.raw(&packet).expect_text(501, "5.5.4").expect_closed();
    }
    assert_nothing_queued(&server);
}
