//! End-to-end: the real `relayward serve` on loopback, spoken to like a transcript, for what
//! needs the binary: mail that reaches a Maildir, implicit TLS on a real socket, a reload.
//! The dialogue-only relay rules run in-process in `crates/server/tests/session_relay.rs`.
//!
//! The test configuration trusts no network, so the loopback client is a stranger: it may send
//! to local mailboxes and nothing else until it authenticates over TLS.

mod support;

use support::{PASSWORD, Smtp, TestServer, standard_config};

fn server() -> TestServer {
    TestServer::start(&standard_config(""))
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
