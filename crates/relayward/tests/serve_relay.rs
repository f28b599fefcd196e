//! End-to-end: the real `relayward serve` on loopback, spoken to like a transcript.
//!
//! The test configuration trusts no network, so the loopback client is a stranger: it may send
//! to local mailboxes and nothing else until it authenticates over TLS.

mod support;

use support::{PASSWORD, Smtp, TestServer, standard_config};

fn server() -> TestServer {
    TestServer::start(&standard_config(""))
}

/// Every relay trick named in the issue, from an untrusted, unauthenticated client: each must be
/// refused with the reply shown.
#[test]
fn relay_tricks_from_a_stranger_are_refused() {
    let server = server();
    let tricks: &[(&str, &str, u16, &str)] = &[
        // MAIL FROM                     RCPT TO                                   code  enhanced
        ("<spammer@other.test>", "<victim@other.test>", 554, "5.7.1"),
        ("<>", "<victim@other.test>", 554, "5.7.1"),
        ("<alice@example.test>", "<victim@other.test>", 554, "5.7.1"),
        (
            "<postmaster@mx.example.test>",
            "<victim@other.test>",
            554,
            "5.7.1",
        ),
        ("<spammer@[127.0.0.1]>", "<victim@other.test>", 554, "5.7.1"),
        (
            "<spammer@other.test>",
            "<victim%other.test@example.test>",
            554,
            "5.7.1",
        ),
        (
            "<spammer@other.test>",
            "<\"victim@other.test\"@example.test>",
            554,
            "5.7.1",
        ),
        (
            "<spammer@other.test>",
            "<\"victim%other.test\"@example.test>",
            554,
            "5.7.1",
        ),
        (
            "<spammer@other.test>",
            "<other.test!victim@example.test>",
            554,
            "5.7.1",
        ),
        (
            "<spammer@other.test>",
            "<@example.test:victim@other.test>",
            554,
            "5.7.1",
        ),
        (
            "<spammer@other.test>",
            "<@example.test,@mx.example.test:victim@other.test>",
            554,
            "5.7.1",
        ),
        ("<spammer@other.test>", "<victim@[127.0.0.1]>", 554, "5.7.1"),
        ("<spammer@other.test>", "<victim@[IPv6:::1]>", 554, "5.7.1"),
        (
            "<spammer@other.test>",
            "<\"victim@other.test\">",
            501,
            "5.1.3",
        ),
        ("<spammer@other.test>", "<other.test!victim>", 501, "5.1.3"),
        (
            "<spammer@other.test>",
            "<victim@other.test@[127.0.0.1]>",
            501,
            "5.1.3",
        ),
        (
            "<spammer@other.test>",
            "<victim@other.test@example.test>",
            501,
            "5.1.3",
        ),
        ("<spammer@other.test>", "<victim%other.test@>", 501, "5.1.3"),
        ("<spammer@other.test>", "<victim@127.0.0.1>", 501, "5.1.3"),
        (
            "<spammer@other.test>",
            "<victim@example.test.>",
            501,
            "5.1.3",
        ),
    ];
    for (from, to, code, enhanced) in tricks {
        // A fresh connection per trick, so the error limit never hides a later one.
        let mut smtp = server.smtp("mx");
        smtp.send("EHLO probe.outside.test")
            .expect(250)
            .send(&format!("MAIL FROM:{from}"))
            .expect(250)
            .send(&format!("RCPT TO:{to}"))
            .expect_text(*code, enhanced)
            .send("DATA")
            .expect(554)
            .send("QUIT")
            .expect(221);
    }
    assert!(server.maildir_new("example.test", "alice").is_empty());
}

#[test]
fn stranger_may_mail_local_mailboxes_and_it_lands_in_maildir() {
    let server = server();
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect_text(250, "2.1.0")
        .send("RCPT TO:<alice@example.test>")
        .expect_text(250, "2.1.5")
        .send("RCPT TO:<ALICE@Example.TEST>")
        .expect(250)
        .send("RCPT TO:<nobody@example.test>")
        .expect_text(550, "5.1.1")
        .send("DATA")
        .expect(354)
        .raw(b"Subject: hello\r\n\r\n..a line that starts with a dot\r\nbye\r\n.\r\n")
        .expect_text(250, "2.0.0")
        .send("QUIT")
        .expect(221);
    let mail = server.wait_for_mail("example.test", "alice", 1);
    assert_eq!(mail.len(), 1, "one copy despite the duplicate RCPT");
    assert!(
        mail[0].starts_with("Received: from client.outside.test ([127.0.0.1])"),
        "{}",
        mail[0]
    );
    assert!(mail[0].contains("\r\n\twith ESMTP\r\n"), "{}", mail[0]);
    assert!(
        mail[0].contains("\r\n.a line that starts with a dot\r\n"),
        "dot-unstuffed: {}",
        mail[0]
    );
}

#[test]
fn postmaster_is_always_accepted() {
    let server = server();
    server
        .smtp("mx")
        .send("HELO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<>")
        .expect(250)
        .send("RCPT TO:<Postmaster>")
        .expect(250)
        .send("RCPT TO:<postmaster@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: abuse report\r\n\r\nhi\r\n.\r\n")
        .expect(250)
        .send("QUIT")
        .expect(221);
    let mail = server.wait_for_mail("example.test", "postmaster", 1);
    assert!(mail[0].contains("with SMTP"), "HELO session: {}", mail[0]);
}

#[test]
fn auth_is_never_offered_or_accepted_without_tls() {
    let server = server();
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test").expect(250);
    let keywords = smtp.last_lines();
    assert!(keywords.iter().any(|k| k == "STARTTLS"), "{keywords:?}");
    assert!(
        !keywords.iter().any(|k| k.starts_with("AUTH")),
        "AUTH offered in clear: {keywords:?}"
    );
    smtp.auth_plain("alice@example.test", PASSWORD)
        .expect_text(538, "5.7.11");
}

#[test]
fn submission_requires_auth_before_mail() {
    let server = server();
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .send("MAIL FROM:<alice@example.test>")
        .expect_text(530, "5.7.0")
        .starttls(server.ca())
        .send("EHLO laptop.example.test")
        .expect(250);
    assert!(
        smtp.last_lines().iter().any(|k| k == "AUTH PLAIN LOGIN"),
        "{:?}",
        smtp.last_lines()
    );
    smtp.send("MAIL FROM:<alice@example.test>")
        .expect_text(530, "5.7.0")
        .auth_plain("alice@example.test", "wrong password")
        .expect_text(535, "5.7.8")
        .auth_plain("alice@example.test", PASSWORD)
        .expect_text(235, "2.7.0")
        .auth_plain("alice@example.test", PASSWORD)
        .expect_text(503, "5.5.1")
        .send("MAIL FROM:<alice@example.test>")
        .expect(250)
        .send("RCPT TO:<friend@other.test>")
        .expect_text(250, "2.1.5")
        .send("DATA")
        .expect(354)
        .raw(b"Subject: relayed\r\n\r\nthrough the relay\r\n.\r\n")
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
}

#[test]
fn authenticated_users_may_only_send_as_themselves() {
    let server = server();
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain("bob@example.test", PASSWORD)
        .expect(235)
        .send("MAIL FROM:<alice@example.test>")
        .expect_text(553, "5.7.1")
        .send("MAIL FROM:<sales@example.test>")
        .expect(250)
        .send("AUTH LOGIN")
        .expect_text(503, "5.5.1")
        .send("RSET")
        .expect(250)
        .send("MAIL FROM:<bob@example.test>")
        .expect(250)
        .send("QUIT")
        .expect(221);
}

#[test]
fn implicit_tls_submission_relays_for_authenticated_users() {
    let server = server();
    let mut smtp = Smtp::connect_tls(server.addr("submissions"), server.ca());
    smtp.send("EHLO laptop.example.test").expect(250);
    assert!(!smtp.last_lines().iter().any(|k| k == "STARTTLS"));
    smtp.send("AUTH LOGIN")
        .expect(334)
        .send(&support::base64(b"alice@example.test"))
        .expect(334)
        .send(&support::base64(PASSWORD.as_bytes()))
        .expect(235)
        .send("MAIL FROM:<alice@example.test>")
        .expect(250)
        .send("RCPT TO:<bob@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: internal\r\n\r\nhi bob\r\n.\r\n")
        .expect(250)
        .send("QUIT")
        .expect(221);
    let mail = server.wait_for_mail("example.test", "bob", 1);
    let trace = &mail[0];
    assert!(trace.contains("with ESMTPSA"), "{trace}");
    assert!(
        trace.contains("authenticated as alice@example.test"),
        "{trace}"
    );
    assert!(trace.contains("TLS"), "{trace}");
    assert!(
        !trace.contains(PASSWORD),
        "password leaked into the trace header"
    );
}

#[test]
fn plaintext_pipelined_after_starttls_is_discarded() {
    let server = server();
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        // The injected QUIT must die with the plaintext layer (RFC 3207 §6).
        .raw(b"STARTTLS\r\nQUIT\r\n")
        .expect(220);
    let mut smtp = smtp_after_tls(smtp, &server.ca());
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("NOOP")
        .expect(250)
        .send("QUIT")
        .expect(221);
}

fn smtp_after_tls(mut smtp: Smtp, ca: &std::path::Path) -> Smtp {
    // The 220 was read already; switch without sending STARTTLS again.
    smtp.upgrade_without_command(ca);
    smtp
}

#[test]
fn auth_is_refused_inside_a_transaction() {
    let server = server();
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<alice@example.test>")
        .expect(250)
        .auth_plain("alice@example.test", PASSWORD)
        .expect_text(503, "5.5.1")
        .send("RCPT TO:<friend@other.test>")
        .expect_text(554, "5.7.1");
}

#[test]
fn bare_lf_in_data_is_refused_and_nothing_is_queued() {
    let server = server();
    server.smtp("mx")
        .send("EHLO smuggler.outside.test").expect(250)
        .send("MAIL FROM:<a@other.test>").expect(250)
        .send("RCPT TO:<alice@example.test>").expect(250)
        .send("DATA").expect(354)
        .raw(b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@other.test>\r\nRCPT TO:<victim@other.test>\r\n")
        .raw(b"DATA\r\nsmuggled\r\n.\r\n")
        .expect_text(521, "5.5.2")
        .expect_closed();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(server.maildir_new("example.test", "alice").is_empty());
}

#[test]
fn overlong_command_lines_are_refused() {
    let server = server();
    let long = format!("MAIL FROM:<{}@other.test>", "a".repeat(600));
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send(&long)
        .expect_text(500, "5.5.2")
        .send("NOOP")
        .expect(250);
}

#[test]
fn commands_out_of_order_get_503() {
    let server = server();
    server
        .smtp("mx")
        .send("MAIL FROM:<a@other.test>")
        .expect_text(503, "5.5.1")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect_text(503, "5.5.1")
        .send("DATA")
        .expect_text(503, "5.5.1")
        .send("MAIL FROM:<a@other.test>")
        .expect(250)
        .send("MAIL FROM:<a@other.test>")
        .expect_text(503, "5.5.1")
        .send("VRFY alice")
        .expect(252)
        .send("EXPN staff")
        .expect(502)
        .send("XCLIENT ADDR=127.0.0.2")
        .expect_text(500, "5.5.1")
        .send("QUIT")
        .expect(221);
}

/// RFC 4954 §4 lets an AUTH command with its initial response run to 12,288 octets; a long
/// password must be checked, not refused as an over-long command.
#[test]
fn auth_initial_response_may_exceed_512_octets() {
    let server = server();
    let long_password = "x".repeat(2000);
    server
        .smtp("submission")
        .send("EHLO laptop.example.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain("alice@example.test", &long_password)
        .expect_text(535, "5.7.8")
        .send(&format!("MAIL FROM:<{}@example.test>", "a".repeat(600)))
        .expect_text(500, "5.5.2");
}

/// A user added by SIGHUP is a mailbox for the session *and* for the delivery runner (which
/// refuses unknown local mailboxes): mail to her is delivered, not bounced.
#[test]
fn mail_for_a_user_added_by_reload_is_delivered() {
    let server = server();
    let config = std::fs::read_to_string(&server.config_path).expect("config");
    let carol = format!(
        "{config}\n[[user]]\nlogin = \"carol@example.test\"\npassword_hash = \"{}\"\n",
        support::password_hash()
    );
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<carol@example.test>")
        .expect_text(550, "5.1.1");
    std::fs::write(&server.config_path, carol).expect("rewrite config");
    server.signal("HUP");
    server.wait_for_log("configuration reloaded");
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<carol@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: welcome\r\n\r\nhi carol\r\n.\r\n")
        .expect(250);
    let mail = server.wait_for_mail("example.test", "carol", 1);
    assert!(mail[0].contains("hi carol"), "{}", mail[0]);
    assert!(!server.log().contains("bounce queued"), "{}", server.log());
}
