//! Red-team tests: attacks on `relayward serve` by an untrusted, unauthenticated client (and by
//! configurations that `serve` should refuse), end to end through the real binary.
//!
//! The first section holds the findings of the review, each a test that failed before its fix;
//! the second pins down attacks that were already refused, where no other test covered them.
//! Attacks that are pure dialogue (the reply and "nothing queued" is all they check) run
//! in-process in `crates/server/tests/session_redteam.rs`.

mod support;

use std::time::Duration;

use support::{
    Smtp, TestServer, check_config, rejecting_sink, serve_refuses, standard_config,
    wait_queue_empty,
};

/// What the internal server behind the test routes answers to every RCPT.
const NO_SUCH_USER: &str = "550 5.1.1 no such user here";

/// An mx session after EHLO with an open transaction from a stranger.
fn stranger_transaction(server: &TestServer) -> Smtp {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<victim@other.test>")
        .expect(250);
    smtp
}

// ---------------------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------------------

/// Finding 1 (medium): a `[[route]]` domain delivered to Maildirs took any local part from
/// anyone, including ones that can never name a Maildir (`a/b`, `"a..b"`, `"../../x"`, `"x\\y"`).
/// Delivery then failed permanently and the DSN went to whatever MAIL FROM the stranger wrote:
/// relayward sent the attacker's headers to any address on the Internet (backscatter relay).
/// They are refused at RCPT now, by the policy.
#[test]
fn maildir_route_refuses_local_parts_that_cannot_name_a_maildir() {
    let server = TestServer::start(&standard_config(
        "[[route]]\ndomain = \"box.example.net\"\nto = \"maildir\"\n",
    ));
    let mut smtp = stranger_transaction(&server);
    for rcpt in [
        "<a/b@box.example.net>",
        "<../x@box.example.net>",
        r#"<"a..b"@box.example.net>"#,
        r#"<"../../../tmp/pwn"@box.example.net>"#,
        r#"<"x\\y"@box.example.net>"#,
        r#"<".hidden"@box.example.net>"#,
        r#"<"john doe"@box.example.net>"#,
    ] {
        let line = format!("RCPT TO:{rcpt}");
        smtp.send(&line);
        // `../x` is not even a dot-atom: the parser refuses it before the policy.
        if rcpt.starts_with("<../") {
            smtp.expect_text(501, "5.1.3");
        } else {
            smtp.expect_text(550, "5.1.1");
        }
    }
    smtp.send("DATA").expect_text(554, "5.5.1");
    // A mailbox name still works (the route accepts any ordinary local part).
    smtp.send(r#"RCPT TO:<"Ok.Name"@BOX.example.net>"#)
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: ok\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "delivered as")
        .send("QUIT")
        .expect(221);
    // Filed under the lower-case name, as local mailboxes are (route.table pins this).
    server.wait_for_mail("box.example.net", "ok.name", 1);
    wait_queue_empty(&server);
    assert!(
        !server.log().contains("bounce queued"),
        "something bounced:\n{}",
        server.log()
    );
}

/// Finding 2 (medium, configuration): IPv6 networks that embed IPv4 addresses passed the
/// "no wider than /16" rule although, through them, they trust the whole IPv4 Internet:
/// `2002::/16` (6to4: every IPv4 host has 2002:V4ADDR::/48), `2001::/32` (Teredo: anyone can
/// get one) and `64:ff9b::/96` (NAT64/SIIT: IPv4 clients of an IPv6-only server). `serve` and
/// `check-config` accepted them and check-config said PASS. As trusted proxies they would let
/// anyone name any client in a PROXY header.
#[test]
fn networks_embedding_the_ipv4_internet_are_refused() {
    for (key, net) in [
        ("trusted_networks", "2002::/16"),
        ("trusted_networks", "2001::/32"),
        ("trusted_networks", "2001::/16"),
        ("trusted_networks", "2001:0:5ef5:79fd::/64"),
        ("trusted_networks", "64:ff9b::/96"),
        ("trusted_networks", "2002:c000::/23"),
        ("trusted_proxies", "2002::/16"),
    ] {
        let config = support::standard_config_with_network(key, net);
        let (code, output) = check_config(&config);
        assert_eq!(
            code,
            Some(78),
            "check-config accepted {key} {net}:\n{output}"
        );
        assert!(
            output.contains("open relay") && output.contains(net),
            "{key} {net}: {output}"
        );
    }
    let open = standard_config("").replace(
        "trusted_networks = []",
        "trusted_networks = [\"2002::/16\"]",
    );
    let output = serve_refuses(&open);
    assert!(output.contains("6to4"), "{output}");
    // Narrow enough: one IPv4 host's 6to4 prefix, an IPv4 /24 seen through NAT64, and an
    // ordinary IPv6 network are still fine.
    for net in [
        "2002:c000:204::/48",
        "64:ff9b::c000:200/120",
        "2001:db8::/32",
    ] {
        let config = standard_config("").replace(
            "trusted_networks = []",
            &format!("trusted_networks = [\"{net}\"]"),
        );
        let (code, output) = check_config(&config);
        assert_eq!(code, Some(0), "check-config refused {net}:\n{output}");
    }
}

/// Finding 3 (low): an address literal in EHLO may hold `(` (RFC 5321 dcontent), and it went
/// into `Received: from <helo> ([ip])` as is, so `EHLO [a(]` opened an RFC 5322 comment that
/// swallowed the client's address: header parsers (spam filters looking for the last external
/// hop) no longer saw who sent the message.
#[test]
fn helo_literal_cannot_hide_the_client_address_in_received() {
    let server = TestServer::start(&standard_config(""));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO [a(;\"x]")
        .expect(250)
        .send("MAIL FROM:<someone@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: trace\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "delivered as")
        .send("QUIT")
        .expect(221);
    let mail = server.wait_for_mail("example.test", "alice", 1);
    let first = mail[0].lines().next().unwrap_or_default().to_string();
    assert_eq!(first, "Received: from [a???x] ([127.0.0.1])", "{}", mail[0]);
}

/// Finding 4 (low, configuration): a mailbox (or a login in a local domain, which is also a
/// mailbox) whose local part cannot name a Maildir, such as `sales/eu@example.test` or
/// `../x@example.test`, was accepted by `check-config` and `serve`. Every message to it was
/// accepted from anyone and then bounced to the forged sender.
#[test]
fn undeliverable_mailbox_names_in_the_configuration_are_refused() {
    let mailbox = standard_config("").replace(
        "trusted_networks = []",
        "trusted_networks = []\nmailboxes = [\"sales/eu@example.test\"]",
    );
    let (code, output) = check_config(&mailbox);
    assert_eq!(code, Some(78), "{output}");
    assert!(output.contains("relay.mailboxes[0]"), "{output}");
    for login in [
        "../x@example.test",
        "a/b@example.test",
        "a\\\"b@example.test",
    ] {
        let config = standard_config("").replace(
            "login = \"bob@example.test\"",
            &format!("login = \"{login}\""),
        );
        let (code, output) = check_config(&config);
        assert_eq!(code, Some(78), "login {login} accepted:\n{output}");
        assert!(output.contains("user[1].login"), "{output}");
    }
    // A login outside the local domains is no mailbox, so it may be anything printable.
    let config =
        standard_config("").replace("login = \"bob@example.test\"", "login = \"relay/client\"");
    let (code, output) = check_config(&config);
    assert_eq!(code, Some(0), "{output}");
}

// ---------------------------------------------------------------------------------------------
// Attacks that held
// ---------------------------------------------------------------------------------------------

#[test]
fn ipv4_mapped_trusted_networks_trust_nobody() {
    use relayward_protocol::path::parse_forward_path;
    use relayward_protocol::resolve::resolve;
    use relayward_server::config::Config;
    use relayward_server::policy::{ClientIdentity, Policy};

    let text = standard_config("")
        .replace(
            "trusted_networks = []",
            "trusted_networks = [\"::ffff:127.0.0.1/128\", \"::1/128\"]",
        )
        .replace("DATA_DIR", "/nonexistent");
    let config = Config::from_toml_str(&text, "redteam").expect("parses");
    let policy = Policy::from_config(&config).expect("valid (with a warning)");
    let rcpt = resolve(&parse_forward_path("<victim@other.test>").expect("path"));
    for client in [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "::ffff:127.0.0.2",
    ] {
        let identity = ClientIdentity::anonymous(client.parse().expect("ip"));
        assert!(
            policy.decide(&identity, &rcpt).is_err(),
            "{client} was trusted"
        );
    }
    let identity = ClientIdentity::anonymous("::1".parse().expect("ip"));
    assert!(policy.decide(&identity, &rcpt).is_ok());
}

/// Bounces go out with the null sender and are never bounced again: a message whose sender is
/// itself in the rejecting route domain produces exactly one DSN, and a message from `<>`
/// produces none.
#[test]
fn bounces_of_bounces_do_not_loop() {
    let internal = rejecting_sink("127.0.0.1", NO_SUCH_USER);
    let sink = internal.addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.net\"\nto = \"smtp://{sink}\"\nverify_recipients = false\n"
    )));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test").expect(250);
    for from in ["<loop@corp.example.net>", "<>"] {
        smtp.send(&format!("MAIL FROM:{from}"))
            .expect(250)
            .send("RCPT TO:<nobody@corp.example.net>")
            .expect(250)
            .send("DATA")
            .expect(354)
            .raw(b"Subject: bounce me\r\n\r\nhello\r\n.\r\n")
            .expect_text(250, "queued as");
    }
    smtp.send("QUIT").expect(221);
    wait_queue_empty(&server);
    std::thread::sleep(Duration::from_millis(500));
    let mut seen: Vec<String> = internal
        .senders()
        .iter()
        .map(|s| format!("<{s}>"))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec!["<>", "<>", "<loop@corp.example.net>"],
        "log:\n{}",
        server.log()
    );
    assert_eq!(server.log().matches("bounce queued").count(), 1);
}

/// Bounces reach the runner without a RCPT check, so the runner itself must refuse what the
/// session would have: a forged local sender that names no mailbox gets no Maildir created,
/// and a sender at an address literal fails at once instead of clogging the queue for days.
#[test]
fn bounces_to_forged_local_senders_and_literals_go_nowhere() {
    let sink = rejecting_sink("127.0.0.1", NO_SUCH_USER).addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.net\"\nto = \"smtp://{sink}\"\nverify_recipients = false\n"
    )));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test").expect(250);
    for from in [
        "<Ghost.Box@example.test>",
        "<x@[127.0.0.1]>",
        "<alice@example.test>",
    ] {
        smtp.send(&format!("MAIL FROM:{from}"))
            .expect(250)
            .send("RCPT TO:<nobody@corp.example.net>")
            .expect(250)
            .send("DATA")
            .expect(354)
            .raw(b"Subject: bounce me\r\n\r\nhello\r\n.\r\n")
            .expect_text(250, "queued as");
    }
    smtp.send("QUIT").expect(221);
    wait_queue_empty(&server);
    let mail = server.data_dir().join("mail").join("example.test");
    assert!(
        !mail.join("Ghost.Box").exists() && !mail.join("ghost.box").exists(),
        "a bounce created a Maildir for a mailbox that does not exist"
    );
    // The real local sender still gets her bounce.
    let bounces = server.wait_for_mail("example.test", "alice", 1);
    assert!(bounces[0].contains("multipart/report"), "{}", bounces[0]);
}
