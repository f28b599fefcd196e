//! The relay rules as a client meets them, in-process: a stranger may send to local
//! mailboxes and nothing else, AUTH only over TLS and only outside a transaction, an
//! authenticated user only as herself, and the session's grammar (order, lengths, bare LF).
//! Each test is a transcript against a session built from the standard test configuration
//! (no trusted network: the client, 127.0.0.1, is a stranger), and checks what was queued.
//!
//! Moved here from the end-to-end suite (`crates/relayward/tests/serve_relay.rs`), where they
//! started the binary for each dialogue; what needs the real binary stays there.

mod support;

use support::{PASSWORD, Server, standard_config};

fn server() -> Server {
    Server::start(&standard_config(""))
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
    assert!(server.queue.is_empty(), "{:?}", server.queue.messages());
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
    let queued = server.queue.messages();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].recipients(), ["friend@other.test"]);
    assert_eq!(
        queued[0].message.auth_login.as_deref(),
        Some("alice@example.test")
    );
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
fn plaintext_pipelined_after_starttls_is_discarded() {
    let server = server();
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        // The injected QUIT must die with the plaintext layer (RFC 3207 §6).
        .raw(b"STARTTLS\r\nQUIT\r\n")
        .expect(220)
        // The 220 was read already: switch without sending STARTTLS again.
        .upgrade_without_command(server.ca())
        .send("EHLO client.outside.test")
        .expect(250)
        .send("NOOP")
        .expect(250)
        .send("QUIT")
        .expect(221);
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
    assert!(server.queue.is_empty(), "{:?}", server.queue.messages());
}

#[test]
fn overlong_command_lines_are_refused() {
    let server = server();
    // MAIL may carry its extensions' parameters (1,280 octets); past that the line is too long.
    let long = format!("MAIL FROM:<{}@other.test>", "a".repeat(1300));
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
        .send(&format!("MAIL FROM:<{}@example.test>", "a".repeat(1300)))
        .expect_text(500, "5.5.2");
}

/// A message the queue cannot store is never acknowledged: `452 4.3.1`, and the client may
/// try again in the same session once the queue recovers.
#[test]
fn a_queue_that_cannot_store_gets_452_never_250() {
    let server = server();
    server.queue.set_full(true);
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: no room\r\n\r\nhello\r\n.\r\n")
        .expect_text(452, "4.3.1");
    assert!(server.queue.is_empty());
    server.queue.set_full(false);
    smtp.send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: room again\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "queued as");
    assert_eq!(server.queue.len(), 1);
}

/// A reload (SIGHUP) reaches sessions already open, at their next transaction: a network no
/// longer trusted may no longer relay, and a user whose password was changed (a stolen one)
/// or who was removed is put out, while an unchanged user goes on. Sessions last up to 30
/// minutes; a reload that only reached new ones would leave the thief that long.
/// ```text
/// mx from 127.0.0.1 (trusted):  MAIL, RCPT <v@other.test> -> 250 … DATA -> 250
/// alice, bob on submissions:    AUTH -> 235
///                    --- reload: no trusted network, alice's password changed ---
/// mx:     MAIL -> 250, RCPT <v@other.test>  -> 554 5.7.1
/// bob:    MAIL -> 250, RCPT <v@other.test>  -> 250
/// alice:  MAIL                              -> 421 4.7.0, closed
/// ```
#[test]
fn a_reload_reaches_open_sessions_at_their_next_transaction() {
    let server = Server::start(&support::config_with_relay(
        "trusted_networks = [\"127.0.0.1/32\"]",
        "",
    ));
    let mut trusted = server.smtp("mx");
    trusted
        .send("EHLO office.example.test")
        .expect(250)
        .send("MAIL FROM:<clerk@example.test>")
        .expect(250)
        .send("RCPT TO:<v@other.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: before\r\n\r\nhi\r\n.\r\n")
        .expect(250);
    let mut alice = server.smtp("submissions");
    alice
        .send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain("alice@example.test", PASSWORD)
        .expect(235);
    let mut bob = server.smtp("submissions");
    bob.send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain("bob@example.test", PASSWORD)
        .expect(235);

    let new_hash = relayward_server::config::hash_password(b"a new passphrase, not the stolen one")
        .expect("hash");
    let alice_entry = format!(
        "login = \"alice@example.test\"\npassword_hash = \"{}\"",
        support::password_hash()
    );
    let changed = standard_config("").replacen(
        &alice_entry,
        &format!("login = \"alice@example.test\"\npassword_hash = \"{new_hash}\""),
        1,
    );
    assert_ne!(changed, standard_config(""), "alice's entry not found");
    server.reload(&changed);

    trusted
        .send("MAIL FROM:<clerk@example.test>")
        .expect(250)
        .send("RCPT TO:<v@other.test>")
        .expect_text(554, "5.7.1");
    bob.send("MAIL FROM:<bob@example.test>")
        .expect(250)
        .send("RCPT TO:<v@other.test>")
        .expect(250);
    alice
        .send("MAIL FROM:<alice@example.test>")
        .expect_text(421, "4.7.0")
        .expect_closed();
    assert_eq!(server.queue.messages().len(), 1);
}
